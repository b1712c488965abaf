"""Listing is a call like any other (item 11): MCP ``tools/list``, REST and gRPC
``ListCapabilities`` and the WebSocket capabilities feed authenticate the caller,
are governed as ``aral.v1.AgentNode/ListCapabilities``, and list only what the
caller's scopes reach; ``/openapi.json`` and ``/docs`` answer authenticated callers
only when ``listing_requires_auth`` is set."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from aralnode import Node
from aralnode.core.context import CallContext
from aralnode.core.governance import Decision, Rule, RuleEvaluator
from aralnode.service.auth import Authenticated, Credentials
from aralnode.transport.grpc_client import NodeClient
from tests.hostile import DEMO
from tests.test_hostile_mcp import ACCEPT, INIT, MCP_VERSION

LIST_ACTION = "aral.v1.AgentNode/ListCapabilities"
TOKEN = {"x-token": "letmein"}


class HeaderToken:
    """``token-user`` with the scope ``secret:read`` for ``x-token: letmein``; anyone
    else as the node's own rules make them."""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        if ctx.metadata.get("x-token") == "letmein":
            return Authenticated("token-user", frozenset({"secret:read"}))
        return Authenticated()


def scoped_node(
    make_node: Callable[..., Node],
    name: str,
    governance: RuleEvaluator | None = None,
    **config: Any,
) -> Node:
    """A node (HTTP on) with ``vault.read``, which needs ``secret:read``, besides the demo."""
    base = make_node(name, http_port=0, demo=False, **config)
    node = Node(base.config, authenticator=HeaderToken(), governance=governance)
    node.load(DEMO)

    @node.capability(id="vault.read", scopes=("secret:read",))
    async def read() -> dict[str, str]:
        return {"pin": "1234"}

    return node


async def mcp_list(http: httpx.AsyncClient, headers: dict[str, str] | None = None) -> Any:
    """``tools/list`` in a fresh session: the JSON-RPC answer (``result`` or ``error``)."""
    extra = headers or {}
    opened = await http.post("/mcp", json=INIT, headers={**ACCEPT, **extra})
    assert opened.status_code == 200, opened.text
    session = {
        **ACCEPT,
        **extra,
        "mcp-session-id": opened.headers["mcp-session-id"],
        "mcp-protocol-version": MCP_VERSION,
    }
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    await http.post("/mcp", json=note, headers=session)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    answer = await http.post("/mcp", json=body, headers=session)
    assert answer.status_code == 200, answer.text
    return answer.json()


def tool_names(answer: Any) -> set[str]:
    assert "result" in answer, answer
    return {t["name"] for t in answer["result"]["tools"]}


async def test_tools_list_lists_only_what_the_caller_may_call(
    make_node: Callable[..., Node],
) -> None:
    """A capability that needs a scope is listed to callers holding it, on MCP, REST
    and gRPC alike; everything else is listed to everyone."""
    node = scoped_node(make_node, "scoped")
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        anonymous = tool_names(await mcp_list(http))
        assert "demo.echo" in anonymous
        assert "vault.read" not in anonymous
        assert "vault.read" in tool_names(await mcp_list(http, TOKEN))
        rest = (await http.get("/v1/capabilities")).json()["capabilities"]
        assert "vault.read" not in {c["id"] for c in rest}
        rest = (await http.get("/v1/capabilities", headers=TOKEN)).json()["capabilities"]
        assert "vault.read" in {c["id"] for c in rest}
        async with NodeClient(node.address) as client:
            listed = await client.capabilities()
        assert "vault.read" not in {c.id for c in listed.capabilities}
        assert "demo.echo" in {c.id for c in listed.capabilities}


async def test_tools_list_is_governed_and_authenticated(make_node: Callable[..., Node]) -> None:
    """A rule that blocks ListCapabilities blocks tools/list; a node that serves no
    anonymous caller lists nothing to one."""
    block = RuleEvaluator(
        rules=[Rule(id="no-list", decision=Decision.BLOCK, capabilities=frozenset({LIST_ACTION}))]
    )
    node = scoped_node(make_node, "blocked", governance=block)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        answer = await mcp_list(http, TOKEN)
        assert "error" in answer, answer
        assert answer["error"]["data"]["code"] == "governance_blocked"
    closed = scoped_node(make_node, "closed", allow_unsigned=False)
    async with closed, httpx.AsyncClient(base_url=f"http://127.0.0.1:{closed.http_port}") as http:
        # Refused at the door, before any session: 401, as the MCP authorization
        # spec asks (docs/auth.md), with the node's reason in a JSON-RPC error.
        opened = await http.post("/mcp", json=INIT, headers=ACCEPT)
        assert opened.status_code == 401, opened.text
        assert opened.json()["error"]["data"]["reason"] == "ANONYMOUS_REFUSED"
        assert "vault.read" in tool_names(await mcp_list(http, TOKEN))


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
async def test_documents_need_a_caller_when_listing_requires_auth(
    make_node: Callable[..., Node], path: str
) -> None:
    node = scoped_node(make_node, "docs", listing_requires_auth=True)
    open_node = scoped_node(make_node, "open")
    async with node, open_node, httpx.AsyncClient() as http:
        refused = await http.get(f"http://127.0.0.1:{node.http_port}{path}")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["reason"] == "ANONYMOUS_REFUSED"
        served = await http.get(f"http://127.0.0.1:{node.http_port}{path}", headers=TOKEN)
        assert served.status_code == 200
        assert (await http.get(f"http://127.0.0.1:{open_node.http_port}{path}")).status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as mcp:
            answer = await mcp_list(mcp)
        assert answer["error"]["data"]["reason"] == "ANONYMOUS_REFUSED"


async def test_the_capabilities_feed_lists_what_the_subscriber_may_call(
    make_node: Callable[..., Node],
) -> None:
    """The WebSocket ``capabilities`` channel is a listing too: its ids are the ones
    the subscriber's scopes reach, and a rule blocking ListCapabilities withholds it."""
    node = scoped_node(make_node, "feed")
    async with node:
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        async with connect(url) as anonymous, connect(url, additional_headers=TOKEN) as holder:
            for ws in (anonymous, holder):
                await ws.send(json.dumps({"type": "subscribe", "channels": ["capabilities"]}))
                assert json.loads(await ws.recv())["channels"] == ["capabilities"]

            @node.capability(id="vault.write", scopes=("secret:write",))
            async def write() -> None:
                return None

            seen = json.loads(await anonymous.recv())["data"]["ids"]
            held = json.loads(await holder.recv())["data"]["ids"]
        assert "demo.echo" in seen
        assert "vault.read" not in seen
        assert "vault.write" not in seen
        assert "vault.read" in held
        assert "vault.write" not in held


async def test_a_blocked_listing_withholds_the_capabilities_feed(
    make_node: Callable[..., Node],
) -> None:
    block = RuleEvaluator(
        rules=[Rule(id="no-list", decision=Decision.BLOCK, capabilities=frozenset({LIST_ACTION}))]
    )
    node = scoped_node(make_node, "nofeed", governance=block)
    async with node, connect(f"ws://127.0.0.1:{node.http_port}/ws") as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["capabilities", "peers"]}))
        assert json.loads(await ws.recv())["channels"] == ["peers"]
