"""The WebSocket door's ``approvals`` channel: the approval queue's events, as
``{"type": "approval", "event": "pending|approved|denied|expired|withdrawn", ...}``
with the entry, to its subscribers (the door gives the channel to ``agent:admin``
callers only). A subscriber governance halted since it subscribed gets none
(``subscriber_halted``: a halted principal gets nothing on any door)."""

from __future__ import annotations

from collections.abc import Callable, Set
from typing import Any, Protocol

from aralnode.bridge._http import iso_ms
from aralnode.service.approvals import Approval
from aralnode.service.halts import Halts


class _Hub(Protocol):
    @property
    def service(self) -> Any: ...

    @property
    def node_id(self) -> str: ...


class _Subscriber(Protocol):
    def offer(self, message: dict[str, Any]) -> None: ...


_PRINCIPAL_KEY = "principal:"


def subscriber_halted(halts: Halts | None, sub: object) -> bool:
    """Whether governance halted whoever ``sub`` subscribed as: its ``caller`` or
    ``principal`` (when the door records them), or the principal its decision
    entitlement names (``principal:<id>``). A set lookup or two, per event."""
    if not halts:
        return False
    who = [getattr(sub, "caller", ""), getattr(sub, "principal", "")]
    keys = getattr(sub, "decision_keys", ())
    who.extend(k[len(_PRINCIPAL_KEY) :] for k in keys if k.startswith(_PRINCIPAL_KEY))
    return any(w and halts.is_halted(w) for w in who)


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
        halts = hub.service.pipeline.stages.govern.halts  # (read now: halts come and go)
        for sub in list(subscribers):
            if not subscriber_halted(halts, sub):
                sub.offer(message)

    stop: Callable[[], None] = queue.on_event(offer)
    return stop


__all__ = ["follow_approvals", "subscriber_halted"]
