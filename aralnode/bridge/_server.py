"""uvicorn's HTTP/1.1 protocols with the request head bounded: its size, its number
of header fields and the time it may take to arrive; the time a body may take; and
the connections the port holds, in all and from one address.

Neither parser bounds the head on its own the way a door open to anyone needs:
httptools (llhttp) keeps every header, however many and however long, and h11
bounds the size (``max_incomplete_event_size``) but neither bounds the time, so a
client that sends a head slowly, or nothing at all, holds its connection forever.
Both protocols are subclassed here with the same three bounds (``HeadLimits``), and
both answer in the node's error shape: 431 (``HEADERS_TOO_LARGE``,
``TOO_MANY_HEADERS``) or 408 (``HEADER_TIMEOUT``), then close the connection.

The time bound runs from the moment a connection opens (or a request on a kept-alive
connection begins) until its head is complete; uvicorn's own keep-alive timeout
still closes a connection idle between requests. A body has its own clock, from
the end of its head: a client that stops sending half-way (408 ``BODY_TIMEOUT``)
does not hold its connection, its task and the body read so far any longer.

A connection past ``ConnectionTable``'s bounds (``_sockets.py``) is answered at once,
before a byte of it is parsed (429 or 503 ``TOO_MANY_CONNECTIONS``), and closed; or,
when the port is full, room is made for it: the connection idle longest of the
address holding the most (one awaiting its head, or kept alive between requests;
never one with a request in flight) is answered 503 and closed. Each connection
tells the table whether it is idle as its requests come and go, and names itself in
its requests' scope (``CONNECTION``), where ``read_body`` finds the table's budget
of body bytes in flight (``body_claim``). A connection upgraded to a WebSocket
leaves the table: the WebSocket quota counts it from then, and the message it is
receiving counts against the same budget (``on_upgrade``: ``_ws_budget``).
"""

from __future__ import annotations

import asyncio
import functools
import http
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from aralnode.bridge._http import (
    BODY,
    CONNECTION,
    HeadersTooLarge,
    dumps,
    error_body,
    error_headers,
)
from aralnode.bridge._sockets import BodyClaim, BoundedWebSocket, ConnectionTable
from aralnode.core.addresses import join_host_port
from aralnode.core.context import new_trace_id
from aralnode.core.errors import AralError, DeadlineExceeded, RateLimited, Unavailable
from aralnode.service.stages import address_of

PARSERS = ("auto", "httptools", "h11")
# Requests one connection may have waiting behind the one being answered. httptools
# parses every request a read holds, and uvicorn queued each (a task's worth of state
# apiece) and read on after every answer: 100,000 pipelined GETs that were never
# read held 245 MB. h11 parses the next request only once the last is answered.
MAX_PIPELINED = 32


class HeaderTimeout(DeadlineExceeded):
    """A request head that did not arrive in time (408)."""

    http_status = 408
    default_reason = "HEADER_TIMEOUT"


class BodyTimeout(DeadlineExceeded):
    """A request body that did not arrive in time (408)."""

    http_status = 408
    default_reason = "BODY_TIMEOUT"


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """Bounds on a request (its head, its body's time) and on the connections.

    Attributes:
        max_bytes: Size of the head, in bytes.
        max_count: Number of header fields.
        timeout: Seconds from a connection's start (or a request's first byte) to
            the end of its head.
        now_ms: The node's clock, for the error body's timestamp.
        body_timeout: Seconds from the end of a head to the end of its body.
        connections: The port's connections (None: unbounded).
        on_refused: Told of each refusal made here (the error, the client's
            address): the audit log's record of it.
        on_upgrade: Given each connection upgraded to a WebSocket (its protocol,
            its address in the table), to count the messages it receives.
    """

    max_bytes: int
    max_count: int
    timeout: float
    now_ms: Any  # Callable[[], int]; Any: a dataclass field may not be a bare method
    body_timeout: float = 60.0
    connections: ConnectionTable[Any] | None = None
    on_refused: Any = None  # Callable[[AralError, str], None]
    on_upgrade: Any = None  # Callable[[asyncio.Protocol, str], None]

    def too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"the request head is over the limit of {self.max_bytes} bytes",
            details={"limit": self.max_bytes},
        )

    def too_many(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"the request has more than {self.max_count} header fields",
            reason="TOO_MANY_HEADERS",
            details={"limit": self.max_count},
        )

    def timed_out(self) -> HeaderTimeout:
        return HeaderTimeout(
            f"the request head did not arrive within {self.timeout:g} s",
            details={"timeout_seconds": self.timeout},
        )

    def body_late(self) -> BodyTimeout:
        return BodyTimeout(
            f"the request body did not arrive within {self.body_timeout:g} s of its head",
            details={"timeout_seconds": self.body_timeout},
        )


def raw_response(exc: AralError, now_ms: int) -> bytes:
    """A whole HTTP/1.1 response for ``exc`` in the node's error shape, written
    straight to the socket (no request ever reached the application)."""
    trace = new_trace_id()
    body = dumps(error_body(exc, trace, now_ms))
    status = exc.http_status
    extra = b"".join(k + b": " + v + b"\r\n" for k, v in error_headers(exc))  # Retry-After
    head = (
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"x-trace-id: {trace}\r\nconnection: close\r\n"
    )
    return head.encode() + extra + b"\r\n" + body


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head already refused."""


class _HeadGuard(asyncio.Protocol):
    """What both protocols share: the head timer and the refusal. First in their
    bases, so its ``connection_made``/``connection_lost`` wrap uvicorn's."""

    limits: ClassVar[HeadLimits]
    transport: asyncio.Transport
    cycle: Any
    flow: Any  # uvicorn's FlowControl
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _refused = False
    _address: str | None = None  # counted in the connection table under it
    _idle = False  # counted there as idle: it may be closed to make room
    _body: BodyClaim | None = None  # the claim of the body being received
    _upgraded = False  # the connection is a WebSocket's now: no clock of ours runs
    # Calls to make when the connection is lost (DisconnectWatch's, via the scope's
    # CONNECTION): no task per request waits on ``receive`` for the disconnect.
    lost = False
    _on_lost: set[Callable[[], None]] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        table = self.limits.connections
        if table is not None:
            peer = transport.get_extra_info("peername")
            # One client is one key, as for the rate limit: an IPv4 host, an IPv6 /64.
            address = ""
            if isinstance(peer, tuple) and len(peer) >= 2:
                address = address_of(join_host_port(str(peer[0]), int(peer[1])))
            refusal, victim = table.admit(address, self)
            if victim is not None:
                victim._evicted(table.total)
            if refusal is not None:
                self._refuse(refusal)
                return
            self._address, self._idle = address, True
        self._arm()

    def _release(self) -> None:
        """Leave the connection table (once)."""
        address, self._address, self._idle = self._address, None, False
        if address is not None and self.limits.connections is not None:
            self.limits.connections.release(address, self)

    def _evictable(self) -> bool:
        """No request is in flight on the connection: it awaits a head (its first,
        or the next on a kept-alive connection), and is not closing."""
        raise NotImplementedError

    def _mark(self) -> None:
        """Tell the table whether the connection is idle now (if that changed)."""
        address = self._address
        if address is not None and (idle := self._evictable()) is not self._idle:
            self._idle = idle
            table = self.limits.connections
            assert table is not None
            (table.idle if idle else table.busy)(address, self)

    def _evicted(self, total: int) -> None:
        """Closed to make room for a newcomer (the table has forgotten it already)."""
        self._address, self._idle = None, False
        if self.transport.is_closing():  # (going already: nothing to say)
            return
        _HeadGuard._refuse(
            self,
            Unavailable(
                f"the HTTP port holds {total} connections, its limit: this one, idle "
                "longest at the address holding the most, was closed to make room",
                reason="TOO_MANY_CONNECTIONS",
                details={"limit": total},
                retry_after=1.0,
            ),
        )

    def _claim_body(self, cycle: Any) -> None:
        """Give a new request's body its claim on the port's budgets of bytes in
        flight, in its scope too (where ``read_body`` finds a refusal)."""
        table, address = self.limits.connections, self._address
        self._close_body()  # (the last one's ended already)
        if table is not None and address is not None:
            claim = table.claim(address, functools.partial(self._body_refused, cycle))
            self._body = cycle.scope[BODY] = claim

    def _body_refused(self, cycle: Any) -> None:
        """A body is past a budget: none of the rest is kept, reading pauses, the
        request's ``read_body`` wakes to refuse it, and the connection closes
        once that is answered."""
        cycle.keep_alive = False
        del cycle.body[:]  # (what it had kept)
        cycle.message_event.set()
        self.flow.pause_reading()

    def _close_body(self, *, answered: bool = False) -> None:
        """The body being received is whole, or its request ended (``answered``:
        only if the latest request was answered): its bytes are given back."""
        claim = self._body
        if claim is not None and (not answered or self.cycle.response_complete):
            self._body = None
            claim.close()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        # The connection is the WebSocket protocol's from here on, and this one
        # is never told of its loss: the WebSocket quota counts it instead, and
        # the messages it receives count against its address's body budget.
        address = self._address
        self._release()
        self._close_body()
        self._upgraded = True
        self._disarm()
        self._disarm_body()
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]
        if address is not None and self.limits.on_upgrade is not None:
            self.limits.on_upgrade(self.transport.get_protocol(), address)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_body()
        self._release()
        self._close_body()
        self.lost = True
        super().connection_lost(exc)
        if self.cycle is not None:  # a body cut off: nothing reads it now (nor frees it,
            self.cycle.body = bytearray()  # until its cycle, the scope's, is collected)
        callbacks, self._on_lost = self._on_lost, None
        for callback in callbacks or ():
            callback()

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the connection is lost (until ``not_on_lost``)."""
        if self._on_lost is None:
            self._on_lost = set()
        self._on_lost.add(callback)

    def not_on_lost(self, callback: Callable[[], None]) -> None:
        if self._on_lost is not None:
            self._on_lost.discard(callback)

    def _named_in(self, scope: Any) -> None:
        """Put this connection in a request's scope (before its app task runs)."""
        if scope is not None:
            scope[CONNECTION] = self

    def _arm(self) -> None:
        """Start the head's clock, unless it already runs (a head that began on a
        fresh connection keeps the connection's deadline)."""
        if self._head_timer is None and not (self._refused or self._upgraded):
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self.limits.timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body(self) -> None:
        """Start the body's clock (a head is complete, its body is not)."""
        if self._body_timer is None and not (self._refused or self._upgraded):
            loop = asyncio.get_running_loop()
            self._body_timer = loop.call_later(self.limits.body_timeout, self._body_late)

    def _disarm_body(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_late(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:  # only the end is left to say
            self._refused = True
            self.transport.close()
            return
        # The base refusal: the request is the one running, not one behind it.
        _HeadGuard._refuse(self, self.limits.body_late())

    def _head_late(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            self._refuse(self.limits.timed_out())

    def _awaiting_head(self) -> bool:
        raise NotImplementedError

    def _refuse(self, exc: AralError) -> None:
        if self._refused:
            return
        self._refused = True
        self._mark()  # (closing: not one to close again)
        self._close_body()
        self._disarm()
        self._disarm_body()
        if self.limits.on_refused is not None:
            peer = self.transport.get_extra_info("peername")
            where = join_host_port(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else ""
            self.limits.on_refused(exc, where)
        transport = self.transport
        if not transport.is_closing():
            transport.write(raw_response(exc, self.limits.now_ms()))
            transport.close()


class BoundedH11(_HeadGuard, H11Protocol):
    """uvicorn's h11 protocol, its head bounded in time too (h11 bounds its size:
    ``max_incomplete_event_size``, set to ``max_bytes``; the field count is checked
    before the application sees the request, by ``HostGuard``)."""

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        cycle = self.cycle
        before = len(cycle.body) if cycle is not None else 0
        super().data_received(data)
        if self.cycle is not cycle:  # a request began: its task was made, not run yet
            self._request_began()
            cycle, before = self.cycle, 0
        if cycle is not None:
            self._took(cycle, before)
        if self._awaiting_head():
            self._arm()
        else:
            self._disarm()
        if self.conn.their_state is h11.SEND_BODY:
            self._arm_body()
        else:
            self._disarm_body()
            self._close_body()
        self._mark()

    def _took(self, cycle: Any, before: int) -> None:
        """What a read added to a body (past ``before``): taken from the budget, or
        dropped (its request is refused)."""
        claim, grown = self._body, len(cycle.body) - before
        if claim is None or grown <= 0 or cycle.response_complete:
            return
        if not claim.take(grown):
            del cycle.body[before:]

    def _request_began(self) -> None:
        self._named_in(self.cycle.scope)
        self._claim_body(self.cycle)

    def on_response_complete(self) -> None:
        self._close_body(answered=True)
        cycle = self.cycle
        super().on_response_complete()  # (a request waiting behind it begins)
        if self.cycle is not cycle:
            self._request_began()
            self._took(self.cycle, 0)  # (what of its body h11 had kept)
        self._mark()

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self._refused

    def _evictable(self) -> bool:
        return self._awaiting_head() and not self._upgraded

    def send_400_response(self, msg: str) -> None:
        # h11 refuses a head over max_incomplete_event_size as a protocol error;
        # answer that one as what it is.
        if len(self.conn.trailing_data[0]) > self.limits.max_bytes:
            self._refuse(self.limits.too_large())
            return
        super().send_400_response(msg)


class BoundedHttpTools(_HeadGuard, HttpToolsProtocol):
    """Counts the head as llhttp reports it (the target, each field) and, for a
    chunk that is all head, the chunk itself: httptools gathers a field's pieces
    before it reports the field, so an endless one is caught by size at the
    chunk that makes it too long. A refusal inside a callback stops the parser
    there (the callback raises; uvicorn's 400 for it is not sent)."""

    _in_head = True  # a fresh connection awaits its first head
    _in_body = False  # between a head's end and its message's end
    _head_bytes = 0
    _head_count = 0
    _began = False  # a head began in the chunk being parsed

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        step = max(self.limits.max_bytes // 4, 1024)
        if len(data) <= step or self._in_body:
            self._parse(data)
            return
        # A read that may hold a head: in slices, so that the part of a head after
        # its start, which no callback has counted yet, is at most one slice.
        for start in range(0, len(data), step):
            if self._refused or self.transport.get_protocol() is not self:
                successor = self.transport.get_protocol()
                if not self._refused and successor is not self:  # upgraded: the rest is its
                    successor.data_received(data[start:])  # type: ignore[attr-defined]
                return
            self._parse(data[start : start + step])

    def _parse(self, data: bytes) -> None:
        whole_chunk_in_head = self._in_head and self._head_bytes > 0
        counted = self._head_bytes
        self._began = False
        super().data_received(data)
        if self._in_body:  # a head whose body has not all come: its clock runs
            self._arm_body()
        if self._refused or not self._in_head:
            return
        if not self._busy():
            # A head still incomplete at the end of a read: its clock runs from here
            # (armed once; a head that arrives whole in one read, as nearly all do,
            # never needs a timer). Behind unanswered requests it starts when they are.
            self._arm()
        if whole_chunk_in_head and not self._began:
            # All of it is head (what the callbacks counted of it, too).
            self._head_bytes = counted + len(data)
        if self._head_bytes > self.limits.max_bytes:
            self._refuse(self.limits.too_large())

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # a refusal of ours already answered
            super().send_400_response(msg)

    _pending: AralError | None = None  # a pipelined head's refusal, after the answers before it

    def _busy(self) -> bool:
        """An earlier request on this connection is still being answered (running,
        or pipelined behind the one running)."""
        cycle = self.cycle
        return (cycle is not None and not cycle.response_complete) or bool(self.pipeline)

    def _refuse(self, exc: AralError) -> None:
        # A pipelined head refused while earlier requests are answered: its answer
        # waits for theirs (written now, it would read as the running request's).
        if not self._refused and self._busy():
            self._refused, self._pending = True, exc
            self._disarm()
            return
        super()._refuse(exc)

    def on_response_complete(self) -> None:
        self._close_body(answered=True)
        super().on_response_complete()  # (it reads on, whatever waits)
        if self.pipeline:  # answered in turn first: then what comes is read
            self.flow.pause_reading()
        if self._busy():
            return
        if self._pending is not None:
            exc, self._pending, self._refused = self._pending, None, False
            super()._refuse(exc)
        elif self._in_head:  # a pipelined head that began while others were answered
            self._arm()
        self._mark()

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= MAX_PIPELINED:  # (each one queued is whole)
            self._refuse(
                RateLimited(
                    f"{MAX_PIPELINED} requests already wait on this connection",
                    reason="TOO_MANY_PIPELINED",
                    details={"limit": MAX_PIPELINED},
                )
            )
            raise _Refused
        super().on_message_begin()
        self._in_head, self._began = True, True
        self._head_bytes, self._head_count = 1, 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.max_count:
            self._refuse(self.limits.too_many())
            raise _Refused
        # (_count inlined: this runs for every header field of every request)
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        if self._head_bytes > self.limits.max_bytes:
            self._refuse(self.limits.too_large())
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._disarm()
        self._named_in(self.scope)  # the scope the cycle made here is given
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle:  # (none for an upgrade)
            self._claim_body(self.cycle)
        self._mark()

    def on_body(self, body: bytes) -> None:
        claim, cycle = self._body, self.cycle
        if claim is not None and not cycle.response_complete and not claim.take(len(body)):
            return  # past the budget: dropped, not kept (its request is refused)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm_body()
        self._close_body()
        super().on_message_complete()
        self._mark()  # (answered before its body ended: idle from here)

    def _count(self, size: int) -> None:
        """Add ``size`` bytes of head; stops the parser once it is too large."""
        self._head_bytes += size
        if self._head_bytes > self.limits.max_bytes:
            self._refuse(self.limits.too_large())
            raise _Refused

    def _awaiting_head(self) -> bool:
        return self._in_head and not self._refused

    def _evictable(self) -> bool:
        return not (self._refused or self._upgraded or self._in_body or self._busy())


def protocol_class(parser: str, limits: HeadLimits) -> type[asyncio.Protocol]:
    """The bounded protocol class for ``parser`` ("auto" is httptools, a dependency
    of ours, as it is uvicorn's choice), with ``limits``, for ``Config(http=...)``."""
    if parser not in PARSERS:
        raise ValueError(f"HTTP parser must be one of {', '.join(PARSERS)}")
    base: type[asyncio.Protocol] = BoundedH11 if parser == "h11" else BoundedHttpTools
    return type(base.__name__, (base,), {"limits": limits})


__all__ = [
    "PARSERS",
    "BoundedWebSocket",
    "ConnectionTable",
    "HeadLimits",
    "protocol_class",
    "raw_response",
]
