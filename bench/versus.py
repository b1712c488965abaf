"""This tree's node against an earlier revision's, paired: does a change cost anything?

Usage: ``python -m bench.versus REV [ROUNDS]`` (``REV`` any git revision, e.g. ``main~3``).

The revision is exported with ``git archive`` to a temporary directory and its node
served from there (its own ``bench/_servers.py`` and package; the generated code is
in the tree), next to this tree's node. The same clients (this tree's ``NodeClient``,
unsigned and ES256 signed) call both, in short alternating slices as ``bench.unary``
does, so drift on a shared machine hits both alike. Prints QPS, CPU per call and the
ratios this tree / REV (median of the per-round ratios, and pooled). Not part of
``make bench``: it compares two trees, not this tree with its references.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._proc import ROOT, Child, server
from bench._report import median
from bench.unary import SLICE, WARMUP, Tally, _node_case, _slice

IN_FLIGHT = 16


def _export(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)


async def _compare(old: Child, new: Child, rounds: int) -> dict[tuple[str, bool], Tally]:
    tallies = {(tree, signed): Tally() for tree in ("rev", "this") for signed in (False, True)}
    ratios: dict[bool, list[float]] = {False: [], True: []}
    async with contextlib.AsyncExitStack() as stack:
        calls = {}
        for tree, child in (("rev", old), ("this", new)):
            for signed in (False, True):
                call = await stack.enter_async_context(_node_case(child, signed))
                calls[(tree, signed)] = (call, child)
                await _slice(call, IN_FLIGHT, WARMUP, child, Tally())
        # Each tree next to the other, every other round reversed.
        order = [("rev", False), ("this", False), ("this", True), ("rev", True)]
        for r in range(rounds):
            got = {}
            for key in order if r % 2 == 0 else order[::-1]:
                call, child = calls[key]
                got[key] = await _slice(call, IN_FLIGHT, SLICE, child, tallies[key])
            for signed in (False, True):
                ratios[signed].append(got[("this", signed)] / got[("rev", signed)])
    for signed in (False, True):
        name = "signed" if signed else "unsigned"
        this, rev = tallies[("this", signed)], tallies[("rev", signed)]
        print(
            f"{name:9} this {this.qps:7,.0f}/s {this.cpu_us or 0:5.0f} µs/call | "
            f"rev {rev.qps:7,.0f}/s {rev.cpu_us or 0:5.0f} µs/call | this/rev: paired median "
            f"{median(ratios[signed]):.3f}, pooled {this.qps / rev.qps:.3f}"
        )
    return tallies


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    rev, rounds = argv[0], int(argv[1]) if len(argv) > 1 else 20
    with tempfile.TemporaryDirectory(prefix="aralnode-versus-") as tmp:
        _export(rev, Path(tmp))
        print(f"this tree vs {rev}: {rounds} rounds, {SLICE} s per case, {IN_FLIGHT} in flight")
        with server("node", tree=Path(tmp)) as old, server("node") as new:
            asyncio.run(_compare(old, new, rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
