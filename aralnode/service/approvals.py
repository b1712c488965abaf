"""Escalation: a call governance escalates waits here until an approver decides.

``ApprovalQueue.wait`` parks the call (its concurrency slot held: the per-principal
bound keeps that fair) until ``approve`` (the call runs), ``deny`` or the timeout
(it is refused, the same way on every door), or until its caller goes away (the
entry is dropped). Bounded: ``max_pending`` in all and ``max_pending_per_principal``
for any one principal; beyond, the call is refused at once. Approvers need the
``agent:admin`` scope, and no principal approves its own call.

Listeners (``on_event``) hear of every entry that becomes pending and of its end
(``approved``, ``denied``, ``expired``, ``withdrawn``): the WebSocket door sends them
to approvers; a later A2A door shows a pending entry as ``AUTH_REQUIRED``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aralnode._logs import get_logger
from aralnode.core.context import CallContext
from aralnode.core.errors import NotFound, PermissionDenied, RateLimited
from aralnode.core.governance import Action, Verdict

log = get_logger("aralnode.governance")

PENDING, APPROVED, DENIED, EXPIRED, WITHDRAWN = (
    "pending", "approved", "denied", "expired", "withdrawn",
)  # fmt: skip
_PREVIEW_BYTES = 512


@dataclass(slots=True)
class Approval:
    """One escalated call, as approvers see it."""

    id: str
    principal: str
    caller: str
    door: str
    action: str
    direction: str
    reasons: tuple[str, ...]
    rules: tuple[str, ...]
    trace_id: str
    params_digest: str
    preview: str
    created_ms: int
    expires_ms: int
    state: str = PENDING
    decided_by: str = ""
    note: str = ""
    _future: asyncio.Future[None] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "principal": self.principal,
            "caller": self.caller,
            "door": self.door,
            "action": self.action,
            "direction": self.direction,
            "reasons": list(self.reasons),
            "rules": list(self.rules),
            "trace_id": self.trace_id,
            "params_digest": self.params_digest,
            "preview": self.preview,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "decided_by": self.decided_by,
            "note": self.note,
        }


Listener = Callable[[str, Approval], None]


def approval_id() -> str:
    """A new approval's id: 72 random bits, URL-safe, never starting with ``-``
    (``aralnode approvals approve ID`` would read one that did as an option)."""
    while (found := secrets.token_urlsafe(9)).startswith("-"):
        pass
    return found


class ApprovalQueue:
    """The node's pending escalations (see the module docstring)."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        max_pending: int = 256,
        max_pending_per_principal: int = 16,
        monotonic: Callable[[], float] = time.monotonic,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self.max_pending_per_principal = max_pending_per_principal
        self._monotonic = monotonic
        self._now_ms = now_ms
        self._pending: dict[str, Approval] = {}
        self._listeners: list[Listener] = []

    def on_event(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event, entry)`` on each event; returns what stops it."""
        self._listeners.append(listener)

        def stop() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return stop

    def pending(self) -> list[Approval]:
        return list(self._pending.values())

    def get(self, approval_id: str) -> Approval:
        entry = self._pending.get(approval_id)
        if entry is None:
            raise NotFound(f"no pending approval {approval_id!r}", reason="APPROVAL_NOT_FOUND")
        return entry

    # -- the waiting call -------------------------------------------------------------

    async def wait(self, ctx: CallContext, action: Action, verdict: Verdict) -> None:
        """Park the call until it is decided.

        Raises:
            PermissionDenied: denied (``GOVERNANCE_DENIED``) or not decided in time
                (``GOVERNANCE_ESCALATION_TIMEOUT``).
            RateLimited: the queue is full (``APPROVAL_QUEUE_FULL``).
        """
        entry = self._enter(ctx, action, verdict)
        timeout = self.timeout
        if ctx.deadline is not None:  # never past the caller's own deadline
            timeout = min(timeout, max(0.0, ctx.deadline - self._monotonic()))
        assert entry._future is not None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(entry._future)
        except TimeoutError:
            self._end(entry, EXPIRED, "", "not decided in time")
            raise PermissionDenied(
                f"{action.capability} waited {timeout:g} s for an approver and was refused "
                f"(approval {entry.id})",
                reason="GOVERNANCE_ESCALATION_TIMEOUT",
                details={"approval": entry.id, "decision": "escalate"},
            ) from None
        except asyncio.CancelledError:
            if entry.state == PENDING:
                self._end(entry, WITHDRAWN, "", "the caller went away")
            raise
        if entry.state != APPROVED:
            raise PermissionDenied(
                f"{action.capability} was denied by {entry.decided_by or 'an approver'}"
                + (f": {entry.note}" if entry.note else ""),
                reason="GOVERNANCE_DENIED",
                details={"approval": entry.id, "decision": "escalate", "by": entry.decided_by},
            )

    def _enter(self, ctx: CallContext, action: Action, verdict: Verdict) -> Approval:
        principal = ctx.principal
        if len(self._pending) >= self.max_pending:
            raise RateLimited(
                f"{len(self._pending)} calls already wait for approval, the node's limit",
                reason="APPROVAL_QUEUE_FULL",
                retry_after=5.0,
            )
        mine = sum(1 for e in self._pending.values() if e.principal == principal)
        if mine >= self.max_pending_per_principal:
            raise RateLimited(
                f"{principal} already has {mine} calls waiting for approval, its limit",
                reason="APPROVAL_QUEUE_FULL",
                retry_after=5.0,
            )
        now = self._now_ms()
        entry = Approval(
            id=approval_id(),
            principal=principal,
            caller=ctx.caller,
            door=ctx.door,
            action=action.capability,
            direction=str(action.direction),
            reasons=verdict.reasons,
            rules=verdict.rule_ids,
            trace_id=ctx.trace_id,
            params_digest=ctx.params_digest,
            preview=_preview(action),
            created_ms=now,
            expires_ms=now + int(self.timeout * 1000),
            _future=asyncio.get_running_loop().create_future(),
        )
        self._pending[entry.id] = entry
        log.info(
            "call %s of %s by %s waits for approval %s: %s",
            entry.action, entry.door, principal, entry.id, "; ".join(entry.reasons),
        )  # fmt: skip
        self._tell(PENDING, entry)
        return entry

    # -- approvers --------------------------------------------------------------------

    def approve(self, approval_id: str, by: str, note: str = "", *, via: str = "") -> Approval:
        """Let the call run. ``by``: the approver's principal; ``via``: who sent the
        decision, when that is another (a peer deciding on someone's behalf).

        Raises:
            NotFound: no such pending approval.
            PermissionDenied: ``by`` or ``via`` is the principal or caller of the call.
        """
        entry = self._decidable(approval_id, by, via)
        self._end(entry, APPROVED, by, note)
        return entry

    def deny(self, approval_id: str, by: str, note: str = "", *, via: str = "") -> Approval:
        """Refuse the call (``GOVERNANCE_DENIED`` to its caller)."""
        entry = self._decidable(approval_id, by, via)
        self._end(entry, DENIED, by, note)
        return entry

    def _decidable(self, approval_id: str, by: str, via: str) -> Approval:
        entry = self.get(approval_id)
        # Neither the approver nor the one who sent its decision may be the call's own
        # principal or caller: a peer that forwarded a call cannot approve it by
        # naming someone else as the approver.
        parties = (entry.principal, entry.caller)
        if not by or by in parties or (via and via in parties):
            raise PermissionDenied(
                "an approver cannot decide a call of its own", reason="SELF_APPROVAL"
            )
        return entry

    def _end(self, entry: Approval, state: str, by: str, note: str) -> None:
        if self._pending.pop(entry.id, None) is None:
            return
        entry.state, entry.decided_by, entry.note = state, by, note[:256]
        if entry._future is not None and not entry._future.done():
            entry._future.set_result(None)
        log.info("approval %s %s%s", entry.id, state, f" by {by}" if by else "")
        self._tell(state, entry)

    def _tell(self, event: str, entry: Approval) -> None:
        for listener in self._listeners:
            try:
                listener(event, entry)
            except Exception:  # a listener watches; it never decides
                log.exception("approval listener failed")


def _preview(action: Action) -> str:
    """A short view of the parameters for approvers (a digest identifies them whole)."""
    try:
        text = repr(action.parameters)
    except Exception:  # a view is a courtesy: never fail the escalation on it
        return ""
    return text if len(text) <= _PREVIEW_BYTES else text[: _PREVIEW_BYTES - 3] + "..."


__all__ = ["Approval", "ApprovalQueue"]
