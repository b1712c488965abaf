"""Plain calls (``aral.v1.Call``): capability + JSON parameters, optionally for a peer.

One implementation for every door that takes them (gRPC ``Invoke``, REST
``/v1/invoke``): validation, trace id hygiene, the deadline, then the pipeline
here or a forward to the peer (itself admitted and judged by the pipeline).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext, clean_trace_id
from aralnode.core.errors import MalformedMessage
from aralnode.core.pipeline import Pipeline

Forward = Callable[[str, str, Any, "float | None", CallContext], Awaitable[Any]]


async def plain_call(
    call: pb.Call,
    ctx: CallContext,
    *,
    pipeline: Pipeline,
    forward: Forward,
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
    if call.trace_id:
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
