"""OpenTelemetry spans for every call, and W3C Trace Context across the mesh.

``TracedPipeline`` is the node's pipeline with one server span around each call,
whatever door it came through (the doors all hand their calls to the pipeline, so
no door makes spans of its own). The span is named after the capability or method
and says the door, the caller's kind, the governance decision and the outcome; the
govern stage, the handler and the post-check get child spans when the span is
recorded (a call the sampler dropped makes none).

The call's ``trace_id`` becomes the W3C trace id when tracing is on or a
``traceparent`` came in, so the audit record, the error body, ``X-Trace-Id``, the
log lines (``aralnode._logs.TRACE_ID``, set for the call's duration) and the spans
all name one trace. A ``traceparent`` comes from the door's metadata (gRPC
metadata, HTTP headers), from ``CallContext.traceparent`` (an ARAL message's
header, MCP ``params._meta``); a malformed one is ignored (a fresh trace), and so
is one given twice (W3C Trace Context: more than one ``traceparent`` header makes it
invalid; the ``tracestate`` goes with it).

Outbound, ``client_span`` wraps a request or notification sent over a channel and
``outbound()`` is the ``traceparent`` its header carries. With tracing off, nothing
of OpenTelemetry runs: the ids a caller sent are carried on unchanged.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar, Token
from typing import Any

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from aralnode._logs import TRACE_ID
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext, LazyMetadata
from aralnode.core.errors import AralError
from aralnode.core.governance import Action, Direction
from aralnode.service.pipeline import Pipeline, Target
from aralnode.service.stages import Audit, Stages

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_JUST_TRACEPARENT = frozenset({TRACEPARENT})
# version 00 is exactly this; a later version may append fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_FRESH = otel_context.Context()
_NO_STATE = TraceState()
# The traceparent a message sent from here carries (the client span's, or the one
# the call being served came with when tracing is off).
_OUTBOUND: ContextVar[tuple[str, str]] = ContextVar("aralnode_outbound_trace", default=("", ""))
_NULL = contextlib.nullcontext()
_OK = "ok"
UNKNOWN = "aral.unknown"  # the span name of a call refused before its target was found


def _parsed(traceparent: str) -> tuple[str, str, str] | None:
    """(trace id, span id, flags) of a well-formed W3C ``traceparent``, else ``None``."""
    m = _TRACEPARENT.fullmatch(traceparent.strip().lower()) if len(traceparent) < 512 else None
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    return None if span_id == _ZERO_SPAN else (trace_id, span_id, flags)


def trace_id_of(traceparent: str) -> str:
    """The trace id of a well-formed W3C ``traceparent``; "" for anything else."""
    parsed = _parsed(traceparent)
    return "" if parsed is None else parsed[0]


def _remote(traceparent: str, tracestate: str) -> otel_context.Context:
    """The caller's span as a parent context; an empty context (a fresh trace) for
    a malformed one. (Parsed here rather than by the SDK's propagator: a third of
    the cost, on every message a peer sends.)"""
    parsed = _parsed(traceparent)
    if parsed is None:
        return _FRESH
    trace_id, span_id, flags = parsed
    state = TraceState.from_header([tracestate]) if tracestate else _NO_STATE
    remote = SpanContext(
        int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16) & 1), state
    )
    return trace.set_span_in_context(NonRecordingSpan(remote), _FRESH)


def traceparent_of(span_context: SpanContext) -> str:
    """``span_context`` as a W3C ``traceparent``."""
    flags = int(span_context.trace_flags) & 0xFF
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


def outbound() -> tuple[str, str]:
    """The (``traceparent``, ``tracestate``) a message sent now carries ("" none)."""
    return _OUTBOUND.get()


def from_meta(ctx: CallContext, meta: object) -> None:
    """Take the trace context of an MCP request's ``params._meta`` (strings only;
    ``traceparent`` and ``tracestate`` keys, as the MCP SDKs' propagation uses)."""
    if isinstance(meta, Mapping):
        parent = meta.get(TRACEPARENT)
        if isinstance(parent, str) and parent:
            state = meta.get(TRACESTATE)
            ctx.traceparent, ctx.tracestate = parent, state if isinstance(state, str) else ""


def for_client() -> tuple[str, str]:
    """What a gRPC client's call carries: ``outbound()``, else the program's own
    current OpenTelemetry span (a program that traces its calls to a node)."""
    carried = _OUTBOUND.get()
    if carried[0]:
        return carried
    state = trace.get_current_span().get_span_context()
    if state.is_valid:
        return traceparent_of(state), state.trace_state.to_header()
    return carried


def incoming(ctx: CallContext) -> tuple[str, str]:
    """The (``traceparent``, ``tracestate``) ``ctx``'s caller sent, if any; a
    ``tracestate`` that is not a well-formed W3C list (``clean_tracestate``) is
    dropped, never parsed, logged or carried on. A ``traceparent`` given twice
    (``repeated_traceparent``) is none: the call starts a fresh trace."""
    if ctx.traceparent:
        return ctx.traceparent, clean_tracestate(ctx.tracestate)
    md = ctx.metadata
    if not md:
        return "", ""
    parent = md.get(TRACEPARENT)
    if not parent or repeated_traceparent(md):
        return "", ""
    return parent, clean_tracestate(md.get(TRACESTATE) or "")


def repeated_traceparent(metadata: Mapping[str, str]) -> bool:
    """``metadata`` (gRPC metadata, HTTP headers) has more than one ``traceparent``:
    W3C Trace Context says a request with several has an invalid one (which copy
    counts differs between parsers and proxies). Only a ``LazyMetadata`` can hold a
    name twice (every door hands its metadata in as one)."""
    return isinstance(metadata, LazyMetadata) and bool(metadata.repeated(_JUST_TRACEPARENT))


# W3C Trace Context: list members key=value, keys as OpenTelemetry's TraceState
# checks them, at most 32 members, 512 characters in all (what a vendor may drop).
_STATE_KEY = r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_STATE_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_STATE_MEMBER = f"{_STATE_KEY}={_STATE_VALUE}"
_TRACESTATE = re.compile(f"{_STATE_MEMBER}(?:[ \t]*,[ \t]*{_STATE_MEMBER}){{0,31}}")


def clean_tracestate(value: str) -> str:
    """``value`` if it is a well-formed W3C ``tracestate`` of at most 512 characters,
    else "". A caller's malformed one is dropped here: handed to OpenTelemetry's
    ``TraceState``, it was logged as it came (escape sequences, newlines)."""
    if not value:
        return ""
    value = value.strip()
    return value if len(value) <= 512 and _TRACESTATE.fullmatch(value) else ""


@contextlib.contextmanager
def _client(tracer: trace.Tracer, name: str, peer: str) -> Iterator[None]:
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
        if span.is_recording():
            span.set_attribute("aral.peer", peer)
        state = span.get_span_context()
        token = _OUTBOUND.set((traceparent_of(state), state.trace_state.to_header()))
        logged = TRACE_ID.set(f"{state.trace_id:032x}")
        try:
            yield
        finally:
            TRACE_ID.reset(logged)
            _OUTBOUND.reset(token)


def client_span(
    tracer: trace.Tracer | None, name: str, peer: str, *, request: bool = True
) -> contextlib.AbstractContextManager[Any]:
    """A client span around a message sent to ``peer`` (none when ``tracer`` is
    ``None``); while it is open, ``outbound()`` names it. A notification
    (``request`` false) gets one only as part of a trace (sent while a call is
    served, or under the program's own span): fire-and-forget on its own, its
    span would say little and cost a span a message."""
    if tracer is None:
        return _NULL
    if not request and not trace.get_current_span().get_span_context().is_valid:
        return _NULL
    return _client(tracer, name, peer)


class logged_as:  # (lower case: used as a function, ``with logged_as(trace_id):``)
    """Log lines within name ``trace_id`` (``aralnode._logs.TRACE_ID``): for work done
    for a message outside a pipeline call (a notification's handlers). A class, not a
    generator: it is entered once a handler call, on every message a peer sends."""

    __slots__ = ("_token", "_trace_id")

    def __init__(self, trace_id: str) -> None:
        self._trace_id = trace_id

    def __enter__(self) -> None:
        self._token = TRACE_ID.set(self._trace_id)

    def __exit__(self, *exc: object) -> None:
        TRACE_ID.reset(self._token)


class _Served:
    """What one call's span left to undo when it ends."""

    __slots__ = ("attached", "carried", "logged", "name", "span")

    def __init__(
        self,
        name: str,
        span: Span | None,
        attached: object,
        logged: Token[str] | None,
        carried: Token[tuple[str, str]] | None,
    ) -> None:
        self.name = name
        self.span = span
        self.attached = attached
        self.logged = logged
        self.carried = carried


class _TracedAudit(Audit):
    """The audit stage, with a span for the wait on a record's commit."""

    __slots__ = ("pipeline",)

    def __init__(self, pipeline: TracedPipeline, audit: Audit) -> None:
        super().__init__(audit.sinks, audit.counters, audit.log)
        self.pipeline = pipeline

    async def durable(self, ticket: int) -> None:
        tracer = self.pipeline._recording() if ticket else None
        if tracer is None:
            return await Audit.durable(self, ticket)
        with tracer.start_as_current_span("audit"):
            return await Audit.durable(self, ticket)


class TracedPipeline(Pipeline):
    """The pipeline with a span per call (see the module docstring).

    Attributes:
        tracer: The node's tracer; ``None`` (tracing off) makes no span.
    """

    tracer: trace.Tracer | None = None

    def __init__(self, registry: CapabilityRegistry, stages: Stages, clock: Clock) -> None:
        super().__init__(registry, stages, clock)
        stages.audit = _TracedAudit(self, stages.audit)

    # -- a call's span --------------------------------------------------------------

    def _enter(
        self, ctx: CallContext, name: str, *, attach: bool = True, log: bool = True
    ) -> _Served:
        """Open ``ctx``'s span (tracing on) and name its trace in the logs; with
        ``attach`` false the span is not made current (nothing under it makes
        spans), with ``log`` false neither is the trace (a stream: a generator's
        context is its consumer's, between items)."""
        parent, state = incoming(ctx)
        tracer = self.tracer
        if tracer is None:
            carried = None
            if parent and (trace_id := trace_id_of(parent)):
                ctx.trace_id = trace_id  # the caller's trace, carried on as it came
                if log:
                    carried = _OUTBOUND.set((parent, state))
            return _Served(name, None, None, TRACE_ID.set(ctx.trace_id) if log else None, carried)
        remote = None
        if parent:  # a malformed one extracts to nothing: a fresh trace
            remote = _remote(parent, state)
        kind = SpanKind.INTERNAL if ctx.door == "local" else SpanKind.SERVER
        span = tracer.start_span(name, context=remote, kind=kind)
        ctx.trace_id = f"{span.get_span_context().trace_id:032x}"
        if not log:
            return _Served(name, span, None, None, None)
        attached = otel_context.attach(trace.set_span_in_context(span)) if attach else None
        return _Served(name, span, attached, TRACE_ID.set(ctx.trace_id), None)

    def _leave(self, ctx: CallContext, served: _Served, error: BaseException | None) -> None:
        """Close ``ctx``'s span with its outcome."""
        span = served.span
        if span is not None:
            if span.is_recording():
                name = served.name
                if name and not ctx.capability and name not in self.registry:
                    # Refused before it was found: the caller chose the name, and
                    # span names are bounded as attributes are.
                    span.update_name(UNKNOWN)
                outcome = _OK
                if isinstance(error, AralError):
                    outcome = error.code
                    span.set_status(Status(StatusCode.ERROR, error.reason))
                elif error is not None:
                    outcome = "cancelled"
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                span.set_attributes({
                    "aral.door": ctx.door,
                    "aral.capability": ctx.capability,
                    "aral.caller_kind": ctx.kind or "anonymous",
                    "aral.decision": ctx.decision,
                    "aral.outcome": outcome,
                })  # fmt: skip
            span.end()
            if served.attached is not None:
                otel_context.detach(served.attached)  # type: ignore[arg-type]
        if served.carried is not None:
            _OUTBOUND.reset(served.carried)
        if served.logged is not None:
            TRACE_ID.reset(served.logged)

    async def _spanned(self, ctx: CallContext, name: str, call: Awaitable[Any]) -> Any:
        served = self._enter(ctx, name)
        try:
            result = await call
        except BaseException as exc:
            self._leave(ctx, served, exc)
            raise
        self._leave(ctx, served, None)
        return result

    # -- the pipeline's doors, each under a span ------------------------------------

    def invoke(self, ctx: CallContext, capability_id: str, params: Any) -> Awaitable[Any]:
        return self._invoke(ctx, capability_id, params)

    async def _invoke(self, ctx: CallContext, capability_id: str, params: Any) -> Any:
        # (``_spanned`` written out: the hottest path, one coroutine less a call)
        served = self._enter(ctx, capability_id)
        try:
            result = await Pipeline.invoke(self, ctx, capability_id, params)
        except BaseException as exc:
            self._leave(ctx, served, exc)
            raise
        self._leave(ctx, served, None)
        return result

    async def invoke_message(self, ctx: CallContext, capability_id: str, request: Message) -> Any:
        return await self._spanned(
            ctx, capability_id, Pipeline.invoke_message(self, ctx, capability_id, request)
        )

    async def call(
        self, ctx: CallContext, action_id: str, params: Any, run: Callable[[Any], Awaitable[Any]],
        **kwargs: Any,
    ) -> Any:  # fmt: skip
        return await self._spanned(
            ctx, action_id, Pipeline.call(self, ctx, action_id, params, run, **kwargs)
        )

    async def stream(
        self,
        ctx: CallContext,
        method_id: str,
        params: Any,
        start: Callable[[Any], AsyncIterator[Any]],
        **kwargs: Any,
    ) -> AsyncGenerator[Any, None]:
        # Not made current: a generator's context is its consumer's, between items.
        served = self._enter(ctx, method_id, attach=False, log=False)
        try:
            async for item in Pipeline.stream(self, ctx, method_id, params, start, **kwargs):
                yield item
        except BaseException as exc:
            self._leave(ctx, served, exc)
            raise
        self._leave(ctx, served, None)

    def judge_message(
        self,
        ctx: CallContext,
        action_id: str,
        params: Any,
        *,
        direction: Direction,
        peer: str = "",
    ) -> Any:
        # A message sent: its client span (if any) stands for it. A notification
        # received outside any trace (its sender sent it on its own) starts none:
        # as its sender made no span for it, a span a message would cost the
        # receiver more than a tenth of its channel's throughput (docs/tracing.md).
        if direction is Direction.SEND or not incoming(ctx)[0]:
            return Pipeline.judge_message(
                self, ctx, action_id, params, direction=direction, peer=peer
            )
        served = self._enter(ctx, action_id, attach=False)  # (no span is made under it)
        served.name = ""  # an event a verified peer sent, named as it is
        try:
            data = Pipeline.judge_message(
                self, ctx, action_id, params, direction=direction, peer=peer
            )
        except BaseException as exc:
            self._leave(ctx, served, exc)
            raise
        self._leave(ctx, served, None)
        return data

    # -- the stages that do real work, as child spans --------------------------------

    def _recording(self) -> trace.Tracer | None:
        """The tracer, when the call's stages get spans of their own: under a
        sampled call, and only when a stage besides the handler does work (a rule
        to judge, a check, an audit record to wait for). Otherwise the call's span
        is its handler's: an SDK span costs ~10 us, a call on the in-process door
        ~8 us, so a second span per call would be most of tracing's cost."""
        tracer = self.tracer
        if tracer is None:
            return None
        stages = self.stages
        if not (stages.govern.active or stages.post_check.checks or stages.audit.log is not None):
            return None
        return tracer if trace.get_current_span().is_recording() else None

    async def _run(
        self,
        ctx: CallContext,
        target: Target,
        handler: Callable[[Any, CallContext], Awaitable[Any]],
        value: Any,
        message: Message | None,
        *,
        parse: Callable[[Any], Message] | None = None,
    ) -> Any:
        tracer = self._recording()
        if tracer is not None:
            inner = handler

            async def handler(value: Any, ctx: CallContext) -> Any:
                with tracer.start_as_current_span("handler"):
                    return await inner(value, ctx)

        return await Pipeline._run(self, ctx, target, handler, value, message, parse=parse)

    async def _judged(
        self, ctx: CallContext, target: Target, value: Any, message: Message | None
    ) -> tuple[Action | None, Any]:
        tracer = self._recording()
        if tracer is None or not (self.stages.govern.active or self.stages.post_check.checks):
            return await Pipeline._judged(self, ctx, target, value, message)
        with tracer.start_as_current_span("govern") as span:
            judged = await Pipeline._judged(self, ctx, target, value, message)
            span.set_attribute("aral.decision", ctx.decision)
            return judged

    async def _checked(self, ctx: CallContext, action: Action, result: Any) -> Any:
        tracer = self._recording()
        if tracer is None:
            return await Pipeline._checked(self, ctx, action, result)
        with tracer.start_as_current_span("post-check"):
            return await Pipeline._checked(self, ctx, action, result)


__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "TracedPipeline",
    "client_span",
    "for_client",
    "from_meta",
    "incoming",
    "logged_as",
    "outbound",
    "repeated_traceparent",
    "trace_id_of",
    "traceparent_of",
]
