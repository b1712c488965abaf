"""Circuit breakers on calls to peers (ARAL PRO-023): a peer that keeps failing is
not called for a while, and its callers hear so at once instead of each waiting
for a timeout.

One breaker per peer, a small state machine::

    CLOSED --(``failures`` in a row)--> OPEN --(cool-down over)--> HALF_OPEN
       ^                                  ^                            |
       |                                  +------(probe fails)---------+
       +-------------------(probe succeeds)----------------------------+

- CLOSED: calls go through; a failure counts, a success resets the count.
- OPEN: calls fail fast with ``Unavailable`` (reason ``CIRCUIT_OPEN``, the peer
  named, ``retry_after`` the rest of the cool-down).
- HALF_OPEN: one call at a time goes through as a probe (the others fail fast);
  its success closes the breaker, its failure opens it again for twice the last
  cool-down (up to ``max_cooldown``).

A failure is the peer or the way to it failing: ``Unavailable``,
``DeadlineExceeded``, or a transport error (``OSError``, ``TimeoutError``,
``EOFError``). The peer's own answers -- NOT_FOUND, PERMISSION_DENIED,
RESOURCE_EXHAUSTED and the rest -- show a peer that works, and count as successes.
A call cancelled by its caller, or failing here before it left (a bug, a value
that would not encode), counts as neither (a probe that ended so frees its turn).

The clock is injected (``core.clock``), so tests move time rather than wait.
Breakers are kept only for peers that failed lately (a closed breaker with no
failures is forgotten), at most ``max_peers`` of them.
"""

from __future__ import annotations

import enum
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aralnode.core.clock import Clock
from aralnode.core.errors import AralError, DeadlineExceeded, Unavailable

T = TypeVar("T")

CIRCUIT_OPEN = "CIRCUIT_OPEN"


class BreakerState(enum.Enum):
    """Where a peer's breaker is (its ``value`` is what ``aralnode peers`` shows)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Breaker:
    """One peer's breaker."""

    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # in a row
    cooldown: float = 0.0  # of the current (or last) opening
    until: float = 0.0  # monotonic time the cool-down ends
    probing: bool = False  # a half-open probe is out


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the peer (or the way to it) failed, rather than the
    peer answering (see the module docstring)."""
    if isinstance(exc, AralError):
        if exc.reason == CIRCUIT_OPEN:
            return False  # our own fast refusal, not news about the peer
        return isinstance(exc, Unavailable | DeadlineExceeded)
    return isinstance(exc, OSError | TimeoutError | EOFError)


class Breakers:
    """The breakers of every peer this node calls.

    Args:
        clock: Where the cool-downs are read (monotonic).
        failures: Failures in a row that open a breaker; 0 turns breakers off.
        cooldown: Seconds the first opening lasts.
        max_cooldown: The longest an opening lasts (each failed probe doubles it).
        max_peers: Breakers kept at most (the least recently used go first).
        counters: Where ``breaker.opened``, ``breaker.closed`` and
            ``breaker.fast_failed`` are counted (the node's status counters).
    """

    __slots__ = (
        "_breakers",
        "clock",
        "cooldown",
        "counters",
        "failures",
        "max_cooldown",
        "max_peers",
    )

    def __init__(
        self,
        clock: Clock,
        *,
        failures: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = 60.0,
        max_peers: int = 4096,
        counters: Counter[str] | None = None,
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.cooldown = cooldown
        self.max_cooldown = max(max_cooldown, cooldown)
        self.max_peers = max_peers
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._breakers: OrderedDict[str, Breaker] = OrderedDict()

    def state(self, peer: str) -> tuple[BreakerState, float]:
        """``peer``'s breaker state and, when open, seconds until it lets a probe
        through (0 otherwise)."""
        breaker = self._breakers.get(peer)
        if breaker is None:
            return BreakerState.CLOSED, 0.0
        if breaker.state is BreakerState.OPEN:
            wait = breaker.until - self.clock.monotonic()
            if wait <= 0:
                return BreakerState.HALF_OPEN, 0.0
            return BreakerState.OPEN, wait
        return breaker.state, 0.0

    def not_closed(self) -> dict[str, BreakerState]:
        """Every peer whose breaker is open or half-open, with its state."""
        out: dict[str, BreakerState] = {}
        for peer in list(self._breakers):
            state, _ = self.state(peer)
            if state is not BreakerState.CLOSED:
                out[peer] = state
        return out

    async def call(self, peer: str, run: Callable[[], Awaitable[T]]) -> T:
        """Run ``run()`` (a call to ``peer``) through its breaker.

        Raises:
            Unavailable: ``CIRCUIT_OPEN``, the breaker is open (or its probe is
                out), with ``retry_after``; else whatever ``run`` raised.
        """
        if self.failures <= 0:
            return await run()
        probe = self._admit(peer)
        try:
            result = await run()
        except BaseException as exc:
            if is_failure(exc):
                self._failed(peer)
            elif isinstance(exc, AralError):
                self._succeeded(peer)  # the peer answered: it works
            elif probe:
                self._release(peer)
            raise
        self._succeeded(peer)
        return result

    def _admit(self, peer: str) -> bool:
        """Let a call to ``peer`` through (True: as the half-open probe), or raise."""
        breaker = self._breakers.get(peer)
        if breaker is None or breaker.state is BreakerState.CLOSED:
            return False
        self._breakers.move_to_end(peer)
        now = self.clock.monotonic()
        if breaker.state is BreakerState.OPEN and now >= breaker.until:
            breaker.state = BreakerState.HALF_OPEN
        if breaker.state is BreakerState.HALF_OPEN and not breaker.probing:
            breaker.probing = True
            return True
        self.counters["breaker.fast_failed"] += 1
        if breaker.state is BreakerState.OPEN:
            wait = breaker.until - now
            message = (
                f"peer {peer} failed {breaker.failures} times in a row: its circuit "
                f"breaker is open; not calling it for another {wait:.3g} s"
            )
        else:
            wait = min(1.0, breaker.cooldown)
            message = f"peer {peer} is being probed after failing (circuit breaker half-open)"
        return self._refuse(peer, breaker, message, wait)

    def _refuse(self, peer: str, breaker: Breaker, message: str, wait: float) -> bool:
        raise Unavailable(
            message,
            reason=CIRCUIT_OPEN,
            retry_after=max(wait, 0.001),
            details={"peer": peer, "state": breaker.state.value, "failures": breaker.failures},
        )

    def _failed(self, peer: str) -> None:
        breaker = self._breakers.get(peer)
        if breaker is None:
            breaker = self._breakers[peer] = Breaker()
            while len(self._breakers) > self.max_peers:
                self._breakers.popitem(last=False)
        self._breakers.move_to_end(peer)
        breaker.failures += 1
        now = self.clock.monotonic()
        if breaker.state is BreakerState.HALF_OPEN:  # the probe failed: open, longer
            breaker.cooldown = min(self.max_cooldown, max(breaker.cooldown, self.cooldown) * 2)
        elif breaker.state is BreakerState.CLOSED and breaker.failures >= self.failures:
            breaker.cooldown = self.cooldown
        else:
            return  # still closed under the threshold, or already open
        breaker.state, breaker.until, breaker.probing = (
            BreakerState.OPEN,
            now + breaker.cooldown,
            False,
        )
        self.counters["breaker.opened"] += 1

    def _succeeded(self, peer: str) -> None:
        breaker = self._breakers.pop(peer, None)  # closed and clean: nothing to keep
        if breaker is not None and breaker.state is not BreakerState.CLOSED:
            self.counters["breaker.closed"] += 1

    def _release(self, peer: str) -> None:
        breaker = self._breakers.get(peer)
        if breaker is not None:
            breaker.probing = False


__all__ = ["CIRCUIT_OPEN", "Breaker", "BreakerState", "Breakers", "is_failure"]
