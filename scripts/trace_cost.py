"""What tracing costs: CPU per call or message, tracing off, on with no exporter
(ids and propagation, no span recorded), and on with every span recorded and
exported (to an exporter that drops them: the SDK's and the batch processor's work,
not the network's).

Usage: ``PYTHONPATH=$PWD:$PWD/gen .venv/bin/python scripts/trace_cost.py DOOR [n] [rounds]``
with DOOR one of ``grpc`` (plain ``Invoke`` of demo.echo through ``NodeClient``),
``local`` (``node.invoke``) or ``channel`` (``notify`` from one node to another,
counted until the receiver's handler saw them all).

Everything runs in one process (client and nodes: their CPU together), rounds
turning through the three so a busy machine weighs on all; each one's best round
is printed, and the ratio of work done per CPU second to off.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aralnode import Node, NodeClient, NodeConfig
from bench._servers import recording_provider

MODES = ("off", "on", "recorded")
ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "examples" / "demo.py")


def _node(tmp: str, name: str, mode: str) -> Node:
    cfg = NodeConfig(
        name=f"{name}-{mode}", host="127.0.0.1", grpc_port=0, http_port=None,
        discovery="none", data_dir=Path(tmp) / f"{name}-{mode}", tracing=mode != "off",
    )  # fmt: skip
    node = Node(cfg, tracer_provider=recording_provider() if mode == "recorded" else None)
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
    seen = SEEN[peer.config.name]
    seen.target = seen.count + n
    seen.reached.clear()
    for i in range(n):
        await node.notify(peer.node_id, "trace_cost", {"i": i})
    async with asyncio.timeout(60):
        await seen.reached.wait()


async def main(door: str, n: int, rounds: int) -> None:
    run = {"grpc": _grpc, "local": _local, "channel": _channel}[door]
    best = dict.fromkeys(MODES, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {m: (_node(tmp, "a", m), _node(tmp, "b", m)) for m in MODES}
        for _, b in pairs.values():
            SEEN[b.config.name] = seen = Seen()
            b.on_notification("trace_cost", seen)
        nodes = [node for pair in pairs.values() for node in pair]
        for node in nodes:
            await node.start()
        try:
            for a, b in pairs.values():
                await a.connect(b.address)
                assert a.channels is not None
                await a.channels.wait_connected(b.node_id, 10)
            for mode in MODES:
                await run(*pairs[mode], 200)  # warm up
            for _ in range(rounds):
                for mode in MODES:
                    start = time.process_time()
                    await run(*pairs[mode], n)
                    best[mode] = min(best[mode], (time.process_time() - start) / n)
        finally:
            for node in nodes:
                await node.stop()
    off = best["off"]
    print(f"{door}: tracing off {off * 1e6:.1f} us CPU each")
    for mode in MODES[1:]:
        spent = best[mode]
        print(
            f"  {mode}: {spent * 1e6:.1f} us, work per CPU second {off / spent:.3f} of off "
            f"(+{(spent - off) * 1e6:.1f} us each)"
        )


if __name__ == "__main__":
    door = sys.argv[1] if len(sys.argv) > 1 else "grpc"
    numbers = [int(a) for a in sys.argv[2:4]]
    asyncio.run(main(door, *(numbers or [2000, 5])))
