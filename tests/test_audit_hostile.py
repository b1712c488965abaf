"""The audit log against a hostile or failing store: a rotation whose next file cannot
be opened, a write that fails in a way no handler expected, a file removed or
renamed out of the numbering, damaged signed heads, and ``audit tail``/``export``
on a file that is not a log. Driven by hand (``append``, ``flush``, ``tick``): no
event loop, no sleeps."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aralnode import Node
from aralnode.cli import main
from aralnode.core.audit import AuditRecord
from aralnode.core.identity import Identity
from aralnode.store import audit as audit_store
from aralnode.store.audit import AuditLog, AuditUnavailable, audit_files, read_records
from aralnode.store.audit_files import connect as real_connect
from aralnode.store.audit_verify import verify
from aralnode.store.keys import load_identity


def record(i: int, reason: str = "") -> AuditRecord:
    return AuditRecord(
        door="grpc", caller="alice", principal="alice", action=f"demo.{i}", direction="invoke",
        peer="", trace_id=f"t{i}", decision="ok", outcome="ok", reason=reason,
    )  # fmt: skip


def commit(log: AuditLog, n: int, reason: str = "") -> list[AuditUnavailable | None]:
    """Append ``n`` records and flush them as one group: each record's fate."""
    tickets = [log.append(record(i, reason)) for i in range(n)]
    log.flush()
    fates = [log.settled(t) for t in tickets]
    assert all(done for done, _ in fates)
    return [error for _, error in fates]


def names(directory: Path) -> list[str]:
    return [p.name for p in audit_files(directory)]


@pytest.fixture
def identity() -> Identity:
    return Identity.generate()


# -- a rotation that cannot open its next file --------------------------------------


def test_a_rotation_onto_a_taken_name_is_postponed_and_the_log_goes_on(
    tmp_path: Path, identity: Identity
) -> None:
    log = AuditLog(tmp_path, identity, rotate_bytes=16 * 1024)
    log.open()
    blocker = tmp_path / "audit-000002.db"
    blocker.mkdir()  # the next file's name is taken (here by a directory)
    for _ in range(3):  # each group is past rotate_bytes: a rotation is due after each
        assert commit(log, 10, "r" * 2000) == [None] * 10
    assert log.failed is None
    assert [p.name for p in audit_files(tmp_path) if p.is_file()] == ["audit-000001.db"]
    blocker.rmdir()  # the cause is gone: the next rotation goes ahead
    assert commit(log, 10, "r" * 2000) == [None] * 10
    assert commit(log, 5) == [None] * 5
    log.close()
    assert names(tmp_path) == ["audit-000001.db", "audit-000002.db"]
    report = verify(tmp_path, identity.public_key)
    assert report.ok, report.problem
    assert [seq for seq, _ in read_records(tmp_path)] == list(range(1, 46))


def test_a_rotation_whose_new_file_cannot_be_opened_keeps_writing_the_old_one(
    tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = True

    def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
        if full and not readonly and path.name != "audit-000001.db":
            raise sqlite3.OperationalError("database or disk is full")
        return real_connect(path, readonly=readonly)

    monkeypatch.setattr(audit_store, "connect", connect)  # (what the writer opens with)
    log = AuditLog(tmp_path, identity, rotate_bytes=16 * 1024)
    log.open()
    assert commit(log, 10, "r" * 2000) == [None] * 10  # a rotation is due: it fails
    assert log.failed is None
    assert commit(log, 10) == [None] * 10  # in the old file, still open
    assert names(tmp_path) == ["audit-000001.db"]
    full = False
    assert commit(log, 10, "r" * 2000) == [None] * 10  # rotated now
    assert commit(log, 3) == [None] * 3  # into the new file
    log.close()
    assert names(tmp_path) == ["audit-000001.db", "audit-000002.db"]
    report = verify(tmp_path, identity.public_key)
    assert report.ok, report.problem
    assert report.records == 33


def test_a_write_failing_unexpectedly_refuses_then_recovers_on_the_retry(
    tmp_path: Path, identity: Identity
) -> None:
    log = AuditLog(tmp_path, identity)
    log.open()
    assert commit(log, 3) == [None] * 3
    broken = True

    def hook(db: sqlite3.Connection) -> None:
        if broken:  # a failure no handler expected, a transaction left open
            db.execute("BEGIN IMMEDIATE")
            raise RuntimeError("the store went away")

    log.test_hook = hook
    fates = commit(log, 2)
    assert all(isinstance(error, AuditUnavailable) for error in fates)
    with pytest.raises(AuditUnavailable):  # fail closed: refused while failed
        log.append(record(9))
    log.tick()  # the retry, while the cause is still there: still failed
    assert log.failed is not None
    broken = False
    log.tick()  # the retry commits the outage record: the log takes calls again
    assert log.failed is None
    assert commit(log, 1) == [None]
    log.close()
    assert verify(tmp_path, identity.public_key).ok
    actions = [r.action for _, r in read_records(tmp_path)]
    assert actions == ["demo.0", "demo.1", "demo.2", "audit.unavailable", "demo.0"]


# -- a file missing from the numbering ----------------------------------------------


def rotated(directory: Path, identity: Identity) -> list[Path]:
    """A log of four full files (20 records each) and a fifth, empty one (the
    rotation after the last group)."""
    log = AuditLog(directory, identity, rotate_bytes=16 * 1024)
    log.open()
    for _ in range(4):
        assert commit(log, 20, "r" * 2000) == [None] * 20
    log.close()
    files = audit_files(directory)
    assert [p.name for p in files] == [f"audit-00000{n}.db" for n in range(1, 6)]
    assert verify(directory, identity.public_key).ok
    return files


def _delete(files: list[Path]) -> None:
    files[3].unlink()


def _rename(files: list[Path]) -> None:
    files[3].rename(files[3].with_name("audit-000099.db"))


@pytest.mark.parametrize("remove", [_delete, _rename], ids=["deleted", "renamed"])
def test_verify_reports_a_file_missing_from_the_numbering(
    tmp_path: Path, identity: Identity, remove: Callable[[list[Path]], None]
) -> None:
    remove(rotated(tmp_path, identity))  # the last file with records; a later one is there
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (61, "removed")
    assert "audit-000004.db is missing" in problem.detail
    assert problem.file == str(tmp_path / "audit-000004.db")


def test_verify_reports_a_missing_first_file(tmp_path: Path, identity: Identity) -> None:
    rotated(tmp_path, identity)[0].unlink()
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (1, "removed")
    assert "audit-000001.db is missing" in problem.detail


@pytest.mark.parametrize("remove", [_delete, _rename], ids=["deleted", "renamed"])
def test_the_log_does_not_open_across_a_gap(
    tmp_path: Path, identity: Identity, remove: Callable[[list[Path]], None]
) -> None:
    remove(rotated(tmp_path, identity))
    before = names(tmp_path)
    log = AuditLog(tmp_path, identity, rotate_bytes=16 * 1024)
    with pytest.raises(AuditUnavailable, match=r"audit-000004\.db is missing"):
        log.open()
    with pytest.raises(AuditUnavailable):  # and it takes no records
        log.append(record(0))
    assert names(tmp_path) == before  # no file made, none written to


def test_the_oldest_files_moved_away_leave_a_log_that_goes_on(
    tmp_path: Path, identity: Identity
) -> None:
    """From review: nothing prunes the log, so moving its oldest files to an archive
    is how a node's disk stays bounded; that is no gap between two files, and the
    log goes on from its newest (verify needs the whole set back)."""
    files = rotated(tmp_path, identity)
    for path in files[:2]:
        path.unlink()
    log = AuditLog(tmp_path, identity, rotate_bytes=16 * 1024)
    log.open()
    assert commit(log, 1, "after") == [None]
    assert log.seq == 81
    log.close()
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert "audit-000001.db..audit-000002.db is missing" in problem.detail


async def test_a_node_does_not_start_on_a_log_with_a_gap(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    data_dir = tmp_path / "gap"
    rotated(data_dir / "audit", load_identity(data_dir))[3].unlink()
    node = make_node("gap", audit=True)
    with pytest.raises(AuditUnavailable, match=r"audit-000004\.db is missing"):
        async with node:
            pytest.fail("the node started on a log with a gap")


# -- damaged signed heads -----------------------------------------------------------


@contextlib.contextmanager
def first_file(directory: Path) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(sqlite3.connect(audit_files(directory)[0])) as db:
        yield db
        db.commit()


def written(directory: Path, identity: Identity) -> None:
    log = AuditLog(directory, identity, sign_every=10)
    log.open()
    assert commit(log, 25) == [None] * 25  # heads at 10 and 20, and 25 at close
    log.close()


@pytest.mark.parametrize(
    ("change", "seq"),
    [
        ("seq = -5", -5),
        ("interval = -1", 10),
        ("signature = x'ffffffff'", 10),
        ("signature = 'text'", 10),
        ("hash = 'text'", 10),
        ("interval = 'x'", 10),
    ],
)
def test_a_damaged_head_is_reported_unsigned_not_raised(
    tmp_path: Path, identity: Identity, change: str, seq: int
) -> None:
    written(tmp_path, identity)
    with first_file(tmp_path) as db:
        db.execute(f"UPDATE heads SET {change} WHERE seq = 10")
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (seq, "unsigned")
    assert "is not the node's" in problem.detail


def test_verify_on_the_command_line_names_a_garbage_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written(tmp_path / "audit", load_identity(tmp_path))
    with first_file(tmp_path / "audit") as db:
        db.execute("UPDATE heads SET signature = x'ffffffff' WHERE seq = 10")
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("FAILED at record 10: unsigned: the head at record 10")
    assert main(["audit", "verify", "--data-dir", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["problem"]["seq"] == 10
    assert report["problem"]["kind"] == "unsigned"


# -- tail and export on a damaged file ----------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(b"garbage" * 200)


def _cut_group(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE groups SET last = last + 1")
        db.commit()


@pytest.mark.parametrize("damage", [_garbage, _cut_group], ids=["not-sqlite", "bad-group"])
@pytest.mark.parametrize("command", [["tail"], ["export"]])
def test_tail_and_export_on_a_damaged_file_say_so_in_one_line(
    tmp_path: Path,
    identity: Identity,
    capsys: pytest.CaptureFixture[str],
    damage: Callable[[Path], None],
    command: list[str],
) -> None:
    written(tmp_path / "audit", identity)
    damage(audit_files(tmp_path / "audit")[0])
    assert main(["audit", *command, "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: the audit log in {tmp_path / 'audit'} cannot be read:")
    assert "DATA_LOSS AUDIT_UNREADABLE" in err


def test_tail_json_on_a_damaged_file_gives_an_error_object(
    tmp_path: Path, identity: Identity, capsys: pytest.CaptureFixture[str]
) -> None:
    written(tmp_path / "audit", identity)
    _garbage(audit_files(tmp_path / "audit")[0])
    assert main(["audit", "tail", "--data-dir", str(tmp_path), "--json"]) == 1
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["reason"] == "AUDIT_UNREADABLE"
    assert error["status"] == "DATA_LOSS"
    assert "file is not a database" in error["message"]


def test_tail_escapes_what_would_disguise_a_row() -> None:
    """From an attack: a made-up capability id holding a bidi override (U+202E shows
    the rest of the line reversed) or a zero-width space reached the operator's
    terminal raw in ``audit tail`` and the governance tables."""
    from aralnode.cli_audit import _shown

    assert _shown("demo.\u202egnp.exe\u200b") == "demo.\\u202egnp.exe\\u200b"
    assert _shown("two\nlines\u2029") == "two\\nlines\\u2029"
    assert _shown("plain ünïcode") == "plain ünïcode"
