"""A ``traceparent`` given twice is an invalid one (W3C Trace Context, section
"traceparent header": more than one makes the request's trace context invalid):
the call starts a new trace and ignores ``tracestate``, on the HTTP doors, with
tracing on and off. (On the gRPC door grpc's C core itself keeps only the last
``traceparent`` of a call's metadata -- another name given twice reaches the node
twice -- so the node cannot see the repetition there.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aralnode import Node
from aralnode.core.context import LazyMetadata
from aralnode.service.tracing import repeated_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
SECOND = f"00-{OTHER}-00f067aa0ba902b7-01"
TWICE = [("traceparent", PARENT), ("traceparent", SECOND), ("tracestate", "rojo=00f067aa")]
ECHO = {"capability": "demo.echo", "parameters": {"text": "x"}}
BODIES = {"/v1/invoke": {"call": ECHO}, "/api/v1/agents/{node_id}/invoke": ECHO}


class Traced:
    def __init__(self, node: Node, exporter: InMemorySpanExporter) -> None:
        self.node, self.exporter = node, exporter

    def span(self) -> ReadableSpan:
        spans = [s for s in self.exporter.get_finished_spans() if s.name == "demo.echo"]
        assert len(spans) == 1, spans
        self.exporter.clear()
        return spans[0]


def _traced(make_node: Callable[..., Node], tracing: bool) -> Traced:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    node = make_node("tp", tracing=tracing, tracer_provider=provider, http_port=0)
    return Traced(node, exporter)


def _fresh(trace_id: str) -> None:
    """A new trace: neither copy's trace id, and a well-formed one."""
    assert trace_id not in (TRACE, OTHER)
    assert len(trace_id) == 32
    int(trace_id, 16)


def test_only_a_name_given_twice_counts() -> None:
    assert repeated_traceparent(LazyMetadata(lambda: [("traceparent", PARENT)] * 2))
    assert not repeated_traceparent(LazyMetadata(lambda: [("traceparent", PARENT)]))
    assert not repeated_traceparent(
        LazyMetadata(lambda: [("traceparent", PARENT), ("tracestate", "a=1"), ("tracestate", "b")])
    )
    assert not repeated_traceparent({"traceparent": PARENT})


@pytest.mark.parametrize("tracing", [True, False])
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_http_headers_with_two_traceparents_start_a_new_trace(
    make_node: Callable[..., Node], tracing: bool, path: str
) -> None:
    t = _traced(make_node, tracing)
    async with t.node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.node.http_port}") as h:
        url = path.format(node_id=t.node.node_id)
        response = await h.post(url, json=BODIES[path], headers=httpx.Headers(TWICE))
        assert response.status_code == 200, response.text
        trace_id = response.headers["x-trace-id"]
        _fresh(trace_id)
        body: Any = response.json()
        said = body.get("trace_id") or body["result"].get("traceId")
        assert said == trace_id
        if tracing:
            span = t.span()
            assert span.parent is None
            assert f"{span.context.trace_id:032x}" == trace_id
            assert len(span.context.trace_state) == 0


async def test_with_tracing_off_a_repeated_traceparent_falls_back_to_x_trace_id(
    make_node: Callable[..., Node],
) -> None:
    """As a malformed ``traceparent`` does: the caller's ``X-Trace-Id`` names the call."""
    t = _traced(make_node, False)
    async with t.node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.node.http_port}") as h:
        headers = httpx.Headers([*TWICE, ("x-trace-id", "req-123")])
        response = await h.post("/v1/invoke", json={"call": ECHO}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-trace-id"] == "req-123"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/v1/agents/{node_id}/invoke", b"{not json"), ("/no/such/route", b"{}")],
)
async def test_a_refusal_before_the_call_is_under_a_fresh_trace_too(
    make_node: Callable[..., Node], path: str, body: bytes
) -> None:
    """The refusals a door makes before (or while) it builds the call's context read
    the header themselves: the first copy (a route's refusal) or the last (the
    context builder's). Neither counts either."""
    node = make_node("tp-refused", http_port=0)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        r = await http.post(path.format(node_id=node.node_id), content=body, headers=TWICE)
    assert r.status_code in (400, 404), r.text
    _fresh(r.headers["x-trace-id"])
