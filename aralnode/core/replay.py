"""Replay protection: (sender, message id) seen once within a timestamp window.

A message is fresh when its timestamp lies within ``window`` before now (plus the
allowed clock skew) and at most ``skew`` ahead. Fresh messages are remembered until
they would be stale anyway, so the cache covers exactly window + skew and is bounded
by ``capacity``; when it is full of live entries the guard fails closed.

Safe across a restart without persistence: a guard refuses messages stamped before
it was created (minus skew) -- it cannot prove it has not seen them.
"""

from __future__ import annotations

import heapq

from aralnode.core.clock import Clock
from aralnode.core.errors import RateLimited, ReplayDetected, StaleMessage


class ReplayGuard:
    """Bounded memory of recently seen (sender, message id) pairs."""

    def __init__(
        self,
        clock: Clock,
        *,
        window_ms: int = 30_000,
        skew_ms: int = 5_000,
        capacity: int = 500_000,
        not_before_ms: int | None = None,
    ) -> None:
        self._clock = clock
        self.window_ms = window_ms
        self.skew_ms = skew_ms
        self.capacity = capacity
        self.not_before_ms = clock.now_ms() if not_before_ms is None else not_before_ms
        self._seen: dict[tuple[str, str], int] = {}
        self._expiry: list[tuple[int, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._seen)

    def check_fresh(self, timestamp_ms: int, now_ms: int | None = None) -> None:
        """Raise ``StaleMessage`` if the timestamp is outside the accepted window."""
        now = self._clock.now_ms() if now_ms is None else now_ms
        if timestamp_ms > now + self.skew_ms:
            raise StaleMessage(
                f"timestamp is {timestamp_ms - now} ms in the future (skew allowed "
                f"{self.skew_ms} ms)",
                details={"timestamp_unix_ms": timestamp_ms, "now_unix_ms": now},
            )
        if timestamp_ms < now - self.window_ms - self.skew_ms:
            raise StaleMessage(
                f"timestamp is {now - timestamp_ms} ms old (window {self.window_ms} ms)",
                details={"timestamp_unix_ms": timestamp_ms, "now_unix_ms": now},
            )
        if timestamp_ms < self.not_before_ms - self.skew_ms:
            raise StaleMessage(
                "message is older than this node's start; it cannot be checked for replay",
                details={
                    "timestamp_unix_ms": timestamp_ms,
                    "not_before_unix_ms": self.not_before_ms,
                },
            )

    def seen(self, sender: str, message_id: str) -> bool:
        return (sender, message_id) in self._seen

    def admit(self, sender: str, message_id: str, timestamp_ms: int) -> None:
        """Check freshness and uniqueness, then remember the message.

        Raises:
            StaleMessage: timestamp outside the window.
            ReplayDetected: the pair was seen within the window.
            RateLimited: the cache is full of live entries (fail closed).
        """
        now = self._clock.now_ms()
        self.check_fresh(timestamp_ms, now)
        key = (sender, message_id)
        if key in self._seen:
            raise ReplayDetected(
                f"message {message_id!r} from {sender} was already received",
                details={"message_id": message_id, "sender": sender},
            )
        self._evict(now)
        if len(self._seen) >= self.capacity:
            raise RateLimited(
                "replay cache is full; try again shortly",
                reason="REPLAY_CACHE_FULL",
                retry_after=1.0,
            )
        expires = max(timestamp_ms, now) + self.window_ms + 2 * self.skew_ms
        self._seen[key] = expires
        heapq.heappush(self._expiry, (expires, key))

    def _evict(self, now: int) -> None:
        expiry, seen = self._expiry, self._seen
        while expiry and expiry[0][0] < now:
            _, key = heapq.heappop(expiry)
            seen.pop(key, None)
