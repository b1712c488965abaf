"""The A2A door's task store: the a2a-sdk's own, in memory or in SQLite, bounded.

In memory by default; a durable node keeps its tasks in SQLite under its data
directory (the SDK's ``DatabaseTaskStore`` on SQLAlchemy with aiosqlite), so a task
outlives a restart: its caller can still get, list or subscribe to what it asked.
A task that was still running when the node stopped cannot end any more: when the
store is opened again it is marked ``FAILED`` ("the node restarted while it ran"),
never left ``WORKING`` forever.

**The store** keeps at most ``limit`` tasks and at most ``max_bytes`` of them (their
serialized size: a task holds its messages and its artifacts, each up to the node's
message limit, so a count alone would let a few thousand large tasks hold
gigabytes). Past either bound a task that holds no call goes (a finished one, or
one waiting for its caller's input): the least recently saved of the *owner that
holds the most* (tasks past the count, bytes past the bytes; as the MCP session
quota, ``_mcp_sessions``), so a flood from one owner evicts its own tasks first,
never a light user's while someone holds more. Owners are counted by their share
(``share_of``: the door counts anonymous callers by their address, an IPv6
client's /64, as the rate limit does). Never dropped: the task being saved (its
caller is about to read it) and the tasks still running, which are few: each
holds a call, which the pipeline's concurrency limit bounds.

**A task** keeps at most ``MAX_HISTORY`` messages in its history and at most
``max_bytes / TASK_SHARE`` in all: past either, its oldest messages are not kept
(A2A 1.0 §3.7: "The agent is responsible to determine which Messages are
persisted in the Task History"; clients must not rely on all being kept). A task
waiting for input that its caller keeps feeding follow-ups (each appended to its
history by the SDK) once grew past the whole store's bound, evicting every other
task on the way (it was always spared), each save slower than the last. The
trimming is done on the task the SDK saves, in place, so the SDK's own copy (kept
while the task is parked) holds no more. A task still larger than the whole
store alone (its artifacts: a result past ``max_bytes``) is answered but not kept,
rather than kept at every other task's expense.

**Cost.** A task's size is kept as it runs: each save measures the messages added
to its history since the last one, its status and its artifacts, not the whole
task again (``ByteSize`` serializes it: once per save, on a growing task, was
quadratic). The owner that holds the most is found in two heaps (by tasks and by
bytes; stale entries skipped, the heaps rebuilt when they grow past twice the
owners): O(log n) a save.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from a2a.auth.user import User
from a2a.helpers.proto_helpers import new_text_message
from a2a.server.context import ServerCallContext
from a2a.server.tasks import InMemoryTaskStore, TaskStore
from a2a.types import a2a_pb2

from aralnode._logs import get_logger

log = get_logger("aralnode.a2a")

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
# One task holds at most this share of the store's bytes: 8 MiB of the default 64,
# a request and a result at the default message limit (4 MiB each).
TASK_SHARE = 8
# Messages a task's history keeps at most (the newest). The node's own turns are
# few: a message naming no skill, its answer, a reply that names one; an approval's
# note. A bound on the count too: thousands of one-byte messages weigh little
# serialized but cost each save, and the SDK's check of each follow-up, per message.
MAX_HISTORY = 32
_HISTORY = a2a_pb2.Task.DESCRIPTOR.fields_by_name["history"].number


def _database(path: Path) -> Any:
    """The SDK's SQL store on a SQLite file (a connection per use: no thread is
    left behind when the node stops)."""
    from a2a.server.tasks.database_task_store import DatabaseTaskStore  # noqa: PLC0415
    from sqlalchemy.ext.asyncio import create_async_engine  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", poolclass=NullPool)
    return DatabaseTaskStore(engine)  # (its own file: the default table name)


# -- a task's size, kept as it runs ------------------------------------------------------


def _varint(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field(number: int, n: int) -> int:
    """Bytes a length-delimited field ``number`` of ``n`` bytes takes serialized."""
    return _varint(number << 3) + _varint(n) + n


def _rest(task: a2a_pb2.Task) -> int:
    """The serialized size of ``task`` but its history, each field measured as it
    is (no copy, no serialization of the history)."""
    size = 0
    for field, value in task.ListFields():
        if field.number == _HISTORY:
            continue
        if field.message_type is None:  # (a Task's scalars are its ids: strings)
            raw = value.encode() if isinstance(value, str) else bytes(value)
            size += _field(field.number, len(raw))
        elif field.is_repeated:
            size += sum(_field(field.number, v.ByteSize()) for v in value)
        else:
            size += _field(field.number, value.ByteSize())
    return size


def _history(task: a2a_pb2.Task, known: list[int] | None, last: str) -> list[int]:
    """The serialized size of each message of ``task``'s history: those ``known``
    (measured at its last save, the last one's id ``last``) as they were, the ones
    the SDK added since measured now. The SDK only appends to a history; one that
    is not the history measured before (shorter, another last message) is measured
    again whole."""
    history = task.history
    n = len(known) if known is not None else 0
    if known is None or len(history) < n or (n and history[n - 1].message_id != last):
        known, n = [], 0
    return known + [_field(_HISTORY, history[i].ByteSize()) for i in range(n, len(history))]


def _trim(task: a2a_pb2.Task, sizes: list[int], rest: int, cap: int) -> list[int]:
    """Drop ``task``'s oldest messages (in place) while it keeps more than
    ``MAX_HISTORY`` of them or weighs more than ``cap``; the sizes of those kept."""
    total = rest + sum(sizes)
    drop = 0
    while drop < len(sizes) and (len(sizes) - drop > MAX_HISTORY or total > cap):
        total -= sizes[drop]
        drop += 1
    if drop:
        del task.history[:drop]
    return sizes[drop:]


# -- the bookkeeping -------------------------------------------------------------------


class _Kept:
    """What the store knows of a task it keeps."""

    __slots__ = ("history", "idle", "last", "owner", "seq", "share", "size")

    def __init__(self, owner: str, share: str, idle: bool, size: int, seq: int) -> None:
        self.owner, self.share, self.idle, self.size, self.seq = owner, share, idle, size, seq
        self.history: list[int] | None = None  # its messages' sizes (None: not measured)
        self.last = ""  # the id of the last message measured


class _Share:
    """The idle tasks an owner's share holds (least recently saved first), their
    bytes, and the version of its entries in the heaps."""

    __slots__ = ("bytes", "idle", "version")

    def __init__(self) -> None:
        self.idle: OrderedDict[str, None] = OrderedDict()
        self.bytes = 0
        self.version = 0


# A heap entry: (minus the weight, the seq of the share's oldest idle task: the oldest
# goes first among equals, its version: stale if the share has changed since, share).
_Entry = tuple[int, int, int, str]


class BoundedTaskStore(TaskStore):
    """See the module docstring.

    Args:
        limit: Tasks kept at most.
        path: The SQLite file; None keeps the tasks in memory.
        owner: Makes the SDK's ``User`` for an owner's name (its store keys tasks by it).
        max_bytes: Bytes of tasks kept at most (their serialized size).
        share_of: Whose share an owner's tasks count against (the owner itself
            unless given).
    """

    def __init__(
        self,
        limit: int,
        path: Path | None,
        owner: Callable[[str], User],
        max_bytes: int = DEFAULT_MAX_BYTES,
        share_of: Callable[[str], str] | None = None,
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.path = path
        self._owner = owner
        self._share_of = share_of or (lambda name: name)
        self._store: Any = InMemoryTaskStore() if path is None else _database(path)
        self._kept: dict[str, _Kept] = {}
        self._shares: dict[str, _Share] = {}
        self._by_count: list[_Entry] = []
        self._by_bytes: list[_Entry] = []
        self._seq = 0  # (saves, in order)
        self._version = 0  # (of the shares' heap entries)
        self.bytes = 0  # of the tasks kept
        self._opened: asyncio.Future[None] | None = None

    @property
    def task_max_bytes(self) -> int:
        """The bytes one task holds at most (its history trimmed to fit)."""
        return max(1, self.max_bytes // TASK_SHARE)

    @property
    def count(self) -> int:
        """Tasks kept."""
        return len(self._kept)

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

    # -- who holds what --------------------------------------------------------------

    def _keep(
        self, task_id: str, owner: str, idle: bool, size: int, history: list[int] | None = None
    ) -> _Kept:
        """Note a task kept, as the most recently saved (its owner's share too)."""
        self._forget(task_id)
        self._seq += 1
        share = self._share_of(owner)
        kept = self._kept[task_id] = _Kept(owner, share, idle, size, self._seq)
        kept.history = history
        self.bytes += size
        if idle:
            held = self._shares.get(share)
            if held is None:
                held = self._shares[share] = _Share()
            held.idle[task_id] = None
            held.bytes += size
            self._touch(share)
        return kept

    def _forget(self, task_id: str) -> _Kept | None:
        """Forget a task (no longer kept, or about to be noted again)."""
        kept = self._kept.pop(task_id, None)
        if kept is None:
            return None
        self.bytes -= kept.size
        if kept.idle:
            held = self._shares[kept.share]
            del held.idle[task_id]
            held.bytes -= kept.size
            self._touch(kept.share)
        return kept

    def _touch(self, share: str) -> None:
        """A share's idle tasks changed: its new weights in the heaps (the entries
        it had there are stale), or it is gone when it holds none."""
        held = self._shares[share]
        if not held.idle:
            del self._shares[share]
            return
        self._version += 1
        held.version = self._version
        oldest = self._kept[next(iter(held.idle))].seq
        heapq.heappush(self._by_count, (-len(held.idle), oldest, held.version, share))
        heapq.heappush(self._by_bytes, (-held.bytes, oldest, held.version, share))
        if len(self._by_count) > 2 * len(self._shares) + 64:  # (amortized: O(1) a push)
            self._rebuild()

    def _rebuild(self) -> None:
        """The heaps again, one entry a share (the stale ones left out)."""
        self._by_count, self._by_bytes = [], []
        for share, held in self._shares.items():
            oldest = self._kept[next(iter(held.idle))].seq
            self._by_count.append((-len(held.idle), oldest, held.version, share))
            self._by_bytes.append((-held.bytes, oldest, held.version, share))
        heapq.heapify(self._by_count)
        heapq.heapify(self._by_bytes)

    def _victim(self, by_count: bool, spare: str) -> str | None:
        """The least recently saved idle task (not ``spare``) of the share that holds
        the most (tasks, or bytes); None if no task may go."""
        heap = self._by_count if by_count else self._by_bytes
        skipped: list[_Entry] = []  # (at most one: the share holding ``spare`` alone)
        try:
            while heap:
                _, _, version, share = heap[0]
                held = self._shares.get(share)
                if held is None or held.version != version:
                    heapq.heappop(heap)
                    continue
                for task_id in itertools.islice(held.idle, 2):
                    if task_id != spare:
                        return task_id
                skipped.append(heapq.heappop(heap))
            return None
        finally:
            for entry in skipped:
                heapq.heappush(heap, entry)

    def _over(self) -> bool:
        return len(self._kept) > self.limit or self.bytes > self.max_bytes

    async def _evict(self, spare: str = "") -> None:
        """Drop idle tasks (never ``spare``, the one being saved), each from the
        share that holds the most, until both bounds hold."""
        while self._over():
            victim = self._victim(len(self._kept) > self.limit, spare)
            if victim is None:
                return  # every other task holds a call: the pipeline's limit bounds them
            kept = self._forget(victim)
            assert kept is not None
            await self._store.delete(victim, self._as(kept.owner))

    # -- the SDK's TaskStore -----------------------------------------------------------

    async def save(self, task: a2a_pb2.Task, context: ServerCallContext) -> None:
        await self._open()
        owner = context.user.user_name
        known = self._kept.get(task.id)
        rest = _rest(task)
        sizes = _history(task, known.history if known else None, known.last if known else "")
        sizes = _trim(task, sizes, rest, self.task_max_bytes)
        size = rest + sum(sizes)
        if size > self.max_bytes:  # alone past the whole store: not kept at all
            await self._not_kept(task, owner, size)
            return
        await self._store.save(task, context)
        kept = self._keep(task.id, owner, task.status.state in IDLE, size, sizes)
        kept.last = task.history[-1].message_id if task.history else ""
        if self._over():
            await self._evict(spare=task.id)

    async def _not_kept(self, task: a2a_pb2.Task, owner: str, size: int) -> None:
        """A task larger than the whole store (its artifacts alone: the history is
        trimmed): its caller has its answer; what was kept of it goes."""
        log.warning(
            "A2A task %s is not kept: %d bytes, more than a2a_max_task_bytes (%d)",
            task.id[:64], size, self.max_bytes,
        )  # fmt: skip
        if self._forget(task.id) is not None:
            await self._store.delete(task.id, self._as(owner))

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
        kept = self._kept.get(task_id)
        if kept is not None and kept.owner == context.user.user_name:  # (the owner's only)
            self._forget(task_id)
        await self._store.delete(task_id, context)


__all__ = ["DEFAULT_MAX_BYTES", "MAX_HISTORY", "TASK_SHARE", "TERMINAL", "BoundedTaskStore"]
