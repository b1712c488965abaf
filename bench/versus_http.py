"""This tree's HTTP doors against an earlier revision's, paired: REST and MCP.

Usage: ``python -m bench.versus_http REV [ROUNDS] [--open] [--this REV2]`` (``REV`` any git
revision; ``--this`` serves REV2 in place of this tree, to bisect).

As ``bench.versus`` does for gRPC Invoke: the revision is exported with ``git archive``
to a temporary directory and its node served from there (``python -m bench.bridge
serve node`` of that tree, its own package and generated code), next to this tree's
node. The same load (``bench.bridge``'s keep-alive HTTP/1.1 client, 8 in flight)
calls ``POST /v1/invoke`` and MCP ``tools/call demo.echo`` on both, in short slices
alternating between the trees, every other round reversed, so drift on a shared
machine hits both alike. Prints, per door: calls/s and the node's CPU per call
(``/proc``, the steadier figure on a busy machine), and this/rev as the median of
the per-round ratios and pooled. ``--open`` adds the MCP open loop at 1,000 calls/s
(p50/p99 from each request's scheduled time), as ``make bench`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench._proc import ROOT, cpu_seconds
from bench._report import median, percentile
from bench.bridge import (
    RATE,
    RATE_SECONDS,
    TEXT,
    HttpConn,
    _expect_ok,
    _http_caller,
    _mcp_call,
    _mcp_session,
    _open_loop,
    _post,
)
from bench.versus import _export

IN_FLIGHT = 8
SLICE = 1.0  # seconds per door and tree in a round


@dataclass
class Tally:
    """Calls, seconds and the node's CPU seconds over all slices of one case."""

    calls: float = 0.0
    seconds: float = 0.0
    cpu: float = 0.0
    ratios: list[float] = field(default_factory=list)

    @property
    def qps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Node:
    http: int
    pid: int


@contextlib.contextmanager
def _node(tree: Path) -> Iterator[Node]:
    """``bench.bridge serve node`` of ``tree``, its code first on the path."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'gen'}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bridge", "serve", "node"],
        cwd=tree,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            ports = json.loads(line)
        except ValueError:
            raise RuntimeError(f"node of {tree} did not start: {line!r}") from None
        yield Node(int(ports["http"]), proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


Request = Callable[[], bytes]


async def _requests(node: Node) -> dict[str, Request]:
    """Per door, what one call sends (MCP: a new id each time, in one session)."""
    body = json.dumps({"call": {"capability": "demo.echo", "parameters": {"text": TEXT}}})
    rest = _post(node.http, "/v1/invoke", body.encode())
    session = await _mcp_session(node.http)
    return {"rest": lambda: rest, "mcp": _mcp_call(node.http, session, "demo.echo")}


async def _slice(request: Request, node: Node, tally: Tally) -> float:
    """Closed loop on ``IN_FLIGHT`` fresh connections (the server closes idle ones) for
    ``SLICE`` seconds after a warm-up; the node's CPU counted over the timed part only."""
    conns = [await HttpConn(node.http).open() for _ in range(IN_FLIGHT)]

    async def call(conn: HttpConn) -> None:
        async with asyncio.timeout(10):
            status, _, body = await conn.request(request())
        _expect_ok(status, body)

    for conn in conns:
        for _ in range(20):
            await call(conn)
    before = cpu_seconds(node.pid) or 0.0
    t0 = time.perf_counter()
    stop = t0 + SLICE

    async def worker(conn: HttpConn) -> int:
        n = 0
        while time.perf_counter() < stop:
            await call(conn)
            n += 1
        return n

    done = sum(await asyncio.gather(*(worker(c) for c in conns)))
    elapsed = time.perf_counter() - t0
    tally.cpu += (cpu_seconds(node.pid) or 0.0) - before
    tally.calls += done
    tally.seconds += elapsed
    for conn in conns:
        conn.close()
    return done / elapsed


async def _compare(old: Node, new: Node, rounds: int, open_loop: bool) -> None:
    nodes = {"rev": old, "this": new}
    requests = {tree: await _requests(node) for tree, node in nodes.items()}
    tallies = {(door, tree): Tally() for door in ("rest", "mcp") for tree in nodes}
    order = [
        (d, t)
        for d in ("rest", "mcp")
        for t in (("rev", "this") if d == "rest" else ("this", "rev"))
    ]
    for r in range(rounds):
        got = {}
        for door, tree in order if r % 2 == 0 else order[::-1]:
            got[(door, tree)] = await _slice(
                requests[tree][door], nodes[tree], tallies[(door, tree)]
            )
        for door in ("rest", "mcp"):
            tallies[(door, "this")].ratios.append(got[(door, "this")] / got[(door, "rev")])
    for door in ("rest", "mcp"):
        this, rev = tallies[(door, "this")], tallies[(door, "rev")]
        print(
            f"{door:5} this {this.qps:6,.0f}/s {this.cpu_us:5.0f} µs/call | "
            f"rev {rev.qps:6,.0f}/s {rev.cpu_us:5.0f} µs/call | this/rev: paired median "
            f"{median(this.ratios):.3f}, pooled {this.qps / rev.qps:.3f}, "
            f"cpu/call {this.cpu_us / rev.cpu_us:.3f}",
            flush=True,
        )
    if open_loop:
        for tree in ("rev", "this", "rev", "this"):
            port = nodes[tree].http
            session = await _mcp_session(port)
            make = _http_caller(port, _mcp_call(port, session, "demo.echo"))
            rate, lat = await _open_loop(make, RATE, RATE_SECONDS)
            p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
            print(
                f"mcp open loop {RATE}/s {tree:4}: {rate:6,.0f}/s p50 {p50:.2f} ms p99 {p99:.2f} ms"
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.versus_http")
    parser.add_argument("rev", help="the revision compared with")
    parser.add_argument("rounds", nargs="?", type=int, default=10)
    parser.add_argument("--open", action="store_true", help="add the MCP open loop")
    parser.add_argument("--this", metavar="REV2", help="a revision in place of this tree")
    ns = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        trees = []
        for rev in (ns.rev, ns.this):
            if rev is None:
                trees.append(ROOT)
                continue
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aralnode-vs-")))
            _export(rev, tmp)
            trees.append(tmp)
        this = ns.this or "this tree"
        print(
            f"{this} vs {ns.rev}: {ns.rounds} rounds, {SLICE} s per door and tree, "
            f"{IN_FLIGHT} in flight",
            flush=True,
        )
        with _node(trees[0]) as old, _node(trees[1]) as new:
            asyncio.run(_compare(old, new, ns.rounds, ns.open))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
