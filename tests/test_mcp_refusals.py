"""What the SDK's streamable HTTP transport refused itself at /mcp (from review, after
an attack probe): an unknown or ended session (404), a request that needs a session
and names none (400), a wrong Content-Type (400, or 415), a wrong Accept (406), a
method /mcp does not take (405) were answered in the SDK's body, with no trace id and
no record; the node's own 429 ``MCP_SESSIONS_OPENING`` was not on record either. Each
is now the node's refusal: the SDK's status, a JSON-RPC error carrying the seed's
error object, an audit record with the caller, counted."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from aralnode import Node
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify
from tests.test_hostile_mcp import ACCEPT, INIT
from tests.test_jwt import guarded
from tests.test_sessions import keys_for, on, open_session

LIST = {"jsonrpc": "2.0", "id": 7, "method": "tools/list"}
NOTE = {"jsonrpc": "2.0", "method": "notifications/initialized"}
STREAM = {"Accept": "text/event-stream"}
MADE_UP = "0123456789abcdef0123456789abcdef"

Ask = Callable[[httpx.AsyncClient, str, dict[str, str]], Awaitable[httpx.Response]]


async def unknown_post(http: httpx.AsyncClient, _session: str, me: dict[str, str]) -> Any:
    return await http.post("/mcp", json=LIST, headers=on(MADE_UP, me))


async def unknown_get(http: httpx.AsyncClient, _session: str, me: dict[str, str]) -> Any:
    return await http.get("/mcp", headers={**on(MADE_UP, me), **STREAM})


async def ended(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
    closed = await http.delete("/mcp", headers=on(session, me))
    assert closed.status_code == 200, closed.text
    return await http.post("/mcp", json=LIST, headers=on(session, me))


async def no_session_post(http: httpx.AsyncClient, _session: str, me: dict[str, str]) -> Any:
    return await http.post("/mcp", json=LIST, headers={**ACCEPT, **me})


async def no_session_note(http: httpx.AsyncClient, _session: str, me: dict[str, str]) -> Any:
    return await http.post("/mcp", json=NOTE, headers={**ACCEPT, **me})


async def no_session_get(http: httpx.AsyncClient, _session: str, me: dict[str, str]) -> Any:
    return await http.get("/mcp", headers={**STREAM, **me})


async def no_session_delete(http: httpx.AsyncClient, _session: str, me: dict[str, str]) -> Any:
    return await http.delete("/mcp", headers=me)


async def typed(http: httpx.AsyncClient, session: str, me: dict[str, str], kind: str) -> Any:
    body = b'{"jsonrpc": "2.0", "id": 7, "method": "tools/list"}'
    headers = {**on(session, me), "content-type": kind}
    return await http.post("/mcp", content=body, headers=headers)


async def text_body(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
    return await typed(http, session, me, "text/plain")


async def json_seq_body(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
    return await typed(http, session, me, "application/json-seq")


async def post_takes_no_json(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
    return await http.post("/mcp", json=LIST, headers={**on(session, me), **STREAM})


async def get_takes_no_stream(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
    return await http.get("/mcp", headers={**on(session, me), "Accept": "application/json"})


async def put(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
    return await http.put("/mcp", json=LIST, headers=on(session, me))


CASES: list[tuple[Ask, int, str, str]] = [
    (unknown_post, 404, "not_found", "SESSION_UNKNOWN"),
    (unknown_get, 404, "not_found", "SESSION_UNKNOWN"),
    (ended, 404, "not_found", "SESSION_UNKNOWN"),
    (no_session_post, 400, "invalid_request", "SESSION_REQUIRED"),
    (no_session_note, 400, "invalid_request", "SESSION_REQUIRED"),
    (no_session_get, 400, "invalid_request", "SESSION_REQUIRED"),
    (no_session_delete, 400, "invalid_request", "SESSION_REQUIRED"),
    (text_body, 400, "invalid_request", "UNSUPPORTED_MEDIA_TYPE"),
    (json_seq_body, 415, "unsupported_media_type", "UNSUPPORTED_MEDIA_TYPE"),
    (post_takes_no_json, 406, "not_acceptable", "NOT_ACCEPTABLE"),
    (get_takes_no_stream, 406, "not_acceptable", "NOT_ACCEPTABLE"),
    (put, 405, "method_not_allowed", "METHOD_NOT_ALLOWED"),
]


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


@pytest.mark.parametrize(("ask", "status", "outcome", "reason"), CASES,
                         ids=[case[0].__name__ for case in CASES])  # fmt: skip
async def test_what_the_sdk_refused_is_the_nodes_refusal(
    make_node: Callable[..., Node], ask: Ask, status: int, outcome: str, reason: str
) -> None:
    node = make_node("mcp-refusals", demo=False, http_port=0, audit=True)
    guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        me = {"x-api-key": alice}
        counters = node.pipeline.counters
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await open_session(http, me)
            before = counters[f"call.{outcome}"]
            r = await ask(http, session, me)
            assert_refused(r, status, outcome, reason, -32600)
            if status == 405:
                assert r.headers["allow"] == "GET, POST, DELETE"
            # The session (where there is one) still serves.
            if ask not in (ended, unknown_post, unknown_get):
                ok = await http.post("/mcp", json=LIST, headers=on(session, me))
                assert ok.status_code == 200, ok.text
        assert counters[f"call.{outcome}"] - before == 1
    records = refusals_on_record(node)
    assert [(r.action, r.outcome, r.reason, r.caller) for r in records] == [
        ("aral.http/mcp", outcome, reason, "alice")
    ], records
    assert [r.trace_id for r in records] == [r.headers["x-trace-id"]]


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


async def test_a_modern_request_is_left_to_the_sdk(make_node: Callable[..., Node]) -> None:
    """A 2026-era request goes to the SDK's per-request path, which has no sessions:
    a session id it carries is not looked up, and it is served."""
    modern = "2026-07-28"
    meta = {
        "io.modelcontextprotocol/protocolVersion": modern,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    headers = {
        **ACCEPT,
        "mcp-session-id": MADE_UP,
        "mcp-protocol-version": modern,
        "mcp-method": "tools/list",
    }
    node = make_node("mcp-modern", http_port=0)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.post("/mcp", json={**LIST, "params": {"_meta": meta}}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["tools"], r.text


async def test_an_initialize_without_a_session_still_opens_one(
    make_node: Callable[..., Node],
) -> None:
    """The one request that needs no session id, with the Accept and Content-Type
    values clients send (parameters, wildcards), opens a session as before."""
    node = make_node("mcp-opens", http_port=0)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for accept, content_type in [
                ("application/json, text/event-stream", "application/json"),
                ("*/*", "application/json; charset=utf-8"),
                ("application/*;q=0.9", "application/json"),
            ]:
                headers = {"accept": accept, "content-type": content_type}
                opened = await http.post("/mcp", content=json.dumps(INIT), headers=headers)
                assert opened.status_code == 200, (accept, content_type, opened.text)
                session = opened.headers["mcp-session-id"]
                listed = await http.post("/mcp", json=LIST, headers=on(session, {}))
                assert listed.status_code == 200, listed.text
                assert listed.json()["result"]["tools"], listed.text
