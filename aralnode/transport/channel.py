"""The gRPC driver of A2A channels: accept and dial ``AgentNode.Channel`` streams.

Everything protocol-shaped lives in ``aralnode.core.channel`` (sans-IO); this
module moves bytes between a gRPC bidi stream and a ``ChannelSession``, runs the
writer and the keepalive timer, and redials with exponential backoff and jitter.
Frames travel as raw bytes (no grpc (de)serializer), so garbage on the stream is
our clean ``close`` with a status, never grpc's INTERNAL.

A ``Link`` is one stream; the hub (``aralnode.channels``) owns what outlives it:
the outbox, the receive marks, pending requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from aralnode import _proto as pb
from aralnode.core.channel import (
    MAX_OPEN_BYTES,
    AckReceived,
    Batch,
    ChannelSession,
    Closed,
    ErrorsReceived,
    LinkState,
    close_error,
    close_frame,
    frame_keys,
    make_open,
    parse_frame,
    read_open,
    sealed_close,
    verify_open,
)
from aralnode.core.errors import AralError, InternalError, Unavailable
from aralnode.transport.grpc_client import NodeClient, channel_options
from aralnode.transport.status import abort, from_rpc_error

if TYPE_CHECKING:
    from aralnode.channels import ChannelHub, PeerChannel

log = logging.getLogger("aralnode.channel")

Context = grpc.aio.ServicerContext[Any, Any]
CHANNEL_METHOD = f"/{pb.AGENT_NODE_SERVICE_NAME}/Channel"
# Our own gRPC channel per dial, reconnecting quickly: the redial loop does the
# backing off, grpc's own (1 s doubling to 120 s) would only add to it.
_DIAL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
_END = object()
# Batches read and verifying ahead of the one being applied, per link.
PIPELINE_DEPTH = 4
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


class Link:
    """One live stream to a peer, after both opens were verified."""

    def __init__(
        self,
        hub: ChannelHub,
        peer: PeerChannel,
        session: ChannelSession,
        write: Callable[[bytes], Awaitable[None]],
        *,
        dialler: str,
    ) -> None:
        self.hub = hub
        self.peer = peer
        self.session = session
        self._write = write
        self.dialler = dialler
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()
        self.error: AralError | None = None
        self._closing: AralError | None = None
        self._behind = 0  # batches queued for the deliverer, not yet applied
        self._room = asyncio.Event()  # set when the deliverer takes one
        self._prior: asyncio.Future[None] | None = None  # the peer's previous deliverer
        self._timer: asyncio.TimerHandle | None = None  # the writer's next timed turn

    @property
    def alive(self) -> bool:
        return not self.closed.is_set() and self.session.state is LinkState.OPEN

    def close(self, error: AralError) -> None:
        """Ask the writer to send ``close`` and end the link."""
        if self._closing is None and not self.closed.is_set():
            self._closing = error
            self.wake.set()

    async def run(self, frames: AsyncIterator[bytes], first: bytes = b"") -> AralError | None:
        """Read until the stream ends or either side closes; return why it ended
        (``None`` for a clean end). Never raises on peer input.

        ``first`` is written before anything else (the accepting side's answer):
        written here, a write that fails or is cancelled still ends the link
        closed and detached, never attached and not running."""
        writer = asyncio.ensure_future(self._writer(first))
        reader = asyncio.ensure_future(self._reader(frames))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                if not task.done():
                    task.cancel()
            try:
                await asyncio.wait({reader, writer})
            finally:
                # Even if this task is cancelled again while the two wind down (a
                # server handler's cancellation reaches it twice): a link that is
                # not marked closed and detached would count as alive forever.
                self.closed.set()
                self.hub.detached(self.peer, self)
        for task in (reader, writer):
            exc = task.exception() if not task.cancelled() else None
            if isinstance(exc, AralError):
                self.error = self.error or exc
            elif exc is not None:
                log.error("channel to %s failed", self.peer.peer_id, exc_info=exc)
                self.error = self.error or InternalError(f"channel failed: {type(exc).__name__}")
        return self.error

    async def _reader(self, frames: AsyncIterator[bytes]) -> None:
        """Read frames. A batch starts verifying (on the hub's worker threads) as it
        arrives and ``_deliverer`` applies batches in order, so verifying the next
        batches overlaps applying this one.

        Every batch the session accepted is applied, even when the link ends first:
        an accepted seq never applied would be taken for a duplicate when the peer
        resends it, and nothing behind it would ever be processed or acked. So the
        deliverer outlives a cancelled link (only the hub's stop cancels it), and
        the peer's next link applies nothing before it is done (order per channel)."""
        pc = self.peer
        self._prior = pc.delivering
        queue: asyncio.Queue[Any] = asyncio.Queue()  # at most PIPELINE_DEPTH: see _read
        deliverer = self.hub.track(asyncio.ensure_future(self._deliverer(queue)))
        pc.delivering = deliverer
        try:
            await self._read(frames, queue)
        finally:
            queue.put_nowait(_END)
        await asyncio.shield(deliverer)

    async def _read(self, frames: AsyncIterator[bytes], queue: asyncio.Queue[Any]) -> None:
        session, hub, peer, prior = self.session, self.hub, self.peer, self._prior
        try:
            async for data in frames:
                # Between ``receive`` (which accepts a batch's seqs) and the queue
                # there is no await: a cancelled reader never holds an accepted batch.
                for event in session.receive(data):
                    if isinstance(event, Batch):
                        verified = hub.verify(peer, event)
                        if verified.done() and not self._behind and (prior is None or prior.done()):
                            # Verified inline (a small batch) with nothing ahead of
                            # it: apply now, sparing a request a hop through the queue.
                            self._applied(event, verified.result())
                        else:
                            self._behind += 1
                            queue.put_nowait((event, verified))
                    elif isinstance(event, AckReceived):
                        hub.acked(peer, event.seq)
                    elif isinstance(event, ErrorsReceived):
                        hub.rejected(peer, event.errors)
                    elif isinstance(event, Closed):
                        if event.by_peer:
                            self.error = event.error
                            return
                        # The peer broke the protocol: tell it why, then end.
                        self._closing = event.error
                        self.wake.set()
                        await self.closed.wait()
                        return
                self.wake.set()
                while self._behind >= PIPELINE_DEPTH:  # read ahead no further
                    self._room.clear()
                    await self._room.wait()
        except grpc.aio.AioRpcError as err:
            self.error = self.error or from_rpc_error(err)
            return
        self.error = self.error or Unavailable("peer ended the channel", reason="CHANNEL_ENDED")

    async def _deliverer(self, queue: asyncio.Queue[Any]) -> None:
        if self._prior is not None:
            await asyncio.wait({self._prior})  # the previous link's batches first
        try:
            while (item := await queue.get()) is not _END:
                batch, verified = item
                self._applied(batch, await verified)
                self._taken()
        except Exception:  # apply never raises: this is a bug of ours
            log.exception("applying a batch from %s failed", self.peer.peer_id)
            self.close(InternalError("channel failed applying a batch"))
            while await queue.get() is not _END:  # the reader must never block on us
                self._taken()

    def _taken(self) -> None:
        self._behind -= 1
        self._room.set()

    def _applied(self, batch: Batch, opened: list[Any]) -> None:
        errors = self.hub.apply(self.peer, batch, opened)
        if errors:  # owed to the peer, not to this link, which may have ended
            self.peer.errors.extend(errors)
            self.peer.wake()

    async def _writer(self, first: bytes) -> None:
        try:
            await self._write_frames(first)
        finally:
            if self._timer is not None:
                self._timer.cancel()

    async def _write_frames(self, first: bytes) -> None:
        session, hub, peer, wake = self.session, self.hub, self.peer, self.wake
        if first:
            await self._write(first)
        while True:
            if self._closing is not None:
                self.error = self.error or self._closing
                with contextlib.suppress(Exception):
                    await self._write(session.close(self._closing))
                self.closed.set()
                return
            # Cleared before looking: whatever changes after this (a message queued,
            # an ack or credit read, a batch applied) sets it again, so a turn that
            # wrote and was not woken meanwhile has nothing more to send now.
            wake.clear()
            frames: list[bytes] = []
            if peer.errors:
                frames.append(session.errors_frame(peer.errors))
                peer.errors = []
            room = session.sendable()
            entries = hub.outgoing(peer, session, room) if room else []
            if entries:
                frames += session.batch_frames(entries)  # acks ride along
            frames += session.control_frames()
            if frames:
                for frame in frames:
                    await self._write(frame)
                # A turn sends at most one batch: go on while the outbox holds more
                # and the window has room for it.
                more = session.sendable() and hub.unsent(peer, session)
                if wake.is_set() or self._closing is not None or more:
                    continue
            keepalive = session.keepalive()
            if isinstance(keepalive, AralError):
                self._closing = keepalive
                continue
            if keepalive is not None:
                await self._write(keepalive)
                continue
            self._wake_by(session.timer() + 0.001)
            await wake.wait()

    def _wake_by(self, delay: float) -> None:
        """Make sure ``wake`` is set within ``delay`` seconds. One timer serves
        many idle turns: it is re-armed only for an earlier deadline, and a timer
        that rings early costs a turn that finds nothing to do (cheaper than a
        timer made and cancelled on every turn)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timer
        if timer is None or timer.when() > when:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(when, self._ring)

    def _ring(self) -> None:
        self._timer = None
        self.wake.set()


# -- accepting -----------------------------------------------------------------------------


def stream_write(write: Callable[[bytes], Awaitable[None]]) -> Callable[[bytes], Awaitable[None]]:
    """``write`` of either end of the stream, where a write the stream can no longer
    take ends the link like the end of the peer's frames (``CHANNEL_ENDED``), not
    as a failure of ours: grpc raises ExecuteBatchError, UsageError or AbortError
    on the accepting side, InvalidStateError or AioRpcError on the dialling one.
    An AioRpcError carries the call's status: it is kept, as the reader keeps it."""

    async def mapped(frame: bytes) -> None:
        try:
            await write(frame)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        except Exception as exc:
            raise Unavailable(
                f"the channel stream is gone ({type(exc).__name__})", reason="CHANNEL_ENDED"
            ) from None

    return mapped


async def serve(hub: ChannelHub, requests: AsyncIterator[bytes], context: Context) -> None:
    """The ``AgentNode.Channel`` handler: verify the open, answer, run the link.

    The link's writer sends with ``context.write`` directly (a generator handler
    would cost every frame a hand-off to the generator's task). A write that fails
    because the stream is gone ends the link like the end of the peer's frames.
    """

    try:
        error = await _accept(hub, requests, stream_write(context.write), context.peer())
    except AralError as exc:
        error = exc
    except Exception as exc:
        log.exception("channel accept failed")
        error = InternalError(f"channel failed: {type(exc).__name__}")
    if error is not None and error.reason not in _QUIET_ENDS:
        await abort(context, error)


# Ends that are not the peer's fault: the stream just stops, with status OK.
_QUIET_ENDS = ("CHANNEL_ENDED", "NODE_STOPPING", "CHANNEL_SUPERSEDED")


async def _accept(
    hub: ChannelHub,
    requests: AsyncIterator[bytes],
    write: Callable[[bytes], Awaitable[None]],
    transport_peer: str,
) -> AralError | None:
    frames = aiter(requests)
    try:
        first = await asyncio.wait_for(anext(frames), hub.open_timeout)
    except StopAsyncIteration:
        return None
    except TimeoutError:
        error: AralError = Unavailable("no channel open within the timeout", reason="OPEN_TIMEOUT")
        await write(close_frame(error))
        return error
    try:
        content = verify_open(
            read_open(first),
            my_id=hub.node_id,
            keyring=hub.keyring,
            replay=hub.replay,
            is_verified=hub.is_verified,
        )
        # Decided before anything changes: a refused open leaves a live link alone.
        accepted = hub.accept_link(hub.peer(content.sender), content, write)
        if isinstance(accepted, AralError):
            raise accepted
    except AralError as exc:
        hub.count("channel.open_rejected")
        log.info("refused channel open from %s: %s", transport_peer, exc)
        await write(close_frame(exc))
        return exc
    link, answer = accepted
    return await link.run(frames, first=answer)


# -- dialling ------------------------------------------------------------------------------


async def dial_forever(hub: ChannelHub, peer: PeerChannel, address: str) -> None:
    """Keep a channel to ``peer`` open: dial, run, and on failure redial after
    exponential backoff with full jitter. Returns when the hub stops."""
    delay = hub.backoff_initial
    while not hub.stopping:
        if peer.link is not None and peer.link.alive:
            await peer.wait_down()
            delay = hub.backoff_initial
            continue
        try:
            link_ran, error = await _dial_once(hub, peer, address)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("dialling %s failed", peer.peer_id)
            link_ran, error = False, InternalError(f"dial failed: {type(exc).__name__}")
        if hub.stopping:
            return
        if error is not None and error.reason == "UNIMPLEMENTED":
            peer.unsupported = True
            log.warning("peer %s does not serve channels: %s", peer.peer_id, error.message)
            return
        if not link_ran and error is None:
            continue  # the peer's own dial got through first
        if link_ran:
            delay = hub.backoff_initial
        log.info("channel to %s down (%s); redial in ~%.2fs", peer.peer_id, error, delay)
        # Full jitter (AWS architecture blog): peers that lost each other at the
        # same moment do not redial in lockstep.
        await peer.wait_up(delay * (0.5 + random.random()))  # noqa: S311 - jitter, not crypto
        delay = min(delay * 2, hub.backoff_max)


async def _dial_once(
    hub: ChannelHub, peer: PeerChannel, address: str
) -> tuple[bool, AralError | None]:
    channel = grpc.aio.insecure_channel(
        address, options=channel_options(hub.max_message_bytes) + _DIAL_OPTIONS
    )
    call: Any = None
    try:
        # A fresh handshake every dial: the peer may have restarted and forgotten
        # our key, and a channel open is accepted only from a pinned key.
        client = NodeClient(
            address,
            identity=hub.identity,
            keyring=hub.keyring,
            clock=hub.clock,
            channel=channel,
            max_message_bytes=hub.max_message_bytes,  # as on the channel's options
        )
        # Pins the peer's key in the node's ring (the client was given it).
        await client.handshake(hub.card(), expected_node_id=peer.peer_id, timeout=hub.open_timeout)
        if peer.connected:
            return False, None  # the peer dialled us meanwhile: one stream is enough
        stub: Any = channel.stream_stream(
            CHANNEL_METHOD, request_serializer=None, response_deserializer=None
        )
        call = stub()
        params = hub.open_params(peer)  # no side effect until the link is kept
        sent = make_open(hub.identity, recipient=peer.peer_id, clock=hub.clock, params=params)
        peer.open_sent = True
        try:
            await call.write(sent.frame)
            try:
                first = await asyncio.wait_for(call.read(), hub.open_timeout)
            except TimeoutError:
                return False, Unavailable(
                    "peer did not answer the channel open", reason="OPEN_TIMEOUT"
                )
            if first is _EOF:
                return False, Unavailable(
                    "peer ended the channel before answering", reason="CHANNEL_ENDED"
                )
            frame = parse_frame(first, MAX_OPEN_BYTES + 1024)
            if frame.WhichOneof("kind") == "close":
                return False, close_error(frame.close)
            content = verify_open(
                read_open(first),
                my_id=hub.node_id,
                keyring=hub.keyring,
                replay=hub.replay,
                # This very dial verified the peer's card in its handshake.
                is_verified=lambda node_id: node_id == peer.peer_id,
                expected_sender=peer.peer_id,
                answer_to=sent.nonce,
            )
            write = stream_write(call.write)
            link = hub.establish(peer, content, sent, params, write, dialler=hub.node_id)
        finally:
            peer.open_sent = False
        if isinstance(link, AralError):
            # A link the peer dialled won meanwhile; tell the peer (sealed: the
            # session keys exist) and leave the live link alone.
            seal = frame_keys(sent, content, dialler=True)
            superseded = Unavailable("superseded", reason="CHANNEL_SUPERSEDED")
            await write(sealed_close(seal, superseded))
            return False, link

        async def frames() -> AsyncIterator[bytes]:
            while True:
                data = await call.read()
                if data is _EOF:
                    return
                yield data

        error = await link.run(frames())
        with contextlib.suppress(Exception):
            await call.done_writing()
        return True, error
    except grpc.aio.AioRpcError as err:
        return False, from_rpc_error(err)
    except AralError as exc:
        return False, exc
    except OSError as exc:
        return False, Unavailable(f"cannot reach {address}: {exc}")
    finally:
        if call is not None:
            call.cancel()
        with contextlib.suppress(Exception):
            await channel.close(grace=None)


__all__ = ["CHANNEL_METHOD", "Link", "dial_forever", "serve"]
