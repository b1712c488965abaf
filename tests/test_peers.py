"""The peer table as a pure state machine: no sockets, a fixed clock."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from aralnode.core.clock import FixedClock
from aralnode.core.identity import Identity, KeyRing, KeyRingFull
from aralnode.core.peers import (
    PENDING,
    TRANSITIONS,
    OriginFull,
    PeerChange,
    PeerEvent,
    PeerState,
    PeerTable,
    PeerTableFull,
    PeerTimeouts,
)

TIMEOUTS = PeerTimeouts(stale_ms=10_000, connected_ms=15_000, pending_ms=30_000, forget_ms=60_000)


def table(**kw: object) -> tuple[PeerTable, FixedClock]:
    clock = FixedClock()
    return PeerTable(clock, timeouts=TIMEOUTS, **kw), clock  # type: ignore[arg-type]


def test_happy_path_and_events() -> None:
    peers, _ = table()
    seen: list[PeerChange] = []
    peers.on_change(seen.append)
    peers.apply("a", PeerEvent.DISCOVERED, address="10.0.0.1:1", source="mdns")
    peers.apply("a", PeerEvent.HANDSHAKE_STARTED)
    peer = peers.apply("a", PeerEvent.VERIFIED, node_id="a", name="alpha")
    assert peer.state is PeerState.CONNECTED
    assert [(c.before, c.peer.state) for c in seen] == [
        (None, PeerState.DISCOVERED),
        (PeerState.DISCOVERED, PeerState.HANDSHAKING),
        (PeerState.HANDSHAKING, PeerState.CONNECTED),
    ]
    assert peers.connected() == [peer]


def test_refused_transition_leaves_peer_unchanged() -> None:
    peers, _ = table()
    before = peers.apply("a", PeerEvent.DISCOVERED, address="x:1")
    with pytest.raises(ValueError, match="not allowed"):
        peers.apply("a", PeerEvent.HEALTHY)
    assert peers.get("a") == before
    with pytest.raises(ValueError, match="unknown peer"):
        peers.apply("nobody", PeerEvent.GOODBYE)


def test_stale_peer_expires_after_timeout_without_evidence() -> None:
    peers, clock = table()
    peers.apply("a", PeerEvent.VERIFIED, address="x:1", node_id="a")
    clock.advance(5)
    peers.apply("a", PeerEvent.UNHEALTHY)
    clock.advance(4.9)  # 9.9 s since the last evidence
    assert peers.expire() == []
    peers.apply("a", PeerEvent.UNHEALTHY)  # failures are not evidence of life
    clock.advance(0.1)
    (change,) = peers.expire()
    assert change.event is PeerEvent.EXPIRED
    assert change.peer.state is PeerState.GONE


def test_touch_keeps_a_peer_alive_without_events() -> None:
    peers, clock = table()
    seen: list[PeerChange] = []
    peers.apply("a", PeerEvent.VERIFIED, address="x:1", node_id="a")
    peers.apply("a", PeerEvent.UNHEALTHY)
    peers.on_change(seen.append)
    for _ in range(5):
        clock.advance(5)
        peers.touch("a")
    assert peers.expire() == []
    assert seen == []
    assert peers.touch("unknown") is None


def test_connected_peer_without_evidence_expires() -> None:
    # A followed peer is touched every keepalive; one that nobody follows (or whose
    # follower is stuck) must not stay CONNECTED forever.
    peers, clock = table()
    peers.apply("a", PeerEvent.VERIFIED, address="x:1", node_id="a")
    for _ in range(10):
        clock.advance(14.9)
        peers.touch("a")
        assert peers.expire() == []
    clock.advance(15)
    (change,) = peers.expire()
    assert (change.before, change.peer.state) == (PeerState.CONNECTED, PeerState.GONE)


def test_inbound_peer_is_unreached_until_our_own_dial_verifies_it() -> None:
    peers, _ = table()
    peer = peers.apply("n", PeerEvent.INBOUND, address="10.0.0.1:1", node_id="n")
    assert (peer.state, peer.reached) == (PeerState.STALE, False)
    assert peers.connected() == []
    assert peers.unreached() == 1
    peer = peers.apply("n", PeerEvent.VERIFIED)  # our dial back
    assert (peer.state, peer.reached) == (PeerState.CONNECTED, True)
    assert peers.unreached() == 0
    # It dialling us again is evidence, and changes nothing else.
    assert peers.apply("n", PeerEvent.INBOUND).state is PeerState.CONNECTED
    peers.apply("n", PeerEvent.GOODBYE)
    again = peers.apply("n", PeerEvent.INBOUND)
    assert (again.state, again.reached) == (PeerState.STALE, False)


def test_unreached_inbound_peer_expires_after_the_stale_timeout() -> None:
    peers, clock = table()
    peers.apply("n", PeerEvent.INBOUND, address="x:1", node_id="n")
    clock.advance(9.9)
    assert peers.expire() == []
    clock.advance(0.1)
    (change,) = peers.expire()
    assert change.peer.state is PeerState.GONE


def test_handshake_flood_cannot_fill_the_table() -> None:
    # 1024 self-made keys dial us from one address: only max_inbound_per_origin are
    # kept, never CONNECTED, and a real newcomer still gets a place.
    peers, _ = table(capacity=1024, max_inbound=64)
    refused = 0
    for i in range(1024):
        try:
            peers.apply(f"k{i}", PeerEvent.INBOUND, address=f"h:{i}", node_id=f"k{i}", origin="h")
        except OriginFull:
            refused += 1
    assert refused == 1024 - 8
    assert peers.unreached() == 8
    assert peers.connected() == []
    assert peers.apply("real", PeerEvent.VERIFIED, address="r:1").state is PeerState.CONNECTED


def test_inbound_places_stay_fair_across_origins() -> None:
    """Keys holding every unreached place (from a few addresses) cannot keep others
    out: a newcomer from elsewhere takes the place of one from the address holding
    the most, the least recently seen there; granted peers are never evicted."""
    granted = {"g0", "g1"}
    peers, clock = table(max_inbound=8, max_inbound_per_origin=4, protected=granted.__contains__)
    forgotten: list[str] = []
    peers.on_forget(forgotten.append)
    for key in granted:
        peers.apply(key, PeerEvent.INBOUND, origin="x")
    for i in range(4):
        clock.advance(1)
        peers.apply(f"a{i}", PeerEvent.INBOUND, origin="a")
    for i in range(2):
        clock.advance(1)
        peers.apply(f"b{i}", PeerEvent.INBOUND, origin="b")
    assert peers.unreached() == 8
    with pytest.raises(OriginFull):  # a has its share
        peers.apply("a9", PeerEvent.INBOUND, origin="a")
    peers.apply("c0", PeerEvent.INBOUND, origin="c")  # evicts a's least recently seen
    assert forgotten == ["a0"]
    peers.apply("a0", PeerEvent.INBOUND, origin="a")  # back, in a's freed place... but full:
    assert forgotten == ["a0", "a1"]  # it takes a1's (a still holds the most)
    for i in range(1, 4):
        peers.apply(f"c{i}", PeerEvent.INBOUND, origin="c")
    assert peers.unreached() == 8
    assert {p.key for p in peers if p.origin == "x"} == granted  # never evicted
    # A granted peer is not held to its origin's cap and evicts a stranger.
    granted.add("g2")
    peers.apply("g2", PeerEvent.INBOUND, origin="x")
    assert peers.get("g2") is not None
    # Only granted ones left to evict: a stranger is refused.
    tight, _ = table(max_inbound=1, protected=lambda key: True)
    tight.apply("g", PeerEvent.INBOUND, origin="x")
    with pytest.raises(PeerTableFull):
        tight.apply("s", PeerEvent.INBOUND, origin="y")


def test_forgotten_peers_are_reported() -> None:
    peers, clock = table(capacity=2)
    forgotten: list[str] = []
    peers.on_forget(forgotten.append)
    peers.apply("a", PeerEvent.VERIFIED, address="x:1")
    peers.apply("a", PeerEvent.GOODBYE)
    clock.advance(60)
    peers.expire()
    assert forgotten == ["a"]
    peers.apply("b", PeerEvent.VERIFIED, address="x:2")
    peers.apply("b", PeerEvent.GOODBYE)
    peers.apply("c", PeerEvent.VERIFIED, address="x:3")
    peers.apply("d", PeerEvent.VERIFIED, address="x:4")  # evicts GONE b
    peers.remove("c")
    assert forgotten == ["a", "b", "c"]


def test_key_ring_pins_are_bounded_and_evict_forgotten_peers_first() -> None:
    keys = [Identity.generate().public_key for _ in range(4)]
    ring = KeyRing(max_pinned=3)
    for key in keys[:3]:
        ring.pin(key)
    ring.pin(keys[0])  # already pinned: no room needed
    with pytest.raises(KeyRingFull, match="pinned"):
        ring.pin(keys[3])
    gone = {keys[1].key_id}
    ring.evictable = gone.__contains__
    ring.pin(keys[3])
    assert not ring.is_pinned(keys[1].key_id)
    assert all(ring.is_pinned(k.key_id) for k in (keys[0], keys[2], keys[3]))
    assert ring.pinned == 3
    ring.unpin(keys[0].key_id)
    assert ring.get(keys[0].key_id) is None


def test_pending_expires_and_gone_is_forgotten() -> None:
    peers, clock = table()
    peers.apply("addr:x:1", PeerEvent.DISCOVERED, address="x:1")
    peers.apply("addr:x:1", PeerEvent.HANDSHAKE_STARTED)
    clock.advance(30)
    (change,) = peers.expire()
    assert change.peer.state is PeerState.GONE
    clock.advance(59)
    peers.expire()
    assert len(peers) == 1
    clock.advance(1)
    peers.expire()
    assert len(peers) == 0


def test_pending_set_is_bounded_and_verified_peers_still_fit() -> None:
    peers, _ = table(max_pending=3, capacity=10)
    for i in range(3):
        peers.apply(f"addr:{i}", PeerEvent.DISCOVERED, address=f"h:{i}")
    with pytest.raises(PeerTableFull):
        peers.apply("addr:9", PeerEvent.DISCOVERED, address="h:9")
    peers.apply("real", PeerEvent.VERIFIED, address="h:100", node_id="real")
    assert peers.pending() == 3


def test_capacity_evicts_oldest_gone_first() -> None:
    peers, clock = table(capacity=2)
    peers.apply("a", PeerEvent.VERIFIED, address="x:1")
    peers.apply("a", PeerEvent.GOODBYE)
    clock.advance(1)
    peers.apply("b", PeerEvent.VERIFIED, address="x:2")
    peers.apply("c", PeerEvent.VERIFIED, address="x:3")
    assert peers.get("a") is None
    with pytest.raises(PeerTableFull):
        peers.apply("d", PeerEvent.VERIFIED, address="x:4")


def test_rekey_keeps_an_existing_verified_entry() -> None:
    peers, _ = table()
    peers.apply("n", PeerEvent.VERIFIED, address="inbound:1", node_id="n", source="inbound")
    peers.apply("addr:x:1", PeerEvent.DISCOVERED, address="x:1")
    peers.rekey("addr:x:1", "n")
    assert peers.get("addr:x:1") is None
    assert peers.get("n").source == "inbound"  # type: ignore[union-attr]


KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
EVENTS = st.sampled_from(list(PeerEvent))


class PeerTableMachine(RuleBasedStateMachine):
    """Random events, random time: the table never breaks its own rules."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FixedClock()
        self.table = PeerTable(
            self.clock, capacity=4, max_pending=2, max_inbound=2, timeouts=TIMEOUTS
        )
        self.changes: list[PeerChange] = []
        self.table.on_change(self.changes.append)

    @rule(key=KEYS, event=EVENTS)
    def apply(self, key: str, event: PeerEvent) -> None:
        before = self.table.get(key)
        try:
            after = self.table.apply(key, event, address=f"{key}:1")
        except ValueError:
            assert self.table.get(key) == before  # refused: nothing changed
            return
        if before is not None:
            assert TRANSITIONS[(before.state, event)] is after.state

    @rule(seconds=st.floats(min_value=0, max_value=70))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def expire(self) -> None:
        for change in self.table.expire():
            assert change.before in (PeerState.STALE, PeerState.CONNECTED, *PENDING)
            assert change.peer.state is PeerState.GONE

    @rule(key=KEYS)
    def touch(self, key: str) -> None:
        self.table.touch(key)

    @invariant()
    def bounded(self) -> None:
        assert len(self.table) <= 4
        assert self.table.pending() <= 2
        assert self.table.unreached() <= 2

    @invariant()
    def times_are_sane(self) -> None:
        now = self.clock.now_ms()
        for peer in self.table:
            assert peer.since_ms <= now
            assert peer.last_seen_ms <= now

    @invariant()
    def every_change_is_a_table_transition(self) -> None:
        for change in self.changes:
            if change.before is not None:
                assert TRANSITIONS[(change.before, change.event)] is change.peer.state
        self.changes.clear()


TestPeerTableMachine = PeerTableMachine.TestCase
TestPeerTableMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
