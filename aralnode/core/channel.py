"""The A2A channel protocol, sans-IO: opens, session MACs, sequence numbers, acks,
credit, keepalive.

One long-lived bidirectional stream per peer pair carries ``ChannelFrame``s. Each
side is the *sender* of its own messages and the *receiver* of the other side's::

    dialler                                   acceptor
      open(epoch, resume_after, window, ek) ──▶   verify (pinned key, fresh, unique nonce)
                                            ◀──  open(epoch, resume_after, window, ek, answer_to)
      ─── from here on every frame is sealed: SealedFrame{body, mac} ───
      batch(first_seq, [ARALMessage…])      ──▶   seq <= accepted: duplicate, dropped
                                            ◀──  ack(seq)  (cumulative; or riding on a batch)
      ping(id)                              ──▶
                                            ◀──  pong(id)  (the newest ping's: one owed at most)
      close(status, reason)                 ──▶   (either side, then the stream ends)

**Session binding.** Each signed open carries a fresh X25519 public key (``ek``).
Both sides derive two direction keys with HKDF-SHA256 from the X25519 shared
secret, salted with a hash of both node ids, both open nonces and both ephemeral
keys; every later frame is ``SealedFrame{body, mac}`` where ``mac`` is the
ChaCha20-Poly1305 tag over ``body`` (associated data, empty plaintext) under the
sender's direction key and nonce = the count of frames it sealed before. So only
the two holders of the ephemeral private keys can speak on the stream: a replayed
open is answered, but its replayer cannot produce a single valid frame; and a
frame forged, replayed, dropped or reordered fails the next MAC check, which
closes the link (``UNAUTHENTICATED`` / ``FRAME_MAC_INVALID``).

**Sequence numbers** count per (sender outbox epoch, peer), are dense and only
grow (a withdrawn message travels as an empty ``ARALMessage``, a tombstone). On a
link the first batch starts at most one past what the receiver accepted and each
later batch right after the previous one; an ack beyond what was sent, or a batch
that skips or goes back, closes the link. The receiver keeps, per peer and across
links, the highest sequence number it *accepted* (handed to processing) and the
highest one *processed*; the ack says the latter. Credit is a count: a sender keeps
at most ``window`` messages sent but unacked, so a slow consumer stops the sender
and memory stays bounded on both sides (a receiver closes a link that exceeds
twice its window). A resend after a reconnect starts right after the receiver's
``resume_after``; what was accepted but not yet processed is dropped as a
duplicate and acked once processing finishes.

Nothing here does I/O or reads a clock by itself: ``ChannelSession.receive`` takes
bytes and returns events, the ``*_frame(s)`` methods return bytes to write (the
h11 pattern). Frames must be written in the order they were produced (the MAC
counter).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from aralnode import _proto as pb
from aralnode.core.channel_wire import (
    ACK_DELAY,
    DEFAULT_MAX_BATCH,
    DEFAULT_WINDOW,
    EPHEMERAL_KEY_BYTES,
    MAX_KEEPALIVE_MS,
    MAX_OPEN_BYTES,
    MAX_SEQ,
    MIN_KEEPALIVE_MS,
    FrameSeal,
    OpenParams,
    SentOpen,
    close_error,
    close_frame,
    encode_batch,
    encode_sealed,
    frame_keys,
    make_open,
    parse_frame,
    read_open,
    sealed_close,
    verify_open,
)
from aralnode.core.clock import Clock
from aralnode.core.errors import (
    AralError,
    MalformedMessage,
    RateLimited,
    StatusCode,
    Unauthenticated,
    error_from_status,
)
from aralnode.core.outbox import InboundRecord, OutboxEntry

__all__ = [
    "ACK_DELAY",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_WINDOW",
    "EPHEMERAL_KEY_BYTES",
    "MAX_KEEPALIVE_MS",
    "MAX_OPEN_BYTES",
    "MAX_SEQ",
    "MIN_KEEPALIVE_MS",
    "AckReceived",
    "Batch",
    "ChannelSession",
    "Closed",
    "ErrorsReceived",
    "Event",
    "FrameSeal",
    "Inbound",
    "LinkState",
    "OpenParams",
    "RecentIds",
    "SentOpen",
    "close_error",
    "close_frame",
    "encode_batch",
    "encode_sealed",
    "frame_keys",
    "make_open",
    "parse_frame",
    "read_open",
    "sealed_close",
    "verify_open",
]


# -- the receive side, per peer ------------------------------------------------------------


class Inbound:
    """A receiver's view of one peer's sequence numbers; outlives links.

    ``accept`` takes a batch's range and says which part is new; each new seq is
    *pending* until ``processed`` is called for it (in any order). The processed
    mark is the contiguous prefix: what the ack says. ``unacked`` counts accepted
    messages the peer has not seen acked (what its credit counts).
    """

    __slots__ = ("_accepted", "_done", "_pending", "acked", "generation", "record", "window")

    def __init__(self, record: InboundRecord, window: int = DEFAULT_WINDOW) -> None:
        self.record = record
        self.window = window
        self.generation = 0
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.acked = record.processed_seq
        self._accepted = record.processed_seq

    @property
    def accepted_seq(self) -> int:
        return self._accepted

    @property
    def processed_seq(self) -> int:
        return self._pending[0] - 1 if self._pending else self._accepted

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def unacked(self) -> int:
        return self._accepted - self.acked

    def start(self, epoch: str, first_unacked: int = 0) -> bool:
        """A new link: the peer's outbox epoch and its first unacked seq. True if
        the epoch changed (numbering restarts)."""
        changed = epoch != self.record.epoch
        if changed:
            self.record = InboundRecord(epoch, 0, 0)
            self.generation += 1
            self._pending.clear()
            self._done.clear()
            self._accepted = self.acked = 0
        floor = min(first_unacked, MAX_SEQ) - 1
        if floor > self._accepted and not self._pending:
            # The peer dropped everything below: we acked it before we lost our
            # mark (a restart without durable state, a commit lost to power).
            self._accepted = self.acked = floor
            self.record.handled_seq = max(self.record.handled_seq, floor)
        return changed

    def accept(self, first_seq: int, count: int) -> int:
        """Register ``first_seq .. first_seq+count-1``; return how many leading ones
        were already accepted (duplicates of a resend)."""
        skip = max(0, min(count, self._accepted - first_seq + 1))
        if skip < count:
            self._pending.extend(range(first_seq + skip, first_seq + count))
            self._accepted = first_seq + count - 1
        return skip

    def processed(self, generation: int, seq: int) -> bool:
        """Mark one seq processed; True if the processed prefix moved."""
        if generation != self.generation:
            return False  # a message of an epoch the peer has since abandoned
        pending = self._pending
        if not pending:
            return False
        if seq != pending[0]:
            self._done.add(seq)
            return False
        pending.popleft()
        done = self._done
        while pending and pending[0] in done:
            done.discard(pending.popleft())
        return True

    def snapshot(self) -> InboundRecord:
        """The marks to persist (and to state in an open). No side effect."""
        rec = self.record
        return InboundRecord(rec.epoch, self.processed_seq, rec.handled_seq)

    def resumed(self, stated: InboundRecord) -> None:
        """A link starts on which our open stated ``stated``: the peer takes its
        ``resume_after`` as our ack (and grants a fresh window from there)."""
        same = stated.epoch == self.record.epoch
        self.acked = min(stated.processed_seq, self.processed_seq) if same else 0

    def ack_due(self) -> int:
        """Processed messages not yet acked."""
        return self.processed_seq - self.acked

    def take_ack(self) -> int:
        """The seq to ack now; marks it sent."""
        seq = self.acked = self.processed_seq
        return seq


class RecentIds:
    """The last ``capacity`` message ids of one peer: (sender, message id) dedupe
    for channel traffic without the node-wide replay cache (whose capacity one
    fast peer could otherwise exhaust for every door)."""

    __slots__ = ("_order", "_seen", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, message_id: str) -> bool:
        """Remember ``message_id``; False if it is among the remembered ones."""
        if message_id in self._seen:
            return False
        self._seen.add(message_id)
        self._order.append(message_id)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
        return True


# -- one link ------------------------------------------------------------------------------


class LinkState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"


@dataclass(slots=True)
class Batch:
    """New messages (duplicates already dropped); seq of messages[i] is first_seq + i."""

    first_seq: int
    messages: list[pb.ARALMessage]
    generation: int


@dataclass(slots=True)
class AckReceived:
    seq: int


@dataclass(slots=True)
class ErrorsReceived:
    errors: list[pb.MessageError]


@dataclass(slots=True)
class Closed:
    """The link is over: the peer closed (``by_peer``) or broke the protocol."""

    error: AralError
    by_peer: bool


Event = Batch | AckReceived | ErrorsReceived | Closed


def _protocol_error(message: str, reason: str) -> MalformedMessage:
    return MalformedMessage(message, reason=reason)


class ChannelSession:
    """One link (one gRPC stream) after both opens were exchanged and verified.

    Building it has no side effect on ``inbound``: the hub calls
    ``inbound.resumed`` / ``inbound.start`` once it decided to keep the link.

    Args:
        peer_open: The peer's verified open content.
        params: What we stated in our open.
        inbound: The receive state for this peer (shared across its links).
        seal: The link's frame keys (``frame_keys``).
        clock: Injected clock (``monotonic`` for keepalive).
        timeout_ms: Extra silence tolerated beyond the peer's keepalive before the
            link counts as dead.
        max_frame_bytes: Largest frame accepted.
        sent_limit: Highest seq we may ever have sent to this peer: a
            ``resume_after`` beyond it is clamped (the peer cannot have processed
            what we never sent, and taking it as an ack would drop unsent messages).
    """

    def __init__(
        self,
        *,
        peer_open: pb.ChannelOpenContent,
        params: OpenParams,
        inbound: Inbound,
        seal: FrameSeal,
        clock: Clock,
        timeout_ms: int,
        max_frame_bytes: int,
        sent_limit: int,
    ) -> None:
        self.peer = peer_open.sender
        self.params = params
        self.inbound = inbound
        self._seal = seal
        self.clock = clock
        self.state = LinkState.OPEN
        self.max_frame_bytes = max_frame_bytes
        # Send side: the peer resumes after what it processed of *our* epoch; if it
        # speaks of another epoch it knows nothing of our current numbering.
        same = peer_open.resume_epoch == params.epoch
        resume = peer_open.resume_after if same else 0
        self.resume_clamped = resume > sent_limit
        self.peer_acked = min(resume, sent_limit)
        # Highest seq sent on this link or known to the peer (what we resend after).
        self.sent_seq = max(self.peer_acked, params.first_unacked - 1)
        # An ack may cover what an earlier link sent (the peer finished processing
        # it after this link opened), never more than we ever sent.
        self._ack_limit = sent_limit
        self.send_window = peer_open.window
        self._in_flight: deque[int] = deque()  # seqs sent on this link, unacked
        self.peer_max_batch = min(peer_open.max_batch, DEFAULT_MAX_BATCH * 4)
        self._keepalive = params.keepalive_ms / 1000
        self._silence = (peer_open.keepalive_ms + timeout_ms) / 1000
        now = clock.monotonic()
        self.last_rx = self.last_tx = now
        self._ping_id = 0
        # The pong owed: for the newest ping only (a pong echoes one ping's id and
        # acknowledges nothing else), so a peer that pings and never reads costs
        # one int however much it sends.
        self._pong: int | None = None
        self._last_batch_end = 0
        self.duplicates = 0
        self._ack_since: float | None = None

    # -- input --

    def receive(self, data: bytes) -> list[Event]:
        """Feed one frame; return what happened. Never raises on peer input: a
        protocol violation comes back as ``Closed(by_peer=False)``."""
        if self.state is LinkState.CLOSED:
            return []
        self.last_rx = self.clock.monotonic()
        try:
            return self._receive(data)
        except AralError as exc:
            self.state = LinkState.CLOSED
            return [Closed(exc, by_peer=False)]

    def _receive(self, data: bytes) -> list[Event]:
        outer = parse_frame(data, self.max_frame_bytes)
        kind = outer.WhichOneof("kind")
        if kind != "sealed":
            raise Unauthenticated(
                f"channel frame after the open is not sealed ({kind or 'empty'})",
                reason="FRAME_NOT_SEALED",
            )
        frame = parse_frame(self._seal.open(outer.sealed), self.max_frame_bytes)
        kind = frame.WhichOneof("kind")
        if kind == "batch":
            batch = frame.batch
            acked = self._ack(batch.ack) if batch.ack else []
            return acked + self._batch(batch)
        if kind == "ack":
            return self._ack(frame.ack.seq)
        if kind == "credit":
            self.send_window = frame.credit.window
            return []
        if kind == "ping":
            self._pong = frame.ping.id
            return []
        if kind == "pong":
            return []
        if kind == "errors":
            return [ErrorsReceived(list(frame.errors.errors))]
        if kind == "close":
            self.state = LinkState.CLOSED
            return [Closed(close_error(frame.close), by_peer=True)]
        if kind == "open":
            raise _protocol_error("channel is already open", "UNEXPECTED_OPEN")
        if kind == "sealed":
            raise _protocol_error("a sealed frame inside a sealed frame", "NESTED_SEAL")
        raise _protocol_error("empty channel frame", "EMPTY_FRAME")

    def _ack(self, seq: int) -> list[Event]:
        if seq > self.sent_seq and seq > self._ack_limit:
            raise _protocol_error(
                f"ack of seq {seq}, but only up to {max(self.sent_seq, self._ack_limit)} was sent",
                "ACK_BEYOND_SENT",
            )
        in_flight = self._in_flight
        while in_flight and in_flight[0] <= seq:
            in_flight.popleft()
        if seq > self.peer_acked:
            self.peer_acked = seq
            self.sent_seq = max(self.sent_seq, seq)  # no need to resend what it has
            return [AckReceived(seq)]
        return []

    def _batch(self, batch: pb.MessageBatch) -> list[Event]:
        count = len(batch.messages)
        first = batch.first_seq
        if count == 0 or first == 0:
            raise _protocol_error("a batch needs first_seq >= 1 and messages", "EMPTY_BATCH")
        if count > self.params.max_batch:
            raise RateLimited(
                f"batch of {count} messages exceeds the limit of {self.params.max_batch}",
                reason="BATCH_TOO_LARGE",
                details={"messages": count, "limit": self.params.max_batch},
            )
        inbound = self.inbound
        if self._last_batch_end:
            expected = self._last_batch_end + 1
            if first != expected:
                raise _protocol_error(
                    f"batch starts at seq {first}, expected {expected}",
                    "SEQ_OUT_OF_ORDER" if first < expected else "SEQ_GAP",
                )
        elif first > inbound.accepted_seq + 1:
            raise _protocol_error(
                f"batch starts at seq {first}, past the next expected {inbound.accepted_seq + 1}",
                "SEQ_GAP",
            )
        last = first + count - 1
        if last > MAX_SEQ:
            raise _protocol_error("sequence number out of range", "SEQ_OUT_OF_RANGE")
        fresh = last - max(first - 1, inbound.accepted_seq)
        # The sender keeps within the window; twice that allows for messages
        # still pending from a previous link.
        if fresh > 0 and inbound.unacked + fresh > 2 * inbound.window:
            raise RateLimited(
                f"{inbound.unacked + fresh} unacked messages exceed the window of {inbound.window}",
                reason="CREDIT_EXCEEDED",
            )
        self._last_batch_end = last
        skip = inbound.accept(first, count)
        self.duplicates += skip
        if skip == count:
            return []
        messages = list(batch.messages)[skip:] if skip else list(batch.messages)
        return [Batch(first + skip, messages, inbound.generation)]

    def acked_elsewhere(self, seq: int) -> None:
        """The peer acked up to ``seq`` on another (older) link of ours: nothing
        up to it needs sending here."""
        self.sent_seq = max(self.sent_seq, seq)
        self.peer_acked = max(self.peer_acked, seq)
        in_flight = self._in_flight
        while in_flight and in_flight[0] <= seq:
            in_flight.popleft()

    # -- output (every frame sealed, in the order produced) --

    def sendable(self) -> int:
        """How many more messages credit allows now (at most one batch)."""
        return max(0, min(self.send_window - len(self._in_flight), self.peer_max_batch))

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def batch_frames(self, entries: Sequence[OutboxEntry]) -> list[bytes]:
        """The frame for ``entries``: consecutive seqs right after ``sent_seq``
        (tombstones included), at most ``sendable()`` of them."""
        if not entries:
            return []
        first = entries[0].seq
        if first != self.sent_seq + 1 or entries[-1].seq != first + len(entries) - 1:
            raise ValueError(f"entries must be consecutive from seq {self.sent_seq + 1}")
        self._in_flight.extend(range(first, first + len(entries)))
        self.sent_seq = entries[-1].seq
        self.last_tx = self.clock.monotonic()
        run = [e.sealed for e in entries]
        if self.inbound.ack_due() > 0:  # piggyback the ack we owe
            self._ack_since = None
            return [self._seal.seal(encode_batch(first, run, self.inbound.take_ack()))]
        return [self._seal.seal(encode_batch(first, run))]

    def control_frames(self) -> list[bytes]:
        """The pong owed (for the newest ping) and an ack if processing moved."""
        seal = self._seal.seal
        out: list[bytes] = []
        if self._pong is not None:
            out.append(seal(pb.ChannelFrame(pong=pb.Ping(id=self._pong)).SerializeToString()))
            self._pong = None
        inbound = self.inbound
        due = inbound.ack_due()
        now = self.clock.monotonic()
        if due > 0:
            if self._ack_since is None:
                self._ack_since = now
            if due >= inbound.window // 4 or now - self._ack_since >= ACK_DELAY:
                self._ack_since = None
                ack = pb.Ack(seq=inbound.take_ack())
                out.append(seal(pb.ChannelFrame(ack=ack).SerializeToString()))
        else:
            self._ack_since = None
        if out:
            self.last_tx = now
        return out

    def errors_frame(self, errors: list[pb.MessageError]) -> bytes:
        self.last_tx = self.clock.monotonic()
        frame = pb.ChannelFrame(errors=pb.MessageErrors(errors=errors))
        return self._seal.seal(frame.SerializeToString())

    def close(self, error: AralError) -> bytes:
        """Close from our side; the frame to send last."""
        self.state = LinkState.CLOSED
        return sealed_close(self._seal, error)

    # -- keepalive --

    def timer(self) -> float:
        """Seconds until the next keepalive decision is due."""
        now = self.clock.monotonic()
        due = min(self.last_tx + self._keepalive, self.last_rx + self._silence)
        if self._ack_since is not None:
            due = min(due, self._ack_since + ACK_DELAY)
        return max(0.0, due - now)

    def keepalive(self) -> bytes | AralError | None:
        """A ping if we have been quiet, an error if the peer has, else ``None``."""
        now = self.clock.monotonic()
        if now - self.last_rx > self._silence:
            self.state = LinkState.CLOSED
            return error_from_status(
                StatusCode.UNAVAILABLE,
                f"peer {self.peer} sent nothing for {now - self.last_rx:.1f}s",
                reason="PEER_SILENT",
            )
        if now - self.last_tx >= self._keepalive:
            self._ping_id += 1
            self.last_tx = now
            ping = pb.Ping(id=self._ping_id, timestamp_unix_ms=self.clock.now_ms())
            return self._seal.seal(pb.ChannelFrame(ping=ping).SerializeToString())
        return None
