"""Delegation (PRO-020) between nodes on loopback: a forwarded call carries a signed
statement of whom it acts for, never the caller's token; the peer grants the
intersection of what it grants the forwarding node and what the statement says;
the chain reaches the handler, governance and the audit record; forged, unsigned,
unverified, stale and too deep statements are refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import grpc
import httpx
import pytest

from aralnode import (
    AuditRecord,
    Authenticated,
    CallContext,
    Credentials,
    Identity,
    Node,
    NodeClient,
    PermissionDenied,
    Unauthenticated,
)
from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.delegation import check_statement, depth, intersect, make_statement
from aralnode.core.envelope import REQUEST, build_content, seal
from aralnode.core.errors import AralError
from aralnode.core.governance import Action, Decision, Evaluator, Rule, RuleEvaluator
from aralnode.service.auth import AGENT_INVOKE, AGENT_READ, USER
from aralnode.store.memory import MemoryOutbox
from tests.channel_helpers import FAST, linked
from tests.test_parity import grpc_outcome

TOKEN = "tok-alice-5f0c1e9d"  # what alice shows node A; it must never leave A


class BearerUsers:
    """A stand-in for the JWT / API-key authenticators: a bearer token names a user
    and the scopes it holds."""

    USERS: ClassVar[dict[str, tuple[str, frozenset[str]]]] = {
        TOKEN: ("alice", frozenset({"x", "y"}))
    }

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        header = ctx.metadata.get("authorization", "")
        user = self.USERS.get(header.removeprefix("Bearer "))
        if user is None:
            return Authenticated()
        return Authenticated(user[0], user[1], kind=USER)


class Records:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(record)


def build(
    make_node: Callable[..., Node],
    name: str,
    *,
    authenticator: BearerUsers | None = None,
    governance: Evaluator | None = None,
    audit: Records | None = None,
    **config: Any,
) -> Node:
    """A node of ``make_node``'s config, with the hooks given."""
    base = make_node(name, demo=False, **FAST, **config)
    return Node(
        base.config,
        authenticator=authenticator,
        governance=governance,
        audit=[audit] if audit is not None else [],
    )


def serve(node: Node, ran: list[str]) -> None:
    """``authz.scopes`` (needs y) reports what the call got; ``authz.needs_x`` needs x."""

    @node.capability(id="authz.scopes", scopes=("y",))
    async def scopes(ctx: CallContext) -> dict[str, Any]:
        ran.append("scopes")
        return {
            "caller": ctx.caller,
            "principal": ctx.principal,
            "kind": ctx.kind,
            "scopes": sorted(ctx.scopes),
            "chain": list(ctx.chain),
        }

    @node.capability(id="authz.needs_x", scopes=("x",))
    async def needs_x() -> str:
        ran.append("needs_x")
        return "ran"


def invoke(channel: grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        "/aral.v1.AgentNode/Invoke",
        request_serializer=pb.InvokeRequest.SerializeToString,
        response_deserializer=pb.InvokeResponse.FromString,
    )


async def grpc_call(address: str, capability: str, to: str) -> Any:
    """alice's plain call on A's gRPC door, for peer ``to``: the result, or the error."""
    async with grpc.aio.insecure_channel(address) as channel:
        request = pb.InvokeRequest(call=pb.Call(capability=capability, to=to))
        md = (("authorization", f"Bearer {TOKEN}"),)
        try:
            reply = await invoke(channel)(request, metadata=md, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err
    return codec.from_value(reply.result.result)


BEARER = {"authorization": f"Bearer {TOKEN}"}
EXPECTED_SCOPES = sorted({"y", AGENT_READ, AGENT_INVOKE})  # {x,y}+implicit ∩ {y,z}+implicit


async def test_a_delegated_call_gets_no_more_than_both_parties(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forwards alice (x, y) to B, which grants A (y, z): the call gets y (and the
    implicit role's agent:read and agent:invoke, which both hold); x is refused on B,
    naming the delegation; the handler never runs; alice's token never leaves A."""
    sent: list[bytes] = []
    append = MemoryOutbox.append

    def recording(self: MemoryOutbox, peer: str, **kw: Any) -> int:
        sent.append(kw["sealed"])
        return append(self, peer, **kw)

    monkeypatch.setattr(MemoryOutbox, "append", recording)
    a = build(make_node, "alpha", authenticator=BearerUsers(), http_port=0)
    audit, ran = Records(), []
    b = build(make_node, "beta", audit=audit, peer_grants={a.node_id: frozenset({"y", "z"})})
    serve(b, ran)
    async with a, b:
        await linked(a, b)
        got = await grpc_call(a.address, "authz.scopes", b.node_id)
        assert got == {
            "caller": a.node_id,  # the hop B verified
            "principal": "alice",
            "kind": "node",
            "scopes": EXPECTED_SCOPES,
            "chain": ["alice", a.node_id],
        }
        refused = await grpc_call(a.address, "authz.needs_x", b.node_id)
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert grpc_outcome(refused).status == "PERMISSION_DENIED"
        assert grpc_outcome(refused).reason == "MISSING_SCOPE"
        assert "delegation alice -> " + a.node_id in (refused.details() or "")
        # The same on A's REST door.
        base = f"http://127.0.0.1:{a.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            body = {"call": {"capability": "authz.needs_x", "to": b.node_id}}
            r = await http.post(
                "/v1/invoke", json=body, headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert r.status_code == 403
            error = r.json()["error"]
            assert error["reason"] == "MISSING_SCOPE"
            assert error["details"]["delegation_chain"] == ["alice", a.node_id]
            body["call"]["capability"] = "authz.scopes"
            r = await http.post(
                "/v1/invoke", json=body, headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert r.json()["result"]["result"]["scopes"] == EXPECTED_SCOPES
    assert ran == ["scopes", "scopes"]  # needs_x never ran
    # B's audit records the chain of every delegated call, refused ones too.
    chains = {(r.action, r.outcome, r.chain) for r in audit.records}
    assert ("authz.needs_x", "forbidden", ("alice", a.node_id)) in chains
    assert ("authz.scopes", "ok", ("alice", a.node_id)) in chains
    # What travelled from A: the statement (alice, signed by A), never her token.
    requests = [m for m in sent if b"authz." in m]
    assert len(requests) >= 4
    assert all(TOKEN.encode() not in m for m in sent)
    assert all(b"alice" in m for m in requests)


async def test_three_hops_record_the_whole_chain(make_node: Callable[..., Node]) -> None:
    """alice -> A -> B -> C: C sees the chain [alice, A, B], and grants the
    intersection of every hop's grant."""
    ran: list[str] = []
    a = build(make_node, "alpha", authenticator=BearerUsers())
    c_probe = make_node("gamma-id", demo=False)  # C's id, for B's config
    b = build(make_node, "beta", peer_grants={a.node_id: frozenset({"y", "z"})})
    c = build(
        make_node,
        "gamma",
        data_dir=c_probe.config.data_dir,
        peer_grants={b.node_id: frozenset({"y"})},
    )
    serve(c, ran)

    @b.capability(id="authz.relay", scopes=("y",))
    async def relay(ctx: CallContext) -> Any:
        # B forwards the call it runs for alice on to C, as the same delegation.
        return await b.parts.service.forward(c.node_id, "authz.scopes", {}, 10.0, ctx)

    async with a, b, c:
        await linked(a, b)
        await linked(b, c)
        got = await grpc_call(a.address, "authz.relay", b.node_id)
    assert got == {
        "caller": b.node_id,
        "principal": "alice",
        "kind": "node",
        "scopes": EXPECTED_SCOPES,
        "chain": ["alice", a.node_id, b.node_id],
    }
    assert ran == ["scopes"]


async def test_a_chain_deeper_than_allowed_is_refused(make_node: Callable[..., Node]) -> None:
    a = build(make_node, "alpha", authenticator=BearerUsers())
    c_probe = make_node("gamma-id", demo=False)
    b = build(make_node, "beta", peer_grants={a.node_id: frozenset({"y"})})
    ran: list[str] = []
    c = build(
        make_node,
        "gamma",
        data_dir=c_probe.config.data_dir,
        peer_grants={b.node_id: frozenset({"y"})},
        max_delegation_depth=1,  # alice -> A -> B is two nodes deep
    )
    serve(c, ran)

    @b.capability(id="authz.relay", scopes=("y",))
    async def relay(ctx: CallContext) -> Any:
        return await b.parts.service.forward(c.node_id, "authz.scopes", {}, 10.0, ctx)

    async with a, b, c:
        await linked(a, b)
        await linked(b, c)
        refused = await grpc_call(a.address, "authz.relay", b.node_id)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert grpc_outcome(refused).status == "PERMISSION_DENIED"
    assert grpc_outcome(refused).reason == "DELEGATION_TOO_DEEP"
    assert ran == []


async def test_governance_reads_the_chain(make_node: Callable[..., Node]) -> None:
    """A rule on B sees the chain and its depth: alice's calls relayed by A are
    blocked, A's own calls are not."""
    a = build(make_node, "alpha", authenticator=BearerUsers())

    def relayed_for_alice(action: Action) -> bool:
        return action.delegation_depth >= 1 and action.chain[0] == "alice"

    policy = RuleEvaluator([Rule("no-relayed-alice", relayed_for_alice, Decision.BLOCK)])
    ran: list[str] = []
    b = build(make_node, "beta", governance=policy, peer_grants={a.node_id: frozenset({"y"})})
    serve(b, ran)
    async with a, b:
        await linked(a, b)
        refused = await grpc_call(a.address, "authz.scopes", b.node_id)
        assert isinstance(refused, grpc.aio.AioRpcError)
        assert grpc_outcome(refused).reason == "GOVERNANCE_BLOCK"
        own = await a.request(b.node_id, "authz.scopes", {})  # the node itself: no chain
    assert own["chain"] == []
    assert own["principal"] == a.node_id
    assert ran == ["scopes"]


async def test_the_program_delegates_with_its_implicit_role(
    make_node: Callable[..., Node],
) -> None:
    """``Node.request(on_behalf_of=...)`` states the principal with the scopes of its
    implicit role on the sending node: here none but agent:invoke, so B's grant of y
    to A does not reach carol."""
    a = make_node("alpha", demo=False, roles={"authenticated": frozenset({AGENT_INVOKE})}, **FAST)
    ran: list[str] = []
    b = build(make_node, "beta", peer_grants={a.node_id: frozenset({"y"})})
    serve(b, ran)

    @b.capability(id="authz.open")
    async def open_(ctx: CallContext) -> dict[str, Any]:
        return {"scopes": sorted(ctx.scopes), "chain": list(ctx.chain)}

    async with a, b:
        await linked(a, b)
        got = await a.request(b.node_id, "authz.open", {}, on_behalf_of="carol")
        assert got == {"scopes": [AGENT_INVOKE], "chain": ["carol", a.node_id]}
        with pytest.raises(PermissionDenied) as info:
            await a.request(b.node_id, "authz.scopes", {}, on_behalf_of="carol")
        assert info.value.details["delegation_chain"] == ["carol", a.node_id]
        itself = await a.request(b.node_id, "authz.scopes", {})  # A as itself: its grant
        assert itself["scopes"] == EXPECTED_SCOPES
    assert ran == ["scopes"]


# -- statements made by hand, sent as signed Invoke messages --------------------------


def statement(node_id: str, **overrides: Any) -> pb.Delegation:
    """A statement ``node_id`` makes for alice (``overrides`` change its fields)."""
    fields: dict[str, Any] = {
        "principal": "alice",
        "kind": USER,
        "scopes": {"y", AGENT_INVOKE},
        "chain": (),
        "signer": node_id,
        "now_ms": SYSTEM_CLOCK.now_ms(),
        "ttl_ms": 30_000,
    }
    expires = overrides.pop("expires_unix_ms", None)  # as a peer may write it by hand
    fields.update(overrides)
    made = make_statement(**fields)
    if expires is not None:
        made.expires_unix_ms = expires
    return made


OTHER = "o" * 32


@pytest.mark.parametrize(
    ("overrides", "error", "reason"),
    [
        pytest.param({"signer": OTHER}, Unauthenticated, "DELEGATION_FORGED", id="not-the-signer"),
        pytest.param(
            {"chain": ("mallory",)}, Unauthenticated, "DELEGATION_FORGED", id="not-the-principal"
        ),
        pytest.param(
            {"chain": ("alice", "n1", "n2", "n3", "n4")},
            PermissionDenied,
            "DELEGATION_TOO_DEEP",
            id="too-deep",
        ),
        pytest.param(
            {"now_ms": SYSTEM_CLOCK.now_ms() - 120_000, "ttl_ms": 1000},
            Unauthenticated,
            "DELEGATION_EXPIRED",
            id="expired",
        ),
        pytest.param(
            {"expires_unix_ms": SYSTEM_CLOCK.now_ms() + 10 * 365 * 24 * 3600 * 1000},
            Unauthenticated,
            "DELEGATION_TOO_LONG",
            id="valid-for-years",
        ),
    ],
)
async def test_bad_statements_are_refused(
    make_node: Callable[..., Node],
    overrides: dict[str, Any],
    error: type[AralError],
    reason: str,
) -> None:
    a = make_node("alpha", demo=False)
    ran: list[str] = []
    b = build(make_node, "beta", peer_grants={a.node_id: frozenset({"y"})})
    serve(b, ran)
    async with a, b, NodeClient(b.address, identity=a.identity, keyring=a.keyring) as client:
        await client.handshake(a.card(), expected_node_id=b.node_id)
        good = await client.request("authz.scopes", {}, delegation=statement(a.node_id))
        assert good["scopes"] == sorted({"y", AGENT_INVOKE})
        assert good["chain"] == ["alice", a.node_id]
        with pytest.raises(error) as info:
            await client.request("authz.scopes", {}, delegation=statement(a.node_id, **overrides))
        assert info.value.reason == reason
    assert ran == ["scopes"]


async def test_unsigned_unverified_and_tampered_statements_are_refused(
    make_node: Callable[..., Node],
) -> None:
    a = make_node("alpha", demo=False)
    ran: list[str] = []
    b = build(make_node, "beta", peer_grants={a.node_id: frozenset({"y"})})
    serve(b, ran)
    stranger = Identity.generate()
    async with a, b, NodeClient(b.address, identity=a.identity, keyring=a.keyring) as client:
        await client.handshake(a.card(), expected_node_id=b.node_id)
        with pytest.raises(Unauthenticated) as unsigned:
            await client.request("authz.scopes", {}, sign=False, delegation=statement(a.node_id))
        assert unsigned.value.reason == "DELEGATION_UNSIGNED"
        # A statement names its principal in on_behalf_of too, or not at all.
        with pytest.raises(Unauthenticated) as mismatch:
            await client.request(
                "authz.scopes", {}, on_behalf_of="mallory", delegation=statement(a.node_id)
            )
        assert mismatch.value.reason == "DELEGATION_FORGED"
        # A key nobody verified (it embeds itself) vouches for nobody.
        async with NodeClient(b.address, identity=stranger, node_id=b.node_id) as own:
            own.keyring.pin(b.identity.public_key)
            with pytest.raises(Unauthenticated) as unverified:
                await own.request("authz.scopes", {}, delegation=statement(stranger.node_id))
            assert unverified.value.reason == "DELEGATION_UNVERIFIED"
        # The signature covers the statement: widen its scopes and it no longer verifies.
        content = build_content(
            sender=a.node_id,
            recipient=b.node_id,
            body=pb.Body(type=REQUEST, action="authz.scopes", parameters=b"{}"),
            clock=SYSTEM_CLOCK,
            delegation=statement(a.node_id),
        )
        message = seal(content, a.identity)
        content.header.delegation.scopes.append("*")
        message.content = content.SerializeToString()
        async with grpc.aio.insecure_channel(b.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as tampered:
                await invoke(channel)(pb.InvokeRequest(message=message), timeout=10)
        assert tampered.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ran == []


# -- the statement's rules, sans IO -------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "stated", "got"),
    [
        ({"x", "y"}, {"y", "z"}, {"y"}),
        ({"*"}, {"y", "z"}, {"y", "z"}),  # a node trusted with everything: the statement's
        ({"y"}, {"*"}, {"y"}),  # a principal with everything: the node's grant
        ({"*"}, {"*"}, {"*"}),
        (set(), {"*"}, set()),
    ],
)
def test_the_intersection(granted: set[str], stated: set[str], got: set[str]) -> None:
    assert intersect(frozenset(granted), frozenset(stated)) == got


def test_a_statement_extends_the_chain_it_came_with() -> None:
    first = statement("A" * 32)
    assert list(first.chain) == ["alice", "A" * 32]
    second = statement("B" * 32, chain=tuple(first.chain))
    assert list(second.chain) == ["alice", "A" * 32, "B" * 32]
    assert depth(second.chain) == 2
    check_statement(second, signer="B" * 32, on_behalf_of="alice", now_ms=SYSTEM_CLOCK.now_ms())
    with pytest.raises(PermissionDenied):
        check_statement(
            second, signer="B" * 32, on_behalf_of="", now_ms=SYSTEM_CLOCK.now_ms(), max_depth=1
        )
    too_many = statement("A" * 32, scopes={f"s{i}" for i in range(300)})
    with pytest.raises(Unauthenticated) as info:
        check_statement(too_many, signer="A" * 32, on_behalf_of="", now_ms=SYSTEM_CLOCK.now_ms())
    assert info.value.reason == "DELEGATION_FORGED"


async def test_a_peer_nobody_trusts_cannot_speak_for_a_local_principal(
    make_node: Callable[..., Node],
) -> None:
    """A handshake proves a key, not trust: a peer no ``peer_grants`` or
    ``peer_roles`` names may still act for someone, but that someone is its own
    (``alice@<its id>``), with a statement or without. It never takes the tier, halt,
    trust debt or rate bucket of the node's own alice; a trusted peer's alice is
    alice."""
    a = make_node("alpha", demo=False, **FAST)
    stranger = make_node("stranger", demo=False, **FAST)
    b = build(make_node, "beta", peer_grants={a.node_id: frozenset({"y"})})

    @b.capability(id="authz.who")
    async def who(ctx: CallContext) -> dict[str, Any]:
        return {"principal": ctx.principal, "chain": list(ctx.chain)}

    async with a, stranger, b:
        await linked(a, b)
        await linked(stranger, b)
        trusted = await a.request(b.node_id, "authz.who", {}, on_behalf_of="alice")
        assert trusted == {"principal": "alice", "chain": ["alice", a.node_id]}
        named = await stranger.request(b.node_id, "authz.who", {}, on_behalf_of="alice")
        assert named == {
            "principal": f"alice@{stranger.node_id}",
            "chain": ["alice", stranger.node_id],
        }
        # on_behalf_of with no statement (as an older node sends it): the same.
        async with NodeClient(b.address, identity=stranger.identity) as client:
            await client.handshake(stranger.card(), expected_node_id=b.node_id)
            bare = await client.request("authz.who", {}, on_behalf_of="alice")
        assert bare["principal"] == f"alice@{stranger.node_id}"
