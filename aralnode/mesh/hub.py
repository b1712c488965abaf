"""A2A channels at node level: the messaging API and everything that outlives a link.

``ChannelHub`` is what ``Node.request`` / ``notify`` / ``subscribe`` / ``broadcast``
use, once the node's pipeline has judged what they send (the hub sends what it is
given: judging is the service layer's, once per message). Per peer it keeps a
``PeerChannel``: the outbox queue (in the hub's ``Outbox``), the receive marks
(``core.channel.Inbound``), requests waiting for a response, requests from the peer
being served, and the current ``Link``.

Delivery guarantees (docs/channels.md has the long form):

* **At least once, in order, per channel.** A message stays in the sender's outbox
  until the receiver acks it; after a reconnect everything unacked is resent.
  With ``durable=True`` the outbox is SQLite and survives a restart of the sender.
* **De-duplicated.** By sequence number per (sender epoch, peer) -- authenticated
  twice: every frame carries the session MAC, and every message signs its own
  place (``Header.channel``: epoch and seq) -- then by (sender, message id) among
  the peer's recent messages. A resend is the very message first sent (same
  bytes, same signature); nothing is re-sealed.
* **Exactly once at a transactional handler.** ``on_notification`` handlers run
  inside the inbox transaction that records the message as handled; with
  ``durable=True`` their writes through the given connection commit atomically
  with that mark, so a SIGKILL at any instant neither loses nor repeats them.
  Subscribers (``subscribe``) and capabilities get at-least-once across a crash.
* **Signed, verified, governed.** Every message is signed by default and verified
  on receipt. The sender's pipeline judges requests and notifications once on send
  (``Direction.SEND``); on receipt a request runs the receiver's pipeline as a call
  (``door="channel"``, ``Direction.INVOKE``: the verdict a peer gets is the same as
  on gRPC) and a notification is judged as ``Direction.RECEIVE``. A response is not
  judged again: it answers a request both ends already judged, and its correlation
  id must match.

The gRPC side (accepting and dialling streams) is ``aralnode.mesh.streams``; a
link's reading and writing is ``aralnode.mesh.link``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.core import codec
from aralnode.core.channel import Batch, ChannelSession, Inbound
from aralnode.core.clock import Clock
from aralnode.core.envelope import build_content, encode_payload, error_body, remote_error, seal
from aralnode.core.errors import (
    DeadlineExceeded,
    InternalError,
    PeerNotFound,
    Unavailable,
    Unimplemented,
)
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.outbox import OutboxEntry, tombstone
from aralnode.core.replay import ReplayGuard
from aralnode.mesh.receiver import CANCEL_EVENT, NOTIFICATION, REQUEST, Opened, Receiver
from aralnode.mesh.state import (
    ChannelLink,
    ChannelMessage,
    ChannelSettings,
    NotificationHandler,
    Overflow,
    PeerChannel,
    Subscription,
    Turns,
    backlog_full,
    response_size,
    wait_set,
)
from aralnode.service.context import ContextBuilder
from aralnode.service.pipeline import Pipeline
from aralnode.service.tasks import TaskSet
from aralnode.service.tracing import client_span, outbound
from aralnode.store.base import Inbox, Outbox

__all__ = [
    "CANCEL_EVENT",
    "ChannelHub",
    "ChannelMessage",
    "ChannelSettings",
    "NotificationHandler",
    "Overflow",
    "PeerChannel",
    "Subscription",
    "remote_error",
]

log = get_logger("aralnode.channel")
T = TypeVar("T")


class ChannelHub:
    """All channels of one node. Not thread-safe: it belongs to the node's loop."""

    def __init__(
        self,
        *,
        identity: Identity,
        keyring: KeyRing,
        replay: ReplayGuard,
        pipeline: Pipeline,
        contexts: ContextBuilder,
        clock: Clock,
        outbox: Outbox,
        inbox: Inbox,
        is_verified: Callable[[str], bool],
        card: Callable[[], pb.SignedNodeCard],
        settings: ChannelSettings | None = None,
        handlers: Iterable[tuple[str | None, NotificationHandler]] = (),
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.keyring = keyring
        self.replay = replay
        self.pipeline = pipeline  # runs peers' requests, judges their notifications
        self.tracer: Any = None  # the node's, when tracing is on: a span per message sent
        self.contexts = contexts
        self.clock = clock
        self.outbox = outbox
        self.inbox = inbox
        self.is_verified = is_verified
        self.card = card
        self.settings = s = settings or ChannelSettings()
        self.max_message_bytes = s.max_message_bytes
        self.open_timeout = s.open_timeout
        self.backoff_initial = s.backoff_initial
        self.backoff_max = s.backoff_max
        self.incarnation = os.urandom(8).hex()
        self.stopping = False
        self.turns = Turns()  # when ``Node.notify`` lets the loop run
        self.peers: dict[str, PeerChannel] = {}
        self.subscriptions: list[Subscription] = []
        # Registered before start too (``Node.on_notification``): taken as given.
        self.handlers: list[tuple[str | None, NotificationHandler]] = list(handlers)
        self._tasks = TaskSet()
        self.receiver = Receiver(self)
        # (peer id, up); why a link that went down ended is its ``PeerChannel.ended_by``
        self.link_listeners: list[Callable[[str, bool], None]] = []
        for peer_id in outbox.peers():
            self.peer(peer_id)

    def count(self, name: str, n: int = 1) -> None:
        self.pipeline.counters[name] += n

    def track(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        """Keep ``task`` until it ends; ``close`` cancels what is left."""
        return self._tasks.track(task)

    # -- peers and links (called by the transport) ---------------------------------------

    def peer(self, peer_id: str) -> PeerChannel:
        pc = self.peers.get(peer_id)
        if pc is None:
            window = self.settings.window
            pc = self.peers[peer_id] = PeerChannel(
                peer_id, Inbound(self.inbox.load(peer_id), window), recent_ids=4 * window
            )
            # A previous process (durable), or the peer's channel before it was
            # forgotten, may have sent all that was assigned.
            pc.sent_before_start = self.outbox.last_seq(peer_id)
        return pc

    def forget(self, peer_id: str) -> None:
        """The peer table forgot ``peer_id``: release everything kept for it (its
        link, the requests it is being served and ours waiting for it, its unacked
        responses and, in memory, every message queued for it)."""
        pc = self.peers.pop(peer_id, None)
        if pc is None:
            return
        gone = Unavailable(f"peer {peer_id} is gone", reason="PEER_GONE")
        if pc.link is not None:
            pc.link.close(gone)
        for task in pc.running.values():
            task.cancel()
        for fut, _ in pc.pending.values():
            if not fut.done():
                fut.set_exception(gone)
        pc.pending.clear()
        pc.errors = []
        pc.responses.clear()
        pc.response_bytes = 0
        self.outbox.forget(peer_id)
        self.inbox.forget_marks(peer_id)
        pc.space.set()
        pc.drained.set()
        self.count("channel.peer_forgotten")

    def detached(self, pc: PeerChannel, link: ChannelLink) -> None:
        """``link`` ended; if it was the peer's channel, the peer has none now."""
        if pc.link is not link:
            return
        pc.link = None
        pc.ended_by = getattr(link, "error", None)
        pc._set_up(False)
        self.receiver.save(pc)
        self.count("channel.closed")
        for listener in self.link_listeners:
            listener(pc.peer_id, False)

    # -- sending ------------------------------------------------------------------------

    def unsent(self, pc: PeerChannel, session: ChannelSession) -> bool:
        """Whether the outbox holds entries the link has not sent yet."""
        return self.outbox.last_seq(pc.peer_id) > session.sent_seq

    def outgoing(self, pc: PeerChannel, session: ChannelSession, room: int) -> list[OutboxEntry]:
        """Unsent entries for the link's writer: consecutive seqs after the link's
        ``sent_seq``, at most ``room`` and one frame's bytes; an expired one is
        withdrawn and goes as a tombstone (so the numbering keeps no gap)."""
        if not self.unsent(pc, session):
            return []  # nothing new: no read (a SELECT, when durable) per writer wake
        entries = self.outbox.unsent(pc.peer_id, session.sent_seq, room)
        if not entries:
            return entries
        now = self.clock.now_ms()
        out: list[OutboxEntry] = []
        size = 0
        for entry in entries:
            if entry.sealed and entry.expires_ms and entry.expires_ms <= now:
                self._expired(pc, entry)
                entry = tombstone(entry)  # noqa: PLW2901 - the tombstone goes in its place
            size += len(entry.sealed)
            if out and size > self.max_message_bytes:
                break
            out.append(entry)
        last = out[-1].seq
        if out[0].seq <= pc.sent_max:  # sent on an earlier link: a resend
            self.count("channel.resent", min(last, pc.sent_max) - out[0].seq + 1)
        pc.sent_max = max(pc.sent_max, last)
        pc.max_in_flight = max(pc.max_in_flight, session.in_flight + len(out))
        return out

    def _withdraw(self, pc: PeerChannel, seq: int) -> None:
        if self.outbox.withdraw(pc.peer_id, seq):
            self._freed(pc)

    def _freed(self, pc: PeerChannel) -> None:
        """Entries left the outbox: wake senders waiting for room, and flushes."""
        left = self.outbox.count(pc.peer_id)
        if left < self.settings.outbox_limit:
            pc.space.set()
        if not left:
            pc.drained.set()

    def _expired(self, pc: PeerChannel, entry: OutboxEntry) -> None:
        self._withdraw(pc, entry.seq)
        self.count("channel.expired")
        pending = pc.pending.pop(entry.message_id, None)
        if pending is not None and not pending[0].done():
            pending[0].set_exception(DeadlineExceeded("request expired before it could be sent"))

    def acked(self, pc: PeerChannel, seq: int) -> None:
        if seq <= pc.peer_acked:
            return
        self.count("channel.acked", seq - pc.peer_acked)
        pc.peer_acked = seq
        link = pc.link
        if link is not None:
            # An ack that came on an older link covers the current one too, and
            # may open its window: its writer looks again.
            link.session.acked_elsewhere(seq)
            link.wake.set()
        self.outbox.ack(pc.peer_id, seq)
        responses = pc.responses
        while responses and responses[0][0] <= seq:
            pc.response_bytes -= responses.popleft()[1]
        self._freed(pc)

    def rejected(self, pc: PeerChannel, errors: Iterable[pb.MessageError]) -> None:
        """The peer refused some of our messages (``MessageErrors``)."""
        for item in errors:
            self.count("channel.rejected_by_peer")
            exc = remote_error(item.error)
            message_id = item.message_id
            if not message_id:
                entry = self.outbox.get(pc.peer_id, item.seq)
                message_id = entry.message_id if entry is not None else ""
            pending = pc.pending.pop(message_id, None)
            if pending is not None:
                if not pending[0].done():
                    pending[0].set_exception(exc)
            else:
                log.warning(
                    "peer %s rejected message %s (seq %d): %s",
                    pc.peer_id,
                    message_id,
                    item.seq,
                    exc,
                )

    def _send_peer(self, peer: str) -> PeerChannel:
        pc = self.peers.get(peer)
        if pc is None:
            if not self.is_verified(peer):
                raise PeerNotFound(f"no verified peer {peer!r}", details={"node_id": peer})
            pc = self.peer(peer)
        return pc

    async def _wait_space(self, pc: PeerChannel) -> None:
        limit = self.settings.outbox_limit
        while self.outbox.count(pc.peer_id) >= limit:
            if self.stopping:
                raise Unavailable("node is stopping", reason="NODE_STOPPING")
            pc.space.clear()
            await pc.space.wait()

    def _enqueue(
        self,
        pc: PeerChannel,
        body: pb.Body,
        *,
        content_type: str = codec.JSON,
        compression: str = "",
        trace_id: str = "",
        ttl_ms: int = 0,
        on_behalf_of: str = "",
        delegation: pb.Delegation | None = None,
        message_id: str | None = None,
    ) -> tuple[str, int]:
        content = build_content(
            sender=self.node_id,
            recipient=pc.peer_id,
            body=body,
            clock=self.clock,
            message_id=message_id,
            trace_id=trace_id,
            content_type=content_type,
            compression=compression,
            ttl_ms=ttl_ms,
            on_behalf_of=on_behalf_of,
            delegation=delegation,
        )
        header = content.header
        traceparent, tracestate = outbound()  # signed with the rest: one trace across nodes
        if traceparent:
            header.traceparent, header.tracestate = traceparent, tracestate
        # The message signs its own place on the channel (epoch, seq): it cannot
        # be replayed at another position or through another door.
        seq = self.outbox.last_seq(pc.peer_id) + 1
        header.channel.epoch = self.outbox.epoch
        header.channel.seq = seq
        message = seal(content, self.identity if self.settings.sign else None)
        ts = header.timestamp_unix_ms
        assigned = self.outbox.append(
            pc.peer_id,
            message_id=header.message_id,
            kind=body.type,
            timestamp_ms=ts,
            expires_ms=ts + ttl_ms if ttl_ms else 0,
            content=message.content,
            sealed=message.SerializeToString(),
        )
        if assigned != seq:
            raise InternalError(f"outbox assigned seq {assigned}, the message is bound to {seq}")
        self.count("channel.sent")
        count = self.outbox.count(pc.peer_id)
        pc.max_outbox = max(pc.max_outbox, count)
        pc.drained.clear()
        pc.wake()
        return header.message_id, seq

    async def send_request(
        self,
        peer: str,
        capability: str,
        params: Any = None,
        *,
        timeout: float | None = 30.0,
        content_type: str = codec.JSON,
        trace_id: str = "",
        on_behalf_of: str = "",
        delegation: pb.Delegation | None = None,
    ) -> Any:
        """Invoke ``capability`` on ``peer`` over the channel; return its result.
        Sent as given: the node's pipeline judged it before (``Node.request``).

        Raises:
            PeerNotFound: not a verified peer.
            DeadlineExceeded: no response within ``timeout`` (the request is then
                withdrawn or cancelled at the peer).
            AralError: the peer's error, rebuilt from its error response.
        """
        pc = self._send_peer(peer)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        message_id, seq = "", 0
        try:
            async with asyncio.timeout(timeout):
                await self._wait_space(pc)
                payload, compression = encode_payload(
                    params, content_type, compress_above=self.settings.compress_above
                )
                body = pb.Body(type=REQUEST, action=capability, parameters=payload)
                ttl_ms = max(1, int(timeout * 1000)) if timeout else 0
                with client_span(self.tracer, capability, peer):
                    message_id, seq = self._enqueue(
                        pc,
                        body,
                        content_type=content_type,
                        compression=compression,
                        trace_id=trace_id,
                        ttl_ms=ttl_ms,
                        on_behalf_of=on_behalf_of,
                        delegation=delegation,
                    )
                    pc.pending[message_id] = (fut, seq)
                    return await fut
        except TimeoutError:
            raise DeadlineExceeded(
                f"no response from {peer} to {capability} within {timeout}s",
                details={"peer": peer, "capability": capability},
            ) from None
        finally:
            # Cancelling the caller cancels ``fut`` too: that is not an answer.
            if message_id and (not fut.done() or fut.cancelled()):
                self._abandon(pc, message_id, seq)

    def _abandon(self, pc: PeerChannel, message_id: str, seq: int) -> None:
        """We stopped waiting: withdraw the request, or cancel it at the peer."""
        pc.pending.pop(message_id, None)
        self._withdraw(pc, seq)
        if seq <= pc.sent_max and not self.stopping:
            self.count("channel.cancel_sent")
            self._enqueue(
                pc, pb.Body(type=NOTIFICATION, action=CANCEL_EVENT, correlation_id=message_id)
            )

    async def send_notification(
        self,
        peer: str,
        event: str,
        data: Any = None,
        *,
        content_type: str = codec.JSON,
        trace_id: str = "",
        message_id: str | None = None,
    ) -> str:
        """Queue a notification for ``peer``; return its message id (``message_id``,
        or a fresh one) once it is in the outbox (committed, with ``durable``).
        Waits while the outbox is full. Sent as given: the node's pipeline judged it
        before (``Node.notify``, which names the id its audit record carries).

        Raises:
            PeerNotFound: ``peer`` is not a verified peer.
            Unimplemented: ``CHANNELS_UNSUPPORTED``, the peer serves no channels
                (requests reach it as ``Invoke``; a notification has no way there).
        """
        pc = self._send_peer(peer)
        if pc.unsupported:
            raise Unimplemented(
                f"peer {peer} serves no channels: a notification cannot reach it",
                reason="CHANNELS_UNSUPPORTED",
                details={"node_id": peer},
            )
        await self._wait_space(pc)
        payload, compression = encode_payload(
            data, content_type, compress_above=self.settings.compress_above
        )
        body = pb.Body(type=NOTIFICATION, action=event, parameters=payload)
        with client_span(self.tracer, event, peer, request=False):
            message_id, _ = self._enqueue(
                pc, body, content_type=content_type, compression=compression,
                trace_id=trace_id, message_id=message_id,
            )  # fmt: skip
        if self.turns.due():  # queued (in order), as a stream's drain: see ``Turns``
            await asyncio.sleep(0)
        return message_id

    def subscribe(
        self,
        event: str | None = None,
        *,
        peer: str | None = None,
        maxsize: int | None = None,
        overflow: Overflow = "close",
    ) -> Subscription:
        """Notifications (all, or one event name, from any or one peer) as an async
        iterator with a bounded queue (``maxsize``, default
        ``settings.subscription_queue``); ``overflow`` says what happens when it is
        full (``"close"``, ``"drop"`` or ``"backpressure"``, see ``Subscription``)."""
        sub = Subscription(
            event,
            peer,
            maxsize=maxsize or self.settings.subscription_queue,
            overflow=overflow,
            count=self.count,
            unsubscribe=self._unsubscribe,
        )
        self.subscriptions.append(sub)
        self.receiver.release()  # what a durable node held may be this one's
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self.subscriptions.remove(sub)

    def on_notification(self, event: str | None, handler: NotificationHandler) -> None:
        """Run ``handler(message, tx)`` for each notification (``event`` or all), in
        order, inside the inbox transaction that marks it handled: with
        ``durable=True`` writes through ``tx`` commit atomically with that mark
        (exactly once across crashes); in memory ``tx`` is ``None``. Keep it quick:
        it runs on the event loop. A durable node holds notifications that no
        handler or subscription takes (unacked) until one is registered: they reach
        it now, in order."""
        self.handlers.append((event, handler))
        self.receiver.release()

    def connected_peers(self) -> list[str]:
        return [p for p, pc in self.peers.items() if pc.connected]

    async def wait_connected(self, peer: str, timeout: float | None = None) -> bool:
        """Wait until a link to ``peer`` is up; False on timeout."""
        return await self.peer(peer).wait_up(timeout)

    async def flush(self, peer: str, timeout: float | None = None) -> bool:
        """Wait until ``peer`` acked everything we queued for it; False on timeout."""
        pc = self.peer(peer)
        if not self.outbox.count(peer):
            return True
        pc.drained.clear()
        return await wait_set(pc.drained, timeout)

    # -- receiving (aralnode.mesh.receiver) ---------------------------------------------

    def verify(self, pc: PeerChannel, batch: Batch) -> asyncio.Future[list[Opened]]:
        """Start verifying a batch; ``apply`` it once verified, in arrival order."""
        return self.receiver.verify(pc, batch)

    def apply(self, pc: PeerChannel, batch: Batch, opened: list[Opened]) -> list[pb.MessageError]:
        """Check, govern and dispatch a verified batch, in arrival order. Never raises."""
        return self.receiver.apply(pc, batch, opened)

    def processed(self, pc: PeerChannel, generation: int, seq: int) -> None:
        """A received message is done with (it may be acked now)."""
        if pc.inbound.processed(generation, seq):
            pc.wake()

    def reply(
        self, pc: PeerChannel, body: pb.Body, *, content_type: str, compression: str, trace_id: str
    ) -> None:
        """Queue a response to ``pc``. Responses skip the outbox limit (making them
        wait on the requester's acks could deadlock) but not the peer's response
        bound: an answer that would take its unacked responses past
        ``settings.response_bytes`` goes as a RESOURCE_EXHAUSTED error instead (and
        the receiver refuses the peer's new requests while the bound is reached)."""
        if self.peers.get(pc.peer_id) is not pc:
            return  # the peer was forgotten meanwhile: nobody is left to answer
        size = response_size(body)
        limit = self.settings.response_bytes
        if pc.response_bytes and pc.response_bytes + size > limit:
            self.count("channel.response_withheld")
            body = error_body(backlog_full(limit), body.correlation_id)
            compression = ""
            size = response_size(body)
        _, seq = self._enqueue(
            pc, body, content_type=content_type, compression=compression, trace_id=trace_id
        )
        pc.responses.append((seq, size))
        pc.response_bytes += size

    # -- lifecycle --------------------------------------------------------------------------

    def discard(self) -> None:
        """Release what a hub that never ran holds (its worker threads, its stores)."""
        self.receiver.close()
        self.outbox.close()
        if self.inbox is not cast(object, self.outbox):
            self.inbox.close()

    async def close(self, grace: float = 2.0) -> None:
        """Close every link (``close`` frame, status UNAVAILABLE/NODE_STOPPING), stop
        fail what waits, persist the receive marks (``ChannelStreams.close`` stops
        the dials first)."""
        self.stopping = True
        links = [pc.link for pc in self.peers.values() if pc.link is not None]
        for link in links:
            link.close(Unavailable("node is stopping", reason="NODE_STOPPING"))
        if links:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.gather(*(link.closed.wait() for link in links))
        await self._tasks.cancel()
        for pc in self.peers.values():
            for fut, _ in pc.pending.values():
                if not fut.done():
                    fut.set_exception(Unavailable("node is stopping", reason="NODE_STOPPING"))
            pc.pending.clear()
            pc.space.set()
            self.receiver.save(pc)
        for sub in list(self.subscriptions):
            sub.close()
        await self.receiver.aclose()
        self.outbox.close()
        if self.inbox is not cast(object, self.outbox):
            self.inbox.close()
