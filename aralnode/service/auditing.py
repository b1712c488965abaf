"""The event loop's side of the audit log: calls wait here for their records to be
committed (``service.stages.AuditLog``).

``DurableLog`` drives the store (``aralnode.store.audit.AuditLog``) on the event
loop: the first record of a group schedules one ``flush`` (one commit for the
group), after which every call whose record it settled wakes -- not a wake-up per
record, and no thread.

Group commit: a commit costs about as much as three records, so the flush waits
while the loop has other callbacks ready to run -- other calls on their way to
their own records -- and runs once the loop would otherwise go back to waiting
for the network (or after ``GROUP_TURNS`` turns, or ``GROUP_SECONDS``). An idle
node commits at once; a saturated one commits groups several records large.
Measured on the MCP door at saturation (8 calls in flight): groups of one record
per commit became about 3.5, and governed calls/s rose from 0.78 to 0.86 of
ungoverned (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import collections
import collections.abc
from collections.abc import Callable
from typing import Protocol

from aralnode.core.audit import AuditRecord
from aralnode.core.errors import AralError

#: A group's flush waits at most this many loop turns ...
GROUP_TURNS = 32
#: ... and this long for more records (a bound on the latency it adds).
GROUP_SECONDS = 0.002


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
        "groups",
        "lag_seconds",
        "store",
    )

    def __init__(self, store: GroupedLog, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
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
        self._turns = GROUP_TURNS
        self._loop.call_soon(self._group)

    def _group(self) -> None:
        """Flush now, or one turn later if other work is ready (see the module doc)."""
        ready = self._ready
        if ready and self._turns and self._loop.time() < self._since + GROUP_SECONDS:
            self._turns -= 1
            self._loop.call_soon(self._group)
            return
        self.store.flush()
        self.lag_seconds += self._loop.time() - self._since
        self.groups += 1

    @property
    def lag(self) -> tuple[float, int]:
        """Write lag: seconds from groups' first records to their commits, summed,
        and the number of groups (``/metrics``)."""
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

    def append(self, record: AuditRecord) -> int:
        return self.store.append(record)

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


__all__ = ["DurableLog", "GroupedLog"]
