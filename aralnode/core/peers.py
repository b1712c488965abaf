"""The peer table: a pure state machine over what discovery and handshakes report.

::

    DISCOVERED --handshake_started--> HANDSHAKING --verified--> CONNECTED
        ^                                  |                       |   ^
        |                               failed                 unhealthy |
        |                                  v                       v   |
        +------------(rediscovered)------ GONE <--expired/goodbye-- STALE
                                                              (healthy)-+

The transitions are a table (like h11's ``_state.py``); anything not in it is
refused with ``ValueError`` and the peer is left as it was. Nothing here does I/O:
transports feed events in, and read snapshots and change events out.

A peer that dialled *us* and proved its key (INBOUND) is not CONNECTED: anyone can
make a key and dial. It is STALE and not ``reached`` (its key is verified, its
reachability is not) until our own dial to it verifies it (VERIFIED, which sets
``reached``). At most ``max_inbound`` such unreached peers are kept at once, at most
``max_inbound_per_origin`` of them from one origin (the address their handshake came
from). When all ``max_inbound`` places are taken, a newcomer takes the place of an
unreached peer of the origin holding the most places (its least recently seen
one); peers the program trusts by id (``protected``: granted) are never evicted
for it, and are not held to the per-origin cap. So keys made by the dozen and
holding channels cannot keep every other peer out.

Time is the injected clock's. Two readings are kept per peer: ``since_ms`` (when it
entered its state) and ``last_seen_ms`` (the last *evidence* that it is alive: a
discovery, a verified handshake in either direction, a healthy probe, a live
channel; see ``touch``). ``expire`` turns them into EXPIRED events:

- a STALE peer with no evidence for ``PeerTimeouts.stale_ms`` is GONE;
- a CONNECTED peer with no evidence for ``PeerTimeouts.connected_ms`` is GONE (its
  health follower, which touches it every keepalive, is gone or stuck);
- a DISCOVERED or HANDSHAKING peer older than ``pending_ms`` is GONE (a dial that hung);
- a GONE peer older than ``forget_ms`` is forgotten (removed, no event; ``on_forget``
  listeners hear of it, e.g. to unpin its key).

Bounds: at most ``capacity`` peers (GONE ones are evicted first), at most
``max_pending`` DISCOVERED/HANDSHAKING ones, so announcements alone (which cost an
attacker nothing) can never fill the table, and at most ``max_inbound`` unreached
INBOUND ones, so handshakes from self-made keys cannot either.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from aralnode.core.clock import Clock


class PeerState(enum.IntEnum):
    DISCOVERED = 1
    HANDSHAKING = 2
    CONNECTED = 3
    STALE = 4
    GONE = 5


class PeerEvent(enum.StrEnum):
    DISCOVERED = "discovered"
    HANDSHAKE_STARTED = "handshake_started"
    VERIFIED = "verified"
    FAILED = "failed"
    UNHEALTHY = "unhealthy"
    HEALTHY = "healthy"
    GOODBYE = "goodbye"
    EXPIRED = "expired"
    INBOUND = "inbound"  # it dialled us and proved its key; we have not reached it


S, E = PeerState, PeerEvent
TRANSITIONS: dict[tuple[PeerState, PeerEvent], PeerState] = {
    (S.DISCOVERED, E.DISCOVERED): S.DISCOVERED,
    (S.DISCOVERED, E.HANDSHAKE_STARTED): S.HANDSHAKING,
    (S.DISCOVERED, E.VERIFIED): S.CONNECTED,
    (S.DISCOVERED, E.FAILED): S.GONE,
    (S.DISCOVERED, E.GOODBYE): S.GONE,
    (S.DISCOVERED, E.EXPIRED): S.GONE,
    (S.HANDSHAKING, E.DISCOVERED): S.HANDSHAKING,
    (S.HANDSHAKING, E.VERIFIED): S.CONNECTED,
    (S.HANDSHAKING, E.FAILED): S.GONE,
    (S.HANDSHAKING, E.GOODBYE): S.GONE,
    (S.HANDSHAKING, E.EXPIRED): S.GONE,
    (S.CONNECTED, E.DISCOVERED): S.CONNECTED,
    (S.CONNECTED, E.VERIFIED): S.CONNECTED,
    (S.CONNECTED, E.HEALTHY): S.CONNECTED,
    (S.CONNECTED, E.UNHEALTHY): S.STALE,
    (S.CONNECTED, E.GOODBYE): S.GONE,
    (S.CONNECTED, E.EXPIRED): S.GONE,
    (S.CONNECTED, E.HANDSHAKE_STARTED): S.HANDSHAKING,
    (S.STALE, E.HEALTHY): S.CONNECTED,
    (S.STALE, E.VERIFIED): S.CONNECTED,
    (S.STALE, E.DISCOVERED): S.STALE,
    (S.STALE, E.UNHEALTHY): S.STALE,
    (S.STALE, E.HANDSHAKE_STARTED): S.HANDSHAKING,
    (S.STALE, E.GOODBYE): S.GONE,
    (S.STALE, E.EXPIRED): S.GONE,
    (S.STALE, E.FAILED): S.GONE,
    (S.GONE, E.DISCOVERED): S.DISCOVERED,
    (S.GONE, E.VERIFIED): S.CONNECTED,
    (S.GONE, E.GOODBYE): S.GONE,
    (S.GONE, E.EXPIRED): S.GONE,
    (S.GONE, E.INBOUND): S.STALE,
    (S.STALE, E.INBOUND): S.STALE,
    (S.CONNECTED, E.INBOUND): S.CONNECTED,
    (S.DISCOVERED, E.INBOUND): S.DISCOVERED,
    (S.HANDSHAKING, E.INBOUND): S.HANDSHAKING,
}

PENDING = frozenset({PeerState.DISCOVERED, PeerState.HANDSHAKING})
# Peers whose key a handshake verified (our dial, or theirs) and that have not gone:
# the peers ``status`` counts, and what the WebSocket's ``peer_joined`` and
# ``peer_left`` say a peer entered or left (a peer that dialled us is STALE, with a
# live channel: it has joined).
PRESENT = frozenset({PeerState.CONNECTED, PeerState.STALE})
# Events that are evidence the peer is alive (they refresh ``last_seen_ms``).
# UNHEALTHY, FAILED, GOODBYE and EXPIRED are not: a stream of failures must not
# keep a dead peer from expiring.
EVIDENCE = frozenset(
    {PeerEvent.DISCOVERED, PeerEvent.VERIFIED, PeerEvent.HEALTHY, PeerEvent.INBOUND}
)


class PeerTableFull(ValueError):
    """No room for another peer, or for another unverified or unreached one."""


class OriginFull(PeerTableFull):
    """No room for another unreached peer from the same origin."""


def _never(key: str) -> bool:
    return False


@dataclass(slots=True, frozen=True)
class PeerTimeouts:
    """When ``PeerTable.expire`` gives up on a peer (milliseconds).

    Attributes:
        stale_ms: A STALE peer without evidence of life for this long is GONE
            (the node's ``peer_timeout_ms``).
        connected_ms: A CONNECTED peer without evidence of life for this long is
            GONE (the node's keepalive + peer timeout: a followed peer is touched
            every keepalive).
        pending_ms: A peer still DISCOVERED/HANDSHAKING after this long is GONE.
        forget_ms: A GONE peer is removed from the table after this long.
    """

    stale_ms: int = 10_000
    connected_ms: int = 15_000
    pending_ms: int = 30_000
    forget_ms: int = 60_000


@dataclass(slots=True, frozen=True)
class PeerInfo:
    """A snapshot of one peer. ``node_id`` is verified only once CONNECTED."""

    key: str  # node id once verified; before that, "addr:" + address
    address: str
    state: PeerState
    source: str = "static"
    node_id: str = ""
    name: str = ""
    health: str = "UNKNOWN"
    capability_ids: tuple[str, ...] = ()
    last_seen_ms: int = 0
    protocol_version: str = ""
    key_fingerprint: str = ""
    error: str = ""
    since_ms: int = 0
    reached: bool = False  # verified by our own dial (not only by its dialling us)
    origin: str = ""  # where its handshake came from, if it dialled us (IP; IPv6 /64)


@dataclass(slots=True, frozen=True)
class PeerChange:
    """One applied event: the state before (``None`` for a new peer) and the peer after."""

    event: PeerEvent
    before: PeerState | None
    peer: PeerInfo


@dataclass(slots=True)
class PeerTable:
    """Peers by key, bounded; listeners get every applied event."""

    clock: Clock
    capacity: int = 1024
    max_pending: int = 64
    max_inbound: int = 64
    max_inbound_per_origin: int = 8
    protected: Callable[[str], bool] = _never  # granted: never evicted for a newcomer
    timeouts: PeerTimeouts = PeerTimeouts()
    inbound_evicted: int = 0  # unreached peers that made room for a newcomer
    _peers: dict[str, PeerInfo] = field(default_factory=dict)
    _listeners: list[Callable[[PeerChange], None]] = field(default_factory=list)
    _forget_listeners: list[Callable[[str], None]] = field(default_factory=list)

    def on_change(self, listener: Callable[[PeerChange], None]) -> Callable[[], None]:
        """Call ``listener`` with every applied change; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def on_forget(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(key)`` whenever a peer is removed from the table."""
        self._forget_listeners.append(listener)
        return lambda: (
            self._forget_listeners.remove(listener) if listener in self._forget_listeners else None
        )

    def get(self, key: str) -> PeerInfo | None:
        return self._peers.get(key)

    def by_node_id(self, node_id: str) -> PeerInfo | None:
        peer = self._peers.get(node_id)
        return peer if peer is not None and peer.node_id == node_id else None

    def snapshot(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda p: (p.name, p.key))

    def connected(self) -> list[PeerInfo]:
        return [p for p in self.snapshot() if p.state is PeerState.CONNECTED]

    def pending(self) -> int:
        """How many peers are DISCOVERED or HANDSHAKING (unverified)."""
        return sum(1 for p in self._peers.values() if p.state in PENDING)

    def unreached(self) -> int:
        """How many peers that dialled us are kept but not verified by our own dial."""
        return sum(1 for p in self._peers.values() if _unreached(p))

    def __iter__(self) -> Iterator[PeerInfo]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._peers)

    def apply(self, key: str, event: PeerEvent, **fields: object) -> PeerInfo:
        """Apply ``event`` to the peer ``key`` (creating it on DISCOVERED, VERIFIED
        or INBOUND).

        Raises:
            PeerTableFull: a new (or rediscovered) unverified peer would exceed
                ``max_pending``, or a new peer ``capacity``; a new unreached INBOUND
                one would exceed ``max_inbound`` with no unprotected one to evict
                (``OriginFull``: ``max_inbound_per_origin`` from its origin).
            ValueError: the transition is not allowed.
        """
        now = self.clock.now_ms()
        before = self._peers.get(key)
        if before is None:
            state = _NEW_STATE.get(event)
            if state is None:
                raise ValueError(f"unknown peer {key!r} for event {event}")
            if event is PeerEvent.INBOUND:
                self._admit_inbound(key, str(fields.get("origin", "")))
            self._check_room(state, new=True)
            peer = PeerInfo(key=key, address=str(fields.pop("address", "")), state=state)
        else:
            state_after = TRANSITIONS.get((before.state, event))
            if state_after is None:
                raise ValueError(f"peer {key}: {event} not allowed in state {before.state.name}")
            if state_after in PENDING and before.state not in PENDING:
                self._check_room(state_after, new=False)
            inbound = event is PeerEvent.INBOUND and before.state is PeerState.GONE
            if inbound:
                self._admit_inbound(key, str(fields.get("origin", "")))
            peer = replace(before, state=state_after)
            if inbound:
                peer = replace(peer, reached=False)
        if before is None or peer.state is not before.state:
            peer = replace(peer, since_ms=now)
        if event in EVIDENCE:
            peer = replace(peer, last_seen_ms=now)
        if event is PeerEvent.VERIFIED:
            peer = replace(peer, reached=True)
        peer = replace(peer, **fields)  # type: ignore[arg-type]
        self._peers[key] = peer
        change = PeerChange(event, before.state if before else None, peer)
        for listener in list(self._listeners):
            listener(change)
        return peer

    def touch(self, key: str) -> PeerInfo | None:
        """Record evidence that ``key`` is alive (a healthy probe) without an event."""
        peer = self._peers.get(key)
        if peer is not None:
            peer = self._peers[key] = replace(peer, last_seen_ms=self.clock.now_ms())
        return peer

    def expire(self) -> list[PeerChange]:
        """Apply EXPIRED to every peer past its timeout and forget old GONE ones.

        Returns the changes made (forgotten peers are not changes: they were GONE).
        """
        now = self.clock.now_ms()
        t = self.timeouts
        changes: list[PeerChange] = []
        for key, peer in list(self._peers.items()):
            if peer.state is PeerState.GONE:
                if now - peer.since_ms >= t.forget_ms:
                    self._forget(key)
                continue
            silent = now - peer.last_seen_ms
            if (
                (peer.state is PeerState.STALE and silent >= t.stale_ms)
                or (peer.state is PeerState.CONNECTED and silent >= t.connected_ms)
                or (peer.state in PENDING and now - peer.since_ms >= t.pending_ms)
            ):
                after = self.apply(key, PeerEvent.EXPIRED, error=peer.error or "timed out")
                changes.append(PeerChange(PeerEvent.EXPIRED, peer.state, after))
        return changes

    def rekey(self, old: str, new: str) -> None:
        """Move a peer known by address to its verified node id.

        If ``new`` is already known (e.g. it dialled us first) the provisional
        entry is dropped and ``new`` keeps its own.
        """
        peer = self._peers.pop(old, None)
        if peer is not None and new not in self._peers:
            self._peers[new] = replace(peer, key=new)

    def remove(self, key: str) -> None:
        if key in self._peers:
            self._forget(key)

    def _forget(self, key: str) -> None:
        del self._peers[key]
        for listener in list(self._forget_listeners):
            listener(key)

    def _admit_inbound(self, key: str, origin: str) -> None:
        """Make room for ``key``, a peer that dialled us from ``origin``, among the
        unreached ones (see the module docstring), or raise."""
        protected = self.protected
        waiting = [p for p in self._peers.values() if _unreached(p) and p.key != key]
        evictable = [p for p in waiting if not protected(p.key)]
        if not protected(key):
            same = sum(1 for p in evictable if p.origin == origin)
            if same >= self.max_inbound_per_origin:
                raise OriginFull(
                    f"{same} peers that dialled us from {origin or 'an unknown address'} "
                    "are not yet verified by our own dial"
                )
        if len(waiting) < self.max_inbound:
            return
        if not evictable:
            raise PeerTableFull(
                f"{self.max_inbound} peers that dialled us are not yet verified by our own dial"
            )
        held: dict[str, int] = {}
        for p in evictable:
            held[p.origin] = held.get(p.origin, 0) + 1
        victim = max(evictable, key=lambda p: (held[p.origin], -p.last_seen_ms, -p.since_ms))
        self.inbound_evicted += 1
        self._forget(victim.key)

    def _check_room(self, state: PeerState, *, new: bool) -> None:
        if state in PENDING and self.pending() >= self.max_pending:
            raise PeerTableFull(f"{self.max_pending} unverified peers already pending")
        if new and len(self._peers) >= self.capacity and not self._evict_gone():
            raise PeerTableFull(f"peer table is full ({self.capacity} peers)")

    def _evict_gone(self) -> bool:
        oldest = min(
            (p for p in self._peers.values() if p.state is PeerState.GONE),
            key=lambda p: p.since_ms,
            default=None,
        )
        if oldest is None:
            return False
        self._forget(oldest.key)
        return True


_NEW_STATE = {
    PeerEvent.DISCOVERED: PeerState.DISCOVERED,
    PeerEvent.VERIFIED: PeerState.CONNECTED,
    PeerEvent.INBOUND: PeerState.STALE,
}


def _unreached(peer: PeerInfo) -> bool:
    return not peer.reached and peer.state in (PeerState.STALE, PeerState.CONNECTED)
