"""What a client can make the HTTP port hold past a request head: connections (in
all and from one address) and a body that stops half-way (from review: 3,000
stalled uploads were held, each with its task and the body read so far)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.client import connect

from aralnode import Node
from tests.conftest import recorded

HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
WHOLE = HEAD + b"Connection: close\r\n\r\n"


class Conn:
    """A raw connection to the HTTP port from ``source``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def interim(self) -> bytes:
        """An interim response's status line (``100 Continue``)."""
        async with asyncio.timeout(20):
            line = await self.reader.readuntil(b"\r\n\r\n")
        return line.split(b"\r\n", 1)[0]

    async def response(self) -> int:
        """The status of a whole response with a ``Content-Length`` (the connection
        stays open)."""
        async with asyncio.timeout(20):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = next(
                int(line.partition(":")[2])
                for line in head.split("\r\n")
                if line.lower().startswith("content-length:")
            )
            await self.reader.readexactly(length)
        return int(head.split(" ", 2)[1])

    async def refusal(self) -> tuple[int, str, dict[str, str]]:
        """The status, reason and headers of what the node sends before it closes."""
        async with asyncio.timeout(20):
            raw = await self.reader.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        return int(lines[0].split(" ", 2)[1]), json.loads(body)["error"]["reason"], headers

    async def answer(self) -> tuple[int, dict[str, object]]:
        """The status and JSON body of what the node sends before it closes."""
        async with asyncio.timeout(20):
            raw = await self.reader.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(body) if body.startswith(b"{") else {}

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def held(port: int, count: int, source: str) -> AsyncIterator[list[Conn]]:
    """``count`` connections each halfway through a head (none answered yet)."""
    conns = [await Conn.open(port, source) for _ in range(count)]
    for conn in conns:
        conn.writer.write(HEAD)
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


async def refused(port: int, source: str) -> tuple[int, object]:
    """What a connection that sends nothing is answered (the status, the reason)."""
    conn = await Conn.open(port, source)
    try:
        status, body = await conn.answer()
    finally:
        conn.close()
    return status, body["error"]["reason"]  # type: ignore[index]


async def served(port: int, source: str) -> int:
    conn = await Conn.open(port, source)
    conn.writer.write(WHOLE)
    try:
        return (await conn.answer())[0]
    finally:
        conn.close()


async def test_connections_are_bounded_per_address_and_in_all(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(
        "conns",
        http_port=0,
        http_max_connections=4,
        http_max_connections_per_address=3,
        http_header_timeout_seconds=60,
    )
    seen = recorded(node)
    async with node:
        port = node.http_port
        assert port is not None
        async with held(port, 3, "127.0.0.1") as mine:
            # The address's fourth is answered at once, before it sends a byte.
            assert await refused(port, "127.0.0.1") == (429, "TOO_MANY_CONNECTIONS")
            async with held(port, 1, "127.0.0.2") as theirs:
                # The port is full. A newcomer from a lighter address gets in: the
                # connection idle longest at the heaviest address makes room for it.
                async with held(port, 1, "127.0.0.2") as more:
                    status, reason, headers = await mine[0].refusal()
                    assert (status, reason) == (503, "TOO_MANY_CONNECTIONS")
                    assert headers.get("retry-after") == "1", headers
                    # Two each now: another from 127.0.0.2 would make it the heaviest.
                    assert await refused(port, "127.0.0.2") == (503, "TOO_MANY_CONNECTIONS")
                    # The others were admitted: each answers once its head ends.
                    for conn in (mine[1], mine[2], theirs[0], more[0]):
                        conn.writer.write(b"Connection: close\r\n\r\n")
                        assert (await conn.answer())[0] == 200
                # Their places are given back when they close.
                await until_served(port, "127.0.0.2")
        # An upgraded connection is a WebSocket's, counted by the WebSocket quota.
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url), connect(url), connect(url):
            assert await served(port, "127.0.0.1") == 200
    # Each refusal is on record, with the address it came from (the one closed to
    # make room: its own).
    wire = [(r.action, r.reason, r.peer.rpartition(":")[0]) for r in seen if r.reason]
    assert wire == [
        ("aral.http/connection", "TOO_MANY_CONNECTIONS", "127.0.0.1"),
        ("aral.http/connection", "TOO_MANY_CONNECTIONS", "127.0.0.1"),
        ("aral.http/connection", "TOO_MANY_CONNECTIONS", "127.0.0.2"),
    ], wire


def invoke(length: int = 0) -> tuple[bytes, bytes]:
    """A ``/v1/invoke`` head that waits for ``100 Continue`` (so that its client knows
    the node is reading its body), and a whole body for it."""
    call = b'{"call": {"capability": "demo.echo", "parameters": {"text": "hi"}}}'
    body = call.ljust(length or len(call))
    head = (
        b"POST /v1/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    return head, body


@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_only_idle_connections_make_room(make_node: Callable[..., Node], parser: str) -> None:
    """A connection with a request in flight is never closed to make room; one kept
    alive between requests is. With none idle, the newcomer is refused."""
    node = make_node(
        "busy",
        http_port=0,
        http_parser=parser,
        http_max_connections=3,
        http_max_connections_per_address=3,
        http_header_timeout_seconds=60,
    )
    async with node:
        port = node.http_port
        assert port is not None
        head, body = invoke(100)
        conns = [await Conn.open(port) for _ in range(3)]
        for conn in conns:  # three requests, each in the middle of its body
            conn.writer.write(head + body[:10])
            assert await conn.interim() == b"HTTP/1.1 100 Continue"
        assert await refused(port, "127.0.0.2") == (503, "TOO_MANY_CONNECTIONS")
        # One request ends; its connection, kept alive, is idle until its next.
        conns[0].writer.write(body[10:])
        assert await conns[0].response() == 200
        assert await refused(port, "127.0.0.1") == (429, "TOO_MANY_CONNECTIONS")
        async with held(port, 1, "127.0.0.2"):
            status, reason, _ = await conns[0].refusal()  # it made room
            assert (status, reason) == (503, "TOO_MANY_CONNECTIONS")
            for conn in conns[1:]:  # the requests in flight were left alone
                conn.writer.write(body[10:])
                assert await conn.response() == 200
        for conn in conns:
            conn.close()


async def until_served(port: int, source: str) -> None:
    """Ask until the node serves ``source``: a closed connection's place comes
    back when the node sees it go, a moment after the client closed it."""
    async with asyncio.timeout(20):
        while True:
            if await served(port, source) == 200:
                return
            await asyncio.sleep(0.05)  # a poll interval of a bounded wait (noqa: sleep-ok)


@pytest.mark.parametrize("parser", ["auto", "h11"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_that_stops_half_way_is_answered_and_closed(
    make_node: Callable[..., Node], parser: str, framing: str
) -> None:
    node = make_node("bodies", http_port=0, http_parser=parser, http_body_timeout_seconds=1.0)
    async with node:
        port = node.http_port
        assert port is not None
        conn = await Conn.open(port)
        head = b"POST /v1/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        if framing == "length":
            conn.writer.write(head + b"Content-Length: 100\r\n\r\n" + b'{"call": ')
        else:
            conn.writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n9\r\n" + b'{"call": \r\n')
        status, body = await conn.answer()  # 408, then the node hangs up
        conn.close()
        assert (status, body["error"]["reason"]) == (408, "BODY_TIMEOUT")  # type: ignore[index]
        # A body that does arrive is served as before.
        async with asyncio.timeout(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            call = b'{"call": {"capability": "demo.echo", "parameters": {"text": "hi"}}}'
            writer.write(
                head + f"Content-Length: {len(call)}\r\nConnection: close\r\n\r\n".encode() + call
            )
            answer = await reader.read()
            writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_pipelined_requests_wait_in_a_bounded_queue(make_node: Callable[..., Node]) -> None:
    """From review: httptools parses every request one read holds and uvicorn queued
    them all, reading on after each answer: 100,000 pipelined GETs never read held
    245 MB. The queue is bounded: what waits is answered in turn, then 429
    TOO_MANY_PIPELINED, and the connection closes."""
    from aralnode.bridge._server import MAX_PIPELINED

    node = make_node("pipelined", http_port=0)
    async with node:
        port = node.http_port
        assert port is not None
        conn = await Conn.open(port)
        conn.writer.write((HEAD + b"\r\n") * 2000)
        async with asyncio.timeout(20):
            raw = await conn.reader.read()  # until the node hangs up
        conn.close()
        answers = raw.count(b"HTTP/1.1 ")
        assert MAX_PIPELINED < answers <= MAX_PIPELINED + 2
        assert raw.count(b"HTTP/1.1 200") == answers - 1
        assert b"TOO_MANY_PIPELINED" in raw.rpartition(b"HTTP/1.1 ")[2]
        assert await served(port, "127.0.0.1") == 200
