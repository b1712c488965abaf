"""The governance hook: decisions, severity order, capability indexing, enforcement."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode import GovernanceBlocked, Node, NodeClient
from aralnode.core.governance import (
    ALLOW,
    Action,
    Decision,
    Direction,
    Rule,
    RuleEvaluator,
    Verdict,
    enforce,
)
from aralnode.transport.grpc_client import unwrap

CAPS = ["a", "b", "c"]


def naive(rules: list[Rule], action: Action) -> Verdict:
    """The specification: check every rule in policy order."""
    hits = [
        r
        for r in rules
        if (not r.capabilities or action.capability in r.capabilities)
        and (r.when is None or r.when(action))
    ]
    if not hits:
        return ALLOW
    return Verdict(
        max(r.decision for r in hits),
        any(r.flag for r in hits),
        tuple(r.reason or r.id for r in hits),
        tuple(r.id for r in hits),
    )


rule_st = st.builds(
    lambda i, decision, flag, caps, risky: Rule(
        f"r{i}",
        (lambda a: a.risk == "financial") if risky else None,
        decision,
        flag,
        capabilities=frozenset(caps),
    ),
    st.integers(0, 10_000),
    st.sampled_from(list(Decision)),
    st.booleans(),
    st.sets(st.sampled_from(CAPS), max_size=2),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(
    rules=st.lists(rule_st, max_size=12, unique_by=lambda r: r.id),
    cap=st.sampled_from([*CAPS, "other"]),
    risk=st.sampled_from(["read_only", "financial"]),
)
def test_indexed_evaluation_equals_checking_every_rule(
    rules: list[Rule], cap: str, risk: str
) -> None:
    action = Action(Direction.INVOKE, cap, "caller", "grpc", risk)
    got = RuleEvaluator(rules).evaluate(action)
    want = naive(rules, action)
    assert got.decision == want.decision
    assert got.flagged == want.flagged
    assert sorted(got.rule_ids) == sorted(want.rule_ids)


@pytest.mark.parametrize("decision", list(Decision))
def test_enforce_lets_ok_and_nudge_through(decision: Decision) -> None:
    action = Action(Direction.INVOKE, "x", "", "grpc")
    verdict = Verdict(decision, reasons=("why",), rule_ids=("r",))
    if decision <= Decision.NUDGE:
        enforce(verdict, action)
    else:
        with pytest.raises(GovernanceBlocked) as info:
            enforce(verdict, action)
        assert info.value.reason == f"GOVERNANCE_{decision.name}"
        assert info.value.details["decision"] == decision.label


async def test_blocked_call_over_grpc_and_in_process(make_node: Callable[..., Node]) -> None:
    policy = RuleEvaluator(
        [
            Rule(
                "no-add",
                decision=Decision.BLOCK,
                reason="adding is forbidden",
                capabilities=frozenset({"demo.add"}),
            ),
            Rule("watch", decision=Decision.OK, flag=True, capabilities=frozenset({"demo.echo"})),
            Rule(
                "big",
                lambda a: bool(a.parameters and a.parameters.get("times", 1) > 5),
                Decision.ESCALATE,
            ),
        ]
    )
    node = make_node("governed", governance=policy)
    async with node, NodeClient(node.address) as client:
        node.pipeline.stages.govern.approvals = None  # no approval queue: refused at once
        with pytest.raises(GovernanceBlocked) as info:
            await client.call("demo.add", {"a": 1, "b": 2})
        assert "adding is forbidden" in info.value.message
        with pytest.raises(GovernanceBlocked):
            await node.invoke("demo.add", {"a": 1, "b": 2})
        with pytest.raises(GovernanceBlocked) as info:
            await client.call("demo.echo", {"text": "x", "times": 9})
        assert info.value.reason == "GOVERNANCE_ESCALATE"
        result = await client.call("demo.echo", {"text": "x"})
        assert unwrap(result)["text"] == "x"
        assert result.decision == "ok"
        # The flag is orthogonal to the decision: both echo calls were flagged.
        assert node.pipeline.counters["governance.flagged"] == 2
