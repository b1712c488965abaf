"""The receive path of the channel hub: verify, check, govern and dispatch batches.

The hub's receiving half (``ReceiverHost`` is what it asks of the hub). A peer's
request runs the node's pipeline as a call like any door's (``door="channel"``,
its context from the ``ContextBuilder``); a notification goes through the
pipeline's message stages (``Direction.RECEIVE``) before it reaches handlers and
subscriptions. Every message of a batch ends *processed*
exactly once whatever happens to it -- delivered, refused with a per-message error,
or failed on our side (an exception in a governance rule, a handler, the inbox
transaction) -- so one bad message can never stall a peer's channel: the processed
prefix (what the ack says) always moves on.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.core import codec
from aralnode.core.channel import Batch
from aralnode.core.clock import Clock
from aralnode.core.context import clean_trace_id
from aralnode.core.envelope import (
    OpenedMessage,
    encode_payload,
    error_body,
    open_message,
    remote_error,
)
from aralnode.core.errors import (
    AralError,
    DeadlineExceeded,
    InternalError,
    KeyMismatch,
    MalformedMessage,
    ReplayDetected,
    Unauthenticated,
)
from aralnode.core.governance import Direction
from aralnode.core.identity import KeyRing
from aralnode.core.outbox import InboundRecord
from aralnode.mesh.state import (
    ChannelMessage,
    ChannelSettings,
    Delivery,
    NotificationHandler,
    PeerChannel,
    Subscription,
    backlog_full,
    message_error,
)
from aralnode.mesh.verifier import Checked, Verifier, checked
from aralnode.service.context import ContextBuilder
from aralnode.service.pipeline import Pipeline
from aralnode.service.refusals import refused
from aralnode.service.tracing import logged_as
from aralnode.store.base import Inbox

T = TypeVar("T")
log = get_logger("aralnode.channel")

REQUEST = pb.MessageType.MESSAGE_TYPE_REQUEST
RESPONSE = pb.MessageType.MESSAGE_TYPE_RESPONSE
NOTIFICATION = pb.MessageType.MESSAGE_TYPE_NOTIFICATION
# A notification whose correlation id names a request the sender gave up on.
CANCEL_EVENT = "aral.cancel"
# Batches at least this large have their signatures checked beside the event
# loop: by the helper processes (``aralnode.mesh.verifier``, no GIL shared), or
# until they run, on worker threads (ECDSA releases the GIL); below it the hop
# costs more latency than it saves.
PARALLEL_VERIFY_MIN = 16


class _Withdrawn:
    """A tombstone: a message its sender withdrew (an empty ``ARALMessage``)."""


WITHDRAWN = _Withdrawn()
Opened = OpenedMessage | AralError | _Withdrawn


async def _joined(chunks: list[asyncio.Future[list[Opened]]]) -> list[Opened]:
    return [item for chunk in await asyncio.gather(*chunks) for item in chunk]


def _failure(exc: Exception) -> AralError:
    return exc if isinstance(exc, AralError) else InternalError(f"failed: {type(exc).__name__}")


class ReceiverHost(Protocol):
    """What the receiver asks of the hub it belongs to."""

    node_id: str
    keyring: KeyRing
    clock: Clock
    inbox: Inbox
    settings: ChannelSettings
    max_message_bytes: int
    pipeline: Pipeline
    contexts: ContextBuilder
    handlers: list[tuple[str | None, NotificationHandler]]
    subscriptions: list[Subscription]
    peers: dict[str, PeerChannel]

    def count(self, name: str, n: int = 1) -> None: ...

    def track(self, task: asyncio.Task[T]) -> asyncio.Task[T]: ...

    def processed(self, pc: PeerChannel, generation: int, seq: int) -> None: ...

    def reply(
        self, pc: PeerChannel, body: pb.Body, *, content_type: str, compression: str, trace_id: str
    ) -> None: ...


class Receiver:
    """What happens to a peer's batch once the session accepted it."""

    def __init__(self, hub: ReceiverHost) -> None:
        self.hub = hub
        threads = hub.settings.verify_threads
        self._executor = (
            ThreadPoolExecutor(threads, thread_name_prefix="aral-verify") if threads > 0 else None
        )
        self._helpers = Verifier(hub.settings.verify_processes)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._helpers.close()

    async def aclose(self) -> None:
        """``close``, and the helper processes ended (bounded)."""
        self.close()
        await self._helpers.aclose()

    @property
    def helpers(self) -> Verifier:
        """The signature helper processes (``aralnode.mesh.verifier``)."""
        return self._helpers

    # -- verification (thread-safe: no hub state) --

    def _open_one(self, peer: str, message: pb.ARALMessage, found: Checked = None) -> Opened:
        hub = self.hub
        try:
            if not message.content and not message.HasField("signature"):
                return WITHDRAWN
            if message.HasField("signature") and message.signature.key_id != peer:
                raise KeyMismatch(
                    f"message on the channel from {peer} is signed by {message.signature.key_id!r}"
                )
            return open_message(
                message,
                keyring=hub.keyring,
                replay=None,  # channel dedupe is by authenticated seq and recent ids
                require_signature=not hub.settings.allow_unsigned,
                max_bytes=hub.max_message_bytes,
                expected_recipient=hub.node_id,
                checked=found,
            )
        except AralError as exc:
            return exc
        except Exception as exc:  # never let peer input raise out of the channel
            return MalformedMessage(f"message could not be read: {type(exc).__name__}")

    def _open_many(self, peer: str, messages: list[pb.ARALMessage]) -> list[Opened]:
        return [self._open_one(peer, m) for m in messages]

    async def _open_helped(self, peer: str, messages: list[pb.ARALMessage]) -> list[Opened]:
        """Open ``messages``, their signatures checked by the helper processes; on
        the worker threads if the helpers cannot (``aralnode.mesh.verifier``)."""
        try:
            found = await checked(self._helpers, self.hub.keyring, peer, messages)
        except Exception:  # a bug of ours: the batch is still opened, never dropped
            log.exception("checking signatures from %s in helper processes failed", peer)
            found = None
        if found is None:
            threaded = self._threaded(peer, messages)
            return await threaded if threaded is not None else self._open_many(peer, messages)
        self.hub.count("channel.helper_checked", len(found) - found.count(None))
        return [self._open_one(peer, m, c) for m, c in zip(messages, found, strict=True)]

    def _threaded(
        self, peer: str, messages: list[pb.ARALMessage]
    ) -> asyncio.Future[list[Opened]] | None:
        """``messages`` opened on the worker threads (``None``: there are none)."""
        if self._executor is None:
            return None
        loop = asyncio.get_running_loop()
        size = -(-len(messages) // self.hub.settings.verify_threads)
        try:
            chunks = [
                loop.run_in_executor(self._executor, self._open_many, peer, messages[i : i + size])
                for i in range(0, len(messages), size)
            ]
        except RuntimeError:  # the worker threads are gone (shutting down)
            return None
        return asyncio.ensure_future(_joined(chunks))

    def verify(self, pc: PeerChannel, batch: Batch) -> asyncio.Future[list[Opened]]:
        """Start verifying ``batch``; its opened messages, in order, as a future.
        Large batches go to the helper processes (or worker threads) at once, so a
        link can read and verify the next batches while an earlier one is applied."""
        peer, messages = pc.peer_id, batch.messages
        if len(messages) >= PARALLEL_VERIFY_MIN:
            if self._helpers.available():
                return asyncio.ensure_future(self._open_helped(peer, messages))
            threaded = self._threaded(peer, messages)
            if threaded is not None:
                return threaded
        inline: asyncio.Future[list[Opened]] = asyncio.get_running_loop().create_future()
        inline.set_result(self._open_many(peer, messages))
        return inline

    # -- one batch --

    def apply(self, pc: PeerChannel, batch: Batch, opened: list[Opened]) -> list[pb.MessageError]:
        """Check, govern and dispatch a batch ``verify`` opened. Batches must be
        applied in the order they arrived; never raises."""
        hub = self.hub
        messages, first, gen = batch.messages, batch.first_seq, batch.generation
        inbound = pc.inbound
        if gen != inbound.generation:
            return []  # the peer's epoch changed while we verified
        if hub.peers.get(pc.peer_id) is not pc:
            return []  # the peer was forgotten (its link closing): nothing to serve
        errors: list[pb.MessageError] = []
        notes: list[tuple[int, ChannelMessage]] = []
        epoch, now = inbound.record.epoch, hub.clock.now_ms()
        for i, item in enumerate(opened):
            seq = first + i
            try:
                note = self._one(pc, seq, epoch, now, item)
            except Exception as exc:
                if isinstance(exc, AralError):
                    hub.count("channel.refused")
                else:
                    hub.count("channel.deliver_failed")
                    log.exception("delivering message %d from %s failed", seq, pc.peer_id)
                errors.append(message_error(seq, messages[i], _failure(exc)))
                inbound.processed(gen, seq)
                continue
            if note is None:
                inbound.processed(gen, seq)
            else:
                notes.append((seq, note))
        if notes and hub.inbox.durable:
            notes = self._hold(pc, gen, notes)
        if notes:
            self._notify_local(pc, gen, notes, errors)
        elif hub.inbox.durable:
            self.save(pc)
        hub.count("channel.received", len(messages))
        hub.count("channel.batches")
        if errors:
            hub.count("channel.rejected", len(errors))
        pc.wake()
        return errors

    def _one(
        self, pc: PeerChannel, seq: int, epoch: str, now: int, item: Opened
    ) -> ChannelMessage | None:
        """Handle one message: a notification to dispatch, or ``None`` once done
        with it. Raises for a per-message error."""
        if isinstance(item, _Withdrawn):
            self.hub.count("channel.withdrawn")
            return None
        if isinstance(item, AralError):
            raise self._refused(pc, item)
        peer = pc.peer_id
        header, body = item.header, item.body
        if header.sender != peer:
            raise self._refused(
                pc, KeyMismatch(f"message from {header.sender!r} on the channel of {peer}")
            )
        binding = header.channel
        if binding.epoch != epoch or binding.seq != seq:
            raise self._refused(
                pc,
                Unauthenticated(
                    f"message is bound to seq {binding.seq} of epoch {binding.epoch!r}, "
                    f"but arrived as seq {seq} of epoch {epoch!r}",
                    reason="CHANNEL_BINDING_MISMATCH",
                ),
            )
        if not pc.recent.add(header.message_id):
            raise self._refused(
                pc,
                ReplayDetected(
                    f"message {header.message_id!r} from {peer} was already received",
                    details={"message_id": header.message_id, "sender": peer},
                ),
            )
        kind = body.type
        if kind == RESPONSE:
            self._response(pc, item)
            return None
        if kind == REQUEST:
            limit = self.hub.settings.response_bytes
            if pc.response_bytes >= limit:
                # It left that much of our answers unacked: no more, until it acks
                # (a per-message error, kept nowhere but in the next errors frame).
                self.hub.count("channel.response_backlog_full")
                raise self._refused(pc, backlog_full(limit))
            self._request(pc, item, now)
            return None
        if kind == NOTIFICATION:
            return self._notification(pc, item, seq, now)
        raise self._refused(
            pc, MalformedMessage(f"unknown message type {kind}", reason="BAD_MESSAGE_TYPE")
        )

    def _refused(self, pc: PeerChannel, error: AralError) -> AralError:
        """``error`` (to raise), audited: a message of ``pc``'s refused before the
        pipeline judged it (``service.refusals``)."""
        ctx = self.hub.contexts.channel(pc.peer_id, _NO_HEADER, signed=False)
        return refused(
            self.hub.pipeline, ctx, CHANNEL_ACTION, error,
            direction=Direction.RECEIVE, peer=pc.peer_id, kind="message",
        )  # fmt: skip

    def _request(self, pc: PeerChannel, item: OpenedMessage, now: int) -> None:
        """Start serving a request; one that cannot even start is answered with its
        error (the requester sees why, rather than a timeout)."""
        hub, header = self.hub, item.header
        try:
            _check_alive(header, now)
            params = item.parameters(hub.max_message_bytes)
        except Exception as exc:
            if isinstance(exc, AralError):
                hub.count("channel.refused")
                self._refused(pc, exc)
            else:
                hub.count("channel.deliver_failed")
                log.exception("reading request %s from %s failed", header.message_id, pc.peer_id)
            self._reply(pc, header, error_body(_failure(exc), header.message_id), _trace_id(header))
            return
        self._serve(pc, item, params)

    def _notification(
        self, pc: PeerChannel, item: OpenedMessage, seq: int, now: int
    ) -> ChannelMessage | None:
        """A notification, judged (``Direction.RECEIVE``) and ready to dispatch;
        ``None`` for a cancel. Raises for a per-message error."""
        hub, peer = self.hub, pc.peer_id
        header, body = item.header, item.body
        try:
            _check_alive(header, now)
            if body.action == CANCEL_EVENT:
                task = pc.running.get(body.correlation_id)
                if task is not None:
                    task.cancel()
                return None
            data = item.parameters(hub.max_message_bytes)
        except AralError as exc:
            self._refused(pc, exc)
            raise
        ctx = hub.contexts.channel(peer, header, signed=item.signed)
        data = hub.pipeline.judge_message(
            ctx, body.action, data, direction=Direction.RECEIVE, peer=peer
        )
        return ChannelMessage(
            peer,
            body.action,
            data,
            header.message_id,
            seq,
            ctx.trace_id,
            item.signed,
            header.timestamp_unix_ms,
        )

    def _notify_local(
        self,
        pc: PeerChannel,
        gen: int,
        notes: list[tuple[int, ChannelMessage]],
        errors: list[pb.MessageError],
    ) -> None:
        """Transactional handlers (one inbox transaction, a savepoint per handler
        call), then subscriptions."""
        hub = self.hub
        inbound = pc.inbound
        handlers = hub.handlers
        if handlers:
            inbox = hub.inbox
            record = inbound.record
            handled = record.handled_seq
            try:
                with inbox.transaction() as tx:
                    for seq, msg in notes:
                        if seq <= handled:
                            continue  # ran before a restart; its effects are committed
                        for event, handler in handlers:
                            if event is None or event == msg.event:
                                try:  # (its lines name its message's trace)
                                    with logged_as(msg.trace_id), inbox.savepoint():
                                        handler(msg, tx)  # its writes go if it fails
                                except Exception:
                                    hub.count("channel.handler_failed")
                                    log.exception("notification handler for %s failed", msg.event)
                        handled = seq
                    snap = inbound.snapshot()
                    inbox.save(pc.peer_id, InboundRecord(snap.epoch, snap.processed_seq, handled))
            except Exception as exc:
                # The transaction itself failed (disk full, I/O error): nothing of
                # it was committed; report each message rather than stall.
                hub.count("channel.inbox_failed", len(notes))
                log.exception("inbox transaction for %s failed", pc.peer_id)
                error = InternalError(f"could not record the message: {type(exc).__name__}")
                for seq, msg in notes:
                    err = error_body(error, msg.message_id).error
                    errors.append(pb.MessageError(seq=seq, message_id=msg.message_id, error=err))
                    inbound.processed(gen, seq)
                return
            record.handled_seq = handled  # only once committed
        elif hub.inbox.durable:
            self.save(pc)
        subs = tuple(hub.subscriptions)
        for seq, msg in notes:
            delivery = Delivery(msg, _done(hub, pc, gen, seq))
            matched = False
            for sub in subs:
                if sub.matches(msg.peer, msg.event):
                    matched = True
                    if not sub._put(delivery):
                        delivery.remaining += 1
            if not delivery.remaining:
                if not matched and not handlers:
                    hub.count("channel.unrouted")
                inbound.processed(gen, seq)

    def _taken(self, msg: ChannelMessage) -> bool:
        """Whether a handler or a subscription takes ``msg``."""
        hub = self.hub
        return any(e is None or e == msg.event for e, _ in hub.handlers) or any(
            sub.matches(msg.peer, msg.event) for sub in hub.subscriptions
        )

    def _hold(
        self, pc: PeerChannel, gen: int, notes: list[tuple[int, ChannelMessage]]
    ) -> list[tuple[int, ChannelMessage]]:
        """The leading notes someone takes; the rest are held (unprocessed, so
        unacked): a durable node never acks what no handler took. Once one is
        held, those behind it wait too, so that order (and the handled mark, one
        seq per peer) is kept."""
        held = pc.held
        if held and held[0][0] != gen:
            held.clear()  # the peer's epoch changed: it abandoned those
        taken = 0
        if not held:
            untaken = (i for i, (_, msg) in enumerate(notes) if not self._taken(msg))
            taken = next(untaken, len(notes))
        if taken < len(notes):
            if not held:
                # A warning: the peer's channel stalls behind it (its credit).
                log.warning(
                    "holding notifications from %s: no handler or subscription takes %r"
                    " (unacked until one is registered)",
                    pc.peer_id,
                    notes[taken][1].event,
                )
            held.extend((gen, seq, msg) for seq, msg in notes[taken:])
            self.hub.count("channel.held", len(notes) - taken)
        return notes[:taken]

    def release(self) -> None:
        """A handler or subscription was registered: deliver what was held for it
        (and what waits behind it), in order; what still has no taker stays held."""
        for pc in list(self.hub.peers.values()):
            if not pc.held:
                continue
            gen = pc.inbound.generation
            notes = [(seq, msg) for g, seq, msg in pc.held if g == gen]
            pc.held = []
            errors: list[pb.MessageError] = []
            notes = self._hold(pc, gen, notes)
            if notes:
                self._notify_local(pc, gen, notes, errors)
            pc.errors.extend(errors)  # the next link up tells the peer
            pc.wake()  # the ack may move on

    def save(self, pc: PeerChannel) -> None:
        """Persist the receive marks (durable inbox); a failure is logged, and the
        marks are written again with the next batch."""
        hub = self.hub
        if not hub.inbox.durable:
            return
        try:
            hub.inbox.save(pc.peer_id, pc.inbound.snapshot())
        except Exception:
            hub.count("channel.inbox_failed")
            log.exception("saving the receive marks of %s failed", pc.peer_id)

    # -- responses and requests --

    def _response(self, pc: PeerChannel, opened: OpenedMessage) -> None:
        body = opened.body
        pending = pc.pending.pop(body.correlation_id, None)
        if pending is None:
            self.hub.count("channel.response_unmatched")
            return
        fut = pending[0]
        if fut.done():
            return
        if body.HasField("error"):
            fut.set_exception(remote_error(body.error))
            return
        try:
            fut.set_result(opened.result(self.hub.max_message_bytes))
        except Exception as exc:
            fut.set_exception(_failure(exc))

    def _serve(self, pc: PeerChannel, opened: OpenedMessage, params: Any) -> None:
        header = opened.header
        if header.message_id in pc.running:
            return
        task = self.hub.track(asyncio.ensure_future(self._run_request(pc, opened, params)))
        pc.running[header.message_id] = task

    async def _run_request(self, pc: PeerChannel, opened: OpenedMessage, params: Any) -> None:
        hub = self.hub
        header, body = opened.header, opened.body
        ctx = hub.contexts.channel(pc.peer_id, header, signed=opened.signed, address=pc.address)
        content_type = header.content_type or codec.JSON
        try:
            value = await hub.pipeline.invoke(ctx, body.action, params)
            try:
                payload, compression = encode_payload(
                    value,
                    content_type,
                    compress_above=hub.settings.compress_above,
                    limit=hub.max_message_bytes,
                )
            except (TypeError, ValueError) as exc:
                raise InternalError(f"result of {body.action} cannot be encoded: {exc}") from None
            reply = pb.Body(
                type=RESPONSE, action=body.action, result=payload, correlation_id=header.message_id
            )
        except Exception as exc:
            if not isinstance(exc, AralError):
                hub.count("channel.deliver_failed")
                log.exception("serving request %s from %s failed", header.message_id, pc.peer_id)
            reply, compression = error_body(_failure(exc), header.message_id), ""
        except asyncio.CancelledError:
            # Cancelled by the requester (it stopped waiting) or by our shutdown.
            hub.count("channel.cancelled")
            return
        finally:
            pc.running.pop(header.message_id, None)
        self._reply(pc, header, reply, ctx.trace_id, compression)

    def _reply(
        self,
        pc: PeerChannel,
        header: pb.Header,
        body: pb.Body,
        trace_id: str,
        compression: str = "",
    ) -> None:
        """Answer the request ``header`` heads, under the trace id it was served with."""
        self.hub.reply(
            pc,
            body,
            content_type=header.content_type or codec.JSON,
            compression=compression,
            trace_id=trace_id,
        )


# What a message refused before the pipeline judged it is audited as (``_refused``):
# the channel itself, as its own words are not yet to be believed.
CHANNEL_ACTION = f"{pb.AGENT_NODE_SERVICE_NAME}/Channel"
_NO_HEADER = pb.Header()


def _check_alive(header: pb.Header, now: int) -> None:
    if header.ttl_ms and header.timestamp_unix_ms + header.ttl_ms < now:
        raise DeadlineExceeded("message expired before it was delivered")


def _done(hub: ReceiverHost, pc: PeerChannel, generation: int, seq: int) -> Any:
    def done() -> None:
        hub.processed(pc, generation, seq)

    return done


def _trace_id(header: pb.Header) -> str:
    """A peer message's trace id, cleaned as every door's is (its own id if none).
    Made once per message: an unsafe one is replaced by a fresh id each time."""
    return clean_trace_id(header.trace_id or header.message_id)


__all__ = ["CANCEL_EVENT", "CHANNEL_ACTION", "NOTIFICATION", "REQUEST", "RESPONSE", "Receiver"]
