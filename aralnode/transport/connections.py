"""Which of the gRPC port's connections to shut down so that one client cannot hold
the port (the decision; ``reaper.StuckConnectionReaper`` applies it on each sweep).

grpc core bounds the port's connections in all (``grpc_max_connections``), first
come first served, and closes a connection only when it has had no call for
``grpc_connection_idle_ms``. One address that opened every place with HTTP/2
connections that answer pings and never call held the port for five minutes, and
every other client and peer was refused (``UNAVAILABLE``). Here, on what the
sweep finds (each connection's client address, since when it is open, the calls on
it: ``CallTable``):

1. a connection that has never carried a call ``unused_after`` seconds after it
   was first seen is shut down (a client opens one to call);
2. past ``per_address`` connections from one address (an IPv4 host, an IPv6 /64),
   its newest ones go, those without a call first;
3. while more than ``total - room`` remain, the oldest connection without a call
   of the address holding the most goes, one at a time: a newcomer always finds a
   place (as the WebSocket and HTTP tables make room).

A connection with calls open is shut down only by rule 2.

Shutting connections down is not enough against a client that opens new ones as
soon as its old ones end: grpc accepts them until the port is full. So ``blocked``
names the addresses whose new connections must wait (``synfilter``): those at their
share, and, while the port is within ``2 * room`` of full, every address holding
``crowd`` connections or more (8 of 512): the places made go to lighter addresses.
An address named may open connections again once a sweep finds it under both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Conn:
    """One connection as a sweep found it."""

    inode: int
    address: str  # its client address (``address_of``)
    since: float  # when first seen (monotonic seconds)
    calls: int  # calls open on it
    used: bool  # whether it has ever carried a call


class Shed(NamedTuple):
    """A connection to shut down: by which rule (``unused``, ``address``, ``room``),
    and why, in words."""

    conn: Conn
    rule: str
    why: str


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one address may hold of the port's connections (module docstring)."""

    total: int
    per_address: int
    unused_after: float
    room: int = 1

    @property
    def crowd(self) -> int:
        """Connections that make an address wait while the port is nearly full."""
        return max(2, self.total // 64)

    @classmethod
    def of(cls, total: int, per_address: int, unused_after: float) -> ConnectionLimits:
        """Keeping a sixteenth of the places free (at least one)."""
        return cls(total, min(per_address, total), unused_after, max(1, total // 16))


def shed(conns: Iterable[Conn], limits: ConnectionLimits, now: float) -> list[Shed]:
    """The connections to shut down (in the order of the rules)."""
    out: list[Shed] = []
    kept: dict[str, list[Conn]] = {}
    for conn in conns:
        if not conn.used and not conn.calls and now - conn.since >= limits.unused_after:
            out.append(Shed(conn, "unused", f"no call in {now - conn.since:.0f} s"))
        else:
            kept.setdefault(conn.address, []).append(conn)
    for held in kept.values():
        excess = len(held) - limits.per_address
        if excess > 0:
            # Newest first, those with calls last.
            held.sort(key=lambda c: (c.calls > 0, -c.since, -c.inode))
            why = f"{len(held)} connections from its address, its limit {limits.per_address}"
            out.extend(Shed(conn, "address", why) for conn in held[:excess])
            del held[:excess]
    out.extend(_make_room(kept, limits))
    return out


def _make_room(kept: dict[str, list[Conn]], limits: ConnectionLimits) -> list[Shed]:
    count = sum(len(held) for held in kept.values())
    out: list[Shed] = []
    idle = {
        address: sorted((c for c in held if not c.calls), key=lambda c: (c.since, c.inode))
        for address, held in kept.items()
    }
    while count > limits.total - limits.room:
        heaviest = max(
            (address for address, free in idle.items() if free),
            key=lambda address: (len(kept[address]), address),
            default=None,
        )
        if heaviest is None:  # every connection left carries calls
            break
        conn = idle[heaviest].pop(0)
        kept[heaviest].remove(conn)
        why = f"the port holds {count} connections; its address holds the most"
        out.append(Shed(conn, "room", why))
        count -= 1
    return out


def blocked(conns: Iterable[Conn], limits: ConnectionLimits) -> set[str]:
    """The addresses that may open no more connections for now (module docstring),
    given the connections left after ``shed``."""
    held: dict[str, int] = {}
    for conn in conns:
        held[conn.address] = held.get(conn.address, 0) + 1
    least = limits.per_address
    if sum(held.values()) > limits.total - 2 * limits.room:
        least = min(least, limits.crowd)
    return {address for address, count in held.items() if count >= least}


__all__ = ["Conn", "ConnectionLimits", "Shed", "blocked", "shed"]
