"""The audit log: SQLite (WAL), hash-chained, its chain head signed with the node key.

Every record is stored as its canonical bytes (``body``: a MessagePack array of
its fields in a fixed order) with ``hash = SHA-256(prev || body)``, ``prev`` being
the previous record's hash; ``body`` holds the record's ``seq``, so an edited,
removed or re-ordered record breaks the chain where it happened. A commit's records
are one row (``aralnode.store.audit_rows``: the layout, and the older one still
read). A rewrite of the whole file with every hash recomputed would still chain, so
every ``sign_every`` records (or ``sign_seconds``, and at close and rotation) the
node signs the head -- ``(seq, hash)`` -- with its identity key: a rewrite cannot make
those signatures without the key. ``aralnode audit verify`` checks both
(``aralnode.store.audit_verify``).

Writes are grouped: callers ``append`` (no I/O); the owner calls ``flush`` once per
event-loop turn with records (``service.auditing.DurableLog``), which chains
everything pending, inserts it as one row, commits once, and calls
``on_settled`` so the calls awaiting their records wake. No writer thread: handing
the GIL to one and back cost a saturated node a third of its calls (measured).
Fail closed: a commit that fails (disk full, store read-only, I/O error) refuses
its group's callers and every later ``append`` with ``AuditUnavailable`` until a
retry succeeds. A rotation opens the next file before it closes the current one:
one that cannot be opened postpones the rotation (the records stay in the current
file). ``open`` refuses a log whose files' numbering has a gap
(``aralnode.store.audit_files``): going on would chain across it.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack

from aralnode._logs import get_logger
from aralnode.core.audit import AuditRecord
from aralnode.core.errors import Unavailable
from aralnode.core.identity import Identity
from aralnode.store.audit_files import (
    FILE_PATTERN,
    Checkpointer,
    audit_files,
    connect,
    file_number,
    next_file,
    numbering_gap,
    size,
)
from aralnode.store.audit_rows import (
    insert_group,
    is_rows_layout,
    last_record,
    last_seq,
    stored,
)

log = get_logger("aralnode.audit")

HEAD_PAYLOAD_TYPE = "application/vnd.aralnode.audit-head"
GENESIS = b"\x00" * 32
# The record's fields after seq, in the canonical order (the body is a JSON array).
FIELDS = AuditRecord._fields


class AuditUnavailable(Unavailable):
    """The audit log cannot keep records: no call may return a result."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="AUDIT_UNAVAILABLE")


_pack_utf8 = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# surrogatepass: a caller's text may hold a lone surrogate (JSON allows "\ud800");
# its record must still be written, byte for byte, not kill the writer. Only then:
# the packer with an error handler is a third slower on every string.
_pack_surrogates = msgpack.Packer(
    use_bin_type=True, autoreset=True, unicode_errors="surrogatepass"
).pack


def _pack(values: tuple[object, ...]) -> bytes:
    """``values`` as MessagePack (the same bytes either packer makes for valid text)."""
    try:
        packed: bytes = _pack_utf8(values)
    except UnicodeEncodeError:
        packed = _pack_surrogates(values)
    return packed


def canonical(seq: int, record: AuditRecord, now_ms: int = 0) -> bytes:
    """The bytes a record is hashed and kept as: the MessagePack array ``[seq,
    field, ...]`` in ``FIELDS`` order (tuples as arrays, strings UTF-8; ``time_ms``
    0 becomes ``now_ms``). MessagePack: a fixed encoding any language reads, and
    cheap enough for the writer to keep up with the channel."""
    # (a tuple's +: a third of the cost of star-unpacking a named tuple)
    head = (seq,)
    packed: bytes = _pack(head + record if record[-1] else head + record[:-1] + (now_ms,))
    return packed


def chain_hash(prev: bytes, body: bytes) -> bytes:
    return hashlib.sha256(prev + body).digest()


def _chained(
    batch: list[AuditRecord], seq: int, prev: bytes, now_ms: int, pack: Callable[[object], bytes]
) -> tuple[list[bytes], list[bytes]]:
    """The bodies (``canonical``) and chain hashes (``chain_hash``) of ``batch``, the
    records after ``seq`` (hash ``prev``): written out, as it runs once a record."""
    bodies: list[bytes] = []
    hashes: list[bytes] = []
    body_of, hash_of = bodies.append, hashes.append
    sha256 = hashlib.sha256
    for record in batch:
        seq += 1
        head = (seq,)  # (a tuple's +: a third of the cost of star-unpacking)
        body = pack(head + record if record[-1] else head + record[:-1] + (now_ms,))
        prev = sha256(prev + body).digest()
        body_of(body)
        hash_of(prev)
    return bodies, hashes


def head_payload(seq: int, digest: bytes, interval: int) -> bytes:
    """What a signed head covers: the seq, the signing interval the log keeps (at
    most that many records between two heads, so removed heads show), both 8 bytes
    big-endian, and the record's hash."""
    return struct.pack(">QQ", seq, interval) + digest


def record_of(body: bytes) -> tuple[int, AuditRecord]:
    """A stored body back as (seq, record)."""
    row = msgpack.unpackb(body, raw=False, unicode_errors="surrogatepass")
    values = dict(zip(FIELDS, row[1:], strict=True))
    values["chain"] = tuple(values["chain"])
    values["flags"] = tuple(values["flags"])
    values["rules"] = tuple(values["rules"])
    return int(row[0]), AuditRecord(**values)


#: Written to the WAL since the last checkpoint before the next one is started.
CHECKPOINT_BYTES = 4 * 1024 * 1024


class AuditLog:
    """The node's audit log (see the module docstring).

    Args:
        directory: Where its files are (``audit-000001.db``, ...).
        identity: The node key that signs the heads.
        sign_every: Sign the head after this many records.
        sign_seconds: ... or after this long with unsigned records.
        max_pending: Records waiting for the writer at most; beyond, ``append``
            refuses (fail closed rather than grow).
        rotate_bytes: Start a new file once the current one is this large.
        retry_seconds: After a failure, how often the writer tries again.
    """

    def __init__(
        self,
        directory: Path,
        identity: Identity,
        *,
        sign_every: int = 1000,
        sign_seconds: float = 5.0,
        max_pending: int = 65536,
        rotate_bytes: int = 256 * 1024 * 1024,
        retry_seconds: float = 2.0,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.directory = directory
        self.identity = identity
        self.sign_every = sign_every
        self.sign_seconds = sign_seconds
        self.max_pending = max_pending
        self.rotate_bytes = rotate_bytes
        self.retry_seconds = retry_seconds
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        # ``settled`` may be asked from any thread; ``append``, ``flush`` and
        # ``close`` are the owner's (the event loop's), never called concurrently.
        self._lock = threading.Lock()
        self._pending: list[AuditRecord] = []
        self._tickets = 0  # records appended so far (a caller's ticket: its number)
        self._written = 0  # tickets whose fate is known (committed or refused)
        self._refused: list[tuple[int, int, AuditUnavailable]] = []  # ticket ranges refused
        self.failed: AuditUnavailable | None = None
        self.commits = 0
        self.records = 0
        # The owner's hooks (``service.auditing.DurableLog``): ``on_pending`` when a
        # group starts (it schedules one ``flush``), ``on_settled`` once a group's
        # fate is known (it wakes the calls waiting for it).
        self.on_pending: Callable[[], None] | None = None
        self.on_settled: Callable[[], None] | None = None
        self._stop = False
        self._db: sqlite3.Connection | None = None
        self._file: Path | None = None
        self._seq = 0
        self._hash = GENESIS
        self._signed_seq = 0
        self._last_sign = time.monotonic()
        self.test_hook: Callable[[sqlite3.Connection], None] | None = None
        # How often the owner calls ``tick`` (timed heads, the retry after a failure).
        self.tick_seconds = min(1.0, retry_seconds, sign_seconds)
        self._since_stat = 1 << 62  # look at the file's size on the first group
        self._since_checkpoint = 0
        self._checkpointer: Checkpointer | None = None
        self._open = False

    # -- life -------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the current file and start the writer.

        Raises:
            AuditUnavailable: the files' numbering has a gap between two of them (one
                was removed or renamed): going on would chain across it. The oldest
                files moved away (archived) leave no such gap: the log goes on.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        files = audit_files(self.directory)
        gap = numbering_gap(files)
        if gap is not None and gap[0] == 0 and file_number(files[0]) > 1:
            log.warning(
                "audit log %s starts at %s: the files before it were moved away "
                "(`aralnode audit verify` needs them all back to check the chain)",
                self.directory, files[0].name,
            )  # fmt: skip
        elif gap is not None:
            raise AuditUnavailable(
                f"the audit log in {self.directory} is not whole: {gap[1]}; the node does "
                "not write to it (`aralnode audit verify` reports it; restore the file, "
                "or move the log aside to start a new one)"
            )
        self._file = files[-1] if files else self.directory / FILE_PATTERN.format(1)
        self._db = self._resume(files)
        if is_rows_layout(self._db):  # an older node's file, signed to its end: go on anew
            self._db.close()
            self._file = next_file(self._file)
            files.append(self._file)
            self._db = self._resume(files)
        self._open = True

    def _resume(self, files: list[Path]) -> sqlite3.Connection:
        """Open ``self._file`` (the newest of ``files``) where its chain ends."""
        assert self._file is not None
        db = connect(self._file)
        self._checkpointer = Checkpointer(self._file)
        self._seq, self._hash = self._last_of(db, files)
        self._signed_seq = self._last_signed(db)
        if self._seq > self._signed_seq:
            # A tail a crash left unsigned is signed now (docs/audit.md: what that
            # means), so no interval between two heads spans it.
            self._sign_head(db)
        return db

    def _last_of(self, db: sqlite3.Connection, files: list[Path]) -> tuple[int, bytes]:
        found = last_record(db)
        if found is not None:
            return found
        # An empty newest file: the chain goes on from the last record of the files
        # before it (a rotation, then an older node's empty file, can leave two).
        for path in reversed(files[:-1]):
            with contextlib.closing(connect(path, readonly=True)) as prev:
                found = last_record(prev)
            if found is not None:
                return found
        return 0, GENESIS

    def _last_signed(self, db: sqlite3.Connection) -> int:
        row = db.execute("SELECT max(seq) FROM heads").fetchone()
        if row is not None and row[0] is not None:
            return int(row[0])
        # A new file after a rotation: the previous file's last head signed its end.
        return self._seq if self._seq and last_record(db) is None else 0

    def close(self) -> None:
        """Write what is pending, sign the head, close the file."""
        with self._lock:
            self._stop = True
        if self._open and self._pending and self._db is not None:
            self.flush()
        self._open = False
        if self._checkpointer is not None:
            self._checkpointer.join()
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._sign_head(self._db)
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None

    # -- the event loop's side --------------------------------------------------------

    def append(self, record: AuditRecord) -> int:
        """Queue ``record``; the ticket ``durable`` waits for. On the owner's thread,
        as ``flush`` and ``close`` are (the event loop: no lock, once a record).

        Raises:
            AuditUnavailable: the log is failed, closed or has ``max_pending`` records
                waiting: the call it records must not return a result.
        """
        failed = self.failed
        if failed is not None:
            raise failed
        if self._stop or not self._open:
            raise AuditUnavailable("the audit log is closed")
        pending = self._pending
        if len(pending) >= self.max_pending:
            raise AuditUnavailable(
                f"the audit log has {len(pending)} records waiting to be written, "
                "its limit (the store is too slow or stuck)"
            )
        pending.append(record)
        self._tickets = ticket = self._tickets + 1
        if len(pending) == 1 and self.on_pending is not None:
            self.on_pending()  # the owner schedules one flush for the group
        return ticket

    def flush(self) -> None:
        """Write every pending record as one group (one commit). Never raises: a
        failure no handler expected refuses the group and every later call."""
        with self._lock:
            batch, self._pending = self._pending, []
            first = self._written + 1
        if not batch:
            return
        try:
            self._write(batch, first)
        except Exception as exc:  # never fail open: refuse instead
            log.exception("audit log %s: writing failed", self._file)
            error = AuditUnavailable(f"the audit log {self._file} failed: {exc!r}")
            self._rollback()
            with self._lock:  # failed, not closed: the retry (``tick``) can recover
                self.failed = error
                last = self._tickets
                self._pending.clear()
                self._refused.append((first, last, error))
            self._settle(last)

    def tick(self) -> None:
        """Every ``tick_seconds``: after a failure, try the outage record; else sign
        the head if records wait longer than ``sign_seconds``."""
        if not self._open or self._pending:
            return
        if self.failed is not None:
            self._probe()
        elif self._due_for_signing():
            self._quietly(self._sign_head)

    def settled(self, ticket: int) -> tuple[bool, AuditUnavailable | None]:
        """Whether record ``ticket``'s fate is known, and its error if it was
        refused (thread-safe)."""
        with self._lock:
            if ticket > self._written:
                return False, None
            for first, last, error in self._refused:
                if first <= ticket <= last:
                    return True, error
        return True, None

    # -- writing ------------------------------------------------------------------------

    def _due_for_signing(self) -> bool:
        return (
            self._seq > self._signed_seq
            and time.monotonic() - self._last_sign >= self.sign_seconds
            and self.failed is None
        )

    def _probe(self) -> None:
        """After a failure: try to write a record of the outage (it chains like any
        other); the log takes calls again once it is in."""
        error = self.failed
        assert error is not None
        outage = AuditRecord(
            door="node", caller="", principal="", action="audit.unavailable",
            direction="", peer="", trace_id="", decision="", outcome="UNAVAILABLE",
            reason="AUDIT_UNAVAILABLE",
        )  # fmt: skip
        self._write([outage], 0)

    def _write(self, batch: list[AuditRecord], first: int) -> None:
        """Chain, insert and commit ``batch``, the records of tickets ``first``..
        (``first`` 0: records with no ticket, the outage probe's)."""
        db = self._db
        assert db is not None
        seq, prev = self._seq, self._hash
        now = self._wall_ms()
        signed_before = self._signed_seq
        try:
            try:  # (one packer for the group: a record needs the other very rarely)
                bodies, hashes = _chained(batch, seq, prev, now, _pack_utf8)
            except UnicodeEncodeError:
                bodies, hashes = _chained(batch, seq, prev, now, _pack_surrogates)
            if hashes:
                seq, prev = seq + len(hashes), hashes[-1]
            every, first_seq = self.sign_every, self._seq + 1
            heads = [  # no more than sign_every records between two heads
                (at, hashes[at - first_seq])
                for at in range(max(signed_before + every, first_seq), seq + 1, every)
            ]
            # The first group of a log is signed at once: an intact log always has a
            # head, so one whose heads were all removed is caught.
            if not self._signed_seq and not heads:
                heads.append((seq, prev))
            if self.test_hook is not None:
                self.test_hook(db)
            db.execute("BEGIN IMMEDIATE")
            insert_group(db, self._seq + 1, seq, bodies, hashes)
            for head_seq, head_hash in heads:
                self._insert_head(db, head_seq, head_hash)
            db.execute("COMMIT")
        except Exception as exc:  # (anything before the commit: the group is refused)
            self._signed_seq = signed_before
            self._rollback()
            self._fail(first, first + len(batch) - 1 if first else 0, exc)
            return
        self._seq, self._hash = seq, prev
        self.commits += 1
        self.records += len(batch)
        if self.failed is not None and not first:  # only the outage record clears it
            log.info("audit log %s writes again", self._file)
            self.failed = None
        if first:
            self._settle(first + len(batch) - 1)
        self._maybe_rotate(sum(map(len, bodies)) + 32 * len(bodies))

    def _fail(self, first: int, last: int, exc: Exception) -> None:
        error = AuditUnavailable(
            f"the audit log {self._file} cannot be written ({exc}): calls are refused until it can"
        )
        if self.failed is None:
            log.error("audit log %s failed: %s; calls are refused", self._file, exc)
        self.failed = error
        if first:
            with self._lock:
                self._refused.append((first, last, error))
                del self._refused[:-4096]  # one per failed group: their waiters are long settled
            self._settle(last)

    def _rollback(self) -> None:
        """End a transaction a failure left open (the retry must be able to begin)."""
        db = self._db
        with contextlib.suppress(sqlite3.Error):
            if db is not None and db.in_transaction:
                db.execute("ROLLBACK")

    def _settle(self, last: int) -> None:
        with self._lock:
            self._written = last
        on_settled = self.on_settled
        if on_settled is not None:
            on_settled()

    def _quietly(self, step: Callable[[sqlite3.Connection], None]) -> None:
        db = self._db
        if db is None:
            return
        try:
            step(db)
        except sqlite3.Error as exc:
            log.warning("audit log %s: signing the head failed: %s", self._file, exc)

    def _sign_head(self, db: sqlite3.Connection) -> None:
        if self._seq <= self._signed_seq:
            return
        db.execute("BEGIN IMMEDIATE")
        self._insert_head(db, self._seq, self._hash)
        db.execute("COMMIT")

    def _insert_head(self, db: sqlite3.Connection, seq: int, digest: bytes) -> None:
        payload = head_payload(seq, digest, self.sign_every)
        signature = self.identity.sign(HEAD_PAYLOAD_TYPE, payload)
        db.execute(
            "INSERT OR REPLACE INTO heads (seq, hash, signature, time_ms, interval) "
            "VALUES (?,?,?,?,?)",
            (seq, digest, signature.SerializeToString(), self._wall_ms(), self.sign_every),
        )
        self._signed_seq = seq
        self._last_sign = time.monotonic()

    def _maybe_rotate(self, written: int = 0) -> None:
        path = self._file
        self._since_checkpoint += written
        if self._since_checkpoint >= CHECKPOINT_BYTES and self._checkpointer is not None:
            self._since_checkpoint = 0
            self._checkpointer.start()
        if path is None or self.rotate_bytes <= 0:
            return
        # The files are looked at only once what was written since could matter
        # (two stat calls per group cost more than the group's insert).
        self._since_stat += written
        if self._since_stat < self.rotate_bytes // 16:
            return
        self._since_stat = 0
        try:
            now = path.stat().st_size + size(path.with_name(path.name + "-wal"))
        except OSError:
            return
        if now >= self.rotate_bytes:
            self._rotate(path)

    def _rotate(self, path: Path) -> None:
        """Sign the head and go on in the next file, opened before this one is
        closed: if it cannot be (the disk full, the directory read-only, the name
        taken), the rotation is postponed and the records stay in this file."""
        db = self._db
        assert db is not None
        if self._checkpointer is not None:
            self._checkpointer.join()
        following = next_file(path)
        try:
            self._sign_head(db)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if following.exists() or following.is_symlink():  # never write into another's
                raise FileExistsError(f"{following.name} is already there")
        except (sqlite3.Error, OSError) as exc:
            self._rollback()
            log.warning("audit log %s: rotation postponed: %s", path, exc)
            return
        try:
            opened = connect(following)
        except (sqlite3.Error, OSError) as exc:
            for made in (following, *(following.with_name(following.name + x) for x in _SIDE)):
                with contextlib.suppress(OSError):  # what the failed open left (ours)
                    made.unlink()
            log.warning("audit log %s: rotation postponed: %s", path, exc)
            return
        db.close()
        self._file, self._db = following, opened
        self._checkpointer = Checkpointer(following)
        log.info("audit log rotated to %s at record %d", following, self._seq)

    # -- reading ----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records appended and not yet written."""
        return len(self._pending)

    @property
    def seq(self) -> int:
        """The last record written."""
        return self._seq


#: The files SQLite keeps beside a database.
_SIDE = ("-wal", "-shm", "-journal")


def read_records(directory: Path, since: int = 0) -> Iterator[tuple[int, AuditRecord]]:
    """Every record with seq > ``since``, oldest first, across the files."""
    for path in audit_files(directory):
        with contextlib.closing(connect(path, readonly=True)) as db:
            last = last_seq(db)
            if last is None or last <= since:
                continue
            for _, body, _, _ in stored(db, since):
                yield record_of(body)


__all__ = [
    "GENESIS",
    "HEAD_PAYLOAD_TYPE",
    "AuditLog",
    "AuditUnavailable",
    "audit_files",
    "canonical",
    "chain_hash",
    "head_payload",
    "read_records",
    "record_of",
]
