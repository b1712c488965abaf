"""The A2A door against the a2a-sdk's own server serving the same echo agent.

Two server processes (``python -m bench.a2a serve node|sdk`` prints their ports and
pid as one JSON line):

- **node**: an aralnode with the demo (``demo.echo``), its A2A door on the HTTP port
  (JSON-RPC at ``/a2a``) and the gRPC port (``lf.a2a.v1.A2AService``); every message
  runs through the node's pipeline (authentication, rate limits, governance, audit
  hooks), its tasks in the door's bounded store;
- **sdk**: the a2a-sdk alone: its ``DefaultRequestHandler`` with an ``AgentExecutor``
  that does what ``demo.echo`` does (a task, WORKING, an artifact ``result`` with the
  echo, COMPLETED: an answer of the same shape and size as the node's), its
  ``InMemoryTaskStore``, its JSON-RPC routes on uvicorn and its gRPC servicer
  (``GrpcHandler``) on a grpc.aio server: the baseline.

The same ``SendMessage`` (A2A 1.0: a data part ``{"skill": "demo.echo", "parameters":
{"text": ...}}``, header or metadata ``A2A-Version: 1.0``, which the SDK's server
requires) goes to both: over JSON-RPC from a minimal keep-alive HTTP/1.1 client
(bench.bridge's, so the figures measure the servers, not a Python client), over gRPC
with the SDK's generated ``A2AServiceStub`` on one grpc.aio channel per server with
several calls in flight. Every answer must say ``TASK_STATE_COMPLETED``; the first of
each connection is read in full (the artifact carries the echoed text), so the bench
cannot time an error page.

Closed loop, a fixed number of calls in flight, rounds alternating between the two
servers (which goes first alternates too); ``a2a.jsonrpc_vs_sdk.paired_ratio`` and
``a2a.grpc_vs_sdk.paired_ratio`` are node calls/s over SDK calls/s, the median over
adjacent pairs (target >= 1.0, aim 1.5). Beside them, each server's CPU per call
(all its threads, from ``/proc``): what a call costs, whatever the machine's other
load. Then an open loop at 500 calls/s (the issue's point), latency counted from each
call's due time (no coordinated omission), p50/p99 of all four; where 500/s is more
than a server can take on the machine, the achieved rate says so and the p99 is the
queue that builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench._pace import open_loop
from bench._proc import cpu_seconds
from bench._report import Report, percentile
from bench.bridge import HttpConn, _post, _server

ROOT = Path(__file__).resolve().parent.parent
DURATION = 1.0  # seconds per closed-loop round
ROUNDS = 7
IN_FLIGHT = 8
WARMUP = 3  # calls on each connection before it is timed
RATE = 500  # calls/s of the open loop (the p99 point)
RATE_SECONDS = 2.0
OPEN_ROUNDS = 3
OPEN_POOL = 32  # connections (calls in flight at most) of the open loop
TIMEOUT = 10.0  # seconds, any one call
TEXT = "hello a2a"
SKILL = "demo.echo"
PARAMS = {"skill": SKILL, "parameters": {"text": TEXT}}
ECHO = {"text": TEXT, "echo": [TEXT]}  # what demo.echo answers, and the SDK's agent
VERSION = (("a2a-version", "1.0"),)

Call = Callable[[], Awaitable[None]]


# -- servers (child processes) ------------------------------------------------------------


def _ready(**ports: int) -> None:
    print(json.dumps({**ports, "pid": os.getpid()}), flush=True)


async def _serve_node() -> None:
    from aralnode import Node, NodeConfig
    from aralnode._runtime import tune_for_serving

    with tempfile.TemporaryDirectory() as tmp:
        node = Node(
            NodeConfig(
                name="bench-a2a", host="127.0.0.1", grpc_port=0, http_port=0,
                discovery="none", data_dir=Path(tmp), max_concurrent=4096,
            )
        )  # fmt: skip
        node.load(str(ROOT / "examples" / "demo.py"))
        async with node:
            tune_for_serving()  # as `aralnode run` does
            _ready(grpc=node.grpc_port, http=node.http_port)
            await node.wait_closed()


def _sdk_executor() -> Any:
    from a2a.helpers.proto_helpers import new_data_part, new_task_from_user_message
    from a2a.server.agent_execution import AgentExecutor, RequestContext
    from a2a.server.events import EventQueue
    from a2a.server.tasks import TaskUpdater
    from google.protobuf.json_format import MessageToDict

    class Echo(AgentExecutor):
        """``demo.echo`` as an A2A agent of the SDK alone, the steps the node's
        executor takes (task, WORKING, artifact ``result``, COMPLETED)."""

        async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
            message = context.message
            assert message is not None
            assert context.task_id
            assert context.context_id
            if context.current_task is None:
                task = new_task_from_user_message(message)
                task.id, task.context_id = context.task_id, context.context_id
                await event_queue.enqueue_event(task)
            updater = TaskUpdater(event_queue, context.task_id, context.context_id)
            await updater.start_work()
            data = [MessageToDict(p.data) for p in message.parts if p.HasField("data")]
            text = data[0]["parameters"]["text"]
            part = new_data_part({"text": text, "echo": [text]})
            await updater.add_artifact([part], name="result")
            await updater.complete()

        async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
            raise NotImplementedError

    return Echo()


async def _serve_sdk() -> None:
    import socket

    import grpc
    import uvicorn
    from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
    from a2a.server.routes import create_jsonrpc_routes
    from a2a.server.tasks import InMemoryTaskStore
    from a2a.types import a2a_pb2, a2a_pb2_grpc
    from starlette.applications import Starlette

    card = a2a_pb2.AgentCard(name="sdk-echo", description="echo", version="1")
    handler = DefaultRequestHandler(
        agent_executor=_sdk_executor(), task_store=InMemoryTaskStore(), agent_card=card
    )
    server = grpc.aio.server()
    a2a_pb2_grpc.add_A2AServiceServicer_to_server(GrpcHandler(handler), server)  # type: ignore[no-untyped-call]
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    app = Starlette(routes=create_jsonrpc_routes(handler, "/a2a"))
    sock = socket.socket(
        socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
    )  # NODELAY, see http.py
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before the port is printed: the bench connects at once
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    _ready(grpc=grpc_port, http=sock.getsockname()[1])
    try:
        await web.serve(sockets=[sock])
    finally:
        await server.stop(1)


# -- checks -------------------------------------------------------------------------------


def _check_task(task: dict[str, Any], where: str) -> None:
    """A completed task whose artifact ``result`` is the echo, or a loud failure."""
    state = task.get("status", {}).get("state")
    artifacts = task.get("artifacts") or [{}]
    parts = artifacts[0].get("parts") or [{}]
    if state != "TASK_STATE_COMPLETED" or parts[0].get("data") != ECHO:
        raise RuntimeError(f"{where}: not the echo: {json.dumps(task)[:400]}")


def _check_jsonrpc(status: int, answer: bytes, full: bool) -> None:
    if status != 200 or b'"TASK_STATE_COMPLETED"' not in answer:
        raise RuntimeError(f"JSON-RPC: bad A2A answer: {status} {answer[:400]!r}")
    if full:
        reply = json.loads(answer)
        _check_task(reply.get("result", {}).get("task", {}), "JSON-RPC")


# -- callers: each returns a factory of calls (one connection, or one slot of a channel) --


def _jsonrpc(port: int, conns: list[HttpConn]) -> Callable[[], Awaitable[Call]]:
    """``SendMessage`` over JSON-RPC, a fresh message and request id each call; the
    connections it opens go to ``conns`` (the caller closes them)."""
    ids = itertools.count(1)
    head = b'{"jsonrpc":"2.0","method":"SendMessage","params":{"message":{"messageId":"m'
    middle = (
        b'","role":"ROLE_USER","parts":[{"data":'
        + json.dumps(PARAMS, separators=(",", ":")).encode()
        + b'}]}},"id":'
    )

    def body() -> bytes:
        n = str(next(ids)).encode()
        return _post(port, "/a2a", head + n + middle + n + b"}", {"A2A-Version": "1.0"})

    async def make() -> Call:
        conn = await HttpConn(port).open()
        conns.append(conn)
        first = True

        async def call() -> None:
            nonlocal first
            async with asyncio.timeout(TIMEOUT):
                status, _, answer = await conn.request(body())
            _check_jsonrpc(status, answer, first)
            first = False

        return call

    return make


def _grpc(channel: Any) -> Callable[[], Awaitable[Call]]:
    """``SendMessage`` with the SDK's generated stub; all calls share ``channel``."""
    from a2a.helpers.proto_helpers import new_data_part
    from a2a.types import a2a_pb2, a2a_pb2_grpc
    from google.protobuf.json_format import MessageToDict

    ids = itertools.count(1)
    stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
    template = a2a_pb2.SendMessageRequest()
    template.message.role = a2a_pb2.Role.ROLE_USER
    template.message.parts.append(new_data_part(PARAMS))
    done = a2a_pb2.TaskState.TASK_STATE_COMPLETED

    async def make() -> Call:
        first = True

        async def call() -> None:
            nonlocal first
            request = a2a_pb2.SendMessageRequest()
            request.CopyFrom(template)
            request.message.message_id = f"g{next(ids)}"
            reply = await stub.SendMessage(request, metadata=VERSION, timeout=TIMEOUT)
            if reply.task.status.state != done:
                raise RuntimeError(f"gRPC: bad A2A answer: {reply}")
            if first:
                _check_task(MessageToDict(reply.task), "gRPC")
                first = False

        return call

    return make


# -- load ---------------------------------------------------------------------------------


async def _closed_round(calls: list[Call], pid: int, seconds: float) -> tuple[float, float]:
    """Every call in ``calls`` in a loop for ``seconds``: calls/s, server CPU µs per call."""
    stop = time.perf_counter() + seconds

    async def worker(call: Call) -> int:
        n = 0
        while time.perf_counter() < stop:
            await call()
            n += 1
        return n

    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    counts = await asyncio.gather(*(worker(c) for c in calls))
    elapsed, cpu1 = time.perf_counter() - t0, cpu_seconds(pid)
    total = sum(counts)
    cpu_us = (cpu1 - cpu0) / total * 1e6 if cpu0 is not None and cpu1 is not None else 0.0
    return total / elapsed, cpu_us


async def _open(calls: list[Call], rate: int, seconds: float) -> tuple[float, list[float]]:
    """Calls at fixed times (rate/s) over a pool of ``calls``; latency from each due time."""
    pool: asyncio.Queue[Call] = asyncio.Queue()
    for call in calls:
        pool.put_nowait(call)

    async def run() -> None:
        call = await pool.get()
        try:
            await call()
        finally:
            pool.put_nowait(call)

    return await open_loop(run, rate, seconds)


# -- the measurement ----------------------------------------------------------------------


async def _measure(report: Report) -> None:
    import grpc

    with _server("node", "bench.a2a") as node, _server("sdk", "bench.a2a") as sdk:
        servers = {"node": node, "sdk": sdk}
        conns: list[HttpConn] = []
        channels = {side: grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}")
                    for side, ports in servers.items()}  # fmt: skip
        try:
            makers = {
                f"{transport}.{side}": make
                for side, ports in servers.items()
                for transport, make in (
                    ("jsonrpc", _jsonrpc(ports["http"], conns)),
                    ("grpc", _grpc(channels[side])),
                )
            }
            pids = {name: servers[name.split(".")[1]]["pid"] for name in makers}

            async def connect(name: str, n: int) -> list[Call]:
                """``n`` fresh connections (or channel slots), warmed up and checked.
                Fresh for every round: servers close idle keep-alive connections."""
                calls = [await makers[name]() for _ in range(n)]

                async def warm(call: Call) -> None:
                    for _ in range(WARMUP):
                        await call()

                await asyncio.gather(*(warm(call) for call in calls))
                return calls

            def hang_up() -> None:
                for conn in conns:
                    conn.close()
                conns.clear()

            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in makers}
            for round_no in range(ROUNDS):
                print(f"  round {round_no + 1}/{ROUNDS}: {IN_FLIGHT} in flight, {DURATION} s "
                      "per server and transport", flush=True)  # fmt: skip
                for transport in ("jsonrpc", "grpc"):
                    sides = ("node", "sdk") if round_no % 2 == 0 else ("sdk", "node")
                    for side in sides:
                        name = f"{transport}.{side}"
                        calls = await connect(name, IN_FLIGHT)
                        runs[name].append(await _closed_round(calls, pids[name], DURATION))
                        hang_up()
            opens: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in makers}
            for round_no in range(OPEN_ROUNDS):
                print(f"  open loop {round_no + 1}/{OPEN_ROUNDS}: {RATE}/s, {RATE_SECONDS} s "
                      "each", flush=True)  # fmt: skip
                for name in makers:
                    calls = await connect(name, OPEN_POOL)
                    opens[name].append(await _open(calls, RATE, RATE_SECONDS))
                    hang_up()
        finally:
            for conn in conns:
                conn.close()
            for channel in channels.values():
                await channel.close()
    _report(report, runs, opens)


def _report(
    report: Report,
    runs: dict[str, list[tuple[float, float]]],
    opens: dict[str, list[tuple[float, list[float]]]],
) -> None:
    rows: list[str] = []
    notes: list[str] = []
    for transport in ("jsonrpc", "grpc"):
        node_runs, sdk_runs = runs[f"{transport}.node"], runs[f"{transport}.sdk"]
        ratio = statistics.median(n[0] / s[0] for n, s in zip(node_runs, sdk_runs, strict=True))
        report.add(f"a2a.{transport}_vs_sdk.paired_ratio", ratio, "ratio")
        qps = {side: statistics.median(r[0] for r in runs[f"{transport}.{side}"])
               for side in ("node", "sdk")}  # fmt: skip
        cpu = {side: statistics.median(r[1] for r in runs[f"{transport}.{side}"])
               for side in ("node", "sdk")}  # fmt: skip
        report.add(f"a2a.{transport}.node.qps", qps["node"], "calls/s", baseline=qps["sdk"])
        report.add(f"a2a.{transport}.sdk.qps", qps["sdk"], "calls/s")
        report.add(f"a2a.{transport}.node.cpu_us_per_call", cpu["node"], "us",
                   baseline=cpu["sdk"])  # fmt: skip
        report.add(f"a2a.{transport}.sdk.cpu_us_per_call", cpu["sdk"], "us")
        for side in ("node", "sdk"):
            samples = opens[f"{transport}.{side}"]
            # the round with the median p99
            rate, lat = sorted(samples, key=lambda r: percentile(r[1], 99))[len(samples) // 2]
            p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            report.add(f"a2a.{transport}.{side}.p50_ms_at_{RATE}", p50, "ms")
            report.add(f"a2a.{transport}.{side}.p99_ms_at_{RATE}", p99, "ms")
            report.add(f"a2a.{transport}.{side}.calls_per_s_at_{RATE}", rate, "calls/s")
            rows.append(
                f"| {transport} | {side} | {qps[side]:.0f} | {cpu[side]:.0f} | {rate:.0f} | "
                f"{p50:.2f} | {p99:.2f} |"
            )
            if rate < 0.97 * RATE:
                notes.append(
                    f"{transport} {side}: {RATE}/s offered, {rate:.0f}/s achieved — more than "
                    "it can take here; its p99 at 500/s is the queue that builds."
                )
        notes.append(
            f"{transport}: node / SDK calls/s, median of {ROUNDS} adjacent pairs: {ratio:.2f} "
            "(target >= 1.0, aim 1.5)."
        )
    report.section(
        "A2A door against the a2a-sdk's own server",
        [
            "`SendMessage` naming `demo.echo` (a data part), `A2A-Version: 1.0`; the node runs it",
            "through its pipeline, the SDK-only server runs the same echo in its own executor",
            "(both on the SDK's `DefaultRequestHandler`). Each in a process of its own; JSON-RPC",
            "from a keep-alive HTTP/1.1 client, gRPC from the SDK's stub on one grpc.aio channel.",
            f"Closed loop: {IN_FLIGHT} in flight, median of {ROUNDS} rounds of {DURATION} s; CPU:",
            f"the server process's, per call. Open loop: {RATE}/s for {RATE_SECONDS} s over "
            f"{OPEN_POOL} connections,",
            f"latency from each call's due time, the round with the median p99 of {OPEN_ROUNDS}.",
            "",
            f"| transport | server | calls/s | CPU µs/call | calls/s at {RATE}/s | p50 ms | "
            "p99 ms |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            *(f"- {note}" for note in notes),
        ],
    )


def run(report: Report) -> None:
    """Measure the A2A door against the SDK's server (about a minute)."""
    asyncio.run(_measure(report))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_node() if sys.argv[2] == "node" else _serve_sdk())
    else:
        r = Report()
        run(r)
