"""Plain calls (``aral.v1.Call``) and forwards: capability + JSON parameters, here or
on a peer.

One implementation for every door that takes them (gRPC ``Invoke``, REST
``/v1/invoke``, MCP peer tools): validation, trace id hygiene, the deadline, then the
pipeline here, or a forward to the peer, itself a call of this node's pipeline
(``Direction.SEND``, judged once, for the caller) sent as a delegation: a signed
statement (``aralnode.core.delegation``) of whom it acts for, with the scopes this
node granted that caller and the chain the call came through, never the caller's
token. The peer grants the intersection of that and what it grants this node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.clock import Clock
from aralnode.core.context import ANONYMOUS, CallContext, clean_trace_id
from aralnode.core.delegation import make_statement
from aralnode.core.errors import AralError, MalformedMessage
from aralnode.core.governance import Direction
from aralnode.service.auth import INVOKE_SCOPES
from aralnode.service.pipeline import Pipeline
from aralnode.service.refusals import refused_as_caller

#: The action a plain call is refused as before the pipeline judges it (AgentNode's).
INVOKE_ACTION = f"{pb.AGENT_NODE_SERVICE_NAME}/Invoke"


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
        delegation: pb.Delegation | None = None,
    ) -> Awaitable[Any]: ...


class Forwarder:
    """Runs a caller's call on peer ``to`` through this node's pipeline
    (``Direction.SEND``: admitted and judged here for that caller, who needs
    ``agent:invoke``), then sends it as a delegation: a signed statement of the
    caller's principal, its scopes here and the chain (see the module docstring).
    The node's own calls (its program's) go as the node itself, with no statement.

    A call whose caller named no deadline gets ``default_timeout``: a peer that
    never answers must not hold the caller's slot (and the node's) forever.
    """

    __slots__ = ("_node_id", "default_timeout", "pipeline", "send")

    def __init__(
        self,
        pipeline: Pipeline,
        send: Send,
        *,
        default_timeout: float = 30.0,
        node_id: str | Callable[[], str] = "",
    ) -> None:
        """``node_id``: this node's (the statements' signer; may be given late)."""
        self.pipeline = pipeline
        self.send = send
        self.default_timeout = default_timeout
        self._node_id = node_id

    @property
    def node_id(self) -> str:
        node_id = self._node_id
        return node_id if isinstance(node_id, str) else node_id()

    def statement(self, ctx: CallContext, timeout: float) -> pb.Delegation | None:
        """The delegation statement for ``ctx``'s call, valid while the call may
        run (``None``: the node's own call, which needs none)."""
        principal, node_id = ctx.principal, self.node_id
        credentials = ctx.credentials
        # The node's own call (its program, in process), not a caller that merely
        # bears the node's id as its name (a JWT's sub, an API key's principal).
        if credentials is not None and credentials.local and not ctx.on_behalf_of:
            return None
        came = ctx.credentials.delegation if ctx.credentials is not None else None
        if principal == ANONYMOUS:
            kind = "anonymous"
        elif came is not None:
            kind = came.kind
        else:
            kind = ctx.kind or "user"
        return make_statement(
            principal=principal,
            kind=kind,
            scopes=ctx.scopes,
            chain=ctx.chain,
            signer=node_id,
            now_ms=self.pipeline.clock.now_ms(),
            ttl_ms=max(1, int(timeout * 1000)),
        )

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
            # Made after the stages ran: the caller's scopes are known by then.
            statement = self.statement(ctx, timeout)
            return await self.send(
                to,
                capability,
                args,
                timeout=timeout,
                on_behalf_of="" if statement is None else statement.principal,
                trace_id=ctx.trace_id,
                delegation=statement,
            )

        return await self.pipeline.call(
            ctx, capability, params, send, direction=Direction.SEND, risk="unspecified", peer=to,
            scopes=INVOKE_SCOPES,
        )  # fmt: skip


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
    try:  # refused before the pipeline: on record, its caller known
        if not call.capability:
            raise MalformedMessage("call.capability is required", reason="MISSING_FIELD")
        params = codec.from_struct(call.parameters) if call.HasField("parameters") else {}
    except AralError as exc:
        raise refused_as_caller(pipeline, ctx, INVOKE_ACTION, exc) from None
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


__all__ = ["INVOKE_ACTION", "Forwarder", "Send", "plain_call"]
