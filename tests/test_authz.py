"""Roles to scopes, the built-in scopes and deny by default, on every door.

A node with ``deny_by_default`` allows nothing unless a role or a grant says so: a
caller whose roles give ``agent:invoke`` may call a capability that names no scope,
one with ``agent:read`` may list and read the node's status, and a listing shows
only what the caller may call. Refusals are asserted on each door in its own
language (gRPC status, HTTP status, MCP error result, WebSocket error frame), and
the handler never runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import Authenticated, CallContext, Credentials, Node, NodeConfig, PermissionDenied
from aralnode import _proto as pb
from aralnode.access.roles import RoleMap
from aralnode.bridge.mcp import tool_name
from aralnode.service.auth import AGENT_INVOKE, AGENT_READ, ANONYMOUS_KIND, NODE, USER
from tests.channel_helpers import FAST, linked
from tests.test_parity import grpc_outcome

ROLES = {
    "reader": frozenset({AGENT_READ}),
    "invoker": frozenset({AGENT_INVOKE}),
    "vault": frozenset({"secret"}),
}


# -- the role map ------------------------------------------------------------------------


def test_the_implicit_roles_keep_a_development_node_open() -> None:
    roles = RoleMap()
    both = {AGENT_READ, AGENT_INVOKE}
    assert roles.scopes(Authenticated(kind=ANONYMOUS_KIND)) == both
    assert roles.scopes(Authenticated("bob", kind=USER)) == both
    assert roles.scopes(Authenticated("bob", frozenset({"x"}), kind=USER)) == {*both, "x"}


def test_deny_by_default_empties_the_implicit_roles_unless_named() -> None:
    closed = RoleMap(deny_by_default=True)
    assert closed.scopes(Authenticated(kind=ANONYMOUS_KIND)) == set()
    assert closed.scopes(Authenticated("bob", kind=USER)) == set()
    # An implicit role named in the config holds what it says, deny by default or not.
    named = RoleMap({"authenticated": frozenset({AGENT_READ})}, deny_by_default=True)
    assert named.scopes(Authenticated("bob", kind=NODE)) == {AGENT_READ}
    assert named.scopes(Authenticated()) == set()


def test_roles_expand_to_scopes_and_the_cache_is_bounded() -> None:
    roles = RoleMap(ROLES, deny_by_default=True, cache_size=2)
    who = Authenticated("bob", frozenset({"own"}), kind=USER, roles=frozenset({"reader", "vault"}))
    assert roles.scopes(who) == {"own", AGENT_READ, "secret"}
    assert roles.scopes(Authenticated("bob", roles=frozenset({"nobody-defines-me"}))) == set()
    for n in range(10):  # callers choose their roles: the table must not grow with them
        roles.scopes(Authenticated("bob", roles=frozenset({"reader", f"r{n}"})))
    assert roles.cached == 2
    assert roles.scopes(who) == {"own", AGENT_READ, "secret"}  # recomputed, the same


def test_the_config_checks_roles_and_bounds(tmp_path: Any) -> None:
    cfg = NodeConfig(data_dir=tmp_path, roles={"ops": ["agent:admin"]})  # type: ignore[dict-item]
    assert cfg.roles == {"ops": frozenset({"agent:admin"})}
    assert cfg.max_delegation_depth == 4
    assert not cfg.deny_by_default
    for bad in (
        {"roles": {"bad name": frozenset({"x"})}},
        {"roles": {"ops": frozenset({" padded "})}},
        {"roles": {"ops": frozenset({""})}},
        {"max_delegation_depth": -1},
        {"role_cache_size": 0},
    ):
        with pytest.raises(ValueError):
            NodeConfig(data_dir=tmp_path, **bad)  # type: ignore[arg-type]


# -- on every door --------------------------------------------------------------------


class RoleHeader:
    """A stand-in for the token authenticators: ``x-roles: a,b`` names user ``u``
    with those roles (and no scopes of its own)."""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        roles = ctx.metadata.get("x-roles")
        if roles is None:
            return Authenticated()
        return Authenticated("u", kind=USER, roles=frozenset(roles.split(",")))


@asynccontextmanager
async def closed_node(make_node: Callable[..., Node], ran: list[str]) -> AsyncIterator[Node]:
    base = make_node("closed", demo=False, http_port=0, deny_by_default=True, roles=ROLES)
    node = Node(base.config, authenticator=RoleHeader())

    @node.capability(id="authz.count")
    async def count() -> int:
        ran.append("count")
        return len(ran)

    async with node:
        yield node


async def grpc_invoke(node: Node, roles: str | None, capability: str = "authz.count") -> str:
    """The status of a plain call on the gRPC door ("OK" or the refusal's reason)."""
    md = () if roles is None else (("x-roles", roles),)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = pb.AgentNodeStub(channel)
        try:
            await stub.Invoke(
                pb.InvokeRequest(call=pb.Call(capability=capability)), metadata=md, timeout=10
            )
        except grpc.aio.AioRpcError as err:
            outcome = grpc_outcome(err)
            return f"{outcome.status}/{outcome.reason}"
    return "OK"


async def rest_invoke(node: Node, roles: str | None) -> str:
    headers = {} if roles is None else {"x-roles": roles}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        r = await http.post(
            "/v1/invoke", json={"call": {"capability": "authz.count"}}, headers=headers
        )
    if r.status_code == 200:
        return "OK"
    return f"{r.status_code}/{r.json()['error']['reason']}"


async def ws_invoke(node: Node, roles: str | None) -> str:
    headers = {} if roles is None else {"x-roles": roles}
    url = f"ws://127.0.0.1:{node.http_port}/ws"
    try:
        async with connect(url, additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "authz.count"}))
            reply = json.loads(await ws.recv())
    except InvalidStatus as refused:  # a caller holding no scope is not given a socket
        reply = json.loads(refused.response.body)
        return f"error/{reply['error']['reason']}"
    return "OK" if reply["type"] != "error" else f"error/{reply['error']['reason']}"


@asynccontextmanager
async def mcp_client(node: Node, roles: str | None) -> AsyncIterator[Client]:
    headers = {} if roles is None else {"x-roles": roles}
    url = f"http://127.0.0.1:{node.http_port}/mcp"
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def mcp_invoke(client: Client) -> str:
    result = await client.call_tool(tool_name("authz.count"), {})
    if result.is_error:
        return "error/" + json.loads(result.content[0].text)["error"]["reason"]
    return "OK"


async def test_deny_by_default_refuses_on_every_door_until_a_role_allows(
    make_node: Callable[..., Node],
) -> None:
    ran: list[str] = []
    async with closed_node(make_node, ran) as node:
        for roles in (None, "reader", "vault"):  # none gives agent:invoke
            assert await grpc_invoke(node, roles) == "PERMISSION_DENIED/MISSING_SCOPE"
            assert await rest_invoke(node, roles) == "403/MISSING_SCOPE"
            assert await ws_invoke(node, roles) == "error/MISSING_SCOPE"
            async with mcp_client(node, roles) as client:
                assert await mcp_invoke(client) == "error/MISSING_SCOPE"
        assert ran == []  # the handler never ran
        assert await grpc_invoke(node, "invoker") == "OK"
        assert await rest_invoke(node, "invoker") == "OK"
        assert await ws_invoke(node, "invoker") == "OK"
        # (The official client lists the tools before it calls one: agent:read too.)
        async with mcp_client(node, "invoker,reader") as client:
            assert await mcp_invoke(client) == "OK"
    assert len(ran) == 4


async def test_the_built_ins_need_agent_read(make_node: Callable[..., Node]) -> None:
    ran: list[str] = []
    async with closed_node(make_node, ran) as node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            refused = await http.get("/v1/status")
            assert refused.status_code == 403
            assert refused.json()["error"]["reason"] == "MISSING_SCOPE"
            assert "agent:read" in refused.json()["error"]["message"]
            assert (await http.get("/v1/status", headers={"x-roles": "reader"})).status_code == 200
            # A listing shows what the caller may call, and nothing more.
            read = await http.get("/v1/capabilities", headers={"x-roles": "reader"})
            ids = [c["id"] for c in read.json()["capabilities"]]
            assert "authz.count" not in ids
            both = await http.get("/v1/capabilities", headers={"x-roles": "reader,invoker"})
            assert "authz.count" in [c["id"] for c in both.json()["capabilities"]]
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = pb.AgentNodeStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetStatus(pb.GetStatusRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            status = await stub.GetStatus(
                pb.GetStatusRequest(), metadata=(("x-roles", "reader"),), timeout=10
            )
            assert status.node_id == node.node_id


async def test_mcp_tools_list_shows_what_the_caller_may_call(
    make_node: Callable[..., Node],
) -> None:
    ran: list[str] = []
    async with closed_node(make_node, ran) as node:
        shown: dict[str, set[str]] = {}
        for roles in ("reader", "reader,invoker"):
            async with mcp_client(node, roles) as client:
                shown[roles] = {t.name for t in (await client.list_tools()).tools}
        # Listing is reading: without agent:read, tools/list is refused.
        async with mcp_client(node, "invoker") as client:
            with pytest.raises(MCPError) as info:
                await client.list_tools()
            assert "agent:read" in info.value.error.message
    count = tool_name("authz.count")
    assert count not in shown["reader"]
    assert shown["reader"]  # the read-only built-ins (status, peers, capabilities)
    assert shown["reader,invoker"] == shown["reader"] | {count}
    assert ran == []


async def test_a_peer_under_deny_by_default_needs_a_grant(make_node: Callable[..., Node]) -> None:
    """The channel door: a verified peer is an identified caller (the implicit
    ``authenticated`` role, empty here); a grant of agent:invoke lets it call."""
    stranger = make_node("stranger", demo=False, **FAST)
    friend = make_node("friend", demo=False, **FAST)
    member = make_node("member", demo=False, **FAST)
    ran: list[str] = []
    closed = make_node(
        "closed",
        demo=False,
        deny_by_default=True,
        roles=ROLES,
        peer_grants={friend.node_id: frozenset({AGENT_INVOKE})},
        peer_roles={member.node_id: frozenset({"invoker"})},  # a role does as well
        **FAST,
    )

    @closed.capability(id="authz.count")
    async def count() -> int:
        ran.append("count")
        return len(ran)

    async with stranger, friend, member, closed:
        for peer in (stranger, friend, member):
            await linked(peer, closed)
        with pytest.raises(PermissionDenied) as info:
            await stranger.request(closed.node_id, "authz.count", {})
        assert info.value.reason == "MISSING_SCOPE"
        assert ran == []
        assert await friend.request(closed.node_id, "authz.count", {}) == 1
        assert await member.request(closed.node_id, "authz.count", {}) == 2


async def test_grpcurl_sees_the_refusal_and_the_role_that_lifts_it(
    make_node: Callable[..., Node],
) -> None:
    """The real grpcurl, through reflection: PermissionDenied without a role that
    gives agent:invoke, the result with one (``-H``)."""
    from tests.test_grpcurl import GRPCURL, grpcurl

    if GRPCURL is None:
        pytest.skip("grpcurl not installed (pip install -e '.[dev]')")
    ran: list[str] = []
    call = json.dumps({"call": {"capability": "authz.count"}})
    async with closed_node(make_node, ran) as node:
        invoke = ("-plaintext", "-d", call, node.address, "aral.v1.AgentNode/Invoke")
        rc, out, err = await grpcurl(*invoke)
        assert rc != 0
        assert "Code: PermissionDenied" in err
        assert "agent:invoke" in err
        assert ran == []
        rc, out, err = await grpcurl("-H", "x-roles: invoker", *invoke)
        assert rc == 0, err
        assert json.loads(out)["result"]["result"] == 1


async def test_a_websocket_subscription_needs_agent_read(make_node: Callable[..., Node]) -> None:
    ran: list[str] = []
    async with closed_node(make_node, ran) as node:
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        wanted = {"type": "subscribe", "agent_id": node.node_id, "channels": ["status"]}
        for roles, answer in ((None, "error"), ("invoker", "error"), ("reader", "subscribed")):
            headers = {} if roles is None else {"x-roles": roles}
            try:
                async with connect(url, additional_headers=headers) as ws:
                    await ws.send(json.dumps(wanted))
                    async with asyncio.timeout(10):
                        reply = json.loads(await ws.recv())
            except InvalidStatus as refused:  # no scope at all: no socket either
                assert roles is None
                reply = {"type": "error", **json.loads(refused.response.body)}
            assert reply["type"] == answer, (roles, reply)
            if answer == "error":
                assert reply["error"]["reason"] == "MISSING_SCOPE"
