"""The audit log: hash chain, signed heads, grouped commits, fail closed, and the
five-door acceptance (the same blocked call over gRPC, REST, MCP, WebSocket and a
peer's channel is blocked and recorded on all five; ``aralnode audit verify``
passes, then names the record that was edited, removed or swapped, and catches a
re-signed rewrite)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message_factory import GetMessageClass

from aralnode import Node
from aralnode.core.audit import AuditRecord, params_digest
from aralnode.core.capabilities import request_from
from aralnode.core.errors import NotFound
from aralnode.core.identity import Identity
from aralnode.service import auditing
from aralnode.service.auditing import DurableLog
from aralnode.store import audit as audit_store
from aralnode.store.audit import (
    HEAD_PAYLOAD_TYPE,
    AuditLog,
    AuditUnavailable,
    audit_files,
    canonical,
    chain_hash,
    head_payload,
    read_records,
)
from aralnode.store.audit_rows import insert_group, split
from aralnode.store.audit_verify import verify
from aralnode.testing import node_pair
from tests.test_parity import DELETE, open_doors

ROOT = Path(__file__).resolve().parent.parent


def record(i: int, door: str = "grpc") -> AuditRecord:
    return AuditRecord(
        door=door, caller="alice", principal="alice", action=f"demo.{i}", direction="invoke",
        peer="", trace_id=f"t{i}", decision="ok", outcome="ok",
    )  # fmt: skip


def durable(log: AuditLog) -> DurableLog:
    return DurableLog(log, asyncio.get_running_loop())


async def write(log: AuditLog, n: int) -> None:
    waiting = durable(log)
    tickets = [log.append(record(i)) for i in range(n)]
    await asyncio.gather(*(waiting.durable(t) for t in tickets))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aralnode.cli", "audit", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


@pytest.fixture
def identity() -> Identity:
    return Identity.generate()


async def test_records_chain_and_verify(tmp_path: Path, identity: Identity) -> None:
    log = AuditLog(tmp_path, identity, sign_every=10)
    log.open()
    await write(log, 25)
    log.close()
    report = verify(tmp_path, identity.public_key)
    assert report.ok, report.problem
    assert report.records == 25
    assert report.last_signed == 25  # close signs the head
    rows = list(read_records(tmp_path))
    assert [seq for seq, _ in rows] == list(range(1, 26))
    assert rows[3][1].action == "demo.3"
    assert rows[0][1].time_ms > 0  # stamped by the writer


async def test_writes_are_grouped(tmp_path: Path, identity: Identity) -> None:
    log = AuditLog(tmp_path, identity)
    log.open()
    await write(log, 500)  # appended in one loop turn: a handful of commits
    assert log.records == 500
    assert log.commits < 50, log.commits
    log.close()


async def test_a_busy_loop_groups_records_of_several_turns(
    tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: while other callbacks are ready (calls on their way to their
    records), the flush waits; records appended over several turns share a commit."""
    monkeypatch.setattr(auditing, "GROUP_SECONDS", 60.0)  # turns bound it here, not time
    log = AuditLog(tmp_path, identity)
    log.open()
    waiting = durable(log)
    loop = asyncio.get_running_loop()
    tickets: list[int] = []

    def busy(turns: int) -> None:  # a call per turn, each appending its record
        tickets.append(log.append(record(turns)))
        if turns > 1:
            loop.call_soon(busy, turns - 1)

    busy(5)
    await asyncio.gather(*(waiting.durable(t) for t in tickets))
    assert (log.records, log.commits) == (5, 1)
    log.close()


async def test_an_idle_loop_commits_at_once(
    tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = AuditLog(tmp_path, identity)
    log.open()
    waiting = durable(log)
    await waiting.durable(log.append(record(1)))
    assert (log.records, log.commits) == (1, 1)
    # A loop that never idles still commits: after GROUP_TURNS turns at most.
    monkeypatch.setattr(auditing, "GROUP_SECONDS", 60.0)
    loop = asyncio.get_running_loop()
    ticket = log.append(record(2))
    spins = 0

    def spin() -> None:  # keeps the loop's ready queue non-empty, for a while
        nonlocal spins
        spins += 1
        if spins < 10 * auditing.GROUP_TURNS:
            loop.call_soon(spin)

    spin()
    await waiting.durable(ticket)
    assert log.commits == 2
    assert spins <= auditing.GROUP_TURNS + 2, spins
    log.close()


async def test_a_group_no_call_waits_for_may_wait_longer(
    tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-way messages' records hold nothing back: while no call waits for their
    group, a busy loop commits it within ``ONE_WAY_GROUP_TURNS`` turns, not
    ``GROUP_TURNS``; a call's record brings the commit within ``GROUP_TURNS``."""
    monkeypatch.setattr(auditing, "GROUP_SECONDS", 60.0)  # turns bound it here, not time
    monkeypatch.setattr(auditing, "ONE_WAY_GROUP_SECONDS", 60.0)
    log = AuditLog(tmp_path, identity)
    log.open()
    waiting = durable(log)
    loop = asyncio.get_running_loop()
    committed_at: list[int] = []
    spins = 0
    done = loop.create_future()

    def spin(until: int) -> None:  # keeps the loop's ready queue non-empty
        nonlocal spins
        spins += 1
        if log.commits > len(committed_at):
            committed_at.append(spins)
        if spins < until:
            loop.call_soon(spin, until)
        else:
            done.set_result(None)

    log.append(record(1))  # a notification's: nobody waits for it
    spin(2 * auditing.ONE_WAY_GROUP_TURNS)
    await done
    assert len(committed_at) == 1
    assert auditing.GROUP_TURNS + 2 < committed_at[0] <= auditing.ONE_WAY_GROUP_TURNS + 2
    # A call's record, appended to a one-way group: its wait is the call's bound.
    log.append(record(2))
    spins, done = 0, loop.create_future()
    committed_at.clear()
    first = log.commits
    ticket = log.append(record(3))
    spin(2 * auditing.ONE_WAY_GROUP_TURNS)
    await waiting.durable(ticket)
    assert log.commits == first + 1
    assert spins <= auditing.GROUP_TURNS + 2, spins
    await done
    assert log.records == 3
    # The write lag (``/metrics``) is the wait of calls: the one-way group is not in it.
    assert waiting.lag[1] == 1
    log.close()


async def test_the_wal_is_checkpointed_off_the_loop(
    tmp_path: Path, identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits never checkpoint (that stalls the loop for two fsyncs); a thread
    does, on its own connection, and the chain stays verifiable."""
    monkeypatch.setattr(audit_store, "CHECKPOINT_BYTES", 1)
    log = AuditLog(tmp_path, identity)
    log.open()
    for _ in range(20):
        await write(log, 5)
    checkpointer = log._checkpointer
    assert checkpointer is not None
    checkpointer.join()
    assert checkpointer.done >= 1
    log.close()
    assert verify(tmp_path, identity.public_key).records == 100


async def test_reopened_log_goes_on_with_the_chain(tmp_path: Path, identity: Identity) -> None:
    for _ in range(3):
        log = AuditLog(tmp_path, identity)
        log.open()
        await write(log, 7)
        log.close()
    report = verify(tmp_path, identity.public_key)
    assert report.ok
    assert report.records == 21


async def test_text_with_a_lone_surrogate_is_kept_as_it_came(
    tmp_path: Path, identity: Identity
) -> None:
    # JSON allows "\ud800"; a caller's text holding one is kept byte for byte (the
    # writer packs valid text with the fast packer, this with surrogatepass), in a
    # group with ordinary records, and the chain verifies.
    log = AuditLog(tmp_path, identity)
    log.open()
    waiting = durable(log)
    odd = record(1)._replace(caller="x\ud800y", action="demo.\udfff")
    tickets = [log.append(r) for r in (record(0), odd, record(2))]
    await asyncio.gather(*(waiting.durable(t) for t in tickets))
    log.close()
    assert verify(tmp_path, identity.public_key).ok
    rows = [r for _, r in read_records(tmp_path)]
    assert [r.caller for r in rows] == ["alice", "x\ud800y", "alice"]
    assert rows[1].action == "demo.\udfff"
    assert canonical(2, rows[1]) == canonical(2, odd._replace(time_ms=rows[1].time_ms))


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(audit_files(tmp_path)[0], isolation_level=None)


def _stored(db: sqlite3.Connection) -> list[list[Any]]:
    """Every record in the file as [seq, body, hash], read out of its groups with
    plain sqlite3 and the layout (aralnode.store.audit_rows)."""
    out = []
    for first, last, bodies, hashes in db.execute("SELECT * FROM groups ORDER BY seq"):
        for i, (body, digest) in enumerate(split(first, last, bytes(bodies), bytes(hashes))):
            out.append([first + i, body, digest])
    return out


def _restore(db: sqlite3.Connection, records: list[list[Any]]) -> None:
    """``records`` written back as one group, in the order given (what someone
    editing the file by hand would leave)."""
    db.execute("DELETE FROM groups")
    first = records[0][0]
    bodies, hashes = [r[1] for r in records], [r[2] for r in records]
    insert_group(db, first, first + len(records) - 1, bodies, hashes)


async def _written(tmp_path: Path, identity: Identity, n: int = 12) -> None:
    log = AuditLog(tmp_path, identity, sign_every=5)
    log.open()
    await write(log, n)
    log.close()


async def test_verify_gives_the_last_signed_head_to_keep(
    tmp_path: Path, identity: Identity
) -> None:
    await _written(tmp_path, identity)  # 12 records, a head every 5: the last at close
    report = verify(tmp_path, identity.public_key)
    with _db(tmp_path) as db:
        by_seq = {seq: digest for seq, _, digest in _stored(db)}
    assert report.last_signed == 12
    assert report.as_dict()["last_signed_hash"] == by_seq[12].hex()  # (verify --json)


async def test_verify_names_an_edited_record(tmp_path: Path, identity: Identity) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:
        records = _stored(db)
        records[6][1] = records[6][1].replace(b"alice", b"malle")
        _restore(db, records)
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (7, "edited")


async def test_verify_names_a_removed_record(tmp_path: Path, identity: Identity) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:
        records = _stored(db)
        del records[3]
        _restore(db, records)
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (4, "removed")


async def test_verify_names_swapped_records(tmp_path: Path, identity: Identity) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:
        records = _stored(db)
        records[4][1:], records[5][1:] = records[5][1:], records[4][1:]
        _restore(db, records)
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (5, "reordered")


async def test_verify_names_a_group_cut_short(tmp_path: Path, identity: Identity) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:  # the last record's bytes taken out, the group left as it was
        first, last, bodies, _ = db.execute("SELECT * FROM groups").fetchone()
        cut = bytes(bodies)[: -len(_stored(db)[-1][1])]
        db.execute("UPDATE groups SET bodies = ? WHERE seq = ?", (cut, first))
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (first, "removed")
    assert f"ends before its record {last}" in problem.detail


@pytest.mark.parametrize(
    "row",
    [
        (1, "zz", b"\x91\x01", b"x" * 32),  # a last that is not a number
        (1, 1, "text, not bytes", b"x" * 32),
        (1, 1, b"\x91\x01", "text"),
        (1, 0, b"", b""),  # no record at all
    ],
)
async def test_a_malformed_group_is_reported_not_raised(
    tmp_path: Path, identity: Identity, row: tuple[object, ...]
) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:
        db.execute("DELETE FROM groups")
        db.execute("INSERT INTO groups VALUES (?,?,?,?)", row)
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert problem.kind == "removed"


def _old_layout_file(path: Path, identity: Identity, n: int, *, signed: bool) -> bytes:
    """A file as nodes wrote it before groups (a row a record, with its prev), its
    last record signed (else as a crash left it: its first record signed only);
    the last hash."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, "
            "prev BLOB NOT NULL, hash BLOB NOT NULL);"
            "CREATE TABLE heads (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, "
            "signature BLOB NOT NULL, time_ms INTEGER NOT NULL, interval INTEGER NOT NULL);"
        )
        prev = b"\x00" * 32
        for seq in range(1, n + 1):
            body = canonical(seq, record(100 + seq), 1)
            digest = chain_hash(prev, body)
            db.execute("INSERT INTO records VALUES (?,?,?,?)", (seq, body, prev, digest))
            prev = digest
            if seq == 1 or (seq == n and signed):
                signature = identity.sign(HEAD_PAYLOAD_TYPE, head_payload(seq, digest, 1000))
                db.execute(
                    "INSERT INTO heads VALUES (?,?,?,?,?)",
                    (seq, digest, signature.SerializeToString(), 1, 1000),
                )
    return prev


async def test_an_empty_older_file_after_a_rotation_does_not_restart_the_chain(
    tmp_path: Path, identity: Identity
) -> None:
    # An older node rotated (its second file empty) and stopped.
    _old_layout_file(tmp_path / "audit-000001.db", identity, 3, signed=True)
    with contextlib.closing(sqlite3.connect(tmp_path / "audit-000002.db")) as db:
        db.executescript(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, "
            "prev BLOB NOT NULL, hash BLOB NOT NULL);"
            "CREATE TABLE heads (seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, "
            "signature BLOB NOT NULL, time_ms INTEGER NOT NULL, interval INTEGER NOT NULL);"
        )
    log = AuditLog(tmp_path, identity)
    log.open()
    assert log.seq == 3
    await write(log, 2)
    log.close()
    report = verify(tmp_path, identity.public_key)
    assert report.ok, report.problem
    assert [seq for seq, _ in read_records(tmp_path)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("signed", [True, False])
async def test_a_log_of_the_older_layout_is_read_verified_and_continued(
    tmp_path: Path, identity: Identity, signed: bool
) -> None:
    _old_layout_file(tmp_path / "audit-000001.db", identity, 6, signed=signed)
    if not signed:  # a crash left its tail unsigned: the next start signs it
        assert verify(tmp_path, identity.public_key).ok
    log = AuditLog(tmp_path, identity)
    log.open()
    await write(log, 4)  # the chain goes on, in a new file of groups
    log.close()
    assert [p.name for p in audit_files(tmp_path)] == ["audit-000001.db", "audit-000002.db"]
    report = verify(tmp_path, identity.public_key)
    assert report.ok, report.problem
    assert report.records == 10
    assert [seq for seq, _ in read_records(tmp_path)] == list(range(1, 11))
    assert [r.action for _, r in read_records(tmp_path, since=4)] == [
        "demo.105", "demo.106", "demo.0", "demo.1", "demo.2", "demo.3",
    ]  # fmt: skip
    with contextlib.closing(sqlite3.connect(audit_files(tmp_path)[0])) as db:  # an old edit
        db.execute("UPDATE records SET body = ? WHERE seq = 2", (b"\x91\x02",))
        db.commit()
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.seq, problem.kind) == (2, "edited")


async def test_a_rechained_rewrite_is_caught_by_the_signed_heads(
    tmp_path: Path, identity: Identity
) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:  # rewrite record 3 and re-chain everything after it
        records = _stored(db)
        prev = b"\x00" * 32
        for record in records:
            if record[0] == 3:
                record[1] = record[1].replace(b"alice", b"malle")
            record[2] = prev = chain_hash(prev, record[1])
        _restore(db, records)
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert problem.kind == "unsigned"
    assert problem.seq >= 3  # the first signed head at or after the rewritten record
    assert "rewritten" in problem.detail


async def test_heads_re_signed_with_another_key_or_dropped_are_caught(
    tmp_path: Path, identity: Identity
) -> None:
    await _written(tmp_path, identity)
    with _db(tmp_path) as db:
        db.execute("DELETE FROM heads")
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert problem.kind == "unsigned"
    # A log written (and signed) by another key does not pass as this node's.
    other = tmp_path / "other"
    await _written(other, Identity.generate())
    problem = verify(other, identity.public_key).problem
    assert problem is not None
    assert problem.kind == "unsigned"


async def test_a_full_store_refuses_and_recovers(tmp_path: Path, identity: Identity) -> None:
    log = AuditLog(tmp_path, identity, retry_seconds=0.05)
    log.open()
    await write(log, 3)
    full = True

    def hook(db: sqlite3.Connection) -> None:
        # The store fills up: SQLite's own SQLITE_FULL, from its page limit.
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages if full else 1 << 30}")

    log.test_hook = hook
    big = AuditRecord(**_fields(record(0), reason="x" * 60000))  # type: ignore[arg-type]
    waiting = durable(log)
    with pytest.raises(AuditUnavailable, match="full"):
        await waiting.durable(log.append(big))
    with pytest.raises(AuditUnavailable):  # refused at once while failed
        log.append(record(9))
    full = False
    recovered = asyncio.Event()
    loop = asyncio.get_running_loop()
    while log.failed is not None:  # the writer retries on its own; wait for it
        loop.call_later(0.05, recovered.set)
        await asyncio.wait_for(recovered.wait(), 5)
        recovered.clear()
    await waiting.durable(log.append(record(10)))
    log.close()
    assert verify(tmp_path, identity.public_key).ok
    actions = [r.action for _, r in read_records(tmp_path)]
    assert actions[-2:] == ["audit.unavailable", "demo.10"]  # the outage is on record


def _fields(r: AuditRecord, **changes: object) -> dict[str, object]:
    values: dict[str, object] = r._asdict()
    values.update(changes)
    return values


def test_params_digest_is_stable() -> None:
    assert params_digest({"b": 1, "a": [1, 2]}) == params_digest({"a": [1, 2], "b": 1})
    assert params_digest(None) == ""


async def test_a_blocked_call_is_blocked_and_recorded_on_five_doors(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    book = {"shelf": "sci", "bookId": "1"}
    async with open_doors(make_node, audit=True) as doors:
        outcomes = {}
        for door in doors.all():
            if door.name in {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a"}:
                outcomes[door.name] = await door.call(DELETE, book)
        data_dir = doors.node.config.resolved_data_dir
        method = doors.node.registry.get(DELETE).method
        assert method is not None
        request = request_from(GetMessageClass(method.input_type), book)
    assert {o.status for o in outcomes.values()} == {"PERMISSION_DENIED"}, outcomes
    blocked = [r for _, r in read_records(data_dir / "audit") if r.action == DELETE]
    assert sorted(r.door for r in blocked) == ["a2a", "channel", "grpc", "mcp", "rest", "ws"]
    assert {(r.decision, r.outcome, r.reason) for r in blocked} == {
        ("block", "governance_blocked", "GOVERNANCE_BLOCK")
    }
    # One digest on every door: the request message's, however the caller spelt it.
    assert {r.params_digest for r in blocked} == {params_digest(None, request)}
    ok = cli("verify", "--data-dir", str(data_dir))
    assert ok.returncode == 0, ok.stderr
    assert "chain intact" in ok.stdout
    tail = cli("tail", "--data-dir", str(data_dir), "-n", "3", "--json")
    assert tail.returncode == 0
    assert len(tail.stdout.splitlines()) == 3
    assert all("params_digest" in json.loads(line) for line in tail.stdout.splitlines())
    # One record edited with plain sqlite3: verify fails and names it.
    seq = next(s for s, r in read_records(data_dir / "audit") if r.action == DELETE)
    with sqlite3.connect(audit_files(data_dir / "audit")[0], isolation_level=None) as db:
        records = _stored(db)
        at = next(i for i, r in enumerate(records) if r[0] == seq)
        records[at][1] = records[at][1].replace(b"block", b"nudge")
        _restore(db, records)
    bad = cli("verify", "--data-dir", str(data_dir))
    assert bad.returncode == 1
    assert f"record {seq}: edited" in bad.stderr


async def test_no_result_leaves_without_its_record(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("full", audit=True)
    async with node:
        assert await node.invoke("demo.add", {"a": 1, "b": 2}) == 3
        installed = node.pipeline.stages.audit.log
        assert isinstance(installed, DurableLog)
        audit_log = installed.store
        assert isinstance(audit_log, AuditLog)

        def full(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA query_only = 1")  # the store turns read-only

        audit_log.test_hook = full
        ran = []

        @node.capability(id="demo.effect")
        async def effect() -> str:
            ran.append(1)
            return "done"

        with pytest.raises(AuditUnavailable):
            await node.invoke("demo.effect", {})
        assert ran == [1]  # it ran, but its result did not leave unrecorded
        with pytest.raises(AuditUnavailable):  # and the next call is refused at once
            await node.invoke("demo.effect", {})
        assert ran == [1]


async def test_rotation_keeps_the_chain_verifiable(tmp_path: Path, identity: Identity) -> None:
    log = AuditLog(tmp_path, identity, rotate_bytes=32 * 1024)
    log.open()
    big = AuditRecord(**_fields(record(0), reason="r" * 2000))  # type: ignore[arg-type]
    waiting = durable(log)
    for _ in range(6):  # groups of 20 records, ~40 KB each: a new file after each
        tickets = [log.append(big) for _ in range(20)]
        await asyncio.gather(*(waiting.durable(t) for t in tickets))
    log.close()
    files = audit_files(tmp_path)
    assert len(files) >= 3
    report = verify(tmp_path, identity.public_key)
    assert report.ok, report.problem
    assert report.records == 120
    files[1].unlink()  # a whole file gone from the middle
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert problem.kind == "removed"


async def test_a_rewrite_hidden_by_removing_the_later_heads_is_caught(
    tmp_path: Path, identity: Identity
) -> None:
    log = AuditLog(tmp_path, identity, sign_every=10)
    log.open()
    await write(log, 50)  # one group: heads at 10, 20, 30, 40, 50
    log.close()
    with _db(tmp_path) as db:
        assert [r[0] for r in db.execute("SELECT seq FROM heads ORDER BY seq")] == [
            10, 20, 30, 40, 50,
        ]  # fmt: skip
        records = _stored(db)
        prev = records[9][2]  # re-chain 11..50 with record 30 edited
        for record in records[10:]:
            if record[0] == 30:
                record[1] = record[1].replace(b"alice", b"malle")
            record[2] = prev = chain_hash(prev, record[1])
        _restore(db, records)
        db.execute("DELETE FROM heads WHERE seq >= 20")
    problem = verify(tmp_path, identity.public_key).problem
    assert problem is not None
    assert (problem.kind, problem.seq) == ("unsigned", 11)


async def test_a_made_up_capability_id_is_recorded_bounded_and_shown_on_one_line(
    make_node: Callable[..., Node],
) -> None:
    """A caller's 1 MB capability id (refused, not found) is one bounded record, not
    1 MB of log; the newlines in it cannot make ``audit tail`` show a forged row."""
    node = make_node("bounded", audit=True)
    made_up = "\n    99999  2026-01-01T00:00:00.000Z  grpc    post  admin  demo.secret ok\n"
    async with node:
        with pytest.raises(NotFound):
            await node.invoke(made_up + "Z" * 1_000_000, {})
        data_dir = node.config.resolved_data_dir
    (record,) = [r for _, r in read_records(data_dir / "audit") if r.outcome == "not_found"]
    assert record.action.startswith(made_up)
    assert len(record.action) < 300
    assert record.action.endswith(f"…(+{len(made_up) + 1_000_000 - 256})")
    tail = cli("tail", "--data-dir", str(data_dir), "-n", "5")
    assert tail.returncode == 0, tail.stderr
    rows = tail.stdout.splitlines()
    assert [row for row in rows if "not_found" in row] == [rows[-1]]
    assert len(rows) == len(list(read_records(data_dir / "audit")))  # a row a record
    assert "\\n    99999" in rows[-1]


async def test_both_ends_records_of_a_message_name_the_same_trace() -> None:
    # A notification's id is its trace, and a request without one gets a trace of
    # its own: the sender's record (made as the message is judged, before it is
    # built) and the receiver's name the same one, so an auditor can match them.
    def setup(b: Node) -> None:
        @b.capability(id="demo.echo")
        async def echo(x: int) -> int:
            return x

    async with node_pair(setup, audit=True) as (a, b):
        assert a.channels is not None
        assert await a.channels.wait_connected(b.node_id, 20)
        message_id = await a.notify(b.node_id, "demo.event", {"x": 1})
        assert await a.request(b.node_id, "demo.echo", {"x": 2}) == 2
        assert await a.channels.flush(b.node_id, 20)
        # Stopped, their logs hold every record (a notification's waits for no one:
        # its group may still be open, docs/audit.md).
        await a.stop()
        await b.stop()

        def records(node: Node, action: str) -> list[AuditRecord]:
            audit_dir = node.config.resolved_data_dir / "audit"
            return [r for _, r in read_records(audit_dir) if r.action == action]

        (sent,) = records(a, "demo.event")
        (received,) = records(b, "demo.event")
        assert (sent.direction, received.direction) == ("send", "receive")
        assert sent.trace_id == received.trace_id == message_id
        (asked,) = records(a, "demo.echo")
        (served,) = records(b, "demo.echo")
        assert (asked.direction, served.direction) == ("send", "invoke")
        assert asked.trace_id
        assert asked.trace_id == served.trace_id
