"""TaskSet: background tasks held until they end, cancelled together."""

from __future__ import annotations

import asyncio

from aralnode.service.tasks import TaskSet


async def test_a_task_is_held_until_it_ends_and_cancel_ends_the_rest() -> None:
    tasks = TaskSet()
    release = asyncio.Event()
    stopped: list[str] = []

    async def quick() -> int:
        await release.wait()
        return 1

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append("forever")

    async def broken() -> None:
        raise RuntimeError("boom")

    q = tasks.spawn(quick(), "quick")
    f = tasks.spawn(forever())
    b = tasks.spawn(broken())
    assert q.get_name() == "quick"
    assert len(tasks) == 3
    release.set()
    assert await q == 1
    await asyncio.wait([b])
    assert set(tasks) == {f}  # the finished ones left by themselves
    await tasks.cancel()
    assert f.cancelled()
    assert stopped == ["forever"]
    assert len(tasks) == 0


async def test_track_holds_a_task_made_elsewhere() -> None:
    tasks = TaskSet()
    gate = asyncio.Event()
    task = asyncio.ensure_future(gate.wait())
    assert tasks.track(task) is task
    assert list(tasks) == [task]
    gate.set()
    await task  # the set's done callback was added first, so it has run
    assert len(tasks) == 0
