"""What tracing costs: CPU per call or message, tracing off vs on (no exporter).

Usage: ``PYTHONPATH=$PWD:$PWD/gen .venv/bin/python scripts/trace_cost.py DOOR [n] [rounds]``
with DOOR one of ``grpc`` (plain ``Invoke`` of demo.echo through ``NodeClient``),
``local`` (``node.invoke``) or ``channel`` (``notify`` from one node to another,
counted until the receiver's handler saw them all).

Everything runs in one process (client and nodes: their CPU together), rounds
alternating off and on so a busy machine weighs on both; each side's best round
is printed, and the ratio of work done per CPU second, on/off.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aralnode import Node, NodeClient, NodeConfig

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "examples" / "demo.py")


def _node(tmp: str, name: str, tracing: bool) -> Node:
    cfg = NodeConfig(
        name=name, host="127.0.0.1", grpc_port=0, http_port=None, discovery="none",
        data_dir=Path(tmp) / f"{name}-{tracing}", tracing=tracing,
    )  # fmt: skip
    node = Node(cfg)
    node.load(DEMO)
    return node


async def _grpc(node: Node, _: Node, n: int) -> None:
    async with NodeClient(node.address) as client:
        for _ in range(n):
            await client.call("demo.echo", {"text": "x"})


async def _local(node: Node, _: Node, n: int) -> None:
    for _ in range(n):
        await node.invoke("demo.echo", {"text": "x"})


class Seen:
    """Counts the notifications a node's handler saw; wakes a waiter at a count."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    def __call__(self, msg: Any, tx: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


SEEN: dict[str, Seen] = {}


async def _channel(node: Node, peer: Node, n: int) -> None:
    seen = SEEN[peer.config.name + str(peer.config.tracing)]
    seen.target = seen.count + n
    seen.reached.clear()
    for i in range(n):
        await node.notify(peer.node_id, "trace_cost", {"i": i})
    async with asyncio.timeout(60):
        await seen.reached.wait()


async def main(door: str, n: int, rounds: int) -> None:
    run = {"grpc": _grpc, "local": _local, "channel": _channel}[door]
    best = {False: float("inf"), True: float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {t: (_node(tmp, "a", t), _node(tmp, "b", t)) for t in (False, True)}
        for _, b in pairs.values():
            SEEN[b.config.name + str(b.config.tracing)] = seen = Seen()
            b.on_notification("trace_cost", seen)
        nodes = [node for pair in pairs.values() for node in pair]
        for node in nodes:
            await node.start()
        try:
            for a, b in pairs.values():
                await a.connect(b.address)
                assert a.channels is not None
                await a.channels.wait_connected(b.node_id, 10)
            for tracing in (False, True):
                await run(*pairs[tracing], 200)  # warm up
            for _ in range(rounds):
                for tracing in (False, True):
                    start = time.process_time()
                    await run(*pairs[tracing], n)
                    best[tracing] = min(best[tracing], (time.process_time() - start) / n)
        finally:
            for node in nodes:
                await node.stop()
    off, on = best[False], best[True]
    print(f"{door}: tracing off {off * 1e6:.1f} us CPU each, on {on * 1e6:.1f} us")
    print(f"on/off work per CPU second: {off / on:.3f} (+{(on - off) * 1e6:.1f} us each)")


if __name__ == "__main__":
    door = sys.argv[1] if len(sys.argv) > 1 else "grpc"
    numbers = [int(a) for a in sys.argv[2:4]]
    asyncio.run(main(door, *(numbers or [2000, 5])))
