"""Three LANs joined by etcd: mDNS inside each, etcd across (issue 18's acceptance).

One switch namespace holds three bridges (10.90.1.0/24, 10.90.2.0/24, 10.90.3.0/24)
and routes between them; mDNS multicast stays on its own bridge, so nodes on
different LANs can only learn of each other through the 3-member etcd cluster that
runs in the switch namespace. Each node is an ``aralnode run --discovery mdns,etcd``
process in a namespace of its own; the test reads the nodes' own log lines (``peer
NAME (ID) connected``) to see the full mesh. Nothing touches the host's interfaces.

``make test`` runs 12 nodes (4 a LAN); the acceptance figure is 50 nodes:
``ARAL_LAN_NODES=50 .venv/bin/python -m pytest tests/test_etcd_lan.py -s``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.etcd_cluster import ETCD, SKIP_REASON, EtcdCluster
from tests.netlan import BIN, PREFIX, _ip, _sweep_stale_namespaces, netns_unavailable, wait_for

REASON = netns_unavailable() or (SKIP_REASON if ETCD is None else None)
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]
LANS = 3
NODES = int(os.environ.get("ARAL_LAN_NODES", "12"))
CONNECTED = re.compile(r"INFO aralnode\.discovery: peer (\S+) \((\w+)\) connected")
ETCD_HOST = "10.90.1.254"


class Lans:
    """Three LANs on one routing switch namespace (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.tag = f"{PREFIX}{os.getpid()}e"
        self.switch = f"{self.tag}-sw"
        self.hosts: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def up(self) -> None:
        _sweep_stale_namespaces()
        sw = self.switch
        _ip("netns", "add", sw)
        _ip("-n", sw, "link", "set", "lo", "up")
        subprocess.run(
            ["ip", "netns", "exec", sw, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
            check=True, timeout=20,
        )  # fmt: skip
        for lan in range(1, LANS + 1):
            _ip("-n", sw, "link", "add", f"br{lan}", "type", "bridge")
            _ip("-n", sw, "addr", "add", f"10.90.{lan}.254/24", "dev", f"br{lan}")
            _ip("-n", sw, "link", "set", f"br{lan}", "up")

    def add_host(self, lan: int, index: int) -> tuple[str, str]:
        ns, ip = f"{self.tag}-{lan}-{index}", f"10.90.{lan}.{index}"
        _ip("netns", "add", ns)
        self.hosts.append(ns)
        port = f"v{lan}x{index}"
        _ip("link", "add", port, "netns", self.switch, "type", "veth",
            "peer", "name", "eth0", "netns", ns)  # fmt: skip
        _ip("-n", self.switch, "link", "set", port, "master", f"br{lan}", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "multicast", "on", "up")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        _ip("-n", ns, "route", "add", "default", "via", f"10.90.{lan}.254")
        return ns, ip

    def start_node(
        self, lan: int, index: int, endpoints: list[str], *, bridge: bool = False
    ) -> None:
        """A node on ``lan``: mdns and etcd (the bridge too with ``bridge``), or mDNS
        only with no ``endpoints``."""
        ns, ip = self.add_host(lan, index)
        name = f"l{lan}n{index}"
        log = self.workdir / f"{name}.log"
        flags = [a for e in endpoints for a in ("--etcd-endpoint", e)]
        flags += ["--discovery", "mdns,etcd" if endpoints else "mdns"]
        flags += ["--etcd-bridge"] if bridge else []
        args = [
            "ip", "netns", "exec", ns, str(BIN / "aralnode"), "-v", "run",
            "--name", name, "--host", ip, "--interface", ip,
            "--grpc-port", "50051", "--http-port", "-1",
            *flags,
            "--data-dir", str(self.workdir / name),
        ]  # fmt: skip
        with log.open("wb") as out:
            self.procs.append(
                subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            )  # fmt: skip
        self.logs.append(log)

    def connected(self) -> list[set[str]]:
        """Per node, the names of the peers its log says connected."""
        return [
            {m.group(1) for m in CONNECTED.finditer(log.read_text(errors="replace"))}
            for log in self.logs
        ]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for ns in [*self.hosts, self.switch]:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _ip("netns", "del", ns)


@pytest.fixture
def lans(tmp_path: Path) -> Iterator[Lans]:
    net = Lans(tmp_path)
    try:
        net.up()
        yield net
    finally:
        net.close()


def test_nodes_on_three_lans_find_each_other_through_etcd(lans: Lans, tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path / "etcd", host=ETCD_HOST, netns=lans.switch)
    try:
        cluster.start()
        started = time.monotonic()
        for i in range(NODES):
            lans.start_node(1 + i % LANS, 1 + i // LANS, cluster.endpoints)
        names = {f"l{1 + i % LANS}n{1 + i // LANS}" for i in range(NODES)}

        def complete() -> bool:
            for proc, log in zip(lans.procs, lans.logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"{log.name} exited: {log.read_text()[-2000:]}")
            views = lans.connected()
            return all(
                view >= names - {f"l{1 + i % LANS}n{1 + i // LANS}"} for i, view in enumerate(views)
            )

        wait_for(complete, timeout=60 + 3 * NODES, interval=0.5, what="the 3-LAN mesh")
        took = time.monotonic() - started
        print(f"\n{NODES} nodes on {LANS} LANs: full mesh {took:.1f} s after the first spawn",
              file=sys.stderr)  # fmt: skip
        # Every node lists the nodes of the other two LANs: reached through etcd only,
        # as mDNS does not cross bridges.
        assert all(len(view) >= NODES - 1 for view in lans.connected())
    finally:
        cluster.close()


def test_bridges_join_mdns_only_nodes_of_two_lans(lans: Lans, tmp_path: Path) -> None:
    """l1n1 and l2n1 speak only mDNS, each on its own LAN; the bridges l1n2 and l2n2
    re-announce them into etcd and each other's onto their LANs. etcd comes up only
    after each bridge has met its LAN's node: what a bridge verified while etcd was
    away is written once it registers."""
    cluster = EtcdCluster(tmp_path / "etcd", host=ETCD_HOST, netns=lans.switch)
    try:
        lans.start_node(1, 1, [])
        lans.start_node(2, 1, [])
        lans.start_node(1, 2, cluster.endpoints, bridge=True)
        lans.start_node(2, 2, cluster.endpoints, bridge=True)

        def met_on_the_lans() -> bool:
            views = lans.connected()
            return "l1n1" in views[2] and "l2n1" in views[3]

        wait_for(met_on_the_lans, timeout=60, interval=0.5, what="each bridge to meet its LAN")
        cluster.start()

        def joined() -> bool:
            for proc, log in zip(lans.procs, lans.logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"{log.name} exited: {log.read_text()[-2000:]}")
            views = lans.connected()
            return "l2n1" in views[0] and "l1n1" in views[1]

        def crossed() -> bool:
            # A bridge logs an announcement once zeroconf has finished sending it,
            # which may be after the node it announced was dialled: waited for.
            logs = lans.logs[2].read_text() + lans.logs[3].read_text()
            return "re-announced into etcd" in logs and "announced on the LAN from etcd" in logs

        wait_for(joined, timeout=90, interval=0.5, what="the two mDNS-only nodes to meet")
        # One mDNS-only node written into etcd by its LAN's bridge and announced on
        # the other LAN by the other bridge is enough for the two to meet (the one
        # dialled sees the other connect): at least one crossing each way is logged.
        wait_for(crossed, timeout=30, interval=0.5, what="both bridges' crossings in their logs")
    finally:
        cluster.close()
