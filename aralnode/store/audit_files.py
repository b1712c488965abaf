"""The audit log's files: their names and numbering, opening one, and the thread
that checkpoints the file being written (``aralnode.store.audit``).

The files are ``audit-000001.db``, ``audit-000002.db``, ... numbered from 1 with no
gap: a rotation starts the next number, and nothing removes a file (there is no
pruning). A gap means a file was removed or renamed: ``verify`` reports it and the
node does not start on it (``numbering_gap``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from aralnode._logs import get_logger
from aralnode.store.audit_rows import GROUPS_SCHEMA

log = get_logger("aralnode.audit")

FILE_PATTERN = "audit-{:06d}.db"

SCHEMA = (
    GROUPS_SCHEMA
    + """
CREATE TABLE IF NOT EXISTS heads (
  seq INTEGER PRIMARY KEY,
  hash BLOB NOT NULL,
  signature BLOB NOT NULL,
  time_ms INTEGER NOT NULL,
  interval INTEGER NOT NULL
);
"""
)


def audit_files(directory: Path) -> list[Path]:
    """The log's files, oldest first."""
    return sorted(directory.glob("audit-[0-9][0-9][0-9][0-9][0-9][0-9].db"))


def file_number(path: Path) -> int:
    """The number in a file's name (``audit-000007.db``: 7)."""
    return int(path.stem.rsplit("-", 1)[1])


def next_file(path: Path) -> Path:
    """The file after ``path`` in the numbering."""
    return path.with_name(FILE_PATTERN.format(file_number(path) + 1))


def numbering_gap(files: list[Path]) -> tuple[int, str] | None:
    """Where ``files`` (``audit_files``) do not run 1, 2, 3, ...: the index in
    ``files`` of the first file out of place and what is missing; ``None`` if none is."""
    for index, path in enumerate(files):
        expected = index + 1
        number = file_number(path)
        if number == expected:
            continue
        if number < expected:  # only audit-000000.db sorts before audit-000001.db
            return index, f"{path.name} is not a file of the log (its files start at 1)"
        missing = FILE_PATTERN.format(expected)
        if number > expected + 1:
            missing += f"..{FILE_PATTERN.format(number - 1)}"
        where = f"the files go from {files[index - 1].name} to" if index else "the first is"
        return index, f"{missing} is missing: {where} {path.name}"
    return None


def size(path: Path) -> int:
    """A file's size, 0 if it is not there."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL: a committed group survives a crash of the process (the
            # OS has it); FULL would add an fsync per group for power loss.
            db.execute("PRAGMA synchronous=NORMAL")
            # The writer never checkpoints as it commits (SQLite's default, every
            # 1,000 pages, stalls the commit that crosses it for milliseconds: two
            # fsyncs): ``Checkpointer`` does it on its own connection in a thread.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
    return db


class Checkpointer:
    """Copies the WAL back into the file (``PRAGMA wal_checkpoint(PASSIVE)``) on its
    own connection in one worker thread, so no commit on the event loop waits for
    the fsyncs; SQLite releases the GIL meanwhile. One at a time: a request while
    one runs is dropped (the next catches up)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self.done = 0

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="aral-audit-checkpoint")
        self._thread.start()

    def _run(self) -> None:
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=1.0)) as db:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.done += 1
        except sqlite3.Error as exc:  # the writer's own commits are unaffected
            log.warning("audit log %s: checkpoint failed: %s", self.path, exc)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


__all__ = [
    "FILE_PATTERN",
    "SCHEMA",
    "Checkpointer",
    "audit_files",
    "connect",
    "file_number",
    "next_file",
    "numbering_gap",
    "size",
]
