"""The ``aralnode`` command: thin; parses, calls the public API, prints.

Tables for people, ``--json`` for scripts; errors go to stderr with a non-zero
exit code (2 for usage, 1 for everything else).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from aralnode import (
    _logs,
    cli_a2a,
    cli_apikey,
    cli_audit,
    cli_ca,
    cli_config,
    cli_governance,
    cli_ops,
    cli_policy,
)
from aralnode import _proto as pb
from aralnode._runtime import tune_for_serving
from aralnode._version import __version__
from aralnode.config import DEFAULT_GRPC_PORT, NodeConfig
from aralnode.config_checks import NODE_ID
from aralnode.config_file import ConfigFileError
from aralnode.core import codec
from aralnode.core.capabilities import RISKS
from aralnode.core.errors import AralError, InvalidRequest
from aralnode.core.identity import KeyAlgorithm
from aralnode.policy.load import PolicyError
from aralnode.store.keys import load_identity
from aralnode.store.proto_docs import ProtoDocs
from aralnode.transport.grpc_client import NodeClient, unwrap


class CliError(Exception):
    """A failure to report on stderr with exit code 1."""


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_json(value: Any) -> None:
    print(codec.dumps(value, pretty=True))


def _ago(ms: int) -> str:
    if not ms:
        return "-"
    secs = max(0.0, time.time() - ms / 1000)
    return f"{secs:.1f}s ago" if secs < 120 else f"{secs / 60:.0f}m ago"


# -- subcommands ---------------------------------------------------------------------


def run_config(ns: argparse.Namespace) -> NodeConfig:
    """The node configuration ``aralnode run``'s arguments (and ``--config`` file) describe."""
    return cli_config.effective_config(ns).config


def _grant(value: str) -> tuple[str, frozenset[str]]:
    """``--grant NODE_ID=SCOPE[,SCOPE...]``."""
    node_id, sep, scopes = value.partition("=")
    names = frozenset(s.strip() for s in scopes.split(",") if s.strip())
    if not sep or not node_id.strip() or not names or any(c.isspace() for c in node_id.strip()):
        raise argparse.ArgumentTypeError(f"{value!r} is not NODE_ID=SCOPE[,SCOPE...]")
    if not NODE_ID.match(node_id.strip()):
        raise argparse.ArgumentTypeError(
            f"{node_id.strip()!r} is not a node id (32 lower-case base32 characters, "
            "as 'aralnode status' shows them)"
        )
    return node_id.strip(), names


async def cmd_run(ns: argparse.Namespace) -> int:
    effective = cli_config.effective_config(ns)
    config = effective.config
    cli_ca.data_dir(config.resolved_data_dir)
    if config.log_format != (ns.log_format or "text"):  # the config file chose it
        _logs.install(logging.getLogger().level, config.log_format)
    from aralnode.node import Node  # noqa: PLC0415 - only `run` starts a node (-0.25 s a command)

    node = Node(config)
    cli_config.load_into(node, effective.load)
    loop = asyncio.get_running_loop()
    stop, again = asyncio.Event(), asyncio.Event()  # the first signal, and any later one

    def signalled() -> None:
        (again if stop.is_set() else stop).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signalled)
    await node.start()
    tune_for_serving()
    print(
        f"aralnode {node.name} ({node.node_id}) serving gRPC on {node.address} "
        f"with {len(node.registry)} capabilities; discovery={config.discovery}",
        flush=True,
    )
    print(f"try: grpcurl {cli_ca.grpcurl_flags(config)} {node.address} list", flush=True)
    if node.http_port:
        scheme = "https" if config.tls_on and config.tls_http else "http"
        http = f"{scheme}://{node.address.rsplit(':', 1)[0]}:{node.http_port}"
        ws = http.replace("http", "ws", 1)
        print(f"REST: {http}/docs  MCP: {http}/mcp  events: {ws}/ws  page: {http}/ui", flush=True)
    stopper = asyncio.ensure_future(stop.wait())
    closed = asyncio.ensure_future(node.wait_closed())
    await asyncio.wait({stopper, closed}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    closed.cancel()
    print(
        f"stopping: in-flight calls have up to {config.drain_seconds:g} s to finish "
        "(signal again to stop now)",
        file=sys.stderr,
        flush=True,
    )
    stop.set()  # (if the node closed by itself) any signal from now on cuts the drain short
    draining = asyncio.ensure_future(node.stop())
    cut = asyncio.ensure_future(again.wait())
    await asyncio.wait({draining, cut}, return_when=asyncio.FIRST_COMPLETED)
    cut.cancel()
    if not draining.done():
        print("stopping now: cancelling in-flight calls", file=sys.stderr, flush=True)
        await node.stop()
    await draining
    return 0


async def cmd_call(ns: argparse.Namespace) -> int:
    meta: dict[str, Any] = {}
    if ns.a2a:  # an A2A agent by its card, from a node of this process (cli_a2a.py)
        value = await cli_a2a.call(ns)
    elif ns.node is None:
        raise CliError("call needs --node HOST:PORT, or --a2a CARD_URL")
    else:
        try:
            params = codec.loads(ns.params) if ns.params else {}
        except (ValueError, RecursionError) as exc:
            raise CliError(f"JSON_PARAMS is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise CliError("JSON_PARAMS must be a JSON object")
        async with NodeClient(ns.node, **cli_ca.client_args(ns)) as client:
            result = await client.call(ns.capability, params, to=ns.to, timeout=ns.timeout)
        value = unwrap(result)
        meta = {"node_id": result.node_id, "trace_id": result.trace_id, "decision": result.decision}
    if ns.json or isinstance(value, dict | list):
        _print_json({"result": value, **meta} if ns.json else value)
    else:
        print(value)
    return 0


async def cmd_caps(ns: argparse.Namespace) -> int:
    async with NodeClient(ns.node, **cli_ca.client_args(ns)) as client:
        response = await client.capabilities(ns.peer_id)
    if ns.json:
        _print_json(_as_json(response))
        return 0
    rows = [
        (
            c.id,
            RISKS[c.risk] if c.risk < len(RISKS) else c.risk,
            ",".join(c.required_scopes) or "-",
            c.description,
        )
        for c in response.capabilities
    ]
    print(f"node {response.node_id}: {len(rows)} capabilities")
    print(_table(rows, ("CAPABILITY", "RISK", "SCOPES", "DESCRIPTION")))
    return 0


async def cmd_status(ns: argparse.Namespace) -> int:
    async with NodeClient(ns.node, **cli_ca.client_args(ns)) as client:
        status = await client.status()
    if ns.json:
        _print_json(_as_json(status))
        return 0
    rows = [
        ("node id", status.node_id),
        ("name", status.name),
        ("state", status.state),
        ("software", status.software),
        ("protocols", ", ".join(status.protocol_versions)),
        ("endpoints", ", ".join(f"{e.protocol}://{e.address}" for e in status.endpoints)),
        ("uptime", f"{status.uptime_ms / 1000:.1f}s"),
        ("key", f"{status.key_algorithm} {status.key_fingerprint}"),
        ("discovery", status.discovery),
        ("capabilities", status.capability_count),
        ("peers", status.peer_count),
        *((f"counter {k}", v) for k, v in sorted(status.counters.items())),
    ]
    print(_table(rows, ("FIELD", "VALUE")))
    return 0


def _as_json(message: Any) -> dict[str, Any]:
    """``message`` as proto3 JSON for scripts: field names as in the .proto, and every
    field present, zero or empty ones included (a script reads ``peer_count`` of a node
    with no peers as 0, not as a missing key)."""
    out: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return out


def _peer_row(p: Any) -> tuple[Any, ...]:
    return (
        p.name,
        p.node_id or "-",
        p.address,
        _state_name(p.state),
        p.health,
        len(p.capability_ids),
        _ago(p.last_seen_unix_ms),
        _breaker(p),
    )


def _breaker(p: Any) -> str:
    """A peer's circuit breaker: ``closed``, ``half_open``, ``open (12s)``."""
    state = p.breaker_state or "closed"
    if state == "open" and p.breaker_retry_after_ms:
        return f"open ({-(-p.breaker_retry_after_ms // 1000)}s)"
    return str(state)


def _state_name(state: int) -> str:
    """A peer state as the proto names it (``PEER_STATE_CONNECTED``): as ``--json``,
    REST and the WebSocket spell it."""
    try:
        return pb.PeerState.Name(state)
    except ValueError:  # a newer node's state
        return str(state)


PEER_HEADERS = ("NAME", "NODE ID", "ADDRESS", "STATE", "HEALTH", "CAPS", "LAST SEEN", "BREAKER")


async def cmd_peers(ns: argparse.Namespace) -> int:
    async with NodeClient(ns.node, **cli_ca.client_args(ns)) as client:
        peers = await client.peers()
        if ns.watch:
            return await _watch_peers(client, peers, ns)
    if ns.json:
        _print_json([_as_json(p) for p in peers])
        return 0
    print(_table([_peer_row(p) for p in peers], PEER_HEADERS))
    return 0


async def _watch_peers(client: NodeClient, peers: list[Any], ns: argparse.Namespace) -> int:
    """Print the peers, then one line per change, polling ListPeers every ``--interval``.

    Polling rather than a server stream: no new wire surface for the REST and
    MCP doors to mirror, and it works against any node; a change that comes and
    goes within one interval is not shown (``Node.peer_events()`` sees all).
    """

    def key(p: Any) -> str:
        return str(p.node_id or f"addr:{p.address}")

    def shape(p: Any) -> tuple[Any, ...]:  # what counts as a change (not last_seen)
        return (p.name, p.address, p.state, p.health, tuple(p.capability_ids))

    def emit(change: str, p: Any) -> None:
        if ns.json:
            peer = _as_json(p)
            print(codec.dumps({"change": change, "peer": peer}), flush=True)
        else:
            mark = {"present": " ", "added": "+", "changed": "~", "removed": "-"}[change]
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} {mark} " + "  ".join(str(c) for c in _peer_row(p)[:6]), flush=True)

    known = {key(p): p for p in peers}
    for p in peers:
        emit("present", p)
    while True:
        await asyncio.sleep(ns.interval)
        current = {key(p): p for p in await client.peers()}
        for k, p in current.items():
            before = known.get(k)
            if before is None:
                emit("added", p)
            elif shape(before) != shape(p):
                emit("changed", p)
        for k, p in known.items():
            if k not in current:
                emit("removed", p)
        known = current


async def cmd_mcp(ns: argparse.Namespace) -> int:
    """MCP over stdio for a running node; stdout carries only the protocol."""
    from aralnode.bridge.mcp_stdio import serve_stdio  # noqa: PLC0415 - MCP SDK only when asked

    async with NodeClient(ns.node, **cli_ca.client_args(ns)) as client:
        await serve_stdio(client, ProtoDocs(), name=f"aralnode {ns.node}")
    return 0


def cmd_keys_show(ns: argparse.Namespace) -> int:
    data_dir = Path(ns.data_dir) if ns.data_dir else NodeConfig(name=ns.name).resolved_data_dir
    if not (cli_ca.data_dir(data_dir) / "identity.pem").exists():
        raise CliError(f"no identity in {data_dir}; `aralnode run --data-dir {data_dir}` makes one")
    identity = load_identity(data_dir)
    info = {
        "node_id": identity.node_id,
        "algorithm": str(identity.algorithm),
        "fingerprint": identity.public_key.fingerprint,
        "data_dir": str(data_dir),
    }
    if ns.json:
        _print_json(info)
    else:
        print(_table(list(info.items()), ("FIELD", "VALUE")))
    return 0


# -- parser ----------------------------------------------------------------------------


# long: the command table, one block per subcommand
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aralnode", description="A gRPC-first agent mesh node.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("--version", action="version", version=f"aralnode {__version__}")
    # -v is taken after the command too ("aralnode status --node X -v").
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, dest="verbose_after",
        help="more logging",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    # The run flags, shared with ``aralnode config check``. Every flag that sets a
    # NodeConfig field defaults to None: a flag not given leaves the config file's value
    # (tests/test_config_file.py holds every run flag to that).
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument(
        "--config", metavar="FILE", help="a TOML config file (`aralnode config show` writes one)"
    )
    run.add_argument("--name", help="node name (default: aralnode)")
    run.add_argument(
        "--host", default=None, help="bind address (default: 0.0.0.0 with mdns, else 127.0.0.1)"
    )
    run.add_argument(
        "--grpc-port", type=int, help=f"gRPC port, 0 for any (default: {DEFAULT_GRPC_PORT})"
    )
    run.add_argument(
        "--http-port", type=int, help="HTTP port, 0 for any, -1 to disable (default: 8080)"
    )
    run.add_argument("--data-dir", help="keys and state (default: $XDG_DATA_HOME/aralnode/NAME)")
    run.add_argument(
        "--discovery",
        metavar="BACKENDS",
        help="mdns (the LAN), etcd (a registry: --etcd-endpoint), static (the --peer "
        "addresses only), combined with commas (mdns,etcd); or none (default: mdns)",
    )
    run.add_argument(
        "--peer",
        action="append",
        metavar="HOST:PORT",
        help="static peer, dialled until reached (repeatable; not with --discovery none)",
    )
    run.add_argument(
        "--interface", action="append", metavar="IP", help="mDNS interface address (repeatable)"
    )
    run.add_argument(
        "--load",
        action="append",
        metavar="MODULE_OR_FILE",
        help="call its setup(node) (repeatable)",
    )
    run.add_argument(
        "--key-algorithm", choices=[a.value for a in KeyAlgorithm], help="(default: ES256)"
    )
    run.add_argument(
        "--keepalive-ms",
        type=int,
        help=f"peer health probe interval (default: {NodeConfig().keepalive_ms})",
    )
    run.add_argument(
        "--peer-timeout-ms",
        type=int,
        help="drop a peer after this long without a healthy probe "
        f"(default: {NodeConfig().peer_timeout_ms})",
    )
    run.add_argument(
        "--grant",
        action="append",
        type=_grant,
        metavar="NODE_ID=SCOPE[,SCOPE]",
        help="grant scopes to the peer with this node id, once its key is verified in a "
        "handshake (repeatable)",
    )
    run.add_argument(
        "--durable",
        action="store_true",
        default=None,
        help="keep the A2A channel outbox and inbox in SQLite under the data dir",
    )
    run.add_argument(
        "--audit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the hash-chained audit log under the data dir (default: when --durable)",
    )
    run.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="governance policy file, TOML or YAML (docs/governance.md); re-read on change",
    )
    cli_ops.add_run_flags(run)
    cli_ca.add_run_flags(run)
    sub.add_parser("run", parents=[verbose, run], help="start a node").set_defaults(func=cmd_run)

    call = sub.add_parser("call", parents=[verbose], help="invoke a capability")
    call.add_argument("--node", metavar="HOST:PORT", type=cli_ca.node_address)
    call.add_argument("--to", default="", metavar="NODE_ID", help="forward to this peer of --node")
    cli_a2a.add_call_flags(call)
    call.add_argument(
        "--timeout",
        type=cli_ca.seconds,
        default=30.0,
        help="seconds; 0 leaves it to the node (default: 30)",
    )
    call.add_argument("--json", action="store_true", help="machine-readable output")
    call.add_argument("capability")
    call.add_argument("params", nargs="?", default="", metavar="JSON_PARAMS")
    cli_ca.add_client_flags(call)
    call.set_defaults(func=cmd_call)

    caps = sub.add_parser("caps", parents=[verbose], help="list a node's capabilities")
    caps.add_argument("--node", required=True, metavar="HOST:PORT", type=cli_ca.node_address)
    caps.add_argument(
        "--peer-id",
        default="",
        metavar="NODE_ID",
        help="a peer's capabilities as --node knows them",
    )
    caps.add_argument("--json", action="store_true")
    cli_ca.add_client_flags(caps)
    caps.set_defaults(func=cmd_caps)

    status = sub.add_parser("status", parents=[verbose], help="show a node's status")
    status.add_argument("--node", required=True, metavar="HOST:PORT", type=cli_ca.node_address)
    status.add_argument("--json", action="store_true")
    cli_ca.add_client_flags(status)
    status.set_defaults(func=cmd_status)

    peers = sub.add_parser("peers", parents=[verbose], help="list a node's peers")
    peers.add_argument("--node", required=True, metavar="HOST:PORT", type=cli_ca.node_address)
    peers.add_argument("--json", action="store_true")
    peers.add_argument("--watch", action="store_true", help="keep printing changes (Ctrl-C ends)")
    peers.add_argument(
        "--interval",
        type=cli_ca.interval,
        default=1.0,
        help=f"--watch poll interval, seconds, at least {cli_ca.MIN_INTERVAL:g} (default: 1)",
    )
    cli_ca.add_client_flags(peers)
    peers.set_defaults(func=cmd_peers)

    mcp = sub.add_parser(
        "mcp", parents=[verbose], help="serve a running node's tools over MCP stdio"
    )
    mcp.add_argument(
        "--node",
        required=True,
        metavar="HOST:PORT",
        type=cli_ca.node_address,
        help="the node's gRPC address",
    )
    cli_ca.add_client_flags(mcp)
    mcp.set_defaults(func=cmd_mcp)

    cli_apikey.add_parser(sub)
    cli_audit.add_parser(sub)
    cli_policy.add_parser(sub)
    cli_governance.add_parser(sub)
    keys = sub.add_parser("keys", parents=[verbose], help="identity keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    show = keys_sub.add_parser("show", parents=[verbose], help="show the node identity")
    show.add_argument("--name", default="aralnode")
    show.add_argument("--data-dir")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_keys_show)
    cli_ca.add_parser(sub)
    cli_config.add_parser(sub, parents=[verbose, run])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    _logs.install(
        logging.WARNING - 10 * min(ns.verbose + getattr(ns, "verbose_after", 0), 2),
        getattr(ns, "log_format", None) or "text",
    )
    try:
        result = ns.func(ns)
        if asyncio.iscoroutine(result):
            with contextlib.suppress(KeyboardInterrupt):
                return int(asyncio.run(result))
            return 130
        return int(result)
    except ConfigFileError as exc:  # a bad file is a usage error: its line, key, reason
        problems = [{"line": p.line, "key": p.key, "reason": p.reason} for p in exc.problems]
        error = InvalidRequest(str(exc), reason="CONFIG_INVALID", details={"problems": problems})
        return _report(ns, exc, error)
    except cli_audit.NothingToRead as exc:  # nothing to verify or read: a usage error
        return _report(ns, exc, exc)
    except AralError as exc:
        return _report(ns, exc, exc)
    except (CliError, ValueError, OSError, ImportError) as exc:
        return _report(ns, exc, InvalidRequest(_message(exc), reason=_reason(exc)))


def _report(ns: argparse.Namespace, exc: Exception, error: AralError) -> int:
    """The one way a command fails: with ``--json`` the error object on stderr, one
    line (``{"error": {code, message, reason, details, status, trace_id}}``), else one
    line of text (a config file's problems, one a line); the exit code: 2 for usage
    (a config file refused, nothing to read), 1 for everything else."""
    code = 2 if isinstance(exc, ConfigFileError | cli_audit.NothingToRead) else 1
    if getattr(ns, "json", False):  # for a script: the error object, on stderr
        body = {**error.to_dict(), "status": error.status.name, "trace_id": error.trace_id}
        print(json.dumps({"error": body}, default=str), file=sys.stderr)
        return code
    if not isinstance(exc, AralError):
        text = str(exc) if isinstance(exc, ConfigFileError) else f"error: {_message(exc)}"
        print(text, file=sys.stderr)
        return code
    # The reason, where it says more than the status (NOT_FOUND's is NOT_FOUND).
    status = exc.status.name
    tag = status if exc.reason in ("", status) else f"{status} {exc.reason}"
    trace = f" (trace {exc.trace_id})" if exc.trace_id else ""  # the node's logs, audit
    print(f"error: {exc.message} [{tag}]{trace}", file=sys.stderr)
    return code


def _reason(exc: Exception) -> str:
    """The reason of a failure found here, before any node was asked."""
    if isinstance(exc, OSError):
        return "OS_ERROR"
    if isinstance(exc, PolicyError):
        return "POLICY_INVALID"
    return "IMPORT_FAILED" if isinstance(exc, ImportError) else "INVALID_ARGUMENT"


def _message(exc: Exception) -> str:
    # "[Errno 98] ..." helps nobody; a file name, where there is one, does.
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
