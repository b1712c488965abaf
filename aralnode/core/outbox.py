"""Outboxes (what we sent and a peer has not acked) and inboxes (what we processed).

The sender side of a channel keeps every message it sends in an ``Outbox`` until
the peer acks it, so a message a dead peer had not acked is resent after the
reconnect. Sequence numbers are per (outbox epoch, peer), dense, and only grow; a
withdrawn message (a cancelled request, an expired one) stays as a *tombstone*
(empty ``sealed``) until acked, so the numbering on the wire never has a gap and a
receiver can treat any gap as a protocol violation.

The receiver side keeps, per peer, an ``InboundRecord``: the sender's epoch, the
highest sequence number processed (acked) and the highest one whose transactional
handlers ran. A resent message at or below those marks is a duplicate.

Two implementations of each:

* ``MemoryOutbox`` / ``MemoryInbox`` — the default. Nothing survives a restart: a new
  epoch tells the peer that our sequence numbers start over.
* ``SqliteStore`` — both in one SQLite file (stdlib ``sqlite3``, WAL,
  ``synchronous=NORMAL``: a committed transaction survives the process being
  killed; only a power loss may take the last ones). The epoch is stored, so
  sequence numbers and unacked messages survive a restart, and the inbox
  transaction is offered to handlers so their effects commit atomically with the
  dedupe mark (exactly once across a crash).

This module does file I/O through ``sqlite3`` but no network I/O.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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

    def close(self) -> None: ...


@dataclass(slots=True)
class InboundRecord:
    """What a receiver knows about one sender's sequence numbers."""

    epoch: str = ""
    processed_seq: int = 0
    handled_seq: int = 0


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

    def close(self) -> None: ...


# -- memory ---------------------------------------------------------------------------


class _PeerQueue:
    """Entries with contiguous seqs from ``base``; acked ones (before ``head``) are ``None``."""

    __slots__ = ("base", "count", "head", "items", "next_seq")

    def __init__(self) -> None:
        self.items: list[OutboxEntry | None] = []
        self.head = 0  # index of the first live slot
        self.base = 1  # seq of items[0]
        self.next_seq = 1
        self.count = 0


class MemoryOutbox:
    """The default outbox: lists in memory, a fresh epoch per process."""

    durable = False

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self._queues: dict[str, _PeerQueue] = {}

    def _queue(self, peer: str) -> _PeerQueue:
        q = self._queues.get(peer)
        if q is None:
            q = self._queues[peer] = _PeerQueue()
        return q

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
        q = self._queue(peer)
        seq = q.next_seq
        q.next_seq += 1
        q.items.append(
            OutboxEntry(seq, message_id, kind, timestamp_ms, expires_ms, content, sealed)
        )
        q.count += 1
        return seq

    def unsent(self, peer: str, after: int, limit: int) -> list[OutboxEntry]:
        q = self._queues.get(peer)
        if q is None or limit <= 0:
            return []
        start = max(q.head, after + 1 - q.base)
        out: list[OutboxEntry] = []
        items = q.items
        for i in range(start, len(items)):
            entry = items[i]
            if entry is not None:
                out.append(entry)
                if len(out) >= limit:
                    break
        return out

    def ack(self, peer: str, seq: int) -> int:
        q = self._queues.get(peer)
        if q is None:
            return 0
        stop = min(seq + 1 - q.base, len(q.items))
        dropped = 0
        items = q.items
        for i in range(q.head, stop):
            entry = items[i]
            if entry is not None:
                items[i] = None
                if entry.sealed:
                    dropped += 1
        q.head = max(q.head, stop)
        q.count -= dropped
        # Compact once the dead prefix dominates, so memory follows the live count.
        if q.head > 1024 and q.head * 2 > len(items):
            del items[: q.head]
            q.base += q.head
            q.head = 0
        return dropped

    def _index(self, q: _PeerQueue, seq: int) -> int:
        i = seq - q.base
        return i if q.head <= i < len(q.items) else -1

    def withdraw(self, peer: str, seq: int) -> bool:
        q = self._queues.get(peer)
        if q is None:
            return False
        i = self._index(q, seq)
        entry = q.items[i] if i >= 0 else None
        if entry is None or not entry.sealed:
            return False
        q.items[i] = tombstone(entry)
        q.count -= 1
        return True

    def get(self, peer: str, seq: int) -> OutboxEntry | None:
        q = self._queues.get(peer)
        if q is None:
            return None
        i = self._index(q, seq)
        return q.items[i] if i >= 0 else None

    def count(self, peer: str) -> int:
        q = self._queues.get(peer)
        return 0 if q is None else q.count

    def last_seq(self, peer: str) -> int:
        q = self._queues.get(peer)
        return 0 if q is None else q.next_seq - 1

    def first_unacked(self, peer: str) -> int:
        q = self._queues.get(peer)
        return 1 if q is None else q.base + q.head

    def peers(self) -> list[str]:
        return [p for p, q in self._queues.items() if q.count]

    def close(self) -> None:
        self._queues.clear()


class MemoryInbox:
    """The default inbox: marks in a dict; lost (and so re-learnt) on restart."""

    durable = False

    def __init__(self) -> None:
        self._records: dict[str, InboundRecord] = {}

    def load(self, peer: str) -> InboundRecord:
        rec = self._records.get(peer)
        return (
            InboundRecord(rec.epoch, rec.processed_seq, rec.handled_seq) if rec else InboundRecord()
        )

    def save(self, peer: str, record: InboundRecord) -> None:
        self._records[peer] = InboundRecord(record.epoch, record.processed_seq, record.handled_seq)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection | None]:
        yield None

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        self._records.clear()


# -- SQLite -----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channel_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_peer (peer TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    peer TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    content BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (peer, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    peer TEXT PRIMARY KEY,
    epoch TEXT NOT NULL,
    processed_seq INTEGER NOT NULL,
    handled_seq INTEGER NOT NULL
);
"""


class SqliteStore:
    """A durable outbox and inbox in one SQLite file.

    Every outbox change commits before the call returns (so a message ``notify``
    accepted survives a crash). Inbox marks are written inside ``transaction()``,
    together with whatever transactional handlers wrote through the connection.
    """

    durable = True

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a handler's
        # writes and our marks share exactly one transaction.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT value FROM channel_meta WHERE key='epoch'").fetchone()
        if row is None:
            self.epoch = new_epoch()
            self.db.execute("INSERT INTO channel_meta VALUES ('epoch', ?)", (self.epoch,))
        else:
            self.epoch = str(row[0])
        self._next: dict[str, int] = dict(self.db.execute("SELECT peer, next_seq FROM outbox_peer"))
        self._counts: dict[str, int] = dict(
            self.db.execute(
                "SELECT peer, COUNT(*) FROM outbox WHERE length(sealed) > 0 GROUP BY peer"
            )
        )
        self._in_tx = False

    # -- outbox --

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
        seq = self._next.get(peer, 1)
        with self._write():
            self.db.execute(
                "INSERT INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (peer, seq, message_id, kind, timestamp_ms, expires_ms, content, sealed),
            )
            self.db.execute(
                "INSERT INTO outbox_peer VALUES (?, ?) "
                "ON CONFLICT(peer) DO UPDATE SET next_seq=excluded.next_seq",
                (peer, seq + 1),
            )
        self._next[peer] = seq + 1
        self._counts[peer] = self._counts.get(peer, 0) + 1
        return seq

    def unsent(self, peer: str, after: int, limit: int) -> list[OutboxEntry]:
        if limit <= 0:
            return []
        rows = self.db.execute(
            "SELECT seq, message_id, kind, timestamp_ms, expires_ms, content, sealed FROM outbox "
            "WHERE peer=? AND seq>? ORDER BY seq LIMIT ?",
            (peer, after, limit),
        )
        return [OutboxEntry(*row) for row in rows]

    def ack(self, peer: str, seq: int) -> int:
        with self._write():
            (live,) = self.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE peer=? AND seq<=? AND length(sealed) > 0",
                (peer, seq),
            ).fetchone()
            self.db.execute("DELETE FROM outbox WHERE peer=? AND seq<=?", (peer, seq))
        if live:
            self._counts[peer] = self._counts.get(peer, 0) - int(live)
        return int(live)

    def withdraw(self, peer: str, seq: int) -> bool:
        with self._write():
            changed = self.db.execute(
                "UPDATE outbox SET timestamp_ms=0, expires_ms=0, content=x'', sealed=x'' "
                "WHERE peer=? AND seq=? AND length(sealed) > 0",
                (peer, seq),
            ).rowcount
        if changed:
            self._counts[peer] = self._counts.get(peer, 0) - 1
        return bool(changed)

    def get(self, peer: str, seq: int) -> OutboxEntry | None:
        row = self.db.execute(
            "SELECT seq, message_id, kind, timestamp_ms, expires_ms, content, sealed FROM outbox "
            "WHERE peer=? AND seq=?",
            (peer, seq),
        ).fetchone()
        return OutboxEntry(*row) if row else None

    def count(self, peer: str) -> int:
        return self._counts.get(peer, 0)

    def last_seq(self, peer: str) -> int:
        return self._next.get(peer, 1) - 1

    def first_unacked(self, peer: str) -> int:
        row = self.db.execute("SELECT MIN(seq) FROM outbox WHERE peer=?", (peer,)).fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_seq(peer) + 1

    def peers(self) -> list[str]:
        return [p for p, n in self._counts.items() if n]

    # -- inbox --

    def load(self, peer: str) -> InboundRecord:
        row = self.db.execute(
            "SELECT epoch, processed_seq, handled_seq FROM inbox WHERE peer=?", (peer,)
        ).fetchone()
        return InboundRecord(str(row[0]), int(row[1]), int(row[2])) if row else InboundRecord()

    def save(self, peer: str, record: InboundRecord) -> None:
        with self._write():
            self.db.execute(
                "INSERT INTO inbox VALUES (?, ?, ?, ?) ON CONFLICT(peer) DO UPDATE SET "
                "epoch=excluded.epoch, processed_seq=excluded.processed_seq, "
                "handled_seq=excluded.handled_seq",
                (peer, record.epoch, record.processed_seq, record.handled_seq),
            )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection | None]:
        if self._in_tx:
            yield self.db
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._in_tx = True
        try:
            yield self.db
        except BaseException:
            self._in_tx = False
            self.db.execute("ROLLBACK")
            raise
        self._in_tx = False
        self.db.execute("COMMIT")

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        if not self._in_tx:
            yield
            return
        self.db.execute("SAVEPOINT aral_handler")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO aral_handler")
            self.db.execute("RELEASE aral_handler")
            raise
        self.db.execute("RELEASE aral_handler")

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """Autocommit a write, unless it is part of an open transaction."""
        if self._in_tx:
            yield
            return
        with self.transaction():
            yield

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
