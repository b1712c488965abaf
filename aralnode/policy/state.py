"""What governance remembers between calls, all of it bounded: trust debt per
principal (decaying), collusion and rate counters (ACGP-1008 §3.5.2).

Every table is an LRU of at most its configured size: an outsider making up
principals or peers moves old entries out, it never grows the table. Time is the
injected clock's monotonic seconds (tests drive a fake one).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Container
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """An ordered dict of at most ``size`` entries (least recently used dropped)."""

    __slots__ = ("_items", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        items = self._items
        items[key] = value
        items.move_to_end(key)
        while len(items) > self.size:
            items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class TrustLedger:
    """Trust debt per principal: raised by flags, halved every ``half_life``
    seconds; rules read it as ``trust_debt``."""

    __slots__ = ("_debts", "half_life", "now")

    def __init__(self, now: Callable[[], float], half_life: float, max_principals: int) -> None:
        self.now = now
        self.half_life = half_life
        self._debts: Lru[str, tuple[float, float]] = Lru(max_principals)

    def debt(self, principal: str) -> float:
        items = self._debts._items  # (Lru.get written out: rules read it every call)
        entry = items.get(principal)
        if entry is None:
            return 0.0
        items.move_to_end(principal)
        value, since = entry
        return value * math.pow(0.5, (self.now() - since) / self.half_life)

    @property
    def debtors(self) -> Container[str]:
        """The principals that may owe debt (every other one owes 0): a live view."""
        return self._debts._items

    def flag(self, principal: str, weight: float) -> float:
        """Add ``weight`` to ``principal``'s debt; the debt now."""
        debt = self.debt(principal) + weight
        self._debts.put(principal, (debt, self.now()))
        return debt

    def resize(self, half_life: float, max_principals: int) -> None:
        self.half_life = half_life
        self._debts.size = max_principals

    def __len__(self) -> int:
        return len(self._debts)


class WindowCounter:
    """Events in the last ``window`` seconds, estimated from two fixed buckets
    (this window's and the last's, weighted by how much of it still counts):
    constant memory per key."""

    __slots__ = ("_counts", "now", "window")

    def __init__(self, now: Callable[[], float], window: float, size: int) -> None:
        self.now = now
        self.window = window
        self._counts: Lru[object, list[float]] = Lru(size)  # [bucket start, this, last]

    def add(self, key: object) -> float:
        """Count an event for ``key``; its events in the last window."""
        now, window = self.now(), self.window
        items = self._counts._items  # (Lru.get written out: once a message)
        entry = items.get(key)
        start = now - (now % window)
        if entry is None:
            entry = [start, 0.0, 0.0]
            self._counts.put(key, entry)
        else:
            items.move_to_end(key)
            if entry[0] != start:
                entry[2] = entry[1] if start - entry[0] == window else 0.0
                entry[0], entry[1] = start, 0.0
        entry[1] += 1
        return entry[1] + entry[2] * (1 - (now - start) / window)

    def __len__(self) -> int:
        return len(self._counts)


class DistinctRecent:
    """Distinct principals seen per key within ``window`` seconds (at most
    ``per_key`` remembered per key, ``size`` keys)."""

    __slots__ = ("_seen", "now", "per_key", "window")

    def __init__(
        self, now: Callable[[], float], window: float, size: int, per_key: int = 64
    ) -> None:
        self.now = now
        self.window = window
        self.per_key = per_key
        self._seen: Lru[str, Lru[str, float]] = Lru(size)

    def add(self, key: str, who: str) -> int:
        """Note ``who`` for ``key``; how many distinct ones within the window."""
        now = self.now()
        seen = self._seen.get(key)
        if seen is None:
            seen = Lru(self.per_key)
            self._seen.put(key, seen)
        seen.put(who, now)
        cutoff = now - self.window
        return sum(1 for t in seen._items.values() if t >= cutoff)

    def __len__(self) -> int:
        return len(self._seen)


__all__ = ["DistinctRecent", "Lru", "TrustLedger", "WindowCounter"]
