"""A private LAN of network namespaces, for discovery tests and the discovery bench.

Layout (nothing touches the host's own namespace or interfaces)::

    <tag>-sw:  br0 10.77.0.254/24 (bridge) + the agent process
    <tag>-1:   eth0 10.77.0.1/24 ── veth ── v1 (port of br0 in <tag>-sw)
    <tag>-2:   eth0 10.77.0.2/24 ── veth ── v2
    ...

Each veth pair is created straight into its two namespaces, so no device ever
appears in the root namespace. ``<tag>`` holds the pid, so parallel runs do not
collide, and namespaces left behind by a dead run are removed on the next one.

The *agent* (``python -m tests.netlan agent``) runs inside the switch namespace on
10.77.0.254: the test talks to it over stdin/stdout in JSON lines to read the
nodes' peers (they are unreachable from the root namespace) and to play the
hostile LAN neighbour (spoofed announcements, floods, forged goodbyes).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO = ROOT / "examples" / "demo.py"
PREFIX = "aralt"
SUBNET = "10.77.0"
AGENT_IP = f"{SUBNET}.254"
GRPC_PORT = 50051
_runs = itertools.count(1)
T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.1, what: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)  # a poll interval in a bounded wait, not a sync (noqa: sleep-ok)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be built here (then the tests skip), or ``None``."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "building network namespaces needs root"
    probe = f"{PREFIX}{os.getpid()}probe"
    try:
        _ip("netns", "add", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "del", probe)
    return None


def _sweep_stale_namespaces() -> None:
    """Delete namespaces of earlier runs whose process is gone (a crashed run)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if not name.startswith(PREFIX):
            continue
        digits = "".join(itertools.takewhile(str.isdigit, name[len(PREFIX) :]))
        if digits and not Path(f"/proc/{digits}").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)


@dataclass
class NodeProc:
    """One ``aralnode run`` process in its own namespace."""

    index: int
    name: str
    netns: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]
    started: float  # time.time() at spawn

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def address(self) -> str:
        return f"{self.ip}:{GRPC_PORT}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def serving(self) -> bool:
        return "serving gRPC" in self.output()

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Lan:
    """N hosts on one bridge; ``close()`` (or the context manager) removes everything."""

    workdir: Path
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}r{next(_runs)}")
    hosts: dict[int, str] = field(default_factory=dict)
    nodes: dict[int, NodeProc] = field(default_factory=dict)
    agent: Agent | None = None

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> Lan:
        _sweep_stale_namespaces()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "addr", "add", f"{AGENT_IP}/24", "dev", "br0")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def add_host(self, index: int) -> str:
        """A namespace with eth0 = 10.77.0.<index>, plugged into the bridge."""
        if not 1 <= index <= 250:
            raise ValueError("host index must be 1..250")
        ns = f"{self.tag}-{index}"
        _ip("netns", "add", ns)
        self.hosts[index] = ns
        port = f"v{index}"
        _ip(
            "link",
            "add",
            port,
            "netns",
            self.switch,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        )
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{SUBNET}.{index}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "multicast", "on", "up")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return ns

    def start_node(
        self, index: int, *extra: str, name: str | None = None, wildcard: bool = False
    ) -> NodeProc:
        """Start ``aralnode run --discovery mdns`` in host ``index`` (made if needed).

        ``wildcard``: bind 0.0.0.0 and let mDNS use every interface of the
        namespace (its own eth0 and lo only: still the private LAN).
        """
        ns = self.hosts.get(index) or self.add_host(index)
        name = name or f"n{index}"
        data_dir = self.workdir / name
        log = self.workdir / f"{name}.log"
        ip = f"{SUBNET}.{index}"
        where = ["--host", "0.0.0.0"] if wildcard else ["--host", ip, "--interface", ip]
        args = [
            "ip", "netns", "exec", ns,
            str(BIN / "aralnode"), "-v", "run",
            "--name", name,
            *where,
            "--grpc-port", str(GRPC_PORT),
            "--http-port", "-1",
            "--discovery", "mdns",
            "--data-dir", str(data_dir),
            "--load", str(DEMO),
            *extra,
        ]  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        node = NodeProc(index, name, ns, data_dir, log, proc, time.time())
        self.nodes[index] = node
        return node

    def wait_serving(self, *nodes: NodeProc, timeout: float = 60) -> None:
        for node in nodes:
            wait_for(
                lambda n=node: n.serving() or (not n.alive() and _died(n)),  # type: ignore[misc]
                timeout=timeout,
                what=f"{node.name} to serve",
            )

    def stop_node(self, node: NodeProc, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if node.alive():
            node.proc.send_signal(sig)
            node.proc.wait(timeout=timeout)

    def start_agent(self) -> Agent:
        if self.agent is None:
            self.agent = Agent(self.switch, self.workdir / "agent.log")
        return self.agent

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        for node in self.nodes.values():
            if node.alive():
                node.proc.send_signal(signal.SIGKILL)
        for node in self.nodes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        # Deleting a namespace destroys its end of each veth pair, and with it the pair.
        for ns in [*self.hosts.values(), self.switch]:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _ip("netns", "del", ns)
        self.hosts.clear()

    # -- what the nodes see (through the agent) -----------------------------------

    def peers(self, node: NodeProc) -> list[dict[str, Any]]:
        assert self.agent is not None
        result: list[dict[str, Any]] = self.agent.call("peers", node=node.address)["peers"]
        return result

    def all_peers(self, nodes: list[NodeProc]) -> dict[str, list[dict[str, Any]] | None]:
        assert self.agent is not None
        reply = self.agent.call("peers_all", nodes=[n.address for n in nodes])
        return reply["peers"]  # type: ignore[no-any-return]

    def counters(self, node: NodeProc) -> dict[str, int]:
        assert self.agent is not None
        status = self.agent.call("status", node=node.address)["status"]
        return {k: int(v) for k, v in status.get("counters", {}).items()}

    def connected_ids(self, node: NodeProc) -> set[str]:
        return {
            str(p.get("node_id", ""))
            for p in self.peers(node)
            if p.get("state") == "PEER_STATE_CONNECTED"
        }

    def mesh_complete(self, nodes: list[NodeProc], ids: dict[str, str]) -> bool:
        """Every node lists every other one as CONNECTED (ids: name -> node id)."""
        views = self.all_peers(nodes)
        for node in nodes:
            view = views.get(node.address)
            if view is None:
                return False
            connected = {p.get("node_id") for p in view if p.get("state") == "PEER_STATE_CONNECTED"}
            if not {ids[n.name] for n in nodes if n is not node} <= connected:
                return False
        return True


def _died(node: NodeProc) -> bool:
    raise RuntimeError(f"{node.name} exited with {node.proc.returncode}:\n{node.output()[-3000:]}")


class Agent:
    """The helper process in the switch namespace; ``call`` is one request/response."""

    def __init__(self, netns: str, log: Path) -> None:
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "tests.netlan", "agent"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.call("ping", timeout=60)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def call(self, op: str, *, timeout: float = 60, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"agent did not answer {op} within {timeout}s") from None
        if not line:
            raise RuntimeError(f"agent exited with {self.proc.poll()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"agent {op}: {reply['error']}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def lan(workdir: Path) -> Iterator[Lan]:
    """A ``Lan`` that is up, with its agent started; removed on exit, even on failure."""
    net = Lan(workdir)
    try:
        net.up()
        net.start_agent()
        yield net
    finally:
        net.close()


# -- the agent (runs inside the switch namespace) -------------------------------------------


async def _agent_main() -> None:  # pragma: no cover - runs in a subprocess
    from google.protobuf import json_format
    from zeroconf import IPVersion, ServiceStateChange
    from zeroconf._protocol.outgoing import DNSOutgoing
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
    from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE

    from aralnode import Identity, Node, NodeClient, NodeConfig
    from aralnode.discovery import Announcement
    from aralnode.discovery.mdns import SERVICE_TYPE
    from aralnode.discovery.txt import parse_txt, to_txt

    aiozc = AsyncZeroconf(interfaces=[AGENT_IP], ip_version=IPVersion.V4Only)
    zc = aiozc.zeroconf
    names: set[str] = set()
    spoofers: list[Node] = []
    clients: dict[str, NodeClient] = {}

    def changed(**kw: Any) -> None:
        if kw["state_change"] is ServiceStateChange.Removed:
            names.discard(kw["name"])
        else:
            names.add(kw["name"])

    browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[changed])

    def client(address: str) -> NodeClient:
        if address not in clients:
            clients[address] = NodeClient(address)
        return clients[address]

    async def peers_of(address: str) -> list[dict[str, Any]] | None:
        try:
            peers = await client(address).peers(timeout=5)
        except Exception:
            return None
        return [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in peers]

    async def find(node_id: str) -> AsyncServiceInfo:
        for name in list(names):
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if await info.async_request(zc, 2000):
                with contextlib.suppress(ValueError):
                    if parse_txt(info.text or b"").node_id == node_id:
                        return info
        raise LookupError(f"no instance announces {node_id}")

    def send(records: list[Any]) -> None:
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for record in records:
            out.add_answer_at_time(record, 0)
        zc.async_send(out)

    def bogus_records(count: int, claim_ids: list[str]) -> list[Any]:
        rng = random.Random(7)
        records: list[Any] = []
        for i in range(count):
            ident = Identity.generate()
            fp = ident.public_key.fingerprint
            node_id = ident.node_id
            kind = i % 6
            port = 1  # nothing listens there: dials fail fast
            host = AGENT_IP
            if kind == 0:  # well-formed, pointing at a closed port
                txt = to_txt(Announcement(node_id, fp, ("1.0",), port, "0" * 16))
            elif kind == 1 and claim_ids:  # claims a real node's id, elsewhere
                claimed = claim_ids[i % len(claim_ids)]
                txt = to_txt(Announcement(claimed, claimed + fp[32:], ("1.0",), port, "0" * 16))
            elif kind == 2:  # oversized
                txt = b"".join(bytes([250]) + b"x" * 250 for _ in range(5))
            elif kind == 3:  # random bytes
                txt = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            elif kind == 4:  # truncated length prefix
                txt = b"\x40txtvers=1"
            else:  # id not derived from the fingerprint
                txt = to_txt(Announcement(node_id, "a" * 52, ("1.0",), port, "0" * 16))
            name = f"bogus-{i}.{SERVICE_TYPE}"
            info = AsyncServiceInfo(
                SERVICE_TYPE, name, port=port, properties=txt,
                server=f"bogus-{i}.local.", parsed_addresses=[host],
            )  # fmt: skip
            records += [
                info.dns_pointer(),
                info.dns_service(),
                info.dns_text(),
                *info.dns_addresses(),
            ]
        return records

    def garbage(count: int) -> None:
        rng = random.Random(11)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(AGENT_IP))
        try:
            for _ in range(count):
                size = rng.randrange(1, 1400)
                with contextlib.suppress(OSError):
                    sock.sendto(
                        bytes(rng.randrange(256) for _ in range(size)), ("224.0.0.251", 5353)
                    )
        finally:
            sock.close()

    async def handle(req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "ping":
            return {"ok": True}
        if op == "peers":
            return {"peers": await peers_of(req["node"]) or []}
        if op == "peers_all":
            views = await asyncio.gather(*(peers_of(a) for a in req["nodes"]))
            return {"peers": dict(zip(req["nodes"], views, strict=True))}
        if op == "status":
            status = await client(req["node"]).status(timeout=5)
            return {"status": json_format.MessageToDict(status, preserving_proto_field_name=True)}
        if op == "spoof":
            # Our own node and key, announced under someone else's id and fingerprint.
            node = Node(NodeConfig(
                name="spoofer", host=AGENT_IP, grpc_port=0, http_port=None,
                discovery="none", data_dir=Path(req["data_dir"]),
            ))  # fmt: skip
            await node.start()
            spoofers.append(node)
            txt = Announcement(
                req["node_id"], req["fingerprint"], ("1.0",), node.grpc_port, "0" * 16
            )
            info = AsyncServiceInfo(
                SERVICE_TYPE, f"{req.get('label', 'spoof')}.{SERVICE_TYPE}", port=node.grpc_port,
                properties=to_txt(txt), server="spoofer.local.", parsed_addresses=[AGENT_IP],
            )  # fmt: skip
            await (await aiozc.async_register_service(info, cooperating_responders=True))
            return {"node_id": node.node_id, "address": f"{AGENT_IP}:{node.grpc_port}"}
        if op == "announced":
            try:
                return {"instance": (await find(req["node_id"])).name}
            except LookupError:
                return {"instance": None}
        if op == "goodbye":
            # A goodbye is the records with TTL 0; anyone can send one for anything.
            info = await find(req["node_id"])
            for i in range(3):  # as a real goodbye is sent (RFC 6762 §10.1)
                if i:
                    await asyncio.sleep(0.125)  # protocol pacing, not a sync (noqa: sleep-ok)
                send([info.dns_pointer(override_ttl=0), info.dns_service(override_ttl=0),
                      info.dns_text(override_ttl=0)])  # fmt: skip
            return {"instance": info.name}
        if op == "flood":
            records = bogus_records(int(req["count"]), list(req.get("claim_ids", [])))
            send(records)
            garbage(int(req.get("garbage", 50)))
            return {"records": len(records)}
        raise ValueError(f"unknown op {op!r}")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            try:
                reply = await handle(json.loads(line))
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await browser.async_cancel()
        for node in spoofers:
            await node.stop(grace=0)
        for c in clients.values():
            await c.close()
        await aiozc.async_close()


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:] == ["agent"]:
        asyncio.run(_agent_main())
    else:
        sys.exit("usage: python -m tests.netlan agent")
