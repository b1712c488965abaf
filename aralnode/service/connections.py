"""The connection injection point (ACGP-1008 §6): a verified peer's handshake is
judged before anything of it is kept, and audited either way."""

from __future__ import annotations

from aralnode.core.audit import Point
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, PermissionDenied
from aralnode.core.governance import Action, Decision, Direction
from aralnode.service.pipeline import Pipeline, Target


def admit_peer(pipeline: Pipeline, node_id: str, address: str) -> None:
    """Judge the handshake of verified peer ``node_id`` (from ``address``). A halted
    peer, or one the policy does not admit (a ``connect`` rule deciding anything
    above nudge: a handshake cannot wait for an approver), is refused; the decision
    is audited either way.

    Raises:
        PermissionDenied: ``HALTED`` or ``CONNECTION_REFUSED_BY_POLICY``.
    """
    st = pipeline.stages
    ctx = CallContext(door="grpc", caller=node_id, peer=address, kind="node")
    target = Target("connect", Direction.CONNECT, kind="connect")
    try:
        halts = st.govern.halts
        if halts and halts.is_halted(node_id):
            raise PermissionDenied(f"peer {node_id} is halted by governance", reason="HALTED")
        if st.govern.active:
            action = Action(
                Direction.CONNECT, "connect", node_id, "grpc", "unspecified", {}, node_id,
                principal=node_id, kind="node",
            )  # fmt: skip
            verdict = st.govern.judge(action, ctx)
            ctx.decision, ctx.rules = verdict.decision.label, verdict.rule_ids
            if verdict.decision > Decision.NUDGE:
                raise PermissionDenied(
                    f"peer {node_id} is not admitted by policy: "
                    + ("; ".join(verdict.reasons) or "policy"),
                    reason="CONNECTION_REFUSED_BY_POLICY",
                    details={"rules": list(verdict.rule_ids)},
                )
    except AralError as exc:
        pipeline.ended(ctx, target, exc, Point.CONNECT.value)
        raise
    if st.audit.log is not None or st.audit.sinks:
        pipeline.ended(ctx, target, None, Point.CONNECT.value)


__all__ = ["admit_peer"]
