"""A signed request names the node it is for, and runs nowhere else.

A request signed for no one (an empty ``header.recipient``) or for another node
could be relayed, within the freshness window, by whoever received it to any node
that trusts its signer, and run there with the signer's grants. ``Invoke`` refuses
it (``WRONG_RECIPIENT``), and ``NodeClient`` never signs a request for no one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from aralnode import CallContext, Identity, Node, NodeClient
from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import REQUEST, build_content, encode_payload, open_message, seal
from aralnode.core.errors import AralError, MalformedMessage, Unavailable
from aralnode.core.handshake import build_card
from aralnode.core.identity import KeyRing
from aralnode.transport.status import from_rpc_error

ALICE = Identity.generate()  # a mesh member, granted `vault` on the node under test


def granted_node(make_node: Callable[..., Node], ran: list[str]) -> Node:
    node = make_node("c", deny_by_default=True, peer_grants={ALICE.node_id: frozenset({"vault"})})

    @node.capability(id="vault.read", scopes=("vault",))
    async def read(ctx: CallContext) -> dict[str, str]:
        """Runs only for callers holding `vault`."""
        ran.append(ctx.caller)
        return {"caller": ctx.caller}

    return node


def signed_request(recipient: str) -> bytes:
    payload, _ = encode_payload({})
    content = build_content(
        sender=ALICE.node_id,
        recipient=recipient,
        body=pb.Body(type=REQUEST, action="vault.read", parameters=payload),
        clock=SYSTEM_CLOCK,
    )
    message = seal(content, ALICE, embed_key=True)
    return pb.InvokeRequest(message=message).SerializeToString()


async def raw_invoke(address: str, data: bytes) -> Any:
    """``Invoke`` with these bytes; the result, or the refusal as an ``AralError``."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/aral.v1.AgentNode/Invoke")
        try:
            answer = pb.InvokeResponse.FromString(await call(data, timeout=10))
        except grpc.aio.AioRpcError as err:
            return from_rpc_error(err)
        return codec.decode(pb.MessageContent.FromString(answer.message.content).body.result)


async def alice_verified_by(node: Node) -> None:
    """Alice's handshake with ``node``: it pins her key (her grant counts from now on)."""
    card = build_card(
        ALICE, name="alice", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
    )
    async with NodeClient(node.address, identity=ALICE, keyring=KeyRing()) as client:
        await client.handshake(card)


async def test_invoke_refuses_a_signed_request_for_no_one_or_for_another_node(
    make_node: Callable[..., Node],
) -> None:
    ran: list[str] = []
    node = granted_node(make_node, ran)
    async with node:
        await alice_verified_by(node)
        for recipient in ("", Identity.generate().node_id):
            refused = await raw_invoke(node.address, signed_request(recipient))
            assert isinstance(refused, AralError), refused
            assert refused.reason == "WRONG_RECIPIENT"
        assert ran == []
        # Addressed to it, the same signer's request runs with its grant.
        answer = await raw_invoke(node.address, signed_request(node.node_id))
        assert answer == {"caller": ALICE.node_id}
        assert ran == [ALICE.node_id]


class Recorder:
    """A node that records the Invoke requests it is sent and answers none."""

    def __init__(self) -> None:
        self.captured: list[bytes] = []
        self.server = grpc.aio.server()

        async def invoke(data: bytes, ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.captured.append(data)
            await ctx.abort(grpc.StatusCode.UNAVAILABLE, "try later")
            raise AssertionError("abort returns no answer")

        handler = grpc.unary_unary_rpc_method_handler(invoke)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("aral.v1.AgentNode", {"Invoke": handler})]
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    await rec.server.start()
    yield rec
    await rec.server.stop(None)


async def test_a_request_for_one_node_cannot_be_relayed_to_another(
    make_node: Callable[..., Node], recorder: Recorder
) -> None:
    """Alice calls B (no handshake: she knows B's id); B relays her exact bytes to C,
    which trusts Alice: C refuses them."""
    ran: list[str] = []
    node = granted_node(make_node, ran)
    b_id = Identity.generate().node_id
    async with node:
        await alice_verified_by(node)
        async with NodeClient(
            recorder.address, identity=ALICE, keyring=KeyRing(), node_id=b_id
        ) as client:
            with pytest.raises(Unavailable):
                await client.request("vault.read", {}, timeout=10)
        (captured,) = recorder.captured
        header = pb.MessageContent.FromString(
            pb.InvokeRequest.FromString(captured).message.content
        ).header
        assert header.recipient == b_id
        refused = await raw_invoke(node.address, captured)
        assert isinstance(refused, AralError), refused
        assert refused.reason == "WRONG_RECIPIENT"
    assert ran == []


async def test_the_client_never_signs_a_request_for_no_one(recorder: Recorder) -> None:
    async with NodeClient(recorder.address, identity=ALICE, keyring=KeyRing()) as client:
        with pytest.raises(ValueError, match="handshake"):
            await client.request("vault.read", {}, timeout=10)
        assert recorder.captured == []  # nothing was sent
        with pytest.raises(Unavailable):  # unsigned: it proves no one, binds nothing
            await client.request("vault.read", {}, timeout=10, sign=False)
    assert len(recorder.captured) == 1


def test_only_unsigned_messages_may_name_no_recipient() -> None:
    """The rule as ``open_message`` applies it to every message a node reads (its
    ``Invoke`` door and its channels)."""
    me = Identity.generate().node_id
    ring = KeyRing()

    def opened(recipient: str, *, signed: bool) -> str:
        content = build_content(
            sender=ALICE.node_id if signed else "anyone",
            recipient=recipient,
            body=pb.Body(type=REQUEST, action="x"),
            clock=SYSTEM_CLOCK,
        )
        message = seal(content, ALICE if signed else None, embed_key=True)
        try:
            open_message(message, keyring=ring, replay=None, require_signature=False,
                         expected_recipient=me)  # fmt: skip
        except MalformedMessage as exc:
            return exc.reason
        return "ok"

    assert opened(me, signed=True) == "ok"
    assert opened("", signed=True) == "WRONG_RECIPIENT"
    assert opened("someone-else", signed=True) == "WRONG_RECIPIENT"
    assert opened("", signed=False) == "ok"
    assert opened("someone-else", signed=False) == "WRONG_RECIPIENT"
