"""The A2A door's task store: the a2a-sdk's own, in memory or in SQLite, bounded.

In memory by default; a durable node keeps its tasks in SQLite under its data
directory (the SDK's ``DatabaseTaskStore`` on SQLAlchemy with aiosqlite), so a task
outlives a restart: its caller can still get, list or subscribe to what it asked.
A task that was still running when the node stopped cannot end any more: when the
store is opened again it is marked ``FAILED`` ("the node restarted while it ran"),
never left ``WORKING`` forever.

Either way at most ``limit`` tasks are kept, and at most ``max_bytes`` of them (their
serialized size: a task holds its messages and its artifacts, each up to the
node's message limit, so a count alone would let a few thousand large tasks hold
gigabytes). Past either bound the oldest finished tasks (and those waiting for
their caller's input) go first. Never dropped: the task being saved (its caller is
about to read it) and the tasks still running, which are few: each holds a call,
which the pipeline's concurrency limit bounds.
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
# The bytes of tasks kept unless the node says otherwise: a few dozen tasks at the
# node's default message limit (4 MiB a request, and a result that may be as large).
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def _database(path: Path) -> Any:
    """The SDK's SQL store on a SQLite file (a connection per use: no thread is
    left behind when the node stops)."""
    from a2a.server.tasks.database_task_store import DatabaseTaskStore  # noqa: PLC0415
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", poolclass=NullPool)
    return DatabaseTaskStore(engine)  # (its own file: the default table name)


class _Kept:
    """What the store knows of a task it keeps (oldest first in ``_order``)."""

    __slots__ = ("idle", "owner", "size")

    def __init__(self, owner: str, idle: bool, size: int) -> None:
        self.owner, self.idle, self.size = owner, idle, size


class BoundedTaskStore(TaskStore):
    """See the module docstring.

    Args:
        limit: Tasks kept at most.
        path: The SQLite file; None keeps the tasks in memory.
        owner: Makes the SDK's ``User`` for an owner's name (its store keys tasks by it).
        max_bytes: Bytes of tasks kept at most (their serialized size).
    """

    def __init__(
        self,
        limit: int,
        path: Path | None,
        owner: Callable[[str], User],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.path = path
        self._owner = owner
        self._store: Any = InMemoryTaskStore() if path is None else _database(path)
        self._order: OrderedDict[str, _Kept] = OrderedDict()
        self.bytes = 0  # of the tasks in ``_order``
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
        from sqlalchemy import func, select  # noqa: PLC0415

        await self._store.initialize()
        model = self._store.task_model
        size = sum(
            (func.coalesce(func.length(c), 0) for c in
             (model.status, model.artifacts, model.history, model.task_metadata)),
            start=func.length(model.id),
        )  # fmt: skip
        query = select(model.id, model.owner, model.status, size).order_by(model.last_updated)
        async with self._store.async_session_maker() as session:
            rows = (await session.execute(query)).all()
        cut_off: list[tuple[str, str]] = []
        for task_id, owner, status, stored in rows:
            state = status.get("state", "") if isinstance(status, dict) else ""
            done = state in _IDLE_NAMES
            self._keep(task_id, owner or "", done, int(stored or 0))
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
            self._keep(task_id, owner, True, task.ByteSize())
        await self._evict()

    def _keep(self, task_id: str, owner: str, idle: bool, size: int) -> None:
        """Note a task kept (in its place in the order if it was known)."""
        kept = self._order.get(task_id)
        if kept is None:
            self._order[task_id] = _Kept(owner, idle, size)
        else:
            self.bytes -= kept.size
            kept.owner, kept.idle, kept.size = owner, idle, size
        self.bytes += size

    def _over(self) -> bool:
        return len(self._order) > self.limit or self.bytes > self.max_bytes

    async def save(self, task: a2a_pb2.Task, context: ServerCallContext) -> None:
        await self._open()
        await self._store.save(task, context)
        self._keep(task.id, context.user.user_name, task.status.state in IDLE, task.ByteSize())
        if self._over():
            await self._evict(spare=task.id)

    async def _evict(self, spare: str = "") -> None:
        """Drop the oldest idle tasks (never ``spare``, the one being saved) until
        both bounds hold. Each victim is found from the front (the oldest; running
        tasks, few, are skipped): no walk of the whole store per task, which once
        cost more than the call."""
        while self._over():
            victim = next((k for k, v in self._order.items() if v.idle and k != spare), None)
            if victim is None:
                return  # every other task holds a call: the pipeline's limit bounds them
            kept = self._order.pop(victim)
            self.bytes -= kept.size
            await self._store.delete(victim, self._as(kept.owner))

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
        kept = self._order.pop(task_id, None)
        if kept is not None:
            self.bytes -= kept.size
        await self._store.delete(task_id, context)


__all__ = ["DEFAULT_MAX_BYTES", "TERMINAL", "BoundedTaskStore"]
