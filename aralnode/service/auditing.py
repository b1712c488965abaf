"""The event loop's side of the audit log: calls wait here for their records to be
committed (``service.stages.AuditLog``).

The store's writer thread (``aralnode.store.audit.AuditLog``) commits records in
groups and calls ``on_settled`` once per group; ``DurableLog`` then wakes, with one
``call_soon_threadsafe``, every call whose record that group settled -- not a
wake-up per record.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Protocol

from aralnode.core.audit import AuditRecord
from aralnode.core.errors import AralError


class GroupedLog(Protocol):
    """What ``DurableLog`` needs of the store's log."""

    on_settled: Callable[[], None] | None

    @property
    def failed(self) -> AralError | None: ...

    def append(self, record: AuditRecord) -> int: ...

    def settled(self, ticket: int) -> tuple[bool, AralError | None]: ...


class DurableLog:
    """``append`` as the store's; ``durable(ticket)`` awaits the record's commit."""

    __slots__ = ("_loop", "_ticker", "_waiters", "store")

    def __init__(self, store: GroupedLog, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self._loop = loop
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._ticker: asyncio.TimerHandle | None = None
        if getattr(store, "threaded", True):
            store.on_settled = self._on_settled
        else:  # inline: one flush per loop turn with records, on this thread
            store.on_settled = self._wake
            store.on_pending = lambda: loop.call_soon(store.flush)  # type: ignore[attr-defined]
            self._tick()

    def _tick(self) -> None:
        """Inline: timed heads and the retry after a failure, every second."""
        tick = getattr(self.store, "tick", None)
        if tick is not None:
            tick()
        self._ticker = self._loop.call_later(1.0, self._tick)

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
            # The group may have settled between the check and the append: look
            # again (``_wake`` may already have run without this waiter).
            done, error = self.store.settled(ticket)
            if not done:
                await future
                return
        if error is not None:
            raise error

    def _on_settled(self) -> None:
        """In the writer thread: wake the loop (once per group)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
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
