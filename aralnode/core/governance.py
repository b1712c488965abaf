"""The governance hook: every action is evaluated before it runs.

An evaluator looks at an ``Action`` and returns a ``Verdict``: one of five primary
decisions (ok, nudge, escalate, block, halt; ACGP-1008 §2.3) plus an orthogonal
flag. ``RuleEvaluator`` is a small tripwire engine: ordered rules, each a predicate
over the action; the most severe matching decision wins and every matching rule is
recorded. Richer policy engines plug in through the ``Evaluator`` protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from google.protobuf.message import Message

from aralnode.core.errors import GovernanceBlocked
from aralnode.core.message_view import governed_json


class Decision(enum.IntEnum):
    """Primary decisions, in increasing severity."""

    OK = 0
    NUDGE = 1
    ESCALATE = 2
    BLOCK = 3
    HALT = 4

    @property
    def label(self) -> str:
        return _LABELS[self]  # (an int: ``self.value`` is a Python-level property)


_LABELS = tuple(d.name.lower() for d in Decision)  # read on every call: no str work


class Direction(enum.StrEnum):
    INVOKE = "invoke"  # a capability is about to run on this node
    SEND = "send"  # this node is about to send a message to a peer
    RECEIVE = "receive"  # a message from a peer is about to be delivered
    CONNECT = "connect"  # a peer's handshake is about to complete (its channel, its calls)
    DISCONNECT = "disconnect"  # a peer's channel ended (judged for the record: never refused)


class Action:
    """What governance judges: a direction, the action's id (a capability, a built-in
    method, an event), who asks through which door, its risk, its parameters and the
    peer involved; for a delegated call, the chain it came through (``chain``,
    originator first, and its ``delegation_depth``), so a rule can read it; and who
    the caller is as the authenticate stage decided (``principal``: the delegating
    principal, else the caller; ``kind``; ``roles``), which a policy maps to a tier.

    ``parameters`` is the request as JSON. For a protobuf request (``message``) it is
    made from the message the first time something reads it, and only then: a policy
    whose rules never look at parameters costs no conversion. It is its proto3 JSON
    view with 64-bit integers as numbers (``message_view.governed_json``).
    """

    __slots__ = (
        "_parameters",
        "caller",
        "capability",
        "chain",
        "direction",
        "door",
        "kind",
        "message",
        "peer",
        "principal",
        "risk",
        "roles",
    )

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaced
        self,
        direction: Direction,
        capability: str,
        caller: str,
        door: str,
        risk: str = "unspecified",
        parameters: Any = None,
        peer: str = "",
        *,
        message: Message | None = None,
        chain: tuple[str, ...] = (),
        principal: str = "",
        kind: str = "",
        roles: frozenset[str] = frozenset(),
    ) -> None:
        self.direction = direction
        self.capability = capability
        self.caller = caller
        self.door = door
        self.risk = risk
        self._parameters = parameters
        self.peer = peer
        self.message = message
        self.chain = chain
        self.principal = principal or caller
        self.kind = kind
        self.roles = roles

    @property
    def delegation_depth(self) -> int:
        """Nodes the call passed through before this one (0: a direct call)."""
        return max(0, len(self.chain) - 1)

    @property
    def parameters(self) -> Any:
        if self._parameters is None and self.message is not None:
            self._parameters = governed_json(self.message)
        return self._parameters

    def _key(self) -> tuple[Any, ...]:
        return (
            self.direction,
            self.capability,
            self.caller,
            self.door,
            self.risk,
            self.parameters,
            self.peer,
            self.chain,
            self.principal,
            self.kind,
            self.roles,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Action) and self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # parameters are dicts

    def __repr__(self) -> str:
        return (
            f"Action(direction={self.direction!r}, capability={self.capability!r}, "
            f"caller={self.caller!r}, door={self.door!r}, risk={self.risk!r}, "
            f"parameters={self.parameters!r}, peer={self.peer!r}, chain={self.chain!r})"
        )


@dataclass(slots=True, frozen=True)
class Verdict:
    decision: Decision = Decision.OK
    flagged: bool = False
    reasons: tuple[str, ...] = ()
    rule_ids: tuple[str, ...] = ()
    # A nudge may replace the parameters.
    parameters: Any = None

    @property
    def allowed(self) -> bool:
        return self.decision <= Decision.NUDGE


ALLOW = Verdict()


class Escalation(Exception):
    """Raised by a response check (the post-execution point) to hold a result until
    an approver decides: the pipeline puts the call in the approval queue with
    ``verdict`` (decision ``ESCALATE``, its reasons and rules); approved, the
    ``result`` the check left (already redacted, say) leaves; denied or timed out,
    the call is refused."""

    def __init__(self, verdict: Verdict, result: Any) -> None:
        super().__init__("; ".join(verdict.reasons) or "escalated")
        self.verdict = verdict
        self.result = result


class Evaluator(Protocol):
    """Anything that judges an action. Must be fast: it runs on every message."""

    def evaluate(self, action: Action) -> Verdict: ...


@dataclass(slots=True, frozen=True)
class Rule:
    """A tripwire: for an action on one of ``capabilities`` (any, if empty) for which
    ``when(action)`` holds (always, if ``None``), the rule contributes ``decision``."""

    id: str
    when: Callable[[Action], bool] | None = None
    decision: Decision = Decision.OK
    flag: bool = False
    reason: str = ""
    capabilities: frozenset[str] = frozenset()


@dataclass(slots=True)
class RuleEvaluator:
    """Tripwires; the most severe matching decision wins, every match is recorded.

    Rules scoped to capabilities are indexed by capability, so an action is checked
    only against the rules that can apply to it plus the unscoped ones: the cost
    grows with the rules relevant to an action, not with the size of the policy.
    """

    rules: Sequence[Rule] = field(default_factory=tuple)
    _general: tuple[Rule, ...] = field(init=False, default=())
    _by_capability: dict[str, tuple[Rule, ...]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        general: list[Rule] = []
        scoped: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if not rule.capabilities:
                general.append(rule)
            for cap in rule.capabilities:
                scoped.setdefault(cap, []).append(rule)
        self._general = tuple(general)
        # Keep policy order within each capability's list (general rules first).
        self._by_capability = {cap: (*general, *rules) for cap, rules in scoped.items()}

    def evaluate(self, action: Action) -> Verdict:
        rules = self._by_capability.get(action.capability, self._general)
        if not rules:
            return ALLOW
        decision, flagged = Decision.OK, False
        reasons: list[str] = []
        ids: list[str] = []
        for rule in rules:
            if rule.when is None or rule.when(action):
                ids.append(rule.id)
                reasons.append(rule.reason or rule.id)
                flagged = flagged or rule.flag
                decision = max(decision, rule.decision)
        if not ids:
            return ALLOW
        return Verdict(decision, flagged, tuple(reasons), tuple(ids))


class AllowAll:
    """The default evaluator: no tripwires configured, every action is ok."""

    __slots__ = ()

    def evaluate(self, action: Action) -> Verdict:
        return ALLOW


_OUTCOME = {
    Decision.ESCALATE: "needs approval (escalated, no approver configured)",
    Decision.BLOCK: "was blocked",
    Decision.HALT: "was halted",
}


def enforce(verdict: Verdict, action: Action) -> None:
    """Raise ``GovernanceBlocked`` unless the verdict lets the action proceed.

    An escalation with no approver configured fails closed.
    """
    if verdict.allowed:
        return
    why = "; ".join(verdict.reasons) or "policy"
    raise GovernanceBlocked(
        f"{action.direction} of {action.capability!r} {_OUTCOME[verdict.decision]} "
        f"by governance: {why}",
        reason=f"GOVERNANCE_{verdict.decision.name}",
        details={"decision": verdict.decision.label, "rules": list(verdict.rule_ids)},
    )
