"""What TLS costs: signed channel messages over mTLS vs plaintext, and unary Invoke
over TLS vs plaintext, measured in the same run and paired by round.

- ``channel.mtls_vs_plain.ratio``: signed notifications/s over one A2A channel
  between two node processes with mTLS (``aralnode ca`` certificates,
  ``tls_client_auth="require"``) over the same between two plaintext node
  processes; both pairs stay up the whole run, every round sends ``CHANNEL_N``
  messages on each (order reversed every other round), the ratio is the median of
  the rounds' ratios.
- ``unary.tls.c16.paired_ratio``: unsigned Invoke (``NodeClient.request``,
  ``sign=False``) with 16 in flight against a TLS node process (mTLS, the client
  presenting a certificate) over the same against a plaintext node process, paired
  as ``bench/unary.py`` pairs: short slices, each case next to the other, order
  reversed every other round; the ratio is the median of the rounds' ratios.
- ``unary.tls_jwt.c16.paired_ratio``: the same TLS node also verifying a JWT
  bearer token on every call (ES256, a JWKS file; the node's verified-token cache
  as configured by default), the client sending ``authorization: Bearer …``, over
  plaintext unauthenticated Invoke, paired in the same rounds.

Run alone: ``python -m bench.tls`` (prints the figures, writes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bench._report import Report, median

ROOT = Path(__file__).resolve().parent.parent
CHANNEL_N = 8000
CHANNEL_ROUNDS = 7
SLICE = 0.4
UNARY_ROUNDS = 12
IN_FLIGHT = 16
PARAMS = {"text": "hello, mesh", "times": 1}
JWT_ISSUER = "https://issuer.bench.invalid/"
JWT_AUDIENCE = "aralnode-bench"


# -- child processes ------------------------------------------------------------------


def _config(root: Path, name: str, tls: bool) -> Any:
    from aralnode import NodeConfig

    data = root / name
    extra: dict[str, Any] = {}
    if tls:
        extra = {
            "tls_cert_file": data / "tls" / "node.crt",
            "tls_ca_file": data / "tls" / "ca.crt",
            "tls_client_auth": "require",
            "jwt_issuer": JWT_ISSUER,
            "jwt_audience": JWT_AUDIENCE,
            "jwt_jwks_file": root / "jwks.json",
        }
    return NodeConfig(
        name=name,
        host="127.0.0.1",
        grpc_port=0,
        http_port=None,
        discovery="none",
        data_dir=data,
        max_concurrent=4096,
        keepalive_ms=2000,
        **extra,
    )


async def _serve(root: Path, name: str, tls: bool) -> None:
    """A node with ``bench.echo`` and a ``bench`` notification counter."""
    from aralnode import Node
    from aralnode._runtime import tune_for_serving

    node = Node(_config(root, name, tls))

    @node.capability(id="bench.echo")
    async def echo(text: str, times: int = 1) -> str:
        return text * times

    node.on_notification("bench", lambda msg, tx: None)
    await node.start()
    tune_for_serving()
    print(json.dumps({"address": node.address, "node_id": node.node_id}), flush=True)
    await node.wait_closed()


async def _send(root: Path, name: str, tls: bool, address: str, peer: str) -> None:
    """A node that connects to ``peer`` and, per line ``N`` on stdin, sends N signed
    notifications, waits until all are acked, and prints the seconds it took."""
    from aralnode import Node
    from aralnode._runtime import tune_for_serving

    node = Node(_config(root, name, tls))
    await node.start()
    tune_for_serving()
    assert node.channels is not None
    await node.connect(address, expected_node_id=peer)
    assert await node.channels.wait_connected(peer, 20)
    for i in range(1000):  # warm up
        await node.notify(peer, "bench", {"i": i})
    assert await node.channels.flush(peer, 60)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        n = int(line)
        t0 = time.perf_counter()
        for i in range(n):
            await node.notify(peer, "bench", {"i": i})
        assert await node.channels.flush(peer, 120)
        print(time.perf_counter() - t0, flush=True)
    await node.stop(0.5)


@contextlib.contextmanager
def _child(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.tls", *args],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"bench child {proc.args} ended")
    return line.strip()


# -- the run ---------------------------------------------------------------------------


def _pki(root: Path) -> None:
    from aralnode.access.ca import init_ca, issue
    from aralnode.store.keys import KEY_FILE, load_identity

    init_ca(root / "ca")
    for name in ("recv", "send", "server", "client"):
        issue(root / "ca", load_identity(root / name), root / name / KEY_FILE)
    _issuer(root)


def _issuer(root: Path) -> None:
    """An identity provider's key as a JWKS file, and one token it issued."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk |= {"kid": "bench-1", "alg": "ES256", "use": "sig"}
    (root / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "bench-user", "iat": now}
    claims |= {"exp": now + 3600, "scope": "bench:call"}
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "bench-1"})
    (root / "token").write_text(token)


def _channel_ratios(root: Path) -> tuple[list[float], dict[str, list[float]]]:
    rates: dict[str, list[float]] = {"plain": [], "mtls": []}
    ratios: list[float] = []
    with contextlib.ExitStack() as stack:
        senders = {}
        for mode in ("plain", "mtls"):
            tls = "1" if mode == "mtls" else "0"
            suffix = "" if mode == "mtls" else "-plain"  # a data dir per node
            recv = stack.enter_context(_child("serve", str(root), f"recv{suffix}", tls))
            info = json.loads(_line(recv))
            address, peer = info["address"], info["node_id"]
            send = stack.enter_context(
                _child("send", str(root), f"send{suffix}", tls, address, peer)
            )
            assert _line(send) == "ready"
            senders[mode] = send
        for r in range(CHANNEL_ROUNDS):
            order = ("plain", "mtls") if r % 2 == 0 else ("mtls", "plain")
            got = {}
            for mode in order:
                proc = senders[mode]
                assert proc.stdin is not None
                proc.stdin.write(f"{CHANNEL_N}\n")
                proc.stdin.flush()
                got[mode] = CHANNEL_N / float(_line(proc))
                rates[mode].append(got[mode])
            ratios.append(got["mtls"] / got["plain"])
            print(f"  channel round {r + 1}/{CHANNEL_ROUNDS}: {ratios[-1]:.3f}", flush=True)
    return ratios, rates


async def _slice(call: Any, seconds: float) -> float:
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def _clients(root: Path, plain: str, tls: str) -> AsyncIterator[dict[str, Any]]:
    import grpc

    from aralnode.transport.grpc_client import NodeClient

    tls_dir = root / "client" / "tls"
    creds = grpc.ssl_channel_credentials(
        (tls_dir / "ca.crt").read_bytes(),
        (root / "client" / "identity.pem").read_bytes(),
        (tls_dir / "node.crt").read_bytes(),
    )
    bearer = [("authorization", "Bearer " + (root / "token").read_text())]
    async with (
        NodeClient(plain) as p,
        NodeClient(tls, credentials=creds) as t,
        NodeClient(tls, credentials=creds, metadata=bearer) as j,
    ):
        calls = {
            "plain": lambda: p.request("bench.echo", PARAMS, sign=False),
            "tls": lambda: t.request("bench.echo", PARAMS, sign=False),
            "tls_jwt": lambda: j.request("bench.echo", PARAMS, sign=False),
        }
        yield calls


def _unary_ratios(root: Path) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    rates: dict[str, list[float]] = {"plain": [], "tls": [], "tls_jwt": []}
    ratios: dict[str, list[float]] = {"tls": [], "tls_jwt": []}
    with (
        _child("serve", str(root), "server-plain", "0") as plain,
        _child("serve", str(root), "server", "1") as secure,
    ):
        plain_at = json.loads(_line(plain))["address"]
        tls_at = json.loads(_line(secure))["address"]

        async def main() -> None:
            async with _clients(root, plain_at, tls_at) as calls:
                for case in calls.values():
                    await _slice(case, 0.3)  # warm up
                for r in range(UNARY_ROUNDS):
                    order = ("plain", "tls", "tls_jwt")
                    order = order if r % 2 == 0 else order[::-1]
                    got = {c: await _slice(calls[c], SLICE) for c in order}
                    for c, q in got.items():
                        rates[c].append(q)
                    for c, series in ratios.items():
                        series.append(got[c] / got["plain"])

        asyncio.run(main())
    return ratios, rates


def run(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="aralnode-bench-tls-") as tmp:
        root = Path(tmp)
        _pki(root)
        channel, channel_rates = _channel_ratios(root)
        unary, unary_rates = _unary_ratios(root)
    plain_msgs, mtls_msgs = median(channel_rates["plain"]), median(channel_rates["mtls"])
    report.add("channel.mtls.msgs_per_s", mtls_msgs, "msgs/s", plain_msgs)
    report.add("channel.mtls_vs_plain.ratio", median(channel), "ratio")
    plain_qps, tls_qps = median(unary_rates["plain"]), median(unary_rates["tls"])
    jwt_qps = median(unary_rates["tls_jwt"])
    report.add("unary.tls.c16.qps", tls_qps, "calls/s", plain_qps)
    report.add("unary.tls.c16.paired_ratio", median(unary["tls"]), "ratio")
    report.add("unary.tls_jwt.c16.qps", jwt_qps, "calls/s", plain_qps)
    report.add("unary.tls_jwt.c16.paired_ratio", median(unary["tls_jwt"]), "ratio")
    report.section(
        "TLS and mTLS vs plaintext",
        [
            f"Signed channel notifications, {CHANNEL_ROUNDS} rounds of {CHANNEL_N:,} on each",
            "pair of node processes (order reversed every other round):",
            f"mTLS {mtls_msgs:,.0f} msgs/s vs plaintext {plain_msgs:,.0f} msgs/s, paired "
            f"ratio {median(channel):.1%} (floor: ≥ 90 %).",
            f"Unsigned Invoke at {IN_FLIGHT} in flight, {UNARY_ROUNDS} paired rounds of "
            f"{SLICE} s: TLS (mTLS, client certificate) {tls_qps:,.0f} calls/s vs plaintext",
            f"{plain_qps:,.0f} calls/s, paired ratio {median(unary['tls']):.1%}; TLS with a",
            f"JWT bearer token verified per call (cached) {jwt_qps:,.0f} calls/s, paired ratio",
            f"{median(unary['tls_jwt']):.1%} (floor: ≥ 80 %).",
        ],
    )


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "serve":
        asyncio.run(_serve(Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"))
    elif kind == "send":
        root, name, tls, address, peer = sys.argv[2:7]
        asyncio.run(_send(Path(root), name, tls == "1", address, peer))
    else:
        run(Report())


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
