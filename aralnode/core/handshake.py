"""Signed node cards and the Hello/Welcome handshake (PRO-009…012), sans-IO.

Verification order for a card: the signature verifies with the key the card
carries, the key hashes to the card's node id, and (when known) the node id is the
one we expected to reach. The Hello is signed by its sender's key and carries a
fresh nonce and timestamp; the Welcome signs that nonce back, so neither side can
replay an old handshake of someone else's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError

from aralnode import _proto as pb
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import Clock
from aralnode.core.envelope import SUPPORTED_VERSIONS, new_nonce
from aralnode.core.errors import (
    KeyMismatch,
    MalformedMessage,
    MessageTooLarge,
    UnsupportedVersion,
)
from aralnode.core.identity import Identity, PublicKey
from aralnode.core.replay import ReplayGuard

SOFTWARE = "aralnode/0.1.0"
MAX_CARD_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CardLimits:
    """What a peer's card may carry: everything in it ends up stored (peer table,
    key ring, listings) or fanned out (one MCP tool per capability), so a card past
    any bound is refused at the handshake (``CARD_TOO_LARGE``) before any of it is
    kept. The defaults are far above what a real node shows (``NodeConfig``'s
    ``card_*`` fields set them).

    Attributes:
        max_bytes: The serialized card.
        max_capabilities: Capabilities listed.
        max_items: Endpoints, protocol versions, and a capability's scopes.
        max_text_chars: Each short text: name, software, key algorithm, an
            endpoint's protocol and address, a capability's id, name, gRPC method
            and each scope.
        max_description_chars: A capability's description.
        max_schema_bytes: Each JSON schema of a capability, serialized.
        max_schema_depth: Nesting of objects and arrays in each schema.
    """

    max_bytes: int = MAX_CARD_BYTES
    max_capabilities: int = 1024
    max_items: int = 64
    max_text_chars: int = 256
    max_description_chars: int = 8192
    max_schema_bytes: int = 64 * 1024
    max_schema_depth: int = 20


DEFAULT_CARD_LIMITS = CardLimits()


@dataclass(slots=True)
class VerifiedCard:
    """A node card whose signature and id-key binding were checked."""

    card: pb.NodeCard
    key: PublicKey
    signed: pb.SignedNodeCard

    @property
    def node_id(self) -> str:
        return self.card.node_id


def build_card(
    identity: Identity,
    *,
    name: str,
    endpoints: list[tuple[str, str]],
    registry: CapabilityRegistry,
    clock: Clock,
) -> pb.SignedNodeCard:
    card = pb.NodeCard(
        node_id=identity.node_id,
        name=name,
        endpoints=[pb.Endpoint(protocol=p, address=a) for p, a in endpoints],
        protocol_versions=list(SUPPORTED_VERSIONS),
        public_key=identity.public_key.spki,
        key_algorithm=identity.algorithm,
        capabilities=[c.to_proto() for c in registry],
        issued_at_unix_ms=clock.now_ms(),
        software=SOFTWARE,
        capability_digest=registry.digest,
    )
    raw = card.SerializeToString()
    return pb.SignedNodeCard(card=raw, signature=identity.sign(pb.PAYLOAD_NODE_CARD, raw))


def _too_much(field: str, got: int, limit: int, unit: str) -> MessageTooLarge:
    return MessageTooLarge(
        f"node card refused: {field} has {got} {unit}, at most {limit} are taken",
        reason="CARD_TOO_LARGE",
        details={"field": field, "got": got, "limit": limit},
    )


def _bound(field: str, got: int, limit: int, unit: str = "items") -> None:
    if got > limit:
        raise _too_much(field, got, limit, unit)


def _texts(field: str, values: list[str] | tuple[str, ...], limit: int) -> None:
    for value in values:
        _bound(field, len(value), limit, "characters")


# NodeCard's repeated fields, by field number: counted on the wire before a parse.
_REPEATED = {3: "endpoints", 4: "protocol_versions", 7: "capabilities"}


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(raw) and shift < 64:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise MalformedMessage("node card does not parse")


def count_card_fields(raw: bytes, limits: CardLimits = DEFAULT_CARD_LIMITS) -> None:
    """Count a serialized card's top-level fields before it is parsed: parsing
    builds every capability it lists (20,000 in 440 KB), and a card holding more of
    anything than ``limits`` allow is refused without that. Stops at the first
    field past a bound, so it reads at most about as many fields as a card may have.

    Raises:
        MessageTooLarge: ``CARD_TOO_LARGE``, as ``check_card``.
        MalformedMessage: The bytes are no protobuf message.
    """
    bounds = {3: limits.max_items, 4: limits.max_items, 7: limits.max_capabilities}
    counts = dict.fromkeys(bounds, 0)
    most = limits.max_capabilities + 2 * limits.max_items + 16  # every field a card has
    pos = fields = 0
    while pos < len(raw):
        key, pos = _varint(raw, pos)
        number, wire = key >> 3, key & 7
        fields += 1
        if number in counts:
            counts[number] += 1
            _bound(_REPEATED[number], counts[number], bounds[number])
        _bound("card", fields, most, "fields")
        if wire == 0:
            _, pos = _varint(raw, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = _varint(raw, pos)
            pos += size
        else:
            raise MalformedMessage("node card does not parse")


def _schema_depth(schema: struct_pb2.Struct) -> int:
    """How deep objects and arrays nest in ``schema`` (the object itself is 1);
    iterative, so no schema can exhaust the stack."""
    deepest = 0
    stack: list[tuple[struct_pb2.Value, int]] = [(struct_pb2.Value(struct_value=schema), 1)]
    while stack:
        value, depth = stack.pop()
        kind = value.WhichOneof("kind")
        if kind == "struct_value":
            children = list(value.struct_value.fields.values())
        elif kind == "list_value":
            children = list(value.list_value.values)
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_capability(cap: pb.Capability, limits: CardLimits) -> None:
    texts = limits.max_text_chars
    _texts("capabilities.id", [cap.id], texts)
    _texts("capabilities.name", [cap.name], texts)
    _texts("capabilities.grpc_method", [cap.grpc_method], texts)
    description = len(cap.description)
    _bound("capabilities.description", description, limits.max_description_chars, "characters")
    _bound("capabilities.required_scopes", len(cap.required_scopes), limits.max_items)
    _texts("capabilities.required_scopes", list(cap.required_scopes), texts)
    for name in ("input_schema", "output_schema"):
        if not cap.HasField(name):
            continue
        schema: struct_pb2.Struct = getattr(cap, name)
        field = f"capabilities.{name}"
        _bound(field, schema.ByteSize(), limits.max_schema_bytes, "bytes")
        _bound(field, _schema_depth(schema), limits.max_schema_depth, "levels of nesting")


def check_card(card: pb.NodeCard, limits: CardLimits = DEFAULT_CARD_LIMITS) -> None:
    """Hold a parsed card to ``limits``.

    Raises:
        MessageTooLarge: ``CARD_TOO_LARGE``, with the field, what it had and the
            limit in its details.
    """
    texts = limits.max_text_chars
    _bound("capabilities", len(card.capabilities), limits.max_capabilities)
    _bound("endpoints", len(card.endpoints), limits.max_items)
    _bound("protocol_versions", len(card.protocol_versions), limits.max_items)
    for field in ("name", "software", "key_algorithm", "capability_digest"):
        _texts(field, [getattr(card, field)], texts)
    _texts("protocol_versions", list(card.protocol_versions), texts)
    for endpoint in card.endpoints:
        _texts("endpoints.protocol", [endpoint.protocol], texts)
        _texts("endpoints.address", [endpoint.address], texts)
    for cap in card.capabilities:
        _check_capability(cap, limits)


def verify_card(
    signed: pb.SignedNodeCard,
    *,
    expected_node_id: str = "",
    limits: CardLimits = DEFAULT_CARD_LIMITS,
) -> VerifiedCard:
    """Check a card's bounds, signature and id binding; raise an ``AralError`` if
    anything is off (``CARD_TOO_LARGE`` past ``limits``)."""
    if len(signed.card) > limits.max_bytes:
        raise _too_much("card", len(signed.card), limits.max_bytes, "bytes")
    count_card_fields(signed.card, limits)
    card = pb.NodeCard()
    try:
        card.ParseFromString(signed.card)
    except DecodeError:
        raise MalformedMessage("node card does not parse") from None
    # Before the signature: counting is cheaper than a verify, and a peer's own
    # signature over a hostile card makes it no smaller.
    check_card(card, limits)
    if not card.public_key:
        raise MalformedMessage("node card carries no public key", reason="MISSING_FIELD")
    key = PublicKey(card.public_key)
    if key.key_id != card.node_id:
        raise KeyMismatch(
            f"card claims node id {card.node_id!r} but its key hashes to {key.key_id}"
        )
    if signed.signature.key_id != key.key_id:
        raise KeyMismatch("card is signed by a key other than the one it carries")
    key.verify(pb.PAYLOAD_NODE_CARD, signed.card, signed.signature)
    if expected_node_id and card.node_id != expected_node_id:
        raise KeyMismatch(
            f"expected node {expected_node_id} but reached {card.node_id}",
            reason="UNEXPECTED_NODE",
        )
    if _NON_FINITE_VALUE.search(signed.card):  # only then is the walk worth it
        _check_schemas(card)
    return VerifiedCard(card, key, signed)


# A ``google.protobuf.Value`` number is its tag (field 2, fixed64: 0x11) and a
# little-endian double; a NaN or an infinity has every exponent bit set (its last
# byte 0x7F or 0xFF, the one before it 0xF0 or more). A card with no such run of
# bytes has no non-finite number in any schema, and is not walked (a 2,000-capability
# card takes ~40 ms to walk, ~1 ms to search).
_NON_FINITE_VALUE = re.compile(rb"\x11[\x00-\xff]{6}[\xf0-\xff][\x7f\xff]")


def _check_schemas(card: pb.NodeCard) -> None:
    """Refuse a card whose capability schemas hold a number JSON has none of (NaN,
    an infinity): every door lists them as JSON (REST, MCP ``tools/list``, the CLI),
    and such a number would make each listing fail, or be invalid JSON. A Struct is
    the only place a card carries doubles; our own cards are made from JSON."""
    for cap in card.capabilities:
        for field in (cap.input_schema, cap.output_schema):
            if not _finite_struct(field):
                raise MalformedMessage(
                    f"the schema of {cap.id[:200]!r} in the card holds a number that is not "
                    "JSON (NaN or an infinity)",
                    reason="NOT_A_JSON_NUMBER",
                )


def _finite_struct(struct: struct_pb2.Struct) -> bool:
    # Iterative (a schema may nest deeply) and with no Python copy of the Struct.
    todo: list[Any] = [struct]
    while todo:
        item = todo.pop()
        values = item.fields.values() if isinstance(item, struct_pb2.Struct) else item.values
        for v in values:
            kind = v.WhichOneof("kind")
            if kind == "number_value":
                if not math.isfinite(v.number_value):
                    return False
            elif kind == "struct_value":
                todo.append(v.struct_value)
            elif kind == "list_value":
                todo.append(v.list_value)
    return True


def negotiate(offered: list[str] | tuple[str, ...]) -> str:
    """The first of the offered versions (most preferred first) that we support."""
    for version in offered:
        if version in SUPPORTED_VERSIONS:
            return version
    raise UnsupportedVersion(
        f"no common protocol version: offered {list(offered)}, "
        f"supported {list(SUPPORTED_VERSIONS)}",
        details={"offered": list(offered), "supported": list(SUPPORTED_VERSIONS)},
    )


def make_hello(
    identity: Identity, card: pb.SignedNodeCard, clock: Clock, *, expected_node_id: str = ""
) -> tuple[pb.HandshakeRequest, bytes]:
    """A signed Hello and the nonce the Welcome must echo."""
    nonce = new_nonce()
    hello = pb.Hello(
        card=card,
        protocol_versions=list(SUPPORTED_VERSIONS),
        nonce=nonce,
        timestamp_unix_ms=clock.now_ms(),
        expected_node_id=expected_node_id,
    )
    raw = hello.SerializeToString()
    return pb.HandshakeRequest(hello=raw, signature=identity.sign(pb.PAYLOAD_HELLO, raw)), nonce


def accept_hello(
    request: pb.HandshakeRequest,
    *,
    my_node_id: str,
    replay: ReplayGuard,
    limits: CardLimits = DEFAULT_CARD_LIMITS,
) -> tuple[pb.Hello, VerifiedCard, str]:
    """Verify a Hello; return it, the dialer's verified card and the chosen version."""
    hello = pb.Hello()
    try:
        hello.ParseFromString(request.hello)
    except DecodeError:
        raise MalformedMessage("hello does not parse") from None
    verified = verify_card(hello.card, limits=limits)
    if request.signature.key_id != verified.node_id:
        raise KeyMismatch("hello is not signed by the key of the card it carries")
    verified.key.verify(pb.PAYLOAD_HELLO, request.hello, request.signature)
    if hello.expected_node_id and hello.expected_node_id != my_node_id:
        raise KeyMismatch(
            f"dialer expected node {hello.expected_node_id}, this is {my_node_id}",
            reason="UNEXPECTED_NODE",
        )
    if not 8 <= len(hello.nonce) <= 64:
        raise MalformedMessage("hello nonce must be 8..64 bytes", reason="MISSING_FIELD")
    replay.admit(verified.node_id, "hello:" + hello.nonce.hex(), hello.timestamp_unix_ms)
    version = negotiate(list(hello.protocol_versions))
    return hello, verified, version


def make_welcome(
    identity: Identity,
    card: pb.SignedNodeCard,
    hello: pb.Hello,
    version: str,
    clock: Clock,
    *,
    keepalive_ms: int,
) -> pb.HandshakeResponse:
    welcome = pb.Welcome(
        card=card,
        selected_version=version,
        hello_nonce=hello.nonce,
        timestamp_unix_ms=clock.now_ms(),
        keepalive_ms=keepalive_ms,
    )
    raw = welcome.SerializeToString()
    return pb.HandshakeResponse(welcome=raw, signature=identity.sign(pb.PAYLOAD_WELCOME, raw))


def accept_welcome(
    response: pb.HandshakeResponse,
    *,
    nonce: bytes,
    expected_node_id: str = "",
    limits: CardLimits = DEFAULT_CARD_LIMITS,
) -> tuple[pb.Welcome, VerifiedCard]:
    """Verify a Welcome answers our Hello and comes from the expected node."""
    welcome = pb.Welcome()
    try:
        welcome.ParseFromString(response.welcome)
    except DecodeError:
        raise MalformedMessage("welcome does not parse") from None
    verified = verify_card(welcome.card, expected_node_id=expected_node_id, limits=limits)
    if response.signature.key_id != verified.node_id:
        raise KeyMismatch("welcome is not signed by the key of the card it carries")
    verified.key.verify(pb.PAYLOAD_WELCOME, response.welcome, response.signature)
    if welcome.hello_nonce != nonce:
        raise KeyMismatch("welcome does not answer our hello", reason="NONCE_MISMATCH")
    if welcome.selected_version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(f"peer selected unsupported version {welcome.selected_version!r}")
    return welcome, verified
