"""The node's own 429 ``MCP_SESSIONS_OPENING`` on /mcp was answered in REST's error
shape instead of a JSON-RPC error, and left no audit record (from review, after an
attack probe). It is now answered as the node's other /mcp refusals are, on record
with the caller, counted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from aralnode import Node
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify
from tests.test_hostile_mcp import ACCEPT, INIT
from tests.test_jwt import guarded
from tests.test_sessions import keys_for


def assert_refused(r: httpx.Response, status: int, outcome: str, reason: str, code: int) -> None:
    """The node's refusal on /mcp: the status, a JSON-RPC error whose data is the
    seed's error object, under the trace id its headers name."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]
    body = r.json()
    assert (body["jsonrpc"], body["id"], body["error"]["code"]) == ("2.0", None, code), body
    data = body["error"]["data"]
    assert (data["code"], data["reason"]) == (outcome, reason), data
    assert data["message"] == body["error"]["message"]
    assert data["trace_id"] == r.headers["x-trace-id"]
    assert data["timestamp"].endswith("Z")


def refusals_on_record(node: Node) -> list[Any]:
    directory = node.config.resolved_data_dir / "audit"
    assert verify(directory, node.identity.public_key).problem is None
    return [r for _, r in read_records(directory) if r.door == "mcp" and r.reason]


async def test_sessions_opening_past_the_share_are_refused_on_record(
    make_node: Callable[..., Node],
) -> None:
    """A client opening more sessions at once than it may hold: 429
    ``MCP_SESSIONS_OPENING`` as the node's JSON-RPC refusal, with Retry-After, on
    record with its caller; the opening it waited on goes through."""
    node = make_node(
        "mcp-opening", demo=False, http_port=0, audit=True, mcp_max_sessions_per_client=1
    )
    guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        me = {**ACCEPT, "x-api-key": alice}
        assert node._parts is not None
        assert node._parts.http.mcp is not None
        manager = node._parts.http.mcp.sessions.manager
        handle = manager.handle_request
        entered, release = asyncio.Event(), asyncio.Event()

        async def held(scope: Any, receive: Any, send: Any) -> None:
            entered.set()  # the first opening waits here, counted as being opened
            await release.wait()
            await handle(scope, receive, send)

        manager.handle_request = held  # type: ignore[method-assign]
        counters = node.pipeline.counters
        before = counters["call.rate_limit_exceeded"]
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            first = asyncio.create_task(http.post("/mcp", json=INIT, headers=me))
            await asyncio.wait_for(entered.wait(), 10)
            manager.handle_request = handle  # type: ignore[method-assign]
            second = await http.post("/mcp", json=INIT, headers=me)
            release.set()
            opened = await asyncio.wait_for(first, 10)
        assert opened.status_code == 200, opened.text
        assert_refused(second, 429, "rate_limit_exceeded", "MCP_SESSIONS_OPENING", -32603)
        assert second.headers["retry-after"] == "1"
        assert counters["call.rate_limit_exceeded"] - before == 1
    records = refusals_on_record(node)
    assert [(r.action, r.outcome, r.reason, r.caller) for r in records] == [
        ("aral.http/mcp", "rate_limit_exceeded", "MCP_SESSIONS_OPENING", "alice")
    ], records
    assert [r.trace_id for r in records] == [second.headers["x-trace-id"]]
