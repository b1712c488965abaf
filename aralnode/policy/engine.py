"""The policy engine: a ``core.governance.Evaluator`` that judges each action by a
policy file (docs/governance.md).

For an action it works out, each at most once per call and most of them cached:
the caller's ACL tier (``[tiers]``), the capability's category (``[capabilities]``
over its declared risk) and the category's minimum tier (ACGP-1008 §2.4), the
inbound filter (§3.3.2: a peer below ``requests_min_tier`` sends no requests), the
collusion tripwires (§3.5.2), and the tripwires that can apply -- indexed by
direction and capability, so a call runs only its own rules and the global ones,
whatever the size of the policy. The most severe decision wins; every rule that
matched is named; a flag raises the principal's trust debt.

A principal an untrusted peer names (``alice@<peer>``, ``service.auth``) is one a
peer makes up for free: its calls count towards the peer's rate too, its flags
raise the peer's debt too, and ``rate`` and ``trust_debt`` read the larger of the
two -- a new name each call resets nothing (as halts roll up to the peer).

What does not change between calls of one shape (the same direction, capability,
caller and principal, kind and roles, door, peer, chain and risk) is kept per shape:
the tier, the tripwires, and which of them fire when they read only such values --
so a channel's stream of messages costs one lookup and its counters (``_Known``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aralnode.core.errors import InternalError
from aralnode.core.governance import ALLOW, Action, Decision, Direction, Verdict
from aralnode.policy.expr import Condition, new_context
from aralnode.policy.load import matches
from aralnode.policy.model import Policy, Tripwire
from aralnode.policy.parties import exchange_partner, naming_peer
from aralnode.policy.state import DistinctRecent, TrustLedger, WindowCounter

_CACHE = 4096
_MEMO = 512  # remembered answers per condition
_NOT_SCALAR = frozenset({"params", "roles", "chain"})
_OK = Decision.OK


class Memory:
    """What the engine remembers across calls and across reloads of the policy."""

    def __init__(self, now: Callable[[], float], policy: Policy) -> None:
        self.now = now
        debt, collusion = policy.trust_debt, policy.collusion
        self.ledger = TrustLedger(now, debt.half_life_seconds, debt.max_principals)
        size = collusion.max_tracked
        rapid, aggregation = collusion.rapid_exchange, collusion.data_aggregation
        self.exchange = WindowCounter(now, rapid.window_seconds if rapid else 60.0, size)
        self.aggregation = DistinctRecent(
            now, aggregation.window_seconds if aggregation else 300.0, size
        )
        self.rate = WindowCounter(now, 60.0, size)

    def adopt(self, policy: Policy) -> None:
        """Keep the state, take the new policy's bounds and windows."""
        debt, collusion = policy.trust_debt, policy.collusion
        self.ledger.resize(debt.half_life_seconds, debt.max_principals)
        if collusion.rapid_exchange:
            self.exchange.window = collusion.rapid_exchange.window_seconds
        if collusion.data_aggregation:
            self.aggregation.window = collusion.data_aggregation.window_seconds

    def flag(self, action: Action, weight: float) -> None:
        """Raise the trust debt of ``action``'s principal by ``weight``, and of the
        peer that named it (if one did: the module docstring)."""
        self.ledger.flag(action.principal, weight)
        if peer := naming_peer(action):
            self.ledger.flag(peer, weight)


class _Rule:
    """A tripwire as the engine runs it: its condition compiled."""

    __slots__ = ("condition", "fields", "memo", "names", "run", "tripwire")

    def __init__(self, tripwire: Tripwire) -> None:
        self.tripwire = tripwire
        self.condition = Condition(tripwire.when) if tripwire.when else None
        # The compiled program's execute, called directly on the hot path.
        self.run = self.condition.execute if self.condition is not None else None
        # CEL is pure: a condition over scalars only gives the same answer for the
        # same values, so its answers are remembered (bounded) by those values.
        names = self.condition.variables if self.condition is not None else frozenset()
        self.names = tuple(sorted(names))
        self.memo: dict[tuple[Any, ...], bool] | None = (
            {} if names and not names & _NOT_SCALAR else None
        )
        # The parameters' fields it reads (``None``: all of them may matter).
        self.fields = self.condition.fields if self.condition is not None else None


class _Plan:
    """The tripwires that can apply to one (direction, capability). When each of
    them reads scalars only (or nothing), which of them fire is a function of the
    values they read together: it is remembered (bounded) by those values, so a
    call whose values were seen before builds one key and looks it up once."""

    __slots__ = ("fixed", "getters", "key", "memo", "reads_debt", "rules")

    def __init__(self, rules: tuple[_Rule, ...]) -> None:
        self.rules = rules
        scalar = bool(rules) and all(r.memo is not None or r.run is None for r in rules)
        names = {n for r in rules for n in r.names}
        self.getters = tuple(_GETTERS[n] for n in sorted(names)) if scalar else ()
        self.key = _key_of(self.getters)
        self.memo: dict[tuple[Any, ...], tuple[_Rule, ...]] | None = {} if scalar else None
        # Which rules fire is a function of the call's shape (``_Known``) -- and of
        # trust debt, which is 0 for every principal the ledger does not hold.
        self.fixed = names <= _FIXED | {"trust_debt"}
        self.reads_debt = "trust_debt" in names


class _Known:
    """What ``evaluate`` works out once per shape of call -- calls alike in all but
    their parameters and the counters: direction, capability, who, door, peer,
    chain and risk -- the tripwires that can apply, the caller's tier, the peer the
    call is an exchange with (``partner``, for rapid exchange: "" none), the peer
    that named its principal (``named_by``: "" none) and, when those tripwires read
    nothing that changes from call to call, which of them fire (``None``: worked
    out per call)."""

    __slots__ = ("fired", "named_by", "partner", "plan", "tier")

    def __init__(self, plan: _Plan, tier: int, partner: str, named_by: str) -> None:
        self.plan = plan
        self.tier = tier
        self.partner = partner
        self.named_by = named_by
        self.fired: tuple[_Rule, ...] | None = None  # (kept by the first call that can)


def _key_of(getters: tuple[_Getter, ...]) -> _Getter:
    """The memo key of a call: its values of ``getters``, as a tuple (written out for
    one to three of them: a list comprehension is a frame of its own, every call)."""
    if len(getters) == 1:
        (g0,) = getters
        return lambda e, a, t: (g0(e, a, t),)
    if len(getters) == 2:
        g0, g1 = getters
        return lambda e, a, t: (g0(e, a, t), g1(e, a, t))
    if len(getters) == 3:
        g0, g1, g2 = getters
        return lambda e, a, t: (g0(e, a, t), g1(e, a, t), g2(e, a, t))
    return lambda e, a, t: tuple([g(e, a, t) for g in getters])


class _Found:
    """The matches of one evaluation."""

    __slots__ = ("decision", "flagged", "params", "reasons", "rules", "weight")

    def __init__(self) -> None:
        self.decision = _OK
        self.flagged = False
        self.rules: list[str] = []
        self.reasons: list[str] = []
        self.params: Any = None
        self.weight = 0.0

    def add(self, rule_id: str, decision: Decision, reason: str, flag: float = 0.0) -> None:
        self.rules.append(rule_id)
        self.reasons.append(reason or rule_id)
        self.decision = max(self.decision, decision)
        if flag:
            self.flagged = True
            self.weight += flag


class PolicyEvaluator:
    """Judges actions by ``policy`` (see the module docstring)."""

    def __init__(self, policy: Policy, memory: Memory) -> None:
        self.policy = policy
        self.memory = memory
        self._rules = [_Rule(t) for t in policy.tripwires]
        self._exact: dict[str, list[_Rule]] = {}
        self._globs: list[_Rule] = []
        self._general: list[_Rule] = []
        for rule in self._rules:
            caps = rule.tripwire.capabilities
            if not caps:
                self._general.append(rule)
            for cap in caps:
                if any(ch in cap for ch in "*?["):
                    self._globs.append(rule)
                else:
                    self._exact.setdefault(cap, []).append(rule)
        self._for: dict[tuple[Direction, str], _Plan] = {}
        self._known: dict[tuple[Any, ...], _Known] = {}
        self._debtors = memory.ledger.debtors
        self._naming = ""  # the judged call's naming peer (set by evaluate for the getters)
        self._tiers: dict[tuple[str, str, frozenset[str], bool], int] = {}
        self._categories: dict[tuple[str, str], str] = {}
        # Reused: one evaluation at a time, on the loop; none where no rule has a condition.
        conditions = any(r.condition for r in self._rules)
        self._cel: Any = new_context() if conditions else None
        self._uses_rate = any(r.condition and "rate" in r.condition.variables for r in self._rules)
        collusion = policy.collusion
        self._rapid = collusion.rapid_exchange or None
        self._aggregating = bool(collusion.data_aggregation)

    # -- what a call is --------------------------------------------------------------

    def tier_of(self, action: Action) -> int:
        """The ACL tier of the action's caller (``[tiers]``)."""
        local = action.door == "local" and not action.caller
        key = (action.principal, action.kind, action.roles, local)
        tier = self._tiers.get(key)
        if tier is None:
            tier = self._find_tier(action, local)
            if len(self._tiers) >= _CACHE:
                self._tiers.clear()
            self._tiers[key] = tier
        return tier

    def _find_tier(self, action: Action, local: bool) -> int:
        tiers = self.policy.tiers
        found: int | None
        if local:
            return tiers.local
        principal = action.principal
        if not principal or principal == "anonymous" or action.kind == "anonymous":
            return tiers.anonymous
        found = _lookup_principal(tiers.principals, principal)
        if found is not None:
            return found
        by_role = [tiers.roles[r] for r in action.roles if r in tiers.roles]
        if by_role:
            return max(by_role)
        if action.kind == "node":
            found = _lookup(tiers.peers, principal)
            if found is not None:
                return found
        return tiers.default

    def category_of(self, action: Action) -> str:
        """The capability's category: ``[capabilities]``, else its declared risk."""
        key = (action.capability, action.risk)
        category = self._categories.get(key)
        if category is None:
            category = _lookup(self.policy.capabilities, action.capability) or action.risk
            if category not in self.policy.categories.minimum:
                category = "unspecified"
            if len(self._categories) >= _CACHE:
                self._categories.clear()
            self._categories[key] = category
        return category

    def _candidates(self, action: Action) -> _Plan:
        """The tripwires that can apply to ``action`` (cached per direction and id)."""
        key = (action.direction, action.capability)
        found = self._for.get(key)
        if found is None:
            cap = action.capability
            picked = {id(r) for r in self._exact.get(cap, ())}
            picked |= {id(r) for r in self._general}
            picked |= {
                id(r) for r in self._globs if any(matches(p, cap) for p in r.tripwire.capabilities)
            }
            rules = tuple(
                r for r in self._rules
                if id(r) in picked and action.direction in r.tripwire.directions
            )  # fmt: skip
            found = _Plan(rules)
            if len(self._for) >= _CACHE:
                self._for.clear()
            self._for[key] = found
        return found

    # -- judging ---------------------------------------------------------------------

    def evaluate(self, action: Action) -> Verdict:
        policy = self.policy
        shape = (
            action.direction, action.capability, action.principal, action.caller, action.kind,
            action.roles, action.door, action.peer, action.chain, action.risk,
        )  # fmt: skip
        known = self._known.get(shape)
        if known is None:
            known = self._learn(action, shape)
        tier = known.tier
        found: _Found | None = None
        if action.direction is Direction.INVOKE:
            found = self._acl(action, tier)
        rapid = self._rapid
        if (  # (counted here, written out: every message; a pair past it is rare)
            rapid is not None
            and (partner := known.partner)
            and self.memory.exchange.add(partner) >= rapid.count
        ):
            found = self._rapid_exchange(partner, found)
        if self._aggregating and action.direction is Direction.INVOKE:
            found = self._aggregation(action, found)
        if action.chain and policy.collusion.circular_depth is not None:
            found = self._circular(action, found)
        if self._uses_rate:
            self.memory.rate.add(action.principal)
            if known.named_by:  # (and under the peer that named it: a name resets nothing)
                self.memory.rate.add(known.named_by)
        fired = known.fired
        if fired is None or (  # (named_by "" owes nothing: "" is no principal)
            known.plan.reads_debt
            and (action.principal in self._debtors or known.named_by in self._debtors)
        ):
            # (Worked out after the counters: a call whose rule fails still counts.)
            self._naming = known.named_by
            fired = self._firing(known.plan, action, tier)
            debtors = self._debtors
            if known.plan.fixed and not (action.principal in debtors or known.named_by in debtors):
                known.fired = fired
        for rule in fired:
            found = found or _Found()
            self._matched(found, rule.tripwire, tier, action)
        if found is None:
            return ALLOW
        if found.flagged:
            weight = found.weight or policy.trust_debt.flag_weight
            self.memory.flag(action, weight)
        return Verdict(
            found.decision, found.flagged, tuple(found.reasons), tuple(found.rules), found.params
        )

    def _learn(self, action: Action, shape: tuple[Any, ...]) -> _Known:
        """``action``'s ``_Known`` entry, made and kept (bounded) by its ``shape``."""
        known = _Known(
            self._candidates(action),
            self.tier_of(action),
            exchange_partner(action),
            naming_peer(action),
        )
        if len(self._known) >= _CACHE:
            self._known.clear()
        self._known[shape] = known
        return known

    def _firing(self, plan: _Plan, action: Action, tier: int) -> tuple[_Rule, ...]:
        """The rules of ``plan`` that fire for ``action`` (remembered by the values
        they read, when they read scalars only)."""
        if not plan.rules:
            return ()
        joint = plan.memo
        if joint is None:
            return self._fired(plan.rules, action, tier)
        key = plan.key(self, action, tier)
        known = joint.get(key)
        if known is None:
            known = self._fired(plan.rules, action, tier)
            if len(joint) >= _MEMO:
                joint.clear()
            joint[key] = known
        return known

    def _fired(self, rules: tuple[_Rule, ...], action: Action, tier: int) -> tuple[_Rule, ...]:
        """The ``rules`` whose conditions hold for ``action`` (each value read once,
        each condition's answer remembered by its own values when it can be)."""
        fired = []
        values: dict[str, Any] = {}  # made once per call, as rules need them
        sent: set[str] = set()  # and set into the CEL context once
        fields_sent: tuple[str, ...] | None = None  # (params: only these, if not whole)
        context = self._cel
        for rule in rules:
            run = rule.run
            if run is not None:
                for name in rule.names:
                    if name not in values:
                        values[name] = _GETTERS[name](self, action, tier)
                memo = rule.memo
                key = tuple([values[n] for n in rule.names]) if memo is not None else ()
                held = memo.get(key) if memo is not None else None
                if held is None:
                    for name in rule.names:
                        if name in sent:
                            continue
                        value = values[name]
                        if name == "params" and (fields := rule.fields) is not None:
                            if fields != fields_sent:  # only the fields it reads
                                value = {k: value[k] for k in fields if k in value}
                                context.add_variable(name, value)
                                fields_sent = fields
                            continue
                        context.add_variable(name, value)
                        sent.add(name)
                    held = self._run(rule, run, context)
                    if memo is not None:
                        if len(memo) >= _MEMO:
                            memo.clear()
                        memo[key] = held
                if not held:
                    continue
            fired.append(rule)
        return tuple(fired)

    def _matched(self, found: _Found, tripwire: Tripwire, tier: int, action: Action) -> None:
        decision = tripwire.decision_for(tier)
        weight = 0.0
        if tripwire.flag:
            weight = (
                tripwire.debt if tripwire.debt is not None else self.policy.trust_debt.flag_weight
            )
        found.add(tripwire.id, decision, tripwire.reason, weight)
        if decision is Decision.NUDGE and tripwire.set:
            base = found.params if found.params is not None else action.parameters
            found.params = {**(base if isinstance(base, dict) else {}), **tripwire.set}

    def _acl(self, action: Action, tier: int) -> _Found | None:
        policy = self.policy
        category = self.category_of(action)
        minimum = policy.categories.minimum.get(category, 0)
        found = None
        if tier < minimum:
            found = _Found()
            found.add(
                "acl.tier_below", policy.categories.below_tier,
                f"a {category} capability needs ACL-{minimum}; the caller is ACL-{tier}",
            )  # fmt: skip
        if action.kind == "node" and tier < policy.requests_min_tier:
            found = found or _Found()
            found.add(
                "filter.requests_tier", Decision.BLOCK,
                f"a peer of ACL-{tier} may send no requests (ACL-{policy.requests_min_tier} "
                "needed)",
            )  # fmt: skip
        return found

    def _rapid_exchange(self, partner: str, found: _Found | None) -> _Found:
        """A pair past the rapid-exchange count (``evaluate`` counted the message)."""
        rapid = self.policy.collusion.rapid_exchange
        assert rapid is not None
        return self._tripped(
            found, "collusion.rapid_exchange", rapid.decision, rapid.flag,
            f"{rapid.count} or more messages with {partner} within "
            f"{rapid.window_seconds:g} s",
        )  # fmt: skip

    def _aggregation(self, action: Action, found: _Found | None) -> _Found | None:
        aggregation = self.policy.collusion.data_aggregation
        if aggregation and self.category_of(action) in aggregation.categories:
            # Who asks: the peer, for every name it made up. Each made-up name counted
            # apart, one peer alone would trip the rule for everyone else who asks
            # within the window (and flood the table's principals out of it).
            asker = naming_peer(action) or action.principal
            seen = self.memory.aggregation.add(action.capability, asker)
            if seen >= aggregation.count:
                found = self._tripped(
                    found, "collusion.data_aggregation", aggregation.decision, aggregation.flag,
                    f"{seen} principals asked for {action.capability} within "
                    f"{aggregation.window_seconds:g} s",
                )  # fmt: skip
        return found

    def _tripped(
        self, found: _Found | None, rule_id: str, decision: Decision, flag: bool, reason: str
    ) -> _Found:
        """``found`` (or a new one) with a collusion tripwire's match added."""
        found = found or _Found()
        found.add(rule_id, decision, reason, self.policy.trust_debt.flag_weight if flag else 0.0)
        return found

    def _circular(self, action: Action, found: _Found | None) -> _Found | None:
        collusion = self.policy.collusion
        depth = action.delegation_depth
        assert collusion.circular_depth is not None
        looped = len(set(action.chain)) < len(action.chain)
        if depth > collusion.circular_depth or looped:
            found = found or _Found()
            what = "a node appears twice in" if looped else f"depth {depth} exceeds"
            found.add(
                "collusion.circular_delegation", collusion.circular_decision,
                f"{what} the delegation chain {' -> '.join(action.chain)}",
            )  # fmt: skip
        return found

    def _run(self, rule: _Rule, run: Any, context: Any) -> bool:
        try:
            held = run(context)
        except Exception as exc:  # fail closed: a rule that cannot say refuses
            raise self._failed(rule, exc) from None
        if held is not True and held is not False:
            raise self._failed(rule, f"is {type(held).__name__}, not a boolean")
        return bool(held)

    def _failed(self, rule: _Rule, why: object) -> InternalError:
        t = rule.tripwire
        text = (
            f"{type(why).__name__}: {str(why).splitlines()[0][:200]}"
            if isinstance(why, Exception)
            else str(why)
        )
        return InternalError(
            f"governance rule {t.id!r} ({self.policy.source}:{t.line}) failed: {text}",
            reason="GOVERNANCE_RULE_FAILED",
            details={"rule": t.id},
        )


def _rate(engine: PolicyEvaluator, action: Action, tier: int) -> int:
    """The principal's calls in the window; for one a peer named, the larger of
    that and the peer's (every name it made up counted together)."""
    counts = engine.memory.rate._counts
    entry = counts.get(action.principal)
    rate = int(entry[1] + entry[2]) if entry is not None else 0
    if (peer := engine._naming) and (entry := counts.get(peer)) is not None:
        rate = max(rate, int(entry[1] + entry[2]))
    return rate


def _debt(engine: PolicyEvaluator, action: Action, tier: int) -> float:
    """The principal's trust debt; for one a peer named, the larger of that and the
    peer's."""
    ledger = engine.memory.ledger
    debt = ledger.debt(action.principal)
    return max(debt, ledger.debt(peer)) if (peer := engine._naming) else debt


def _params(action: Action) -> Any:
    params = action.parameters
    return params if isinstance(params, dict) else {}


_Getter = Callable[[PolicyEvaluator, Action, int], Any]
#: The names whose values are a function of a call's shape (``_Known``) and the
#: policy: a plan that reads only these fires the same rules for every call of a
#: shape. ``_PER_CALL``'s change from call to call (trust debt: see ``_Plan``).
_FIXED = frozenset({
    "capability", "direction", "door", "category", "risk", "principal", "caller", "kind",
    "roles", "tier", "environment", "delegation_depth", "chain", "peer",
})  # fmt: skip
_PER_CALL = frozenset({"params", "rate", "trust_debt"})
_GETTERS: dict[str, _Getter] = {
    "capability": lambda e, a, t: a.capability,
    "direction": lambda e, a, t: a.direction.value,
    "door": lambda e, a, t: a.door,
    "category": lambda e, a, t: e.category_of(a),
    "risk": lambda e, a, t: a.risk,
    "params": lambda e, a, t: _params(a),
    "principal": lambda e, a, t: a.principal,
    "caller": lambda e, a, t: a.caller,
    "kind": lambda e, a, t: a.kind,
    "roles": lambda e, a, t: sorted(a.roles),
    "tier": lambda e, a, t: t,
    "trust_debt": _debt,
    "environment": lambda e, a, t: e.policy.environment,
    "delegation_depth": lambda e, a, t: a.delegation_depth,
    "chain": lambda e, a, t: list(a.chain),
    "peer": lambda e, a, t: a.peer,
    "rate": _rate,
}


def _lookup_principal(table: Any, name: str) -> Any:
    """``_lookup`` for a principal. One a peer named without the operator trusting it
    to name principals is qualified with that peer (``alice@<node id>``,
    ``service.auth``): it matches a pattern only if the pattern names a peer too
    (``*@<node id>``), never a local one's glob: ``ops-*`` must not give a stranger's
    ``ops-x@…`` the tier of the operator's ``ops-`` principals."""
    if name in table:
        return table[name]
    foreign = "@" in name
    for pattern, value in table.items():
        if (foreign == ("@" in pattern)) and matches(pattern, name):
            return value
    return None


def _lookup(table: Any, name: str) -> Any:
    """``table[name]``, else the first glob entry that matches."""
    if name in table:
        return table[name]
    for pattern, value in table.items():
        if matches(pattern, name):
            return value
    return None


__all__ = ["Memory", "PolicyEvaluator"]
