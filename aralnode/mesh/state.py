"""What the channel hub keeps besides links: settings, per-peer state, subscriptions.

Nothing here knows the hub or a link's transport: a ``PeerChannel`` holds its
current link as a ``ChannelLink`` (what the hub asks of one), and subscriptions and
deliveries report back through the callables they are given.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from aralnode import _proto as pb
from aralnode.core.channel import (
    DEFAULT_MAX_BATCH,
    DEFAULT_WINDOW,
    ChannelSession,
    Inbound,
    RecentIds,
)
from aralnode.core.envelope import DEFAULT_MAX_MESSAGE_BYTES, error_body
from aralnode.core.errors import AralError, RateLimited
from aralnode.core.handshake import DEFAULT_CARD_LIMITS, CardLimits

# What a queued response holds besides its body: the body twice (the content and
# the sealed message), the header, the signature, the entry itself.
RESPONSE_OVERHEAD = 1024


#: ``Node.notify`` lets the event loop run (``await asyncio.sleep(0)``) at least once
#: in this many notifications (``Turns``), once the notification is queued.
NOTIFY_TURN_EVERY = 32


class Turns:
    """When a sender that never has to wait should still let the event loop run.

    ``notify`` suspends only when the outbox is full, so a program's loop of
    notifications would hold the event loop until 10,000 of them were queued (half a
    second when signed): the links send none of them, read no acks, and the node
    serves nothing else meanwhile. A turn every ``NOTIFY_TURN_EVERY`` bounds that
    to about 2 ms; on the bench the signed channel carried 15 % more messages a
    second (docs/channels.md). The turn comes after the message is queued, so
    notifications queue in the order they were called (concurrent ones too, while
    the outbox has room); as with a stream's ``drain``, a notify cancelled at its
    turn has queued its message."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = NOTIFY_TURN_EVERY

    def due(self) -> bool:
        """Count one notification; whether the sender should yield once it is queued."""
        self.left -= 1
        if self.left:
            return False
        self.left = NOTIFY_TURN_EVERY
        return True


@dataclass(slots=True)
class ChannelSettings:
    """Knobs of the channel layer (built from ``NodeConfig`` by the node).

    Attributes:
        window: Credit: messages a peer may have sent to us and not yet seen acked.
        outbox_limit: Unacked messages per peer before ``notify``/``request`` wait.
        keepalive_ms: We send a frame at least this often.
        timeout_ms: Silence tolerated beyond the peer's keepalive before the link is dead.
        sign: Sign outgoing messages (off only to measure the cost of signing).
        allow_unsigned: Accept unsigned messages on an authenticated channel.
        max_message_bytes: Largest envelope, and largest batch frame we send.
        max_batch: Most messages per batch (in either direction).
        subscription_queue: Default bound of a subscription's queue.
        verify_threads: Worker threads verifying large batches while no helper
            process does (0: inline).
        verify_processes: Helper processes checking the signatures of large
            batches (``aralnode.mesh.verifier``; 0: none, threads do).
        compress_above: Payloads larger than this are gzip-compressed.
        backoff_initial / backoff_max: Redial delays in seconds (doubling, jittered).
        open_timeout: Seconds to wait for a handshake or an open answer.
        response_bytes: Bytes of responses kept per peer until it acks them; its
            requests beyond that are refused (``RESPONSE_BACKLOG_FULL``).
        card_limits: What a peer's card may carry in a redial's handshake.
    """

    window: int = DEFAULT_WINDOW
    outbox_limit: int = 10_000
    keepalive_ms: int = 5_000
    timeout_ms: int = 5_000
    sign: bool = True
    allow_unsigned: bool = True
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_batch: int = DEFAULT_MAX_BATCH
    subscription_queue: int = 1024
    verify_threads: int = 2
    verify_processes: int = 2
    compress_above: int = 8192
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    open_timeout: float = 10.0
    response_bytes: int = 16 * 1024 * 1024
    card_limits: CardLimits = DEFAULT_CARD_LIMITS


@dataclass(slots=True)
class ChannelMessage:
    """A notification as subscribers and handlers see it."""

    peer: str
    event: str
    data: Any
    message_id: str
    seq: int
    trace_id: str
    signed: bool
    timestamp_ms: int


NotificationHandler = Callable[[ChannelMessage, sqlite3.Connection | None], None]


Overflow = Literal["close", "drop", "backpressure"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("close", "drop", "backpressure")


class Delivery:
    """One notification handed to ``remaining`` subscriptions that have not yet
    taken it into their queue (only a ``backpressure`` subscription holds one);
    ``done`` runs once the last has taken it."""

    __slots__ = ("done", "message", "remaining")

    def __init__(self, message: ChannelMessage, done: Callable[[], None]) -> None:
        self.message = message
        self.done = done
        self.remaining = 0

    def taken(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done()


class Subscription:
    """An async iterator of notifications, with a bounded queue.

    A message counts as processed (so it is acked and frees the sender's credit)
    once it is in the queue, so a subscription never holds up the channel; what
    happens when the queue is full is the ``overflow`` policy:

    * ``"close"`` (default): the subscription ends; the consumer gets what was
      queued, then ``RateLimited`` (reason ``SUBSCRIPTION_OVERFLOW``).
    * ``"drop"``: the new message is dropped and counted (``dropped``,
      ``channel.subscription_dropped``).
    * ``"backpressure"``: the new message waits, *unprocessed*, until the consumer
      makes room, which withholds acks and so slows that peer's sender down: every
      message from that peer waits behind it, so use it only while consuming.
    """

    def __init__(
        self,
        event: str | None,
        peer: str | None,
        *,
        maxsize: int = 1024,
        overflow: Overflow = "close",
        count: Callable[[str], None] = lambda _: None,
        unsubscribe: Callable[[Subscription], None] = lambda _: None,
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}")
        self._count = count
        self._unsubscribe = unsubscribe
        self.event = event
        self.peer = peer
        self.maxsize = maxsize
        self.overflow = overflow
        self._queue: deque[ChannelMessage] = deque()
        self._held: deque[Delivery] = deque()
        self._ready = asyncio.Event()
        self.closed = False
        self.dropped = 0
        self.error: AralError | None = None

    def matches(self, peer: str, event: str) -> bool:
        return (self.event is None or self.event == event) and (
            self.peer is None or self.peer == peer
        )

    def _put(self, delivery: Delivery) -> bool:
        """Offer a delivery: True if done with it now, False if it is held
        (``backpressure``; ``delivery.taken()`` follows once there is room)."""
        if self.closed:
            return True
        if len(self._queue) < self.maxsize:
            self._queue.append(delivery.message)
            self._ready.set()
            return True
        if self.overflow == "backpressure":
            self._held.append(delivery)
            return False
        if self.overflow == "drop":
            self.dropped += 1
            self._count("channel.subscription_dropped")
            return True
        self._count("channel.subscription_overflow")
        self.error = RateLimited(
            f"subscription fell {self.maxsize} messages behind and was closed",
            reason="SUBSCRIPTION_OVERFLOW",
            details={"event": self.event or "*", "maxsize": self.maxsize},
        )
        self._end()
        return True

    def __len__(self) -> int:
        return len(self._queue)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ChannelMessage:
        while not self._queue:
            if self.closed:
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        message = self._queue.popleft()
        if self._held:
            delivery = self._held.popleft()
            self._queue.append(delivery.message)
            delivery.taken()
        return message

    def _end(self) -> None:
        self.closed = True
        self._unsubscribe(self)
        while self._held:
            self._held.popleft().taken()
        self._ready.set()

    def close(self) -> None:
        """Stop receiving; what is queued is discarded."""
        if self.closed:
            return
        self._end()
        self._queue.clear()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class ChannelLink(Protocol):
    """What the hub asks of a peer's current link (``aralnode.mesh.link.Link``)."""

    @property
    def alive(self) -> bool: ...

    @property
    def wake(self) -> asyncio.Event: ...

    @property
    def closed(self) -> asyncio.Event: ...

    @property
    def session(self) -> ChannelSession: ...

    @property
    def dialler(self) -> str: ...

    def close(self, error: AralError) -> None:
        """Ask the link to send ``close`` and end."""


class PeerChannel:
    """Everything about one peer that outlives a link."""

    def __init__(
        self, peer_id: str, inbound: Inbound, recent_ids: int = 4 * DEFAULT_WINDOW
    ) -> None:
        self.peer_id = peer_id
        self.inbound = inbound
        # The peer's recent message ids: (sender, message id) dedupe on the channel.
        self.recent = RecentIds(recent_ids)
        self.link: ChannelLink | None = None
        # Where its last link runs: the address dialled, or the stream's peer as gRPC
        # reports it (a peer nobody trusts is charged to that address's buckets).
        self.address = ""
        self.ended_by: AralError | None = None  # why its last link ended (None: cleanly)
        # Our own open is on the wire (a simultaneous dial is decided from then on).
        self.open_sent = False
        self.unsupported = False
        self.incarnation = ""
        self.peer_acked = 0
        self.sent_max = 0  # highest seq sent to the peer by this process
        self.sent_before_start = 0  # highest seq a previous process may have sent
        # Requests we sent: message id -> (future, seq).
        self.pending: dict[str, tuple[asyncio.Future[Any], int]] = {}
        # Requests from the peer being served: message id -> task.
        self.running: dict[str, asyncio.Task[None]] = {}
        # Our responses it has not acked: (seq, bytes held), and their sum. Bounded
        # (``ChannelSettings.response_bytes``): a peer that never acks must not make
        # us keep every answer we ever gave it.
        self.responses: deque[tuple[int, int]] = deque()
        self.response_bytes = 0
        # Per-message errors owed to the peer. Kept here, not on a link: a batch can
        # be applied after the link that read it ended, and whichever link is up
        # next sends them (the peer has no other way to learn why).
        self.errors: list[pb.MessageError] = []
        # Notifications a durable node holds, unacked, because no handler or
        # subscription took them yet: (generation, seq, message), in order. Bounded
        # by our credit window: the peer sends no more while they are unacked.
        self.held: list[tuple[int, int, ChannelMessage]] = []
        # Our dial learnt that the peer serves no channels (set with ``unsupported``).
        self._refused = asyncio.Event()
        # The last link's deliverer: it applies what that link accepted even after
        # the link ended, and the next link applies nothing before it is done.
        self.delivering: asyncio.Future[None] | None = None
        self.space = asyncio.Event()
        self.space.set()
        self.drained = asyncio.Event()
        self.drained.set()
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._down.set()
        self.max_outbox = 0
        self.max_in_flight = 0
        self.links_opened = 0

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.alive

    def _set_up(self, up: bool) -> None:
        if up:
            self._down.clear()
            self._up.set()
        else:
            self._up.clear()
            self._down.set()

    def refuse_channels(self) -> None:
        """The peer serves no channels (it answered UNIMPLEMENTED): calls to it go
        as unary signed ``Invoke`` instead."""
        self.unsupported = True
        self._refused.set()

    async def wait_usable(self, timeout: float | None) -> bool:
        """Wait until a link to the peer is up, or the peer turned out to serve no
        channels (then calls go over ``Invoke``); False on timeout."""
        if self.connected or self.unsupported:
            return True
        waits = [asyncio.ensure_future(e.wait()) for e in (self._up, self._refused)]
        try:
            done, _ = await asyncio.wait(
                waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiting in waits:
                waiting.cancel()
        return bool(done)

    async def wait_down(self) -> None:
        await self._down.wait()

    async def wait_up(self, timeout: float | None = None) -> bool:
        """Wait until a link is up; False on timeout."""
        return await wait_set(self._up, timeout)

    def wake(self) -> None:
        if self.link is not None:
            self.link.wake.set()


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event``; False if ``timeout`` passed first."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def response_size(body: pb.Body) -> int:
    """What a response with ``body`` holds in the outbox, in bytes (estimated)."""
    return 2 * body.ByteSize() + RESPONSE_OVERHEAD


def backlog_full(limit: int) -> RateLimited:
    """The refusal of a request from a peer that left ``limit`` bytes of our
    responses unacked."""
    return RateLimited(
        f"this peer has not acked {limit} bytes of responses; ack them before asking more",
        reason="RESPONSE_BACKLOG_FULL",
        details={"limit_bytes": limit},
        retry_after=1.0,
    )


def message_error(seq: int, message: pb.ARALMessage, exc: AralError) -> pb.MessageError:
    message_id = ""
    with contextlib.suppress(Exception):
        message_id = pb.MessageContent.FromString(message.content).header.message_id[:128]
    err = error_body(exc, message_id).error
    return pb.MessageError(seq=seq, message_id=message_id, error=err)
