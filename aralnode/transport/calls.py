"""What each client holds of the gRPC port's calls, and of the request bytes it receives.

grpc core hands a handler a request message only once it is whole. When a call asks
for its message, core opens the stream's flow-control window to the whole length
the message's prefix announces (up to the transport limit: twice
``max_message_bytes``, see ``grpc_server.transport_limit``) and keeps every byte
until the last one comes. A client that sends all of a message but its last byte
held that much per call for as long as it liked: five connections, 2 GB. A call
that has not asked for its message gets no more than the stream's initial window
(64 KiB while BDP probing is off, as the server sets it). So:

- ``CallTable`` counts the calls each client address has open (every method), and
  on which connection each runs: the reaper's sweep needs to know which connections
  carry calls and which never carried one.
- ``ReceiveBudget`` lets only so many calls ask for their message at once, in all
  and per address, each counted as a message of the transport limit: the rest wait
  their turn at 64 KiB each. A turn that comes free goes to the waiting address that
  holds the fewest, so an address that fills its share does not keep others out.

Addresses are keyed as ``service.stages.address_of`` keys them (an IPv4 host, an
IPv6 /64); connections as ``connection_key`` writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import time
from collections import deque
from urllib.parse import unquote

from aralnode.core.errors import RateLimited
from aralnode.service.stages import address_of


def connection_key(host: str, port: int) -> str:
    """One connection's client end, the same from gRPC's ``context.peer()`` as from
    the socket's ``getpeername()``: ``127.0.0.1:5000``, ``[2001:db8::1]:5000`` (an
    IPv4 client of a dual-stack socket as IPv4; a scope id dropped)."""
    host = host.strip("[]").partition("%")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"[{ip}]:{port}"
        ip = ip.ipv4_mapped
    return f"{ip}:{port}"


def peer_connection(peer: str) -> str:
    """``connection_key`` of gRPC's ``context.peer()`` (``ipv4:127.0.0.1:5000``,
    ``ipv6:[::1]:5000``, percent-encoded or not); anything else as it is."""
    if not peer.startswith(("ipv4:", "ipv6:")):
        return peer
    host, sep, port = unquote(peer[5:]).rpartition(":")
    if not sep or not port.isdigit():
        return peer
    return connection_key(host, int(port))


class CallTable:
    """The calls open on the port: at most ``per_address`` from one client address.

    ``enter`` counts a call (refusing it past the share), ``leave`` ends it; both on
    the event loop. ``snapshot`` is what the reaper reads of it; ``forget`` drops the
    connections the reaper no longer finds."""

    __slots__ = ("_by_address", "_keys", "_open", "_used", "per_address", "refused")

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self.refused = 0
        self._by_address: dict[str, int] = {}
        self._open: dict[str, int] = {}  # connection: calls open on it
        self._used: dict[str, float] = {}  # connection: when a call last began or ended
        self._keys: dict[str, tuple[str, str]] = {}  # peer: (address, connection), bounded

    def enter(self, peer: str, now: float | None = None) -> tuple[str, str]:
        """Count a call from ``peer`` (``context.peer()``); the key ``leave`` takes.
        Raises ``RateLimited`` (``TOO_MANY_CALLS``) past the address's share."""
        key = self._keys.get(peer)
        if key is None:  # (a connection's calls share its peer: parsed once)
            if len(self._keys) >= 4096:
                self._keys.clear()
            key = self._keys[peer] = (address_of(peer), peer_connection(peer))
        address, conn = key
        held = self._by_address.get(address, 0)
        if held >= self.per_address:
            self.refused += 1
            raise RateLimited(
                f"this address has {held} calls open on the gRPC port, its limit",
                reason="TOO_MANY_CALLS",
                retry_after=1.0,
                details={"limit": self.per_address},
            )
        self._by_address[address] = held + 1
        self._open[conn] = self._open.get(conn, 0) + 1
        used = self._used
        if len(used) >= 65536 and conn not in used:  # (no sweep to forget them: Linux's)
            self._used = used = {c: t for c, t in used.items() if c in self._open}
        used[conn] = time.monotonic() if now is None else now
        return key

    def leave(self, key: tuple[str, str], now: float | None = None) -> None:
        address, conn = key
        _decrement(self._by_address, address)
        _decrement(self._open, conn)
        self._used[conn] = time.monotonic() if now is None else now

    def held(self, peer: str) -> int:
        """Calls ``peer``'s address has open."""
        return self._by_address.get(address_of(peer), 0)

    def snapshot(self) -> tuple[dict[str, int], frozenset[str]]:
        """(calls open per connection, the connections that ever carried a call)."""
        return dict(self._open), frozenset(self._used)

    def forget(self, live: set[str], before: float) -> None:
        """Drop what is known of connections not in ``live`` (those the reaper found)
        that carry no call and did nothing since ``before`` (when it began looking):
        bounded by the connections open."""
        gone = [
            conn
            for conn, when in self._used.items()
            if conn not in live and conn not in self._open and when < before
        ]
        for conn in gone:
            del self._used[conn]


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class ReceiveBudget:
    """At most ``slots`` calls receiving their request message at once, and
    ``per_address`` of them from one client address (module docstring).

    ``acquire`` waits for a turn, ``release`` gives it back (on the event loop). A
    freed turn goes to the waiting address holding the fewest (the one waiting
    longest among those); within an address, first come first served."""

    __slots__ = ("_free", "_held", "_order", "_waiting", "per_address", "slots")

    def __init__(self, slots: int, per_address: int) -> None:
        self.slots, self.per_address = slots, min(per_address, slots)
        self._free = slots
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._order = itertools.count()

    @property
    def receiving(self) -> int:
        """Turns taken."""
        return self.slots - self._free

    def held(self, address: str) -> int:
        return self._held.get(address, 0)

    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    async def acquire(self, address: str) -> None:
        held = self._held.get(address, 0)
        if self._free and held < self.per_address and address not in self._waiting:
            self._take(address)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._order), waiter)
        self._waiting.setdefault(address, deque()).append(entry)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # given a turn, then cancelled
                self.release(address)
            else:
                self._unqueue(address, entry)
            raise

    def release(self, address: str) -> None:
        _decrement(self._held, address)
        self._free += 1
        self._hand_over()

    def _take(self, address: str) -> None:
        self._held[address] = self._held.get(address, 0) + 1
        self._free -= 1

    def _unqueue(self, address: str, entry: tuple[int, asyncio.Future[None]]) -> None:
        queue = self._waiting.get(address)
        if queue is not None:
            with contextlib.suppress(ValueError):  # handed over (cancelled) already
                queue.remove(entry)
            if not queue:
                del self._waiting[address]

    def _hand_over(self) -> None:
        """Give free turns to waiters: the address holding the fewest first."""
        while self._free and self._waiting:
            eligible = [
                (self._held.get(address, 0), queue[0][0], address)
                for address, queue in self._waiting.items()
                if self._held.get(address, 0) < self.per_address
            ]
            if not eligible:
                return
            _, _, address = min(eligible)
            queue = self._waiting[address]
            _, waiter = queue.popleft()
            if not queue:
                del self._waiting[address]
            if not waiter.done():  # (a cancelled one is gone already)
                self._take(address)
                waiter.set_result(None)


__all__ = ["CallTable", "ReceiveBudget", "connection_key", "peer_connection"]
