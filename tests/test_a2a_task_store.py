"""The A2A task store's bounds, on the store itself (``bridge/_a2a_tasks.py``): who
is evicted past them (the owner that holds the most, least recently saved first;
never the task being saved, never a running one), what one task may hold (its
newest messages, within its share of the bytes), and that the size it keeps of
each task, measured as the task runs, is the task's serialized size."""

from __future__ import annotations

import random

from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2 as a2a

from aralnode.bridge._a2a_tasks import MAX_HISTORY, BoundedTaskStore
from aralnode.bridge.a2a import _Owner, share_of

DONE = a2a.TaskState.TASK_STATE_COMPLETED
WAITING = a2a.TaskState.TASK_STATE_INPUT_REQUIRED
WORKING = a2a.TaskState.TASK_STATE_WORKING


def ctx(owner: str) -> ServerCallContext:
    return ServerCallContext(user=_Owner(owner))


def task(task_id: str, size: int = 10, state: int = DONE) -> a2a.Task:
    made = a2a.Task(id=task_id, context_id="c")
    made.status.state = state  # type: ignore[assignment]
    made.history.add(message_id=f"m-{task_id}").parts.add(text="x" * size)
    return made


async def kept(store: BoundedTaskStore, owner: str) -> list[str]:
    listed = await store.list(a2a.ListTasksRequest(page_size=100), ctx(owner))
    return sorted(t.id for t in listed.tasks)


async def test_a_flood_of_tasks_from_one_owner_evicts_its_own_first() -> None:
    """Past the count, the owner that holds the most tasks loses its oldest: a
    caller's finished and waiting tasks outlive a flood of another's."""
    store = BoundedTaskStore(10, None, _Owner)
    await store.save(task("done"), ctx("bob"))
    await store.save(task("asks", state=WAITING), ctx("bob"))
    for i in range(50):
        await store.save(task(f"f{i}", state=WAITING), ctx("anonymous@10.0.0.9"))
    assert await kept(store, "bob") == ["asks", "done"]
    assert await kept(store, "anonymous@10.0.0.9") == sorted(f"f{i}" for i in range(42, 50))
    assert store.count == 10


async def test_large_tasks_from_one_owner_evict_its_own_first() -> None:
    """Past the bytes, the owner that holds the most bytes loses its oldest, though
    another holds more tasks."""
    store = BoundedTaskStore(1000, None, _Owner, max_bytes=80_000)
    for i in range(5):
        await store.save(task(f"small{i}", 100), ctx("bob"))
    for i in range(20):
        await store.save(task(f"big{i}", 9000), ctx("mallory"))
    assert await kept(store, "bob") == [f"small{i}" for i in range(5)]
    assert len(await kept(store, "mallory")) == 8
    assert store.bytes <= store.max_bytes


async def test_among_equals_the_least_recently_saved_goes() -> None:
    """Owners that hold as much: the task saved longest ago goes (saved again, a
    task is recent again)."""
    store = BoundedTaskStore(3, None, _Owner)
    for who in ("a", "b", "c"):
        await store.save(task(who), ctx(who))
    await store.save(task("a"), ctx("a"))  # a is the most recent now
    await store.save(task("d"), ctx("d"))
    assert [await kept(store, w) for w in "abcd"] == [["a"], [], ["c"], ["d"]]


async def test_the_task_being_saved_is_spared_even_when_its_owner_holds_most() -> None:
    """The saved task is its caller's answer: when the heaviest owner holds only
    that task, the next heaviest gives way."""
    store = BoundedTaskStore(1000, None, _Owner, max_bytes=80_000)  # 10,000 a task
    for i in range(8):
        await store.save(task(f"o{i}", 8900), ctx(f"owner{i}"))
    await store.save(task("m1", 100), ctx("mallory"))
    grown = task("m1", 100)
    grown.history.add(message_id="more").parts.add(text="y" * 9700)
    await store.save(grown, ctx("mallory"))  # the heaviest now: only m1, being saved
    assert await kept(store, "mallory") == ["m1"]
    assert await kept(store, "owner0") == []  # the oldest of the next heaviest
    assert [await kept(store, f"owner{i}") for i in range(1, 8)] == [[f"o{i}"] for i in range(1, 8)]
    await store.save(task("o8", 8900), ctx("owner8"))  # and after it, mallory goes first
    assert await kept(store, "mallory") == []


async def test_running_tasks_are_never_evicted_nor_weigh_in() -> None:
    store = BoundedTaskStore(3, None, _Owner)
    for i in range(3):
        await store.save(task(f"r{i}", state=WORKING), ctx("mallory"))
    await store.save(task("b1"), ctx("bob"))
    await store.save(task("b2"), ctx("bob"))
    assert await kept(store, "mallory") == ["r0", "r1", "r2"]
    assert await kept(store, "bob") == ["b2"]


async def test_anonymous_callers_share_by_address_an_ipv6_client_by_its_64() -> None:
    """One IPv6 client has a /64 of addresses: its tasks are one share, not one a
    task (a principal is itself; IPv4 clients are each their address)."""
    assert share_of("alice") == "alice"
    assert share_of("anonymous@127.0.0.2") == "anonymous@127.0.0.2"
    one = {share_of(f"anonymous@[2001:db8::{i:x}]") for i in range(1, 300)}
    assert one == {share_of("anonymous@%5B2001:db8::1%5D")} == {"anonymous@2001:db8::/64"}
    assert share_of("anonymous@[2001:db8:0:1::1]") != share_of("anonymous@[2001:db8::1]")
    store = BoundedTaskStore(10, None, _Owner, share_of=share_of)
    await store.save(task("legit"), ctx("anonymous@[2001:db8:1::1]"))
    for i in range(40):  # each task from another address of the same /64
        await store.save(task(f"f{i}"), ctx(f"anonymous@[2001:db8::{i + 1:x}]"))
    assert await kept(store, "anonymous@[2001:db8:1::1]") == ["legit"]


async def test_a_task_keeps_its_newest_messages_within_its_share() -> None:
    """At most ``MAX_HISTORY`` messages, and at most ``task_max_bytes`` in all: the
    oldest go, on the task the SDK saved too (its own copy holds no more)."""
    store = BoundedTaskStore(100, None, _Owner, max_bytes=80_000)  # 10,000 a task
    many = a2a.Task(id="many", context_id="c")
    many.status.state = WAITING
    for i in range(100):
        many.history.add(message_id=f"m{i}").parts.add(text="hi")
    await store.save(many, ctx("bob"))
    assert [m.message_id for m in many.history] == [f"m{i}" for i in range(68, 100)]
    assert len(many.history) == MAX_HISTORY
    large = task("large", 10)
    for i in range(5):
        large.history.add(message_id=f"big{i}").parts.add(text="y" * 3000)
        await store.save(large, ctx("bob"))
    stored = await store.get("large", ctx("bob"))
    assert stored is not None
    assert [m.message_id for m in stored.history] == ["big2", "big3", "big4"]
    assert stored.ByteSize() <= store.task_max_bytes
    assert store.bytes == stored.ByteSize() + many.ByteSize()


async def test_the_size_kept_of_each_task_is_its_serialized_size() -> None:
    """Measured as a task runs (the messages added since its last save), the
    store's bytes are what its tasks serialize to, whatever was saved: a history
    grown on the same object or on a copy, replaced, trimmed; status notes,
    artifacts, metadata; tasks evicted and deleted."""
    rng = random.Random(7)
    store = BoundedTaskStore(12, None, _Owner, max_bytes=60_000)
    owners = ["alice", "bob", "anonymous@10.0.0.1"]
    live: dict[str, tuple[a2a.Task, str]] = {}
    for step in range(600):
        task_id = f"t{rng.randrange(20)}"
        made, owner = live.get(task_id) or (
            a2a.Task(id=task_id, context_id="c"),
            rng.choice(owners),
        )
        if rng.random() < 0.3:  # the SDK's next TaskManager works on a copy from the store
            made = (await store.get(task_id, ctx(owner))) or made
        _change(rng, made, step)
        if rng.random() < 0.05:
            await store.delete(task_id, ctx(owner))
            live.pop(task_id, None)
            continue
        await store.save(made, ctx(owner))
        live[task_id] = (made, owner)
        stored = [await store.get(t, ctx(o)) for t, (_, o) in live.items()]
        assert store.bytes == sum(t.ByteSize() for t in stored if t is not None)
        assert store.count == sum(t is not None for t in stored) <= store.limit
        assert store.bytes <= store.max_bytes
        assert all(len(t.history) <= MAX_HISTORY for t in stored if t is not None)


def _change(rng: random.Random, made: a2a.Task, step: int) -> None:
    """What the SDK does to a task between saves (and a bit more)."""
    roll = rng.random()
    if roll < 0.6:
        for _ in range(rng.randrange(1, 4)):
            made.history.add(message_id=f"s{step}-{rng.random()}").parts.add(
                text="z" * rng.choice((1, 50, 900, 4000))
            )
    elif roll < 0.7:
        del made.history[: rng.randrange(len(made.history) + 1)]
    elif roll < 0.8:
        made.artifacts.add(artifact_id=f"a{step}").parts.add(text="r" * rng.randrange(3000))
    elif roll < 0.9:
        made.metadata.update({"k": "v" * rng.randrange(200)})
    made.status.state = rng.choice((DONE, WAITING, WORKING))
    made.status.message.message_id = f"note{step}"


async def test_the_stores_own_bookkeeping_stays_bounded() -> None:
    """The heaps that find the heaviest owner hold about one entry an owner, however
    many saves went by (stale entries are dropped, not kept)."""
    store = BoundedTaskStore(200, None, _Owner)
    for i in range(5000):
        await store.save(task(f"t{i % 400}"), ctx(f"o{i % 50}"))
    assert store.count == 200
    shares = len(store._shares)
    assert len(store._by_count) <= 2 * shares + 66
    assert len(store._by_bytes) <= 2 * shares + 66
