"""``aralnode policy check|explain``: a policy file before a node uses it.

``check`` exits 0 for a file a node would load, 1 with ``FILE:LINE: reason``
otherwise (with ``--json``, the JSON error object on stderr, reason ``POLICY_INVALID``,
as every command fails: ``cli.main``). ``explain`` shows the verdict a call would get:
its decision, the rules that matched, the caller's tier and the capability's category.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aralnode.core.clock import SystemClock
from aralnode.core.governance import Action, Direction
from aralnode.policy.engine import Memory, PolicyEvaluator
from aralnode.policy.load import load_policy


def _check(ns: argparse.Namespace) -> int:
    policy = load_policy(Path(ns.file))  # PolicyError: exit 1, FILE:LINE: reason (cli.main)
    summary = {
        "ok": True,
        "file": ns.file,
        "environment": policy.environment,
        "tripwires": len(policy.tripwires),
        "capability_categories": len(policy.capabilities),
    }
    if ns.json:
        print(json.dumps(summary))
    else:
        print(
            f"ok: {ns.file}: {len(policy.tripwires)} tripwire(s), environment "
            f"{policy.environment!r}"
        )
    return 0


def _explain(ns: argparse.Namespace) -> int:
    policy = load_policy(Path(ns.file))  # PolicyError: exit 1, FILE:LINE: reason (cli.main)
    try:
        params = json.loads(ns.params) if ns.params else {}
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"--params is not valid JSON: {exc}") from None
    engine = PolicyEvaluator(policy, Memory(SystemClock().monotonic, policy))
    roles = frozenset(r for r in (ns.roles or "").split(",") if r)
    action = Action(
        Direction(ns.direction), ns.capability, ns.principal, ns.door, ns.risk, params,
        ns.peer, principal=ns.principal, kind=ns.kind, roles=roles,
    )  # fmt: skip
    try:
        verdict = engine.evaluate(action)
    except Exception as exc:  # a rule that cannot judge this call: one line, not a traceback
        raise ValueError(f"the policy cannot judge this call: {exc}") from None
    out: dict[str, Any] = {
        "decision": verdict.decision.label,
        "flagged": verdict.flagged,
        "rules": list(verdict.rule_ids),
        "reasons": list(verdict.reasons),
        "tier": engine.tier_of(action),
        "category": engine.category_of(action),
    }
    if verdict.parameters is not None:
        out["parameters"] = verdict.parameters
    if ns.json:
        print(json.dumps(out))
        return 0
    for key, value in out.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<10} {shown if shown not in ('', None) else '-'}")
    return 0


def add_parser(subparsers: Any) -> None:
    """``policy`` and its subcommands, on ``aralnode``'s subparsers."""
    policy = subparsers.add_parser("policy", help="governance policy files")
    sub = policy.add_subparsers(dest="policy_command", required=True)
    check = sub.add_parser("check", help="would a node load this file?")
    check.add_argument("file")
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check)
    explain = sub.add_parser("explain", help="the verdict a call would get")
    explain.add_argument("file")
    explain.add_argument("--capability", required=True)
    explain.add_argument("--principal", default="alice")
    explain.add_argument("--kind", default="user", choices=("user", "service", "node", "anonymous"))
    explain.add_argument("--roles", default="", help="comma-separated")
    explain.add_argument("--risk", default="unspecified", help="the capability's declared risk")
    explain.add_argument("--params", default="", help="the call's parameters as JSON")
    explain.add_argument("--door", default="grpc")
    explain.add_argument("--peer", default="")
    explain.add_argument("--direction", default="invoke", choices=[d.value for d in Direction])
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=_explain)


__all__ = ["add_parser"]
