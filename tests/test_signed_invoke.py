"""Two nodes: signed envelopes from A to B, and every way of tampering with them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from aralnode import (
    AralError,
    GovernanceBlocked,
    KeyAlgorithm,
    Node,
    NodeClient,
    RateLimited,
    ReplayDetected,
    SignatureInvalid,
    StaleMessage,
    Unauthenticated,
)
from aralnode import _proto as pb
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK, FixedClock
from aralnode.core.envelope import build_content, encode_payload, seal
from aralnode.core.errors import KeyMismatch, UnknownKey
from aralnode.core.governance import Decision, Rule, RuleEvaluator
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity
from aralnode.testing import fixed_identity, node_pair
from aralnode.transport.status import from_rpc_error
from tests.conftest import DEMO


def _demo(node: Node) -> None:
    node.load(DEMO)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    async with node_pair(_demo) as nodes:
        yield nodes


def request(
    sender: Identity | None,
    recipient: str,
    action: str = "demo.add",
    params: Any = None,
    *,
    sender_id: str = "",
    clock: Any = SYSTEM_CLOCK,
    embed_key: bool = False,
) -> pb.ARALMessage:
    payload, compression = encode_payload(params if params is not None else {"a": 2, "b": 3})
    content = build_content(
        sender=sender_id or (sender.node_id if sender else "anonymous"),
        recipient=recipient,
        body=pb.Body(type=pb.MessageType.MESSAGE_TYPE_REQUEST, action=action, parameters=payload),
        clock=clock,
        compression=compression,
    )
    return seal(content, sender, embed_key=embed_key)


async def send(node: Node, message: pb.ARALMessage) -> pb.InvokeResponse:
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = pb.AgentNodeStub(channel)
        try:
            response: pb.InvokeResponse = await stub.Invoke(
                pb.InvokeRequest(message=message), timeout=10
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
    return response


async def still_serves(a: Node, b: Node) -> None:
    assert await a.request(b.node_id, "demo.add", {"a": 1, "b": 1}) == 2


async def test_signed_request_between_two_nodes(pair: tuple[Node, Node]) -> None:
    a, b = pair
    # The unary door: a signed Invoke after a verified handshake.
    async with NodeClient(b.address, identity=a.identity, keyring=a.keyring) as client:
        await client.handshake(a.card(), expected_node_id=b.node_id)
        assert await client.request("demo.add", {"a": 1.5, "b": 2}) == 3.5
        who = await client.request("demo.whoami", {})
    assert who == {"door": "grpc", "caller": a.node_id, "signed": True}
    # The node API picks its door (the A2A channel); the caller is verified alike.
    who = await a.request(b.node_id, "demo.whoami", {})
    assert who["caller"] == a.node_id
    assert who["signed"] is True


async def test_signed_response_is_verified(pair: tuple[Node, Node]) -> None:
    a, b = pair
    response = await send(b, request(a.identity, b.node_id))
    reply = response.message
    assert reply.signature.key_id == b.node_id
    b.identity.public_key.verify(pb.PAYLOAD_MESSAGE, reply.content, reply.signature)


@pytest.mark.parametrize("where", ["content-start", "content-middle", "content-end", "signature"])
async def test_flipped_byte_is_rejected(pair: tuple[Node, Node], where: str) -> None:
    a, b = pair
    message = request(a.identity, b.node_id)
    if where == "signature":
        value = bytearray(message.signature.value)
        value[10] ^= 0x01
        message.signature.value = bytes(value)
    else:
        content = bytearray(message.content)
        index = {"content-start": 1, "content-middle": len(content) // 2, "content-end": -1}[where]
        content[index] ^= 0x01
        message.content = bytes(content)
    with pytest.raises(SignatureInvalid) as info:
        await send(b, message)
    assert info.value.reason == "SIGNATURE_INVALID"
    await still_serves(a, b)


async def test_wrong_key_claiming_a_known_id_is_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    mallory = fixed_identity(666)
    forged = request(mallory, b.node_id, sender_id=a.node_id)
    forged.signature.key_id = a.node_id  # B pinned A's real key: this cannot verify
    with pytest.raises(SignatureInvalid):
        await send(b, forged)
    await still_serves(a, b)


async def test_embedded_key_that_is_not_the_senders_is_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    mallory = fixed_identity(667)
    forged = request(mallory, b.node_id, sender_id=a.node_id, embed_key=True)
    with pytest.raises(KeyMismatch) as info:
        await send(b, forged)
    assert "claims sender" in info.value.message
    forged = request(mallory, b.node_id, embed_key=True)
    forged.signature.key_id = a.node_id  # key hashes to mallory's id, not A's
    with pytest.raises(KeyMismatch):
        await send(b, forged)
    await still_serves(a, b)


async def test_unknown_key_without_embedded_key(pair: tuple[Node, Node]) -> None:
    _, b = pair
    stranger = fixed_identity(668)
    with pytest.raises(UnknownKey):
        await send(b, request(stranger, b.node_id))
    # The same stranger is accepted once it supplies its (self-certifying) key.
    response = await send(b, request(stranger, b.node_id, embed_key=True))
    assert response.message.signature.key_id == b.node_id


async def test_replayed_message_is_rejected(pair: tuple[Node, Node]) -> None:
    a, b = pair
    message = request(a.identity, b.node_id)
    await send(b, message)
    with pytest.raises(ReplayDetected) as info:
        await send(b, message)
    assert info.value.reason == "REPLAY_DETECTED"
    await still_serves(a, b)


@pytest.mark.parametrize("offset_s", [-3600, -40, 3600])
async def test_stale_or_future_timestamp_is_rejected(
    pair: tuple[Node, Node], offset_s: int
) -> None:
    a, b = pair
    clock = FixedClock(SYSTEM_CLOCK.now_ms())
    clock.advance(offset_s)
    with pytest.raises(StaleMessage) as info:
        await send(b, request(a.identity, b.node_id, clock=clock))
    assert info.value.reason == "STALE_TIMESTAMP"
    await still_serves(a, b)


@pytest.mark.parametrize("shape", ["der", "63-bytes", "65-bytes", "empty", "wrong-algorithm"])
async def test_malformed_signatures_are_rejected(pair: tuple[Node, Node], shape: str) -> None:
    a, b = pair
    message = request(a.identity, b.node_id)
    raw = message.signature.value
    if shape == "der":
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        message.signature.value = encode_dss_signature(r, s)
    elif shape == "63-bytes":
        message.signature.value = raw[:63]
    elif shape == "65-bytes":
        message.signature.value = raw + b"\x00"
    elif shape == "empty":
        message.signature.value = b""
    else:
        message.signature.algorithm = "Ed25519"
    with pytest.raises(SignatureInvalid):
        await send(b, message)
    await still_serves(a, b)


async def test_unsigned_envelopes_are_refused_when_policy_requires_signatures() -> None:
    async with node_pair(_demo, allow_unsigned=False) as (a, b):
        with pytest.raises(Unauthenticated) as info:
            await send(b, request(None, b.node_id))
        assert info.value.reason == "SIGNATURE_MISSING"
        await still_serves(a, b)


async def test_ed25519_nodes_interoperate() -> None:
    async with node_pair(_demo, key_algorithm=KeyAlgorithm.ED25519) as (a, b):
        assert a.identity.algorithm == "Ed25519"
        assert await a.request(b.node_id, "demo.add", {"a": 2, "b": 2}) == 4
        message = request(a.identity, b.node_id)
        message.content = message.content[:-1] + bytes([message.content[-1] ^ 1])
        with pytest.raises(SignatureInvalid):
            await send(b, message)


async def test_every_rejection_is_an_aral_error_with_a_reason(pair: tuple[Node, Node]) -> None:
    a, b = pair
    message = request(a.identity, b.node_id)
    message.signature.value = b"\x00" * 64
    with pytest.raises(AralError) as info:
        await send(b, message)
    assert info.value.reason
    assert info.value.status.name == "UNAUTHENTICATED"


async def test_unsigned_traffic_does_not_fill_the_replay_cache(pair: tuple[Node, Node]) -> None:
    a, b = pair
    unsigned = [request(None, b.node_id) for _ in range(20)]
    for message in unsigned:
        await send(b, message)
    ids = [pb.MessageContent.FromString(m.content).header.message_id for m in unsigned]
    assert not any(b.replay.seen("anonymous", mid) for mid in ids)
    signed = request(a.identity, b.node_id)
    await send(b, signed)
    mid = pb.MessageContent.FromString(signed.content).header.message_id
    assert b.replay.seen(a.node_id, mid)


async def test_a_signed_calls_error_comes_back_whole(make_node: Any) -> None:
    """The client rebuilds an error response the way a channel does: the most
    specific class (by its stable code) and its retry hint, not just the status."""
    no_add = Rule("no-add", decision=Decision.BLOCK, capabilities=frozenset({"demo.add"}))
    node = make_node("limits", governance=RuleEvaluator([no_add]))

    @node.capability(id="busy.wait")
    async def busy() -> None:
        raise RateLimited("come back later", retry_after=1.5)

    me = Identity.generate()
    async with node, NodeClient(node.address, identity=me) as client:
        card = build_card(
            me, name="me", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
        )
        await client.handshake(card)
        with pytest.raises(RateLimited) as limited:
            await client.request("busy.wait", {})
        assert limited.value.retry_after == 1.5
        with pytest.raises(GovernanceBlocked):
            await client.request("demo.add", {"a": 1, "b": 2})
