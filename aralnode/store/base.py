"""The interfaces of a channel's stores: an ``Outbox`` (what we sent and a peer has
not acked) and an ``Inbox`` (what we processed).

Two implementations of each:

* ``MemoryOutbox`` / ``MemoryInbox`` (``aralnode.store.memory``) — the default.
  Nothing survives a restart: a new epoch tells the peer that our sequence numbers
  start over.
* ``SqliteStore`` (``aralnode.store.sqlite``) — both in one SQLite file (stdlib
  ``sqlite3``, WAL, ``synchronous=NORMAL``: a committed transaction survives the
  process being killed; only a power loss may take the last ones). The epoch is
  stored, so sequence numbers and unacked messages survive a restart, and the inbox
  transaction is offered to handlers so their effects commit atomically with the
  dedupe mark (exactly once across a crash).
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Protocol

from aralnode.core.outbox import InboundRecord, OutboxEntry


class Outbox(Protocol):
    """Per-peer queues of unacked messages. Not thread-safe: one event loop owns it."""

    epoch: str
    durable: bool

    def append(
        self,
        peer: str,
        *,
        message_id: str,
        kind: int,
        timestamp_ms: int,
        expires_ms: int,
        content: bytes,
        sealed: bytes,
    ) -> int:
        """Store a message and return its sequence number."""
        ...

    def unsent(self, peer: str, after: int, limit: int) -> list[OutboxEntry]:
        """Up to ``limit`` entries with seq > ``after``, in order, tombstones
        included (consecutive seqs from the first one on)."""
        ...

    def ack(self, peer: str, seq: int) -> int:
        """Drop entries up to and including ``seq``; return how many live
        (not withdrawn) ones were dropped."""
        ...

    def withdraw(self, peer: str, seq: int) -> bool:
        """Turn one entry into a tombstone (a cancelled or expired message); True
        if it was live."""
        ...

    def get(self, peer: str, seq: int) -> OutboxEntry | None: ...

    def count(self, peer: str) -> int:
        """Live (not withdrawn) unacked messages."""
        ...

    def last_seq(self, peer: str) -> int:
        """The highest sequence number assigned for ``peer`` (0: none yet)."""
        ...

    def first_unacked(self, peer: str) -> int:
        """The lowest sequence number not acked yet (``last_seq + 1`` if none)."""
        ...

    def peers(self) -> list[str]: ...

    def forget(self, peer: str) -> None:
        """The peer is forgotten: release what is kept for it. Its numbering goes on
        (a peer that comes back must not take new messages for old ones). In memory
        every message for it goes; durable, only the responses (what it asked for
        long ago), while the program's own messages are kept for it."""
        ...

    def close(self) -> None: ...


class Inbox(Protocol):
    """Per-peer receive marks, and the transaction transactional handlers run in."""

    durable: bool

    def load(self, peer: str) -> InboundRecord: ...

    def save(self, peer: str, record: InboundRecord) -> None:
        """Persist (within the current transaction, if one is open)."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection | None]:
        """A transaction for handler effects plus ``save``; ``None`` in memory."""
        ...

    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        """Inside ``transaction()``: writes made in the block are rolled back if it
        raises (the transaction itself goes on)."""
        ...

    def forget_marks(self, peer: str) -> None:
        """The peer is forgotten: drop its marks in memory (it resumes like after our
        restart); durable marks are kept (exactly once across its absence)."""
        ...

    def close(self) -> None: ...
