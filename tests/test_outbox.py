"""Outboxes and inboxes: memory and SQLite behave alike; SQLite survives a reopen."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode.core.outbox import InboundRecord
from aralnode.store import MemoryInbox, MemoryOutbox, Outbox, SqliteStore

Factory = Callable[[], Outbox]


@pytest.fixture(params=["memory", "sqlite"])
def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    made: list[Outbox] = []

    def make() -> Outbox:
        box: Outbox = (
            MemoryOutbox() if request.param == "memory" else SqliteStore(tmp_path / "c.sqlite3")
        )
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


def put(box: Outbox, peer: str, n: int) -> list[int]:
    return [
        box.append(
            peer,
            message_id=f"m{i}",
            kind=3,
            timestamp_ms=1000 + i,
            expires_ms=0,
            content=b"c%d" % i,
            sealed=b"s%d" % i,
        )
        for i in range(n)
    ]


def test_sequence_numbers_grow_per_peer(make_outbox: Factory) -> None:
    box = make_outbox()
    assert put(box, "p", 3) == [1, 2, 3]
    assert put(box, "q", 2) == [1, 2]
    assert box.count("p") == 3
    assert box.count("q") == 2
    assert sorted(box.peers()) == ["p", "q"]


def test_unsent_ack_withdraw_tombstones(make_outbox: Factory) -> None:
    box = make_outbox()
    assert (box.last_seq("p"), box.first_unacked("p")) == (0, 1)
    put(box, "p", 10)
    assert (box.last_seq("p"), box.first_unacked("p")) == (10, 1)
    assert [e.seq for e in box.unsent("p", 0, 4)] == [1, 2, 3, 4]
    assert [e.seq for e in box.unsent("p", 8, 100)] == [9, 10]
    assert box.ack("p", 3) == 3
    assert box.ack("p", 2) == 0  # cumulative: nothing left below 3
    assert box.first_unacked("p") == 4
    assert box.withdraw("p", 5)
    assert not box.withdraw("p", 5)
    assert box.count("p") == 6
    # A withdrawn message stays as a tombstone: the numbering keeps no gap.
    entries = box.unsent("p", 0, 100)
    assert [e.seq for e in entries] == [4, 5, 6, 7, 8, 9, 10]
    assert [e.withdrawn for e in entries] == [False, True] + [False] * 5
    tomb = box.get("p", 5)
    assert tomb is not None
    assert (tomb.message_id, tomb.sealed, tomb.content) == ("m4", b"", b"")
    assert box.ack("p", 10) == 6  # live ones only
    assert box.count("p") == 0
    assert box.peers() == []
    assert (box.last_seq("p"), box.first_unacked("p")) == (10, 11)
    assert put(box, "p", 1) == [11]  # never reused


def test_sqlite_outbox_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    box = SqliteStore(path)
    epoch = box.epoch
    put(box, "p", 5)
    box.ack("p", 2)
    box.save("p", InboundRecord("e1", 7, 9))
    box.close()
    again = SqliteStore(path)
    try:
        assert again.epoch == epoch
        assert again.count("p") == 3
        assert [e.message_id for e in again.unsent("p", 0, 10)] == ["m2", "m3", "m4"]
        assert put(again, "p", 1) == [6]
        assert again.load("p") == InboundRecord("e1", 7, 9)
        assert again.load("unknown") == InboundRecord()
    finally:
        again.close()


def test_inbox_transaction_is_atomic(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.sqlite3")
    try:
        with store.transaction() as tx:
            assert tx is not None
            tx.execute("CREATE TABLE effects (v INTEGER)")

        def crashing_handler() -> None:
            with store.transaction() as tx:
                assert tx is not None
                tx.execute("INSERT INTO effects VALUES (1)")
                store.save("p", InboundRecord("e", 1, 1))
                raise RuntimeError("handler crashed")

        with pytest.raises(RuntimeError):
            crashing_handler()
        assert store.load("p") == InboundRecord()
        assert store.db.execute("SELECT COUNT(*) FROM effects").fetchone() == (0,)
    finally:
        store.close()


def test_a_failing_savepoint_rolls_back_only_its_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.sqlite3")
    try:
        with store.transaction() as tx:
            assert tx is not None
            tx.execute("CREATE TABLE effects (v INTEGER)")
        with store.transaction() as tx:
            assert tx is not None
            with store.savepoint():
                tx.execute("INSERT INTO effects VALUES (1)")

            def failing() -> None:
                with store.savepoint():
                    tx.execute("INSERT INTO effects VALUES (2)")
                    raise RuntimeError("handler failed halfway")

            with pytest.raises(RuntimeError):
                failing()
            with store.savepoint():
                tx.execute("INSERT INTO effects VALUES (3)")
            store.save("p", InboundRecord("e", 3, 3))
        rows = [r[0] for r in store.db.execute("SELECT v FROM effects ORDER BY v")]
        assert rows == [1, 3]
        assert store.load("p") == InboundRecord("e", 3, 3)
    finally:
        store.close()


def test_memory_inbox_copies() -> None:
    inbox = MemoryInbox()
    rec = InboundRecord("e", 1, 1)
    inbox.save("p", rec)
    rec.processed_seq = 99
    assert inbox.load("p") == InboundRecord("e", 1, 1)
    with inbox.transaction() as tx:
        assert tx is None


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(1, 5)),
        st.tuples(st.just("ack"), st.integers(0, 40)),
        st.tuples(st.just("withdraw"), st.integers(1, 40)),
        st.tuples(st.just("unsent"), st.integers(0, 40)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_memory_outbox_matches_a_model(ops: list[tuple[str, int]]) -> None:
    """Against a dict model: acked seqs are gone, withdrawn ones are tombstones (still
    in ``unsent``, not in ``count``), the rest stay in order."""
    box = MemoryOutbox()
    model: dict[int, str] = {}
    tombs: set[int] = set()
    next_seq = 1
    for op, arg in ops:
        if op == "put":
            for seq in put(box, "p", arg):
                assert seq == next_seq
                model[seq] = f"m{seq}"
                next_seq += 1
        elif op == "ack":
            gone = [s for s in model if s <= arg]
            assert box.ack("p", arg) == len(gone)
            for s in gone:
                del model[s]
            tombs = {s for s in tombs if s > arg}
        elif op == "withdraw":
            assert box.withdraw("p", arg) == (arg in model)
            if model.pop(arg, None) is not None:
                tombs.add(arg)
        else:
            entries = box.unsent("p", arg, 1000)
            assert [e.seq for e in entries] == sorted(s for s in model.keys() | tombs if s > arg)
            assert {e.seq for e in entries if e.withdrawn} == {s for s in tombs if s > arg}
        assert box.count("p") == len(model)


def test_memory_outbox_compacts_after_acks() -> None:
    box = MemoryOutbox()
    put(box, "p", 3000)
    assert box.ack("p", 2500) == 2500
    assert [e.seq for e in box.unsent("p", 0, 3)] == [2501, 2502, 2503]
    assert box.withdraw("p", 2600)
    assert box.get("p", 2999) is not None
    gone = box.get("p", 2600)
    assert gone is not None
    assert gone.withdrawn
    assert box.get("p", 2500) is None
    assert box.count("p") == 499


def test_a_forgotten_peer_leaves_nothing_in_memory_and_its_numbering_goes_on() -> None:
    box, inbox = MemoryOutbox(), MemoryInbox()
    put(box, "p", 3)
    inbox.save("p", InboundRecord("e", 5, 5))
    box.forget("p")
    inbox.forget_marks("p")
    assert (box.count("p"), box.peers(), inbox.load("p")) == (0, [], InboundRecord())
    # Whoever comes next (``p`` again, or anyone new) is numbered past what ``p``
    # was given, and told to skip to it: no new message looks like an old one.
    assert (box.last_seq("p"), box.first_unacked("p")) == (3, 4)
    assert put(box, "p", 1) == [4]
    assert put(box, "q", 1) == [4]
    assert box.unsent("p", 3, 10)[0].seq == 4


def test_a_forgotten_peer_s_responses_leave_the_durable_outbox(tmp_path: Path) -> None:
    box = SqliteStore(tmp_path / "c.sqlite3")
    try:
        put(box, "p", 2)  # kind 3: notifications, the program's own
        box.append(
            "p",
            message_id="r",
            kind=2,  # a response
            timestamp_ms=1,
            expires_ms=0,
            content=b"x" * 1000,
            sealed=b"y" * 1000,
        )
        box.save("p", InboundRecord("e", 5, 5))
        box.forget("p")
        box.forget_marks("p")
        assert box.count("p") == 2
        entry = box.get("p", 3)
        assert entry is not None
        assert entry.withdrawn
        assert box.load("p") == InboundRecord("e", 5, 5)  # exactly once across absence
    finally:
        box.close()
