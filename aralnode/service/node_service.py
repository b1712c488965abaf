"""``aral.v1.AgentNode``, implemented once for every door.

``NodeService`` takes request messages and a ``CallContext`` and returns response
messages; the gRPC servicer, the REST routes, the MCP tools and the WebSocket door
are thin adapters around it (bytes or JSON in, the context from the
``ContextBuilder``, errors mapped on the way out). Every method runs through the
pipeline: ``Invoke`` as the capability it names (or a forward to a peer), the others
as the built-in actions ``aral.v1.AgentNode/<Method>``.

``BUILT_INS`` says which methods the bridges expose and how: ``Handshake`` and
``Channel`` are between nodes only and are served by the gRPC door alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.audit import Point
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext
from aralnode.core.envelope import (
    REQUEST,
    RESPONSE,
    OpenedMessage,
    build_content,
    encode_payload,
    open_message,
    seal_into,
)
from aralnode.core.errors import AralError, InvalidRequest, MalformedMessage, Unauthenticated
from aralnode.core.governance import Direction
from aralnode.core.handshake import (
    DEFAULT_CARD_LIMITS,
    CardLimits,
    VerifiedCard,
    accept_hello,
    make_welcome,
)
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.peers import PeerInfo
from aralnode.core.replay import ReplayGuard
from aralnode.service.admin import AdminMethods
from aralnode.service.auth import READ_SCOPES
from aralnode.service.calls import INVOKE_ACTION as _INVOKE_ACTION
from aralnode.service.calls import Forwarder, plain_call
from aralnode.service.connections import admit_peer
from aralnode.service.context import ContextBuilder
from aralnode.service.pipeline import Pipeline
from aralnode.service.refusals import audited, refused, refused_as_caller
from aralnode.service.stages import reaches

BuiltInMethod = Callable[[Any, CallContext], Awaitable[Message]]
M = TypeVar("M", bound=Message)


class NodeInfo(Protocol):
    """What the built-in methods read from the node."""

    def status(self) -> pb.NodeStatus: ...

    def peer_protos(self) -> list[pb.Peer]: ...

    def peer_as_proto(self, peer: PeerInfo) -> pb.Peer:
        """``peer_proto`` of ``peer``, with what the node knows of it besides its
        table entry (its circuit breaker)."""

    def connected_peers(self) -> list[pb.Peer]: ...

    def capabilities_of(self, node_id: str) -> pb.ListCapabilitiesResponse:
        """This node's capabilities, or a verified peer's (``PeerNotFound``)."""

    def peer_capabilities(self, node_id: str) -> list[pb.Capability]:
        """A verified peer's capabilities as its card listed them ([] if none)."""

    def card(self) -> pb.SignedNodeCard: ...

    def inbound_handshake(self, verified: VerifiedCard, transport_peer: str, version: str) -> None:
        """A peer dialled us and proved its key (may refuse: ``RateLimited``)."""


def peer_proto(p: PeerInfo) -> pb.Peer:
    """A peer table entry as ``aral.v1.Peer``: what ``ListPeers`` lists and every
    door shows (its state as the proto's enum, ``PEER_STATE_CONNECTED``)."""
    return pb.Peer(
        node_id=p.node_id,
        name=p.name,
        address=p.address,
        state=int(p.state),  # type: ignore[arg-type]  # enum values are ints
        health=p.health,
        capability_ids=list(p.capability_ids),
        last_seen_unix_ms=p.last_seen_ms,
        source=p.source,
        protocol_version=p.protocol_version,
        key_fingerprint=p.key_fingerprint,
    )


@dataclass(slots=True, frozen=True)
class Envelopes:
    """How signed ``Invoke`` messages are checked: the node's key and key ring, the
    replay window, whether unsigned ones are taken, and the size limit; and what a
    dialler's card may carry in a handshake."""

    identity: Identity
    keyring: KeyRing
    replay: ReplayGuard
    allow_unsigned: bool
    max_message_bytes: int
    keepalive_ms: int
    card_limits: CardLimits = DEFAULT_CARD_LIMITS


@dataclass(slots=True, frozen=True)
class BuiltIn:
    """One ``AgentNode`` method as the bridges see it.

    Attributes:
        attribute: The ``NodeService`` method that implements it.
        tool: Listed as an MCP tool of its own (``Invoke`` is not: every capability
            already is a tool).
    """

    attribute: str
    tool: bool


BUILT_INS: dict[str, BuiltIn] = {
    "Invoke": BuiltIn("invoke", tool=False),
    "ListCapabilities": BuiltIn("list_capabilities", tool=True),
    "GetStatus": BuiltIn("get_status", tool=True),
    "ListPeers": BuiltIn("list_peers", tool=True),
    # agent:admin (service/admin.py): never MCP tools
    "ListApprovals": BuiltIn("list_approvals", tool=False),
    "Approve": BuiltIn("approve", tool=False),
    "Deny": BuiltIn("deny", tool=False),
    "ListHalts": BuiltIn("list_halts", tool=False),
    "ClearHalt": BuiltIn("clear_halt", tool=False),
}


class NodeService(AdminMethods):
    """The node's own methods (see the module docstring)."""

    def __init__(
        self,
        *,
        info: NodeInfo,
        pipeline: Pipeline,
        contexts: ContextBuilder,
        forward: Forwarder,
        envelopes: Envelopes,
        clock: Clock,
    ) -> None:
        self.info = info
        self.pipeline = pipeline
        self.contexts = contexts
        self.forward = forward
        self.envelopes = envelopes
        self.clock = clock
        self.node_id = envelopes.identity.node_id
        # mTLS: (certificate PEM, node id) -> raises unless the certificate is that
        # node's (``aralnode.access.tls.CertRules.bind``); None without mTLS.
        self.bind_certificate: Callable[[bytes, str], object] | None = None

    def method(self, name: str) -> BuiltInMethod | None:
        """The implementation of ``AgentNode/<name>`` the bridges may call."""
        built_in = BUILT_INS.get(name)
        if built_in is None:
            return None
        method: BuiltInMethod = getattr(self, built_in.attribute)
        return method

    # -- between nodes -----------------------------------------------------------------

    def handshake(
        self, request: pb.HandshakeRequest, transport_peer: str, certificate: bytes = b""
    ) -> pb.HandshakeResponse:
        """Hello/Welcome: verify the caller's card, pin its key, answer with ours.

        ``certificate``: the PEM of the client certificate the transport verified;
        under mTLS (``bind_certificate`` set) it must be the card's node's.

        Raises:
            AralError: the hello does not verify, its certificate is not its node's
                (``CERT_IDENTITY_MISMATCH``) or is denied, or there is no room.
        """
        try:
            answer = self._handshake(request, transport_peer, certificate)
        except AralError:
            self.pipeline.counters["handshake.rejected"] += 1
            raise
        self.pipeline.counters["handshake.accepted"] += 1
        return answer

    def _handshake(
        self, request: pb.HandshakeRequest, transport_peer: str, certificate: bytes
    ) -> pb.HandshakeResponse:
        env = self.envelopes
        # A hello that does not verify is audited as a refused connection (admit_peer
        # records the verified ones, admitted or not).
        ctx = CallContext(door="grpc", peer=transport_peer)
        with audited(
            self.pipeline, ctx, "connect", direction=Direction.CONNECT, kind="connect",
            point=Point.CONNECT,
        ):  # fmt: skip
            hello, verified, version = accept_hello(
                request, my_node_id=self.node_id, replay=env.replay, limits=env.card_limits
            )
            if self.bind_certificate is not None:  # before anything is pinned or kept
                self.bind_certificate(certificate, verified.node_id)
        admit_peer(self.pipeline, verified.node_id, transport_peer)  # the connection point
        if verified.node_id != self.node_id:  # (our own dial to us: it sees SELF, keeps nothing)
            self._keep_inbound(verified, transport_peer, version)
        return make_welcome(
            env.identity,
            self.info.card(),
            hello,
            version,
            self.clock,
            keepalive_ms=env.keepalive_ms,
        )

    def _keep_inbound(self, verified: VerifiedCard, transport_peer: str, version: str) -> None:
        """Pin the key of a peer that dialled us and keep its card; nothing of it if
        the node refuses it."""
        keyring = self.envelopes.keyring
        newly_pinned = not keyring.is_pinned(verified.key.key_id)
        keyring.pin(verified.key)  # bounded: KeyRingFull (RESOURCE_EXHAUSTED)
        try:
            # May refuse (RESOURCE_EXHAUSTED) when too many peers that dialled us
            # are still unconfirmed: then we keep nothing of this one.
            self.info.inbound_handshake(verified, transport_peer, version)
        except BaseException:
            if newly_pinned:
                keyring.unpin(verified.key.key_id)
            raise

    # -- calls -------------------------------------------------------------------------

    def invoke(
        self, request: pb.InvokeRequest, ctx: CallContext, *, envelopes: bool = True
    ) -> Awaitable[pb.InvokeResponse]:
        """A plain ``call`` (here or forwarded), or a signed request message. Await it
        where it is called (a request of no kind is refused by the call itself).

        Args:
            envelopes: Whether this door takes signed messages (gRPC does; the HTTP
                doors take plain calls only).
        """
        kind = request.WhichOneof("kind")
        if kind == "message" and envelopes:
            return self._invoke_message(request.message, ctx)
        if kind == "call":
            return self._invoke_call(request.call, ctx)
        if kind == "message":
            error: AralError = InvalidRequest(
                "this door takes a plain `call`; signed messages travel over gRPC",
                reason="UNSUPPORTED_KIND",
            )
        else:
            error = MalformedMessage(
                "InvokeRequest needs `message` or `call`", reason="MISSING_FIELD"
            )
        raise refused_as_caller(self.pipeline, ctx, _INVOKE_ACTION, error)

    async def _invoke_call(self, call: pb.Call, ctx: CallContext) -> pb.InvokeResponse:
        reply = await plain_call(
            call,
            ctx,
            pipeline=self.pipeline,
            forward=self.forward,
            node_id=self.node_id,
            clock=self.clock,
        )
        return pb.InvokeResponse(result=reply)

    def _open_request(self, message: pb.ARALMessage, ctx: CallContext) -> tuple[OpenedMessage, Any]:
        """``message`` verified, fresh, for this node and a request, and its
        parameters; a refusal here (a payload that does not decode too) is audited
        (``refusals``): the pipeline never sees it."""
        env = self.envelopes
        try:
            opened = open_message(
                message,
                keyring=env.keyring,
                replay=env.replay,
                require_signature=not env.allow_unsigned,
                max_bytes=env.max_message_bytes,
                expected_recipient=self.node_id,
            )
            if opened.header.HasField("channel"):
                # Bound to a position on an A2A channel: only that channel may deliver
                # it (a captured channel request must not be relayed through this door).
                raise Unauthenticated(
                    "message is bound to an A2A channel; Invoke does not take it",
                    reason="CHANNEL_BOUND_MESSAGE",
                )
            body = opened.body
            if body.type != REQUEST or not body.action:
                raise MalformedMessage(
                    "Invoke takes a request message with an action", reason="MISSING_FIELD"
                )
            params = opened.parameters(env.max_message_bytes)
        except AralError as exc:
            refused(self.pipeline, ctx, _INVOKE_ACTION, exc)
            raise
        return opened, params

    async def _invoke_message(self, message: pb.ARALMessage, ctx: CallContext) -> pb.InvokeResponse:
        env = self.envelopes
        opened, params = self._open_request(message, ctx)
        header, action = opened.header, opened.body.action
        signed = opened.signer is not None
        sender = header.sender
        self.contexts.signed(
            ctx, header, signed=signed, signer_verified=signed and env.keyring.is_pinned(sender)
        )
        value = await self.pipeline.invoke(ctx, action, params)
        content_type = header.content_type
        payload, compression = encode_payload(
            value, content_type or codec.JSON, limit=env.max_message_bytes
        )
        response = pb.InvokeResponse()
        content = build_content(
            sender=self.node_id,
            recipient=sender,
            body=pb.Body(
                type=RESPONSE, action=action, result=payload, correlation_id=header.message_id
            ),
            clock=self.clock,
            trace_id=ctx.trace_id,
            content_type=content_type,
            compression=compression,
        )
        seal_into(response.message, content, env.identity if signed else None)
        return response

    # -- read-only built-ins -------------------------------------------------------------

    async def list_capabilities(
        self, request: pb.ListCapabilitiesRequest, ctx: CallContext
    ) -> pb.ListCapabilitiesResponse:
        """This node's capabilities the caller's scopes reach (a listing shows what
        the caller could call), or a verified peer's as its card listed them (the
        peer decides who calls those)."""
        node_id = request.node_id

        def answer() -> pb.ListCapabilitiesResponse:
            listed = self.info.capabilities_of(node_id)
            if listed.node_id == self.node_id:
                reached = [c for c in listed.capabilities if reaches(ctx.scopes, c.required_scopes)]
                if len(reached) < len(listed.capabilities):
                    del listed.capabilities[:]
                    listed.capabilities.extend(reached)
            return listed

        return await self._built_in(ctx, "ListCapabilities", answer)

    async def get_status(self, request: pb.GetStatusRequest, ctx: CallContext) -> pb.NodeStatus:
        return await self._built_in(ctx, "GetStatus", self.info.status)

    async def list_peers(
        self, request: pb.ListPeersRequest, ctx: CallContext
    ) -> pb.ListPeersResponse:
        return await self._built_in(
            ctx, "ListPeers", lambda: pb.ListPeersResponse(peers=self.info.peer_protos())
        )

    async def _built_in(self, ctx: CallContext, name: str, answer: Callable[[], M]) -> M:
        async def run(_: Any) -> M:
            return answer()

        return await self.pipeline.call(
            ctx, f"{pb.AGENT_NODE_SERVICE_NAME}/{name}", None, run, scopes=READ_SCOPES
        )


__all__ = ["BUILT_INS", "BuiltIn", "Envelopes", "NodeInfo", "NodeService", "peer_proto"]
