"""What the SDK's streamable HTTP transport refused itself at /mcp (from review, after
an attack probe): an unknown or ended session (404), a request that needs a session
and names none (400), a wrong Content-Type (400, or 415), a wrong Accept (406), a
method /mcp does not take (405) were answered in the SDK's body, with no trace id and
no record; the node's own 429 ``MCP_SESSIONS_OPENING`` was not on record either. Each
is now the node's refusal: the SDK's status, a JSON-RPC error carrying the seed's
error object, an audit record with the caller, counted. So is what the SDK refuses
once it reads the body (no JSON, no JSON-RPC message it can validate, a method it
does not have), which it answered unrecorded too (``_mcp_requests.watching``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from aralnode import Node
from aralnode.bridge._jsonrpc import SdkAnswer
from aralnode.bridge._mcp_requests import sdk_refusal, watching
from aralnode.core.errors import AralError
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


CASES: list[tuple[Ask, int, str, str, int]] = [
    (unknown_post, 404, "not_found", "SESSION_UNKNOWN", -32600),
    (unknown_get, 404, "not_found", "SESSION_UNKNOWN", -32600),
    (ended, 404, "not_found", "SESSION_UNKNOWN", -32600),
    (no_session_post, 400, "invalid_request", "SESSION_REQUIRED", -32600),
    (no_session_note, 400, "invalid_request", "SESSION_REQUIRED", -32600),
    (no_session_get, 400, "invalid_request", "SESSION_REQUIRED", -32600),
    (no_session_delete, 400, "invalid_request", "SESSION_REQUIRED", -32600),
    (text_body, 400, "invalid_request", "UNSUPPORTED_MEDIA_TYPE", -32600),
    (json_seq_body, 415, "unsupported_media_type", "UNSUPPORTED_MEDIA_TYPE", -32600),
    (post_takes_no_json, 406, "not_acceptable", "NOT_ACCEPTABLE", -32600),
    (get_takes_no_stream, 406, "not_acceptable", "NOT_ACCEPTABLE", -32600),
    (put, 405, "method_not_allowed", "METHOD_NOT_ALLOWED", -32600),
]


def posting(name: str, body: bytes) -> Ask:
    """A POST of ``body`` on the session (a body the SDK would read, or the node first)."""

    async def ask(http: httpx.AsyncClient, session: str, me: dict[str, str]) -> Any:
        headers = {**on(session, me), "content-type": "application/json"}
        return await http.post("/mcp", content=body, headers=headers)

    ask.__name__ = name
    return ask


BAD = (400, "invalid_request")
BODY_CASES: list[tuple[Ask, int, str, str, int]] = [
    (posting("not_json", b"{not json"), *BAD, "MALFORMED_JSON", -32700),
    (posting("no_message", b'{"foo": 1}'), *BAD, "INVALID_JSONRPC_REQUEST", -32600),
    (posting("batch", b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]'),
     *BAD, "INVALID_JSONRPC_REQUEST", -32600),
    (posting("old_version", b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}'),
     *BAD, "INVALID_JSONRPC_REQUEST", -32600),
    (posting("params_not_an_object",
             b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "x"}'),
     *BAD, "INVALID_JSONRPC_REQUEST", -32600),
    # From review: what the node's parser refuses is refused before the SDK reads it
    # (the SDK's parser takes UTF-16, where a member given twice went unseen; an id
    # past 2**64 or a lone surrogate was lost, the answer then unrecorded or a 500).
    (posting("utf16", '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'.encode("utf-16")),
     *BAD, "MALFORMED_JSON", -32700),
    (posting("id_past_2_64",
             b'{"jsonrpc": "2.0", "id": 18446744073709551617, "method": "no/pe"}'),
     *BAD, "NOT_A_JSON_NUMBER", -32602),
    (posting("lone_surrogate_id", b'{"jsonrpc": "2.0", "id": "\\udc00", "method": "no/pe"}'),
     *BAD, "MALFORMED_JSON", -32700),
    # From the MCP conformance run: a method with an id no request has (MCP: a string
    # or an integer, never null) was taken as a notification -- 202, never answered,
    # no record.
    (posting("null_id", b'{"jsonrpc": "2.0", "id": null, "method": "tools/list"}'),
     *BAD, "INVALID_JSONRPC_REQUEST", -32600),
    (posting("fractional_id", b'{"jsonrpc": "2.0", "id": 1.5, "method": "tools/list"}'),
     *BAD, "INVALID_JSONRPC_REQUEST", -32600),
    (posting("boolean_id", b'{"jsonrpc": "2.0", "id": true, "method": "tools/list"}'),
     *BAD, "INVALID_JSONRPC_REQUEST", -32600),
]  # fmt: skip


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
    # The SDK's pydantic words, without what names the library (a link with its
    # version) or echoes the input (an attack probe read them).
    assert "pydantic" not in r.text, r.text
    assert "input_value" not in r.text, r.text
    assert "input_type" not in r.text, r.text
    assert data["trace_id"] == r.headers["x-trace-id"]
    assert data["timestamp"].endswith("Z")


def refusals_on_record(node: Node) -> list[Any]:
    directory = node.config.resolved_data_dir / "audit"
    assert verify(directory, node.identity.public_key).problem is None
    return [r for _, r in read_records(directory) if r.door == "mcp" and r.reason]


@pytest.mark.parametrize(("ask", "status", "outcome", "reason", "code"), CASES + BODY_CASES,
                         ids=[case[0].__name__ for case in CASES + BODY_CASES])  # fmt: skip
async def test_what_the_sdk_refused_is_the_nodes_refusal(
    make_node: Callable[..., Node], ask: Ask, status: int, outcome: str, reason: str, code: int
) -> None:
    """Each refusal the SDK made unrecorded (or would have: a body the node's parser
    refuses first) is the node's: its status and code, on record with the caller,
    counted; the session, where there is one, still serves."""
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
            assert_refused(r, status, outcome, reason, code)
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


async def asked(make_node: Callable[..., Node], request: dict[str, Any]) -> tuple[Node, Any]:
    """``request`` posted by alice on her session of a node with the audit log on;
    the node (stopped) and the answer."""
    node = make_node("mcp-asked", demo=False, http_port=0, audit=True)
    guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        me = {"x-api-key": alice}
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await open_session(http, me)
            return node, await http.post("/mcp", json=request, headers=on(session, me))


async def test_a_method_the_server_does_not_have_is_refused_on_record(
    make_node: Callable[..., Node],
) -> None:
    """A JSON-RPC method the MCP server does not have: JSON-RPC's -32601 in a 200 for
    the request's id, as the SDK answers it, now with the seed's error object, on
    record with the caller."""
    node, r = await asked(make_node, {"jsonrpc": "2.0", "id": "q-9", "method": "tools/nope"})
    assert r.status_code == 200, r.text
    error = r.json()["error"]
    assert (r.json()["id"], error["code"]) == ("q-9", -32601), r.text
    assert (error["data"]["code"], error["data"]["reason"]) == ("not_found", "METHOD_NOT_FOUND")
    assert error["data"]["trace_id"] == r.headers["x-trace-id"]
    records = refusals_on_record(node)
    assert [(r.action, r.outcome, r.reason, r.caller) for r in records] == [
        ("aral.http/mcp", "not_found", "METHOD_NOT_FOUND", "alice")
    ], records


async def test_a_tool_that_is_not_there_says_so_with_the_seeds_error_object(
    make_node: Callable[..., Node],
) -> None:
    """An unknown tool stays the SDK's -32602 ``unknown tool '…'`` (clients match it),
    now with the seed's error object as its data, as every refusal on /mcp; on record
    once (not again as a refusal of the SDK's)."""
    ask = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
           "params": {"name": "no.such.tool", "arguments": {}}}  # fmt: skip
    node, r = await asked(make_node, ask)
    error = r.json()["error"]
    assert (r.json()["id"], error["code"], error["message"]) == (
        4, -32602, "unknown tool 'no.such.tool'"
    ), r.text
    assert (error["data"]["code"], error["data"]["reason"]) == ("not_found", "CAPABILITY_NOT_FOUND")
    directory = node.config.resolved_data_dir / "audit"
    records = [r for _, r in read_records(directory) if r.trace_id == error["data"]["trace_id"]]
    assert [(r.action, r.outcome, r.reason, r.caller) for r in records] == [
        ("no.such.tool", "not_found", "CAPABILITY_NOT_FOUND", "alice")
    ], records


def test_only_the_sdks_own_refusals_are_taken_for_refusals() -> None:
    """A result that holds the words of an error, an error the node made (its data
    is the seed's error object), a failure, another status: not the SDK's refusals.
    An answer to the request is told by the request's id, as either of the SDK's
    paths writes it; an answer to no request by ``id`` null, first or last."""
    result = b'{"jsonrpc":"2.0","id":1,"result":{"error":{"code":-32601,"message":"x"}}}'
    nodes = (b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"x",'
             b'"data":{"reason":"R","trace_id":"t"}}}')  # fmt: skip
    assert sdk_refusal(200, result, 1) is None
    assert sdk_refusal(200, nodes, 1) is None
    assert sdk_refusal(400, nodes, 1) is None
    assert sdk_refusal(202, b"", 1) is None
    assert sdk_refusal(500, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603}}') is None
    failed = b'{"jsonrpc":"2.0","id":4,"error":{"code":-32603,"message":"x"}}'
    assert sdk_refusal(200, failed, 4) is None
    # The node's unknown tool, in a 400 at later protocol versions: its own error.
    unknown = (b'{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"unknown tool \'x\'",'
               b'"data":{"code":"not_found","reason":"CAPABILITY_NOT_FOUND",'
               b'"trace_id":"t"}}}')  # fmt: skip
    assert sdk_refusal(400, unknown, 3) is None

    def refused(status: int, body: bytes, request_id: Any = None) -> tuple[str, Any, int]:
        found = sdk_refusal(status, body, request_id)
        assert found is not None, body
        return found[0].reason, found[1], getattr(found[0], "rpc_code", None)

    missing = b'{"jsonrpc":"2.0","id":"a\\"b","error":{"code":-32601,"message":"Method not found"}}'
    assert refused(200, missing, 'a"b') == ("METHOD_NOT_FOUND", 'a"b', -32601)
    # An id the node read otherwise is another request's answer: not this one's.
    assert sdk_refusal(200, missing, "ab") is None
    # Text ids in both of the SDK's spellings (UTF-8 as it is; escaped, by the 2026 path).
    for spelled in ('"é"'.encode(), b'"\\u00e9"'):
        body = b'{"jsonrpc":"2.0","id":' + spelled + b',"error":{"code":-32602,"message":"no"}}'
        assert refused(200, body, "é") == ("MCP_REQUEST_REFUSED", "é", -32602)
    gone = b'{"jsonrpc":"2.0","id":6,"error":{"code":-32601,"message":"no"}}'
    assert refused(404, gone, 6)[0] == "METHOD_NOT_FOUND"  # the 2026 path's missing method
    assert refused(404, b"")[0] == "SESSION_UNKNOWN"
    assert refused(406, b"")[0] == "NOT_ACCEPTABLE"
    last = b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
    assert refused(400, last) == ("MALFORMED_JSON", None, -32700)
    assert refused(400, b"<html>no</html>") == ("INVALID_JSONRPC_REQUEST", None, -32600)
    # MCP's own refusal keeps its code and the data its clients read, id or no id.
    version = (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32022,"message":"Unsupported",'
               b'"data":{"supported":["2026-07-28"],"requested":"2099-01-01"}}}')  # fmt: skip
    found = sdk_refusal(400, version)
    assert found is not None
    assert (found[0].reason, getattr(found[0], "rpc_code", None)) == ("MCP_REQUEST_REFUSED", -32022)
    assert found[2].data == {"supported": ["2026-07-28"], "requested": "2099-01-01"}
    assert found[2].status == 400


async def test_answers_that_cannot_be_refusals_go_on_at_once() -> None:
    """An event stream's start goes on before its first event (nothing held); a JSON
    answer that is no refusal goes on whole; a refusal goes to the node, with the
    session header the SDK's answer carried, and what follows it nowhere."""
    sent: list[dict[str, Any]] = []
    refused: list[tuple[AralError, Any, SdkAnswer]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def refuse(exc: AralError, request_id: Any, kept: SdkAnswer) -> None:
        refused.append((exc, request_id, kept))

    stream = watching(send, refuse, 1)
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream")]}  # fmt: skip
    await stream(start)
    assert sent == [start]
    await stream({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    assert len(sent) == 2

    sent.clear()
    plain = watching(send, refuse, 1)
    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"application/json")]}  # fmt: skip
    await plain(start)
    assert sent == []  # held until its body says what it is
    body = {"type": "http.response.body", "body": b'{"jsonrpc":"2.0","id":1,"result":{}}'}
    await plain(body)
    assert sent == [start, body]
    assert refused == []

    sent.clear()
    opening = watching(send, refuse, 0)
    await opening({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"mcp-session-id", b"abc")]})  # fmt: skip
    bad = b'{"jsonrpc":"2.0","id":0,"error":{"code":-32602,"message":"bad params"}}'
    await opening({"type": "http.response.body", "body": bad})
    await opening({"type": "http.response.body", "body": b""})
    assert sent == []
    assert [(e.reason, e.message, rid, k.status, k.headers) for e, rid, k in refused] == [
        ("MCP_REQUEST_REFUSED", "bad params", 0, 200, ((b"mcp-session-id", b"abc"),))
    ]


async def test_the_sdks_refusals_keep_what_its_clients_read(
    make_node: Callable[..., Node],
) -> None:
    """From review: a version the server does not speak (the 2026 path's -32022)
    carries the versions it does in its data, which the official client reads to
    negotiate again: kept beside the seed's error object. An ``initialize`` the SDK
    refused still opened a session: its id comes back, so the client can end it. A
    body that is not JSON on the 2026 path (its ``id`` null comes last): refused on
    record too."""
    node = make_node("mcp-kept", demo=False, http_port=0, audit=True)
    guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        me = {**ACCEPT, "content-type": "application/json", "x-api-key": alice}
        meta = {"io.modelcontextprotocol/protocolVersion": "2099-01-01",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"}}  # fmt: skip
        discover = {"jsonrpc": "2.0", "id": 6, "method": "server/discover",
                    "params": {"_meta": meta}}  # fmt: skip
        future = {**me, "mcp-protocol-version": "2099-01-01", "mcp-method": "server/discover"}
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            version = await http.post("/mcp", json=discover, headers=future)
            init = {**INIT, "params": {"protocolVersion": "2025-06-18"}}  # no capabilities
            opened = await http.post("/mcp", json=init, headers=me)
            session = opened.headers.get("mcp-session-id", "")
            ended = await http.delete("/mcp", headers=on(session, {"x-api-key": alice}))
            modern = {**me, "mcp-protocol-version": "2026-07-28"}
            garbled = await http.post("/mcp", content=b"{not json", headers=modern)
    assert version.status_code == 400, version.text
    error = version.json()["error"]
    assert (version.json()["id"], error["code"]) == (6, -32022), version.text
    assert "2026-07-28" in error["data"]["supported"], error
    assert error["data"]["reason"] == "MCP_REQUEST_REFUSED"
    assert error["data"]["trace_id"] == version.headers["x-trace-id"]
    assert opened.json()["error"]["data"]["reason"] == "MCP_REQUEST_REFUSED", opened.text
    assert session, opened.headers
    assert ended.status_code == 200, ended.text
    assert garbled.status_code == 400, garbled.text
    assert garbled.json()["error"]["data"]["reason"] == "MALFORMED_JSON"
    records = refusals_on_record(node)
    assert [(r.action, r.reason, r.caller) for r in records] == [
        ("aral.http/mcp", "MCP_REQUEST_REFUSED", "alice"),
        ("aral.http/mcp", "MCP_REQUEST_REFUSED", "alice"),
        ("aral.http/mcp", "MALFORMED_JSON", "alice"),
    ], records
