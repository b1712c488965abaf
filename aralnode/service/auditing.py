"""The pipeline's audit stage (``Audit``: a record per call, message, connection)
and the event loop's side of the audit log: calls wait here for their records to
be committed (``AuditLog``).

``DurableLog`` drives the store (``aralnode.store.audit.AuditLog``) on the event
loop: the first record of a group schedules one ``flush`` (one commit for the
group), after which every call whose record it settled wakes -- not a wake-up per
record, and no thread.

Group commit: a commit costs about as much as three records, so the flush waits
while the loop has other callbacks ready to run -- other calls on their way to
their own records -- and runs once the loop would otherwise go back to waiting
for the network (or after ``GROUP_TURNS`` turns, or ``GROUP_SECONDS``). An idle
node commits at once; a saturated one commits groups several records large. A group
that no call waits for (the records of one-way channel messages, refusals, connections)
may wait longer (``ONE_WAY_GROUP_TURNS``, ``ONE_WAY_GROUP_SECONDS``).
Measured on the MCP door at saturation (8 calls in flight): groups of one record
per commit became about 3.5, and governed calls/s rose from 0.78 to 0.86 of
ungoverned (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
from collections import Counter
from collections.abc import Callable, Sequence
from time import time_ns
from typing import Protocol

from aralnode._logs import get_logger
from aralnode.core.audit import AuditRecord, Point
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, InternalError

log = get_logger("aralnode.pipeline")
_new_tuple = tuple.__new__

#: A group's flush waits at most this many loop turns ...
GROUP_TURNS = 32
#: ... and this long for more records (a bound on the latency it adds).
GROUP_SECONDS = 0.002
#: While no call waits for the group (records that hold nothing back: one-way channel
#: messages', refusals', connections'), it may wait this many turns and this long: on
#: the channel bench the sender's commits then carry about 415 records instead of 115
#: (a commit's fixed cost, about 30 µs, spread thinner; docs/audit.md has the figures).
ONE_WAY_GROUP_TURNS = 1024
ONE_WAY_GROUP_SECONDS = 0.032


class GroupedLog(Protocol):
    """What ``DurableLog`` needs of the store's log."""

    on_pending: Callable[[], None] | None
    on_settled: Callable[[], None] | None
    tick_seconds: float

    @property
    def failed(self) -> AralError | None: ...

    def append(self, record: AuditRecord) -> int: ...

    def flush(self) -> None: ...

    def tick(self) -> None: ...

    def settled(self, ticket: int) -> tuple[bool, AralError | None]: ...


class DurableLog:
    """``append`` as the store's; ``durable(ticket)`` awaits the record's commit.
    Drives the store on the event loop: one ``flush`` per group (see the module
    docstring for when), a ``tick`` every ``tick_seconds``."""

    __slots__ = (
        "_loop",
        "_ready",
        "_since",
        "_ticker",
        "_turns",
        "_waiters",
        "append",
        "groups",
        "lag_seconds",
        "store",
    )

    def __init__(self, store: GroupedLog, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        # The store's own ``append`` (no call in between: once a record).
        self.append: Callable[[AuditRecord], int] = store.append
        self._loop = loop
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._ticker: asyncio.TimerHandle | None = None
        # The loop's queue of ready callbacks (CPython's asyncio keeps it as
        # ``_ready``); a loop without one commits every group at once.
        self._ready: collections.abc.Sized | None = getattr(loop, "_ready", None)
        self._turns = 0
        self._since = 0.0
        self.lag_seconds = 0.0
        self.groups = 0
        store.on_settled = self._wake
        store.on_pending = self._schedule
        self._tick()

    def _schedule(self) -> None:
        self._since = self._loop.time()
        self._turns = 0
        self._loop.call_soon(self._group)

    def _group(self) -> None:
        """Flush now, or one turn later if other work is ready (see the module doc):
        within ``GROUP_TURNS`` and ``GROUP_SECONDS`` of the group's start once a
        call waits for it, else within the ``ONE_WAY_`` bounds."""
        if self._ready:
            turns, seconds = (
                (GROUP_TURNS, GROUP_SECONDS)
                if self._waiters
                else (ONE_WAY_GROUP_TURNS, ONE_WAY_GROUP_SECONDS)
            )
            if self._turns < turns and self._loop.time() < self._since + seconds:
                self._turns += 1
                self._loop.call_soon(self._group)
                return
        waited = bool(self._waiters)
        self.store.flush()
        if waited:  # the lag a call's answer had (``lag``), not a one-way group's
            self.lag_seconds += self._loop.time() - self._since
            self.groups += 1

    @property
    def lag(self) -> tuple[float, int]:
        """Write lag: seconds from groups' first records to their commits, summed,
        and the number of groups, of the groups a call waited for (``/metrics``)."""
        return self.lag_seconds, self.groups

    def _tick(self) -> None:
        self.store.tick()
        self._ticker = self._loop.call_later(self.store.tick_seconds, self._tick)

    def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    @property
    def failed(self) -> AralError | None:
        return self.store.failed

    async def durable(self, ticket: int) -> None:
        """Return once record ``ticket`` is committed.

        Raises:
            AralError: its group could not be written (``AUDIT_UNAVAILABLE``).
        """
        done, error = self.store.settled(ticket)
        if not done:
            future: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((ticket, future))
            await future
            return
        if error is not None:
            raise error

    def _wake(self) -> None:
        """A group's fate is known: settle every waiter it covers (in order)."""
        waiters = self._waiters
        settled = self.store.settled
        while waiters:
            ticket, future = waiters[0]
            done, error = settled(ticket)
            if not done:
                break  # tickets are settled in order: the rest wait too
            waiters.popleft()
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


class AuditSink(Protocol):
    """Where audit records go. ``write`` raises if the record could not be kept."""

    def write(self, record: AuditRecord) -> None: ...


class AuditLog(Protocol):
    """A log that groups writes (``aralnode.store.audit.AuditLog``): ``append``
    queues a record (raising if the log cannot keep it), ``durable`` returns once
    it is committed; ``failed`` is the error every call gets while it cannot keep
    records (``None`` when it can)."""

    @property
    def failed(self) -> AralError | None: ...

    def append(self, record: AuditRecord) -> int: ...

    async def durable(self, ticket: int) -> None: ...


#: The longest action a record keeps as it came: a made-up capability id (refused
#: as not found) is cut here, so a 4 MB id is not 4 MB of audit log.
MAX_ACTION_CHARS = 256


class Audit:
    """Hands each call's outcome to the audit log and sinks. A call whose record
    cannot be kept does not succeed: its caller gets the log's error
    (``AUDIT_UNAVAILABLE``) or INTERNAL (``AUDIT_FAILED``, a sink) instead of its
    result -- no answer without a record. With a log, the pipeline waits for the
    record to be committed (``durable``) before the result leaves."""

    __slots__ = ("counters", "log", "sinks")

    def __init__(
        self, sinks: Sequence[AuditSink], counters: Counter[str], log: AuditLog | None = None
    ) -> None:
        self.sinks = list(sinks)
        self.counters = counters
        self.log = log

    @property
    def active(self) -> bool:
        return self.log is not None or bool(self.sinks)

    def __call__(  # noqa: PLR0917 - the pipeline's hot path: positional
        self,
        ctx: CallContext,
        action_id: str,
        direction: str,
        peer: str,
        error: AralError | None,
        point: str = Point.POST,
        now: float = 0.0,
    ) -> int:
        """Record the outcome; the log's ticket (0 without a log)."""
        if len(action_id) > MAX_ACTION_CHARS:  # a caller's made-up id: kept, bounded
            action_id = f"{action_id[:MAX_ACTION_CHARS]}…(+{len(action_id) - MAX_ACTION_CHARS})"
        # In field order, made as the tuple it is (``AuditRecord.__new__`` is a
        # Python function: a third of the cost of a record, every message).
        record: AuditRecord = _new_tuple(AuditRecord, (
            ctx.door,
            ctx.caller,
            ctx.principal,
            action_id,
            direction,
            peer,
            ctx.trace_id,
            ctx.decision,
            "ok" if error is None else error.code,
            "" if error is None else error.reason,
            ctx.chain,
            point,
            tuple(flags) if (flags := ctx.flags) else (),
            ctx.rules,
            ctx.params_digest,
            round((now - ctx.started) * 1000, 3) if ctx.started and now else 0.0,
            time_ns() // 1_000_000,  # the outcome's wall-clock time (the log's, then)
        ))  # fmt: skip
        return self.record(record, ctx.trace_id)

    def record(self, record: AuditRecord, trace_id: str = "") -> int:
        """Hand a record made elsewhere (a connection, a disconnection) to the log
        and sinks; the log's ticket (0 without a log).

        Raises:
            AralError: the log or a sink could not keep it.
        """
        ticket = 0
        if self.log is not None:
            try:
                ticket = self.log.append(record)
            except AralError:
                self.counters["audit.refused"] += 1
                raise
        for sink in self.sinks:
            try:
                sink.write(record)
            except Exception as exc:
                self.counters["audit.failed"] += 1
                log.exception("audit write failed (trace %s)", trace_id)
                raise InternalError(
                    "the call could not be recorded in the audit log", reason="AUDIT_FAILED"
                ) from exc
        return ticket

    async def durable(self, ticket: int) -> None:
        """Wait until record ``ticket`` is committed (raises the log's error if its
        group could not be)."""
        if ticket and self.log is not None:
            await self.log.durable(ticket)


__all__ = ["MAX_ACTION_CHARS", "Audit", "AuditLog", "AuditSink", "DurableLog", "GroupedLog"]
