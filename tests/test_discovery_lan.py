"""Discovery on a real LAN: one ``aralnode`` process per network namespace, real mDNS.

The LAN (``tests/netlan.py``) is private: namespaces joined by a bridge in a
namespace of its own, 10.77.0.0/24; nothing runs on the host's interfaces. Without
root or ``ip`` these tests skip. Waits are on conditions with generous deadlines;
the times themselves are measured by ``bench/discovery.py``, not asserted here.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aralnode.store.keys import load_identity
from tests.netlan import Lan, NodeProc, lan, netns_unavailable, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

REASON = netns_unavailable()
FAST = ("--keepalive-ms", "1000", "--peer-timeout-ms", "3000")
CONNECTED = "PEER_STATE_CONNECTED"
DEMO_CAPS = {"demo.add", "demo.convert", "demo.echo", "demo.whoami"}


@dataclass
class Mesh:
    net: Lan
    nodes: list[NodeProc]
    ids: dict[str, str]  # node name -> node id

    def start(self, index: int, name: str | None = None, *, wildcard: bool = False) -> NodeProc:
        node = self.net.start_node(index, *FAST, name=name, wildcard=wildcard)
        self.net.wait_serving(node)
        self.ids[node.name] = self.net.agent.call("status", node=node.address)["status"]["node_id"]  # type: ignore[union-attr]
        return node

    def view(self, observer: NodeProc, node: NodeProc) -> dict[str, object] | None:
        return next(
            (p for p in self.net.peers(observer) if p.get("node_id") == self.ids[node.name]), None
        )

    def wait_mesh(self, nodes: list[NodeProc]) -> None:
        wait_for(lambda: self.net.mesh_complete(nodes, self.ids), timeout=60, what="a full mesh")

    def wait_dropped(self, gone: NodeProc, observers: list[NodeProc]) -> None:
        def dropped() -> bool:
            views = self.net.all_peers(observers)
            return all(
                not any(
                    p.get("node_id") == self.ids[gone.name] and p["state"] == CONNECTED
                    for p in views[o.address] or [{"node_id": "", "state": ""}]
                )
                and views[o.address] is not None
                for o in observers
            )

        wait_for(dropped, timeout=60, what=f"everyone to drop {gone.name}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    if REASON:
        pytest.skip(REASON)
    with lan(tmp_path_factory.mktemp("lan")) as net:
        m = Mesh(net, [], {})
        m.nodes = [net.start_node(i, *FAST) for i in range(1, 6)]
        net.wait_serving(*m.nodes)
        for node in m.nodes:
            m.ids[node.name] = net.agent.call("status", node=node.address)["status"]["node_id"]  # type: ignore[union-attr]
        m.wait_mesh(m.nodes)
        yield m


def test_five_nodes_list_each_other_connected_with_capabilities(mesh: Mesh) -> None:
    for observer in mesh.nodes:
        peers = {p.get("node_id"): p for p in mesh.net.peers(observer)}
        for other in mesh.nodes:
            if other is observer:
                continue
            peer = peers[mesh.ids[other.name]]
            assert peer["state"] == CONNECTED
            assert peer["health"] == "SERVING"
            assert peer["address"] == other.address
            assert set(peer["capability_ids"]) == DEMO_CAPS
            assert peer["key_fingerprint"].startswith(mesh.ids[other.name])


def test_newcomer_is_found_despite_a_spoof_and_dropped_on_graceful_stop(
    mesh: Mesh, tmp_path: Path
) -> None:
    net, agent = mesh.net, mesh.net.agent
    assert agent is not None
    # The newcomer's key exists before it runs; a liar announces its id and
    # fingerprint first, from its own address and with its own key.
    newcomer_dir = net.workdir / "n6"
    victim = load_identity(newcomer_dir)
    before = {n.name: net.counters(n).get("discovery.handshake_rejected", 0) for n in mesh.nodes}
    spoof = agent.call(
        "spoof",
        node_id=victim.node_id,
        fingerprint=victim.public_key.fingerprint,
        data_dir=str(tmp_path / "spoofer"),
        label="n6-impostor",
    )
    wait_for(
        lambda: all(
            net.counters(n).get("discovery.handshake_rejected", 0) > before[n.name]
            for n in mesh.nodes
        ),
        timeout=60,
        what="every node to reject the impostor at the handshake",
    )
    newcomer = mesh.start(6)
    assert mesh.ids["n6"] == victim.node_id
    everyone = [*mesh.nodes, newcomer]
    mesh.wait_mesh(everyone)
    for observer in mesh.nodes:
        peer = mesh.view(observer, newcomer)
        assert peer is not None
        assert peer["address"] == newcomer.address  # the real one, never the impostor
        # The impostor is at most a failed, unverified dial: GONE, no node id.
        for p in net.peers(observer):
            if p["address"] == spoof["address"]:
                assert p["state"] == "PEER_STATE_GONE"
                assert not p.get("node_id")

    # The mesh can be complete before the newcomer's own announcement is out (it
    # found the others and they dialled back); wait for it so there is a goodbye.
    wait_for(
        lambda: agent.call("announced", node_id=victim.node_id)["instance"],
        timeout=60,
        what="the newcomer's announcement",
    )
    net.stop_node(newcomer, signal.SIGTERM)
    assert newcomer.proc.returncode == 0
    mesh.wait_dropped(newcomer, mesh.nodes)

    def gone_everywhere() -> bool:
        views = [mesh.view(o, newcomer) for o in mesh.nodes]
        return all(v is not None and v["state"] == "PEER_STATE_GONE" for v in views)

    wait_for(gone_everywhere, timeout=60, what="everyone to forget the newcomer")
    mesh.wait_mesh(mesh.nodes)


def test_sigkilled_node_is_dropped_after_keepalive_and_timeout(mesh: Mesh) -> None:
    victim = mesh.start(7)
    mesh.wait_mesh([*mesh.nodes, victim])
    mesh.net.stop_node(victim, signal.SIGKILL)

    def gone_everywhere() -> bool:
        views = mesh.net.all_peers(mesh.nodes)
        return all(
            any(
                p.get("node_id") == mesh.ids[victim.name] and p["state"] == "PEER_STATE_GONE"
                for p in views[o.address] or []
            )
            for o in mesh.nodes
        )

    wait_for(gone_everywhere, timeout=60, what="everyone to expire the killed node")
    mesh.wait_mesh(mesh.nodes)


def test_node_bound_to_all_interfaces_advertises_and_is_reached_at_its_lan_address(
    mesh: Mesh,
) -> None:
    # Bound to 0.0.0.0, its card must list 10.77.0.8 (not 127.0.0.1: peers it dials
    # would dial that back), and every peer must reach and list it there.
    net, agent = mesh.net, mesh.net.agent
    assert agent is not None
    node = mesh.start(8, wildcard=True)
    status = agent.call("status", node=node.address)["status"]
    assert [e["address"] for e in status["endpoints"]] == [node.address]
    everyone = [*mesh.nodes, node]
    mesh.wait_mesh(everyone)
    for observer in mesh.nodes:
        peer = mesh.view(observer, node)
        assert peer is not None
        assert peer["address"] == node.address
    for p in net.peers(node):
        assert not p["address"].startswith("127."), p
    net.stop_node(node, signal.SIGTERM)
    mesh.wait_dropped(node, mesh.nodes)


def test_hostile_lan_does_not_crash_nodes_or_evict_verified_peers(mesh: Mesh) -> None:
    net, agent = mesh.net, mesh.net.agent
    assert agent is not None
    target = mesh.nodes[0]
    refuted = {n.name: net.counters(n).get("discovery.goodbye_refuted", 0) for n in mesh.nodes}
    rejected = {
        n.name: net.counters(n).get("discovery.announcement_rejected", 0) for n in mesh.nodes
    }
    # Hundreds of bogus instances (malformed, oversized, lying about ids) and
    # garbage packets; then a goodbye forged for a live, verified, healthy peer.
    agent.call("flood", count=300, claim_ids=list(mesh.ids.values()), garbage=100)
    wait_for(
        lambda: all(
            net.counters(n).get("discovery.announcement_rejected", 0) >= rejected[n.name] + 100
            for n in mesh.nodes
        ),
        timeout=60,
        what="every node to reject the malformed announcements",
    )
    agent.call("goodbye", node_id=mesh.ids[target.name])
    others = mesh.nodes[1:]
    wait_for(
        lambda: all(
            net.counters(n).get("discovery.goodbye_refuted", 0) > refuted[n.name] for n in others
        ),
        timeout=60,
        what="every node to re-check the forged goodbye",
    )
    for node in mesh.nodes:
        assert node.alive(), node.output()[-2000:]
    mesh.wait_mesh(mesh.nodes)  # nobody evicted: still all connected to all
    for observer in others:
        peer = mesh.view(observer, target)
        assert peer is not None
        assert peer["state"] == CONNECTED
        peers = net.peers(observer)
        pending = [
            p for p in peers if p["state"] in ("PEER_STATE_DISCOVERED", "PEER_STATE_HANDSHAKING")
        ]
        assert len(pending) <= 64  # the table's pending cap
        assert len(peers) <= 1024
