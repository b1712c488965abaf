"""What a peer's card may make this node store or fan out is bounded (issue 14, item 7).

A card lists capabilities (each with two JSON schemas, scopes, texts), endpoints,
protocol versions and texts; every one of them ends up in the peer table, the
listings and the MCP tools. A card past any bound of ``NodeConfig``'s ``card_*``
fields is refused at the handshake, in either direction, with
``RESOURCE_EXHAUSTED``/``CARD_TOO_LARGE`` naming the field, and nothing of the peer
is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode import Node, NodeConfig
from aralnode import _proto as pb
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import SUPPORTED_VERSIONS
from aralnode.core.errors import AralError, MalformedMessage, MessageTooLarge
from aralnode.core.handshake import CardLimits, count_card_fields, verify_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.transport.grpc_client import NodeClient
from tests.hostile import MIB, NodeProcess

MakeNode = Callable[..., Node]


def signed_card(me: Identity, **fields: Any) -> pb.SignedNodeCard:
    """``me``'s card with ``fields`` (anything a hostile peer may put there), signed."""
    card = pb.NodeCard(
        node_id=me.node_id,
        name="hostile",
        protocol_versions=list(SUPPORTED_VERSIONS),
        public_key=me.public_key.spki,
        key_algorithm=me.algorithm,
        issued_at_unix_ms=SYSTEM_CLOCK.now_ms(),
        software="hostile/1",
    )
    for name, value in fields.items():
        if isinstance(value, list):
            getattr(card, name).extend(value)
        else:
            setattr(card, name, value)
    raw = card.SerializeToString()
    return pb.SignedNodeCard(card=raw, signature=me.sign(pb.PAYLOAD_NODE_CARD, raw))


def caps(count: int, **fields: Any) -> list[pb.Capability]:
    return [pb.Capability(id=f"cap.{i}", name=f"cap{i}", **fields) for i in range(count)]


def nested(depth: int) -> struct_pb2.Struct:
    """A JSON object ``depth`` objects deep."""
    inner = struct_pb2.Struct()
    for _ in range(depth - 1):
        outer = struct_pb2.Struct()
        outer.fields["x"].struct_value.CopyFrom(inner)
        inner = outer
    return inner


def big_schema(nbytes: int) -> struct_pb2.Struct:
    schema = struct_pb2.Struct()
    schema.fields["description"].string_value = "x" * nbytes
    return schema


LIMITS = CardLimits()
TEXT, ITEMS = LIMITS.max_text_chars + 1, LIMITS.max_items + 1


def cap(**fields: Any) -> dict[str, Any]:
    """Card fields: one capability with ``fields``."""
    return {"capabilities": [pb.Capability(**{"id": "c", **fields})]}


def endpoints(count: int, address: str = "h:1") -> dict[str, Any]:
    return {"endpoints": [pb.Endpoint(protocol="grpc", address=address) for _ in range(count)]}


# Each a card a real node never shows, and the field its refusal names.
TOO_MUCH: list[tuple[str, dict[str, Any]]] = [
    ("capabilities", {"capabilities": caps(LIMITS.max_capabilities + 1)}),
    ("endpoints", endpoints(ITEMS)),
    ("protocol_versions", {"protocol_versions": ["v"] * ITEMS}),
    ("name", {"name": "n" * TEXT}),
    ("software", {"software": "s" * TEXT}),
    ("endpoints.address", endpoints(1, "a" * TEXT)),
    ("capabilities.id", cap(id="i" * TEXT)),
    ("capabilities.name", cap(name="n" * TEXT)),
    ("capabilities.grpc_method", cap(grpc_method="/" * TEXT)),
    ("capabilities.description", cap(description="d" * (LIMITS.max_description_chars + 1))),
    ("capabilities.required_scopes", cap(required_scopes=["s"] * ITEMS)),
    ("capabilities.required_scopes", cap(required_scopes=["s" * TEXT])),
    ("capabilities.input_schema", cap(input_schema=big_schema(LIMITS.max_schema_bytes))),
    ("capabilities.output_schema", cap(output_schema=big_schema(LIMITS.max_schema_bytes))),
    ("capabilities.input_schema", cap(input_schema=nested(LIMITS.max_schema_depth + 1))),
]


@pytest.mark.parametrize(("field", "fields"), TOO_MUCH, ids=[f for f, _ in TOO_MUCH])
def test_a_card_past_a_bound_is_refused_naming_the_field(
    field: str, fields: dict[str, Any]
) -> None:
    card = signed_card(Identity.generate(), **fields)
    with pytest.raises(MessageTooLarge) as caught:
        verify_card(card, limits=LIMITS)
    assert caught.value.reason == "CARD_TOO_LARGE"
    assert caught.value.details["field"] == field, caught.value.details
    assert field in str(caught.value)


def test_a_card_at_every_bound_is_taken() -> None:
    """The bounds are inclusive: a card with exactly the most of everything verifies."""
    cap = pb.Capability(
        id="i" * LIMITS.max_text_chars,
        description="d" * LIMITS.max_description_chars,
        required_scopes=["s" * LIMITS.max_text_chars] * LIMITS.max_items,
        input_schema=nested(LIMITS.max_schema_depth),
    )
    card = signed_card(
        Identity.generate(),
        name="n" * LIMITS.max_text_chars,
        capabilities=[cap, *caps(LIMITS.max_capabilities - 1)],
        **endpoints(LIMITS.max_items, "a" * LIMITS.max_text_chars),
    )
    assert len(verify_card(card, limits=LIMITS).card.capabilities) == LIMITS.max_capabilities


def _raw_card(me: Identity, tail: bytes) -> pb.SignedNodeCard:
    """``me``'s card with ``tail`` (raw protobuf fields) appended, signed."""
    raw = signed_card(me).card + tail
    return pb.SignedNodeCard(card=raw, signature=me.sign(pb.PAYLOAD_NODE_CARD, raw))


def test_a_card_is_counted_before_it_is_parsed() -> None:
    """Parsing a card builds every capability it lists: one listing more than the
    bound is refused on the count, before any is built (here each is no message at
    all, which a parse would have found first)."""
    garbage = b"\x3a\x01\xff" * (LIMITS.max_capabilities + 1)  # field 7, 1 byte: 0xff
    with pytest.raises(MessageTooLarge) as caught:
        verify_card(_raw_card(Identity.generate(), garbage), limits=LIMITS)
    assert caught.value.details["field"] == "capabilities"


def test_a_card_of_endless_fields_is_refused() -> None:
    """A field repeated that holds one value (the last wins) still costs a parse each:
    a card has at most as many fields as its bounds allow."""
    names = b"\x12\x01n" * 5000  # name = "n", 5,000 times
    with pytest.raises(MessageTooLarge) as caught:
        verify_card(_raw_card(Identity.generate(), names), limits=LIMITS)
    assert caught.value.details["field"] == "card"


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=512))
def test_counting_any_bytes_ends_cleanly(data: bytes) -> None:
    """Whatever a peer sends as its card, the count passes it on or refuses it with
    a clear error; it never raises anything else."""
    with contextlib.suppress(MessageTooLarge, MalformedMessage):
        count_card_fields(data, LIMITS)


def test_the_bounds_are_configuration() -> None:
    config = NodeConfig(card_max_capabilities=5)
    assert config.card_limits.max_capabilities == 5
    assert config.card_limits.max_bytes == NodeConfig().card_max_bytes
    with pytest.raises(ValueError, match="card_max_capabilities"):
        NodeConfig(card_max_capabilities=0)
    with pytest.raises(ValueError, match="card_max_bytes"):
        NodeConfig(card_max_bytes=100)


async def _hello(node: Node, card: pb.SignedNodeCard, me: Identity) -> AralError | None:
    async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
        try:
            await client.handshake(card)
        except AralError as exc:
            return exc
    return None


async def test_a_dialler_with_too_many_capabilities_is_refused_at_the_handshake(
    make_node: MakeNode,
) -> None:
    """Thousands of capabilities in a Hello: refused with a clear reason, the key not
    pinned, the peer not kept; a card within the bounds still gets through."""
    node = make_node("target")
    async with node:
        me = Identity.generate()
        refused = await _hello(node, signed_card(me, capabilities=caps(5000)), me)
        # RESOURCE_EXHAUSTED on the wire (a client rebuilds it as RateLimited)
        assert refused is not None
        assert refused.reason == "CARD_TOO_LARGE", refused
        assert "capabilities" in str(refused)
        assert not node.keyring.is_pinned(me.node_id)
        assert node.peer_table.get(me.node_id) is None
        assert node.pipeline.counters["handshake.rejected"] == 1
        assert await _hello(node, signed_card(me, capabilities=caps(3)), me) is None


async def test_our_dial_refuses_a_peer_whose_card_is_past_our_bounds(make_node: MakeNode) -> None:
    """The same bounds on a card a Welcome brings: ``connect`` raises, the peer is not
    CONNECTED, no channel is dialled."""
    small = make_node("small", card_max_capabilities=2)
    big = make_node("big")  # the demo's capabilities: more than 2
    async with small, big:
        with pytest.raises(MessageTooLarge, match="capabilities") as caught:
            await small.connect(big.address)
        assert caught.value.reason == "CARD_TOO_LARGE"
        assert small.peer_table.get(big.node_id) is None
        assert not small.connector.clients
        assert small.channels is not None
        assert big.node_id not in small.channels.peers


PEERS, CAPS = 60, 5000  # before the bound: all kept, RSS +69 MiB; after: +8 MiB


@pytest.mark.slow
async def test_hostile_cards_cost_the_node_nothing(tmp_path: Path) -> None:
    """60 peers, each with a signed card of 5,000 capabilities, handshake with a
    node process: every one is refused and nothing of it kept; RSS and fds stay
    put and an ordinary client is served. (Cards near the 1 MiB byte bound cost
    the gRPC transport some RSS per request however they are answered: 20 of
    20,000 capabilities each, +47 MiB refused, +95 MiB kept.)"""
    async with NodeProcess.running(tmp_path / "target") as node:
        await node.probe()
        rss0, fds0 = node.rss(), node.fds()
        refused = 0
        for _ in range(PEERS):
            me = Identity.generate()
            card = signed_card(me, capabilities=caps(CAPS))
            async with NodeClient(node.grpc_address, identity=me, keyring=KeyRing()) as client:
                try:
                    await client.handshake(card, timeout=30)
                except AralError as exc:
                    refused += exc.reason == "CARD_TOO_LARGE"
        grown, fds = node.rss() - rss0, node.fds() - fds0
        print(f"\nhostile cards: RSS +{grown / MIB:.1f} MiB, fds +{fds}, {refused}/{PEERS} refused")
        assert refused == PEERS
        assert grown < 32 * MIB
        assert fds < 16
        await node.probe()


def test_a_node_warns_when_its_own_card_is_past_the_bounds(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    node = make_node("many", card_max_capabilities=2)  # the demo has more
    with caplog.at_level("WARNING", logger="aralnode"):
        node.card()
    assert "will refuse its card" in caplog.text
    assert "capabilities" in caplog.text
