"""REST and MCP bridges against direct gRPC Invoke and the official MCP SDK's own server.

All in one run, every server in its own process (``python -m bench.bridge serve KIND``
prints its ports), the load generators here:

- gRPC ``Invoke`` of ``demo.echo`` straight to the node (the baseline for REST);
- REST ``POST /v1/invoke`` with the same call, on the same node;
- MCP ``tools/call demo.echo`` on the node's ``/mcp``;
- MCP ``tools/call echo`` on the SDK's ``MCPServer`` serving the same function, with
  the same transport settings (streamable HTTP, JSON responses, sessions) — the
  baseline for MCP;
- the same MCP call on a third node with the full policy (``bench.governance``'s
  100 rules) and the audit log on: ``bridge.mcp_governed_vs_off.paired_ratio`` is
  what ACGP-1008 §8.2 asks, the calls/s it achieves at 1,000/s offered over the
  ungoverned node's (target >= 0.95), ``bridge.mcp_governed.p95_added_ms`` the p95
  it adds there (<= 1 ms); ``…capacity_ratio`` the same ratio at saturation.

HTTP load comes from a minimal keep-alive HTTP/1.1 client (like wrk, not httpx), so
the figures measure the servers, not a Python client. Closed loop with a fixed
number of requests in flight for throughput; then an open loop at a fixed rate
(1000/s, ACGP-1008) whose latency counts from each request's scheduled time, so a
stall is not hidden (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from aralnode._runtime import tune_for_serving
from bench._pace import open_loop
from bench._report import Report, percentile
from bench.governance import hundred_rules

ROOT = Path(__file__).resolve().parent.parent
DURATION = 1.0  # seconds per closed-loop round
ROUNDS = 7
# Open-loop rounds: many short ones rather than a few long ones. Stalls from outside
# the servers (40 to 120 ms here, on the ungoverned node as on the governed one, with
# both event loops and the generator's schedule on time) ruin the round they fall in;
# per-round figures are paired and their median taken, so it holds while fewer than
# half the pairs have one. At 2 s a round about half the pairs did on a noisy day.
OPEN_ROUNDS = 15
IN_FLIGHT = 8
RATE = 1000  # requests/s of the open-loop latency run
RATE_SECONDS = 1.0
TEXT = "hello bridge"

# -- servers (child processes) ------------------------------------------------------------


async def _serve_node(governed: bool = False) -> None:
    from aralnode import Node, NodeConfig

    with tempfile.TemporaryDirectory() as tmp:
        # Governed (issue 16): the 100-rule policy of bench/governance.py and the
        # audit log (every call recorded, committed before its answer leaves).
        extra: dict[str, object] = {}
        if governed:
            policy = hundred_rules(Path(tmp) / "policy.toml")
            extra = {"policy_file": policy, "audit": True, "policy_reload_seconds": 0}
        node = Node(
            NodeConfig(
                **extra,  # type: ignore[arg-type]
                name="bench-bridge",
                host="127.0.0.1",
                grpc_port=0,
                http_port=0,
                discovery="none",
                data_dir=Path(tmp),
                max_concurrent=4096,
            )
        )
        node.load(str(ROOT / "examples" / "demo.py"))
        async with node:
            tune_for_serving()  # as `aralnode run` does
            print(json.dumps({"grpc": node.grpc_port, "http": node.http_port}), flush=True)
            await node.wait_closed()


async def _serve_sdk() -> None:
    import socket

    import uvicorn
    from mcp.server.mcpserver import MCPServer

    sdk = MCPServer("sdk-bench")

    @sdk.tool()
    async def echo(text: str, times: int = 1) -> dict[str, object]:
        """Echo the text back, `times` times."""
        return {"text": text, "echo": [text] * times}

    app = sdk.streamable_http_app(json_response=True)
    sock = socket.socket(
        socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )  # NODELAY, see http.py
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before the port is printed: the bench connects at once
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    print(json.dumps({"http": sock.getsockname()[1]}), flush=True)
    await server.serve(sockets=[sock])


@contextmanager
def _server(kind: str, module: str = "bench.bridge") -> Iterator[dict[str, int]]:
    """``python -m MODULE serve KIND`` in a process of its own, until the block ends;
    the ports it printed (one JSON line)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "serve", kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            ports: dict[str, int] = json.loads(line)
        except ValueError:
            raise RuntimeError(f"server {kind} did not start: {line!r}") from None
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a minimal HTTP/1.1 keep-alive client ----------------------------------------------------


class HttpConn:
    """One keep-alive connection, one request at a time; only what the bench needs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def open(self) -> HttpConn:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    def close(self) -> None:
        self.writer.close()

    async def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body


def _post(port: int, path: str, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Content-Length": str(len(body)),
        **(extra or {}),
    }
    head = (
        f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    )
    return head.encode() + body


async def _mcp_session(port: int) -> dict[str, str]:
    """Open an MCP session the way a handshake-era client does; returns the headers to send."""
    conn = await HttpConn(port).open()
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench", "version": "0"},
        },
    }
    status, headers, body = await conn.request(_post(port, "/mcp", json.dumps(init).encode()))
    if status != 200:
        raise RuntimeError(f"initialize failed: {status} {body[:200]!r}")
    session = {"mcp-session-id": headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await conn.request(_post(port, "/mcp", json.dumps(note).encode(), session))
    conn.close()
    return session


# -- load generation ---------------------------------------------------------------------------

Call = Callable[[], Awaitable[None]]


async def _closed_loop(
    make_call: Callable[[], Awaitable[Call]], in_flight: int, seconds: float
) -> tuple[float, list[float]]:
    calls = [await make_call() for _ in range(in_flight)]
    for call in calls:  # warm up every connection
        for _ in range(50):
            await call()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker(call: Call) -> int:
        n = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)
            n += 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(worker(c) for c in calls))
    elapsed = time.perf_counter() - t0
    return sum(counts) / elapsed, latencies


async def _open_loop(
    make_call: Callable[[], Awaitable[Call]], rate: int, seconds: float
) -> tuple[float, list[float]]:
    """Requests at fixed times (rate/s) on a pool of connections; latency from the schedule."""
    pool: asyncio.Queue[Call] = asyncio.Queue()
    for _ in range(32):
        pool.put_nowait(await make_call())

    async def run() -> None:
        call = await pool.get()
        try:
            await call()
        finally:
            pool.put_nowait(call)

    return await open_loop(run, rate, seconds)


def _expect_ok(status: int, body: bytes) -> None:
    if status != 200 or b'"isError":true' in body:
        raise RuntimeError(f"bad answer: {status} {body[:300]!r}")


def _http_caller(port: int, raw: bytes | Callable[[], bytes]) -> Callable[[], Awaitable[Call]]:
    async def make() -> Call:
        conn = await HttpConn(port).open()

        async def call() -> None:
            async with asyncio.timeout(10):
                status, _, body = await conn.request(raw() if callable(raw) else raw)
            _expect_ok(status, body)

        return call

    return make


def _grpc_caller(port: int) -> Callable[[], Awaitable[Call]]:
    import grpc

    from aralnode import _proto as pb

    request = pb.InvokeRequest(call=pb.Call(capability="demo.echo"))
    request.call.parameters.update({"text": TEXT})
    data = request.SerializeToString()

    async def make() -> Call:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        invoke = channel.unary_unary(f"/{pb.AGENT_NODE_SERVICE_NAME}/Invoke")

        async def call() -> None:
            await invoke(data)

        return call

    return make


def _mcp_call(port: int, session: dict[str, str], tool: str) -> Callable[[], bytes]:
    """A fresh request each time: ids must differ within a session, calls overlap."""
    ids = itertools.count(1)
    head = (
        b'{"jsonrpc":"2.0","method":"tools/call","params":'
        + json.dumps({"name": tool, "arguments": {"text": TEXT}}).encode()
    )

    def build() -> bytes:
        return _post(port, "/mcp", head + b',"id":' + str(next(ids)).encode() + b"}", session)

    return build


async def _measure(report: Report) -> None:
    rows: list[str] = []
    results: dict[str, tuple[float, list[float]]] = {}
    with (
        _server("node") as node_ports,
        _server("sdk") as sdk_ports,
        _server("governed") as governed_ports,
    ):
        grpc_port, http_port, sdk_port = node_ports["grpc"], node_ports["http"], sdk_ports["http"]
        governed_port = governed_ports["http"]
        governed_session = await _mcp_session(governed_port)
        rest_body = json.dumps(
            {"call": {"capability": "demo.echo", "parameters": {"text": TEXT}}}
        ).encode()
        node_session = await _mcp_session(http_port)
        sdk_session = await _mcp_session(sdk_port)
        callers = {
            "grpc_invoke": _grpc_caller(grpc_port),
            "rest_invoke": _http_caller(http_port, _post(http_port, "/v1/invoke", rest_body)),
            "mcp_node": _http_caller(http_port, _mcp_call(http_port, node_session, "demo.echo")),
            "mcp_sdk": _http_caller(sdk_port, _mcp_call(sdk_port, sdk_session, "echo")),
            "mcp_governed": _http_caller(
                governed_port, _mcp_call(governed_port, governed_session, "demo.echo")
            ),
        }
        # Rounds alternate between the paths compared, so that load from elsewhere on
        # the machine lands on both sides; each ratio is taken within a pair of
        # adjacent rounds, and the median over rounds is reported.
        runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in callers}
        for round_no in range(ROUNDS):
            print(
                f"  round {round_no + 1}/{ROUNDS}: {IN_FLIGHT} in flight, {DURATION} s per path",
                flush=True,
            )
            for name, make in callers.items():
                runs[name].append(await _closed_loop(make, IN_FLIGHT, DURATION))
        for name, samples in runs.items():
            results[name] = sorted(samples, key=lambda r: r[0])[len(samples) // 2]
        ratios = {
            pair: statistics.median(
                a[0] / b[0] for a, b in zip(runs[pair[0]], runs[pair[1]], strict=True)
            )
            for pair in (
                ("rest_invoke", "grpc_invoke"),
                ("mcp_node", "mcp_sdk"),
                ("mcp_governed", "mcp_node"),
            )
        }
        # The governed node runs next to the ungoverned one (its pair), before it every
        # other round: what one run leaves the machine in falls on both sides alike.
        opens: dict[str, list[tuple[float, list[float]]]] = {
            "mcp_node": [], "mcp_governed": [], "mcp_sdk": [],
        }  # fmt: skip
        for round_no in range(OPEN_ROUNDS):
            print(
                f"  open loop {round_no + 1}/{OPEN_ROUNDS}: {RATE}/s, {RATE_SECONDS} s per server",
                flush=True,
            )
            order = list(opens) if round_no % 2 == 0 else list(opens)[::-1]
            for name in order:
                opens[name].append(await _open_loop(callers[name], RATE, RATE_SECONDS))
        open_results = {
            name: sorted(samples, key=lambda r: percentile(r[1], 99))[len(samples) // 2]
            for name, samples in opens.items()
        }

    grpc_qps = results["grpc_invoke"][0]
    sdk_qps = results["mcp_sdk"][0]
    report.add("bridge.grpc_invoke.qps", results["grpc_invoke"][0], "calls/s")
    report.add("bridge.rest_invoke.qps", results["rest_invoke"][0], "calls/s", baseline=grpc_qps)
    report.add(
        "bridge.rest_vs_grpc_invoke.paired_ratio", ratios[("rest_invoke", "grpc_invoke")], "ratio"
    )
    report.add("bridge.mcp_tools_call.qps", results["mcp_node"][0], "calls/s", baseline=sdk_qps)
    report.add("bridge.mcp_vs_sdk.paired_ratio", ratios[("mcp_node", "mcp_sdk")], "ratio")
    report.add("bridge.mcp_sdk_tools_call.qps", sdk_qps, "calls/s")
    for name, (qps, lat) in results.items():
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        rows.append(
            f"| {name} | closed loop, {IN_FLIGHT} in flight | {qps:.0f} | {p50:.2f} | {p99:.2f} |"
        )
    for name, (rate, lat) in open_results.items():
        p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
        report.add(f"bridge.{name}.open_loop_{RATE}.p99", p99, "ms")
        load = f"open loop at {RATE}/s (median of {OPEN_ROUNDS})"
        rows.append(f"| {name} | {load} | {rate:.0f} | {p50:.2f} | {p99:.2f} |")
    rest_ratio, mcp_ratio = ratios[("rest_invoke", "grpc_invoke")], ratios[("mcp_node", "mcp_sdk")]
    rows += [
        "",
        f"Paired ratios (median over {ROUNDS} adjacent rounds): REST / gRPC Invoke "
        f"{rest_ratio:.2f}, MCP node / MCP SDK {mcp_ratio:.2f}.",
    ]
    node_p99 = percentile(open_results["mcp_node"][1], 99) * 1000
    sdk_p99 = percentile(open_results["mcp_sdk"][1], 99) * 1000
    report.add("bridge.mcp_tools_call.open_loop_p99_vs_sdk", node_p99, "ms", baseline=sdk_p99)
    # ACGP-1008 §8.2: MCP tool calls at 1,000/s, < 5 % throughput degradation. The
    # rate each server achieved at that offered load, governed over off, paired per
    # open-loop round; and, beside it, the same at saturation (closed loop): what
    # governance costs a node that has no CPU to spare.
    governed_ratio = statistics.median(
        g[0] / o[0] for g, o in zip(opens["mcp_governed"], opens["mcp_node"], strict=True)
    )
    capacity_ratio = ratios[("mcp_governed", "mcp_node")]
    report.add("bridge.mcp_governed_vs_off.paired_ratio", governed_ratio, "ratio")
    report.add("bridge.mcp_governed_vs_off.capacity_ratio", capacity_ratio, "ratio")
    # p95 added at 1,000 calls/s: per open-loop round, governed minus off, median.
    added = statistics.median(
        percentile(g[1], 95) * 1000 - percentile(o[1], 95) * 1000
        for g, o in zip(opens["mcp_governed"], opens["mcp_node"], strict=True)
    )
    report.add("bridge.mcp_governed.p95_added_ms", added, "ms")
    rows.append(
        f"Governed MCP (100-rule policy + audit log) / MCP node at {RATE}/s: calls/s "
        f"{governed_ratio:.2f}, p95 added {added:.2f} ms (targets: >= 0.95, <= 1 ms; "
        f"ACGP-1008 §8.2); at saturation ({IN_FLIGHT} in flight) {capacity_ratio:.2f}."
    )
    report.section(
        "REST and MCP bridges",
        [
            "`demo.echo` on one node process; the SDK's `MCPServer` serves the same function in",
            "another (streamable HTTP, JSON responses, sessions, for both). Load from a keep-alive",
            "HTTP/1.1 client and a grpc.aio channel in the bench process. Targets: REST >= 50 % of",
            "gRPC Invoke; MCP >= 1000 calls/s with p99 <= 5 ms, and >= the SDK's own server.",
            "What a change costs these doors, against an earlier revision, paired the same",
            "way (and the node's CPU per call): `python -m bench.versus_http REV`.",
            "",
            "| path | load | calls/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|",
            *rows,
        ],
    )


def run(report: Report) -> None:
    """Measure the bridges (about 40 s); figures go to ``report``."""
    asyncio.run(_measure(report))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        kind = sys.argv[2]
        with contextlib.suppress(KeyboardInterrupt):
            if kind == "sdk":
                asyncio.run(_serve_sdk())
            else:
                asyncio.run(_serve_node(governed=kind == "governed"))
    else:
        r = Report()
        run(r)
