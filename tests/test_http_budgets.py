"""What unfinished uploads and idle connections can make the HTTP port hold (from
review, atk7 #4 and #5): four addresses holding slowloris heads locked every other
client out, and one address's 256 unfinished 4 MiB bodies held a gigabyte.

``ConnectionTable`` makes room for a newcomer by closing the connection idle
longest at the address holding the most; request bodies in flight are held to a
budget in all and per address, taken as they arrive and given back however their
reading ends, on every door that reads a body (REST, ARAL, A2A, MCP)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode import Node
from aralnode.bridge._http import read_body
from aralnode.bridge._sockets import BODY_BYTES, BODY_BYTES_PER_ADDRESS, ConnectionTable
from aralnode.core.errors import (
    AralError,
    InvalidRequest,
    RateLimited,
    Unavailable,
)
from tests.conftest import recorded

KIB = 1024

# -- the table: room is made at the heaviest address, from its idle connections ----------

# An operation on the table: admit a new connection from an address (0-3), or turn the
# n-th connection held busy or idle, or let it go.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 3)),
        st.tuples(st.sampled_from(["busy", "idle", "release"]), st.integers(0, 40)),
    ),
    max_size=120,
)


class Model:
    """What the table must do, written the slow way."""

    def __init__(self) -> None:
        self.held: dict[int, str] = {}  # connection: its address
        self.idle: list[int] = []  # idle longest first
        self.made = 0

    def count(self, address: str) -> int:
        return sum(1 for a in self.held.values() if a == address)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_the_table_takes_room_only_from_the_heaviest_idle(ops: list[tuple[str, int]]) -> None:
    table: ConnectionTable[int] = ConnectionTable(6, 4)
    model = Model()
    for op, n in ops:
        if op == "admit":
            address, conn = f"10.0.0.{n}", model.made
            model.made += 1
            mine = model.count(address)
            idle_at = {model.held[c] for c in model.idle}
            top = max((model.count(a) for a in idle_at), default=-1)
            refusal, victim = table.admit(address, conn)
            if mine >= 4:
                assert isinstance(refusal, RateLimited)
                assert victim is None
                continue
            if len(model.held) >= 6 and top <= mine:
                assert isinstance(refusal, Unavailable)
                assert victim is None
                continue
            assert refusal is None
            if len(model.held) >= 6:
                assert victim is not None
                victims = model.held[victim]
                assert model.count(victims) == top  # from (one of) the heaviest
                assert victim == next(c for c in model.idle if model.held[c] == victims)
                model.idle.remove(victim)
                del model.held[victim]
            else:
                assert victim is None
            model.held[conn] = address
            model.idle.append(conn)
        elif model.held:
            conn = sorted(model.held)[n % len(model.held)]
            address = model.held[conn]
            if op == "busy":
                table.busy(address, conn)
                if conn in model.idle:
                    model.idle.remove(conn)
            elif op == "idle":
                if conn not in model.idle:
                    table.idle(address, conn)
                    model.idle.append(conn)
            else:
                table.release(address, conn)
                del model.held[conn]
                if conn in model.idle:
                    model.idle.remove(conn)
        assert table.count == len(model.held) <= 6
    for conn, address in list(model.held.items()):
        table.release(address, conn)
    # Nothing is kept for a connection, or an address, that is gone.
    assert (table.count, table.by_address, table._idle, table._levels) == (0, {}, {}, {})
    assert table._used == 0


def test_body_budgets_per_address_and_in_all() -> None:
    table: ConnectionTable[int] = ConnectionTable(8, 8, body_bytes=24, body_bytes_per_address=16)
    told: list[str] = []
    a1 = table.claim("10.0.0.1")
    assert a1.take(10)
    a2 = table.claim("10.0.0.1", lambda: told.append("a2"))
    assert a2.take(4)
    assert not a2.take(6)  # 20 > 16 from this address: refused, and what it had dropped
    refusal = a2.refusal
    assert isinstance(refusal, RateLimited)
    assert refusal.http_status == 429
    assert (refusal.reason, refusal.retry_after) == ("TOO_MANY_BODY_BYTES", 1.0)
    assert told == ["a2"]
    assert refusal.details == {"limit": 16}
    assert (a2.held, table.bodies) == (0, {"10.0.0.1": 10})
    assert not a2.take(1)  # nothing more of a refused body is taken
    assert told == ["a2"]
    a3 = table.claim("10.0.0.1")
    assert a3.check(6)  # 16: fits
    assert a3.take(6)
    b = table.claim("10.0.0.2")
    assert b.take(8)  # 24 in all
    c = table.claim("10.0.0.3")
    assert not c.check(1)
    assert isinstance(c.refusal, Unavailable)
    assert (c.refusal.http_status, c.refusal.reason) == (503, "TOO_MANY_BODY_BYTES")
    for claim in (a1, a2, a3, b, c):
        claim.close()
        claim.close()  # (once)
    assert (table.body_held, table.bodies) == (0, {})
    # A body alone is never refused for its size: max_message_bytes may be larger.
    alone = table.claim("10.0.0.4")
    assert alone.check(100)
    assert alone.take(60)
    assert alone.take(40)
    assert not table.claim("10.0.0.5").take(1)
    alone.close()
    assert alone.check(100)  # whole: nothing more to count
    assert (table.body_held, table.bodies) == (0, {})


def test_the_default_budgets() -> None:
    table: ConnectionTable[int] = ConnectionTable(1024, 256)
    assert (table.body_bytes, table.body_bytes_per_address) == (BODY_BYTES, BODY_BYTES_PER_ADDRESS)
    assert (BODY_BYTES, BODY_BYTES_PER_ADDRESS) == (64 * 1024 * KIB, 16 * 1024 * KIB)


# -- the connection takes a body's bytes as they come, and gives them back -------------


class Transport(asyncio.Transport):
    """A socket's end, in memory: what the protocol writes, whether it reads."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source, self.written, self.closed, self.paused = source, b"", False, False
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_protocol(self) -> Any:
        return self.protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": (self.source, 5000), "sockname": ("127.0.0.1", 80)}.get(name, default)


class Door:
    """An application that reads a body as the doors do (``read_body``): it answers
    200 with the body's size, or the refusal's status; or (``early``) 200 at once."""

    def __init__(self, early: bool = False) -> None:
        self.early = early
        self.reading = asyncio.Event()
        self.outcome: object = None
        self.done = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        status = 200
        try:
            if not self.early:
                self.reading.set()
                self.outcome = len(await read_body(scope, receive, 4096))
        except AralError as exc:
            self.outcome, status = exc, exc.http_status
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.done.set()  # answered


def connect(parser: str, table: ConnectionTable[Any], app: Any, source: str = "10.0.0.1") -> Any:
    import uvicorn
    from uvicorn.server import ServerState

    from aralnode.bridge._server import HeadLimits, protocol_class

    limits = HeadLimits(
        max_bytes=8192, max_count=100, timeout=60.0, now_ms=lambda: 0, connections=table
    )
    protocol = protocol_class(parser, limits)(  # type: ignore[call-arg]
        uvicorn.Config(app, lifespan="off", log_level="critical"), ServerState(), {}
    )
    transport = Transport(source)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return protocol, transport


def post(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST /x HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n".encode()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def turn(event: asyncio.Event) -> None:
    async with asyncio.timeout(10):
        await event.wait()


PARSERS = pytest.mark.parametrize("parser", ["httptools", "h11"])


@PARSERS
async def test_a_body_counts_while_it_arrives(parser: str) -> None:
    table: ConnectionTable[Any] = ConnectionTable(8, 8)
    door = Door()
    protocol, _ = connect(parser, table, door)
    protocol.data_received(post(300) + b"a" * 100)
    assert table.bodies == {"10.0.0.1": 100}
    await turn(door.reading)
    protocol.data_received(b"b" * 150)
    assert table.body_held == 250
    protocol.data_received(b"c" * 50)  # whole
    assert (table.body_held, table.bodies) == (0, {})
    await turn(door.done)
    assert door.outcome == 300
    protocol.connection_lost(None)
    assert (table.count, table.body_held) == (0, 0)


@PARSERS
async def test_a_body_cut_off_gives_back_its_bytes(parser: str) -> None:
    table: ConnectionTable[Any] = ConnectionTable(8, 8)
    door = Door()
    protocol, _ = connect(parser, table, door)
    protocol.data_received(post(300) + b"a" * 100)
    await turn(door.reading)
    assert table.body_held == 100
    protocol.connection_lost(None)  # the client goes
    assert (table.body_held, table.bodies) == (0, {})
    await turn(door.done)
    assert isinstance(door.outcome, InvalidRequest)


@PARSERS
async def test_a_body_answered_early_gives_back_its_bytes(parser: str) -> None:
    table: ConnectionTable[Any] = ConnectionTable(8, 8)
    door = Door(early=True)
    protocol, transport = connect(parser, table, door)
    protocol.data_received(post(300) + b"a" * 100)
    await turn(door.done)
    assert transport.written.startswith(b"HTTP/1.1 200")
    assert table.body_held == 0
    protocol.data_received(b"b" * 150)  # the rest is not kept, nor counted
    assert table.body_held == 0
    protocol.connection_lost(None)


@PARSERS
async def test_a_cancelled_call_gives_back_its_bytes(parser: str) -> None:
    table: ConnectionTable[Any] = ConnectionTable(8, 8)
    door = Door()
    protocol, transport = connect(parser, table, door)
    protocol.data_received(post(300) + b"a" * 100)
    await turn(door.reading)
    (task,) = protocol.tasks
    task.cancel()  # as a stopping server cancels what runs
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert transport.written.startswith(b"HTTP/1.1 500")
    assert (table.body_held, table.bodies) == (0, {})
    protocol.connection_lost(None)


@PARSERS
async def test_a_body_past_the_budget_is_dropped_and_refused(parser: str) -> None:
    table: ConnectionTable[Any] = ConnectionTable(8, 8, body_bytes_per_address=150)
    other = table.claim("10.0.0.1")
    assert other.take(100)  # another body of this address's, in flight
    door = Door()
    protocol, transport = connect(parser, table, door)
    protocol.data_received(post(None) + chunked(b"a" * 40))
    await turn(door.reading)
    assert table.body_held == 140
    protocol.data_received(chunked(b"b" * 40))  # 180 > 150: refused, not kept
    assert table.bodies == {"10.0.0.1": 100}
    assert transport.paused  # no more is read
    await turn(door.done)
    assert isinstance(door.outcome, RateLimited)
    assert door.outcome.reason == "TOO_MANY_BODY_BYTES"
    assert transport.written.startswith(b"HTTP/1.1 429")
    assert transport.closed  # once the refusal is answered
    protocol.data_received(chunked(b"c" * 40))
    assert table.bodies == {"10.0.0.1": 100}
    protocol.connection_lost(None)
    other.close()
    assert (table.body_held, table.bodies, table.count) == (0, {}, 0)


@PARSERS
async def test_a_content_length_past_the_budget_is_refused_before_it_is_read(
    parser: str,
) -> None:
    table: ConnectionTable[Any] = ConnectionTable(8, 8, body_bytes=1000, body_bytes_per_address=400)
    other = table.claim("10.0.0.1")
    assert other.take(300)
    door = Door()
    protocol, transport = connect(parser, table, door)
    protocol.data_received(post(200))
    await turn(door.done)
    assert isinstance(door.outcome, RateLimited)
    assert transport.closed
    protocol.connection_lost(None)
    # From elsewhere it fits its address's budget, not the port's.
    assert table.claim("10.0.0.2").take(400)
    door = Door()
    protocol, transport = connect(parser, table, door, "10.0.0.3")
    protocol.data_received(post(400) + b"x" * 10)
    await turn(door.done)
    assert isinstance(door.outcome, Unavailable)
    assert transport.written.startswith(b"HTTP/1.1 503")
    protocol.connection_lost(None)
    assert table.bodies == {"10.0.0.1": 300, "10.0.0.2": 400}


async def test_a_body_read_elsewhere_has_no_budget() -> None:
    """Outside the node's port (no claim in the scope), a body is read as before."""
    body = gzip.compress(b"x" * 100)
    queue = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    scope = {"type": "http", "headers": [(b"content-encoding", b"gzip")]}
    assert await read_body(scope, receive, 1024) == b"x" * 100


# -- on the port, on every door that reads a body -----------------------------------------


def table_of(node: Node) -> ConnectionTable[Any]:
    server = node._parts.http._server  # type: ignore[union-attr]
    table = server.config.http_protocol_class.limits.connections
    assert isinstance(table, ConnectionTable)
    return table


class Changes:
    """Wakes a waiter whenever the table's body budget changes (no polling)."""

    def __init__(self, table: ConnectionTable[Any]) -> None:
        self.table = table
        self.changed = asyncio.Event()
        take, give = table.take_body, table.give_body

        def taken(address: str, size: int) -> None:
            take(address, size)
            self.changed.set()

        def given(address: str, size: int) -> None:
            give(address, size)
            self.changed.set()

        table.take_body, table.give_body = taken, given  # type: ignore[method-assign]

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(20):
            while not done():
                self.changed.clear()
                await self.changed.wait()


def head(path: str, length: int | None, **extra: str) -> bytes:
    fields = {
        "Host": "127.0.0.1",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        **extra,
    }
    if length is None:
        fields["Transfer-Encoding"] = "chunked"
    else:
        fields["Content-Length"] = str(length)
    lines = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return f"POST {path} HTTP/1.1\r\n{lines}\r\n".encode()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A response the node sends, then hangs up: its status, headers and JSON body."""
    async with asyncio.timeout(20):
        raw = await reader.read()
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, json.loads(body)


@contextlib.asynccontextmanager
async def uploading(
    port: int, source: str, path: str, sent: int, length: int
) -> AsyncIterator[asyncio.StreamReader]:
    """A body of ``length`` bytes to ``path`` from ``source``, ``sent`` of them sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(head(path, length) + b" " * sent)
    try:
        yield reader
    finally:
        writer.close()


def reason_of(body: dict[str, Any]) -> str:
    """A refusal's reason, in the seed's error shape or as a JSON-RPC error's data."""
    error = body["error"]
    return str(error["reason"] if "reason" in error else error["data"]["reason"])


@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_bodies_in_flight_are_held_to_a_budget(
    make_node: Callable[..., Node], parser: str
) -> None:
    node = make_node("bodies", http_port=0, http_parser=parser)
    seen = recorded(node)
    async with node:
        port = node.http_port
        assert port is not None
        table = table_of(node)
        table.body_bytes, table.body_bytes_per_address = 96 * KIB, 64 * KIB
        changes = Changes(table)
        doors = {
            "/v1/invoke": "aral.v1.AgentNode/Invoke",
            "/mcp": "aral.http/mcp",
            "/a2a": "lf.a2a.v1.A2AService",  # (its method is in the body, not read)
            f"/api/v1/agents/{node.node_id}/invoke": "aral.api/invoke",
        }
        async with uploading(port, "127.0.0.1", "/v1/invoke", 40 * KIB, 48 * KIB):
            await changes.until(lambda: table.bodies.get("127.0.0.1", 0) >= 40 * KIB)
            # The address's next body would pass its budget: refused at once, on every
            # door in its own shape, with a retry hint, and the connection closed.
            for path in doors:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.1", 0)
                )
                writer.write(head(path, 32 * KIB))
                status, headers, body = await answer(reader)
                writer.close()
                assert (status, reason_of(body)) == (429, "TOO_MANY_BODY_BYTES"), (path, body)
                assert headers["retry-after"] == "1", path
            async with uploading(port, "127.0.0.2", "/v1/invoke", 40 * KIB, 48 * KIB):
                await changes.until(lambda: table.body_held >= 80 * KIB)
                # The port's budget: 503, for a body of any address; a body without a
                # Content-Length is refused as its bytes pass the budget.
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=("127.0.0.3", 0)
                )
                writer.write(head("/v1/invoke", None) + b"5000\r\n" + b" " * 0x5000 + b"\r\n")
                status, headers, body = await answer(reader)  # (and the node hangs up)
                writer.close()
                assert (status, reason_of(body)) == (503, "TOO_MANY_BODY_BYTES")
                assert headers["retry-after"] == "1"
        # Every body's bytes are given back: its client went, or it was refused.
        await changes.until(lambda: table.body_held == 0)
        assert table.bodies == {}
        # And a body is served as before.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        call = b'{"call": {"capability": "demo.echo", "parameters": {"text": "hi"}}}'
        writer.write(head("/v1/invoke", len(call), Connection="close") + call)
        async with asyncio.timeout(20):
            assert (await reader.read()).startswith(b"HTTP/1.1 200")
        writer.close()
    # Each refusal is on record, under the door it was for.
    refusals = [
        (r.action, r.peer.rpartition(":")[0]) for r in seen if r.reason == "TOO_MANY_BODY_BYTES"
    ]
    assert refusals == [
        *((action, "127.0.0.1") for action in doors.values()),
        ("aral.v1.AgentNode/Invoke", "127.0.0.3"),
    ], refusals
