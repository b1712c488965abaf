"""The WebSocket door's feed: a socket's subscription, what it may still be sent and
how, and the ``approvals`` channel.

A ``Subscriber`` holds one socket's channels and a bounded queue of its events (what
does not fit is dropped and counted); a ``FeedSocket`` sends them, and the door's
replies, under one lock. Events go only where whoever subscribed may still have
them: a subscriber governance halted since it subscribed is offered none
(``subscriber_halted``: a halted principal gets nothing on any door), and a socket
whose session ended, or whose upgrade's credentials no longer hold, is closed
instead of sent its next event (``SessionGate``): a socket that subscribes once and
then only listens is held to the rules a socket that sends is held to at each
message, and closed when its lifetime ends even if it is sent nothing. The HTTP
doors' long-lived streams are held to the same gate (``GatedStream``: an MCP GET
stream's or an A2A stream's server-sent events; ``gated_items``: an A2A gRPC
stream): checked before each event, ended when it refuses or when the credential's
lifetime (a JWT's ``exp``: ``credential_lifetime``) is over, idle or not.

The ``approvals`` channel: the approval queue's events, as ``{"type": "approval",
"event": "pending|approved|denied|expired|withdrawn", ...}`` with the entry, to its
subscribers (the door gives the channel to ``agent:admin`` callers only)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from collections.abc import AsyncIterator, Callable, Mapping, Set
from typing import Any, Protocol, TypeVar

from starlette.websockets import WebSocket

from aralnode._logs import get_logger
from aralnode.access.bearer import presented
from aralnode.access.jwt import looks_like_jwt
from aralnode.bridge._http import Message, Receive, Send, client_peer, iso_ms
from aralnode.bridge._sockets import plain_id
from aralnode.core import codec
from aralnode.core.clock import Clock
from aralnode.core.errors import AralError, InternalError, Unauthenticated
from aralnode.service.approvals import Approval
from aralnode.service.halts import Halts
from aralnode.service.recheck import RECHECK_SECONDS, UNDECIDED_SECONDS, Recheck

log = get_logger("aralnode.ws")
QUEUE_SIZE = 256  # events a subscriber's queue holds; more are dropped, and counted
# The close reason of a socket past its lifetime (on every path that closes it).
SESSION_EXPIRED = "session expired"
POLICY_VIOLATION = 1008  # close codes (RFC 6455): a refusal; one with a retry hint
TRY_AGAIN_LATER = 1013
_PRINCIPAL_KEY = "principal:"
_DISCONNECT: Message = {"type": "http.disconnect"}
T = TypeVar("T")


class _Hub(Protocol):
    @property
    def service(self) -> Any: ...

    @property
    def node_id(self) -> str: ...


class Subscriber:
    """One socket's subscription: its channels, its bounded event queue, and whose
    governance decisions it may see (``EventHub.subscribe``)."""

    def __init__(self) -> None:
        self.channels: set[str] = set()
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0
        self.decision_keys: tuple[str, ...] = ()
        self.sees_all = False
        self.scopes: frozenset[str] = frozenset()  # what its capability listings show
        self.caller = self.principal = ""  # who subscribed (a halt of either: no events)

    def offer(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1


class SessionGate:
    """Whether a socket (or a stream) may still be sent events: its session lives
    ``ttl`` seconds of ``clock`` from its opening (``None``: no end), and
    ``authenticate`` (which raises the refusal) passes for its opening's credentials,
    asked again at most once every ``RECHECK_SECONDS``. Constant memory and no task
    of its own: the socket's sender waits ``remaining()`` at most. Past its lifetime
    its refusal is ``Unauthenticated`` with reason ``expiry``. A refusal with a retry
    hint (a credential still being checked with its issuer, an address held back for
    failed credentials: no verdict on this one) is no refusal yet, for
    ``UNDECIDED_SECONDS`` in a row (``service.recheck.Recheck``)."""

    __slots__ = ("_recheck", "clock", "expires", "expiry")

    def __init__(
        self,
        clock: Clock,
        ttl: float | None,
        authenticate: Callable[[], None],
        *,
        expiry: str = "SESSION_EXPIRED",
    ) -> None:
        self.clock = clock
        self.expires = None if ttl is None else clock.monotonic() + ttl
        self.expiry = expiry
        self._recheck = Recheck(clock, authenticate)  # the first event is checked

    def remaining(self) -> float | None:
        """Seconds until the session ends (``None``: it does not)."""
        return None if self.expires is None else self.expires - self.clock.monotonic()

    def expired(self) -> bool:
        return self.expires is not None and self.clock.monotonic() >= self.expires

    def lifetime_over(self) -> AralError:
        return Unauthenticated("its lifetime is over: open a new one", reason=self.expiry)

    def failure(self) -> AralError | None:
        """Why no more events may be sent (``None``: they may): the lifetime's end,
        or the refusal of the credentials (``Recheck``: asked at most once a
        ``RECHECK_SECONDS``, undecided for ``UNDECIDED_SECONDS`` at most)."""
        if self.expires is not None and self.clock.monotonic() >= self.expires:
            return self.lifetime_over()
        return self._recheck.failure()

    def refusal(self) -> tuple[int, str] | None:
        """Why the socket must be closed rather than sent an event: the close code and
        reason (the reason a message would be refused with), or ``None``. A refusal
        with a retry hint (a token being checked with its issuer, an address whose
        failed authentications are rate limited) closes with 1013: open a new one."""
        if self.expired():
            return POLICY_VIOLATION, SESSION_EXPIRED
        if (exc := self.failure()) is None:
            return None
        return POLICY_VIOLATION if exc.retry_after is None else TRY_AGAIN_LATER, exc.reason


def credential_lifetime(metadata: Mapping[str, str], clock: Clock) -> float | None:
    """Seconds of ``clock`` (its wall time) until the credential in ``metadata``
    expires: a JWT's ``exp``, read, not verified (the authenticate stage verified
    it). ``None`` for one whose end a door cannot see (an API key, an opaque token:
    their revocation and expiry are found by the checks before events)."""
    try:
        shown = presented(metadata)
    except AralError:
        return None
    if shown is None or not looks_like_jwt(shown[1]):
        return None
    payload = shown[1].split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims["exp"]
        left = float(exp) - clock.now_ms() / 1000  # (a bool or a string: no number)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
    return None if isinstance(exp, bool | str) or math.isnan(left) else max(0.0, left)


class GatedStream:
    """An HTTP response's server-sent events held to ``gate`` as a socket's are
    (``receive`` and ``send`` for the app): each chunk of an event stream (an
    event, a keep-alive) goes out only past the gate; where it refuses, the
    response ends (its last, empty chunk) and the app is told that the client went
    (``http.disconnect``: an SSE response stops as for a client that left). The
    lifetime's end is found while the app waits for the client to go, as an SSE
    response always does: an idle stream ends too, with no task of its own (a
    timer, rescheduled). A response that is no event stream goes as it is.
    ``failure`` is why the stream was ended (for its call's record)."""

    __slots__ = ("_lock", "_receive", "_send", "_waiting", "ended", "failure", "gate", "streams")

    def __init__(self, gate: SessionGate, receive: Receive, send: Send) -> None:
        self.gate = gate
        self._receive, self._send = receive, send
        self._lock = asyncio.Lock()  # (an end from the wait and an event: one at a time)
        self._waiting: asyncio.Timeout | None = None
        self.streams = self.ended = False
        self.failure: AralError | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        async with self._lock:
            if self.ended:
                return
            if kind == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers") or ()}
                self.streams = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif self.streams and message.get("more_body") and (fail := self.gate.failure()):
                await self._end(fail)
                return
            await self._send(message)
        if kind == "http.response.start":
            self._arm()

    async def receive(self) -> Message:
        while not self.ended:
            waiting = asyncio.timeout(None)
            try:
                async with waiting:
                    self._waiting = waiting
                    self._arm()
                    return await self._receive()
            except TimeoutError:
                if not waiting.expired():
                    raise
                if self.gate.expired():
                    async with self._lock:
                        await self._end(self.gate.lifetime_over())
            finally:
                self._waiting = None
        return _DISCONNECT

    def _arm(self) -> None:
        """Bound the app's wait by the stream's end (at once, if it has ended)."""
        waiting = self._waiting
        if waiting is None or waiting.expired():
            return
        now = asyncio.get_running_loop().time()
        left = 0.0 if self.ended else self.gate.remaining() if self.streams else None
        waiting.reschedule(None if left is None else now + max(0.0, left))

    async def _end(self, failure: AralError) -> None:
        """End the response for ``failure`` (the lock held)."""
        if self.ended:
            return
        self.ended, self.failure = True, failure
        log.info("an event stream ended: %s", failure.reason)
        with contextlib.suppress(Exception):  # the client may be gone already
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        self._arm()


async def gated_items(gate: SessionGate, items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items``, each past ``gate``: where it refuses, its refusal is raised instead
    (a gRPC stream ends with its status); a wait for the next item is bounded by the
    lifetime (no task of its own), whose end ends the stream too."""
    try:
        while True:
            left = gate.remaining()
            waiting = asyncio.timeout(None if left is None else max(0.0, left))
            try:
                async with waiting:
                    item = await anext(items)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if not waiting.expired():
                    raise
                raise gate.lifetime_over() from None
            if (failure := gate.failure()) is not None:
                raise failure
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


class FeedSocket:
    """A socket's sending side: its subscription's events, each past its ``gate``,
    and replies, all under ``lock`` so that frames never interleave. Once the socket
    is closed nothing more is sent."""

    __slots__ = ("closed", "dropped_event", "gate", "lock", "sub", "ws")

    def __init__(
        self, ws: WebSocket, dropped_event: Callable[[int], dict[str, Any]], gate: SessionGate
    ) -> None:
        self.ws = ws
        self.sub = Subscriber()
        self.lock = asyncio.Lock()
        self.dropped_event = dropped_event
        self.gate = gate
        self.closed = False

    async def pump(self) -> None:
        """Send the queued events, and close the socket when its session ends, whether
        or not the client sends or is sent anything (no busy wait: one wake-up per
        event, and one when the lifetime is up)."""
        while not self.closed:
            left = self.gate.remaining()
            if left is not None and left <= 0:
                await self.close(POLICY_VIOLATION, SESSION_EXPIRED)
                return
            try:
                async with asyncio.timeout(left):  # (an injected clock: asked again)
                    message = await self.sub.queue.get()
            except TimeoutError:
                continue
            async with self.lock:
                await self.send_event(message)

    async def reply(self, message: dict[str, Any]) -> None:
        """Send a reply: waits for the socket rather than dropping anything.

        Events already queued go first, so that a client sees what a call caused
        (its ``decision_made``, say) before the call's result.
        """
        async with self.lock:
            queue = self.sub.queue
            while not queue.empty():
                await self.send_event(queue.get_nowait())
            await self.send_locked(message)

    async def send_event(self, message: dict[str, Any]) -> None:
        """One queued event, after the count of those dropped before it (lock held);
        none, and the socket closed, where its gate refuses it."""
        if self.closed:
            return
        if (refusal := self.gate.refusal()) is not None:
            log.info("WebSocket to %s closed: %s", client_peer(self.ws.scope), refusal[1])
            await self.end(*refusal)
            return
        if self.sub.dropped:
            lost, self.sub.dropped = self.sub.dropped, 0
            await self.send_locked(self.dropped_event(lost))
        await self.send_locked(message)

    async def close(self, code: int, reason: str) -> None:
        async with self.lock:
            await self.end(code, reason)

    async def end(self, code: int, reason: str) -> None:
        """Close the socket (lock held)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.ws.close(code, reason)

    async def send_locked(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            text = codec.dumps(message)
        except (TypeError, ValueError, RecursionError) as exc:
            # A result that is no JSON still gets an answer with its id.
            log.warning("ws reply is not JSON: %s", exc)
            err = InternalError(f"the reply could not be encoded: {type(exc).__name__}")
            text = codec.dumps(
                {"type": "error", "id": plain_id(message), "error": codec.error_dict(err)}
            )
        await self.ws.send_text(text)


def subscriber_halted(halts: Halts | None, sub: object) -> bool:
    """Whether governance halted whoever ``sub`` subscribed as: its ``caller`` or
    ``principal`` (when the door records them), or the principal its decision
    entitlement names (``principal:<id>``). A set lookup or two, per event."""
    if not halts:
        return False
    who = [getattr(sub, "caller", ""), getattr(sub, "principal", "")]
    keys = getattr(sub, "decision_keys", ())
    who.extend(k[len(_PRINCIPAL_KEY) :] for k in keys if k.startswith(_PRINCIPAL_KEY))
    return any(w and halts.is_halted(w) for w in who)


def follow_approvals(hub: _Hub, subscribers: Set[Subscriber]) -> Callable[[], None]:
    """Offer each approval event to ``subscribers`` (read at each event); returns
    what stops it (nothing to stop on a node without an approval queue)."""
    queue = hub.service.pipeline.stages.govern.approvals
    if queue is None:
        return lambda: None
    clock = hub.service.clock

    def offer(event: str, entry: Approval) -> None:
        if not subscribers:
            return
        message = {
            "type": "approval",
            "event": event,
            **entry.as_dict(),
            "url": f"/v1/approvals/{entry.id}",
            "timestamp": iso_ms(clock.now_ms()),
            "agent_id": hub.node_id,
        }
        halts = hub.service.pipeline.stages.govern.halts  # (read now: halts come and go)
        for sub in list(subscribers):
            if not subscriber_halted(halts, sub):
                sub.offer(message)

    stop: Callable[[], None] = queue.on_event(offer)
    return stop


__all__ = [
    "POLICY_VIOLATION",
    "QUEUE_SIZE",
    "RECHECK_SECONDS",
    "SESSION_EXPIRED",
    "UNDECIDED_SECONDS",
    "FeedSocket",
    "GatedStream",
    "SessionGate",
    "Subscriber",
    "credential_lifetime",
    "follow_approvals",
    "gated_items",
    "subscriber_halted",
]
