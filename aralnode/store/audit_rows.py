"""How the audit log's records sit in its SQLite files.

A file holds **groups**: one row per commit, the records' canonical bytes one after
another (MessagePack is self-delimiting) and their chain hashes, 32 bytes each::

    groups(seq INTEGER PRIMARY KEY,  -- the group's first record
           last INTEGER,             -- its last record
           bodies BLOB,              -- each record's canonical bytes, in order
           hashes BLOB)              -- each record's SHA-256(prev || body), in order

A record's ``prev`` is the hash before it (the previous group's last, or the
previous file's, or ``GENESIS``), so nothing is stored twice. One row a group, not a
row a record: a channel's records come by the hundred a commit, and a row each was
most of what keeping them cost (docs/audit.md, "Cost").

Files written before groups (a ``records`` table: one row a record, with its
``prev``) are still read and verified; a node that finds one as its newest file
starts the next file in groups, the chain going on from the old file's last hash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import msgpack

HASH_BYTES = 32

GROUPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
  seq INTEGER PRIMARY KEY,
  last INTEGER NOT NULL,
  bodies BLOB NOT NULL,
  hashes BLOB NOT NULL
);
"""

#: One stored record: (seq, canonical bytes, its stored prev (``None`` in groups:
#: the hash before it), its stored hash).
Stored = tuple[int, bytes, bytes | None, bytes]


class BadGroup(ValueError):
    """A group whose bytes do not split into its records (edited or cut)."""

    def __init__(self, seq: int, why: str) -> None:
        super().__init__(f"the group at record {seq} {why}")
        self.seq = seq


def is_rows_layout(db: sqlite3.Connection) -> bool:
    """Whether ``db`` is a file written before groups (a ``records`` table)."""
    found = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
    ).fetchone()
    return found is not None


def insert_group(
    db: sqlite3.Connection, first: int, last: int, bodies: list[bytes], hashes: list[bytes]
) -> None:
    db.execute(
        "INSERT INTO groups (seq, last, bodies, hashes) VALUES (?,?,?,?)",
        (first, last, b"".join(bodies), b"".join(hashes)),
    )


def last_record(db: sqlite3.Connection) -> tuple[int, bytes] | None:
    """The last record's (seq, hash) in ``db``; ``None`` if it holds none."""
    if is_rows_layout(db):
        row = db.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))
    row = db.execute("SELECT last, hashes FROM groups ORDER BY seq DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), bytes(row[1])[-HASH_BYTES:])


def last_seq(db: sqlite3.Connection) -> int | None:
    """The last record's seq in ``db`` (``None``: none)."""
    found = last_record(db)
    return None if found is None else found[0]


def split(seq: int, last: object, bodies: object, hashes: object) -> Iterator[tuple[bytes, bytes]]:
    """The (body, hash) of each record of a group, in order.

    Raises:
        BadGroup: the bytes do not hold ``last - seq + 1`` whole records.
    """
    if not (isinstance(last, int) and isinstance(bodies, bytes) and isinstance(hashes, bytes)):
        raise BadGroup(seq, "is not a group (a column of another type)")
    count = last - seq + 1
    if count < 1 or len(hashes) != count * HASH_BYTES:
        raise BadGroup(seq, f"holds {len(hashes)} hash bytes for records {seq}..{last}")
    unpacker = msgpack.Unpacker(
        raw=False, unicode_errors="surrogatepass", max_buffer_size=max(len(bodies), 1)
    )
    unpacker.feed(bodies)
    start = 0
    for i in range(count):
        try:
            unpacker.skip()
        except (msgpack.OutOfData, ValueError, msgpack.UnpackException):
            raise BadGroup(seq, f"ends before its record {seq + i}") from None
        end = unpacker.tell()
        yield bodies[start:end], hashes[i * HASH_BYTES : (i + 1) * HASH_BYTES]
        start = end
    if start != len(bodies):
        raise BadGroup(seq, f"holds {len(bodies) - start} bytes after its record {last}")


def stored(db: sqlite3.Connection, since: int = 0) -> Iterator[Stored]:
    """Every record in ``db`` with seq > ``since``, oldest first; a record's seq is
    its place in the group (the verifier checks it against the seq in its body).

    Raises:
        BadGroup: a group that does not split into its records.
    """
    if is_rows_layout(db):
        for seq, body, prev, digest in db.execute(
            "SELECT seq, body, prev, hash FROM records WHERE seq > ? ORDER BY seq", (since,)
        ):
            data = body.encode() if isinstance(body, str) else bytes(body)
            yield int(seq), data, bytes(prev), bytes(digest)
        return
    # From the start (verify), every group: a wrong ``last`` must not hide one.
    rows = (
        db.execute("SELECT seq, last, bodies, hashes FROM groups ORDER BY seq")
        if since <= 0
        else db.execute(
            "SELECT seq, last, bodies, hashes FROM groups WHERE last > ? ORDER BY seq", (since,)
        )
    )
    for first, last, bodies, hashes in rows:
        for i, (body, digest) in enumerate(split(first, last, bodies, hashes)):
            if first + i > since:
                yield first + i, body, None, digest


__all__ = [
    "GROUPS_SCHEMA",
    "HASH_BYTES",
    "BadGroup",
    "Stored",
    "insert_group",
    "is_rows_layout",
    "last_record",
    "last_seq",
    "split",
    "stored",
]
