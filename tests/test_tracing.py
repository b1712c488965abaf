"""OpenTelemetry traces across the mesh (issue 19, item 2) and trace ids in log lines.

Every node gets its own ``TracerProvider`` with an in-memory exporter
(``Node(config, tracer_provider=...)``), so the spans of three nodes in one process
stay apart and each can be checked for where it came from.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from mcp import Client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from websockets.asyncio.client import connect

from aralnode import (
    CallContext,
    CapabilityNotFound,
    Decision,
    Node,
    NodeClient,
    NodeConfig,
    Rule,
    RuleEvaluator,
    _logs,
)
from aralnode._tracing import PropagatingTracer
from aralnode.core import codec
from aralnode.service.tracing import UNKNOWN, clean_tracestate, trace_id_of, traceparent_of
from aralnode.store.audit import read_records
from tests.channel_helpers import FAST, linked
from tests.test_grpcurl import GRPCURL, grpcurl

DEMO = str(Path(__file__).resolve().parent.parent / "examples" / "demo.py")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
MALFORMED = ["00-zz-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01", "garbage", ""]


class Traced:
    """A node and the spans it finished."""

    def __init__(
        self, node: Node, exporter: InMemorySpanExporter, provider: TracerProvider
    ) -> None:
        self.node = node
        self.exporter = exporter
        self.provider = provider

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


MakeTraced = Callable[..., Traced]


@pytest.fixture
def make_traced(make_node: Callable[..., Node]) -> MakeTraced:
    """``make_node``'s node, tracing to an in-memory exporter of its own."""

    def make(name: str, *, tracing: bool = True, **overrides: object) -> Traced:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        node = make_node(name, tracing=tracing, tracer_provider=provider, **{**FAST, **overrides})
        return Traced(node, exporter, provider)

    return make


class Lines(logging.Handler):
    """Every record as the JSON line ``aralnode run --log-format json`` writes."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(_logs.TraceIdFilter())
        self.setFormatter(_logs.JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("chain")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture
async def chain(make_traced: MakeTraced) -> AsyncIterator[tuple[Traced, Traced, Traced]]:
    """A -- B -- C over channels: A's ``chain.start`` asks B's ``chain.relay``,
    which asks C's ``chain.leaf``; each handler logs one line."""
    a, b, c = make_traced("alpha"), make_traced("beta"), make_traced("gamma")

    @c.node.capability(id="chain.leaf")
    async def leaf(text: str) -> dict[str, Any]:
        logging.getLogger("chain.gamma").info("leaf %s", text)
        return {"leaf": text}

    @b.node.capability(id="chain.relay")
    async def relay(text: str) -> dict[str, Any]:
        logging.getLogger("chain.beta").info("relay %s", text)
        return {"relay": await b.node.request(c.node.node_id, "chain.leaf", {"text": text})}

    @a.node.capability(id="chain.start")
    async def start(text: str) -> dict[str, Any]:
        logging.getLogger("chain.alpha").info("start %s", text)
        return {"start": await a.node.request(b.node.node_id, "chain.relay", {"text": text})}

    async with a.node, b.node, c.node:
        await linked(a.node, b.node)
        await linked(b.node, c.node)
        yield a, b, c


def _call(capability: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"call": {"capability": capability, "parameters": params}}


def _one(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, spans
    return spans[0]


async def test_a_call_across_three_nodes_is_one_trace(
    chain: tuple[Traced, Traced, Traced], json_lines: Lines
) -> None:
    a, b, c = chain
    async with NodeClient(a.node.address) as client:
        result = await client.call("chain.start", {"text": "hi"})
    assert codec.from_value(result.result) == {"start": {"relay": {"leaf": "hi"}}}
    trace_id = result.trace_id
    assert len(trace_id) == 32
    # A: the gRPC call's server span; its handler; the channel request to B.
    a_server = _one([s for s in a.named("chain.start") if s.kind is SpanKind.SERVER])
    a_client = _one([s for s in a.named("chain.relay") if s.kind is SpanKind.CLIENT])
    b_server = _one([s for s in b.named("chain.relay") if s.kind is SpanKind.SERVER])
    b_client = _one([s for s in b.named("chain.leaf") if s.kind is SpanKind.CLIENT])
    c_server = _one([s for s in c.named("chain.leaf") if s.kind is SpanKind.SERVER])
    every = [*a.spans(), *b.spans(), *c.spans()]
    assert {f"{s.context.trace_id:032x}" for s in every} == {trace_id}
    assert a_server.parent is None
    # No stage but the handler works here: the call's span is its handler's.
    assert not a.named("handler")
    assert a_client.parent == a_server.context
    assert b_server.parent is not None
    assert b_server.parent.span_id == a_client.context.span_id
    assert b_server.parent.is_remote
    assert b_client.parent == b_server.context
    assert c_server.parent is not None
    assert c_server.parent.span_id == b_client.context.span_id
    # Attributes: door, capability, caller kind, decision, outcome.
    assert a_server.attributes is not None
    assert b_server.attributes is not None
    assert a_server.attributes["aral.door"] == "grpc"
    assert b_server.attributes["aral.door"] == "channel"
    assert b_server.attributes["aral.caller_kind"] == "node"
    assert b_server.attributes["aral.outcome"] == "ok"
    assert b_server.attributes["aral.decision"] == "ok"
    # Each node's resource names it (its own provider, not the global one).
    # The same trace id in each node's JSON log lines.
    by_logger = {line["logger"]: line for line in json_lines.lines}
    for name in ("chain.alpha", "chain.beta", "chain.gamma"):
        assert by_logger[name]["trace_id"] == trace_id


async def test_a_grpc_traceparent_is_the_trace(make_traced: MakeTraced) -> None:
    t = make_traced("solo")
    async with t.node:
        async with NodeClient(t.node.address, metadata=[("traceparent", PARENT)]) as client:
            result = await client.call("demo.echo", {"text": "x"})
        assert result.trace_id == TRACE
        span = _one(t.named("demo.echo"))
        assert f"{span.context.trace_id:032x}" == TRACE
        assert span.parent is not None
        assert span.parent.span_id == 0x00F067AA0BA902B7
        assert span.attributes is not None
        assert span.attributes["aral.door"] == "grpc"


async def test_a_malformed_traceparent_starts_a_fresh_trace(make_traced: MakeTraced) -> None:
    t = make_traced("solo", http_port=0)
    async with t.node:
        for bad in MALFORMED:
            t.exporter.clear()
            metadata = [("traceparent", bad)] if bad else []
            async with NodeClient(t.node.address, metadata=metadata) as client:
                result = await client.call("demo.echo", {"text": "x"})
            span = _one(t.named("demo.echo"))
            assert span.parent is None
            assert result.trace_id == f"{span.context.trace_id:032x}" != TRACE
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.node.http_port}") as http:
            response = await http.post(
                "/v1/invoke",
                json=_call("demo.echo", {"text": "x"}),
                headers={"traceparent": "00-bad"},
            )
        assert response.status_code == 200


async def test_rest_header_traceparent(make_traced: MakeTraced) -> None:
    t = make_traced("solo", http_port=0)
    async with t.node:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.node.http_port}") as http:
            response = await http.post(
                "/v1/invoke",
                json=_call("demo.echo", {"text": "x"}),
                headers={"traceparent": PARENT},
            )
        assert response.status_code == 200, response.text
        assert response.headers["x-trace-id"] == TRACE
        assert response.json()["result"]["traceId"] == TRACE
        span = _one(t.named("demo.echo"))
        assert f"{span.context.trace_id:032x}" == TRACE
        assert span.attributes is not None
        assert span.attributes["aral.door"] == "rest"


@pytest.mark.parametrize("tracing", [True, False])
async def test_a_refusal_before_the_pipeline_is_under_the_callers_trace(
    make_traced: MakeTraced, tracing: bool
) -> None:
    t = make_traced("solo", tracing=tracing, http_port=0, audit=True)
    async with (
        t.node,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.node.http_port}") as http,
    ):
        routed = await http.post("/v1/no/such/route", json={}, headers={"traceparent": PARENT})
        garbled = await http.post(
            "/v1/invoke",
            content=b"{not json",
            headers={"traceparent": PARENT, "content-type": "application/json"},
        )
        twice = await http.post(  # refused by the MCP door before the SDK reads it
            "/mcp",
            content=b'{"jsonrpc": "2.0", "id": 1, "id": 2, "method": "ping"}',
            headers={"traceparent": PARENT, "content-type": "application/json",
                     "accept": "application/json, text/event-stream"},
        )  # fmt: skip
        guarded = await http.get(  # refused by the port's Host guard
            "/v1/peers", headers={"traceparent": PARENT, "host": "evil.example"}
        )
    for response in (routed, garbled, twice, guarded):
        assert response.status_code in (400, 403, 404, 421), response.text
        assert response.headers["x-trace-id"] == TRACE, response.text
    for response in (routed, garbled, guarded):
        assert response.json()["error"]["trace_id"] == TRACE
    records = [r for _, r in read_records(t.node.config.resolved_data_dir / "audit")]
    assert [r.trace_id for r in records if r.outcome != "ok"] == [TRACE] * 4


async def test_a_tracestate_is_kept_when_well_formed_and_dropped_unlogged_when_not(
    make_traced: MakeTraced, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller's ``tracestate`` is a W3C list or nothing: a malformed one is dropped
    before OpenTelemetry parses it (which logged it as it came) and the call goes on.
    (Control characters cannot come in an HTTP header; in MCP ``_meta`` or a peer's
    header they can, and ``clean_tracestate`` drops them the same way.)"""
    t = make_traced("solo", http_port=0)
    bad = [
        "k=v,EVIL!key=x", "k=v=w", ",".join(f"k{i}=v" for i in range(33)), "k=" + "v" * 600,
    ]  # fmt: skip
    async with t.node, httpx.AsyncClient() as http:
        base = f"http://127.0.0.1:{t.node.http_port}"
        for state in ["rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", *bad]:
            response = await http.post(
                f"{base}/v1/invoke",
                json=_call("demo.echo", {"text": "x"}),
                headers={"traceparent": PARENT, "tracestate": state},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-trace-id"] == TRACE
    spans = t.named("demo.echo")
    assert len(spans) == 1 + len(bad)
    # The server span inherits its parent's state: kept when well formed, else none.
    assert spans[0].context.trace_state.get("rojo") == "00f067aa0ba902b7"
    assert all(len(span.context.trace_state) == 0 for span in spans[1:])
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")], caplog.records
    assert clean_tracestate("k=v,\x1b[31mEVIL=\n,x") == ""
    assert clean_tracestate("tenant@system=v") == "tenant@system=v"


async def test_a_refusal_sets_the_span_status(make_traced: MakeTraced) -> None:
    ran: list[int] = []
    block = RuleEvaluator(
        rules=[Rule(id="no-add", decision=Decision.BLOCK, capabilities=frozenset({"demo.add"}))]
    )
    t = make_traced("solo", http_port=0, governance=block)
    async with t.node:
        real = t.node.registry.get("demo.add").handler

        async def counted(value: Any, ctx: CallContext) -> Any:
            ran.append(1)
            return await real(value, ctx)

        object.__setattr__(t.node.registry.get("demo.add"), "handler", counted)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{t.node.http_port}") as http:
            response = await http.post(
                "/v1/invoke", json=_call("demo.add", {"a": 1, "b": 2}),
                headers={"traceparent": PARENT},
            )  # fmt: skip
            assert response.status_code == 403, response.text
            assert response.json()["error"]["trace_id"] == TRACE
            # A failure inside the handler: its error body names the trace too.
            bad = await http.post(
                "/v1/invoke", json=_call("demo.echo", {"text": 3}), headers={"traceparent": PARENT}
            )
            assert bad.status_code == 400
            assert bad.json()["error"]["trace_id"] == TRACE
        span = _one(t.named("demo.add"))
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["aral.outcome"] == "governance_blocked"
        assert span.attributes["aral.decision"] == "block"
        assert not ran  # refused before the handler ran
        assert not [s for s in t.named("handler") if s.parent == span.context]
        # With a rule to judge, the stages get spans. The parameters are read as the
        # handler will take them before any rule judges them: a bad one is refused in
        # the govern stage, and no handler runs.
        echo = _one(t.named("demo.echo"))
        assert echo.status.status_code is StatusCode.ERROR
        assert not [s for s in t.named("handler") if s.parent == echo.context]
        bad_params = _one([s for s in t.named("govern") if s.parent == echo.context])
        assert bad_params.status.status_code is StatusCode.ERROR
        govern = _one([s for s in t.named("govern") if s.parent == span.context])
        assert govern.status.status_code is StatusCode.ERROR


async def test_mcp_meta_traceparent(make_traced: MakeTraced) -> None:
    t = make_traced("solo", http_port=0)
    async with t.node:
        async with Client(f"http://127.0.0.1:{t.node.http_port}/mcp") as client:
            result = await client.call_tool(
                "demo.echo", {"text": "x"}, meta={"traceparent": PARENT}
            )
            assert not result.is_error
        span = _one(t.named("demo.echo"))
        assert f"{span.context.trace_id:032x}" == TRACE
        assert span.attributes is not None
        assert span.attributes["aral.door"] == "mcp"


async def test_websocket_upgrade_traceparent(make_traced: MakeTraced) -> None:
    t = make_traced("solo", http_port=0)
    async with t.node:
        url = f"ws://127.0.0.1:{t.node.http_port}/ws"
        async with connect(url, additional_headers={"traceparent": PARENT}) as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "demo.echo",
                                      "parameters": {"text": "x"}}))  # fmt: skip
            async with asyncio.timeout(10):
                answer = json.loads(await ws.recv())
        assert answer["type"] == "result", answer
        assert answer["trace_id"] == TRACE
        span = _one(t.named("demo.echo"))
        assert f"{span.context.trace_id:032x}" == TRACE
        assert span.attributes is not None
        assert span.attributes["aral.door"] == "ws"


async def test_in_process_calls_and_tracing_off(make_traced: MakeTraced) -> None:
    on, off = make_traced("on"), make_traced("off", tracing=False)
    async with on.node, off.node:
        await on.node.invoke("demo.echo", {"text": "x"})
        span = _one(on.named("demo.echo"))
        assert span.kind is SpanKind.INTERNAL
        assert span.attributes is not None
        assert span.attributes["aral.door"] == "local"
        await off.node.invoke("demo.echo", {"text": "x"})
        async with NodeClient(off.node.address, metadata=[("traceparent", PARENT)]) as client:
            result = await client.call("demo.echo", {"text": "x"})
        # Off: no span at all, but a caller's trace id is still the call's.
        assert off.spans() == ()
        assert result.trace_id == TRACE


async def test_unsampled_calls_make_no_stage_spans(make_traced: MakeTraced) -> None:
    t = make_traced("solo")
    async with t.node:
        unsampled = f"00-{TRACE}-00f067aa0ba902b7-00"
        async with NodeClient(t.node.address, metadata=[("traceparent", unsampled)]) as client:
            result = await client.call("demo.echo", {"text": "x"})
        assert result.trace_id == TRACE
        assert t.spans() == ()


def test_traceparent_parsing() -> None:
    assert trace_id_of(PARENT) == TRACE
    assert trace_id_of(f"01-{TRACE}-00f067aa0ba902b7-01-later") == TRACE
    for bad in [*MALFORMED, f"ff-{TRACE}-00f067aa0ba902b7-01", f"00-{TRACE}-{'0' * 16}-01",
                f"00-{TRACE}-00f067aa0ba902b7-01-extra", "x" * 600]:  # fmt: skip
        assert trace_id_of(bad) == ""


def test_traceparent_of_round_trips() -> None:
    from opentelemetry.trace import SpanContext, TraceFlags

    ctx = SpanContext(int(TRACE, 16), 0x00F067AA0BA902B7, True, TraceFlags(1))
    assert traceparent_of(ctx) == PARENT


async def test_programs_context_keeps_its_caller(make_traced: MakeTraced) -> None:
    t = make_traced("solo")
    async with t.node:
        ctx = CallContext(door="local", caller="someone", scopes=frozenset({"agent:invoke"}))
        await t.node.invoke("demo.echo", {"text": "x"}, ctx=ctx)
        assert ctx.trace_id == f"{_one(t.named('demo.echo')).context.trace_id:032x}"


async def test_a_notification_carries_its_trace(make_traced: MakeTraced, json_lines: Lines) -> None:
    a, b = make_traced("alpha"), make_traced("beta")
    got = asyncio.Event()

    def handler(msg: Any, tx: Any) -> None:
        logging.getLogger("chain.beta").info("got %s", msg.event)
        got.set()

    b.node.on_notification("chain.note", handler)
    async with a.node, b.node:
        await linked(a.node, b.node)
        # On its own (outside any trace), a notification makes no span on either
        # side; its handler's lines still name its trace id.
        message_id = await a.node.notify(b.node.node_id, "chain.note", {"x": 1})
        async with asyncio.timeout(10):
            await got.wait()
        assert a.spans() == b.spans() == ()
        assert json_lines.lines[0]["trace_id"] == message_id
        json_lines.lines.clear()
        got.clear()
        # Sent within a trace (here the program's own span), it is part of it.
        with a.provider.get_tracer("program").start_as_current_span("outer"):
            await a.node.notify(b.node.node_id, "chain.note", {"x": 1})
        async with asyncio.timeout(10):
            await got.wait()
    sent = _one(a.named("chain.note"))
    assert sent.kind is SpanKind.CLIENT
    received = _one(b.named("chain.note"))
    assert received.parent is not None
    assert received.parent.span_id == sent.context.span_id
    trace_id = f"{sent.context.trace_id:032x}"
    assert f"{received.context.trace_id:032x}" == trace_id
    assert [line["trace_id"] for line in json_lines.lines] == [trace_id]


async def test_the_grpc_client_carries_the_programs_span(make_traced: MakeTraced) -> None:
    t = make_traced("solo")
    exporter = InMemorySpanExporter()
    program = TracerProvider()
    program.add_span_processor(SimpleSpanProcessor(exporter))
    async with t.node, NodeClient(t.node.address) as client:
        with program.get_tracer("program").start_as_current_span("outer") as outer:
            result = await client.call("demo.echo", {"text": "x"})
    server = _one(t.named("demo.echo"))
    assert server.parent is not None
    assert server.parent.span_id == outer.get_span_context().span_id
    assert result.trace_id == f"{outer.get_span_context().trace_id:032x}"


class Collector(TraceServiceServicer):
    """An OTLP/gRPC trace collector on loopback: what the node's exporter sends."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.received = threading.Event()

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:
        self.requests.append(request)
        self.received.set()
        return ExportTraceServiceResponse()


async def test_spans_go_to_an_otlp_collector(tmp_path: Path) -> None:
    collector = Collector()
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        cfg = NodeConfig(
            name="exported", host="127.0.0.1", grpc_port=0, http_port=None, discovery="none",
            data_dir=tmp_path / "n", tracing=True,
            tracing_otlp_endpoint=f"http://127.0.0.1:{port}",
        )  # fmt: skip
        node = Node(cfg)
        node.load(DEMO)
        async with node:
            await node.invoke("demo.echo", {"text": "x"})
        # The node's stop flushed its batch processor.
        assert await asyncio.to_thread(collector.received.wait, 10)
    finally:
        server.stop(None)
    resource = collector.requests[0].resource_spans[0].resource
    attributes = {a.key: a.value.string_value for a in resource.attributes}
    assert attributes["service.name"] == "exported"
    assert attributes["aral.node_id"] == node.node_id
    names = [
        span.name
        for request in collector.requests
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert "demo.echo" in names


async def test_with_an_audit_log_the_stages_get_spans(make_traced: MakeTraced) -> None:
    t = make_traced("audited", audit=True)
    async with t.node, NodeClient(t.node.address, metadata=[("traceparent", PARENT)]) as client:
        await client.call("demo.echo", {"text": "x"})
    call = _one(t.named("demo.echo"))
    stages = {s.name for s in t.spans() if s.parent == call.context}
    assert {"handler", "audit"} <= stages
    # The audit record names the trace the spans are in.
    records = [r for _, r in read_records(t.node.config.resolved_data_dir / "audit")]
    assert [r.trace_id for r in records if r.action == "demo.echo"] == [TRACE]


async def test_tracing_off_carries_a_callers_trace_across_nodes(
    make_traced: MakeTraced, json_lines: Lines
) -> None:
    a, b = make_traced("alpha", tracing=False), make_traced("beta", tracing=False)

    @b.node.capability(id="chain.leaf")
    async def leaf(text: str) -> str:
        logging.getLogger("chain.beta").info("leaf %s", text)
        return text

    @a.node.capability(id="chain.start")
    async def start(text: str) -> str:
        result: str = await a.node.request(b.node.node_id, "chain.leaf", {"text": text})
        return result

    async with a.node, b.node:
        await linked(a.node, b.node)
        async with NodeClient(a.node.address, metadata=[("traceparent", PARENT)]) as client:
            result = await client.call("chain.start", {"text": "x"})
    assert result.trace_id == TRACE
    assert [line["trace_id"] for line in json_lines.lines] == [TRACE]
    assert a.spans() == b.spans() == ()


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed")
async def test_grpcurl_traceparent_header(make_traced: MakeTraced) -> None:
    t = make_traced("solo")
    async with t.node:
        body = {"call": {"capability": "demo.echo", "parameters": {"text": "x"}}}
        rc, out, err = await grpcurl(
            "-plaintext", "-H", f"traceparent: {PARENT}", "-d", json.dumps(body),
            t.node.address, "aral.v1.AgentNode/Invoke",
        )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["result"]["trace_id"] == TRACE
    assert f"{_one(t.named('demo.echo')).context.trace_id:032x}" == TRACE


async def test_a_name_the_caller_chose_is_not_a_span_name(make_traced: MakeTraced) -> None:
    t = make_traced("solo")
    async with t.node, NodeClient(t.node.address) as client:
        with pytest.raises(CapabilityNotFound):
            await client.call("made.up.by.the.caller", {})
    span = _one(t.named(UNKNOWN))
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["aral.outcome"] == "not_found"


@pytest.mark.parametrize("ratio", [1.0, 0.0])
async def test_with_no_exporter_a_node_records_nothing_and_carries_the_trace_on(
    make_node: Callable[..., Node], make_traced: MakeTraced, json_lines: Lines, ratio: float
) -> None:
    # Alpha traces with no exporter (no span could be read, so none is recorded);
    # beta exports to memory: what alpha forwards is what beta's spans show.
    a = make_node("alpha", tracing=True, tracing_sample_ratio=ratio, **FAST)
    b = make_traced("beta")

    @b.node.capability(id="chain.leaf")
    async def leaf(text: str) -> str:
        return text

    @a.capability(id="chain.start")
    async def start(text: str) -> str:
        logging.getLogger("chain.alpha").info("start %s", text)
        result: str = await a.request(b.node.node_id, "chain.leaf", {"text": text})
        return result

    async with a, b.node:
        assert isinstance(a.pipeline.tracer, PropagatingTracer)
        await linked(a, b.node)
        # A caller's trace goes on, under a span id of alpha's own, sampled as it came.
        async with NodeClient(a.address, metadata=[("traceparent", PARENT)]) as client:
            carried = await client.call("chain.start", {"text": "x"})
        # A fresh trace: W3C ids, sampled at alpha's ratio (beta follows its parent).
        async with NodeClient(a.address) as client:
            fresh = await client.call("chain.start", {"text": "y"})
    assert carried.trace_id == TRACE
    assert len(fresh.trace_id) == 32
    assert fresh.trace_id != TRACE
    assert int(fresh.trace_id, 16)
    assert [line["trace_id"] for line in json_lines.lines] == [TRACE, fresh.trace_id]
    served = [s for s in b.named("chain.leaf") if s.kind is SpanKind.SERVER]
    assert [f"{s.context.trace_id:032x}" for s in served] == [TRACE] + [fresh.trace_id] * (
        ratio == 1.0
    )
    parent = served[0].parent
    assert parent is not None
    assert parent.is_remote
    assert parent.span_id != int(PARENT.split("-")[2], 16)  # alpha's own span, not the caller's


def test_a_propagating_tracer_keeps_its_parent_and_samples_roots_as_the_sdk() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    tracer = PropagatingTracer(0.5)
    state = TraceState([("vendor", "x")])
    remote = SpanContext(0x1234, 0x99, True, TraceFlags(TraceFlags.SAMPLED), state)
    child = tracer.start_span("c", trace.set_span_in_context(NonRecordingSpan(remote)))
    own = child.get_span_context()
    assert (own.trace_id, own.trace_flags, own.trace_state) == (0x1234, 1, state)
    assert own.span_id not in (0, 0x99)
    assert not own.is_remote
    assert not child.is_recording()
    with tracer.start_as_current_span("outer") as outer:
        assert trace.get_current_span() is outer
        inner = tracer.start_span("inner").get_span_context()
        assert inner.trace_id == outer.get_span_context().trace_id
    sdk = TraceIdRatioBased(0.5)
    roots = [tracer.start_span("root").get_span_context() for _ in range(400)]
    assert len({r.trace_id for r in roots}) == 400
    for root in roots:
        decision = sdk.should_sample(None, root.trace_id, "root").decision
        assert root.trace_flags.sampled is decision.is_sampled()
    assert 0 < sum(r.trace_flags.sampled for r in roots) < 400
    assert all(PropagatingTracer(1.0).start_span("r").get_span_context().trace_flags.sampled
               for _ in range(50))  # fmt: skip
    assert not any(
        PropagatingTracer(0.0).start_span("r").get_span_context().trace_flags.sampled
        for _ in range(50)
    )
