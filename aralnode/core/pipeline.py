"""The one invocation pipeline every door runs.

    admission (concurrency limit) -> lookup -> authorize (scopes) -> governance (pre)
    -> handler (deadline) -> result

Doors (gRPC Invoke, the A2A channel, REST, MCP, in-process calls) build a
``CallContext`` and call ``Pipeline.invoke``; none of them calls a handler itself,
so a call refused on one door is refused on all. Anonymous callers are refused
here too when the node requires authentication. Server-streaming methods go
through ``Pipeline.stream``, built-in methods and forwards to peers through
``Pipeline.call`` (admission and governance before the first item), and
every governance verdict, wherever it was made, goes through ``Pipeline.judge`` so
listeners (the WebSocket event feed, audit) see them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from aralnode.core.capabilities import Capability, CapabilityRegistry, request_from
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext
from aralnode.core.errors import (
    AralError,
    DeadlineExceeded,
    HandlerFailed,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from aralnode.core.governance import Action, Direction, Evaluator, Verdict, enforce

log = logging.getLogger("aralnode.pipeline")

T = TypeVar("T")
VerdictListener = Callable[[CallContext | None, Action, Verdict], None]

ALL_SCOPES = "*"


def peer_scopes_of(
    node_id: str, everyone: frozenset[str], grants: Mapping[str, frozenset[str]]
) -> frozenset[str]:
    """The scopes of the verified node key ``node_id``: what every peer gets, and its
    own grant (``NodeConfig.peer_scopes`` and ``peer_grants``)."""
    grant = grants.get(node_id)
    return everyone | grant if grant else everyone


class Pipeline:
    """Runs capabilities under admission control, authorization and governance."""

    def __init__(
        self,
        registry: CapabilityRegistry,
        governance: Evaluator,
        clock: Clock,
        *,
        max_concurrent: int = 512,
        allow_anonymous: bool = True,
    ) -> None:
        self.registry = registry
        self.governance = governance
        self.clock = clock
        self.max_concurrent = max_concurrent
        self.allow_anonymous = allow_anonymous
        self.in_flight = 0
        self.counters: Counter[str] = Counter()
        self.verdict_listeners: list[VerdictListener] = []

    def judge(self, action: Action, ctx: CallContext | None = None) -> Verdict:
        """Evaluate governance for ``action`` and tell the listeners; does not enforce.

        Every governance decision of the node goes through here (the pipeline's own,
        and the A2A channel's send/receive checks).
        """
        verdict = self.governance.evaluate(action)
        if verdict.flagged:
            self.counters["governance.flagged"] += 1
        for listener in self.verdict_listeners:
            try:
                listener(ctx, action, verdict)
            except Exception:  # a listener must never decide a call's fate
                log.exception("governance verdict listener failed")
        return verdict

    def govern(self, action: Action, ctx: CallContext | None = None) -> Any:
        """Judge ``action`` (recording the decision and flags on ``ctx``, if any) and
        enforce it; the parameters to go on with (a nudge may have replaced them).

        Raises:
            GovernanceBlocked (and the other refusals ``enforce`` maps).
        """
        verdict = self.judge(action, ctx)
        if ctx is not None:
            ctx.decision = verdict.decision.label
            if verdict.flagged:
                ctx.flags.extend(verdict.rule_ids)
        enforce(verdict, action)
        return action.parameters if verdict.parameters is None else verdict.parameters

    def _admit(self, ctx: CallContext) -> None:
        if ctx.anonymous and not self.allow_anonymous:
            self.counters["invoke.unauthenticated"] += 1
            raise Unauthenticated(
                "this node does not serve anonymous callers", reason="ANONYMOUS_REFUSED"
            )
        if self.in_flight >= self.max_concurrent:
            self.counters["invoke.rejected"] += 1
            raise RateLimited(
                f"node is at its limit of {self.max_concurrent} concurrent calls",
                reason="CONCURRENCY_LIMIT",
                retry_after=0.05,
            )

    async def stream(
        self,
        ctx: CallContext,
        method_id: str,
        params: Any,
        start: Callable[[Any], AsyncIterator[T]],
        *,
        risk: str = "unspecified",
    ) -> AsyncIterator[T]:
        """Run a streaming method: admission and governance before the first item,
        the concurrency slot held until the stream ends. ``start(params)`` gets the
        parameters as governance left them (a nudge may have replaced them)."""
        self._admit(ctx)
        self.in_flight += 1
        try:
            ctx.capability = method_id
            action = Action(
                Direction.INVOKE, method_id, ctx.caller, ctx.door, risk, params, ctx.peer
            )
            async for item in start(self.govern(action, ctx)):
                yield item
            self.counters["stream.ok"] += 1
        except AralError as exc:
            self.counters[f"stream.{exc.code}"] += 1
            raise
        finally:
            self.in_flight -= 1

    def stream_message(
        self,
        ctx: CallContext,
        method_id: str,
        impl: Callable[[Message, CallContext], AsyncIterator[Message]],
        request: Message,
    ) -> AsyncIterator[Message]:
        """``stream`` for a protobuf server-streaming method, as every door runs it:
        governance judges the request as proto3 JSON; ``impl`` runs on ``request``, or
        on the request the parameters a nudge put in its place describe."""
        params = json_format.MessageToDict(request)

        def start(governed: Any) -> AsyncIterator[Message]:
            if governed is not params:
                return impl(request_from(type(request), governed, method_id), ctx)
            return impl(request, ctx)

        return self.stream(ctx, method_id, params, start)

    async def call(
        self,
        ctx: CallContext,
        action_id: str,
        params: Any,
        run: Callable[[Any], Awaitable[T]],
        *,
        direction: Direction = Direction.INVOKE,
        risk: str = "read_only",
        peer: str = "",
    ) -> T:
        """Run something that is not a registered capability under the same rules:
        the node's built-in methods (status, capabilities, peers) and calls this node
        forwards to a peer for a caller (``direction=SEND``). ``run(params)`` gets
        the parameters as governance left them."""
        self._admit(ctx)
        self.in_flight += 1
        try:
            ctx.capability = action_id
            action = Action(
                direction, action_id, ctx.caller, ctx.door, risk, params, peer or ctx.peer
            )
            return await run(self.govern(action, ctx))
        except AralError as exc:
            self.counters[f"call.{exc.code}"] += 1
            raise
        finally:
            self.in_flight -= 1

    async def invoke(self, ctx: CallContext, capability_id: str, params: Any) -> Any:
        """Run one capability for ``ctx``; its result. The governance decision and
        flags are left on ``ctx`` (``decision``, ``flags``).

        Raises:
            AralError: every refusal and failure, already mapped to a status.
        """
        self._admit(ctx)
        self.in_flight += 1
        try:
            return await self._run(ctx, capability_id, params)
        except AralError as exc:
            self.counters[f"invoke.{exc.code}"] += 1
            raise
        finally:
            self.in_flight -= 1

    async def _run(self, ctx: CallContext, capability_id: str, params: Any) -> Any:
        cap = self.registry.get(capability_id)
        ctx.capability = cap.id
        if cap.required_scopes and ALL_SCOPES not in ctx.scopes:
            missing = [s for s in cap.required_scopes if s not in ctx.scopes]
            if missing:
                raise PermissionDenied(
                    f"{cap.id} requires scope(s) {', '.join(missing)}",
                    reason="MISSING_SCOPE",
                    details={"missing_scopes": missing},
                )
        action = Action(Direction.INVOKE, cap.id, ctx.caller, ctx.door, cap.risk, params, ctx.peer)
        value = await self._call(cap, self.govern(action, ctx), ctx)
        self.counters["invoke.ok"] += 1
        return value

    async def _call(self, cap: Capability, params: Any, ctx: CallContext) -> Any:
        try:
            if ctx.deadline is None or ctx.deadline_enforced:
                return await cap.handler(params, ctx)
            remaining = ctx.deadline - self.clock.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline passed before {cap.id} started")
            try:
                async with asyncio.timeout(remaining):
                    return await cap.handler(params, ctx)
            except TimeoutError:
                raise DeadlineExceeded(f"{cap.id} did not finish before the deadline") from None
        except AralError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("capability %s failed (trace %s)", cap.id, ctx.trace_id)
            raise HandlerFailed(
                f"capability {cap.id} failed: {type(exc).__name__}",
                details={"capability": cap.id, "trace_id": ctx.trace_id},
            ) from exc
