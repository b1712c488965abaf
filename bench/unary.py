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

DURATION = 1.5
WARMUP = 0.3
ROUNDS = 5
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


CASES = (
    ("bare", "bare grpc.aio echo"),
    ("unsigned", "node Invoke, unsigned"),
    ("signed", "node Invoke, ES256 signed"),
)


def run(report: Report) -> None:
    qps: dict[tuple[str, int], list[float]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    lat: dict[tuple[str, int], list[float]] = {}

    async def one(case: str, bare_port: int, node_port: int, in_flight: int) -> float:
        if case == "bare":
            value, samples = await _bare_case(bare_port, in_flight)
        else:
            value, samples = await _node_case(node_port, in_flight, signed=case == "signed")
        qps.setdefault((case, in_flight), []).append(value)
        lat.setdefault((case, in_flight), []).extend(samples)
        return value

    async def main() -> None:
        with server("bare") as bare_port, server("node") as node_port:
            for r in range(ROUNDS):
                print(f"  round {r + 1}/{ROUNDS}", flush=True)
                for in_flight in (1, 16):
                    # Rotate the order each round so drift on a shared machine hits
                    # every case alike; ratios are paired within a round.
                    order = [c for c, _ in CASES]
                    order = order[r % 3 :] + order[: r % 3]
                    got = {c: await one(c, bare_port, node_port, in_flight) for c in order}
                    for c in ("unsigned", "signed"):
                        ratios.setdefault((c, in_flight), []).append(got[c] / got["bare"])

    asyncio.run(main())
    rows = [
        f"{ROUNDS} interleaved rounds of {DURATION} s per case; QPS is the median over rounds,",
        "the ratio the median of the per-round (paired) ratios; latencies pool all rounds.",
        "",
        "| case | in flight | QPS | ratio to bare | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for in_flight in (1, 16):
        bare_qps = median(qps[("bare", in_flight)])
        bare_lat = lat[("bare", in_flight)]
        for case, label in CASES:
            q = median(qps[(case, in_flight)])
            samples = lat[(case, in_flight)]
            p50, p99 = median(samples) * 1000, percentile(samples, 99) * 1000
            if case == "bare":
                report.add(f"unary.bare.c{in_flight}.qps", q, "calls/s")
                report.add(f"unary.bare.c{in_flight}.p50", p50, "ms")
                report.add(f"unary.bare.c{in_flight}.p99", p99, "ms")
                share = 1.0
            else:
                share = median(ratios[(case, in_flight)])
                report.add(f"unary.{case}.c{in_flight}.qps", q, "calls/s", bare_qps)
                report.add(f"unary.{case}.c{in_flight}.paired_ratio", share, "ratio")
                report.add(f"unary.{case}.c{in_flight}.p50", p50, "ms", median(bare_lat) * 1000)
                report.add(
                    f"unary.{case}.c{in_flight}.p99", p99, "ms", percentile(bare_lat, 99) * 1000
                )
            cells = (label, in_flight, f"{q:,.0f}", f"{share:.1%}", f"{p50:.3f}", f"{p99:.3f}")
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    bare_p50 = median(lat[("bare", 1)]) * 1000
    uns_p50 = median(lat[("unsigned", 1)]) * 1000
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
