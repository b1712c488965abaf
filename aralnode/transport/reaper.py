"""Closing the connections grpc core has ended but left open (``StuckConnectionReaper``).

grpc core (seen on grpcio 1.85.x) sometimes leaves a connection open after it has
ended it. A client that floods PINGs without reading gets GOAWAY ENHANCE_YOUR_CALM
``too_many_pings``, and the transport then stops reading its socket, or stops
sending on it (its keepalive pings too), without ever closing it. Neither the idle
nor the age limit closes it afterwards, and it still counts against
``grpc.max_allowed_incoming_connections``: whoever keeps ``grpc_max_connections``
such sockets open shuts the gRPC door to everyone else (a bare ``grpc.aio`` server
shows it too: tests/test_hostile_grpc.py).

The reaper looks at the server's own connected sockets on its port every
``interval`` seconds (Linux: ``/proc/self/fd``, ``TCP_INFO``, ``SIOCINQ``) and
shuts down one that, for ``after`` seconds,

- has had bytes waiting that the process has not read: a live transport reads as
  data arrives (HTTP/2's flow control bounds what the peer sends, not what grpc
  reads), or
- has neither sent nor received anything (for ``silent_after`` seconds, which the
  server sets no shorter than its handshake timeout: a client in its TLS handshake
  is silent both ways too): a live transport that reads nothing sends a keepalive
  ping every ``keepalive_ms``. (Silence one way proves nothing:
  grpc core resets its keepalive timer on every read, and owes no WINDOW_UPDATE
  for small messages, so a server that only receives can stay quiet for seconds.)

It calls ``shutdown`` on a duplicate of the descriptor: the transport sees its
socket end and closes it itself, so no descriptor is closed under grpc's feet. Each
one is counted (``grpc.connections_reaped``, in ``/metrics`` and GetStatus).
Elsewhere than Linux the reaper does nothing.

Given ``limits`` (``connections.ConnectionLimits``), the same sweep also keeps each
client address to its share of the port's connections (``connections.shed``: the
rules, and why), reading which connections carry calls from the server's
``CallTable``; each one shut down is counted by rule (``grpc.connections_unused``,
``grpc.connections_over_address_limit``, ``grpc.connections_evicted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import stat
import struct
import termios
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aralnode._logs import get_logger
from aralnode.service.stages import address_of
from aralnode.transport.calls import CallTable, connection_key
from aralnode.transport.connections import Conn, ConnectionLimits, Shed, blocked, shed
from aralnode.transport.synfilter import SynFilter

log = get_logger("aralnode.transport")

_FD_DIR = "/proc/self/fd"
# struct tcp_info (linux/tcp.h): offsets of the fields read here.
_LAST_DATA_SENT = 44  # u32, ms since data was last sent
_LAST_DATA_RECV = 52  # u32, ms since data was last received
_BYTES_RECEIVED = 128  # u64 (Linux 4.1)
_DATA_SEGS_OUT = 156  # u32 (Linux 4.6)
_TCP_INFO_LEN = 160
_COUNTER_OF_RULE = {
    "unused": "grpc.connections_unused",
    "address": "grpc.connections_over_address_limit",
    "room": "grpc.connections_evicted",
}
Calls = tuple[dict[str, int], frozenset[str]]  # ``CallTable.snapshot()``


@dataclass(frozen=True, slots=True)
class _Seen:
    read: int  # bytes the process had read from the socket
    since: float  # since when it had read no more, with bytes waiting


def supported() -> bool:
    return os.path.isdir(_FD_DIR) and hasattr(socket, "TCP_INFO")


def _connections(port: int) -> Iterator[tuple[int, socket.socket]]:
    """(inode, a duplicate) of each connected TCP socket of this process whose local
    port is ``port`` (the server's side of its connections). Close the duplicates."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return
    for name in names:
        try:
            link = os.readlink(f"{_FD_DIR}/{name}")
        except OSError:
            continue
        if not link.startswith("socket:["):
            continue
        try:
            dup = os.dup(int(name))
        except OSError:
            continue
        try:
            # The number may have been closed and reused since it was read: the
            # duplicate's inode says which socket (if any) it is.
            st = os.fstat(dup)
            if not stat.S_ISSOCK(st.st_mode) or str(st.st_ino) != link[8:-1]:
                os.close(dup)
                continue
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        try:
            if (
                sock.type != socket.SOCK_STREAM
                or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.getsockname()[1] != port
            ):
                sock.close()
                continue
            sock.getpeername()  # the listener has none
        except OSError:
            sock.close()
            continue
        yield st.st_ino, sock


@dataclass(frozen=True, slots=True)
class _State:
    """What the kernel says of one socket, now."""

    sent_ms: int  # since data was last sent
    received_ms: int  # since data was last received
    segments_out: int  # data segments ever sent
    read: int  # bytes the process has read
    waiting: int  # bytes received and not yet read


def _state(sock: socket.socket) -> _State | None:
    """None: a kernel older than 4.6, whose ``tcp_info`` lacks a field read here."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < _TCP_INFO_LEN:
        return None
    (sent_ms,) = struct.unpack_from("=I", info, _LAST_DATA_SENT)
    (received_ms,) = struct.unpack_from("=I", info, _LAST_DATA_RECV)
    (received,) = struct.unpack_from("=Q", info, _BYTES_RECEIVED)
    (segments_out,) = struct.unpack_from("=I", info, _DATA_SEGS_OUT)
    waiting = struct.unpack("=i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    return _State(sent_ms, received_ms, segments_out, received - waiting, waiting)


def _judge(
    state: _State, seen: _Seen | None, now: float, after: float, silent_after: float
) -> _Seen | None:
    """The socket's new record (None: nothing waits unread); raises ``_Reap``.
    ``after``: the span for bytes left unread; ``silent_after``, for silence both ways."""
    silence_ms = min(state.sent_ms, state.received_ms)
    if state.segments_out and silence_ms >= silent_after * 1000:
        raise _Reap(f"nothing sent or received for {silence_ms / 1000:.1f} s")
    if not state.waiting:
        return None
    if seen is None or seen.read != state.read:
        return _Seen(state.read, now)
    if now - seen.since >= after:
        raise _Reap(f"{state.waiting} bytes left unread for {now - seen.since:.1f} s")
    return seen


class _Reap(Exception):  # a verdict, not an error
    pass


class StuckConnectionReaper:
    """Every ``interval`` seconds, shuts down the server's connections on ``port``
    stuck for ``after`` seconds (module doc); silent both ways, for ``silent_after``
    (default ``after``); and, given ``limits``, those past an address's share
    (``calls``: which connections carry calls). ``start`` on the server's loop."""

    def __init__(
        self,
        port: int,
        *,
        interval: float,
        after: float,
        silent_after: float | None = None,
        counters: Counter[str] | None = None,
        limits: ConnectionLimits | None = None,
        calls: CallTable | None = None,
    ) -> None:
        self.port = port
        self.interval = interval
        self.after = after
        self.silent_after = after if silent_after is None else silent_after
        self.counters = counters if counters is not None else Counter()
        self.limits, self.calls = limits, calls
        # New connections from an address past its share wait at the kernel.
        self._filter = SynFilter(port) if limits is not None and supported() else None
        self._seen: dict[int, _Seen] = {}
        self._since: dict[int, float] = {}  # when each connection was first seen
        self._reaped: set[int] = set()  # shut down, not yet closed by the transport
        self._live: set[str] = set()  # the connections the last scan found
        self._shed: Counter[str] = Counter()  # the last scan's, by counter
        self._calls: Calls | None = None  # the call table as ``sweep`` found it
        self._task: asyncio.Task[None] | None = None
        self._scanning: asyncio.Future[int] | None = None  # the last scan (its thread)

    def start(self) -> None:
        if supported() and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop sweeping; returns once no scan runs (a thread is not cancelled with
        its task: a scan under way ends first, so nothing is shut down after)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        scanning, self._scanning = self._scanning, None
        if scanning is not None:
            # (A scan that fails once its sweep was cancelled is not logged: the
            # server is stopping, and its connections with it.)
            with contextlib.suppress(Exception):
                await scanning
        if self._filter is not None:
            self._filter.clear()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception:  # the reaper must not end: the next scan may work
                log.exception("scanning the gRPC port's connections failed")

    async def sweep(self) -> int:
        """``scan`` off the loop (a few system calls per connection), counted on it,
        where the node's other counters (and the call table) are written and read."""
        began = time.monotonic()
        # The table is read here, on the loop that writes it; the thread reads the copy.
        self._calls = self.calls.snapshot() if self.calls is not None else None
        # The last scan is kept (``stop`` waits for its thread; a finished one at once).
        scanning = self._scanning = asyncio.get_running_loop().run_in_executor(None, self.scan)
        shut = await asyncio.shield(scanning)
        stuck = shut - sum(self._shed.values())
        if stuck:
            self.counters["grpc.connections_reaped"] += stuck
        self.counters.update(self._shed)
        if self.calls is not None:
            self.calls.forget(self._live, began)
        return shut

    def scan(self, now: float | None = None, calls: Calls | None = None) -> int:
        """One pass; the number of connections shut down. ``calls``: the call
        table's snapshot (``sweep``'s, else taken here)."""
        now = time.monotonic() if now is None else now
        if calls is None:
            calls, self._calls = self._calls, None
        if calls is None and self.calls is not None:
            calls = self.calls.snapshot()
        seen: dict[int, _Seen] = {}
        shut: set[int] = set()
        found: list[tuple[int, Any]] = []  # (inode, peer address) of the others
        for inode, sock in _connections(self.port):
            with sock:
                # One already shut down: its transport has yet to close it.
                if inode in self._reaped or self._reap(inode, sock, now, seen):
                    shut.add(inode)
                else:
                    with contextlib.suppress(OSError):
                        found.append((inode, sock.getpeername()))
        # Only the sockets still open are remembered: bounded by the connections.
        reaped = len(shut - self._reaped)
        self._since = {inode: self._since.get(inode, now) for inode, _ in found}
        shed_now = self._shed_connections(found, now, calls)
        self._seen, self._reaped = seen, shut | shed_now
        return reaped + len(shed_now)

    def _reap(self, inode: int, sock: socket.socket, now: float, seen: dict[int, _Seen]) -> bool:
        """Judge one connection as stuck or not (``seen``: its record, if any, goes
        there); whether it was shut down."""
        try:
            state = _state(sock)
            if state is None:
                return False
            record = _judge(state, self._seen.get(inode), now, self.after, self.silent_after)
        except _Reap as verdict:
            with contextlib.suppress(OSError):
                peer = sock.getpeername()
                sock.shutdown(socket.SHUT_RDWR)
                log.warning(
                    "gRPC connection from %s looks abandoned by its transport (%s): shut down",
                    peer[0],
                    verdict,
                )
                return True
            return False
        except OSError:
            return False
        if record is not None:
            seen[inode] = record
        return False

    def _shed_connections(
        self, found: list[tuple[int, Any]], now: float, calls: Calls | None
    ) -> set[int]:
        """Apply ``connections.shed`` to the connections ``found``, and keep the
        addresses ``connections.blocked`` names waiting; the connections shut down."""
        self._shed = Counter()
        live = self._conns(found, calls)
        if self.limits is None:
            return set()
        victims = {s.conn.inode: s for s in shed(live, self.limits, now)}
        if self._filter is not None:  # first: a place made is not taken back at once
            kept = (conn for conn in live if conn.inode not in victims)
            self._filter.apply(blocked(kept, self.limits))
        done = _shut_down(self.port, victims) if victims else []
        groups = Counter((s.rule, s.conn.address, s.why) for s in done)
        for (_, address, why), count in sorted(groups.items()):
            log.warning("gRPC: shut down %d connection(s) from %s (%s)", count, address, why)
        self._shed.update(_COUNTER_OF_RULE[s.rule] for s in done)
        return {s.conn.inode for s in done}

    def _conns(self, found: list[tuple[int, Any]], calls: Calls | None) -> list[Conn]:
        """What ``shed`` needs of each connection found (its client's connection key
        in ``_live``, for ``CallTable.forget``)."""
        open_calls, used = calls if calls is not None else ({}, None)
        conns: list[Conn] = []
        keys: set[str] = set()
        for inode, peer in found:
            key = connection_key(peer[0], peer[1])
            keys.add(key)
            # No call table: no connection counts as never used.
            ever = True if used is None else key in used
            conns.append(
                Conn(inode, address_of(key), self._since[inode], open_calls.get(key, 0), ever)
            )
        self._live = keys
        return conns


def _shut_down(port: int, victims: dict[int, Shed]) -> list[Shed]:
    """Shut down the connections of ``victims`` (by inode) still open; those it did."""
    done: list[Shed] = []
    for inode, sock in _connections(port):
        with sock:
            victim = victims.get(inode)
            if victim is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    done.append(victim)
    return done


__all__ = ["StuckConnectionReaper", "supported"]
