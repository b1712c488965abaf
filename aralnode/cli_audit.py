"""``aralnode audit verify|tail|export``: read a node's audit log from its data dir.

``verify`` exits 0 when every record chains and every signed head is the node's,
1 naming the first bad record (docs/audit.md says what each kind means), 2 when
there is nothing to verify. ``tail`` prints the newest records (a table, or one
JSON object per line with ``--json``) and with ``--follow`` keeps printing new ones
(it reads the files read-only: the node keeps writing). ``export`` writes JSONL.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgpack
from cryptography.hazmat.primitives import serialization

from aralnode._logs import FORMAT_CHARACTERS
from aralnode.config import NodeConfig
from aralnode.core.audit import AuditRecord
from aralnode.core.errors import DataLoss, NotFound
from aralnode.core.identity import Identity, PublicKey
from aralnode.store.audit import audit_files, read_records
from aralnode.store.audit_verify import verify
from aralnode.store.keys import KEY_FILE

FOLLOW_POLL_SECONDS = 0.5

#: What reading a damaged file raises: not SQLite at all, a table or column of
#: another shape, a group that does not split (``BadGroup``, a ValueError), a
#: record's bytes that do not unpack into a record.
_UNREADABLE = (sqlite3.Error, ValueError, TypeError, KeyError, msgpack.UnpackException)


class NothingToRead(NotFound):
    """No audit log where one was looked for, or no key to verify it with: exit
    code 2, one line (the JSON error object under ``--json``: ``cli.main``)."""

    default_reason = "NO_AUDIT_LOG"


def _no_log(directory: Path) -> NothingToRead:
    return NothingToRead(f"no audit log in {directory}", details={"dir": str(directory)})


def _readable(directory: Path, since: int = 0) -> Iterator[tuple[int, AuditRecord]]:
    """``read_records``, a damaged file raising ``DataLoss`` (one line, or the error
    object under ``--json``: ``cli.main``) rather than a traceback."""
    try:
        yield from read_records(directory, since)
    except _UNREADABLE as exc:
        raise DataLoss(
            f"the audit log in {directory} cannot be read: {exc} "
            "(`aralnode audit verify` names the damage)",
            reason="AUDIT_UNREADABLE",
        ) from None


def audit_dir(ns: argparse.Namespace) -> Path:
    """The log's directory: ``--dir``, else the data dir's ``audit/``."""
    if ns.dir:
        return Path(ns.dir)
    data_dir = Path(ns.data_dir) if ns.data_dir else None
    return NodeConfig(name=ns.name, data_dir=data_dir).resolved_data_dir / "audit"


def _public_key(ns: argparse.Namespace) -> PublicKey:
    if ns.public_key:
        pem = Path(ns.public_key).read_bytes()
        key = serialization.load_pem_public_key(pem)
        spki = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return PublicKey(spki)
    data_dir = Path(ns.data_dir) if ns.data_dir else NodeConfig(name=ns.name).resolved_data_dir
    path = data_dir / KEY_FILE
    if not path.exists():  # never make a key here: that would "verify" nothing
        raise FileNotFoundError(f"no identity key at {path}; give --public-key FILE")
    return Identity.from_pem(path.read_bytes()).public_key


def _verify(ns: argparse.Namespace) -> int:
    directory = audit_dir(ns)
    if not audit_files(directory):
        raise _no_log(directory)
    try:
        key = _public_key(ns)
    except OSError as exc:  # (a file name, not "[Errno 2]")
        where = f"{exc.filename}: " if exc.filename else ""
        raise NothingToRead(f"{where}{exc.strerror or exc}", reason="NO_PUBLIC_KEY") from None
    except ValueError as exc:
        raise NothingToRead(str(exc), reason="NO_PUBLIC_KEY") from None
    try:
        report = verify(directory, key)
    except _UNREADABLE as exc:  # (verify reports a damaged file: this is a backstop)
        raise DataLoss(
            f"the audit log in {directory} cannot be verified: {exc}", reason="AUDIT_UNREADABLE"
        ) from None
    if ns.json:
        print(json.dumps(report.as_dict(), indent=2))
    elif report.problem is None:
        print(
            f"ok: {report.records} records in {report.files} file(s), chain intact, "
            f"{report.heads} signed head(s) by {key.key_id} (last signed: {report.last_signed})"
        )
        for note in report.notes:
            print(f"note: {note}")
    else:
        p = report.problem
        print(f"FAILED at record {p.seq}: {p.kind}: {p.detail} ({p.file})", file=sys.stderr)
    return 0 if report.ok else 1


def _row(seq: int, record: AuditRecord) -> dict[str, Any]:
    return {"seq": seq, **record._asdict()}


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _print(rows: list[tuple[int, AuditRecord]], as_json: bool, out: TextIO) -> None:
    if as_json:
        for seq, record in rows:
            out.write(json.dumps(_row(seq, record), separators=(",", ":")) + "\n")
        out.flush()
        return
    for seq, r in rows:
        who = (
            r.principal if r.principal == r.caller or not r.caller else f"{r.principal}<{r.caller}"
        )
        outcome = r.outcome if not r.reason else f"{r.outcome}/{r.reason}"
        line = (
            f"{_shown(who) or '-':<20} {_shown(r.action):<28} {r.decision or '-':<8} "
            f"{_shown(outcome)}"
        )
        out.write(f"{seq:>8}  {_when(r.time_ms)}  {r.door:<7} {r.point:<10} {line}\n")
    out.flush()


_CONTROL = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff{FORMAT_CHARACTERS}]")


def _shown(text: str) -> str:
    """``text`` for a one-line row: a control character (a newline a caller put in a
    capability id or a principal, say) escaped, so no record reads as another; a
    format character (a bidi override that shows the rest of a line reversed, a
    zero-width space) escaped, so none disguises what the operator reads; and a
    lone surrogate (a record an older node kept), which no terminal's UTF-8 can show."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _tail(ns: argparse.Namespace) -> int:
    directory = audit_dir(ns)
    if not audit_files(directory) and not ns.follow:
        raise _no_log(directory)
    last: deque[tuple[int, AuditRecord]] = deque(maxlen=max(0, ns.n))
    seq = 0
    for seq, record in _readable(directory) if audit_files(directory) else ():
        last.append((seq, record))
    _print(list(last), ns.json, sys.stdout)
    seq = last[-1][0] if last else seq
    while ns.follow:
        time.sleep(FOLLOW_POLL_SECONDS)  # polling another process's file (noqa: sleep-ok)
        new = list(_readable(directory, since=seq)) if audit_files(directory) else []
        if new:
            _print(new, ns.json, sys.stdout)
            seq = new[-1][0]
    return 0


def _export(ns: argparse.Namespace) -> int:
    directory = audit_dir(ns)
    if not audit_files(directory):
        raise _no_log(directory)
    count = 0
    for seq, record in _readable(directory, since=ns.since):
        sys.stdout.write(json.dumps(_row(seq, record), separators=(",", ":")) + "\n")
        count += 1
    print(f"exported {count} record(s)", file=sys.stderr)
    return 0


def add_parser(subparsers: Any) -> None:
    """``audit`` and its subcommands, on ``aralnode``'s subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", help="the node's data dir (default: that of --name)")
    where.add_argument("--name", default="aralnode", help="node name (default: aralnode)")
    where.add_argument("--dir", help="the audit log's directory (default: DATA_DIR/audit)")
    audit = subparsers.add_parser("audit", help="the node's tamper-evident audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    check = sub.add_parser("verify", parents=[where], help="check the chain and signed heads")
    check.add_argument("--public-key", help="PEM public key to verify with (default: the node's)")
    check.add_argument("--json", action="store_true", help="as JSON")
    check.set_defaults(func=_verify)
    tail = sub.add_parser("tail", parents=[where], help="the newest records")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=_tail)
    export = sub.add_parser("export", parents=[where], help="every record as JSONL on stdout")
    export.add_argument("--since", type=int, default=0, help="only records after this seq")
    export.set_defaults(func=_export)


__all__ = ["NothingToRead", "add_parser", "audit_dir"]
