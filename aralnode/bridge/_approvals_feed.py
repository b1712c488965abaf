"""The WebSocket door's ``approvals`` channel: the approval queue's events, as
``{"type": "approval", "event": "pending|approved|denied|expired|withdrawn", ...}``
with the entry, to its subscribers (the door gives the channel to ``agent:admin``
callers only)."""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any, Protocol

from aralnode.bridge._http import iso_ms
from aralnode.service.approvals import Approval


class _Hub(Protocol):
    @property
    def service(self) -> Any: ...

    @property
    def node_id(self) -> str: ...


class _Subscriber(Protocol):
    def offer(self, message: dict[str, Any]) -> None: ...


def follow_approvals(hub: _Hub, subscribers: Set[_Subscriber]) -> Callable[[], None]:
    """Offer each approval event to ``subscribers`` (read at each event); returns
    what stops it (nothing to stop on a node without an approval queue)."""
    queue = hub.service.pipeline.stages.govern.approvals
    if queue is None:
        return lambda: None
    clock = hub.service.clock

    def offer(event: str, entry: Approval) -> None:
        if not subscribers:
            return
        message = {
            "type": "approval",
            "event": event,
            **entry.as_dict(),
            "url": f"/v1/approvals/{entry.id}",
            "timestamp": iso_ms(clock.now_ms()),
            "agent_id": hub.node_id,
        }
        for sub in list(subscribers):
            sub.offer(message)

    stop: Callable[[], None] = queue.on_event(offer)
    return stop


__all__ = ["follow_approvals"]
