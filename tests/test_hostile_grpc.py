"""Hostile clients of the gRPC port, against a node in its own process.

Each attack is bounded in count and time, then the node's RSS and fds are read from
outside and an ordinary client must still be served (``NodeProcess.probe``). The
attacks speak HTTP/2 themselves where a well-behaved client (grpcio) would not do
what an attacker does: open streams past the server's limit, ping without reading,
connect and say nothing. ``pytest -s`` prints what each test measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from tests.hostile import MIB, NodeProcess

pytestmark = pytest.mark.slow

WATCH = b"/grpc.health.v1.Health/Watch"

# -- a raw HTTP/2 client (no HTTP/2 library is installed; gRPC needs little of it) -------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
WINDOW_UPDATE = 0x8
INITIAL_WINDOW = 65_535  # a stream's, until the server grants more
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _hpack_int(value: int, prefix: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([value])
    out, value = [limit], value - limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes([*out, value])


def _literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def grpc_request_headers(path: bytes) -> bytes:
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path),
        (b":authority", b"127.0.0.1"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    return b"".join(_literal(n, v) for n, v in fields)


class RawConnection:
    """One HTTP/2 connection: the preface, our settings and an ack of the server's
    (sent blindly: an attacker need not read them), then whatever the test sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.next_stream = 1
        self.blind_acks = 0  # SETTINGS acked before they were read

    @classmethod
    async def open(
        cls, port: int, *, preface: bool = True, source: str | None = None
    ) -> RawConnection:
        """``source``: the client's own address (another host: 127.0.0.x)."""
        local = (source, 0) if source is not None else None
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        conn = cls(reader, writer)
        if preface:
            writer.write(PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0))
            conn.blind_acks = 1
        return conn

    def unary_request(self, path: bytes, body: bytes = b"") -> int:
        """A request and its only message, half-closing the stream; its id."""
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        message = b"\x00" + struct.pack(">I", len(body)) + body
        self.writer.write(
            frame(HEADERS, END_HEADERS, stream, grpc_request_headers(path))
            + frame(DATA, END_STREAM, stream, message)
        )
        return stream

    def ping(self, n: int) -> None:
        self.writer.write(frame(PING, 0, 0, n.to_bytes(8, "big")))

    async def drain(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.writer.drain(), timeout)

    async def frames(self) -> AsyncIterator[tuple[int, int, bytes]]:
        """(type, stream, payload) of each frame the server sends, until it closes."""
        async for kind, _, stream, payload in self.flagged_frames():
            yield kind, stream, payload

    async def flagged_frames(self) -> AsyncIterator[tuple[int, int, int, bytes]]:
        """(type, flags, stream, payload) of each frame the server sends, until it
        closes; the server's SETTINGS and PINGs are acknowledged as they come (a
        client that keeps its connection alive, as grpc's keepalive asks)."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await self.reader.readexactly(9)
                payload = await self.reader.readexactly(int.from_bytes(head[:3], "big"))
                kind, flags = head[3], head[4]
                if kind == SETTINGS and not flags & ACK:
                    if self.blind_acks:
                        self.blind_acks -= 1
                    else:
                        self.writer.write(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self.writer.write(frame(PING, ACK, 0, payload))
                yield kind, flags, int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload

    def request_part(self, path: bytes, announced: int, sent: int) -> int:
        """A stream whose one message announces ``announced`` bytes and carries the
        first ``sent`` of them (the rest never come, unless ``send_data``); its id."""
        stream, self.next_stream = self.next_stream, self.next_stream + 2
        prefix = b"\x00" + struct.pack(">I", announced)
        self.writer.write(
            frame(HEADERS, END_HEADERS, stream, grpc_request_headers(path))
            + frame(DATA, 0, stream, prefix + b"\x00" * sent)
        )
        return stream

    def send_data(self, stream: int, size: int, *, end: bool = False) -> None:
        """``size`` bytes more of ``stream``'s message (at most 16 KiB a frame)."""
        for start in range(0, size, 16384):
            last = start + 16384 >= size
            flags = END_STREAM if end and last else 0
            self.writer.write(frame(DATA, flags, stream, b"\x00" * min(16384, size - start)))

    async def closed_by_server(self) -> None:
        """Returns once the server has closed the connection (read to the end)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.transport.abort()


class Granted:
    """What the server says on a raw connection, read as it comes: the window it
    grants each stream, the streams it ended, its PING acks."""

    def __init__(self, conn: RawConnection) -> None:
        self.conn = conn
        self.window: Counter[int] = Counter()
        self.sent: Counter[int] = Counter()  # DATA bytes the test sent on each stream
        self.ended: set[int] = set()
        self.changed = asyncio.Condition()
        self.pongs = 0
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for kind, flags, stream, payload in self.conn.flagged_frames():
            if kind == WINDOW_UPDATE:  # (stream 0: the connection's)
                self.window[stream] += int.from_bytes(payload, "big") & 0x7FFFFFFF
            elif (kind == HEADERS and flags & END_STREAM) or kind == RST_STREAM:
                self.ended.add(stream)
            elif kind == PING and flags & ACK:
                self.pongs += 1
            async with self.changed:
                self.changed.notify_all()

    async def until(self, predicate: object, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)  # type: ignore[arg-type]

    async def flushed(self) -> None:
        """Returns once the server has acknowledged a PING sent now."""
        before = self.pongs
        self.conn.ping(before)
        await self.until(lambda: self.pongs > before)

    def close(self) -> None:
        self._task.cancel()
        self.conn.close()


@contextlib.asynccontextmanager
async def attacked(tmp_path: Path, **config: object) -> AsyncIterator[NodeProcess]:
    async with NodeProcess.running(tmp_path / "target", **config) as node:
        yield node


def report(what: str, node: NodeProcess, rss0: int, fds0: int) -> tuple[int, int]:
    grown, fds = node.rss() - rss0, node.fds() - fds0
    print(
        f"\n{what}: RSS {node.rss() / MIB:.0f} MiB (+{grown / MIB:.0f}), fds {node.fds()} (+{fds})"
    )
    return grown, fds


# -- streams ----------------------------------------------------------------------------


async def test_streams_past_the_limit_on_one_connection_are_refused(tmp_path: Path) -> None:
    """20,000 Health/Watch streams on one connection: the server answers the first
    ``grpc_max_streams_per_connection`` and refuses the rest (RST_STREAM
    REFUSED_STREAM) rather than keep a call for each (+100 MiB and more)."""
    streams = 20_000
    async with attacked(tmp_path) as node:
        rss0, fds0 = node.rss(), node.fds()
        conn = await RawConnection.open(node.info["grpc_port"])
        answered: Counter[int] = Counter()

        async def read_answers() -> None:
            async for kind, stream, _ in conn.frames():
                if kind in (HEADERS, RST_STREAM) and stream:
                    answered[kind] += 1
                    if sum(answered.values()) == streams:
                        return

        reader = asyncio.ensure_future(read_answers())
        for i in range(streams):
            conn.unary_request(WATCH)
            if i % 500 == 0:
                await conn.drain()
        await conn.drain()
        await asyncio.wait_for(reader, 60)  # every stream answered: served or refused
        grown, _ = report("20,000 streams on one connection", node, rss0, fds0)
        assert answered[HEADERS] <= 100, answered
        assert grown < 40 * MIB
        await node.probe()
        conn.close()


@contextlib.asynccontextmanager
async def watches(address: str, channels: int, per_channel: int) -> AsyncIterator[Counter[str]]:
    """``channels`` connections with ``per_channel`` Watch calls each, held open
    while the body runs; how each call began (SERVING, or the status it got)."""
    # A connection each: grpc shares one subchannel (one connection) between
    # channels to the same target unless each keeps its own pool.
    own = [("grpc.use_local_subchannel_pool", 1)]
    opened = [grpc.aio.insecure_channel(address, options=own) for _ in range(channels)]
    calls = [ch.unary_stream(WATCH.decode())(b"") for ch in opened for _ in range(per_channel)]

    async def first(call: grpc.aio.UnaryStreamCall[bytes, bytes]) -> str:
        try:
            await call.read()
        except grpc.aio.AioRpcError as err:
            return err.code().name
        return "SERVING"

    try:
        yield Counter(await asyncio.wait_for(asyncio.gather(*map(first, calls)), 60))
    finally:
        for call in calls:
            call.cancel()
        for ch in opened:
            await ch.close()


async def test_rpcs_across_connections_are_bounded(tmp_path: Path) -> None:
    """Many connections, each within its stream limit: past ``grpc_max_concurrent_rpcs``
    the node refuses calls (RESOURCE_EXHAUSTED) instead of holding them all."""
    channels, per_channel, limit = 8, 100, 300
    config = {"grpc_max_concurrent_rpcs": limit, "grpc_max_streams_per_address": 10_000}
    async with attacked(tmp_path, **config) as node:
        rss0, fds0 = node.rss(), node.fds()
        async with watches(node.grpc_address, channels, per_channel) as outcomes:
            grown, _ = report(f"{channels * per_channel} Watch calls", node, rss0, fds0)
        assert outcomes["SERVING"] <= limit, outcomes
        assert outcomes["RESOURCE_EXHAUSTED"] >= channels * per_channel - limit, outcomes
        assert grown < 40 * MIB
        await node.probe()


async def test_one_address_cannot_hold_the_port_with_streams(tmp_path: Path) -> None:
    """Watch streams no pipeline stage shares out: one client address keeps to
    ``grpc_max_streams_per_address`` of them, so while it holds its share the port
    still serves everyone else (before: 300 held streams filled the port and the
    probe was refused RESOURCE_EXHAUSTED)."""
    channels, per_channel, share = 8, 50, 40
    config = {"grpc_max_concurrent_rpcs": 300, "grpc_max_streams_per_address": share}
    async with attacked(tmp_path, **config) as node:
        rss0, fds0 = node.rss(), node.fds()
        async with watches(node.grpc_address, channels, per_channel) as outcomes:
            report(f"{channels * per_channel} Watch calls from one address", node, rss0, fds0)
            assert outcomes == {"SERVING": share, "RESOURCE_EXHAUSTED": 400 - share}
            await node.probe()  # while the attacker still holds its share


# -- connections ------------------------------------------------------------------------


async def test_silent_and_idle_connections_are_bounded_and_reaped(tmp_path: Path) -> None:
    """Connections that never speak, and HTTP/2 connections that never call: at most
    ``grpc_max_connections`` at once (the rest are closed at once), and each is
    closed after ``grpc_handshake_timeout_ms`` / ``grpc_connection_idle_ms``."""
    cap = 32
    async with attacked(
        tmp_path, grpc_max_connections=cap, grpc_handshake_timeout_ms=1000,
        grpc_connection_idle_ms=1000,
    ) as node:  # fmt: skip
        rss0, fds0 = node.rss(), node.fds()
        port = node.info["grpc_port"]
        silent = [await RawConnection.open(port, preface=False) for _ in range(150)]
        idle = [await RawConnection.open(port) for _ in range(50)]
        _, fds = report("200 connections held", node, rss0, fds0)
        assert fds <= cap + 4
        # Every one of them ends, closed by the server (no sleep: read to the end).
        attackers = silent + idle
        await asyncio.wait_for(asyncio.gather(*(c.closed_by_server() for c in attackers)), 30)
        for conn in attackers:
            conn.close()
        await node.probe()
        report("after they were closed", node, rss0, fds0)


# -- pings ------------------------------------------------------------------------------


async def test_pings_without_reading_end_the_connection(tmp_path: Path) -> None:
    """A client that pings and never reads the acks: the ping policy (at most one
    ping a second without data, two strikes) ends the connection rather than queue
    acks for it. grpc core then sometimes leaves the socket open, neither reading
    nor writing it (GOAWAY too_many_pings sent, then nothing, about one time in
    two on grpcio 1.85); the node's reaper (transport/reaper.py) shuts it down after
    three keepalive periods and the keepalive timeout, or if it is silent both ways,
    the handshake timeout if longer: here 1.6 s either way."""
    async with attacked(tmp_path, keepalive_ms=200, grpc_handshake_timeout_ms=500) as node:
        rss0, fds0 = node.rss(), node.fds()
        conn = await RawConnection.open(node.info["grpc_port"])
        try:
            conn.unary_request(WATCH)
            sent = 0
            with contextlib.suppress(ConnectionError, TimeoutError):
                for sent in range(200_000):
                    conn.ping(sent)
                    if sent % 1000 == 0:
                        await conn.drain(5)
            await asyncio.wait_for(conn.closed_by_server(), 30)
        finally:
            conn.close()  # a failure here must not leave its socket to the next test
        grown, _ = report(f"{sent} pings, none read", node, rss0, fds0)
        assert grown < 16 * MIB
        await node.probe()


# -- one address's share of the connections (report atk7 #1) ----------------------------


class Holders:
    """Idle HTTP/2 connections that answer the server's SETTINGS and PINGs (so its
    keepalive keeps them) and never open a stream: ``count`` from each of
    ``sources``, opened again as soon as the server ends one with ``churn``.
    Counted as they open and end (``changed`` is notified)."""

    def __init__(self, port: int, sources: list[str], count: int, *, churn: bool = False) -> None:
        self.port, self.churn = port, churn
        self.open = self.ended = 0
        self.changed = asyncio.Condition()
        self.tasks = [
            asyncio.ensure_future(self._hold(source)) for source in sources for _ in range(count)
        ]

    async def _hold(self, source: str) -> None:
        while True:
            try:
                conn = await RawConnection.open(self.port, source=source)
            except OSError:
                conn = None
            else:
                await self._count(opened=1)
                try:
                    async for _ in conn.flagged_frames():
                        pass
                finally:
                    conn.close()
                await self._count(opened=-1)
            if not self.churn:
                return

    async def _count(self, *, opened: int) -> None:
        self.open += opened
        self.ended += opened < 0
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_one_address_cannot_hold_every_connection(tmp_path: Path) -> None:
    """520 idle connections from one address (127.0.0.2) that answer pings and never
    call. Before, they held all 512 places for ``grpc_connection_idle_ms`` (300 s)
    and every other client got UNAVAILABLE; now the sweep shuts down all but the
    address's share (``grpc_max_connections_per_address``, 128), its next ones wait
    at the kernel, and a client from elsewhere is served while it holds them."""
    async with attacked(tmp_path) as node:
        holders = Holders(node.info["grpc_port"], ["127.0.0.2"], 520)
        try:
            # One ends (grpc closes those past 512 at once), and then the address
            # holds its share at most (no sleep: each open and end is announced).
            await holders.until(lambda: holders.ended > 0 and holders.open <= 128)
            rss0, fds0 = node.rss(), node.fds()
            await node.probe()
            report(f"{holders.open} held, {holders.ended} shut", node, rss0, fds0)
            assert holders.open <= 128
        finally:
            await holders.close()


async def test_addresses_that_reconnect_at_once_cannot_keep_the_port_full(
    tmp_path: Path,
) -> None:
    """Four addresses, each under its share, keep 17 connections each open to a port
    of 64 and reopen each one the server ends at once. Before, they kept it full
    (grpc closes only the newcomers past 64): every other client was refused. Now
    the sweep keeps four places free (closing the oldest idle connections of the
    address holding most), and while the port is that full the addresses holding
    many wait at the kernel for new ones: a client from elsewhere gets a place."""
    sources = [f"127.0.0.{i}" for i in range(2, 6)]
    async with attacked(tmp_path, grpc_max_connections=64) as node:
        holders = Holders(node.info["grpc_port"], sources, 17, churn=True)
        try:
            await holders.until(lambda: holders.ended > 0 and holders.open <= 60)
            await node.probe()
            print(f"\nheld {holders.open}, {holders.ended} ended by the server")
            # Without the wait at the kernel, the places made are taken back within
            # a millisecond, and a client from elsewhere gets one now and then only.
            assert holders.open <= 60
        finally:
            await holders.close()


# -- request messages that never end (report atk7 #2) ----------------------------------

REFLECTION = b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


async def test_messages_that_never_end_hold_the_budget_at_most(tmp_path: Path) -> None:
    """100 streams on two connections from one address, each announcing a message of
    4 MiB and sending all of it the server lets it but the last byte. Before, grpc
    opened every call's window to its whole message and kept what came (400 MiB
    here; 2 GB with five connections of Invoke calls). Now a stream's message is
    given its window only with a turn of the request budget, 7 at once for one
    address at the defaults (64 MiB / the 8 MiB transport limit): the others wait at
    their initial 64 KiB. (A unary method's message grpc reads before any code of
    ours: docs/limits.md.)"""
    announced = 4 * MIB - 64
    async with attacked(tmp_path) as node:
        port = node.info["grpc_port"]
        rss0, fds0 = node.rss(), node.fds()
        conns = [await RawConnection.open(port, source="127.0.0.30") for _ in range(2)]
        granted = [Granted(conn) for conn in conns]
        try:
            streams = [
                [c.request_part(REFLECTION, announced, 1000) for _ in range(50)] for c in conns
            ]
            for got, ids in zip(granted, streams, strict=True):
                got.sent.update(dict.fromkeys(ids, 5 + 1000))
            await node.probe()  # from 127.0.0.1: served, and the calls above have begun
            # Send what the windows allow, until they allow no more. A connection that
            # sent nothing is not pinged again: grpc ends one pinged thrice while no
            # data flows (too_many_pings).
            active = list(range(len(conns)))
            for _ in range(50):
                for i in active:
                    await granted[i].flushed()
                active = [i for i in active if feed(conns[i], granted[i], streams[i], announced)]
                for conn in conns:
                    await conn.drain(60)
                if not active:
                    break
            opened = sum(
                got.window[s] > 0 for got, ids in zip(granted, streams, strict=True) for s in ids
            )
            grown, _ = report(f"{opened} of 100 calls given their window", node, rss0, fds0)
            assert opened <= 7
            assert grown < 96 * MIB
            await node.probe()
        finally:
            for got in granted:
                got.close()


def feed(conn: RawConnection, got: Granted, streams: list[int], announced: int) -> int:
    """Send each stream what its window and the connection's allow, never its
    message's last byte; how much."""
    sent = 0
    room = INITIAL_WINDOW + got.window[0] - got.sent.total()
    for stream in streams:
        allowed = min(INITIAL_WINDOW + got.window[stream], announced + 5 - 1)
        more = min(allowed - got.sent[stream], room)
        if more > 0:
            conn.send_data(stream, more)
            got.sent[stream] += more
            sent += more
            room -= more
    return sent
