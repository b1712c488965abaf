"""Background tasks an owner keeps until they end and cancels together when it stops.

asyncio keeps only a weak reference to a running task: a task nobody holds may be
collected mid-flight. Each owner (the node, discovery, the channel hub) holds its
tasks in a ``TaskSet``; a finished task leaves the set by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound="asyncio.Future[Any]")


class TaskSet:
    """Tasks held until they end; ``cancel`` ends what is left."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task (named ``name``, if given) and hold it until it ends."""
        return self.track(asyncio.create_task(coro, name=name))

    def track(self, task: F) -> F:
        """Hold ``task`` until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __iter__(self) -> Iterator[asyncio.Future[Any]]:
        return iter(list(self._tasks))

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel(self) -> None:
        """Cancel every task still held and wait until each has ended (its exception,
        if any, is dropped: the owner is stopping)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
