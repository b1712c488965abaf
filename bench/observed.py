"""Operations (issue 19): what metrics and tracing cost a node's calls.

Three node processes serve ``demo.echo`` over gRPC ``Invoke`` (unsigned), with an
HTTP port each: one with metrics and tracing off, one with both on and no exporter
(every call counted by the metrics sink; a W3C trace and span id per call, in the
logs, the audit and what it forwards, but no span recorded: nothing could read it,
docs/tracing.md), and one with both on and an exporter (every span recorded by
OpenTelemetry's SDK and handed to a batch processor whose exporter drops it: what
exporting costs, minus the network). Clients here, 16 calls in flight, short slices
in an order that turns every round; each ratio is the median over rounds of a node's
calls/s over the off node's within the round (``bench/unary.py`` explains why
pairing).

- ``unary.observed_vs_off.paired_ratio``: target >= 0.95.
- ``unary.observed_recorded_vs_off.paired_ratio``: the same with every span recorded
  and exported; the gap between the two is what recording one span per call costs.

Where the cost is, in process (this process's CPU, tight loops, median of rounds):

- ``tracing.sdk_span_us``: OpenTelemetry's SDK alone: ``start_span``, the five
  attributes a call's span carries, ``end`` (a provider built as a node builds
  its own, no processor).
- ``tracing.pipeline_added_us``: what tracing with no exporter adds to a call
  through the pipeline (``Node.invoke`` of an echo capability, tracing on vs off):
  ids, context, the log's trace id.
- ``tracing.pipeline_recorded_added_us``: the same with every span recorded and
  exported (the SDK's span plus the node's own share).

The channel's counterpart, ``channel.observed_vs_off.ratio``, is measured with the
channel benchmark (``bench/channel.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench._proc import server
from bench._report import Report, median
from bench._servers import recording_provider
from bench.unary import WARMUP, Tally, _node_case, _slice

SLICE = 0.5
ROUNDS = 16
IN_FLIGHT = 16
KINDS = ("off", "observed", "recorded")
LOOP_CALLS = 20_000
LOOP_ROUNDS = 5


def _sdk_span_us() -> float:
    """µs per span of the SDK alone, as a node makes a call's (see the docstring)."""
    from opentelemetry.trace import SpanKind

    from aralnode import NodeConfig
    from aralnode._tracing import node_provider

    provider = node_provider(NodeConfig(name="bench", tracing=True), "bench", "bench")
    tracer = provider.get_tracer("aralnode")
    attributes = {
        "aral.door": "grpc", "aral.capability": "demo.echo", "aral.caller_kind": "anonymous",
        "aral.decision": "", "aral.outcome": "ok",
    }  # fmt: skip
    rounds = []
    for _ in range(LOOP_ROUNDS):
        t0 = time.process_time()
        for _ in range(LOOP_CALLS):
            span = tracer.start_span("demo.echo", kind=SpanKind.SERVER)
            span.set_attributes(attributes)
            span.end()
        rounds.append((time.process_time() - t0) / LOOP_CALLS * 1e6)
    provider.shutdown()
    return median(rounds)


async def _pipeline_us() -> dict[str, float]:
    """µs per ``Node.invoke`` of an echo, tracing off, on with no exporter, and on
    with every span recorded and exported (local door)."""
    from aralnode import Node, NodeConfig

    per: dict[str, list[float]] = {"off": [], "on": [], "recorded": []}
    with tempfile.TemporaryDirectory(prefix="aral-bench-") as tmp:
        nodes = {}
        for kind in per:
            node = Node(
                NodeConfig(
                    name=f"loop-{kind}", grpc_port=0, http_port=None, discovery="none",
                    data_dir=Path(tmp) / kind, tracing=kind != "off",
                ),
                tracer_provider=recording_provider() if kind == "recorded" else None,
            )  # fmt: skip

            @node.capability(id="bench.echo")
            async def echo(text: str) -> str:
                return text

            await node.start()
            nodes[kind] = node
        try:
            for _ in range(LOOP_ROUNDS):
                for kind, node in nodes.items():
                    t0 = time.process_time()
                    for _ in range(LOOP_CALLS):
                        await node.invoke("bench.echo", {"text": "hi"})
                    per[kind].append((time.process_time() - t0) / LOOP_CALLS * 1e6)
        finally:
            for node in nodes.values():
                await node.stop(0.5)
    return {kind: median(v) for kind, v in per.items()}


def run(report: Report) -> None:
    ratios: dict[str, list[float]] = {"observed": [], "recorded": []}
    tallies = {k: Tally() for k in KINDS}
    node_cpu = dict.fromkeys(KINDS, 0.0)  # the node process's CPU seconds, all slices

    async def main() -> None:
        with contextlib.ExitStack() as servers:
            child = {k: servers.enter_context(server(f"node-{k}")) for k in KINDS}
            async with contextlib.AsyncExitStack() as stack:
                calls = {
                    k: await stack.enter_async_context(_node_case(c, signed=False))
                    for k, c in child.items()
                }
                for k, call in calls.items():
                    await _slice(call, IN_FLIGHT, WARMUP, child[k], Tally())
                for r in range(ROUNDS):
                    order = KINDS[r % 3 :] + KINDS[: r % 3]
                    got = {}
                    for k in order:
                        before = child[k].cpu_seconds()
                        got[k] = await _slice(calls[k], IN_FLIGHT, SLICE, child[k], tallies[k])
                        after = child[k].cpu_seconds()
                        if before is not None and after is not None:
                            node_cpu[k] += after - before
                    for k, kept in ratios.items():
                        kept.append(got[k] / got["off"])

    print(f"  {ROUNDS} rounds, {IN_FLIGHT} in flight, {SLICE} s per node", flush=True)
    asyncio.run(main())
    ratio, recorded = median(ratios["observed"]), median(ratios["recorded"])
    off, on, exported = (tallies[k] for k in KINDS)
    report.add("unary.observed_vs_off.paired_ratio", ratio, "ratio")
    report.add("unary.observed_recorded_vs_off.paired_ratio", recorded, "ratio")
    report.add("unary.observed.c16.qps", on.qps, "calls/s", baseline=off.qps)
    node_us = {k: node_cpu[k] / tallies[k].calls * 1e6 for k in KINDS}
    report.add("unary.observed.node_cpu_us_per_call", node_us["observed"], "us",
               baseline=node_us["off"])  # fmt: skip
    sdk = _sdk_span_us()
    loop = asyncio.run(_pipeline_us())
    added, recorded_added = loop["on"] - loop["off"], loop["recorded"] - loop["off"]
    report.add("tracing.sdk_span_us", sdk, "us")
    report.add("tracing.pipeline_added_us", added, "us")
    report.add("tracing.pipeline_recorded_added_us", recorded_added, "us")
    rows = [
        f"gRPC Invoke of demo.echo, {IN_FLIGHT} in flight, {ROUNDS} rounds of {SLICE} s per "
        "node in turn; ratios: median of per-round ratios to the off node.",
        "",
        "| node | calls/s | ratio | node CPU µs/call | CPU µs/call (client + node) |",
        "|---|---|---|---|---|",
        f"| metrics and tracing off | {off.qps:,.0f} | 1 | {node_us['off']:.0f} "
        f"| {off.cpu_us or 0:.0f} |",
        f"| metrics and tracing on (no exporter) | {on.qps:,.0f} | {ratio:.3f} "
        f"| {node_us['observed']:.0f} | {on.cpu_us or 0:.0f} |",
        f"| both on, every span recorded and exported | {exported.qps:,.0f} | {recorded:.3f} "
        f"| {node_us['recorded']:.0f} | {exported.cpu_us or 0:.0f} |",
        "",
        f"Paired ratio {ratio:.3f} (target >= 0.95); per round: "
        + ", ".join(f"{x:.2f}" for x in ratios["observed"])
        + ".",
        "",
        "In process, tight loops (`Node.invoke`, "
        f"{loop['off']:.1f} µs a call with tracing off): tracing with no exporter adds "
        f"{added:.1f} µs a call (ids, context, the log's trace id; no span recorded); with "
        f"every span recorded and exported it adds {recorded_added:.1f} µs, of which "
        f"OpenTelemetry's SDK alone takes {sdk:.1f} µs to make, fill and end the span. "
        f"A 0.95 ratio leaves metrics and tracing together "
        f"{node_us['off'] * 0.05 / 0.95:.0f} µs of the node's "
        f"{node_us['off']:.0f} µs per call.",
    ]
    report.section("Observability: metrics and tracing on vs off", rows)


if __name__ == "__main__":
    r = Report()
    run(r)
    for f in r.figures:
        print(f)
