"""The A2A door's task store: the a2a-sdk's own, in memory or in SQLite, bounded.

In memory by default; a durable node keeps its tasks in SQLite under its data
directory (the SDK's ``DatabaseTaskStore`` on SQLAlchemy with aiosqlite), so a task
outlives a restart: its caller can still get, list or subscribe to what it asked.
A task that was still running when the node stopped cannot end any more: when the
store is opened again it is marked ``FAILED`` ("the node restarted while it ran"),
never left ``WORKING`` forever.

Either way at most ``limit`` tasks are kept: past it the oldest finished tasks (and
those waiting for their caller's input) go first. (Tasks still running are few:
each holds a call, which the pipeline's concurrency limit bounds.)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from a2a.auth.user import User
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.context import ServerCallContext
from a2a.server.tasks import InMemoryTaskStore, TaskStore
from a2a.types import a2a_pb2

TERMINAL = frozenset({a2a_pb2.TaskState.TASK_STATE_COMPLETED, a2a_pb2.TaskState.TASK_STATE_FAILED,
                      a2a_pb2.TaskState.TASK_STATE_CANCELED,
                      a2a_pb2.TaskState.TASK_STATE_REJECTED})  # fmt: skip
# What may be dropped past the bound: the finished tasks, and those waiting for their
# caller's input (they hold no call; an outsider can open any number of them).
IDLE = TERMINAL | {a2a_pb2.TaskState.TASK_STATE_INPUT_REQUIRED}
_IDLE_NAMES = frozenset(a2a_pb2.TaskState.Name(s) for s in IDLE)


def _database(path: Path) -> Any:
    """The SDK's SQL store on a SQLite file (a connection per use: no thread is
    left behind when the node stops)."""
    from a2a.server.tasks.database_task_store import DatabaseTaskStore  # noqa: PLC0415
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", poolclass=NullPool)
    return DatabaseTaskStore(engine)  # (its own file: the default table name)


class BoundedTaskStore(TaskStore):
    """See the module docstring.

    Args:
        path: The SQLite file; None keeps the tasks in memory.
        owner: Makes the SDK's ``User`` for an owner's name (its store keys tasks by it).
    """

    def __init__(self, limit: int, path: Path | None, owner: Callable[[str], User]) -> None:
        self.limit = limit
        self.path = path
        self._owner = owner
        self._store: Any = InMemoryTaskStore() if path is None else _database(path)
        self._order: OrderedDict[str, tuple[str, bool]] = OrderedDict()  # id -> (owner, done)
        self._opened: asyncio.Future[None] | None = None

    def _as(self, owner: str) -> ServerCallContext:
        return ServerCallContext(user=self._owner(owner))

    async def _open(self) -> None:
        """Once: read what a durable store holds (oldest first), and end the tasks
        a stop cut off."""
        if self._opened is None:
            self._opened = asyncio.ensure_future(self._load())
        await asyncio.shield(self._opened)

    async def _load(self) -> None:
        if self.path is None:
            return
        from sqlalchemy import select  # noqa: PLC0415

        await self._store.initialize()
        model = self._store.task_model
        query = select(model.id, model.owner, model.status).order_by(model.last_updated)
        async with self._store.async_session_maker() as session:
            rows = (await session.execute(query)).all()
        cut_off: list[tuple[str, str]] = []
        for task_id, owner, status in rows:
            state = status.get("state", "") if isinstance(status, dict) else ""
            done = state in _IDLE_NAMES
            self._order[task_id] = (owner or "", done)
            if not done:
                cut_off.append((task_id, owner or ""))
        for task_id, owner in cut_off:
            task = await self._store.get(task_id, self._as(owner))
            if task is None:
                continue
            task.status.state = a2a_pb2.TaskState.TASK_STATE_FAILED
            task.status.message.CopyFrom(
                new_text_message(
                    "the node restarted while it ran", context_id=task.context_id, task_id=task.id
                )
            )
            await self._store.save(task, self._as(owner))
            self._order[task_id] = (owner, True)
        await self._evict()

    async def save(self, task: a2a_pb2.Task, context: ServerCallContext) -> None:
        await self._open()
        await self._store.save(task, context)
        owner = context.user.user_name
        known = task.id in self._order
        self._order[task.id] = (owner, task.status.state in IDLE)
        if not known and len(self._order) > self.limit:
            await self._evict()

    async def _evict(self) -> None:
        """Drop the oldest idle tasks until at most ``limit`` are kept. Each victim
        is found from the front (the oldest; running tasks, few, are skipped): no
        walk of the whole store per task, which once cost more than the call."""
        while len(self._order) > self.limit:
            victim = next((k for k, (_, idle) in self._order.items() if idle), None)
            if victim is None:
                return  # every task holds a call: the pipeline's limit bounds them
            owner, _ = self._order.pop(victim)
            await self._store.delete(victim, self._as(owner))

    async def get(self, task_id: str, context: ServerCallContext) -> a2a_pb2.Task | None:
        await self._open()
        task: a2a_pb2.Task | None = await self._store.get(task_id, context)
        return task

    async def list(
        self, params: a2a_pb2.ListTasksRequest, context: ServerCallContext
    ) -> a2a_pb2.ListTasksResponse:
        await self._open()
        listed: a2a_pb2.ListTasksResponse = await self._store.list(params, context)
        return listed

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await self._open()
        self._order.pop(task_id, None)
        await self._store.delete(task_id, context)


__all__ = ["TERMINAL", "BoundedTaskStore"]
