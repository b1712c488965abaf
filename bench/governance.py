"""Governance: what judging a call by a 100-rule policy costs (ACGP-1008 §8).

The policy (``hundred_rules``, also the "full policy" of the governed MCP and
channel benchmarks) is a realistic mix: 80 tripwires on 40 capabilities (two each,
CEL conditions over the parameters, the tier and the trust debt, actions by tier),
15 on capability globs, and 5 global ones (3 only for messages, 2 with cheap
conditions), plus tiers, categories, the collusion tripwires and the post-execution
checks (``[post]``: every result and channel message scanned by the built-in
detectors, results that break their output schema flagged). The figure is the
median CPU time (this thread's) of ``PolicyEvaluator.evaluate`` over a mix of calls
to those capabilities (the trust-debt, tier and category lookups included),
in-process.

- ``governance.eval_100_rules_us``: µs per evaluated call (target <= 10);
- ``governance.eval_100_rules_fresh_params_us``: the same calls, but no call's
  parameters the same as an earlier one's, so no condition over them is answered
  from what the engine remembers (every one runs in the interpreter).

And what governance and the audit log add to one channel message at one end
(``Pipeline.judge_message`` of a notification received, as the channel's receiver
runs it, the audit log's groups written as the node writes them, 300 a commit),
in-process, this thread's CPU, median of rounds: the 100-rule policy and the audit
log on, each alone, against neither. The channel benchmark's
``channel.audited_vs_off.ratio`` pays this twice a message (sender and receiver).

- ``governance.message_added_us``: policy and audit log on, µs a message more;
- ``governance.message_policy_added_us`` / ``governance.message_audit_added_us``:
  each alone.
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
        # Post-execution (issue 16, item 4): results and channel messages scanned.
        "[post]", 'sensitive = { "0-2" = "redact", "3-5" = "escalate" }', "messages = true",
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def _calls(first: int = 0, count: int = 200) -> list[Action]:
    """``count`` calls; the ``i``-th (from ``first``) has parameter values ``i``."""
    calls = []
    for i in range(first, first + count):
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


def measure(tmp: Path, *, fresh: bool = False) -> float:
    """µs per ``evaluate`` over the 200-call mix, again and again; ``fresh``: the
    same mix, each call's parameters new (made before the clock starts)."""
    policy = load_policy(hundred_rules(tmp / "policy.toml"))
    assert len(policy.tripwires) == 100
    engine = PolicyEvaluator(policy, Memory(SYSTEM_CLOCK.monotonic, policy))
    mix = _calls()
    for action in mix:  # warm the caches (candidates, tiers, categories)
        engine.evaluate(action)
    samples = []
    for r in range(ROUNDS):
        calls = (
            _calls(first=len(mix) + r * CALLS, count=CALLS)
            if fresh
            else [mix[i % len(mix)] for i in range(CALLS)]
        )
        # This thread's CPU time: what judging costs, whatever else the machine
        # runs meanwhile (wall time on a shared 2-core box measures the neighbours).
        t0 = time.thread_time_ns()
        for action in calls:
            engine.evaluate(action)
        samples.append((time.thread_time_ns() - t0) / CALLS / 1000)
    return statistics.median(samples)


GROUP = 300  # channel records a commit (a busy receiver's, measured)
GROUPS = 40
MESSAGE_KINDS = ("off", "both", "policy", "audit")


async def message_costs(tmp: Path) -> dict[str, float]:
    """µs of this thread's CPU per notification judged and recorded at one end,
    by kind (see the module docstring)."""
    from aralnode import Node, NodeConfig
    from aralnode import _proto as pb

    policy = hundred_rules(tmp / "messages.toml")
    nodes = {}
    for kind in MESSAGE_KINDS:
        extra: dict[str, object] = {}
        if kind in ("both", "policy"):
            extra |= {"policy_file": policy, "policy_reload_seconds": 0}
        if kind in ("both", "audit"):
            extra["audit"] = True
        node = Node(
            NodeConfig(
                name=kind, grpc_port=0, http_port=None, discovery="none",
                data_dir=tmp / kind, channel_signing=True, **extra,  # type: ignore[arg-type]
            )
        )  # fmt: skip
        await node.start()
        nodes[kind] = node
    peer = "o7daqxiaz6i25szebeptwsiswohxl4b6"
    header = pb.Header(sender=peer, message_id="m1", timestamp_unix_ms=time.time_ns() // 10**6)
    per: dict[str, list[float]] = {k: [] for k in MESSAGE_KINDS}
    try:
        for _ in range(ROUNDS):
            for kind, node in nodes.items():
                contexts, pipeline = node.parts.hub.contexts, node.pipeline
                store = pipeline.stages.audit.log
                t0 = time.thread_time_ns()
                for _ in range(GROUPS):
                    for i in range(GROUP):
                        ctx = contexts.channel(peer, header, signed=True)
                        pipeline.judge_message(
                            ctx, "bench", {"i": i}, direction=Direction.RECEIVE, peer=peer
                        )
                    if store is not None:
                        store.store.flush()  # type: ignore[attr-defined]
                per[kind].append((time.thread_time_ns() - t0) / (GROUPS * GROUP) / 1000)
    finally:
        for node in nodes.values():
            await node.stop(0.5)
    return {kind: statistics.median(v) for kind, v in per.items()}


def run(report: Report) -> None:
    """Measure (about 10 s)."""
    import asyncio
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aral-gov-") as tmp:
        us = measure(Path(tmp))
        fresh = measure(Path(tmp), fresh=True)
        costs = asyncio.run(message_costs(Path(tmp)))
    report.add("governance.eval_100_rules_us", us, "us")
    report.add("governance.eval_100_rules_fresh_params_us", fresh, "us")
    off = costs["off"]
    added = {k: costs[k] - off for k in MESSAGE_KINDS[1:]}
    report.add("governance.message_added_us", added["both"], "us")
    report.add("governance.message_policy_added_us", added["policy"], "us")
    report.add("governance.message_audit_added_us", added["audit"], "us")
    report.section(
        "Governance",
        [
            "A 100-rule policy (80 tripwires on 40 capabilities, 15 on globs, 5 global; CEL",
            "conditions; tiers, categories, collusion tripwires and post-execution checks",
            "on), judged in-process over",
            f"a mix of 200 calls: {us:.2f} µs per call (target <= 10 µs, ACGP-1008 §8.1).",
            "With no call's parameters seen before (no condition over them answered from",
            f"memory): {fresh:.2f} µs per call.",
            "",
            "One channel message at one end (a notification received, judged and recorded,",
            f"the audit log committing {GROUP} records at a time), in-process: {off:.1f} µs",
            f"with neither; the policy and the audit log add {added['both']:.1f} µs (the policy",
            f"alone {added['policy']:.1f}, its message filter included; the audit log alone",
            f"{added['audit']:.1f}). The channel benchmark's audited run pays that at both ends",
            "of every message.",
        ],
    )


if __name__ == "__main__":
    r = Report()
    run(r)
    print(r.figures)
