"""The default channel stores: in memory, a fresh epoch per process."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from aralnode.core.outbox import InboundRecord, OutboxEntry, new_epoch, tombstone


class _PeerQueue:
    """Entries with contiguous seqs from ``base``; acked ones (before ``head``) are ``None``."""

    __slots__ = ("base", "count", "head", "items", "next_seq")

    def __init__(self, first_seq: int = 1) -> None:
        self.items: list[OutboxEntry | None] = []
        self.head = 0  # index of the first live slot
        self.base = first_seq  # seq of items[0]
        self.next_seq = first_seq
        self.count = 0


class MemoryOutbox:
    """The default outbox: lists in memory, a fresh epoch per process."""

    durable = False

    def __init__(self, epoch: str | None = None) -> None:
        self.epoch = epoch or new_epoch()
        self._queues: dict[str, _PeerQueue] = {}
        # Every peer's numbering starts above the highest seq a forgotten peer was
        # given: one that comes back can tell new messages from old ones (it skips
        # to our first unacked seq), and nothing per forgotten peer is kept.
        self._floor = 0

    def _queue(self, peer: str) -> _PeerQueue:
        q = self._queues.get(peer)
        if q is None:
            q = self._queues[peer] = _PeerQueue(self._floor + 1)
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
        return self._floor if q is None else q.next_seq - 1

    def first_unacked(self, peer: str) -> int:
        q = self._queues.get(peer)
        return self._floor + 1 if q is None else q.base + q.head

    def peers(self) -> list[str]:
        return [p for p, q in self._queues.items() if q.count]

    def forget(self, peer: str) -> None:
        q = self._queues.pop(peer, None)
        if q is not None:
            self._floor = max(self._floor, q.next_seq - 1)

    def close(self) -> None:
        self._queues.clear()


_NOTHING = contextlib.nullcontext()


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

    def savepoint(self) -> contextlib.AbstractContextManager[None]:
        return _NOTHING  # (one a handler call: a generator here cost ~1 µs a message)

    def forget_marks(self, peer: str) -> None:
        self._records.pop(peer, None)

    def close(self) -> None:
        self._records.clear()
