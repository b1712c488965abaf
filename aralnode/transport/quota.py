"""Long-lived streams per client address on the gRPC port.

grpc core bounds streams per connection and calls on the whole port, but not per
client: without a share, one client that opens connections enough (21 with 100
``Health/Watch`` at the defaults) holds every one of the port's calls, and peers'
channels and every ``AgentNode`` call are refused. Calls that go through the
pipeline keep to the caller's share there (``RateLimit``); the streams that do not
-- ``Health/Watch``, reflection, a ``Channel`` before its handshake -- keep to this
one, counted by client address as ``service.stages.address_of`` gives it.
"""

from __future__ import annotations

from collections import Counter

from aralnode.core.errors import RateLimited
from aralnode.service.stages import address_of


class StreamQuota:
    """At most ``per_address`` open streams per client address."""

    __slots__ = ("_held", "per_address", "refused")

    def __init__(self, per_address: int) -> None:
        self.per_address = per_address
        self.refused = 0
        self._held: Counter[str] = Counter()

    def enter(self, peer: str) -> str:
        """Count a stream from ``peer`` (gRPC's ``context.peer()``); the key that
        ``leave`` takes. Refuses (RESOURCE_EXHAUSTED) past the share."""
        key = address_of(peer)
        held = self._held[key]
        if held >= self.per_address:
            self.refused += 1
            raise RateLimited(
                f"this address already holds {held} streams, its limit on this node",
                reason="TOO_MANY_STREAMS",
                retry_after=1.0,
                details={"limit": self.per_address},
            )
        self._held[key] = held + 1
        return key

    def leave(self, key: str) -> None:
        """A stream ``enter`` counted has ended."""
        held = self._held[key] - 1
        if held > 0:
            self._held[key] = held
        else:
            del self._held[key]

    def held(self, peer: str) -> int:
        """Streams ``peer``'s address holds now."""
        return self._held.get(address_of(peer), 0)


__all__ = ["StreamQuota"]
