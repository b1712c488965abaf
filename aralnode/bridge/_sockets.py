"""WebSockets held to a share per client and a total.

A WebSocket is held as long as its client answers pings: without a bound, one
client opens thousands (~60 KiB and a file descriptor each) until the node has
no descriptor left for anyone. ``SocketQuota`` counts them by client (its
verified identity, else its address, as ``service.stages.share_key`` counts
callers): past ``per_client`` a client's next socket is refused (429) before it
is accepted; past ``total`` the oldest socket of the client holding the most is
closed to make room (1013, try again later), so a new client always gets in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

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
from aralnode.core.errors import AralError, InvalidParameters, InvalidRequest, RateLimited
from aralnode.service.values import only_members

T = TypeVar("T")


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
    "CHANNELS",
    "MAX_ID_CHARS",
    "SocketQuota",
    "TooManySockets",
    "channel_names",
    "invocation",
    "message_id",
    "plain_id",
    "refuse",
    "ws_error",
]
