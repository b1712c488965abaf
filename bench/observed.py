"""Operations (issue 19): what metrics and tracing cost a node's calls.

Two node processes serve ``demo.echo`` over gRPC ``Invoke`` (unsigned), with an
HTTP port each: one with metrics and tracing off, one with both on (every call
counted by the metrics sink and given its spans; no exporter). Clients here, 16
calls in flight, short alternating slices, every other round reversed; the ratio
is the median over rounds of the observed node's calls/s over the other's within
the round (``bench/unary.py`` explains why pairing).

- ``unary.observed_vs_off.paired_ratio``: target >= 0.95.

The channel's counterpart, ``channel.observed_vs_off.ratio``, is measured with the
channel benchmark (``bench/channel.py``).
"""

from __future__ import annotations

import asyncio
import contextlib

from bench._proc import server
from bench._report import Report, median
from bench.unary import WARMUP, Tally, _node_case, _slice

SLICE = 0.5
ROUNDS = 16
IN_FLIGHT = 16


def run(report: Report) -> None:
    ratios: list[float] = []
    tallies = {"off": Tally(), "observed": Tally()}

    async def main() -> None:
        with server("node-off") as off, server("node-observed") as observed:
            child = {"off": off, "observed": observed}
            async with contextlib.AsyncExitStack() as stack:
                calls = {
                    k: await stack.enter_async_context(_node_case(c, signed=False))
                    for k, c in child.items()
                }
                for k, call in calls.items():
                    await _slice(call, IN_FLIGHT, WARMUP, child[k], Tally())
                for r in range(ROUNDS):
                    order = ("off", "observed") if r % 2 == 0 else ("observed", "off")
                    got = {
                        k: await _slice(calls[k], IN_FLIGHT, SLICE, child[k], tallies[k])
                        for k in order
                    }
                    ratios.append(got["observed"] / got["off"])

    print(f"  {ROUNDS} rounds, {IN_FLIGHT} in flight, {SLICE} s per node", flush=True)
    asyncio.run(main())
    ratio = median(ratios)
    off, on = tallies["off"], tallies["observed"]
    report.add("unary.observed_vs_off.paired_ratio", ratio, "ratio")
    report.add("unary.observed.c16.qps", on.qps, "calls/s", baseline=off.qps)
    rows = [
        f"gRPC Invoke of demo.echo, {IN_FLIGHT} in flight, {ROUNDS} alternating rounds of "
        f"{SLICE} s per node; ratio: median of per-round ratios.",
        "",
        "| node | calls/s | CPU µs/call (client + node) |",
        "|---|---|---|",
        f"| metrics and tracing off | {off.qps:,.0f} | {off.cpu_us or 0:.0f} |",
        f"| metrics and tracing on (no exporter) | {on.qps:,.0f} | {on.cpu_us or 0:.0f} |",
        "",
        f"Paired ratio {ratio:.3f} (target >= 0.95); per round: "
        + ", ".join(f"{x:.2f}" for x in ratios)
        + ".",
    ]
    report.section("Observability: metrics and tracing on vs off", rows)
