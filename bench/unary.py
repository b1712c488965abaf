"""Unary Invoke: bare grpc.aio echo vs node Invoke (unsigned, signed ES256), same run.

Server in a child process, client here, one grpc.aio channel, N calls in flight for
a fixed wall time after a warm-up. The bare echo server answers the same
InvokeRequest/InvokeResponse messages with no processing at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import build_content, seal
from aralnode.core.handshake import build_card
from aralnode.core.identity import KeyRing
from aralnode.testing import fixed_identity
from aralnode.transport.grpc_client import NodeClient
from bench._proc import server
from bench._report import Report, median, percentile

DURATION = 3.0
WARMUP = 0.7
PARAMS = {"text": "hello, mesh", "times": 1}


async def _measure(
    call: Callable[[], Awaitable[object]], in_flight: int, duration: float
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    stop_at = 0.0
    recording = False

    async def worker() -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            await call()
            if recording:
                latencies.append(time.perf_counter() - t0)

    stop_at = time.perf_counter() + WARMUP
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    recording = True
    start = time.perf_counter()
    stop_at = start + duration
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies


async def _bare_case(port: int, in_flight: int) -> tuple[float, list[float]]:
    payload = codec.encode(PARAMS)
    content = build_content(
        sender="bench",
        recipient="",
        body=pb.Body(
            type=pb.MessageType.MESSAGE_TYPE_REQUEST, action="demo.echo", parameters=payload
        ),
        clock=SYSTEM_CLOCK,
    )
    request = pb.InvokeRequest(message=seal(content, None))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        invoke = channel.unary_unary(
            "/aral.v1.AgentNode/Invoke",
            request_serializer=pb.InvokeRequest.SerializeToString,
            response_deserializer=pb.InvokeResponse.FromString,
        )

        async def call() -> object:
            # Build a fresh envelope like the node cases do, so the client side does
            # comparable message work; the bare server only echoes it.
            content.header.message_id = str(time.perf_counter_ns())
            request.message.content = content.SerializeToString()
            return await invoke(request)

        return await _measure(call, in_flight, DURATION)


async def _node_case(port: int, in_flight: int, signed: bool) -> tuple[float, list[float]]:
    identity = fixed_identity(7) if signed else None
    async with NodeClient(f"127.0.0.1:{port}", identity=identity, keyring=KeyRing()) as client:
        if signed:
            assert identity is not None
            card = build_card(
                identity,
                name="bench-client",
                endpoints=[],
                registry=CapabilityRegistry(),
                clock=SYSTEM_CLOCK,
            )
            await client.handshake(card)

        async def call() -> object:
            return await client.request("demo.echo", PARAMS, sign=signed)

        return await _measure(call, in_flight, DURATION)


def run(report: Report) -> None:
    results: dict[tuple[str, int], tuple[float, list[float]]] = {}

    async def main() -> None:
        with server("bare") as bare_port, server("node") as node_port:
            for in_flight in (1, 16):
                # Interleave cases so drift on a shared machine hits all alike.
                results[("bare", in_flight)] = await _bare_case(bare_port, in_flight)
                results[("unsigned", in_flight)] = await _node_case(
                    node_port, in_flight, signed=False
                )
                results[("signed", in_flight)] = await _node_case(node_port, in_flight, signed=True)

    asyncio.run(main())
    rows = [
        "| case | in flight | QPS | ratio to bare | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for in_flight in (1, 16):
        bare_qps, bare_lat = results[("bare", in_flight)]
        for case, label in (
            ("bare", "bare grpc.aio echo"),
            ("unsigned", "node Invoke, unsigned"),
            ("signed", "node Invoke, ES256 signed"),
        ):
            qps, lat = results[(case, in_flight)]
            p50, p99 = median(lat) * 1000, percentile(lat, 99) * 1000
            base = None if case == "bare" else bare_qps
            report.add(f"unary.{case}.c{in_flight}.qps", qps, "calls/s", base)
            report.add(
                f"unary.{case}.c{in_flight}.p50",
                p50,
                "ms",
                None if case == "bare" else median(bare_lat) * 1000,
            )
            report.add(
                f"unary.{case}.c{in_flight}.p99",
                p99,
                "ms",
                None if case == "bare" else percentile(bare_lat, 99) * 1000,
            )
            share = qps / bare_qps
            rows.append(
                f"| {label} | {in_flight} | {qps:,.0f} | {share:.1%} | {p50:.3f} | {p99:.3f} |"
            )
    bare_p50 = median(results[("bare", 1)][1]) * 1000
    uns_p50 = median(results[("unsigned", 1)][1]) * 1000
    rows += [
        "",
        f"p50 at 1 in flight: node unsigned {uns_p50:.3f} ms vs bare {bare_p50:.3f} ms "
        f"(+{uns_p50 - bare_p50:.3f} ms; floor: ≤ +0.25 ms).",
        "Floors (issue 2): signed ≥ 75 % and unsigned ≥ 90 % of bare QPS at 16 in flight.",
        "The signed case signs every request (client) and verifies it (node), and the node",
        "signs every response, which the client verifies: two signatures per call.",
    ]
    report.section("Unary Invoke vs bare grpc.aio", rows)


if __name__ == "__main__":
    r = Report()
    run(r)
