"""Plain calls (``aral.v1.Call``) and forwards: capability + JSON parameters, here or
on a peer.

One implementation for every door that takes them (gRPC ``Invoke``, REST
``/v1/invoke``, MCP peer tools): validation, trace id hygiene, the deadline, then the
pipeline here, or a forward to the peer, itself a call of this node's pipeline
(``Direction.SEND``, judged once, for the caller) sent as a delegation so the peer
grants the caller's rights and not this node's.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext, clean_trace_id
from aralnode.core.errors import MalformedMessage
from aralnode.core.governance import Direction
from aralnode.service.pipeline import Pipeline


class Send(Protocol):
    """Sends a request to a peer and returns its result (the node's channel, or a
    unary signed ``Invoke`` for a peer without channels). Not governed: the
    pipeline judged it already."""

    def __call__(
        self,
        peer: str,
        capability: str,
        params: Any,
        *,
        timeout: float | None,
        on_behalf_of: str,
        trace_id: str,
    ) -> Awaitable[Any]: ...


class Forwarder:
    """Runs a caller's call on peer ``to`` through this node's pipeline
    (``Direction.SEND``: admitted and judged here for that caller), then sends it
    as a delegation (``on_behalf_of``: the caller's principal).

    A call whose caller named no deadline gets ``default_timeout``: a peer that
    never answers must not hold the caller's slot (and the node's) forever.
    """

    __slots__ = ("default_timeout", "pipeline", "send")

    def __init__(self, pipeline: Pipeline, send: Send, *, default_timeout: float = 30.0) -> None:
        self.pipeline = pipeline
        self.send = send
        self.default_timeout = default_timeout

    async def __call__(
        self, to: str, capability: str, params: Any, timeout: float | None, ctx: CallContext
    ) -> Any:
        if timeout is None:
            timeout = self.default_timeout
            deadline = self.pipeline.clock.monotonic() + timeout
            if ctx.deadline is None or deadline < ctx.deadline:
                # Not enforced by any transport: the pipeline arms its own timer.
                ctx.deadline, ctx.deadline_enforced = deadline, False

        async def send(args: Any) -> Any:
            return await self.send(
                to,
                capability,
                args,
                timeout=timeout,
                on_behalf_of=ctx.principal,
                trace_id=ctx.trace_id,
            )

        return await self.pipeline.call(
            ctx, capability, params, send, direction=Direction.SEND, risk="unspecified", peer=to
        )


async def plain_call(
    call: pb.Call,
    ctx: CallContext,
    *,
    pipeline: Pipeline,
    forward: Forwarder,
    node_id: str,
    clock: Clock,
) -> pb.CallResult:
    """Run ``call`` for ``ctx``; the result as ``CallResult``.

    Raises:
        AralError: refusals and failures, from here, the pipeline or the peer.
    """
    if not call.capability:
        raise MalformedMessage("call.capability is required", reason="MISSING_FIELD")
    params = codec.from_struct(call.parameters) if call.HasField("parameters") else {}
    if call.trace_id or not ctx.trace_id:  # the call's own, else the door's (or a new one)
        ctx.trace_id = clean_trace_id(call.trace_id)
    if call.timeout_ms > 0:
        deadline = clock.monotonic() + call.timeout_ms / 1000
        if ctx.deadline is None or deadline < ctx.deadline:
            ctx.deadline, ctx.deadline_enforced = deadline, False
    if call.to and call.to != node_id:
        timeout = None if ctx.deadline is None else ctx.deadline - clock.monotonic()
        result = await forward(call.to, call.capability, params, timeout, ctx)
        executed_by = call.to
    else:
        result = await pipeline.invoke(ctx, call.capability, params)
        executed_by = node_id
    return pb.CallResult(
        result=codec.to_value(result),
        trace_id=ctx.trace_id,
        node_id=executed_by,
        decision=ctx.decision,
    )


__all__ = ["Forwarder", "Send", "plain_call"]
