"""Who a call is for, on every door: anonymous callers, delegation when a node
forwards a call, built-in methods under governance, and trace id hygiene."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import httpx
import pytest

from aralnode import (
    CallContext,
    GovernanceBlocked,
    Identity,
    Node,
    NodeClient,
    PermissionDenied,
    Unauthenticated,
)
from aralnode import _proto as pb
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import REQUEST, build_content, seal
from aralnode.core.governance import Decision, Direction, Rule, RuleEvaluator
from aralnode.core.handshake import build_card
from aralnode.transport.grpc_client import unwrap
from tests.channel_helpers import linked


def with_secret(node: Node) -> None:
    @node.capability(id="vault.read", scopes=("vault",))
    async def read(ctx: CallContext) -> dict[str, str]:
        """A capability only callers holding the `vault` scope may run."""
        return {"caller": ctx.caller, "for": ctx.principal}


async def test_forwarded_anonymous_call_gets_no_peer_rights(make_node: Callable[..., Node]) -> None:
    a = make_node("alpha")
    b = make_node("beta", peer_scopes=frozenset({"vault"}))  # b trusts nodes with `vault`
    with_secret(b)
    async with a, b:
        await linked(a, b)
        # a itself, signing as a node, holds the scope at b ...
        assert await a.request(b.node_id, "vault.read", {}) == {
            "caller": a.node_id,
            "for": a.node_id,
        }
        # ... but an anonymous caller forwarded by a does not borrow it.
        async with NodeClient(a.address) as client:
            with pytest.raises(PermissionDenied) as info:
                await client.call("vault.read", {}, to=b.node_id)
            assert info.value.reason == "MISSING_SCOPE"
            # The refusal says why a granted node's call is refused: it delegates.
            assert "on behalf of anonymous" in info.value.message
            assert info.value.details["on_behalf_of"] == "anonymous"
            who = unwrap(await client.call("demo.whoami", {}, to=b.node_id))
    assert who["caller"] == a.node_id  # the hop b verified


async def test_a_self_made_key_gets_no_peer_rights_until_verified(
    make_node: Callable[..., Node],
) -> None:
    """A signed Invoke may embed its own public key (first contact): that proves who
    signed, not that the signer is a node this one verified. Peer scopes go to keys
    pinned by a handshake only."""
    b = make_node("beta", peer_scopes=frozenset({"vault"}))
    with_secret(b)
    me = Identity.generate()
    async with b, NodeClient(b.address, identity=me, node_id=b.node_id) as client:
        client.keyring.pin(b.identity.public_key)  # b's key known out of band
        with pytest.raises(PermissionDenied) as info:
            await client.request("vault.read", {})  # signed, key embedded, no handshake
        assert info.value.reason == "MISSING_SCOPE"
        assert await client.request("demo.whoami", {}) == {
            "door": "grpc",
            "caller": me.node_id,
            "signed": True,
        }
        card = build_card(
            me, name="me", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
        )
        await client.handshake(card)  # b verifies the card and pins the key
        assert await client.request("vault.read", {}) == {
            "caller": me.node_id,
            "for": me.node_id,
        }


async def test_a_grant_names_the_one_node_that_gets_its_scopes(
    make_node: Callable[..., Node],
) -> None:
    """``peer_grants`` trust a node by its id: a key that merely completes a handshake
    (anyone who reaches the port can) gets nothing, on the gRPC door or a channel."""
    a = make_node("alpha")
    b = make_node("beta", peer_grants={a.node_id: frozenset({"vault"})})
    with_secret(b)
    stranger = Identity.generate()
    async with a, b:
        await linked(a, b)
        assert await a.request(b.node_id, "vault.read", {}) == {  # over the channel
            "caller": a.node_id,
            "for": a.node_id,
        }
        async with NodeClient(b.address, identity=a.identity) as client:
            await client.handshake(a.card())
            assert (await client.request("vault.read", {}))["caller"] == a.node_id  # gRPC
        async with NodeClient(b.address, identity=stranger) as client:
            card = build_card(
                stranger, name="x", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
            )
            await client.handshake(card)  # verified and pinned, but granted nothing
            with pytest.raises(PermissionDenied) as info:
                await client.request("vault.read", {})
            assert info.value.reason == "MISSING_SCOPE"


async def test_forward_is_governed_at_the_forwarding_node(make_node: Callable[..., Node]) -> None:
    policy = RuleEvaluator(
        [
            Rule(
                "no-relay",
                lambda act: act.direction is Direction.SEND and act.door == "grpc",
                Decision.BLOCK,
            )
        ]
    )
    a, b = make_node("alpha", governance=policy), make_node("beta")
    async with a, b:
        await linked(a, b)
        async with NodeClient(a.address) as client:
            with pytest.raises(GovernanceBlocked):
                await client.call("demo.add", {"a": 1, "b": 2}, to=b.node_id)
            assert unwrap(await client.call("demo.add", {"a": 1, "b": 2})) == 3  # local: allowed
        assert await a.request(b.node_id, "demo.add", {"a": 1, "b": 2}) == 3  # the node's own send


async def test_anonymous_callers_refused_on_every_door(make_node: Callable[..., Node]) -> None:
    node = make_node("closed", http_port=0, allow_unsigned=False)
    async with node:
        async with NodeClient(node.address) as client:
            with pytest.raises(Unauthenticated) as info:
                await client.call("demo.add", {"a": 1, "b": 2})
            assert info.value.reason == "ANONYMOUS_REFUSED"
            with pytest.raises(Unauthenticated):
                await client.status()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.http_port}", timeout=10
        ) as http:
            r = await http.post(
                "/v1/capabilities/demo.add:invoke", json={"call": {"parameters": {"a": 1, "b": 2}}}
            )
            assert r.status_code == 401
            r = await http.get("/v1/status")
            assert r.status_code == 401
        # the in-process door acts as the node itself
        assert await node.invoke("demo.add", {"a": 1, "b": 2}) == 3


async def test_builtin_methods_are_governed(make_node: Callable[..., Node]) -> None:
    policy = RuleEvaluator(
        [
            Rule(
                "hide-status",
                decision=Decision.BLOCK,
                capabilities=frozenset({"aral.v1.AgentNode/GetStatus"}),
            )
        ]
    )
    node = make_node("quiet", http_port=0, governance=policy)
    async with node:
        async with NodeClient(node.address) as client:
            with pytest.raises(GovernanceBlocked):
                await client.status()
            caps = await client.capabilities()  # other built-ins still answer
            assert caps.node_id == node.node_id
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.http_port}", timeout=10
        ) as http:
            r = await http.get("/v1/status")
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "governance_blocked"


@pytest.mark.parametrize("bad", ["a\r\nb", "x" * 500, "spaces are not ok"])
async def test_unsafe_trace_ids_are_replaced(make_node: Callable[..., Node], bad: str) -> None:
    node = make_node("traces")
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        stub = pb.AgentNodeStub(channel)
        request = pb.InvokeRequest(call=pb.Call(capability="demo.add", trace_id=bad))
        request.call.parameters.update({"a": 1, "b": 1})
        reply = await stub.Invoke(request, timeout=10)
        assert reply.result.trace_id != bad
        assert reply.result.trace_id.isalnum()
        request.call.trace_id = "ok-trace.1:2"
        reply = await stub.Invoke(request, timeout=10)
        assert reply.result.trace_id == "ok-trace.1:2"


async def test_delegation_on_the_unary_door(make_node: Callable[..., Node]) -> None:
    a = make_node("alpha")
    b = make_node("beta", peer_scopes=frozenset({"vault"}))
    with_secret(b)
    async with a, b, NodeClient(b.address, identity=a.identity, keyring=a.keyring) as client:
        await client.handshake(a.card(), expected_node_id=b.node_id)
        assert await client.request("vault.read", {}) == {"caller": a.node_id, "for": a.node_id}
        with pytest.raises(PermissionDenied):
            await client.request("vault.read", {}, on_behalf_of="anonymous")
        who = await client.request("demo.whoami", {}, on_behalf_of="carol")
        assert who["caller"] == a.node_id


async def test_unsafe_trace_id_in_an_envelope_is_replaced(make_node: Callable[..., Node]) -> None:
    node = make_node("envelope-trace")
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        stub = pb.AgentNodeStub(channel)
        content = build_content(
            sender="someone",
            recipient="",
            body=pb.Body(type=REQUEST, action="demo.add", parameters=b'{"a":1,"b":1}'),
            clock=SYSTEM_CLOCK,
            trace_id="evil\r\ntrace",
        )
        reply = await stub.Invoke(pb.InvokeRequest(message=seal(content, None)), timeout=10)
        header = pb.MessageContent.FromString(reply.message.content).header
        assert header.trace_id != "evil\r\ntrace"
        assert header.trace_id.isalnum()


async def test_unsafe_trace_id_on_the_channel_is_replaced(make_node: Callable[..., Node]) -> None:
    """A peer's channel notification carries its trace id to subscribers only once
    cleaned, as every door's is."""
    a, b = make_node("alpha"), make_node("beta")
    async with a, b:
        await linked(a, b)
        async with b.subscribe("traced") as sub:
            assert a.channels is not None
            hub = a.channels
            await hub.send_notification(b.node_id, "traced", {"x": 1}, trace_id="evil\r\ntrace")
            msg = await asyncio.wait_for(anext(aiter(sub)), 10)
        assert msg.trace_id != "evil\r\ntrace"
        assert msg.trace_id.isalnum()


async def test_a_context_the_program_makes_stands_as_made(make_node: Callable[..., Node]) -> None:
    """``Node.invoke(ctx=...)``: the program's own context keeps its caller and
    scopes; without a caller it is anonymous (no scopes, refused where anonymous
    callers are), never the node itself."""
    node = make_node("given", allow_unsigned=False)

    @node.capability(id="admin.op", scopes=("admin",))
    async def op(ctx: CallContext) -> str:
        return ctx.caller

    async with node:
        with pytest.raises(Unauthenticated):
            await node.invoke("admin.op", ctx=CallContext(door="rest"))
        with pytest.raises(PermissionDenied) as info:
            await node.invoke("admin.op", ctx=CallContext(door="rest", caller="app-user"))
        assert info.value.reason == "MISSING_SCOPE"
        granted = CallContext(door="rest", caller="admin-user", scopes=frozenset({"admin"}))
        assert await node.invoke("admin.op", ctx=granted) == "admin-user"
        assert await node.invoke("admin.op") == node.node_id  # the node itself
