"""Escalation: a call governance escalates waits here until an approver decides.

``ApprovalQueue.wait`` parks the call (its concurrency slot held: the per-principal
bound keeps that fair) until ``approve`` (the call runs), ``deny`` or the timeout
(it is refused, the same way on every door), or until its caller goes away (the
entry is dropped). Bounded: ``max_pending`` in all and ``max_pending_per_principal``
for any one principal -- and for any one untrusted peer, over itself and all the
principals it named (``alice@<peer>``, ``service.auth``: names it makes up for
free must not let it fill the queue); beyond, the call is refused at once.
Approvers need the ``agent:admin`` scope, and no principal approves its own call.

An approver sees the parameters as ``Approval.preview`` (``_preview``): canonical
JSON, its members sorted by name, each value cut on its own, so no member can push
another out of view and no string can pass for other members.

Listeners (``on_event``) hear of every entry that becomes pending and of its end
(``approved``, ``denied``, ``expired``, ``withdrawn``): the WebSocket door sends them
to approvers; a later A2A door shows a pending entry as ``AUTH_REQUIRED``.
"""

from __future__ import annotations

import asyncio
import heapq
import json
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
# The preview: at most this many members (sorted by name; then "+N more"), each
# name cut at _NAME characters and each value at _VALUE (JSON, escaped): so at most
# PREVIEW_MAX characters, whatever the parameters.
_MEMBERS, _NAME, _VALUE = 16, 48, 112
_ITEMS, _DEPTH = 8, 3  # within a value: members or items looked at, levels shown
_MIN = 32  # the least room a cut view takes (a mark: "...(+N chars)", quotes)
PREVIEW_MAX = _MEMBERS * (_NAME + _VALUE + 4) + 32


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
    named_by: str = ""  # the untrusted peer that named ``principal`` (not shown)
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

    async def wait(self, ctx: CallContext, action: Action, verdict: Verdict) -> Approval:
        """Park the call until it is decided; its entry, approved.

        Raises:
            PermissionDenied: denied (``GOVERNANCE_DENIED``), not decided in time
                (``GOVERNANCE_ESCALATION_TIMEOUT``), or its principal or caller was
                halted while it waited (``HALTED``).
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
        if entry.state == WITHDRAWN:  # (halted while it waited: ``withdraw``)
            raise PermissionDenied(
                f"{action.capability} was withdrawn from approval {entry.id}: {entry.note}",
                reason="HALTED",
                details={"approval": entry.id, "decision": "escalate"},
            )
        if entry.state != APPROVED:
            raise PermissionDenied(
                f"{action.capability} was denied by {entry.decided_by or 'an approver'}"
                + (f": {entry.note}" if entry.note else ""),
                reason="GOVERNANCE_DENIED",
                details={"approval": entry.id, "decision": "escalate", "by": entry.decided_by},
            )
        return entry

    def _enter(self, ctx: CallContext, action: Action, verdict: Verdict) -> Approval:
        principal = ctx.principal
        if len(self._pending) >= self.max_pending:
            raise RateLimited(
                f"{len(self._pending)} calls already wait for approval, the node's limit",
                reason="APPROVAL_QUEUE_FULL",
                retry_after=5.0,
            )
        # A principal a peer named counts as its peer: the peer's own calls and every
        # name it made up share one bound.
        by = naming_peer(ctx)
        owner = by or principal
        mine = sum(1 for e in self._pending.values() if (e.named_by or e.principal) == owner)
        if mine >= self.max_pending_per_principal:
            who = f"{by}, with the principals it named," if by else principal
            raise RateLimited(
                f"{who} already has {mine} calls waiting for approval, its limit",
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
            named_by=by,
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

    def withdraw(self, subject: str, why: str) -> int:
        """End every pending call of ``subject`` (its principal, its caller, or the
        peer that named its principal) as withdrawn: governance halted it, and a
        halted principal gets nothing more, an approval included. How many."""
        ended = [
            e for e in self._pending.values() if subject in (e.principal, e.caller, e.named_by)
        ]
        for entry in ended:
            self._end(entry, WITHDRAWN, "", why)
        return len(ended)

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


def naming_peer(ctx: CallContext) -> str:
    """The untrusted peer that named ``ctx``'s principal (``alice@<peer>``, the
    test ``Halts.halted`` uses), else ""."""
    peer = ctx.caller
    if ctx.kind == "node" and ctx.on_behalf_of and ctx.principal.endswith("@" + peer):
        return peer
    return ""


def _preview(action: Action) -> str:
    """A bounded view of the parameters for approvers (the digest identifies them
    whole): canonical JSON (members sorted by name, strings JSON-escaped and ASCII
    only, so what looks like a member is one), every member's name shown up to
    ``_MEMBERS`` of them ("+N more" after), each value cut on its own. A cut is
    marked outside any string, where JSON puts no text: ``"abc"...(+600 chars)``,
    ``[1, 2, +8 more]``. At most ``PREVIEW_MAX`` characters."""
    try:
        params = action.parameters
        if not isinstance(params, dict):
            return _view(params, PREVIEW_MAX, 0)
        names = _first(params, _MEMBERS)
        shown = [f"{_text(str(k), _NAME)}: {_view(params[k], _VALUE, 1)}" for k in names]
        if len(params) > len(names):
            shown.append(f"+{len(params) - len(names)} more")
        return "{" + ", ".join(shown) + "}"
    except Exception:  # a view is a courtesy: never fail the escalation on it
        return "(no preview)"


def _first(members: dict[Any, Any], count: int) -> list[Any]:
    """The first ``count`` keys of ``members`` by name (never sorting them all)."""
    return heapq.nsmallest(count, members, key=str)


def _text(value: str, limit: int) -> str:
    """``value`` as a JSON string, cut (where an escape ends) to at most ``limit``
    characters with its mark (``limit`` >= ``_MIN``)."""
    if len(value) <= limit and len(whole := json.dumps(value)) <= limit:
        return whole
    room = max(0, limit - 2 - len(f"...(+{len(value)} chars)"))  # (the widest mark)
    head = json.dumps(value[:room])
    taken = min(len(value), room)
    if len(head) > room + 2:  # escapes took room: fewer characters
        taken = size = 0
        for ch in value[:room]:
            size += len(json.dumps(ch)) - 2
            if size > room:
                break
            taken += 1
        head = json.dumps(value[:taken])
    return f"{head}...(+{len(value) - taken} chars)"


def _view(value: Any, limit: int, depth: int) -> str:
    """``value`` as canonical JSON, cut to at most ``limit`` characters (>= ``_MIN``)."""
    if isinstance(value, str):
        return _text(value, limit)
    if isinstance(value, dict):
        keys = _first(value, _ITEMS) if depth < _DEPTH else []
        return _joined("{}", [(_text(str(k), _MIN), value[k]) for k in keys],
                       len(value), limit, depth)  # fmt: skip
    if isinstance(value, (list, tuple)):
        items = value[:_ITEMS] if depth < _DEPTH else ()
        return _joined("[]", [("", v) for v in items], len(value), limit, depth)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):  # not JSON (an in-process caller's object)
        return f"<{type(value).__name__}>"[:limit]
    if len(text) <= limit:
        return text
    room = max(0, limit - len(f"...(+{len(text)} chars)"))
    return f"{text[:room]}...(+{len(text) - room} chars)"


def _joined(brackets: str, parts: list[tuple[str, Any]], total: int, limit: int, depth: int) -> str:
    """Members (name, value; an item has no name) of a container of ``total``, as
    many as fit in ``limit`` with what room each has left, between ``brackets``;
    the rest counted ("+N more")."""
    shown: list[str] = []
    left = limit - 2 - len(f", +{total} more")  # (brackets and the widest count)
    for i, (name, value) in enumerate(parts):
        room = left - (len(name) + 2 if name else 0) - (2 if shown else 0)
        room = min(room, max(_MIN, room // (len(parts) - i)))  # (room for the others)
        view = _view(value, max(room, _MIN), depth + 1)
        if len(view) > room:  # (a short value may fit where a cut one would not)
            break
        part = f"{name}: {view}" if name else view
        left -= len(part) + (2 if shown else 0)
        shown.append(part)
    if total > len(shown):
        shown.append(f"+{total - len(shown)} more")
    return brackets[0] + ", ".join(shown) + brackets[1]


__all__ = ["PREVIEW_MAX", "Approval", "ApprovalQueue", "naming_peer"]
