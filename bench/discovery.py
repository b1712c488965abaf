"""Discovery bench: mesh convergence and drop times on a private LAN of namespaces.

One ``aralnode run --discovery mdns`` process per network namespace (the LAN of
``tests/netlan.py``; nothing touches the host's interfaces). Times come from the
nodes' own log lines (``peer NAME (ID) connected|is stale|dropped|expired``, ms
resolution, same clock) against the moment the bench spawned or signalled a
process, so polling does not blur them. No baseline: there is no bare equivalent.

Run alone: ``.venv/bin/python -c "from bench._report import Report; from bench import
discovery; discovery.run(Report())"`` (needs root and ``ip``; skips otherwise).
"""

from __future__ import annotations

import re
import signal
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench._report import Report, median, percentile
from tests.netlan import Lan, NodeProc, lan, netns_unavailable, wait_for

SIZES = (2, 5, 10, 30)
NEWCOMER_RUNS = 5  # successive newcomers on the 5-node LAN, for a p95
LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO aralnode\.discovery: peer (\S+) \((\w+)\) "
    r"(connected|is stale|dropped|expired)"
)


def _events(node: NodeProc) -> list[tuple[float, str, str]]:
    """(unix time, peer name, what) for each discovery line in the node's log."""
    found = []
    for line in node.output().splitlines():
        m = LINE.match(line)
        if m:
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append((when, m.group(2), m.group(4)))
    return found


def _first(node: NodeProc, peer: str, what: tuple[str, ...], after: float = 0.0) -> float | None:
    times = [t for t, name, w in _events(node) if name == peer and w in what and t >= after - 0.01]
    return min(times) if times else None


def _ids(net: Lan, nodes: list[NodeProc]) -> dict[str, str]:
    assert net.agent is not None
    return {n.name: net.agent.call("status", node=n.address)["status"]["node_id"] for n in nodes}


def _converge(net: Lan, size: int) -> tuple[list[NodeProc], dict[str, float]]:
    nodes = [net.start_node(i) for i in range(1, size + 1)]
    net.wait_serving(*nodes, timeout=90)
    ids = _ids(net, nodes)
    wait_for(lambda: net.mesh_complete(nodes, ids), timeout=120, interval=0.5, what="the mesh")
    per_node = []
    for node in nodes:
        seen = [_first(o, node.name, ("connected",)) for o in nodes if o is not node]
        assert all(t is not None for t in seen), f"{node.name}: a peer never logged it"
        per_node.append(max(t for t in seen if t is not None) - node.started)
    first_spawn = min(n.started for n in nodes)
    everyone = max(
        t
        for t in (_first(o, n.name, ("connected",)) for o in nodes for n in nodes if o is not n)
        if t
    )
    return nodes, {
        "p50": statistics.median(per_node),
        "max": max(per_node),
        "all": everyone - first_spawn,
    }


def _drop(net: Lan, nodes: list[NodeProc], victim: NodeProc, sig: int) -> dict[str, float]:
    others = [n for n in nodes if n is not victim]
    t0 = time.time()
    victim.proc.send_signal(sig)
    victim.proc.wait(timeout=30)

    def done() -> bool:
        return all(_first(o, victim.name, ("dropped", "expired"), t0) for o in others)

    wait_for(done, timeout=60, interval=0.2, what=f"{victim.name} to be dropped")
    unused = [_first(o, victim.name, ("is stale", "dropped", "expired"), t0) for o in others]
    gone = [_first(o, victim.name, ("dropped", "expired"), t0) for o in others]
    return {
        "unused_max": max(t for t in unused if t) - t0,
        "gone_p50": statistics.median(t for t in gone if t) - t0,
        "gone_max": max(t for t in gone if t) - t0,
    }


def _newcomers(
    net: Lan, nodes: list[NodeProc], size: int, runs: int
) -> tuple[list[float], list[NodeProc]]:
    """Start ``runs`` newcomers one at a time; each one's time from spawn to CONNECTED
    at every earlier node, and the nodes now on the LAN."""
    everyone = list(nodes)
    joins = []
    for k in range(runs):
        newcomer = net.start_node(size + 1 + k)
        net.wait_serving(newcomer)
        before = list(everyone)
        everyone = [*everyone, newcomer]
        ids = _ids(net, everyone)

        def meshed(e: list[NodeProc] = everyone, i: dict[str, str] = ids) -> bool:
            return net.mesh_complete(e, i)

        wait_for(meshed, timeout=60, interval=0.5)
        seen = [_first(o, newcomer.name, ("connected",)) for o in before]
        joins.append(max(t for t in seen if t) - newcomer.started)
    return joins, everyone


def run(report: Report) -> None:
    reason = netns_unavailable()
    if reason:
        print(f"discovery bench skipped: {reason}", flush=True)
        report.section("Discovery (mDNS on a namespace LAN)", [f"Skipped: {reason}."])
        return
    rows = []
    drops: dict[str, dict[str, float]] = {}
    for size in SIZES:
        with tempfile.TemporaryDirectory(prefix="aral-bench-") as tmp, lan(Path(tmp)) as net:
            nodes, t = _converge(net, size)
            report.add(f"discovery.converge.{size}_nodes.p50", t["p50"], "s")
            report.add(f"discovery.converge.{size}_nodes.max", t["max"], "s")
            report.add(f"discovery.converge.{size}_nodes.all", t["all"], "s")
            rows.append(f"| {size} | {t['p50']:.2f} | {t['max']:.2f} | {t['all']:.2f} |")
            if size == 5:
                joins, _ = _newcomers(net, nodes, size, NEWCOMER_RUNS)
                report.add("discovery.newcomer.5_nodes.p50", median(joins), "s")
                report.add("discovery.newcomer.5_nodes.p95", percentile(joins, 95), "s")
                rows.append(
                    f"| newcomer joining 5..{size + NEWCOMER_RUNS - 1} ({len(joins)} runs) | "
                    f"{median(joins):.2f} | p95 (the slowest of {len(joins)}) "
                    f"{percentile(joins, 95):.2f} | - |"
                )
            if size == 10:
                (joined,), nodes = _newcomers(net, nodes, size, 1)
                report.add("discovery.newcomer.10_nodes", joined, "s")
                rows.append(f"| newcomer joining 10 | {joined:.2f} | {joined:.2f} | - |")
                # Default keepalive (5 s) and peer timeout (10 s): the figures users get.
                drops["graceful (SIGTERM)"] = _drop(net, nodes, nodes[-1], signal.SIGTERM)
                drops["SIGKILL"] = _drop(net, nodes[:-1], nodes[-2], signal.SIGKILL)
    for label, d in drops.items():
        key = "sigterm" if "SIGTERM" in label else "sigkill"
        report.add(f"discovery.drop.{key}.unused_max", d["unused_max"], "s")
        report.add(f"discovery.drop.{key}.gone_max", d["gone_max"], "s")
    report.section(
        "Discovery (mDNS on a namespace LAN)",
        [
            "One `aralnode run --discovery mdns` process per network namespace on one bridge;",
            "all nodes spawned at once. Per node: from its process spawn until every other node",
            "lists it CONNECTED (verified handshake). *all*: first spawn to full mesh.",
            "",
            "| nodes | p50 (s) | max (s) | all (s) |",
            "|---|---|---|---|",
            *rows,
            "",
            "Drop times on the 10-node LAN with the default keepalive 5 s / peer timeout 10 s:",
            "*unused* = no longer CONNECTED anywhere (STALE or GONE), *gone* = GONE everywhere.",
            "",
            "| stop | unused, max (s) | gone, p50 (s) | gone, max (s) |",
            "|---|---|---|---|",
            *(
                f"| {label} | {d['unused_max']:.2f} | {d['gone_p50']:.2f} | {d['gone_max']:.2f} |"
                for label, d in drops.items()
            ),
        ],
    )
