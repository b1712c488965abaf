"""The node's audit log, built from ``NodeConfig`` (issue 16): opened when the node
starts, installed in the pipeline's audit stage, closed (flushed and its head
signed) when the node has stopped serving."""

from __future__ import annotations

import asyncio

from aralnode.config import NodeConfig
from aralnode.core.identity import Identity
from aralnode.service.auditing import DurableLog
from aralnode.service.pipeline import Pipeline
from aralnode.store.audit import AuditLog


def open_audit_log(cfg: NodeConfig, identity: Identity, pipeline: Pipeline) -> AuditLog | None:
    """The node's log (``None`` when the config keeps none), open and installed."""
    if not cfg.audit_enabled:
        return None
    audit_log = AuditLog(
        cfg.audit_dir or cfg.resolved_data_dir / "audit",
        identity,
        sign_every=cfg.audit_sign_every,
        sign_seconds=cfg.audit_sign_seconds,
        max_pending=cfg.audit_max_pending,
        rotate_bytes=cfg.audit_rotate_bytes,
    )
    audit_log.open()
    pipeline.stages.audit.log = DurableLog(audit_log, asyncio.get_running_loop())
    return audit_log


def close_audit_log(audit_log: AuditLog | None, pipeline: Pipeline) -> None:
    """Stop recording: what is pending is written and the head signed."""
    if audit_log is None:
        return
    # The closed log stays installed: a call still running (or made after the stop,
    # in-process) is refused for want of a record, never answered without one.
    installed = pipeline.stages.audit.log
    if isinstance(installed, DurableLog):
        installed.stop()
    audit_log.close()


__all__ = ["close_audit_log", "open_audit_log"]
