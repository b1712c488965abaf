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
}


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


@dataclass(slots=True, frozen=True)
class PeerChange:
    event: PeerEvent
    before: PeerState | None
    peer: PeerInfo


@dataclass(slots=True)
class PeerTable:
    """Peers by key, bounded; listeners get every change."""

    clock: Clock
    capacity: int = 1024
    _peers: dict[str, PeerInfo] = field(default_factory=dict)
    _listeners: list[Callable[[PeerChange], None]] = field(default_factory=list)

    def on_change(self, listener: Callable[[PeerChange], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def get(self, key: str) -> PeerInfo | None:
        return self._peers.get(key)

    def by_node_id(self, node_id: str) -> PeerInfo | None:
        peer = self._peers.get(node_id)
        return peer if peer is not None and peer.node_id == node_id else None

    def snapshot(self) -> list[PeerInfo]:
        return sorted(self._peers.values(), key=lambda p: (p.name, p.key))

    def connected(self) -> list[PeerInfo]:
        return [p for p in self.snapshot() if p.state is PeerState.CONNECTED]

    def __iter__(self) -> Iterator[PeerInfo]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._peers)

    def apply(self, key: str, event: PeerEvent, **fields: object) -> PeerInfo:
        """Apply ``event`` to the peer ``key`` (creating it on DISCOVERED/VERIFIED).

        Raises:
            ValueError: the transition is not allowed, or the table is full.
        """
        now = self.clock.now_ms()
        before = self._peers.get(key)
        if before is None:
            if event not in (PeerEvent.DISCOVERED, PeerEvent.VERIFIED):
                raise ValueError(f"unknown peer {key!r} for event {event}")
            if len(self._peers) >= self.capacity and not self._evict_gone():
                raise ValueError("peer table is full")
            state = PeerState.DISCOVERED if event is PeerEvent.DISCOVERED else PeerState.CONNECTED
            peer = PeerInfo(key=key, address=str(fields.pop("address", "")), state=state)
        else:
            state_after = TRANSITIONS.get((before.state, event))
            if state_after is None:
                raise ValueError(f"peer {key}: {event} not allowed in state {before.state.name}")
            peer = replace(before, state=state_after)
        peer = replace(peer, last_seen_ms=now, **fields)  # type: ignore[arg-type]
        self._peers[key] = peer
        change = PeerChange(event, before.state if before else None, peer)
        for listener in list(self._listeners):
            listener(change)
        return peer

    def rekey(self, old: str, new: str) -> None:
        """Move a peer known by address to its verified node id."""
        peer = self._peers.pop(old, None)
        if peer is not None and new not in self._peers:
            self._peers[new] = replace(peer, key=new)

    def remove(self, key: str) -> None:
        self._peers.pop(key, None)

    def _evict_gone(self) -> bool:
        for key, peer in self._peers.items():
            if peer.state is PeerState.GONE:
                del self._peers[key]
                return True
        return False
