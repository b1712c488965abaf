"""What tracing costs a call: CPU per gRPC ``Invoke`` of demo.echo, tracing off vs on.

Usage: ``PYTHONPATH=$PWD:$PWD/gen .venv/bin/python scripts/trace_cost.py [calls] [rounds]``

One process: a node on loopback and a client making sequential calls; process CPU
time per call (client and node together) for tracing off and on (no exporter: spans
are made, recorded and dropped), alternating rounds so drift falls on both. Prints
each side's best round and the ratio of calls a second on/off.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from aralnode import Node, NodeClient, NodeConfig

DEMO = str(Path(__file__).resolve().parent.parent / "examples" / "demo.py")


async def _round(client: NodeClient, calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        await client.call("demo.echo", {"text": "x"})
    return (time.process_time() - start) / calls


async def main(calls: int, rounds: int) -> None:
    best: dict[bool, float] = {False: float("inf"), True: float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        nodes = {}
        for tracing in (False, True):
            cfg = NodeConfig(
                name=f"cost-{int(tracing)}", host="127.0.0.1", grpc_port=0, http_port=None,
                discovery="none", data_dir=Path(tmp) / str(tracing), tracing=tracing,
            )  # fmt: skip
            nodes[tracing] = Node(cfg)
            nodes[tracing].load(DEMO)
        async with nodes[False], nodes[True]:
            clients = {t: NodeClient(n.address) for t, n in nodes.items()}
            for client in clients.values():
                await _round(client, 200)  # warm up
            for _ in range(rounds):
                for tracing in (False, True):
                    best[tracing] = min(best[tracing], await _round(clients[tracing], calls))
            for client in clients.values():
                await client.close()
    off, on = best[False], best[True]
    print(f"tracing off: {off * 1e6:.1f} us CPU/call; on: {on * 1e6:.1f} us CPU/call")
    print(f"on/off calls per CPU second: {off / on:.3f} (+{(on - off) * 1e6:.1f} us/call)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    asyncio.run(main(*(args or [2000, 5])))
