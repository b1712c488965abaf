"""A client for the AgentNode service: plain calls for tools, signed envelopes for nodes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.clock import SYSTEM_CLOCK, Clock
from aralnode.core.envelope import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REQUEST,
    build_content,
    encode_payload,
    open_message,
    remote_error,
    seal_into,
)
from aralnode.core.errors import (
    MalformedMessage,
    Unauthenticated,
)
from aralnode.core.handshake import (
    DEFAULT_CARD_LIMITS,
    CardLimits,
    VerifiedCard,
    accept_welcome,
    make_hello,
)
from aralnode.core.identity import Identity, KeyRing
from aralnode.service.tracing import for_client
from aralnode.transport.grpc_server import transport_limit
from aralnode.transport.status import from_rpc_error
from aralnode.transport.tls_grpc import ClientTls, open_channel

T = TypeVar("T")


# HTTP/2 keepalive pings from clients. The server (``GrpcServer``) accepts a ping
# without data every >= 1 s (more often is "too many pings" and a GOAWAY), so a
# client never pings more often than every 2 s.
CLIENT_KEEPALIVE_MS = 5_000
MIN_CLIENT_KEEPALIVE_MS = 2_000


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive_ms: int = CLIENT_KEEPALIVE_MS
) -> list[tuple[str, Any]]:
    """Channel arguments: our message limits, no transparent retries, and keepalive
    pings (every ``keepalive_ms``, at least 2 s) so that a dead or silent peer's
    connection fails within keepalive + timeout instead of when TCP gives up."""
    limit = transport_limit(max_message_bytes)
    keepalive = max(keepalive_ms, MIN_CLIENT_KEEPALIVE_MS)
    return [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.enable_retries", 0),
        ("grpc.keepalive_time_ms", keepalive),
        ("grpc.keepalive_timeout_ms", max(keepalive // 2, 1_000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class _WithMetadata(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds the client's metadata (its credentials) to every call."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def _details(self, details: Any) -> Any:
        given = tuple(details.metadata or ())
        return details._replace(metadata=grpc.aio.Metadata(*given, *self.metadata))

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class NodeClient:
    """Talks to one node.

    Without an identity it makes plain, unsigned calls (what ``aralnode call`` and
    grpcurl do). With one, ``handshake()`` verifies the node's signed card and
    ``request()`` sends signed envelopes whose signed responses it verifies.
    """

    def __init__(
        self,
        address: str,
        *,
        identity: Identity | None = None,
        keyring: KeyRing | None = None,
        clock: Clock = SYSTEM_CLOCK,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        card_limits: CardLimits = DEFAULT_CARD_LIMITS,
        tls: ClientTls | None = None,
        tls_node_id: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        metadata: Sequence[tuple[str, str]] = (),
        node_id: str = "",
    ) -> None:
        """``tls``: dial with TLS (our certificate, the mesh CA), checking that the
        node is ``tls_node_id`` ("": that its certificate names the address).
        ``credentials`` (a tool's ``--cacert/--cert/--key``): TLS with these,
        checking the name ``server_name`` ("": the address's host).
        ``metadata``: sent with every call (a caller's ``authorization: Bearer …``
        or ``x-api-key``); not with a ``channel`` given, which has its own.
        ``node_id``: the node at ``address``, to address signed requests to without
        a handshake (default ``tls_node_id``); a signed request names its node, so
        it can never be relayed to another and run there as us."""
        self.address = address
        self.card_limits = card_limits  # what the node's card may carry
        self.identity = identity
        self.keyring = keyring if keyring is not None else KeyRing()
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self._own_channel = channel is None
        options = channel_options(max_message_bytes)
        interceptors: Any = [_WithMetadata(tuple(metadata))] if metadata else None
        if channel is None and credentials is not None:
            if server_name:
                options.append(("grpc.ssl_target_name_override", server_name))
            channel = grpc.aio.secure_channel(
                address, credentials, options=options, interceptors=interceptors
            )
        self.channel = channel or open_channel(address, options, tls, tls_node_id, interceptors)
        self.stub = pb.AgentNodeStub(self.channel)  # type: ignore[no-untyped-call]
        self.peer: VerifiedCard | None = None
        self.version = ""
        self.node_id = node_id or tls_node_id

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_channel:
            await self.channel.close(None)

    async def _rpc(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None

    # -- node to node ------------------------------------------------------------

    async def handshake(
        self,
        card: pb.SignedNodeCard,
        *,
        expected_node_id: str = "",
        timeout: float = 10.0,
        pin: bool = True,
    ) -> VerifiedCard:
        """Hello/Welcome: verify the node's card and pin its key.

        ``pin=False``: verify only; the caller pins ``verified.key`` once it has
        admitted the node (``PeerConnector``: a refused dial pins nothing). Until
        then the node's signed responses do not verify unless its key is known."""
        if self.identity is None:
            raise ValueError("a handshake needs an identity")
        request, nonce = make_hello(
            self.identity, card, self.clock, expected_node_id=expected_node_id
        )
        response = await self._rpc(lambda: self.stub.Handshake(request, timeout=timeout))
        welcome, verified = accept_welcome(
            response, nonce=nonce, expected_node_id=expected_node_id, limits=self.card_limits
        )
        if pin:
            self.keyring.pin(verified.key)
        self.peer, self.version = verified, welcome.selected_version
        return verified

    async def request(
        self,
        capability: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        content_type: str = codec.JSON,
        trace_id: str = "",
        sign: bool = True,
        on_behalf_of: str = "",
        delegation: pb.Delegation | None = None,
    ) -> Any:
        """Invoke ``capability`` with a (signed) request envelope; return its result.

        ``on_behalf_of`` marks a delegated call (see ``Node.request``);
        ``delegation`` is its signed statement (``aralnode.core.delegation``).

        Raises:
            ValueError: ``sign`` without an identity, or without knowing the node
                (no ``handshake()`` and no ``node_id``): a request signed for no
                one could be replayed to any node."""
        recipient = self.peer.node_id if self.peer is not None else self.node_id
        if sign and self.identity is None:
            raise ValueError("signed requests need an identity")
        if sign and not recipient:
            raise ValueError(
                "signed requests name the node they are for: handshake() first, "
                "or give the client the node's id (node_id=)"
            )
        payload, compression = encode_payload(params, content_type)
        sender = self.identity.node_id if self.identity is not None else "anonymous"
        content = build_content(
            sender=sender,
            recipient=recipient,
            body=pb.Body(type=REQUEST, action=capability, parameters=payload),
            clock=self.clock,
            trace_id=trace_id,
            content_type=content_type,
            compression=compression,
            ttl_ms=int(timeout * 1000) if timeout else 0,
            on_behalf_of=on_behalf_of,
            delegation=delegation,
        )
        traceparent, tracestate = for_client()  # signed with the header: the trace goes on
        if traceparent:
            content.header.traceparent, content.header.tracestate = traceparent, tracestate
        request = pb.InvokeRequest()
        seal_into(
            request.message, content, self.identity if sign else None, embed_key=self.peer is None
        )
        try:  # not through _rpc: a call's worth of frames less on the hot path
            response = await self.stub.Invoke(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err) from None
        return self._result(response, content.header.message_id, recipient, signed=sign)

    def _result(
        self, response: pb.InvokeResponse, request_id: str, node_id: str, *, signed: bool
    ) -> Any:
        if response.WhichOneof("kind") != "message":
            raise MalformedMessage("node answered a message with something else")
        reply = response.message
        if signed and not reply.HasField("signature"):
            raise Unauthenticated("node answered a signed request with an unsigned response")
        opened = open_message(
            reply,
            keyring=self.keyring,
            replay=None,
            require_signature=signed,
            max_bytes=self.max_message_bytes,
        )
        if signed and opened.header.sender != node_id:
            raise Unauthenticated("response is signed by another node than the one we reached")
        if opened.body.correlation_id != request_id:
            raise MalformedMessage(
                "response does not answer our request", reason="CORRELATION_MISMATCH"
            )
        if opened.body.HasField("error"):
            raise remote_error(opened.body.error)
        return opened.result(self.max_message_bytes)

    # -- plain calls -------------------------------------------------------------

    async def call(
        self,
        capability: str,
        params: Any = None,
        *,
        to: str = "",
        timeout: float | None = None,
        trace_id: str = "",
    ) -> pb.CallResult:
        """A plain, unsigned call (as grpcurl would make it)."""
        call = pb.Call(capability=capability, to=to, trace_id=trace_id)
        if params:
            if not isinstance(params, dict):
                raise TypeError("plain call parameters must be a JSON object")
            call.parameters.update(params)
        if timeout:
            call.timeout_ms = int(timeout * 1000)
        traceparent, tracestate = for_client()
        metadata = (("traceparent", traceparent), ("tracestate", tracestate))
        response = await self._rpc(
            lambda: self.stub.Invoke(
                pb.InvokeRequest(call=call),
                timeout=timeout,
                metadata=metadata if traceparent else None,
            )
        )
        result: pb.CallResult = response.result
        return result

    async def capabilities(
        self, node_id: str = "", *, timeout: float = 10.0
    ) -> pb.ListCapabilitiesResponse:
        return await self._rpc(
            lambda: self.stub.ListCapabilities(
                pb.ListCapabilitiesRequest(node_id=node_id), timeout=timeout
            )
        )

    async def status(self, *, timeout: float = 10.0) -> pb.NodeStatus:
        return await self._rpc(lambda: self.stub.GetStatus(pb.GetStatusRequest(), timeout=timeout))

    async def peers(self, *, timeout: float = 10.0) -> list[pb.Peer]:
        response = await self._rpc(
            lambda: self.stub.ListPeers(pb.ListPeersRequest(), timeout=timeout)
        )
        return list(response.peers)


def unwrap(result: pb.CallResult) -> Any:
    """A plain call's result as Python; whole numbers are ``int`` (see ``codec.from_value``)."""
    return codec.from_value(result.result) if result.HasField("result") else None
