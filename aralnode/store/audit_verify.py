"""``aralnode audit verify``: walk the audit log's files and signed heads, and name the
first record that is not as it was written.

What it catches (``Problem.kind``):

- ``edited``: a record's body does not hash to its stored hash;
- ``removed``: a seq is missing, a record does not chain to the one before it, or a
  file is missing from the numbering (``audit-000001.db``, 2, 3, ... with no gap:
  a whole file gone from the middle, or renamed);
- ``reordered``: a record's body names another seq than the place holding it;
- ``unsigned``: a head's signature does not verify with the node key, a head names
  a hash the record at its seq does not have (the file was rewritten and re-chained),
  or records exist and no head signs any of them.

What it cannot catch is in docs/audit.md (records after the last signed head
removed with the head's file intact; an attacker holding the node key).
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
from google.protobuf.message import DecodeError

from aralnode import _proto as pb
from aralnode.core.errors import AralError
from aralnode.core.identity import PublicKey
from aralnode.store.audit import GENESIS, HEAD_PAYLOAD_TYPE, chain_hash, head_payload
from aralnode.store.audit_files import FILE_PATTERN, audit_files, connect, numbering_gap
from aralnode.store.audit_rows import BadGroup, Stored, stored


@dataclass(slots=True, frozen=True)
class Problem:
    """The first bad record: its seq (0 for a problem of a whole file), what is
    wrong, and where."""

    seq: int
    kind: str
    detail: str
    file: str


@dataclass(slots=True)
class Report:
    """What verify found."""

    files: int = 0
    records: int = 0
    heads: int = 0
    last_seq: int = 0
    last_signed: int = 0
    last_signed_hash: str = ""  # hex: keep it elsewhere to catch a later truncation
    interval: int = 0
    problem: Problem | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ok": self.ok,
            "files": self.files,
            "records": self.records,
            "signed_heads": self.heads,
            "last_seq": self.last_seq,
            "last_signed_seq": self.last_signed,
            "last_signed_hash": self.last_signed_hash,
            "notes": list(self.notes),
        }
        if self.problem is not None:
            p = self.problem
            out["problem"] = {"seq": p.seq, "kind": p.kind, "detail": p.detail, "file": p.file}
        return out


class _Bad(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


def verify(directory: Path, public_key: PublicKey) -> Report:
    """Check every file of the log in ``directory`` against ``public_key``."""
    report = Report()
    files = audit_files(directory)
    report.files = len(files)
    gap = numbering_gap(files)
    try:
        seq, prev = 0, GENESIS
        for number, path in enumerate(files):
            if gap is not None and gap[0] == number:  # a file removed or renamed
                missing = directory / FILE_PATTERN.format(number + 1)
                raise _Bad(Problem(seq + 1, "removed", gap[1], str(missing)))
            seq, prev = _verify_file(path, public_key, seq, prev, report)
            if number < len(files) - 1 and seq > report.last_signed:
                raise _Bad(  # a rotation signs the file's end: its tail was cut or rewritten
                    Problem(
                        seq, "unsigned", f"{path.name} does not end with a signed head", str(path)
                    )
                )
        report.last_seq = seq
        if report.records and not report.heads:
            raise _Bad(
                Problem(1, "unsigned", "records exist but no signed head covers any", str(path))
            )
        tail = report.last_seq - report.last_signed
        if report.interval and tail > report.interval:
            raise _Bad(
                Problem(
                    report.last_signed + 1,
                    "unsigned",
                    f"records {report.last_signed + 1}..{report.last_seq} have no signed head "
                    f"(the node signs every {report.interval}): heads were removed",
                    str(path),
                )
            )
        if report.last_seq > report.last_signed:
            report.notes.append(
                f"records {report.last_signed + 1}..{report.last_seq} follow the last signed "
                "head (signed at the next interval or at close)"
            )
    except _Bad as bad:
        report.problem = bad.problem
    return report


def _verify_file(
    path: Path, key: PublicKey, seq: int, prev: bytes, report: Report
) -> tuple[int, bytes]:
    name = str(path)
    try:
        db = connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise _Bad(Problem(seq + 1, "removed", f"cannot open {path.name}: {exc}", name)) from None
    with contextlib.closing(db):
        hashes: dict[int, bytes] = {}
        rows = _rows(db, name)
        row = next(rows, None)
        while row is not None:
            row_seq, body, row_prev, digest = row
            following = next(rows, None)
            # The seqs first: a record missing or out of place also breaks the chain
            # of the one after it, which is not the record to name.
            _check_place(row_seq, _body_seq(body), seq, following, name)
            if chain_hash(prev if row_prev is None else row_prev, body) != digest:
                raise _Bad(Problem(row_seq, "edited", f"record {row_seq} was changed", name))
            if row_prev is not None and row_prev != prev:  # (the layout that stores it)
                raise _Bad(
                    Problem(
                        row_seq,
                        "removed",
                        f"record {row_seq} does not follow record {seq} (one was removed or "
                        "replaced)",
                        name,
                    )
                )
            seq, prev = row_seq, digest
            hashes[row_seq] = prev
            report.records += 1
            row = following
        _verify_heads(db, key, hashes, name, report)
    return seq, prev


def _check_place(
    row_seq: int, body_seq: int, seq: int, following: Stored | None, name: str
) -> None:
    """Raise unless the record at ``row_seq`` (its place) is the one written there,
    right after record ``seq``."""
    expected = seq + 1
    if body_seq != row_seq:
        # In a group a record's place is its position: one taken out shifts the rest
        # (the next place holds a later record), two swapped show as the next place
        # holding the one that belongs here.
        shifted = body_seq > row_seq and (following is None or _body_seq(following[1]) != row_seq)
        if shifted:
            what = f"records {row_seq}..{body_seq - 1} are missing"
            raise _Bad(Problem(row_seq, "removed", what, name))
        raise _Bad(
            Problem(
                row_seq, "reordered", f"row {row_seq} holds the record written as {body_seq}", name
            )
        )
    if row_seq != expected:
        what = (
            f"records {expected}..{row_seq - 1} are missing"
            if row_seq > expected
            else (f"record {row_seq} comes after {seq}")
        )
        raise _Bad(Problem(expected, "removed", what, name))


def _rows(db: sqlite3.Connection, name: str) -> Iterator[Stored]:
    try:
        yield from stored(db)
    except BadGroup as exc:
        raise _Bad(Problem(exc.seq, "removed", str(exc), name)) from None
    except (sqlite3.Error, TypeError, ValueError) as exc:  # (a column of another type)
        raise _Bad(Problem(0, "removed", f"cannot read records: {exc}", name)) from None


def _body_seq(body: bytes) -> int:
    """The seq the record was written with (the first item of its array)."""
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(body)
        unpacker.read_array_header()
        seq = unpacker.unpack()
    except (ValueError, msgpack.UnpackException, msgpack.OutOfData):
        return -1
    return seq if isinstance(seq, int) else -1


def _verify_heads(
    db: sqlite3.Connection, key: PublicKey, hashes: dict[int, bytes], name: str, report: Report
) -> None:
    try:
        heads = db.execute(
            "SELECT seq, hash, signature, interval FROM heads ORDER BY seq"
        ).fetchall()
    except sqlite3.Error as exc:
        raise _Bad(Problem(0, "unsigned", f"cannot read signed heads: {exc}", name)) from None
    for row in heads:
        seq, digest, interval = _check_head(row, key, name)
        if seq not in hashes:
            raise _Bad(
                Problem(seq, "removed", f"record {seq}, which the node signed, is gone", name)
            )
        if hashes[seq] != digest:
            raise _Bad(
                Problem(
                    seq,
                    "unsigned",
                    f"record {seq} is not the one the node signed: the log was rewritten after "
                    f"record {report.last_signed}",
                    name,
                )
            )
        # The node signs at least every `interval` records (signed into each head):
        # a longer stretch means heads were removed -- a rewrite would hide there.
        if seq - report.last_signed > interval:
            raise _Bad(
                Problem(
                    report.last_signed + 1,
                    "unsigned",
                    f"records {report.last_signed + 1}..{seq} have no signed head (the node "
                    f"signs every {interval}): heads were removed",
                    name,
                )
            )
        report.heads += 1
        if seq >= report.last_signed:
            report.last_signed, report.last_signed_hash = seq, digest.hex()
        report.interval = interval


#: A head's seq and interval are signed as 8-byte unsigned integers.
_MAX_U64 = (1 << 64) - 1


def _check_head(row: tuple[object, ...], key: PublicKey, name: str) -> tuple[int, bytes, int]:
    """A stored head's (seq, hash, interval) once its signature verifies with
    ``key``; anything else (a column of another type, a seq or interval out of
    range, a signature that is no signature) is a head that is not the node's."""
    seq, digest, blob, interval = row
    place = seq if isinstance(seq, int) else 0
    try:
        if not (isinstance(seq, int) and isinstance(interval, int)):
            raise TypeError("its seq or interval is not an integer")
        if not (0 < seq <= _MAX_U64 and 0 < interval <= _MAX_U64):
            raise ValueError(f"its seq {seq} or interval {interval} is out of range")
        if not (isinstance(digest, bytes) and isinstance(blob, bytes)):
            raise TypeError("its hash or signature is not bytes")
        signature = pb.Signature()
        signature.ParseFromString(blob)
        key.verify(HEAD_PAYLOAD_TYPE, head_payload(seq, digest, interval), signature)
    except (AralError, ValueError, TypeError, DecodeError, struct.error) as exc:
        raise _Bad(
            Problem(place, "unsigned", f"the head at record {seq!r} is not the node's: {exc}", name)
        ) from None
    return seq, digest, interval


__all__ = ["Problem", "Report", "verify"]
