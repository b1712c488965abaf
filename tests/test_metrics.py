"""Operations (issue 19): ``/metrics`` parsed by Prometheus' own text parser, its
counters moving as calls, refusals and channel traffic happen; the probes
``/healthz`` and ``/readyz``; access to ``/metrics``; bounded labels."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import grpc
import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from aralnode import Node
from aralnode import _metrics as metrics_module
from aralnode import _proto as pb
from aralnode.service.auditing import DurableLog
from aralnode.store.audit import AuditLog
from tests.channel_helpers import FAST, linked
from tests.test_parity import BOOK, DELETE, GET, GONE, open_doors

MakeNode = Callable[..., Node]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_node(make_node: MakeNode, name: str = "ops", **overrides: object) -> Node:
    return make_node(name, http_port=0, **overrides)


async def scrape(
    node: Node, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's parser: (name,
    sorted labels) -> value."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as client:
        answer = await client.get("/metrics", headers=headers or {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return parse(answer.text)


def parse(text: str) -> Samples:
    """(name, sorted labels) -> value, by prometheus_client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_calls_on_every_door_move_the_counters(make_node: MakeNode) -> None:
    node = http_node(make_node)
    async with node:
        before = await scrape(node)
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(3):
                answer = await client.post(
                    "/v1/invoke",
                    json={"call": {"capability": "demo.echo", "parameters": {"text": "hi"}}},
                )
                assert answer.status_code == 200
            missing = await client.post(
                "/v1/invoke", json={"call": {"capability": "made.up", "parameters": {}}}
            )
            assert missing.status_code == 404
        async with grpc.aio.insecure_channel(node.address) as channel:
            invoke = channel.unary_unary(
                f"/{pb.AGENT_NODE_SERVICE_NAME}/Invoke",
                request_serializer=pb.InvokeRequest.SerializeToString,
                response_deserializer=pb.InvokeResponse.FromString,
            )
            request = pb.InvokeRequest()
            request.call.capability = "demo.add"
            request.call.parameters.update({"a": 1, "b": 2})
            await invoke(request, timeout=10)
        async with (
            streamable_http_client(f"{base}/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            result = await session.call_tool("demo.echo", {"text": "via mcp"})
            assert not result.is_error
        after = await scrape(node)
    calls = "aralnode_calls_total"
    ok = {"direction": "invoke", "outcome": "ok"}
    assert (
        value(after, calls, door="rest", capability="demo.echo", **ok)
        - value(before, calls, door="rest", capability="demo.echo", **ok)
        == 3
    )
    assert value(after, calls, door="grpc", capability="demo.add", **ok) == 1
    assert value(after, calls, door="mcp", capability="demo.echo", **ok) == 1
    # A made-up capability id is never a label of its own.
    assert (
        value(
            after, calls, door="rest", capability="unknown", direction="invoke", outcome="not_found"
        )
        == 1
    )
    assert not any("made.up" in str(labels) for _, labels in after)
    histogram = "aralnode_call_duration_seconds_count"
    assert value(after, histogram, door="rest", capability="demo.echo") >= 3
    assert value(after, "aralnode_calls_in_flight") == 0


async def test_refusals_and_governance_decisions_are_counted(make_node: MakeNode) -> None:
    node = http_node(make_node, rate_limit_per_address="2/s, burst 2")
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        statuses = []
        async with httpx.AsyncClient(base_url=base) as client:
            for _ in range(4):
                answer = await client.post(
                    "/v1/invoke",
                    json={"call": {"capability": "demo.echo", "parameters": {"text": "x"}}},
                )
                statuses.append(answer.status_code)
        assert 429 in statuses
        refused = statuses.count(429)
        samples = await scrape_allowed(node)
    assert value(samples, "aralnode_ratelimit_refusals_total", limit="address") == refused
    assert value(
        samples, "aralnode_calls_total",
        door="rest", capability="demo.echo", direction="invoke", outcome="rate_limit_exceeded",
    ) == refused  # fmt: skip


async def scrape_allowed(node: Node) -> Samples:
    """The page ``/metrics`` serves, made in-process: over HTTP a scrape takes a
    rate-limit token like any call, and this test just spent them."""
    render = node.parts.http.metrics
    assert render is not None
    body, _ = render()
    return parse(body.decode())


async def test_channel_traffic_moves_the_channel_counters(make_node: MakeNode) -> None:
    a, b = http_node(make_node, "alpha", **FAST), http_node(make_node, "beta", **FAST)
    async with a, b:
        await linked(a, b)
        n = 25
        async with b.subscribe("tick") as sub:
            for i in range(n):
                await a.notify(b.node_id, "tick", {"i": i})
            got = 0
            async for _ in sub:
                got += 1
                if got == n:
                    break
        assert a.channels is not None
        assert await a.channels.flush(b.node_id, 10)  # everything acked
        sent, received = await scrape(a), await scrape(b)
    assert value(sent, "aralnode_channel_messages_total", direction="sent") >= n
    assert value(sent, "aralnode_channel_acks_total") >= n
    assert value(sent, "aralnode_channel_outbox_messages") == 0
    assert value(received, "aralnode_channel_messages_total", direction="received") >= n
    assert value(received, "aralnode_channel_batches_total") >= 1
    assert value(sent, "aralnode_peers", state="connected") == 1
    assert (
        value(sent, "aralnode_handshakes_total", result="accepted")
        + value(received, "aralnode_handshakes_total", result="accepted")
        >= 1
    )
    # Every notification judged on both ends, as the audit log sees it.
    assert value(
        received, "aralnode_calls_total",
        door="channel", capability="tick", direction="receive", outcome="ok",
    ) == n  # fmt: skip


async def test_probes_say_live_and_ready_and_not_ready_when_audit_fails(
    make_node: MakeNode,
) -> None:
    node = http_node(make_node, audit=True)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            live = await client.get("/healthz")
            ready = await client.get("/readyz")
            assert (live.status_code, live.json()["status"]) == (200, "ok")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "checks": dict.fromkeys(("serving", "grpc", "http", "discovery", "audit"), True),
            }
            assert await node.invoke("demo.add", {"a": 1, "b": 2}) == 3  # on record
            installed = node.pipeline.stages.audit.log
            assert isinstance(installed, DurableLog)
            store = installed.store
            assert isinstance(store, AuditLog)

            def read_only(db: sqlite3.Connection) -> None:
                db.execute("PRAGMA query_only = 1")

            store.test_hook = read_only
            refused = await client.post(
                "/v1/invoke",
                json={"call": {"capability": "demo.echo", "parameters": {"text": "x"}}},
            )
            assert refused.status_code == 503
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"]["audit"] is False
            assert (await client.get("/healthz")).status_code == 200  # alive all the same
        samples = await scrape(node)
    assert value(samples, "aralnode_audit_failed") == 1
    assert value(samples, "aralnode_audit_records_total") >= 1


async def test_metrics_need_the_read_scope(make_node: MakeNode) -> None:
    node = http_node(make_node, deny_by_default=True)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 403
        assert refused.json()["error"]["reason"]
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
    guarded = http_node(make_node, "guarded", listing_requires_auth=True)
    async with guarded, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{guarded.http_port}/metrics"
        assert (await client.get(url)).status_code == 401


async def test_metrics_can_be_turned_off(make_node: MakeNode) -> None:
    node = http_node(make_node, metrics=False)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/readyz")).status_code == 200


async def test_capability_labels_are_bounded(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_CAPABILITY_LABELS", 3)
    a, b = http_node(make_node, "alpha", **FAST), http_node(make_node, "beta", **FAST)
    async with a, b:
        await linked(a, b)
        names = [f"event{i}" for i in range(8)]  # a peer names its events
        async with b.subscribe() as sub:
            for name in names:
                await a.notify(b.node_id, name, {})
            got = 0
            async for _ in sub:
                got += 1
                if got == len(names):
                    break
        samples = await scrape(b)
    labels = {
        dict(labels)["capability"]
        for (name, labels) in samples
        if name == "aralnode_calls_total" and dict(labels).get("door") == "channel"
    }
    assert "other" in labels
    assert len(labels - {"other"}) <= 3


def test_a_failing_metric_never_fails_the_call() -> None:
    from prometheus_client import CollectorRegistry

    from aralnode.core.audit import AuditRecord

    calls = metrics_module.CallMetrics(CollectorRegistry())
    record = AuditRecord(
        door="rest", caller="x", principal="x", action="demo.echo", direction="invoke",
        peer="", trace_id="t", decision="", outcome="ok", duration_ms=float("nan"),
    )  # fmt: skip
    calls.write(record)  # a NaN duration: no bucket takes it; we never raise
    calls.calls = None  # type: ignore[assignment]  # broken beyond repair
    calls._keys.clear()
    calls.write(record)
    assert calls.flags == 0


@pytest.mark.parametrize(
    ("capability", "outcome"),
    [(GET, "ok"), (DELETE, "governance_blocked"), (GONE, "not_found")],
    ids=["result", "governance-block", "not-found"],
)
async def test_every_door_is_counted_alike(
    make_node: MakeNode, capability: str, outcome: str
) -> None:
    """The parity scenario, seen by ``/metrics``: each door's call counted once,
    under that door's label, with the outcome every door gave."""
    async with open_doors(make_node) as doors:
        before = await scrape(doors.node)
        called: dict[str, int] = {}
        for door in doors.all():
            await door.call(capability, BOOK)
            label = DOOR_LABEL[door.name]
            called[label] = called.get(label, 0) + 1
        after = await scrape(doors.node)
    shown = "unknown" if outcome == "not_found" else capability
    counted = {
        dict(labels)["door"]: after[(name, labels)] - before.get((name, labels), 0.0)
        for (name, labels) in after
        if name == "aralnode_calls_total"
        and dict(labels)["capability"] == shown
        and dict(labels)["outcome"] == outcome
        and dict(labels)["direction"] == "invoke"
    }
    assert {door: n for door, n in counted.items() if n} == called


DOOR_LABEL = {
    "grpc-invoke": "grpc", "grpc-method": "grpc", "rest-route": "rest", "rest-invoke": "rest",
    "mcp": "mcp", "ws": "ws", "channel": "channel", "local": "local", "a2a": "a2a",
    "aral-invoke": "rest", "aral-message": "rest",  # the ARAL REST surface is a REST door
}  # fmt: skip
