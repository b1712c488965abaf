"""Injected clocks: the core never reads the time by itself."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall time in Unix milliseconds and a monotonic reading in seconds."""

    def now_ms(self) -> int: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    # The builtin itself, not a method around it: read several times a message.
    monotonic = staticmethod(time.monotonic)


class FixedClock:
    """A clock that moves only when told to; for tests (see ``aralnode.testing``)."""

    __slots__ = ("_mono", "_now_ms")

    def __init__(self, now_ms: int = 1_767_225_600_000) -> None:
        self._now_ms = now_ms
        self._mono = 0.0

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now_ms += int(seconds * 1000)
        self._mono += seconds


SYSTEM_CLOCK = SystemClock()
