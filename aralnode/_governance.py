"""Governance and audit for a node (issue 16): the policy file and its reload, the
approval queue of escalated calls, the halts, the audit log; started with the
node, stopped after it stopped serving."""

from __future__ import annotations

import asyncio
from typing import Any

from aralnode._audit import close_audit_log, open_audit_log
from aralnode._policy import install_policy, start_watch, stop_watch
from aralnode.config import NodeConfig
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import Clock
from aralnode.core.identity import Identity
from aralnode.policy.holder import PolicyHolder
from aralnode.policy.model import EscalationPolicy
from aralnode.policy.post import MessageFilter, OutputSchema, PostPolicy, SensitiveData
from aralnode.service.approvals import ApprovalQueue
from aralnode.service.halts import HaltEntry, Halts
from aralnode.service.pipeline import Pipeline
from aralnode.service.stages import ResponseCheck
from aralnode.store.audit import AuditLog

HALTS_FILE = "halts.json"


def post_checks(holder: PolicyHolder, registry: CapabilityRegistry) -> list[ResponseCheck]:
    """The post-execution checks of the policy's ``[post]`` (none while it has
    none: each reads the policy in force on every call, so a reload applies)."""

    def post() -> PostPolicy | None:
        return holder.current.policy.post

    def schema_of(capability: str) -> dict[str, Any] | None:
        if capability not in registry:
            return None  # a built-in method, a forwarded call
        cap = registry.get(capability)
        # A protobuf method's result is its message: nothing to check.
        return None if cap.message_handler is not None else cap.output_schema

    # In this order: the scan refuses a result too deep or too large to check before
    # the schema check (compiled: ``OutputSchema``) sees it.
    return [
        SensitiveData(post, holder.tier_of),
        OutputSchema(post, schema_of, holder.memory.flag),
    ]


class Governance:
    """What a running node holds of governance and audit."""

    def __init__(self) -> None:
        self.policy: PolicyHolder | None = None
        self.audit_log: AuditLog | None = None
        self.approvals = ApprovalQueue()
        self.halts: Halts | None = None
        self._pipeline: Pipeline | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(
        self,
        cfg: NodeConfig,
        identity: Identity,
        pipeline: Pipeline,
        clock: Clock,
        registry: CapabilityRegistry,
    ) -> None:
        """Install the halts, load the policy (``PolicyError`` refuses the start),
        install the approval queue, open the audit log."""
        self._pipeline = pipeline
        stages = pipeline.stages
        self.halts = Halts(cfg.resolved_data_dir / HALTS_FILE)
        stages.govern.halts = stages.authenticate.halts = self.halts
        self.halts.listeners.append(self._halted)
        self.policy = holder = install_policy(cfg, pipeline, clock)
        self.escalation_settings()
        if holder is not None:
            holder.on_reload = self._reloaded
            stages.post_check.checks.extend(post_checks(holder, registry))
            self._message_filter()
        self.audit_log = open_audit_log(cfg, identity, pipeline)
        self._watch = start_watch(self.policy, cfg)

    def _halted(self, event: str, entry: HaltEntry) -> None:
        """A halt withdraws its subject's calls that wait for approval."""
        if event == "halted":
            why = f"{entry.subject} was halted by governance: {entry.reason}"
            self.approvals.withdraw(entry.subject, why)

    def _reloaded(self) -> None:
        self._message_filter()  # (first: what redacts comes before anything else)
        self.escalation_settings()

    def _message_filter(self) -> None:
        """The filtering point, installed while the policy redacts channel messages
        (``[post]`` with ``messages``); otherwise a message does not even ask it."""
        holder, pipeline = self.policy, self._pipeline
        if holder is None or pipeline is None:
            return
        post = holder.current.policy.post
        pipeline.stages.post_check.filter = (
            MessageFilter(post) if post is not None and post.messages else None
        )

    def escalation_settings(self) -> None:
        """The queue's bounds from the policy's ``[escalation]`` (defaults without a
        policy); a timeout of 0 refuses escalations at once (no queue)."""
        settings = self.policy.current.policy.escalation if self.policy else EscalationPolicy()
        queue = self.approvals
        queue.timeout = settings.timeout_seconds
        queue.max_pending = settings.max_pending
        queue.max_pending_per_principal = settings.max_pending_per_principal
        if self._pipeline is not None:
            waiting = settings.timeout_seconds > 0
            self._pipeline.stages.govern.approvals = queue if waiting else None

    async def stop(self, pipeline: Pipeline) -> None:
        """Stop the policy watch, then close the audit log -- whatever the first did."""
        try:
            await stop_watch(self._watch)
            if self.halts is not None:  # the halts written (off the loop) before it stops
                await asyncio.to_thread(self.halts.flush)
        finally:
            self._watch = None
            close_audit_log(self.audit_log, pipeline)
            self.audit_log = None


__all__ = ["HALTS_FILE", "Governance"]
