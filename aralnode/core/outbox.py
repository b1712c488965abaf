"""What a channel's outbox and inbox hold, as plain records (sans-IO).

The sender side of a channel keeps every message it sends until the peer acks it,
so a message a dead peer had not acked is resent after the reconnect. Sequence
numbers are per (outbox epoch, peer), dense, and only grow; a withdrawn message (a
cancelled request, an expired one) stays as a *tombstone* (empty ``sealed``) until
acked, so the numbering on the wire never has a gap and a receiver can treat any gap
as a protocol violation.

The receiver side keeps, per peer, an ``InboundRecord``: the sender's epoch, the
highest sequence number processed (acked) and the highest one whose transactional
handlers ran. A resent message at or below those marks is a duplicate.

The stores themselves (memory and SQLite) are in ``aralnode.store``: the core only
describes what they keep.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass


def new_epoch() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True)
class OutboxEntry:
    """One message waiting for its ack.

    Attributes:
        seq: Sequence number on the channel to ``peer`` (assigned by the outbox).
        message_id: Header message id (what a response's correlation id names).
        kind: ``aral.v1.MessageType`` number.
        timestamp_ms: Header timestamp of ``sealed``.
        expires_ms: Wall-clock time after which the message is pointless (0: never).
        content: The serialized ``MessageContent``.
        sealed: The serialized ``ARALMessage`` as it travels; empty for a withdrawn
            message (a tombstone: it travels as an empty ``ARALMessage``).
    """

    seq: int
    message_id: str
    kind: int
    timestamp_ms: int
    expires_ms: int
    content: bytes
    sealed: bytes

    @property
    def withdrawn(self) -> bool:
        return not self.sealed


def tombstone(entry: OutboxEntry) -> OutboxEntry:
    """``entry`` withdrawn: its seq and id kept (the numbering has no gap), no bytes."""
    return OutboxEntry(entry.seq, entry.message_id, entry.kind, 0, 0, b"", b"")


@dataclass(slots=True)
class InboundRecord:
    """What a receiver knows about one sender's sequence numbers."""

    epoch: str = ""
    processed_seq: int = 0
    handled_seq: int = 0
