"""The node's administrative methods (scope ``agent:admin``): the approval queue of
escalated calls and the halts (issue 16). Served like every built-in method, on
every door that serves ``aral.v1.AgentNode`` (gRPC, REST ``/v1/approvals``,
``/v1/halts``), through the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from aralnode import _proto as pb
from aralnode.core.context import CallContext
from aralnode.core.errors import FailedPrecondition, InvalidRequest, NotFound
from aralnode.service.approvals import Approval, ApprovalQueue
from aralnode.service.auth import AGENT_ADMIN
from aralnode.service.halts import HaltEntry, Halts
from aralnode.service.pipeline import Pipeline

M = TypeVar("M", bound=Message)
ADMIN_SCOPES = (AGENT_ADMIN,)


def approval_proto(entry: Approval) -> pb.Approval:
    data = entry.as_dict()
    return pb.Approval(**data)


def halt_proto(entry: HaltEntry) -> pb.Halt:
    return pb.Halt(
        subject=entry.subject, kind=entry.kind, reason=entry.reason, rules=list(entry.rules),
        since_ms=entry.since_ms, trace_id=entry.trace_id,
    )  # fmt: skip


class AdminMethods:
    """Mixed into ``NodeService`` (which has ``pipeline``)."""

    pipeline: Pipeline

    async def _admin(self, ctx: CallContext, name: str, answer: Callable[[], M]) -> M:
        async def run(_: Any) -> M:
            return answer()

        return await self.pipeline.call(
            ctx, f"{pb.AGENT_NODE_SERVICE_NAME}/{name}", None, run, scopes=ADMIN_SCOPES
        )

    def _queue(self) -> ApprovalQueue:
        queue = self.pipeline.stages.govern.approvals
        if queue is None:
            raise FailedPrecondition(
                "this node refuses escalations at once (no approval queue)",
                reason="NO_APPROVAL_QUEUE",
            )
        return queue

    def _halts(self) -> Halts:
        halts = self.pipeline.stages.govern.halts
        if halts is None:
            raise FailedPrecondition("this node keeps no halts", reason="NO_HALTS")
        return halts

    async def list_approvals(
        self, request: pb.ListApprovalsRequest, ctx: CallContext
    ) -> pb.ListApprovalsResponse:
        return await self._admin(
            ctx, "ListApprovals",
            lambda: pb.ListApprovalsResponse(
                approvals=[approval_proto(e) for e in self._queue().pending()]
            ),
        )  # fmt: skip

    async def approve(self, request: pb.DecideRequest, ctx: CallContext) -> pb.Approval:
        return await self._admin(ctx, "Approve", lambda: self._decide(request, ctx, approve=True))

    async def deny(self, request: pb.DecideRequest, ctx: CallContext) -> pb.Approval:
        return await self._admin(ctx, "Deny", lambda: self._decide(request, ctx, approve=False))

    def _decide(self, request: pb.DecideRequest, ctx: CallContext, *, approve: bool) -> pb.Approval:
        if not request.id:
            raise InvalidRequest("an approval's id is needed", reason="MISSING_FIELD")
        queue = self._queue()
        decide = queue.approve if approve else queue.deny
        return approval_proto(decide(request.id, ctx.principal, request.note, via=ctx.caller))

    async def list_halts(
        self, request: pb.ListHaltsRequest, ctx: CallContext
    ) -> pb.ListHaltsResponse:
        return await self._admin(
            ctx, "ListHalts",
            lambda: pb.ListHaltsResponse(halts=[halt_proto(e) for e in self._halts().entries()]),
        )  # fmt: skip

    async def clear_halt(
        self, request: pb.ClearHaltRequest, ctx: CallContext
    ) -> pb.ClearHaltResponse:
        def answer() -> pb.ClearHaltResponse:
            if not self._halts().clear(request.subject, ctx.principal):
                raise NotFound(f"{request.subject!r} is not halted", reason="HALT_NOT_FOUND")
            return pb.ClearHaltResponse(cleared=True)

        return await self._admin(ctx, "ClearHalt", answer)


__all__ = ["ADMIN_SCOPES", "AdminMethods", "approval_proto", "halt_proto"]
