"""The A2A door against the a2a-sdk's own server serving the same echo agent.

Two server processes (``python -m bench.a2a serve node|sdk`` prints their ports):

- **node**: an aralnode with the demo (``demo.echo``), its A2A door on the HTTP port
  (JSON-RPC at ``/a2a``) and the gRPC port (``lf.a2a.v1.A2AService``); every message
  runs through the node's pipeline (authentication, rate limits, governance, audit
  hooks), its tasks in the door's bounded store;
- **sdk**: the a2a-sdk alone: its ``DefaultRequestHandler`` with an ``AgentExecutor``
  that does what ``demo.echo`` does (a task, WORKING, an artifact with the echo,
  COMPLETED), its in-memory task store, its JSON-RPC routes on uvicorn and its gRPC
  servicer on a grpc.aio server: the baseline.

The same ``SendMessage`` (a data part naming the skill, ``A2A-Version: 1.0``) goes
to both, over JSON-RPC from a minimal keep-alive HTTP/1.1 client (bench.bridge's,
so the figures measure the servers, not a Python client) and over gRPC from one
grpc.aio channel. Closed loop, a fixed number of calls in flight, rounds alternating
between the two servers; ``a2a.jsonrpc_vs_sdk.paired_ratio`` and
``a2a.grpc_vs_sdk.paired_ratio`` are node calls/s over SDK calls/s, the median of
adjacent pairs (target >= 1.0). Then an open loop at 500 calls/s, latency from each
call's due time, for p50/p99 of all four.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench._report import Report, percentile
from bench.bridge import HttpConn, _closed_loop, _open_loop, _post, _server

ROOT = Path(__file__).resolve().parent.parent
DURATION = 1.0  # seconds per closed-loop round
ROUNDS = 5
IN_FLIGHT = 8
RATE = 500  # calls/s of the open loop (the p99 point)
RATE_SECONDS = 2.0
OPEN_ROUNDS = 3
TEXT = "hello a2a"
VERSION = [("a2a-version", "1.0")]

Call = Callable[[], Awaitable[None]]


# -- servers (child processes) ------------------------------------------------------------


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
            print(json.dumps({"grpc": node.grpc_port, "http": node.http_port}), flush=True)
            await node.wait_closed()


def _sdk_executor() -> Any:
    from a2a.helpers.proto_helpers import new_data_part, new_task_from_user_message
    from a2a.server.agent_execution import AgentExecutor, RequestContext
    from a2a.server.events import EventQueue
    from a2a.server.tasks import TaskUpdater
    from google.protobuf.json_format import MessageToDict

    class Echo(AgentExecutor):
        """``demo.echo`` as an A2A agent of the SDK alone."""

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
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # before the port is printed: the bench connects at once
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    print(json.dumps({"grpc": grpc_port, "http": sock.getsockname()[1]}), flush=True)
    await web.serve(sockets=[sock])
    await server.stop(1)


# -- callers ------------------------------------------------------------------------------


def _params() -> dict[str, Any]:
    return {"skill": "demo.echo", "parameters": {"text": TEXT}}


def _jsonrpc(port: int) -> Callable[[], Awaitable[Call]]:
    ids = itertools.count(1)

    def body() -> bytes:
        n = next(ids)
        request = {
            "jsonrpc": "2.0", "id": n, "method": "SendMessage",
            "params": {"message": {"messageId": f"m{n}", "role": "ROLE_USER",
                                   "parts": [{"data": _params()}]}},
        }  # fmt: skip
        return _post(port, "/a2a", json.dumps(request).encode(), {"A2A-Version": "1.0"})

    async def make() -> Call:
        conn = await HttpConn(port).open()

        async def call() -> None:
            async with asyncio.timeout(10):
                status, _, answer = await conn.request(body())
            done = b"TASK_STATE_COMPLETED" in answer and TEXT.encode() in answer
            if status != 200 or not done:
                raise RuntimeError(f"bad A2A answer: {status} {answer[:300]!r}")

        return call

    return make


def _grpc(port: int) -> Callable[[], Awaitable[Call]]:
    import grpc
    from a2a.helpers.proto_helpers import new_data_part
    from a2a.types import a2a_pb2, a2a_pb2_grpc

    ids = itertools.count(1)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
    done = a2a_pb2.TaskState.TASK_STATE_COMPLETED

    async def make() -> Call:
        async def call() -> None:
            message = a2a_pb2.Message(message_id=f"g{next(ids)}", role=a2a_pb2.Role.ROLE_USER)
            message.parts.append(new_data_part(_params()))
            reply = await stub.SendMessage(
                a2a_pb2.SendMessageRequest(message=message), metadata=VERSION, timeout=10
            )
            if reply.task.status.state != done:
                raise RuntimeError(f"bad A2A answer: {reply}")

        return call

    return make


# -- the measurement ----------------------------------------------------------------------


async def _measure(report: Report) -> None:
    with _server("node", "bench.a2a") as node, _server("sdk", "bench.a2a") as sdk:
        callers = {
            "jsonrpc.node": _jsonrpc(node["http"]),
            "jsonrpc.sdk": _jsonrpc(sdk["http"]),
            "grpc.node": _grpc(node["grpc"]),
            "grpc.sdk": _grpc(sdk["grpc"]),
        }
        runs: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in callers}
        for round_no in range(ROUNDS):
            print(f"  round {round_no + 1}/{ROUNDS}: {IN_FLIGHT} in flight, {DURATION} s each",
                  flush=True)  # fmt: skip
            for name, make in callers.items():
                runs[name].append(await _closed_loop(make, IN_FLIGHT, DURATION))
        opens: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in callers}
        for round_no in range(OPEN_ROUNDS):
            print(f"  open loop {round_no + 1}/{OPEN_ROUNDS}: {RATE}/s, {RATE_SECONDS} s each",
                  flush=True)  # fmt: skip
            for name, make in callers.items():
                opens[name].append(await _open_loop(make, RATE, RATE_SECONDS))
    rows: list[str] = []
    for transport in ("jsonrpc", "grpc"):
        node_runs, sdk_runs = runs[f"{transport}.node"], runs[f"{transport}.sdk"]
        ratio = statistics.median(n[0] / s[0] for n, s in zip(node_runs, sdk_runs, strict=True))
        report.add(f"a2a.{transport}_vs_sdk.paired_ratio", ratio, "ratio")
        for side, samples in (("node", node_runs), ("sdk", sdk_runs)):
            qps, lat = sorted(samples, key=lambda r: r[0])[len(samples) // 2]
            report.add(f"a2a.{transport}.{side}.qps", qps, "calls/s")
            rows.append(
                f"| {transport} | {side} | closed loop, {IN_FLIGHT} in flight | {qps:.0f} | "
                f"{percentile(lat, 50) * 1000:.2f} | {percentile(lat, 99) * 1000:.2f} |"
            )
        for side in ("node", "sdk"):
            samples = opens[f"{transport}.{side}"]
            rate, lat = sorted(samples, key=lambda r: percentile(r[1], 99))[len(samples) // 2]
            p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            report.add(f"a2a.{transport}.{side}.p99_ms_at_{RATE}", p99, "ms")
            rows.append(f"| {transport} | {side} | open loop at {RATE}/s | {rate:.0f} | "
                        f"{p50:.2f} | {p99:.2f} |")  # fmt: skip
        rows.append("")
        rows.append(f"{transport}: node / SDK calls/s, median of {ROUNDS} adjacent pairs: "
                    f"{ratio:.2f} (target >= 1.0, aim 1.5).")  # fmt: skip
        rows.append("")
    report.section(
        "A2A door against the a2a-sdk's own server",
        [
            "`SendMessage` naming `demo.echo` (a data part), `A2A-Version: 1.0`; the node runs it",
            "through its pipeline, the SDK-only server runs the same echo in its own executor.",
            "Both in processes of their own; JSON-RPC from a keep-alive HTTP/1.1 client, gRPC from",
            "one grpc.aio channel.",
            "",
            "| transport | server | load | calls/s | p50 ms | p99 ms |",
            "|---|---|---|---|---|---|",
            *rows,
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
