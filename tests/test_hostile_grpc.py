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
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.hostile import MIB, NodeProcess

pytestmark = pytest.mark.slow

WATCH = b"/grpc.health.v1.Health/Watch"

# -- a raw HTTP/2 client (no HTTP/2 library is installed; gRPC needs little of it) -------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
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

    @classmethod
    async def open(cls, port: int, *, preface: bool = True) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if preface:
            writer.write(PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0))
        return cls(reader, writer)

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
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await self.reader.readexactly(9)
                payload = await self.reader.readexactly(int.from_bytes(head[:3], "big"))
                yield head[3], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload

    async def closed_by_server(self) -> None:
        """Returns once the server has closed the connection (read to the end)."""
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass

    def close(self) -> None:
        self.writer.transport.abort()


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
