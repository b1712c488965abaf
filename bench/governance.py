"""Governance: what judging a call by a 100-rule policy costs (ACGP-1008 §8).

The policy (``hundred_rules``, also the "full policy" of the governed MCP and
channel benchmarks) is a realistic mix: 80 tripwires on 40 capabilities (two each,
CEL conditions over the parameters, the tier and the trust debt, actions by tier),
15 on capability globs, and 5 global ones (3 only for messages, 2 with cheap
conditions), plus tiers, categories and the collusion tripwires. The figure is the
median CPU time (this thread's) of ``PolicyEvaluator.evaluate`` over a mix of calls
to those capabilities (the trust-debt, tier and category lookups included),
in-process.

- ``governance.eval_100_rules_us``: µs per evaluated call (target <= 10).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.governance import Action, Direction
from aralnode.policy.engine import Memory, PolicyEvaluator
from aralnode.policy.load import load_policy
from bench._report import Report

CALLS = 20_000
ROUNDS = 7


def hundred_rules(path: Path) -> Path:
    """Write the 100-rule policy to ``path``; ``path``."""
    lines = [
        "version = 1",
        'environment = "production"',
        "[tiers]",
        "default = 3",
        "anonymous = 3",
        "roles = { admin = 5, analyst = 3 }",
        'peers = { "*" = 3 }',
        "[capabilities]",
        '"db.*" = "database"',
        '"pay.*" = "financial"',
        "[collusion]",
        'rapid_exchange = { messages = 1000000, window_seconds = 60, action = "flag" }',
        "data_aggregation = { principals = 1000000, window_seconds = 300 }",
        'circular_delegation = { depth = 3, action = "halt" }',
    ]
    for i in range(40):  # two rules on each of 40 capabilities
        lines += [
            "[[tripwires]]", f'id = "cap{i}-big"', f'capabilities = ["svc{i}.run"]',
            f'when = "has(params.n) && params.n > {1000 + i}"',
            'action = { "0-2" = "escalate", "3-5" = "block" }', f'reason = "n too big for svc{i}"',
            "[[tripwires]]", f'id = "cap{i}-debt"', f'capabilities = ["svc{i}.run"]',
            f'when = "trust_debt > 0.{5 + i % 4} && tier < 4"', 'action = "escalate"',
        ]  # fmt: skip
    for i in range(15):  # on globs
        lines += [
            "[[tripwires]]", f'id = "glob{i}"', f'capabilities = ["grp{i}.*"]',
            f'when = "has(params.rows) && params.rows > {100 * (i + 1)}"', 'action = "block"',
        ]  # fmt: skip
    for i in range(3):  # messages only
        lines += [
            "[[tripwires]]", f'id = "msg{i}"', 'directions = ["send", "receive"]',
            f'capabilities = ["evt.{i}"]', 'when = "has(params.size) && params.size > 1000000"',
            'action = "ok"', "flag = true",
        ]  # fmt: skip
    lines += [
        "[[tripwires]]", 'id = "deep"', 'when = "delegation_depth > 2"', 'action = "escalate"',
        "[[tripwires]]", 'id = "indebted"', 'when = "trust_debt > 0.9"', 'action = "escalate"',
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _calls() -> list[Action]:
    calls = []
    for i in range(200):
        capability = f"svc{i % 40}.run" if i % 5 else f"grp{i % 15}.list"
        params = {"n": i, "text": "hello"} if i % 5 else {"rows": i}
        calls.append(
            Action(
                Direction.INVOKE,
                capability,
                f"user{i % 17}",
                "grpc",
                "read_only",
                params,
                "",
                principal=f"user{i % 17}",
                kind="user",
                roles=frozenset({"analyst"}),
            )
        )
    return calls


def measure(tmp: Path) -> float:
    policy = load_policy(hundred_rules(tmp / "policy.toml"))
    assert len(policy.tripwires) == 100
    engine = PolicyEvaluator(policy, Memory(SYSTEM_CLOCK.monotonic, policy))
    calls = _calls()
    for action in calls:  # warm the caches (candidates, tiers, categories)
        engine.evaluate(action)
    samples = []
    for _ in range(ROUNDS):
        # This thread's CPU time: what judging costs, whatever else the machine
        # runs meanwhile (wall time on a shared 2-core box measures the neighbours).
        t0 = time.thread_time_ns()
        for i in range(CALLS):
            engine.evaluate(calls[i % len(calls)])
        samples.append((time.thread_time_ns() - t0) / CALLS / 1000)
    return statistics.median(samples)


def run(report: Report) -> None:
    """Measure (about 5 s)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aral-gov-") as tmp:
        us = measure(Path(tmp))
    report.add("governance.eval_100_rules_us", us, "us")
    report.section(
        "Governance",
        [
            "A 100-rule policy (80 tripwires on 40 capabilities, 15 on globs, 5 global; CEL",
            "conditions; tiers, categories and collusion tripwires on), judged in-process over",
            f"a mix of 200 calls: {us:.2f} µs per call (target <= 10 µs, ACGP-1008 §8.1).",
        ],
    )


if __name__ == "__main__":
    r = Report()
    run(r)
    print(r.figures)
