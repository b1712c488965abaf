"""The durable channel store: an outbox and an inbox in one SQLite file."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from aralnode import _proto as pb
from aralnode.core.outbox import InboundRecord, OutboxEntry, new_epoch

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

    def forget(self, peer: str) -> None:
        # Responses become tombstones (the numbering keeps no gap); the program's
        # own messages stay: this outbox promises them across any absence.
        with self._write():
            changed = self.db.execute(
                "UPDATE outbox SET timestamp_ms=0, expires_ms=0, content=x'', sealed=x'' "
                "WHERE peer=? AND kind=? AND length(sealed) > 0",
                (peer, int(pb.MessageType.MESSAGE_TYPE_RESPONSE)),
            ).rowcount
        if changed:
            self._counts[peer] = self._counts.get(peer, 0) - changed

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

    def forget_marks(self, peer: str) -> None:
        """Durable marks are kept: exactly once holds across the peer's absence."""

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
