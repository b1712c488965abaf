"""The one pipeline every call runs, whatever door it came through.

::

    authenticate -> authorize -> rate-limit -> govern (pre) -> handler -> post-check -> audit

Doors build a ``CallContext`` (``ContextBuilder``) and hand the call here; none of
them calls a handler itself, so a call refused on one door is refused on all. The
kinds of call differ only in their handler:

- ``invoke``: a registered capability with JSON parameters (gRPC ``Invoke``, REST
  ``/v1/invoke``, MCP tools, WebSocket ``invoke``, A2A channel requests, in-process): a
  protobuf method's parsed into its request first, a function's judged as its handler
  will take them (one form, whatever the caller spelt);
- ``invoke_message``: a capability that is a method of a user's protobuf service,
  with the request message as parsed from the wire and the response message as the
  method made it (no JSON between them; governance gets a JSON view of the request
  only if a rule reads it);
- ``call``: anything else run for a caller under the same rules: the node's
  built-in methods, a call forwarded to a peer (``Direction.SEND``), request streams;
- ``stream``: a server stream: every stage before the first item, the slot held
  until it ends, each item post-checked;
- ``judge_message``: a message (a notification received or sent): the same stages
  with no concurrency slot (the channel's credit and outbox bound those).

The stages themselves are in ``aralnode.service.stages``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass as message_class

from aralnode._logs import get_logger
from aralnode.core import codec
from aralnode.core.audit import Point, params_digest
from aralnode.core.capabilities import (
    Capability,
    CapabilityRegistry,
    Handler,
    request_from,
    servicer_stream,
)
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext
from aralnode.core.errors import (
    AralError,
    Cancelled,
    DeadlineExceeded,
    HandlerFailed,
    InternalError,
)
from aralnode.core.governance import (
    Action,
    Decision,
    Direction,
    Escalation,
    Evaluator,
    Verdict,
    enforce,
)
from aralnode.service.auth import INVOKE_SCOPES
from aralnode.service.recheck import StreamWatch
from aralnode.service.stages import Stages, VerdictListener
from aralnode.service.values import json_params, json_result

log = get_logger("aralnode.pipeline")

T = TypeVar("T")
OK = Decision.OK.label
_NO_SCOPES: tuple[str, ...] = ()
_INVOKE = Direction.INVOKE
_PRE, _POST = Point.PRE.value, Point.POST.value
MessageStream = Callable[[Message, CallContext], AsyncIterator[Message]]


@dataclass(slots=True)  # not frozen, though never changed: a frozen one costs every call 0.5 µs
class Target:
    """What a call acts on, as the stages see it (read only).

    Attributes:
        id: The capability, built-in method or event (governance's action id).
        kind: "invoke", "call", "stream" or "message": the counters' prefix.
        parsed: A protobuf method's: its JSON parameters become its request message,
            whose depth the protobuf parser bounds (not a ``Value``'s).
        governed: A function's: its parameters as governance judges them (as its
            handler will take them, ``Capability.governed``).
    """

    id: str
    direction: Direction = _INVOKE
    risk: str = "unspecified"
    scopes: Sequence[str] = _NO_SCOPES
    peer: str = ""
    kind: str = "call"
    parsed: bool = False
    governed: Callable[[Any], Any] | None = None

    @property
    def ok_key(self) -> str:  # the counter of this kind's successes
        return _OK_KEYS.get(self.kind) or f"{self.kind}.ok"


_OK_KEYS = {kind: f"{kind}.ok" for kind in ("invoke", "call", "stream", "message")}


class Pipeline:
    """Runs every kind of call through the stages (see the module docstring).

    Attributes:
        max_result_bytes: The most a JSON result may take (about; 0: no bound): a
            larger one is refused (``RESPONSE_TOO_LARGE``) before any door encodes it.
    """

    max_result_bytes = 0

    def __init__(self, registry: CapabilityRegistry, stages: Stages, clock: Clock) -> None:
        self.registry = registry
        self.stages = stages
        self.clock = clock
        # A capability's target and handler, found once (dropped when the registry
        # changes): one dict lookup per call.
        self._served: dict[str, tuple[Target, Capability]] = {}
        registry.on_change(self._served.clear)

    def _find(self, capability_id: str) -> tuple[Target, Capability]:
        """The registered capability and its target (``NotFound`` if none)."""
        cap = self.registry.get(capability_id)
        # A capability that names no scope of its own needs agent:invoke.
        scopes = cap.required_scopes or INVOKE_SCOPES
        target = Target(
            cap.id, _INVOKE, cap.risk, scopes, "", "invoke", cap.method is not None, cap.governed
        )
        self._served[capability_id] = served = (target, cap)
        return served

    # -- what the stages hold -------------------------------------------------------

    @property
    def counters(self) -> Counter[str]:
        return self.stages.counters

    @property
    def governance(self) -> Evaluator:
        """The evaluator of the govern stage."""
        return self.stages.govern.evaluator

    @governance.setter
    def governance(self, evaluator: Evaluator) -> None:
        self.stages.govern.evaluator = evaluator

    @property
    def verdict_listeners(self) -> list[VerdictListener]:
        """Called with every verdict (they watch; they never decide)."""
        return self.stages.govern.listeners

    @property
    def in_flight(self) -> int:
        return self.stages.rate_limit.in_flight

    @property
    def max_concurrent(self) -> int:
        return self.stages.rate_limit.max_concurrent

    def judge(self, action: Action, ctx: CallContext | None = None) -> Verdict:
        """The verdict on ``action``, told to the listeners; not enforced."""
        return self.stages.govern.judge(action, ctx)

    # -- capabilities ---------------------------------------------------------------

    def invoke(self, ctx: CallContext, capability_id: str, params: Any) -> Awaitable[Any]:
        """Run a capability with JSON parameters for ``ctx``; its JSON result. The
        governance decision and flags are left on ``ctx`` (``decision``, ``flags``).

        Await it where it is called: a refusal before the handler is raised by the
        call itself (one coroutine less on the hottest path).

        Raises:
            AralError: every refusal and failure, already mapped to a status.
        """
        served = self._served.get(capability_id)
        try:
            self.stages.authenticate(ctx)
            if served is None:
                served = self._find(capability_id)
        except AralError as exc:
            self._ended(ctx, Target(capability_id, kind="invoke"), exc)
            raise
        target, cap = served
        if target.parsed:
            return self._run_parsed(ctx, target, cap, params)
        return self._run(ctx, target, cap.handler, params, None)

    async def _run_parsed(self, ctx: CallContext, target: Target, cap: Capability, p: Any) -> Any:
        """A protobuf method called with JSON parameters ``p``, parsed into its
        request message first: governance, the audit and the handler all have it
        (module docstring); its response as JSON."""
        method = cap.method_handler()
        assert cap.method is not None
        request_class = message_class(cap.method.input_type)

        async def handler(message: Message, call_ctx: CallContext) -> Any:
            result = codec.message_json(await method(message, call_ctx))
            json_result(result, target.id, self.max_result_bytes)
            return result

        return await self._run(
            ctx, target, handler, p, None, parse=lambda v: request_from(request_class, v, target.id)
        )

    async def invoke_message(self, ctx: CallContext, capability_id: str, request: Message) -> Any:
        """Run a protobuf method's capability on ``request`` (parsed from the wire);
        the response message as the method returned it.

        Raises:
            AralError: as ``invoke``; ``InvalidRequest`` for a capability that is not
                a protobuf method.
        """
        served = self._served.get(capability_id)
        try:
            self.stages.authenticate(ctx)
            target, cap = served or self._find(capability_id)
            method = cap.method_handler()
        except AralError as exc:
            self._ended(ctx, Target(capability_id, kind="invoke"), exc)
            raise
        return await self._run(ctx, target, method, request, request)

    # -- everything else ------------------------------------------------------------

    async def call(
        self,
        ctx: CallContext,
        action_id: str,
        params: Any,
        run: Callable[[Any], Awaitable[T]],
        *,
        direction: Direction = _INVOKE,
        risk: str = "read_only",
        peer: str = "",
        scopes: Sequence[str] = _NO_SCOPES,
    ) -> T:
        """Run what is not a registered capability under the same stages: the node's
        built-in methods, a call forwarded to a peer for a caller (``SEND``), a
        request stream. ``run(params)`` gets the parameters as governance left them.
        """
        target = Target(action_id, direction, risk, scopes, peer, "call")
        try:
            self.stages.authenticate(ctx)
        except AralError as exc:
            self._ended(ctx, target, exc)
            raise

        async def handler(value: Any, _: CallContext) -> T:
            return await run(value)

        result: T = await self._run(ctx, target, handler, params, None)
        return result

    async def stream(
        self,
        ctx: CallContext,
        method_id: str,
        params: Any,
        start: Callable[[Any], AsyncIterator[T]],
        *,
        risk: str = "unspecified",
        message: Message | None = None,
        scopes: Sequence[str] = _NO_SCOPES,
    ) -> AsyncGenerator[T, None]:
        """Run a streaming method: every stage before the first item, the slot held
        until the stream ends, each item post-checked, the outcome audited at the
        end. ``start`` gets the parameters as governance left them (with
        ``message``: the request message, rebuilt if a nudge replaced it)."""
        st = self.stages
        target = Target(method_id, _INVOKE, risk, scopes, "", "stream")
        watch = StreamWatch(st.authenticate, ctx, self.clock)  # (authenticated now)
        try:
            st.authenticate(ctx)
            st.authorize(ctx, scopes, method_id)
            slot = st.rate_limit.enter(ctx)
        except AralError as exc:
            self._ended(ctx, target, exc)
            raise
        try:
            ctx.capability = method_id
            action = Action(
                _INVOKE, method_id, ctx.caller, ctx.door, risk, params, ctx.peer, chain=ctx.chain,
                principal=ctx.principal, kind=ctx.kind, roles=ctx.roles,
            )  # fmt: skip
            if message is not None:
                action.message = message
            verdict = st.govern(ctx, action, can_wait=True)
            if verdict.decision is Decision.ESCALATE:
                await self._approved(ctx, action, verdict)
            value = self._governed(verdict.parameters, params, message, method_id)
            if st.audit.log is not None:  # no item leaves before the stream is on record
                self._begin(ctx, params, message)
                await st.audit.durable(st.audit(ctx, method_id, _INVOKE, ctx.peer, None, _PRE))
            checked = self._checked
            async for item in start(value):
                watch()  # a halt, or credentials that no longer hold, end it
                yield await checked(ctx, action, item) if st.post_check.checks else item
        except AralError as exc:
            self._ended(ctx, target, exc)
            raise
        except (GeneratorExit, asyncio.CancelledError):
            self._quietly_ended(ctx, target)
            raise
        except Exception as exc:  # the servicer's own failure: INTERNAL, recorded
            failure = self._failed(ctx, method_id, exc)
            self._ended(ctx, target, failure)
            raise failure from exc
        finally:
            st.rate_limit.leave(slot)
        ticket = self._ended(ctx, target, None)
        if ticket:
            await st.audit.durable(ticket)

    def stream_message(
        self, ctx: CallContext, method_id: str, impl: MessageStream, request: Message,
        *, scopes: Sequence[str] = _NO_SCOPES,
    ) -> AsyncGenerator[Message, None]:  # fmt: skip
        """``stream`` for a protobuf server-streaming method, as every door runs it:
        ``impl`` runs on ``request``, or on the request a nudge's parameters describe,
        and ends as the status it sets says (``servicer_stream``)."""
        run = servicer_stream(impl)
        return self.stream(
            ctx, method_id, None, lambda value: run(value, ctx), message=request, scopes=scopes
        )

    def judge_message(
        self,
        ctx: CallContext,
        action_id: str,
        params: Any,
        *,
        direction: Direction,
        peer: str = "",
    ) -> Any:
        """The stages a message goes through (a notification a peer sent us, one the
        program sends): authenticate, authorize, rate limit (a token, no concurrency
        slot), govern, the filter (post-check's), audit. The data to go on with (a
        nudge may have replaced it, the filter redacted it).

        Raises:
            AralError: a refusal (``GovernanceBlocked`` and the others).
        """
        st = self.stages
        target = Target(action_id, direction, "unspecified", _NO_SCOPES, peer, "message")
        try:
            st.authenticate(ctx)
            st.authorize(ctx, _NO_SCOPES, action_id)
            st.rate_limit.admit(ctx)  # a peer's notifications count against its rate
            action = Action(
                direction, action_id, ctx.caller, ctx.door, "unspecified", params, peer,
                chain=ctx.chain, principal=ctx.principal, kind=ctx.kind, roles=ctx.roles,
            )  # fmt: skip
            nudged = st.govern(ctx, action).parameters  # (an escalation cannot wait here)
            data = params if nudged is None else nudged
            if (sift := st.post_check.filter) is not None:
                data = sift(ctx, action, data)
        except AralError as exc:
            self._ended(ctx, target, exc)
            raise
        self._ended(ctx, target, None)
        return data

    # -- the stages, in order -------------------------------------------------------

    async def _run(
        self, ctx: CallContext, target: Target, handler: Handler, value: Any,
        message: Message | None, *, parse: Callable[[Any], Message] | None = None,
    ) -> Any:  # fmt: skip
        """authorize -> rate-limit -> (``parse``) -> govern -> handler -> post-check ->
        audit, for a caller already authenticated (its target's scopes needed that)."""
        st = self.stages
        target_id = target.id
        try:
            if message is None:
                json_params(value, target_id, parsed=target.parsed)
            st.authorize(ctx, target.scopes, target_id)
            slot = st.rate_limit.enter(ctx)
        except AralError as exc:
            self._ended(ctx, target, exc, _PRE)
            raise
        point = _PRE
        try:
            ctx.capability = target_id
            checks = st.post_check.checks
            if parse is not None:  # (JSON for a protobuf method: its message from here)
                value = message = parse(value)
            if st.audit.active:
                self._begin(ctx, value, message)
            action, value = await self._judged(ctx, target, value, message)
            point = _POST
            try:
                if ctx.deadline is None or ctx.deadline_enforced:
                    result = await handler(value, ctx)
                else:
                    result = await self._timed(ctx, target_id, handler, value)
            except AralError as exc:
                self._log_servicer_cause(ctx, target_id, exc)
                raise
            except Exception as exc:  # (a CancelledError is no Exception: it goes on)
                raise self._failed(ctx, target_id, exc) from exc
            if action is not None and checks:
                result = await self._checked(ctx, action, result)
            if message is None:
                json_result(result, target_id, self.max_result_bytes)
        except AralError as exc:
            self._ended(ctx, target, exc, point)
            raise
        except asyncio.CancelledError:
            self._quietly_ended(ctx, target)
            raise
        finally:
            st.rate_limit.leave(slot)
        ticket = self._ended(ctx, target, None)
        if ticket:  # no result leaves before its record is committed
            await st.audit.durable(ticket)
        return result

    async def _judged(
        self, ctx: CallContext, target: Target, value: Any, message: Message | None
    ) -> tuple[Action | None, Any]:
        """The govern stage: the action judged (``None`` when nothing judges or
        checks, and the verdict is ok without one) and what the handler gets; an
        escalation waits here for its approver."""
        st = self.stages
        govern = st.govern
        if govern.active or st.post_check.checks:
            judged = value
            if message is None and target.governed is not None and govern.active:
                judged = target.governed(value)  # as the handler will take them
            action = Action(
                target.direction, target.id, ctx.caller, ctx.door, target.risk,
                None if message is not None else judged, target.peer or ctx.peer,
                message=message, chain=ctx.chain, principal=ctx.principal, kind=ctx.kind,
                roles=ctx.roles,
            )  # fmt: skip
            verdict = govern(ctx, action, can_wait=True)
            if verdict.decision is Decision.ESCALATE:
                await self._approved(ctx, action, verdict)
            return action, self._governed(verdict.parameters, value, message, target.id)
        ctx.decision = OK  # no rule and nobody watching: ok, with no Action made
        return None, value if message is None else message

    async def _approved(self, ctx: CallContext, action: Action, verdict: Verdict) -> None:
        """Wait in the approval queue (there is one: govern returned); refused unless approved."""
        queue = self.stages.govern.approvals
        assert queue is not None
        self.stages.counters["governance.escalated"] += 1
        entry = await queue.wait(ctx, action, verdict)
        by = entry.decided_by  # (the record names the approval and its approver)
        ctx.flags += ("escalation.approved", f"approval:{entry.id}", f"approved_by:{by}")
        if halts := self.stages.authenticate.halts:  # halted while it waited: it never runs
            halts.check(ctx)

    async def _checked(self, ctx: CallContext, action: Action, result: Any) -> Any:
        """The post-check stage on a result. Checks see JSON on every door: a
        protobuf result as its proto3 JSON view, and what a check changed in that
        view goes back into a message of the same type. A check that escalates
        holds the result until an approver decides (refused without a queue)."""
        try:
            return self._checked_now(ctx, action, result)
        except Escalation as held:
            queue = self.stages.govern.approvals
            ctx.decision = Decision.ESCALATE.label
            ctx.rules = (*ctx.rules, *held.verdict.rule_ids)
            if queue is None:
                enforce(held.verdict, action)
            await self._approved(ctx, action, held.verdict)
            checked = held.result
            if isinstance(result, Message) and not isinstance(checked, Message):
                return request_from(type(result), checked, action.capability)
            return checked

    def _checked_now(self, ctx: CallContext, action: Action, result: Any) -> Any:
        post_check = self.stages.post_check
        if not isinstance(result, Message):
            return post_check(ctx, action, result)
        view = codec.message_json(result)
        checked = post_check(ctx, action, view)
        if checked is view:
            return result
        try:
            return request_from(type(result), checked, action.capability)
        except AralError as exc:
            raise InternalError(
                f"a response check made the result of {action.capability} something "
                f"that is not a {result.DESCRIPTOR.full_name}",
                reason="POST_CHECK_FAILED",
            ) from exc

    def authenticate(self, ctx: CallContext, action_id: str) -> None:
        """Run the first stage alone, for a door that must know who calls before it
        reads the request (a refusal is counted and audited as any stage's is)."""
        try:
            self.stages.authenticate(ctx)
        except AralError as exc:
            self._ended(ctx, Target(action_id), exc)
            raise

    @staticmethod
    def _governed(nudged: Any, value: Any, message: Message | None, target: str) -> Any:
        """What the handler gets: the request (``message``, else ``value``), or what
        a nudge put in its place."""
        if nudged is None:
            return value if message is None else message
        if message is not None:
            return request_from(type(message), nudged, target)
        return nudged

    async def _timed(self, ctx: CallContext, target: str, handler: Handler, value: Any) -> Any:
        """The handler under a deadline the transport does not enforce itself."""
        assert ctx.deadline is not None
        remaining = ctx.deadline - self.clock.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"deadline passed before {target} started")
        try:
            async with asyncio.timeout(remaining):
                return await handler(value, ctx)
        except TimeoutError:
            raise DeadlineExceeded(f"{target} did not finish before the deadline") from None

    @staticmethod
    def _log_servicer_cause(ctx: CallContext, target: str, exc: AralError) -> None:
        """A servicer that set a status and then raised ends with that status, as
        under grpc.aio; its exception is still a failure of its own, logged as
        grpc.aio logs it (and as ``_failed`` logs one without a status)."""
        cause = exc.__cause__
        if ctx.status_code is not None and cause is not None and not isinstance(cause, AralError):
            log.error("%s failed after setting its status (trace %s)", target, ctx.trace_id,
                      exc_info=cause)  # fmt: skip

    @staticmethod
    def _failed(ctx: CallContext, target: str, exc: Exception) -> HandlerFailed:
        """What a handler's own exception (not an ``AralError``) becomes: logged here,
        ``INTERNAL`` to the caller, with no detail of ours."""
        log.error("%s failed (trace %s)", target, ctx.trace_id, exc_info=exc)
        return HandlerFailed(
            f"capability {target} failed: {type(exc).__name__}",
            details={"capability": target, "trace_id": ctx.trace_id},
        )

    def _ended(
        self, ctx: CallContext, target: Target, error: AralError | None, point: str = _POST
    ) -> int:
        """Count the outcome and audit it, an error redacted first (``PostCheck.scrub``: the
        caller raises it, every door sends it); the log's ticket for the record (0: none), which
        a success waits on. An audit failure turns a success into its error; a refusal stands."""
        stages = self.stages
        audit = stages.audit
        if error is None:
            stages.counters[_OK_KEYS.get(target.kind) or target.ok_key] += 1
            if ctx.trailers:  # a servicer's own trailers leave as its answer does
                peer = target.peer or ctx.peer
                stages.post_check.scrub(ctx, None, target.direction, target.id, peer)
            if audit.log is not None or audit.sinks:
                now = self.clock.monotonic() if ctx.started else 0.0
                return audit(
                    ctx, target.id, target.direction, target.peer or ctx.peer, None, point, now
                )
            return 0
        stages.counters[f"{target.kind}.{error.code}"] += 1
        stages.post_check.scrub(ctx, error, target.direction, target.id, target.peer or ctx.peer)
        with contextlib.suppress(AralError):
            now = self.clock.monotonic() if ctx.started else 0.0
            audit(ctx, target.id, target.direction, target.peer or ctx.peer, error, point, now)
        return 0

    def _begin(self, ctx: CallContext, value: Any, message: Message | None) -> None:
        """Note when the call started (its record's duration, the metrics' latency)
        and, with a log, its parameters' digest (a digest costs). Raises the log's
        error if it cannot keep records (no run)."""
        ctx.started = self.clock.monotonic()
        if (audit_log := self.stages.audit.log) is not None:
            if (failed := audit_log.failed) is not None:
                raise failed
            ctx.params_digest = params_digest(None if message is not None else value, message)

    ended = _ended  # for the other injection points (service/connections.py)

    def _quietly_ended(self, ctx: CallContext, target: Target) -> None:
        """A call cancelled (its caller went away) or a stream closed early."""
        try:
            self._ended(ctx, target, Cancelled("the call was cancelled"))
        except Exception:  # never let bookkeeping replace a cancellation
            log.exception("recording the end of %s failed", target.id)


__all__ = ["Pipeline", "Target"]
