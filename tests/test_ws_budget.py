"""WebSocket messages being received count against the HTTP port's budget of body
bytes in flight (from review: 16 sockets from one address, each with a ~4 MiB
message that never ended, held +63 MB that no budget saw).

The bytes of a frame not all come, and the fragments of a message being put
together, are taken from the address's and the port's budgets as they arrive, and
given back when the message completes or the socket goes, however it goes. A
socket whose message does not fit is closed at once (1013, ``TOO_MANY_BODY_BYTES``)
while other clients' calls, and the address's own whole messages, go on.

The clients here speak the protocol by hand (raw sockets on loopback), to leave a
frame or a message unfinished; a whole call goes through the ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import pytest
from websockets.asyncio.client import connect

from aralnode import Node
from aralnode.bridge._ws_budget import FRAGMENT_COST
from tests.conftest import recorded
from tests.test_http_budgets import Changes as BodyChanges
from tests.test_http_budgets import table_of

KIB = 1024
TEXT, CONT, CLOSE = 0x1, 0x0, 0x8


class Changes(BodyChanges):
    """Wakes a waiter whenever the table's body budget changes (no polling)."""

    async def held(self, address: str, size: int) -> None:
        """Until ``address`` holds exactly ``size`` bytes."""
        await self.until(lambda: self.table.bodies.get(address, 0) == size)


def frame(opcode: int, length: int, *, fin: bool = True) -> bytes:
    """A client frame's head for ``length`` bytes of payload, masked with a zero key
    (so the payload goes as it is)."""
    first = bytes([(0x80 if fin else 0) | opcode])
    if length < 126:
        return first + bytes([0x80 | length]) + bytes(4)
    if length < 1 << 16:
        return first + bytes([0x80 | 126]) + struct.pack("!H", length) + bytes(4)
    return first + bytes([0x80 | 127]) + struct.pack("!Q", length) + bytes(4)


class RawSocket:
    """A WebSocket on a raw connection from ``source``: frames written by hand."""

    opened: ClassVar[list[RawSocket]] = []  # (each test closes those it opened)

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened.append(self)

    @classmethod
    async def open(cls, port: int, source: str) -> RawSocket:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_frame(self) -> tuple[int, bytes]:
        """The node's next frame (unmasked): its opcode and payload."""
        async with asyncio.timeout(10):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return first & 0x0F, await self.reader.readexactly(length)

    async def closed_with(self) -> tuple[int, str]:
        """The node's close frame (its code and reason), skipping other frames."""
        while True:
            opcode, payload = await self.next_frame()
            if opcode == CLOSE:
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def abort(self) -> None:
        self.writer.transport.abort()


@pytest.fixture(autouse=True)
async def _close_raw_sockets() -> AsyncIterator[None]:
    yield
    while RawSocket.opened:
        writer = RawSocket.opened.pop().writer
        writer.close()
        with contextlib.suppress(OSError):  # (cut off already)
            await writer.wait_closed()


async def echo_call(port: int, source: str) -> dict[str, Any]:
    """A whole WebSocket call from ``source``: its reply."""
    url = f"ws://127.0.0.1:{port}/ws"
    async with asyncio.timeout(10), connect(url, local_addr=(source, 0)) as ws:
        call = {"type": "invoke", "id": 1, "capability": "demo.echo", "parameters": {"text": "hi"}}
        await ws.send(json.dumps(call))
        reply: dict[str, Any] = json.loads(await ws.recv())
        return reply


@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_an_address_holds_its_share_of_unfinished_messages(
    make_node: Callable[..., Node], parser: str
) -> None:
    node = make_node("wsbudget", http_port=0, http_parser=parser)
    seen = recorded(node)
    async with node:
        port = node.http_port
        assert port is not None
        table = table_of(node)
        table.body_bytes, table.body_bytes_per_address = 96 * KIB, 64 * KIB
        changes = Changes(table)
        # A message in fragments: one whole (kept), the next one half come.
        a = await RawSocket.open(port, "127.0.0.1")
        a.send(frame(TEXT, 24 * KIB, fin=False) + b" " * 24 * KIB)
        a.send(frame(CONT, 32 * KIB) + b" " * 16 * KIB)
        await changes.held("127.0.0.1", 40 * KIB + FRAGMENT_COST)
        # A frame half come on a second socket: it fits, until it does not.
        b = await RawSocket.open(port, "127.0.0.1")
        b.send(frame(TEXT, 32 * KIB) + b" " * 16 * KIB)
        await changes.held("127.0.0.1", 56 * KIB + FRAGMENT_COST)
        b.send(b" " * 9 * KIB)  # 65 KiB from the address: past its 64
        assert await b.closed_with() == (1013, "TOO_MANY_BODY_BYTES")
        await changes.held("127.0.0.1", 40 * KIB + FRAGMENT_COST)  # b's given back
        # Whole messages hold nothing: the address's own calls still go, as do others'.
        assert (await echo_call(port, "127.0.0.1"))["type"] == "result"
        assert (await echo_call(port, "127.0.0.2"))["type"] == "result"
        # The port's budget, for any address.
        d = await RawSocket.open(port, "127.0.0.2")
        e = await RawSocket.open(port, "127.0.0.3")
        d.send(frame(TEXT, 48 * KIB) + b" " * 40 * KIB)
        await changes.held("127.0.0.2", 40 * KIB)
        e.send(frame(TEXT, 32 * KIB) + b" " * 8 * KIB)
        await changes.held("127.0.0.3", 8 * KIB)
        e.send(b" " * 9 * KIB)  # 97 KiB on the port: past its 96
        assert await e.closed_with() == (1013, "TOO_MANY_BODY_BYTES")
        await changes.until(lambda: "127.0.0.3" not in table.bodies)
        assert (await echo_call(port, "127.0.0.4"))["type"] == "result"
        for socket in RawSocket.opened:
            socket.abort()
        await changes.until(lambda: table.body_held == 0)
        assert table.bodies == {}
    # Each refusal is on record, as the port's.
    refusals = [
        (r.action, r.peer.rpartition(":")[0]) for r in seen if r.reason == "TOO_MANY_BODY_BYTES"
    ]
    assert refusals == [
        ("aral.http/connection", "127.0.0.1"),
        ("aral.http/connection", "127.0.0.3"),
    ], refusals


@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_message_bytes_are_given_back_however_the_message_ends(
    make_node: Callable[..., Node], parser: str
) -> None:
    node = make_node("wsgiveback", http_port=0, http_parser=parser)
    async with node:
        port = node.http_port
        assert port is not None
        table = table_of(node)
        table.body_bytes, table.body_bytes_per_address = 96 * KIB, 64 * KIB
        changes = Changes(table)
        # Completed: given back as it completes (before its reply), the socket open.
        done = await RawSocket.open(port, "127.0.0.1")
        ping = b'{"type": "ping", "id": 5}'
        done.send(frame(TEXT, 40 * KIB + len(ping)) + b" " * 40 * KIB)
        await changes.held("127.0.0.1", 40 * KIB)
        done.send(ping)
        opcode, reply = await done.next_frame()
        assert (opcode, json.loads(reply)) == (TEXT, {"type": "pong", "id": 5})
        assert (table.body_held, table.bodies) == (0, {})
        # Closed by the node (a close frame in the middle of a message: 1002).
        broken = await RawSocket.open(port, "127.0.0.1")
        broken.send(frame(TEXT, 20 * KIB, fin=False) + b" " * 20 * KIB)
        await changes.held("127.0.0.1", 20 * KIB + FRAGMENT_COST)
        broken.send(frame(CLOSE, 2) + struct.pack("!H", 1000))
        assert (await broken.closed_with())[0] == 1002
        await changes.until(lambda: table.body_held == 0)
        # Cut off by the client.
        for _ in range(2):
            cut = await RawSocket.open(port, "127.0.0.1")
            cut.send(frame(TEXT, 32 * KIB) + b" " * 30 * KIB)
            await changes.until(lambda: table.body_held >= 30 * KIB)
            cut.abort()
            await changes.until(lambda: table.body_held == 0)
        # Nothing leaked: a later client has the whole of its address's budget.
        late = [await RawSocket.open(port, "127.0.0.1") for _ in range(2)]
        late[0].send(frame(TEXT, 48 * KIB) + b" " * 40 * KIB)
        await changes.held("127.0.0.1", 40 * KIB)
        late[1].send(frame(TEXT, 32 * KIB) + b" " * 23 * KIB)
        await changes.held("127.0.0.1", 63 * KIB)  # (a refused one would give back)
        assert table.body_held == 63 * KIB
    # The node stopping with messages unfinished gives their bytes back too.
    await changes.until(lambda: table.body_held == 0)
    assert table.bodies == {}


async def test_invokes_waiting_on_a_socket_count_against_its_address(
    make_node: Callable[..., Node],
) -> None:
    """From review: whole messages a socket keeps waiting (invokes queued behind one
    that waits, for an approval say) were bounded by the queue's length alone, 17
    messages a socket. They count against the address's budget until their replies
    are sent; past it an invoke is refused (the socket stays open)."""
    node = make_node("wswaiting", http_port=0)
    release = asyncio.Event()

    @node.capability(id="test.hold")
    async def hold(text: str) -> int:
        await release.wait()
        return len(text)

    async with node:
        port = node.http_port
        table = table_of(node)
        table.body_bytes, table.body_bytes_per_address = 96 * KIB, 64 * KIB
        changes = Changes(table)
        url = f"ws://127.0.0.1:{port}/ws"
        async with asyncio.timeout(20), connect(url, max_size=None) as ws:
            sent = []
            for i in range(1, 5):  # 20 KiB each: the fourth is past the 64 KiB
                # (10 Ki characters of 2 bytes: the budget counts bytes, not characters)
                call = {"type": "invoke", "id": i, "capability": "test.hold",
                        "parameters": {"text": "\u00e9" * 10 * KIB}}  # fmt: skip
                text = json.dumps(call, ensure_ascii=False)
                sent.append(len(text.encode()))
                await ws.send(text)
            refusal = json.loads(await ws.recv())
            assert (refusal["id"], refusal["error"]["reason"]) == (4, "TOO_MANY_BODY_BYTES")
            await changes.held("127.0.0.1", sum(sent[:3]))
            release.set()
            replies = [json.loads(await ws.recv()) for _ in range(3)]
            assert [(r["id"], r["result"]) for r in replies] == [(i, 10 * KIB) for i in (1, 2, 3)]
            await changes.until(lambda: table.body_held == 0)
    assert table.bodies == {}
