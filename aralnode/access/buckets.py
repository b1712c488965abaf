"""Rate limits: token buckets, global, per principal, per client address and per
channel peer, in tables of bounded size.

A bucket holds up to ``burst`` tokens and gains ``per_second`` of them each second;
a call takes one, and a call that finds less than one is refused with the time
until one is back (``RateLimited``, ``retry_after``). Each call is charged to the
global bucket and to exactly one bucket of its own, by who the node knows it to
be (``service.stages.share_key``):

- a peer's request or notification on the A2A channel: that peer's bucket;
- a caller the node vouches for (a principal an authenticator named, a mesh
  certificate, a peer key the operator named in ``peer_grants``/``peer_roles``):
  that principal's bucket;
- anyone else (anonymous, or signing with a key it made up, pinned by a handshake
  or not): its address's bucket (``service.stages.address_of``: the host, an
  IPv6 /64).

The node's own program is never limited. A bucket is refilled lazily, from the
clock, when it is next used: nothing runs in the background.

Memory is bounded: each table holds at most ``max_buckets`` buckets, the least
recently used first to go. A bucket that has refilled is the same as a new one, so
it is dropped first and at no cost; dropping one that has not refilled gives that
client a fresh burst, which is the price of never refusing a newcomer because
strangers filled the table.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aralnode.core.clock import Clock
from aralnode.core.errors import RateLimited
from aralnode.core.rates import Rate, RateSpec, parse_overrides


class Bucket:
    """One token bucket; refilled lazily from the time it was last looked at."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = now

    def refill(self, now: float) -> float:
        """Tokens now (and remember them as of ``now``)."""
        if now > self.stamp:
            rate = self.rate
            self.tokens = min(rate.burst, self.tokens + (now - self.stamp) * rate.per_second)
            self.stamp = now
        return self.tokens

    def wait(self) -> float:
        """Seconds until a token is back (0 if one is there), as of the last refill."""
        return max(0.0, (1.0 - self.tokens) / self.rate.per_second)

    def until_full(self) -> float:
        """Seconds until the bucket is full again, as of the last refill."""
        return max(0.0, (self.rate.burst - self.tokens) / self.rate.per_second)


class BucketTable:
    """Buckets by key, at most ``max_buckets`` of them (least recently used out)."""

    __slots__ = ("_buckets", "evicted", "max_buckets")

    def __init__(self, max_buckets: int) -> None:
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()
        self.evicted = 0  # buckets dropped before they had refilled

    def __len__(self) -> int:
        return len(self._buckets)

    def peek(self, key: str, now: float) -> Bucket | None:
        """The bucket of ``key`` if it has one, refilled to ``now`` (none is made)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.refill(now)
        return bucket

    def get(self, key: str, rate: Rate, now: float) -> Bucket:
        """The bucket of ``key`` (a new, full one if it had none), refilled to ``now``."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is not None and (bucket.rate is rate or bucket.rate == rate):
            buckets.move_to_end(key)
            bucket.refill(now)
            return bucket
        if bucket is None and len(buckets) >= self.max_buckets:
            self._make_room(now)
        bucket = buckets[key] = Bucket(rate, now)  # a changed rate starts afresh
        buckets.move_to_end(key)
        return bucket

    def _make_room(self, now: float) -> None:
        buckets = self._buckets
        # Refilled buckets say nothing a new bucket would not: drop those first,
        # from the least recently used end, a few at a time (amortised O(1)).
        for _ in range(min(8, len(buckets))):
            key, oldest = next(iter(buckets.items()))
            if oldest.refill(now) < oldest.rate.burst:
                break
            del buckets[key]
        if len(buckets) >= self.max_buckets:
            buckets.popitem(last=False)
            self.evicted += 1


@dataclass(slots=True)  # not frozen, though never changed: one is made a call
class Admission:
    """What the tightest bucket said of an admitted call (for ``X-RateLimit-*``;
    read only).

    Attributes:
        limit: That bucket's size (its burst).
        remaining: Whole tokens left in it after this call.
        reset_ms: Unix time (ms) when it is full again.
    """

    limit: int
    remaining: int
    reset_ms: int


class RateLimiter:
    """The node's rate limits (see the module docstring).

    Args:
        clock: Where the buckets read the time (monotonic) and the reset time
            (wall clock).
        global_rate / per_principal / per_address / per_peer: The rates; ``None``
            for no limit of that kind.
        overrides: Rates for particular callers instead of their kind's rate:
            ``principal:NAME``, ``peer:NODE_ID``, ``address:HOST`` or
            ``role:NAME`` (the most generous of a caller's roles counts);
            ``None`` for no limit.
        max_buckets: Buckets each table holds at most.
    """

    __slots__ = ("_refused", "_tables", "clock", "global_bucket", "overrides", "rates")

    def __init__(
        self,
        clock: Clock,
        *,
        global_rate: Rate | None = None,
        per_principal: Rate | None = None,
        per_address: Rate | None = None,
        per_peer: Rate | None = None,
        overrides: Mapping[str, Rate | None] | None = None,
        max_buckets: int = 10_000,
    ) -> None:
        self.clock = clock
        self.rates = {"principal": per_principal, "address": per_address, "peer": per_peer}
        self.overrides = dict(overrides or {})
        self.global_bucket = Bucket(global_rate, clock.monotonic()) if global_rate else None
        self._tables = {kind: BucketTable(max_buckets) for kind in self.rates}
        self._refused = BucketTable(max_buckets)  # failed authentications, by address

    @property
    def active(self) -> bool:
        """Whether any limit is set (else ``admit`` need not be called)."""
        return self.global_bucket is not None or any(self.rates.values()) or bool(self.overrides)

    def table(self, kind: str) -> BucketTable:
        """The buckets of ``kind`` (``principal``, ``address``, ``peer``)."""
        return self._tables[kind]

    def rate_for(self, kind: str, name: str, roles: Iterable[str] = ()) -> Rate | None:
        """The rate of caller ``name`` of ``kind``: its own override, else its
        roles' most generous one, else its kind's."""
        overrides = self.overrides
        if not overrides:
            return self.rates[kind]
        own = f"{kind}:{name}"
        if own in overrides:
            return overrides[own]
        found = [overrides[f"role:{r}"] for r in roles if f"role:{r}" in overrides]
        if found:
            if None in found:
                return None
            return max((r for r in found if r), key=lambda r: (r.per_second, r.burst))
        return self.rates[kind]

    def admit(
        self, kind: str, name: str, roles: Iterable[str] = (), also: tuple[str, str] | None = None
    ) -> Admission | None:
        """Take a token for a call of caller ``name`` (of ``kind``) from its bucket
        and the global one -- and from the bucket ``also`` names (kind, name), a
        channel's request from a peer nobody vouches for: its address's; what the
        tightest said (``None``: no limit applies).

        Raises:
            RateLimited: a bucket is empty (nothing is taken from any); its
                details say ``limit``, ``remaining`` (0), ``reset`` (Unix
                seconds) and ``retry_after`` (seconds), which the HTTP doors
                turn into ``X-RateLimit-*`` and ``Retry-After``.
        """
        now = self.clock.monotonic()
        rate = self.rate_for(kind, name, roles)
        own = None if rate is None else self._tables[kind].get(name, rate, now)
        shared = self.global_bucket
        if shared is not None:
            shared.refill(now)
        # (three buckets at most, written out: a call each; none is taken from until
        # every one has a token)
        if own is not None and own.tokens < 1.0:
            raise self._refusal(kind, name, own)
        second = None if also is None else self._second(also, roles, now)
        if shared is not None and shared.tokens < 1.0:
            raise self._refusal("global", name, shared)
        if own is not None:
            own.tokens -= 1.0
        tightest = own
        if second is not None:
            second.tokens -= 1.0
            if tightest is None or second.tokens < tightest.tokens:
                tightest = second
        if shared is not None:
            shared.tokens -= 1.0
            if tightest is None or shared.tokens < tightest.tokens:
                tightest = shared
        if tightest is None:
            return None
        return Admission(
            int(tightest.rate.burst),
            int(tightest.tokens),
            self.clock.now_ms() + math.ceil(tightest.until_full() * 1000),
        )

    def _second(self, also: tuple[str, str], roles: Iterable[str], now: float) -> Bucket | None:
        """The bucket ``also`` names (``admit``), with a token (else refused); ``None``
        when its kind has no limit."""
        kind, name = also
        rate = self.rate_for(kind, name, roles)
        if rate is None:
            return None
        bucket = self._tables[kind].get(name, rate, now)
        if bucket.tokens < 1.0:
            raise self._refusal(kind, name, bucket)
        return bucket

    def check_failures(self, address: str) -> None:
        """Refuse, before any credential of its is checked, a client ``address``
        whose failed authentications have used up the per-address rate: a refused
        credential costs the node a signature check or a question to an
        authorization server, and takes no token from any call bucket (it is no
        call). Without a per-address rate, nothing is refused.

        Raises:
            RateLimited: ``RATE_LIMIT_AUTH_FAILURES``, with the retry hint.
        """
        rate = self.rates["address"]
        if rate is None:
            return
        bucket = self._refused.peek(address, self.clock.monotonic())
        if bucket is not None and bucket.tokens < 1.0:
            wait = bucket.wait()
            raise RateLimited(
                f"address {address}'s failed authentications used up its rate limit of "
                f"{rate.text}; retry in {wait:.3g} s",
                reason="RATE_LIMIT_AUTH_FAILURES",
                retry_after=wait,
                details={"limit": int(rate.burst), "remaining": 0, "retry_after": round(wait, 3)},
            )

    def failed(self, address: str) -> None:
        """Charge a failed authentication to client ``address`` (``check_failures``)."""
        rate = self.rates["address"]
        if rate is not None:
            bucket = self._refused.get(address, rate, self.clock.monotonic())
            bucket.tokens = max(0.0, bucket.tokens - 1.0)

    def _refusal(self, which: str, name: str, bucket: Bucket) -> RateLimited:
        wait = bucket.wait()
        rate = bucket.rate
        whose = "this node's" if which == "global" else f"{_WHOSE[which]} {name}'s"
        reset_s = math.ceil((self.clock.now_ms() + bucket.until_full() * 1000) / 1000)
        return RateLimited(
            f"{whose} rate limit of {rate.text} is used up; retry in {wait:.3g} s",
            reason=f"RATE_LIMIT_{which.upper()}",
            retry_after=wait,
            details={
                "limit": int(rate.burst),
                "remaining": 0,
                "reset": reset_s,
                "retry_after": round(wait, 3),
            },
        )


_WHOSE = {"principal": "caller", "address": "address", "peer": "peer"}


__all__ = [
    "Admission",
    "Bucket",
    "BucketTable",
    "Rate",
    "RateLimiter",
    "RateSpec",
    "parse_overrides",
]
