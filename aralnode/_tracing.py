"""How a starting node gets its tracer (``config.tracing``; see docs/tracing.md).

Each node has its own ``TracerProvider`` (resource ``service.name`` = the node's
name, ``aral.node_id`` = its id), never the process's global one: several nodes in
one process keep apart. A program may hand in its own provider
(``Node(config, tracer_provider=...)``: an in-memory exporter in tests, its own
exporters in production); the node then leaves its shutdown to the program. With
``tracing_otlp_endpoint`` set, spans go over OTLP/gRPC through a batch processor
with a bounded queue (spans beyond it are dropped, never waited for).

With neither (tracing on, no exporter) no span could ever be read, so none is
recorded: the node's tracer is a ``PropagatingTracer``, which gives each call the
ids a span would have (a W3C trace id for the logs, the audit and ``X-Trace-Id``;
a span id of its own, the caller's as parent) and carries them on to the peers it
calls, with the sampled flag the node's sampler would have set. The SDK is not
loaded; recording a span costs more than the rest of tracing (docs/tracing.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    INVALID_SPAN_ID,
    INVALID_TRACE_ID,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
)

from aralnode._logs import get_logger
from aralnode._version import __version__
from aralnode.config import NodeConfig

if TYPE_CHECKING:  # the SDK is imported when a node traces, not by every start
    from opentelemetry.sdk.trace import TracerProvider

log = get_logger("aralnode.tracing")

# The batch processor's bounds: spans waiting for export, and how many go at once.
MAX_QUEUE = 2048
MAX_BATCH = 512


class _Traced(Protocol):
    config: NodeConfig
    tracer_provider: Any

    @property
    def name(self) -> str: ...

    @property
    def node_id(self) -> str: ...


_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.DEFAULT)
_LOW_64 = (1 << 64) - 1


class PropagatingTracer(trace.Tracer):
    """A tracer whose spans carry ids and record nothing (tracing on, no exporter).

    A new span takes its parent's trace id, flags and ``tracestate`` (the current
    span, or ``context``'s), or starts a trace: 128 random bits, sampled as the
    SDK's ``ParentBased(TraceIdRatioBased(ratio))`` would decide (the low 64 bits
    of the trace id below ``ratio``'s share of them), so a peer that exports
    follows the same traces it would follow with an SDK here. Its own span id is
    64 random bits, as the SDK's ``RandomIdGenerator`` makes them."""

    __slots__ = ("_bound",)

    def __init__(self, sample_ratio: float = 1.0) -> None:
        self._bound = round(min(max(sample_ratio, 0.0), 1.0) * (1 << 64))

    def start_span(  # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        parent = trace.get_current_span(context).get_span_context()
        span_id = random.getrandbits(64)
        while span_id == INVALID_SPAN_ID:  # (one draw in 2**64)
            span_id = random.getrandbits(64)
        if parent.is_valid:
            own = SpanContext(
                parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state
            )
        else:
            trace_id = random.getrandbits(128)
            while trace_id == INVALID_TRACE_ID:
                trace_id = random.getrandbits(128)
            flags = _SAMPLED if trace_id & _LOW_64 < self._bound else _NOT_SAMPLED
            own = SpanContext(trace_id, span_id, False, flags)
        return NonRecordingSpan(own)

    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]  # noqa: PLR0917
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(name, context, kind)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


def node_provider(cfg: NodeConfig, name: str, node_id: str) -> TracerProvider:
    """The node's own provider: parent-based sampling at ``tracing_sample_ratio``,
    exporting over OTLP/gRPC when ``tracing_otlp_endpoint`` is set."""
    # Imported here: a node that does not trace never loads the SDK (start-up).
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    resource = Resource.create({"service.name": name, "aral.node_id": node_id})
    ratio = cfg.tracing_sample_ratio
    # (ALWAYS_ON decides the same as a ratio of 1, with less work a span)
    sampler = ParentBased(ALWAYS_ON if ratio >= 1 else TraceIdRatioBased(ratio))
    provider = TracerProvider(resource=resource, sampler=sampler)
    if cfg.tracing_otlp_endpoint:
        # Imported only when used: the exporter pulls in its own gRPC stubs.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        exporter = OTLPSpanExporter(endpoint=cfg.tracing_otlp_endpoint)
        provider.add_span_processor(
            BatchSpanProcessor(exporter, max_queue_size=MAX_QUEUE, max_export_batch_size=MAX_BATCH)
        )
    return provider


def install_tracing(node: _Traced, pipeline: Any, hub: Any) -> TracerProvider | None:
    """Give the node's pipeline and channel hub their tracer (tracing on); the
    provider the node must shut down when it stops (``None``: none of its own)."""
    cfg = node.config
    if not cfg.tracing:
        pipeline.tracer = hub.tracer = None
        return None
    given = node.tracer_provider
    if given is None and not cfg.tracing_otlp_endpoint:  # no exporter: nothing to record
        pipeline.tracer = hub.tracer = PropagatingTracer(cfg.tracing_sample_ratio)
        return None
    provider = given if given is not None else node_provider(cfg, node.name, node.node_id)
    tracer: trace.Tracer = provider.get_tracer("aralnode", __version__)
    pipeline.tracer = hub.tracer = tracer
    return None if given is not None else provider


async def shutdown(provider: TracerProvider | None, within: float) -> None:
    """Flush and stop the node's own provider, waiting ``within`` seconds at most
    (at least one): off the event loop, as an exporter's flush blocks, and bounded,
    as a collector that is down is retried for longer than a stop should take."""
    if provider is None:
        return
    try:
        async with asyncio.timeout(max(1.0, within)):
            await asyncio.to_thread(provider.shutdown)
    except TimeoutError:
        log.warning("spans not exported within %.1fs of the stop were dropped", within)


__all__ = [
    "MAX_BATCH",
    "MAX_QUEUE",
    "PropagatingTracer",
    "install_tracing",
    "node_provider",
    "shutdown",
]
