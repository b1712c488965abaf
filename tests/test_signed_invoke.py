"""Two nodes: signed envelopes from A to B, and every way of tampering with them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from google.rpc import error_details_pb2, status_pb2

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
from aralnode.core.envelope import SUPPORTED_VERSIONS, build_content, encode_payload, seal
from aralnode.core.errors import KeyMismatch, UnknownKey
from aralnode.core.governance import Decision, Rule, RuleEvaluator
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity
from aralnode.testing import fixed_identity, node_pair
from aralnode.transport.status import from_rpc_error
from tests.conftest import DEMO, recorded


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


# -- keys the node does not take: a clean refusal with a reason, never a traceback ----------


def _der_length(n: int) -> bytes:
    return bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else bytes([0x82]) + n.to_bytes(2)


def _spki(algorithm: bytes, key: bytes) -> bytes:
    """A SubjectPublicKeyInfo from an AlgorithmIdentifier's contents and the key bits."""
    alg = b"\x30" + _der_length(len(algorithm)) + algorithm
    bits = b"\x03" + _der_length(len(key) + 1) + b"\x00" + key
    return b"\x30" + _der_length(len(alg) + len(bits)) + alg + bits


_EC = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
_P256 = bytes.fromhex("06082a8648ce3d030107")  # its curve parameter: prime256v1


def _other_keys() -> dict[str, bytes]:
    """Public keys a node must refuse, by what is wrong with them."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519

    def spki(key: Any) -> bytes:
        return bytes(
            key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    point = fixed_identity(1).public_key.spki[-65:]  # a P-256 point, uncompressed
    return {
        # Curves OpenSSL does not have: cryptography raises UnsupportedAlgorithm.
        "unknown-curve-prime192v2": _spki(_EC + bytes.fromhex("06082a8648ce3d030102"), point),
        "unknown-curve-sect163k1": _spki(_EC + bytes.fromhex("06052b81040001"), point),
        "unknown-curve-sm2": _spki(_EC + bytes.fromhex("06082a811ccf5501822d"), point),
        "unknown-algorithm": _spki(bytes.fromhex("06092a864886f70d01010b0500"), point),
        # Keys that parse but are not ES256 or Ed25519.
        "secp256k1": spki(ec.generate_private_key(ec.SECP256K1()).public_key()),
        "p384": spki(ec.generate_private_key(ec.SECP384R1()).public_key()),
        "rsa": spki(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()),
        "x25519": spki(x25519.X25519PrivateKey.generate().public_key()),
        "ed448": spki(ed448.Ed448PrivateKey.generate().public_key()),
        # Bytes that are no key at all.
        "point-off-the-curve": _spki(_EC + _P256, b"\x04" + bytes(64)),
        "garbage": b"\x30\x03\x02\x01\x01",
        "truncated": fixed_identity(1).public_key.spki[:40],
    }


OTHER_KEYS = _other_keys()
KEY_REASONS = {"UNSUPPORTED_KEY", "INVALID_KEY"}


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not logged, [r.getMessage() for r in logged]


async def _raw_status(node: Node, method: str, request: Any) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        rpc = channel.unary_unary(f"/aral.v1.AgentNode/{method}")
        try:
            await rpc(request.SerializeToString(), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code(), from_rpc_error(err).reason
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("shape", sorted(OTHER_KEYS))
async def test_a_key_the_node_does_not_take_is_refused_cleanly(
    pair: tuple[Node, Node], shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In an envelope (the embedded key) and in a handshake (the card's key): the
    refusal is UNAUTHENTICATED with a reason saying what is wrong with the key."""
    a, b = pair
    spki = OTHER_KEYS[shape]
    message = request(a.identity, b.node_id)
    message.signature.public_key = spki
    message.signature.key_id = "k" * 32  # not a key b knows, so it reads the embedded one
    caplog.set_level(logging.INFO)
    code, reason = await _raw_status(b, "Invoke", pb.InvokeRequest(message=message))
    assert (code, reason in KEY_REASONS) == (grpc.StatusCode.UNAUTHENTICATED, True), (code, reason)

    card = pb.NodeCard.FromString(a.card().card)
    card.public_key = spki
    hello = pb.Hello(
        card=pb.SignedNodeCard(card=card.SerializeToString(), signature=a.card().signature),
        protocol_versions=list(SUPPORTED_VERSIONS),
        nonce=b"n" * 16,
        timestamp_unix_ms=SYSTEM_CLOCK.now_ms(),
    )
    raw = hello.SerializeToString()
    handshake = pb.HandshakeRequest(hello=raw, signature=a.identity.sign(pb.PAYLOAD_HELLO, raw))
    code, reason = await _raw_status(b, "Handshake", handshake)
    assert (code, reason in KEY_REASONS) == (grpc.StatusCode.UNAUTHENTICATED, True), (code, reason)
    _no_tracebacks(caplog)
    await still_serves(a, b)


async def test_refusals_before_the_pipeline_are_audited(pair: tuple[Node, Node]) -> None:
    """A forged signature and a replay never reach the
    pipeline's stages, but each is in the audit: at the pre-execution point, under
    Invoke (not the action the unverified message names), with no caller."""
    a, b = pair
    seen = recorded(b)
    forged = request(a.identity, b.node_id, action="demo.secret")
    value = bytearray(forged.signature.value)
    value[10] ^= 0x01
    forged.signature.value = bytes(value)
    async with grpc.aio.insecure_channel(b.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb.AgentNodeStub(channel).Invoke(pb.InvokeRequest(message=forged), timeout=10)
    told = _error_info(info.value)
    assert told.reason == "SIGNATURE_INVALID"
    fresh = request(a.identity, b.node_id)
    await send(b, fresh)
    with pytest.raises(ReplayDetected):
        await send(b, fresh)
    refused = [r for r in seen if r.point == "pre"]
    assert [(r.action, r.outcome, r.reason, r.caller) for r in refused] == [
        ("aral.v1.AgentNode/Invoke", "unauthorized", "SIGNATURE_INVALID", ""),
        ("aral.v1.AgentNode/Invoke", "unauthorized", "REPLAY_DETECTED", ""),
    ]
    assert all(r.door == "grpc" and r.trace_id for r in refused)
    # The caller is told the trace id its refusal was recorded under.
    assert told.metadata["trace_id"] == refused[0].trace_id
    # The call in between went through the pipeline, recorded as itself.
    assert [(r.action, r.outcome) for r in seen if r.point != "pre"] == [("demo.add", "ok")]
    assert b.pipeline.counters["invoke.unauthorized"] == 2


async def test_a_hello_that_does_not_verify_is_audited_as_a_refused_connection(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    seen = recorded(b)
    me = Identity.generate()
    card = build_card(
        me, name="me", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
    )
    hello = pb.Hello(
        card=card, protocol_versions=list(SUPPORTED_VERSIONS),
        nonce=Identity.generate().node_id.encode()[:16], timestamp_unix_ms=SYSTEM_CLOCK.now_ms(),
    ).SerializeToString()  # fmt: skip
    forged = pb.HandshakeRequest(
        hello=hello, signature=Identity.generate().sign(pb.PAYLOAD_HELLO, hello)
    )
    async with grpc.aio.insecure_channel(b.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb.AgentNodeStub(channel).Handshake(forged, timeout=10)
    reason = from_rpc_error(info.value).reason
    assert [(r.action, r.direction, r.point, r.reason, r.caller) for r in seen] == [
        ("connect", "connect", "connect", reason, "")
    ]
    assert b.pipeline.counters["handshake.rejected"] == 1
    await still_serves(a, b)


def _error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    raise AssertionError("no ErrorInfo in the status")
