"""What a client holds on the HTTP port, each held to a share per client and a total:
its connections and the request bodies arriving on them (``ConnectionTable``), and
its WebSockets (``SocketQuota``).

A WebSocket is held as long as its client answers pings: without a bound, one
client opens thousands (~60 KiB and a file descriptor each) until the node has
no descriptor left for anyone. ``SocketQuota`` counts them by client (its
verified identity, else its address, as ``service.stages.share_key`` counts
callers): past ``per_client`` a client's next socket is refused (429) before it
is accepted; past ``total`` the oldest socket of the client holding the most is
closed to make room (1013, try again later), so a new client always gets in.

``ConnectionTable`` does the same for the port's HTTP connections, by address (an
IPv4 host, an IPv6 /64): past ``per_address`` a connection is refused (429); past
``total`` the connection idle longest (awaiting its request head, or kept alive
between requests: never one in a request or a stream) of the address holding the
most is closed to make room, unless the newcomer's own address holds as many
(503). And it keeps a budget of request-body bytes in flight (``BodyClaim``), in
all and per address, so that unfinished uploads cannot make the port hold
gigabytes: a body past it is refused at once (429 for its address, 503 for the
port) and its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from aralnode.bridge._http import (
    JSON,
    Scope,
    Send,
    dumps,
    error_body,
    error_headers,
    iso_ms,
)
from aralnode.core import codec
from aralnode.core.context import new_trace_id
from aralnode.core.errors import (
    AralError,
    InvalidParameters,
    InvalidRequest,
    RateLimited,
    Unavailable,
)
from aralnode.service.values import only_members

T = TypeVar("T")
C = TypeVar("C", bound=Hashable)


class TooManySockets(RateLimited):
    """A client holds as many WebSockets as it may."""

    default_reason = "TOO_MANY_WEBSOCKETS"


class SocketQuota(Generic[T]):
    """Who holds which socket (``T``: whatever the door keeps per socket).

    Args:
        per_client: Sockets one client may hold.
        total: Sockets the node holds.
        client_of: A request's client: who its sockets count against.
    """

    def __init__(self, *, per_client: int, total: int, client_of: Callable[[Scope], str]) -> None:
        self.per_client = per_client
        self.total = total
        self.client_of = client_of
        self._held: dict[str, OrderedDict[T, None]] = {}  # per client, oldest first
        self.count = 0
        self.evicted = 0
        self._closing: set[asyncio.Task[None]] = set()

    def check(self, client: str) -> None:
        """Raises ``TooManySockets`` when ``client`` holds its share already."""
        held = self._held.get(client)
        if held is not None and len(held) >= self.per_client:
            raise TooManySockets(
                f"this client holds {self.per_client} WebSockets already", retry_after=1.0
            )

    def add(self, client: str, socket: T) -> T | None:
        """Count ``socket`` as ``client``'s; the socket to close to make room, if any
        (already forgotten here)."""
        victim = None
        if self.count >= self.total and self._held:
            heaviest = max(self._held, key=lambda c: len(self._held[c]))
            victim = next(iter(self._held[heaviest]))
            self.remove(heaviest, victim)
            self.evicted += 1
        self._held.setdefault(client, OrderedDict())[socket] = None
        self.count += 1
        return victim

    def close_later(self, close: Callable[[int, str], Awaitable[None]], lock: asyncio.Lock) -> None:
        """Close an evicted socket (``close(code, reason)`` under its send ``lock``),
        without making the socket that took its place wait for it."""

        async def closing() -> None:
            with contextlib.suppress(Exception):  # it may be closing already
                async with lock:
                    await close(1013, "the node holds too many WebSockets")

        task = asyncio.create_task(closing())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def remove(self, client: str, socket: T) -> None:
        """``socket`` closed (nothing happens if it was evicted before)."""
        held = self._held.get(client)
        if held is None or socket not in held:
            return
        del held[socket]
        self.count -= 1
        if not held:
            del self._held[client]


MIB = 1024 * 1024
# Request-body bytes in flight (arrived, not yet handed to the call as a whole body)
# that the port holds, in all and from one address. A body is at most
# max_message_bytes (4 MiB by default): an address may upload four of the largest
# at once (a client's calls are seldom more than kilobytes), and the port sixteen,
# 64 MiB where four addresses' unfinished uploads held 4 GiB before. A body alone
# in its budget is never refused for its size (max_message_bytes may be larger).
BODY_BYTES = 64 * MIB
BODY_BYTES_PER_ADDRESS = 16 * MIB
BODY_RETRY_SECONDS = 1.0  # bodies in flight end in a moment, or at the body timeout


class ConnectionTable(Generic[C]):
    """The HTTP connections a port holds (``C``: the protocol of each): at most
    ``total``, and ``per_address`` from any one client address; and the request-body
    bytes in flight on them (``claim``), at most ``body_bytes`` in all and
    ``body_bytes_per_address`` from one address.

    A connection is *idle* while it awaits its request head or is kept alive between
    requests (its protocol says so: ``idle``/``busy``): only an idle one is closed
    to make room. Every operation is O(1): the addresses with idle connections are
    kept in levels by how many connections each holds, the levels in use as the
    bits of one integer (``per_address`` bits), so the heaviest is its top bit.
    """

    def __init__(
        self,
        total: int,
        per_address: int,
        *,
        body_bytes: int = BODY_BYTES,
        body_bytes_per_address: int = BODY_BYTES_PER_ADDRESS,
    ) -> None:
        self.total, self.per_address = total, per_address
        self.count = 0
        self.evicted = 0  # connections closed to make room
        self.by_address: dict[str, int] = {}
        self._idle: dict[str, dict[C, None]] = {}  # per address, idle longest first
        self._level: dict[str, int] = {}  # address (with idle ones): its connections
        self._levels: dict[int, dict[str, None]] = {}  # connections held: those addresses
        self._used = 0  # bit n set: some address with idle connections holds n
        self.body_bytes, self.body_bytes_per_address = body_bytes, body_bytes_per_address
        self.body_held = 0
        self.bodies: dict[str, int] = {}  # body bytes in flight, per address

    def admit(self, address: str, conn: C) -> tuple[AralError | None, C | None]:
        """Count ``conn``, new from ``address`` (idle): why it is refused (not
        counted), or the connection closed to make room for it (forgotten here
        already; its protocol answers and closes it)."""
        held = self.by_address.get(address, 0)
        if held >= self.per_address:
            refusal = f"this address holds {held} connections to the HTTP port, its limit"
            return RateLimited(
                refusal, reason="TOO_MANY_CONNECTIONS", details={"limit": self.per_address}
            ), None
        victim = None
        if self.count >= self.total:
            top = self._used.bit_length() - 1  # -1: no connection is idle
            if top <= held:  # none to take, or this address is one of the heaviest
                return Unavailable(
                    f"the HTTP port holds {self.count} connections, its limit",
                    reason="TOO_MANY_CONNECTIONS",
                    details={"limit": self.total},
                ), None
            heaviest = next(iter(self._levels[top]))
            victim = next(iter(self._idle[heaviest]))
            self.release(heaviest, victim)
            self.evicted += 1
        self.by_address[address] = held + 1
        self.count += 1
        self._idle.setdefault(address, {})[conn] = None
        self._relevel(address)
        return None, victim

    def idle(self, address: str, conn: C) -> None:
        """``conn`` awaits a request head: it may be closed to make room."""
        idle = self._idle.get(address)
        if idle is None:
            self._idle[address] = {conn: None}
            self._relevel(address)
        else:
            idle[conn] = None

    def busy(self, address: str, conn: C) -> None:
        """A request is in flight on ``conn`` (or it is closing): it stays."""
        idle = self._idle.get(address)
        if idle is not None and conn in idle:
            del idle[conn]
            if not idle:
                del self._idle[address]
                self._relevel(address)

    def release(self, address: str, conn: C) -> None:
        """``conn`` is gone (or upgraded)."""
        held = self.by_address.pop(address, 0) - 1
        if held > 0:
            self.by_address[address] = held
        self.count -= 1
        idle = self._idle.get(address)
        if idle is not None:
            idle.pop(conn, None)
            if not idle:
                del self._idle[address]
        self._relevel(address)

    def _relevel(self, address: str) -> None:
        """File ``address`` under the level of its connections if it has an idle one."""
        old = self._level.pop(address, 0)
        new = self.by_address.get(address, 0) if address in self._idle else 0
        if old == new:
            if new:
                self._level[address] = new
            return
        if old:
            level = self._levels[old]
            del level[address]
            if not level:
                del self._levels[old]
                self._used &= ~(1 << old)
        if new:
            self._level[address] = new
            self._levels.setdefault(new, {})[address] = None
            self._used |= 1 << new

    def claim(self, address: str, on_refused: Callable[[], None] | None = None) -> BodyClaim:
        """A new request body's claim on the budgets, for ``address``."""
        return BodyClaim(self, address, on_refused)

    def body_refusal(self, address: str, size: int, mine: int) -> AralError | None:
        """Why ``size`` more bytes of a body holding ``mine`` do not fit, if they do not:
        a body is refused only for bytes other bodies hold."""
        held = self.bodies.get(address, 0)
        if held + size > self.body_bytes_per_address and held > mine:
            return RateLimited(
                f"this address has {held} bytes of request bodies in flight; its budget "
                f"is {self.body_bytes_per_address}",
                reason="TOO_MANY_BODY_BYTES",
                details={"limit": self.body_bytes_per_address},
                retry_after=BODY_RETRY_SECONDS,
            )
        if self.body_held + size > self.body_bytes and self.body_held > mine:
            return Unavailable(
                f"the HTTP port has {self.body_held} bytes of request bodies in flight; "
                f"its budget is {self.body_bytes}",
                reason="TOO_MANY_BODY_BYTES",
                details={"limit": self.body_bytes},
                retry_after=BODY_RETRY_SECONDS,
            )
        return None

    def take_body(self, address: str, size: int) -> None:
        self.bodies[address] = self.bodies.get(address, 0) + size
        self.body_held += size

    def give_body(self, address: str, size: int) -> None:
        held = self.bodies.pop(address, 0) - size
        if held > 0:
            self.bodies[address] = held
        self.body_held -= size


class BodyClaim:
    """One request body's bytes in flight, taken (``take``) by the connection as they
    arrive, before it keeps them, and given back (``close``, once) when the body is
    whole or its request ends any other way. Past a budget the body is refused:
    ``refusal`` says why (``read_body`` raises it: the door answers), nothing more
    of it is taken, and ``on_refused`` is told (the connection keeps none of the
    rest, and closes once the refusal is answered)."""

    __slots__ = ("_on_refused", "_table", "address", "ended", "held", "refusal")

    def __init__(
        self,
        table: ConnectionTable[Any],
        address: str,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self._table, self.address, self._on_refused = table, address, on_refused
        self.held = 0
        self.refusal: AralError | None = None
        self.ended = False  # closed: the body is whole (or refused), nothing more comes

    def take(self, size: int) -> bool:
        """Count ``size`` more bytes; False if they do not fit (the body is refused)."""
        if self.refusal is not None:
            return False
        table = self._table
        refusal = table.body_refusal(self.address, size, self.held)
        if refusal is None:
            table.take_body(self.address, size)
            self.held += size
            return True
        self._refuse(refusal)
        return False

    def check(self, length: int) -> bool:
        """Whether a body of ``length`` bytes in all (its Content-Length) can be had
        now; if not, it is refused at once."""
        if self.refusal is not None or self.ended:
            return self.refusal is None
        more = max(0, length - self.held)
        refusal = self._table.body_refusal(self.address, more, self.held)
        if refusal is not None:
            self._refuse(refusal)
        return refusal is None

    def refused(self) -> AralError:
        """The refusal, to raise: a copy, so that its traceback (the frame that read
        the body, and what it read) is not kept alive by the claim."""
        assert self.refusal is not None
        return copy.copy(self.refusal)

    def _refuse(self, refusal: AralError) -> None:
        self.refusal = refusal
        on_refused = self._on_refused
        self.close()  # what it had is dropped with it
        if on_refused is not None:
            on_refused()

    def close(self) -> None:
        """Give every byte back (once), and let go of the connection's callback (it
        holds the request, whose scope holds this claim: no cycle outlives it)."""
        self.ended = True
        self._on_refused = None
        if self.held:
            self._table.give_body(self.address, self.held)
            self.held = 0


class BoundedWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets' sans-I/O one, uvicorn's choice),
    with what it writes unasked held to flow control too.

    It pauses reading while the application has a message to take, so data frames
    are bounded; but it answers each ping (and a close) as it reads it, straight to
    the transport: a client that sends pings and never reads made the node hold
    every pong (200 MB of pings, 200 MB held, from review). Here reading pauses
    while the write buffer is over its high-water mark, so such a client meets TCP's
    flow control instead. And a client that stops answering the keepalive ping is
    cut off at once (``abort``): a close waits to flush what it never reads."""

    _backpressure = False

    def pause_writing(self) -> None:
        super().pause_writing()
        self._backpressure = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._backpressure = False
        if not self.read_paused:  # (paused for the application's sake: it stays)
            self.transport.resume_reading()

    async def receive(self) -> Any:
        message = await super().receive()  # (it reads on once its queue is empty)
        if self._backpressure:
            self.transport.pause_reading()
        return message

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self.transport.abort()


async def refuse(send: Send, exc: AralError, now_ms: int) -> None:
    """Answer a WebSocket handshake with ``exc`` as a plain HTTP response (the ASGI
    WebSocket denial response), in the node's error shape."""
    body = dumps(error_body(exc, new_trace_id(), now_ms))
    headers = [(b"content-type", JSON.encode()), *error_headers(exc)]
    start = {"type": "websocket.http.response.start", "status": exc.http_status}
    await send({**start, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


# A message's id is echoed in its reply: bounded, so that a client that sends
# without reading cannot make the node write (and hold) a megabyte per ping.
MAX_ID_CHARS = 128


def plain_id(message: dict[str, Any]) -> Any:
    """A WebSocket message's id if it is a plain JSON value the node echoes (a
    number, true/false, null, or a string of at most ``MAX_ID_CHARS``), else None."""
    msg_id = message.get("id")
    if isinstance(msg_id, str):
        return msg_id if len(msg_id) <= MAX_ID_CHARS else None
    return msg_id if isinstance(msg_id, int | float | bool) or msg_id is None else None


def message_id(message: dict[str, Any]) -> Any:
    """A WebSocket message's id (``plain_id``).

    Raises:
        InvalidRequest: It has one, and it is not one the node echoes (``BAD_ID``).
    """
    msg_id = plain_id(message)
    if msg_id is None and message.get("id") is not None:
        raise InvalidRequest(
            f"id is a number, true/false, null or a string of at most {MAX_ID_CHARS} characters",
            reason="BAD_ID",
        )
    return msg_id


def ws_error(
    exc: AralError, msg_id: Any, now_ms: int, trace_id: str | None = None
) -> dict[str, Any]:
    """A WebSocket error message (the seed's error object, as REST and MCP send it)."""
    error = {**codec.error_dict(exc), "timestamp": iso_ms(now_ms)}
    if trace_id:
        error["trace_id"] = trace_id  # as REST and MCP errors carry it
    return {"type": "error", "id": msg_id, "error": error}


# The WebSocket door's event channels (``ws.py``).
CHANNELS = ("peers", "capabilities", "decisions", "status", "approvals")


_INVOKE_MEMBERS = frozenset({"type", "id", "capability", "parameters", "trace_id"})


def invocation(msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """An ``invoke`` frame's capability and parameters. Refused: a member the frame
    does not have (a misspelt ``parameters`` must not run the capability with
    none), parameters that are not an object (``false`` or ``""`` are not none)."""
    capability = msg.get("capability")
    if not isinstance(capability, str) or not capability:
        raise InvalidRequest("invoke needs a capability", reason="MISSING_FIELD")
    only_members(msg, _INVOKE_MEMBERS, "an invoke")
    params = msg.get("parameters")
    if params is None:
        return capability, {}
    if not isinstance(params, dict):
        raise InvalidParameters("parameters must be a JSON object", details={"field": "parameters"})
    return capability, params


def channel_names(value: Any) -> list[str]:
    """The channel names ``value`` asks for, each once and sorted (one form for
    governance to judge, however the client spelled it)."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise InvalidRequest("channels is a list of names", reason="BAD_CHANNELS")
    out: list[str] = []
    for c in value:
        if c == "events":
            out.extend(CHANNELS)
        elif c in CHANNELS:
            out.append(c)
        else:
            raise InvalidRequest(
                f"unknown channel {c[:64]!r}; one of events, {', '.join(CHANNELS)}",
                reason="UNKNOWN_CHANNEL",
            )
    return sorted(set(out))


__all__ = [
    "BODY_BYTES",
    "BODY_BYTES_PER_ADDRESS",
    "CHANNELS",
    "MAX_ID_CHARS",
    "BodyClaim",
    "BoundedWebSocket",
    "ConnectionTable",
    "SocketQuota",
    "TooManySockets",
    "channel_names",
    "invocation",
    "message_id",
    "plain_id",
    "refuse",
    "ws_error",
]
