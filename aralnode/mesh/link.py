"""One live channel stream to a peer: its reader, deliverer and writer.

A ``Link`` moves frames between a byte stream and a ``ChannelSession`` (the sans-IO
protocol in ``aralnode.core.channel``); it knows no transport. Its frames come from
an async iterator (which raises an ``AralError`` when the stream fails) and go out
through ``write``; ``aralnode.mesh.streams`` makes both from a gRPC bidi stream. The
hub (``LinkOwner``) owns what outlives a link: the outbox, the receive marks,
pending requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.core.channel import (
    AckReceived,
    Batch,
    ChannelSession,
    Closed,
    ErrorsReceived,
    LinkState,
)
from aralnode.core.errors import AralError, InternalError, Unavailable
from aralnode.core.outbox import OutboxEntry
from aralnode.mesh.state import PeerChannel

log = get_logger("aralnode.channel")

T = TypeVar("T")
_END = object()
# Batches read and verifying ahead of the one being applied, per link.
PIPELINE_DEPTH = 4


class LinkOwner(Protocol):
    """What a link asks of the hub that owns it."""

    def verify(self, pc: PeerChannel, batch: Batch) -> asyncio.Future[list[Any]]: ...

    def apply(self, pc: PeerChannel, batch: Batch, opened: list[Any]) -> list[pb.MessageError]: ...

    def acked(self, pc: PeerChannel, seq: int) -> None: ...

    def rejected(self, pc: PeerChannel, errors: Iterable[pb.MessageError]) -> None: ...

    def detached(self, pc: PeerChannel, link: Link) -> None: ...

    def unsent(self, pc: PeerChannel, session: ChannelSession) -> bool: ...

    def outgoing(
        self, pc: PeerChannel, session: ChannelSession, room: int
    ) -> list[OutboxEntry]: ...

    def track(self, task: asyncio.Task[T]) -> asyncio.Task[T]: ...


class Link:
    """One live stream to a peer, after both opens were verified."""

    def __init__(
        self,
        hub: LinkOwner,
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
        for task in (writer, reader):  # read below; if this is cancelled first, here
            task.add_done_callback(_retrieved)
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
                self._ended_by(reader, writer)  # (before: the record says why)
                self.closed.set()
                self.hub.detached(self.peer, self)
        return self.error

    def _ended_by(self, *tasks: asyncio.Future[Any]) -> None:
        """Why the link ended (``error``), from its reader's and writer's ends."""
        for task in tasks:
            exc = task.exception() if task.done() and not task.cancelled() else None
            if isinstance(exc, AralError):
                self.error = self.error or exc
            elif exc is not None:
                log.error("channel to %s failed", self.peer.peer_id, exc_info=exc)
                self.error = self.error or InternalError(f"channel failed: {type(exc).__name__}")

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
        except AralError as exc:  # the stream itself failed (its transport said why)
            self.error = self.error or exc
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


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a finished task's exception as seen: a link cancelled while its reader
    and writer wind down never reads it, and asyncio would log a traceback for each
    (one per stream a client cancels, from review)."""
    if not task.cancelled():
        task.exception()


__all__ = ["PIPELINE_DEPTH", "Link", "LinkOwner"]
