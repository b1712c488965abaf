"""Governance and audit for a node (issue 16): the policy file and its reload, the
audit log; started with the node, stopped after it stopped serving."""

from __future__ import annotations

import asyncio

from aralnode._audit import close_audit_log, open_audit_log
from aralnode._policy import install_policy, start_watch, stop_watch
from aralnode.config import NodeConfig
from aralnode.core.clock import Clock
from aralnode.core.identity import Identity
from aralnode.policy.holder import PolicyHolder
from aralnode.service.pipeline import Pipeline
from aralnode.store.audit import AuditLog


class Governance:
    """What a running node holds of governance and audit."""

    def __init__(self) -> None:
        self.policy: PolicyHolder | None = None
        self.audit_log: AuditLog | None = None
        self._watch: asyncio.Task[None] | None = None

    def start(self, cfg: NodeConfig, identity: Identity, pipeline: Pipeline, clock: Clock) -> None:
        """Load the policy (``PolicyError`` refuses the start), open the audit log."""
        self.policy = install_policy(cfg, pipeline, clock)
        self.audit_log = open_audit_log(cfg, identity, pipeline)
        self._watch = start_watch(self.policy, cfg)

    async def stop(self, pipeline: Pipeline) -> None:
        await stop_watch(self._watch)
        self._watch = None
        close_audit_log(self.audit_log, pipeline)
        self.audit_log = None


__all__ = ["Governance"]
