"""Sessions bound to their principal (issue 15, ident; PRO-017): an MCP session and
a WebSocket belong to whoever opened them; another principal (or nobody, where the
opener showed credentials) is refused on it; they expire; a revoked key or an
expired token stops them at the next message."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify
from tests.test_hostile_mcp import ACCEPT, INIT, MCP_VERSION
from tests.test_jwt import guarded


def keys_for(node: Node, *principals: str) -> list[str]:
    store = ApiKeyStore(node.config.apikeys_path)
    return [store.create(p, scopes=["vault:read"])[0] for p in principals]


def revoke(node: Node, key: str) -> None:
    ApiKeyStore(node.config.apikeys_path).revoke(key.split("_")[1])


async def open_session(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    opened = await http.post("/mcp", json=INIT, headers={**ACCEPT, **headers})
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    done = await http.post("/mcp", json=note, headers=on(session, headers))
    assert done.status_code == 202, done.text
    return session


def on(session: str, headers: dict[str, str]) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session, "mcp-protocol-version": MCP_VERSION, **headers}


async def tool_call(
    http: httpx.AsyncClient, session: str, headers: dict[str, str], name: str = "vault.read"
) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": name, "arguments": {}},
    }
    return await http.post("/mcp", json=body, headers=on(session, headers))


def reason(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    return str(body["error"]["data"]["reason"])


async def test_an_mcp_session_is_its_openers_alone(make_node: Callable[..., Node]) -> None:
    node = make_node("mcp-bound", demo=False, http_port=0)
    runs = guarded(node)
    async with node:
        alice, bob = keys_for(node, "alice", "bob")
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await open_session(http, {"x-api-key": alice})
            ok = await tool_call(http, session, {"authorization": f"Bearer {alice}"})
            assert ok.status_code == 200, ok.text
            assert ok.json()["result"]["structuredContent"] == {"caller": "alice"}
            # Another principal with a good key of its own: refused on this session.
            other = await tool_call(http, session, {"x-api-key": bob})
            assert (other.status_code, reason(other)) == (403, "SESSION_PRINCIPAL_MISMATCH")
            # Nobody: the opener showed credentials, so must every request.
            bare = await tool_call(http, session, {})
            assert (bare.status_code, reason(bare)) == (401, "SESSION_NEEDS_CREDENTIALS")
            assert "resource_metadata=" in bare.headers["www-authenticate"]
            # Revoked: the session is the key's no more, at the next request.
            revoke(node, alice)
            gone = await tool_call(http, session, {"x-api-key": alice})
            assert (gone.status_code, reason(gone)) == (401, "API_KEY_REVOKED")
            # An anonymous session is nobody's: a credential may not take it over.
            anonymous = await open_session(http, {})
            taken = await tool_call(http, anonymous, {"x-api-key": bob})
            assert (taken.status_code, reason(taken)) == (403, "SESSION_PRINCIPAL_MISMATCH")
    assert runs == ["alice"]


async def test_refused_session_requests_are_audited(make_node: Callable[..., Node]) -> None:
    """From the attack probe: another principal's key, or none, on alice's session
    was refused with no record, while a key that did not verify was on record. Each
    is audited now, with who asked, the trace its answer named, and counted."""
    node = make_node("mcp-audited", demo=False, http_port=0, audit=True)
    guarded(node)
    async with node:
        alice, bob = keys_for(node, "alice", "bob")
        counters = node.pipeline.counters
        before = (counters["call.forbidden"], counters["call.unauthorized"])
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await open_session(http, {"x-api-key": alice})
            asked = [
                await tool_call(http, session, {"x-api-key": bob}),
                await tool_call(http, session, {}),
                await tool_call(http, session, {"x-api-key": "aral_garbage"}),
            ]
        assert [(r.status_code, reason(r)) for r in asked] == [
            (403, "SESSION_PRINCIPAL_MISMATCH"),
            (401, "SESSION_NEEDS_CREDENTIALS"),
            (401, "API_KEY_INVALID"),
        ]
        after = (counters["call.forbidden"], counters["call.unauthorized"])
        assert (after[0] - before[0], after[1] - before[1]) == (1, 2)
    directory = node.config.resolved_data_dir / "audit"
    assert verify(directory, node.identity.public_key).problem is None
    records = [r for _, r in read_records(directory) if r.door == "mcp" and r.reason]
    assert [(r.action, r.outcome, r.reason, r.caller) for r in records] == [
        ("aral.http/mcp", "forbidden", "SESSION_PRINCIPAL_MISMATCH", "bob"),
        ("aral.http/mcp", "unauthorized", "SESSION_NEEDS_CREDENTIALS", ""),
        ("aral.http/mcp", "unauthorized", "API_KEY_INVALID", ""),
    ], records
    assert [r.trace_id for r in records] == [r.headers["x-trace-id"] for r in asked]


async def test_an_mcp_session_expires(make_node: Callable[..., Node]) -> None:
    node = make_node("mcp-ttl", demo=False, http_port=0, session_ttl_seconds=60)
    runs = guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        assert node._parts is not None
        owners = node._parts.http.gate.owners
        clock = [0.0]
        owners.now = lambda: clock[0]  # the session's own clock, moved by the test
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await open_session(http, {"x-api-key": alice})
            clock[0] = 59.0
            assert (await tool_call(http, session, {"x-api-key": alice})).status_code == 200
            clock[0] = 60.0
            expired = await tool_call(http, session, {"x-api-key": alice})
            assert (expired.status_code, reason(expired)) == (404, "SESSION_EXPIRED")
            # Ended, not only refused: the SDK no longer holds it.
            after = await tool_call(http, session, {"x-api-key": alice})
            assert (after.status_code, reason(after)) == (404, "SESSION_UNKNOWN")
            # A new session opens as ever.
            fresh = await open_session(http, {"x-api-key": alice})
            assert (await tool_call(http, fresh, {"x-api-key": alice})).status_code == 200
            # The owners table is bounded: a live session whose record it dropped is
            # refused (fail closed), not left to whoever names it.
            owners.size = 1
            await open_session(http, {"x-api-key": alice})
            dropped = await tool_call(http, fresh, {"x-api-key": alice})
            assert (dropped.status_code, reason(dropped)) == (404, "SESSION_EXPIRED")
    assert runs == ["alice", "alice"]


async def ws_invoke(ws: Any, msg_id: int) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "invoke", "id": msg_id, "capability": "vault.read"}))
    while True:
        reply: dict[str, Any] = json.loads(await ws.recv())
        if reply.get("id") == msg_id:
            return reply


async def test_a_websocket_ends_with_its_key_and_its_lifetime(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ws-bound", demo=False, http_port=0)
    runs = guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        async with connect(url, additional_headers={"x-api-key": alice}, open_timeout=10) as ws:
            assert (await ws_invoke(ws, 1))["result"] == {"caller": "alice"}
            revoke(node, alice)
            refused = await ws_invoke(ws, 2)
            assert refused["type"] == "error"
            assert refused["error"]["reason"] == "API_KEY_REVOKED"
        assert runs == ["alice"]
        (bob,) = keys_for(node, "bob")
        assert node._parts is not None
        node._parts.http.ws.session_ttl = 0.0  # every socket is past its lifetime at once
        async with connect(url, additional_headers={"x-api-key": bob}, open_timeout=10) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws_invoke(ws, 3)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008
    assert runs == ["alice"]
