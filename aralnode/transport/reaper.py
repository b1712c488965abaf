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
- has sent nothing: a live transport sends a keepalive ping every ``keepalive_ms``
  and a WINDOW_UPDATE for data it receives.

It calls ``shutdown`` on a duplicate of the descriptor: the transport sees its
socket end and closes it itself, so no descriptor is closed under grpc's feet. Each
one is counted (``grpc.connections_reaped``, in ``/metrics`` and GetStatus).
Elsewhere than Linux the reaper does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from aralnode._logs import get_logger

log = get_logger("aralnode.transport")

_FD_DIR = "/proc/self/fd"
_FIONREAD = 0x541B  # SIOCINQ: bytes received and not yet read
# struct tcp_info (linux/tcp.h): offsets of the fields read here.
_LAST_DATA_SENT = 44  # u32, ms since data was last sent
_BYTES_RECEIVED = 128  # u64 (Linux 4.1)
_DATA_SEGS_OUT = 156  # u32 (Linux 4.6)
_TCP_INFO_LEN = 160


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
        sock = socket.socket(fileno=dup)
        try:
            # The number may have been closed and reused since it was read: the
            # duplicate's inode says which socket it is.
            inode = os.fstat(dup).st_ino
            if (
                str(inode) != link[8:-1]
                or sock.type != socket.SOCK_STREAM
                or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.getsockname()[1] != port
            ):
                sock.close()
                continue
            sock.getpeername()  # the listener has none
        except OSError:
            sock.close()
            continue
        yield inode, sock


def _stuck(sock: socket.socket, seen: _Seen | None, now: float, after: float) -> _Seen | None:
    """The socket's new record (None: nothing waits unread); raises ``_Reap``."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    if len(info) < _TCP_INFO_LEN:
        return None  # a kernel older than 4.6: nothing to judge by
    (sent_ms,) = struct.unpack_from("=I", info, _LAST_DATA_SENT)
    (received,) = struct.unpack_from("=Q", info, _BYTES_RECEIVED)
    (segments_out,) = struct.unpack_from("=I", info, _DATA_SEGS_OUT)
    if segments_out and sent_ms >= after * 1000:
        raise _Reap(f"nothing sent for {sent_ms / 1000:.1f} s")
    waiting = struct.unpack("=i", _ioctl(sock, _FIONREAD))[0]
    if not waiting:
        return None
    read = received - waiting
    if seen is None or seen.read != read:
        return _Seen(read, now)
    if now - seen.since >= after:
        raise _Reap(f"{waiting} bytes left unread for {now - seen.since:.1f} s")
    return seen


def _ioctl(sock: socket.socket, request: int) -> bytes:
    return fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0")


class _Reap(Exception):  # a verdict, not an error
    pass


class StuckConnectionReaper:
    """Every ``interval`` seconds, shuts down the server's connections on ``port``
    stuck for ``after`` seconds (module doc). ``start`` on the server's loop."""

    def __init__(
        self, port: int, *, interval: float, after: float, counters: Counter[str] | None = None
    ) -> None:
        self.port = port
        self.interval = interval
        self.after = after
        self.counters = counters if counters is not None else Counter()
        self._seen: dict[int, _Seen] = {}
        self._reaped: set[int] = set()  # shut down, not yet closed by the transport
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if supported() and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Exception:  # the reaper must not end: the next scan may work
                log.exception("scanning the gRPC port's connections failed")

    async def sweep(self) -> int:
        """``scan`` off the loop (a few system calls per connection), counted on it,
        where the node's other counters are written and read."""
        reaped = await asyncio.to_thread(self.scan)
        if reaped:
            self.counters["grpc.connections_reaped"] += reaped
        return reaped

    def scan(self, now: float | None = None) -> int:
        """One pass; the number of connections shut down."""
        now = time.monotonic() if now is None else now
        seen: dict[int, _Seen] = {}
        shut: set[int] = set()
        for inode, sock in _connections(self.port):
            with sock:
                if inode in self._reaped:  # its transport has yet to close it
                    shut.add(inode)
                    continue
                try:
                    record = _stuck(sock, self._seen.get(inode), now, self.after)
                except _Reap as verdict:
                    with contextlib.suppress(OSError):
                        peer = sock.getpeername()
                        sock.shutdown(socket.SHUT_RDWR)
                        shut.add(inode)
                        log.warning(
                            "gRPC connection from %s ended by its transport but left open "
                            "(%s): shut down",
                            peer[0],
                            verdict,
                        )
                    continue
                except OSError:
                    continue
            if record is not None:
                seen[inode] = record
        # Only the sockets still open are remembered: bounded by the connections.
        reaped = len(shut - self._reaped)
        self._seen, self._reaped = seen, shut
        return reaped


__all__ = ["StuckConnectionReaper", "supported"]
