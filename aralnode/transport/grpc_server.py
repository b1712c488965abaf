"""The gRPC door: the AgentNode service, users' protobuf services, health, reflection.

Every method is registered with a raw-bytes deserializer and parses its request
itself, so garbage on the wire ends as INVALID_ARGUMENT with a ``google.rpc.Status``,
never as grpc's own INTERNAL "exception deserializing request".
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.addresses import join_host_port
from aralnode.core.calls import plain_call
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext, clean_trace_id
from aralnode.core.envelope import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REQUEST,
    RESPONSE,
    build_content,
    encode_payload,
    open_message,
    seal_into,
)
from aralnode.core.errors import (
    AralError,
    InvalidRequest,
    MalformedMessage,
    MessageTooLarge,
    Unauthenticated,
)
from aralnode.core.handshake import VerifiedCard, accept_hello, make_welcome
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.pipeline import Pipeline, peer_scopes_of
from aralnode.core.replay import ReplayGuard
from aralnode.transport.health import HealthService
from aralnode.transport.status import abort

log = logging.getLogger("aralnode.grpc")

Context = grpc.aio.ServicerContext[Any, Any]
_NO_SCOPES: frozenset[str] = frozenset()
# Framing around an envelope. The envelope limit is ours to enforce and report with
# details; grpc's own transport limit (twice that, see ``transport_limit``) only
# stops frames far beyond it, before they are buffered whole.
FRAME_HEADROOM = 64 * 1024


# Room for the signature and wrapping around an envelope's content in one request.
ENVELOPE_OVERHEAD = 4096


def transport_limit(max_message_bytes: int) -> int:
    return 2 * max_message_bytes + FRAME_HEADROOM


@dataclass(slots=True)
class NodeHooks:
    """What the gRPC door needs from the node, as plain callables."""

    card: Callable[[], pb.SignedNodeCard]
    status: Callable[[], pb.NodeStatus]
    peers: Callable[[], list[pb.Peer]]
    peer_capabilities: Callable[[str], list[pb.Capability]]
    capabilities: Callable[[str], pb.ListCapabilitiesResponse]
    on_handshake: Callable[[VerifiedCard, str, str], None]
    forward: Callable[[str, str, Any, float | None, CallContext], Awaitable[Any]]
    # Serves one AgentNode.Channel stream, writing with ``context.write``.
    channel: Callable[[AsyncIterator[bytes], Context], Awaitable[None]] | None = None


@dataclass(slots=True)
class Security:
    identity: Identity
    keyring: KeyRing
    replay: ReplayGuard
    allow_unsigned: bool = True
    peer_scopes: frozenset[str] = frozenset()
    peer_grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    keepalive_ms: int = 10_000


def _parse(cls: type[Message], data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except (DecodeError, RecursionError):
        raise MalformedMessage(f"request does not parse as {cls.DESCRIPTOR.full_name}") from None


def _deadline(context: Context, clock: Clock, ttl_ms: int = 0) -> tuple[float | None, bool]:
    """The call's deadline, and whether gRPC itself enforces it (it cancels the
    handler when its own deadline passes; a tighter TTL we must enforce)."""
    remaining = context.time_remaining()
    if ttl_ms > 0 and (remaining is None or ttl_ms / 1000 < remaining):
        return clock.monotonic() + ttl_ms / 1000, False
    if remaining is None:
        return None, False
    return clock.monotonic() + remaining, True


class AgentNodeService:
    """``aral.v1.AgentNode`` over the shared pipeline."""

    def __init__(self, security: Security, pipeline: Pipeline, hooks: NodeHooks, clock: Clock):
        self.sec = security
        self.pipeline = pipeline
        self.hooks = hooks
        self.clock = clock
        self.node_id = security.identity.node_id

    # -- unary methods -------------------------------------------------------

    async def Handshake(self, data: bytes, context: Context) -> bytes:
        try:
            request = _parse(pb.HandshakeRequest, data)
            hello, verified, version = accept_hello(
                request, my_node_id=self.node_id, replay=self.sec.replay
            )
            keyring = self.sec.keyring
            newly_pinned = not keyring.is_pinned(verified.key.key_id)
            keyring.pin(verified.key)  # bounded: KeyRingFull (RESOURCE_EXHAUSTED)
            try:
                # May refuse (RESOURCE_EXHAUSTED) when too many peers that dialled
                # us are still unconfirmed: then we keep nothing of this one.
                self.hooks.on_handshake(verified, context.peer(), version)
            except BaseException:
                if newly_pinned:
                    keyring.unpin(verified.key.key_id)
                raise
            response = make_welcome(
                self.sec.identity,
                self.hooks.card(),
                hello,
                version,
                self.clock,
                keepalive_ms=self.sec.keepalive_ms,
            )
            return response.SerializeToString()
        except AralError as exc:
            self.pipeline.counters["handshake.rejected"] += 1
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def Invoke(self, data: bytes, context: Context) -> bytes:
        trace_id = ""
        try:
            if len(data) > self.sec.max_message_bytes + ENVELOPE_OVERHEAD:
                raise MessageTooLarge(
                    f"request is {len(data)} bytes; the limit is {self.sec.max_message_bytes}",
                    details={"size": len(data), "limit": self.sec.max_message_bytes},
                )
            request = _parse(pb.InvokeRequest, data)
            kind = request.WhichOneof("kind")
            if kind == "message":
                return await self._invoke_message(request.message, context)
            if kind == "call":
                trace_id = request.call.trace_id
                return await self._invoke_call(request.call, context)
            raise MalformedMessage(
                "InvokeRequest needs `message` or `call`", reason="MISSING_FIELD"
            )
        except AralError as exc:
            await abort(context, exc, trace_id)
            raise

    async def _invoke_message(self, message: pb.ARALMessage, context: Context) -> bytes:
        sec = self.sec
        opened = open_message(
            message,
            keyring=sec.keyring,
            replay=sec.replay,
            require_signature=not sec.allow_unsigned,
            max_bytes=sec.max_message_bytes,
            expected_recipient=self.node_id,
        )
        header, body = opened.header, opened.body
        if header.HasField("channel"):
            # Bound to a position on an A2A channel: only that channel may deliver it
            # (a captured channel request must not be relayed through this door).
            raise Unauthenticated(
                "message is bound to an A2A channel; Invoke does not take it",
                reason="CHANNEL_BOUND_MESSAGE",
            )
        action = body.action
        if body.type != REQUEST or not action:
            raise MalformedMessage(
                "Invoke takes a request message with an action", reason="MISSING_FIELD"
            )
        # Each read of a field makes a new Python object: read each once.
        sender, message_id, content_type = header.sender, header.message_id, header.content_type
        signed = opened.signed
        on_behalf_of = header.on_behalf_of
        deadline, enforced = _deadline(context, self.clock, header.ttl_ms)
        ctx = CallContext(
            door="grpc",
            caller=sender if signed else "",
            peer=context.peer(),
            trace_id=clean_trace_id(header.trace_id or message_id),
            message_id=message_id,
            deadline=deadline,
            deadline_enforced=enforced,
            signed=signed,
            # Peer rights go to a verified node key (pinned by a handshake), not to
            # any self-made key a message embeds; a delegated call gets its
            # principal's rights, not the signer's.
            scopes=peer_scopes_of(sender, sec.peer_scopes, sec.peer_grants)
            if signed and not on_behalf_of and sec.keyring.is_pinned(sender)
            else _NO_SCOPES,
            on_behalf_of=on_behalf_of,
        )
        value = await self.pipeline.invoke(ctx, action, opened.parameters(sec.max_message_bytes))
        payload, compression = encode_payload(value, content_type or codec.JSON)
        response = pb.InvokeResponse()
        content = build_content(
            sender=self.node_id,
            recipient=sender,
            body=pb.Body(type=RESPONSE, action=action, result=payload, correlation_id=message_id),
            clock=self.clock,
            trace_id=ctx.trace_id,
            content_type=content_type,
            compression=compression,
        )
        seal_into(response.message, content, sec.identity if signed else None)
        return response.SerializeToString()

    async def _invoke_call(self, call: pb.Call, context: Context) -> bytes:
        deadline, enforced = _deadline(context, self.clock)
        ctx = CallContext(
            door="grpc", peer=context.peer(), deadline=deadline, deadline_enforced=enforced
        )
        reply = await plain_call(
            call,
            ctx,
            pipeline=self.pipeline,
            forward=self.hooks.forward,
            node_id=self.node_id,
            clock=self.clock,
        )
        return pb.InvokeResponse(result=reply).SerializeToString()

    async def _builtin(
        self,
        context: Context,
        data: bytes,
        cls: type[Message],
        answer: Callable[[Any], Message],
        name: str,
    ) -> bytes:
        """The node's own read-only methods, admitted and judged like any call."""
        try:
            request = _parse(cls, data)
            deadline, enforced = _deadline(context, self.clock)
            ctx = CallContext(
                door="grpc", peer=context.peer(), deadline=deadline, deadline_enforced=enforced
            )

            async def run(_: Any) -> Message:
                return answer(request)

            method = f"{pb.AGENT_NODE_SERVICE_NAME}/{name}"
            response = await self.pipeline.call(ctx, method, None, run)
            return response.SerializeToString()
        except AralError as exc:
            await abort(context, exc)
            raise

    async def ListCapabilities(self, data: bytes, context: Context) -> bytes:
        return await self._builtin(
            context,
            data,
            pb.ListCapabilitiesRequest,
            lambda request: self.hooks.capabilities(request.node_id),
            "ListCapabilities",
        )

    async def GetStatus(self, data: bytes, context: Context) -> bytes:
        return await self._builtin(
            context, data, pb.GetStatusRequest, lambda _: self.hooks.status(), "GetStatus"
        )

    async def ListPeers(self, data: bytes, context: Context) -> bytes:
        return await self._builtin(
            context,
            data,
            pb.ListPeersRequest,
            lambda _: pb.ListPeersResponse(peers=self.hooks.peers()),
            "ListPeers",
        )

    async def Channel(self, requests: AsyncIterator[bytes], context: Context) -> None:
        # A coroutine, not an async generator: grpc then lets the link's writer send
        # with ``context.write`` itself, a loop turn sooner than a yield would.
        if self.hooks.channel is None:
            await abort(
                context,
                InvalidRequest("channels are not enabled on this node", reason="UNIMPLEMENTED"),
            )
            return
        await self.hooks.channel(requests, context)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        unary = {
            name: grpc.unary_unary_rpc_method_handler(
                getattr(self, name), request_deserializer=None, response_serializer=None
            )
            for name in ("Handshake", "Invoke", "ListCapabilities", "GetStatus", "ListPeers")
        }
        unary["Channel"] = grpc.stream_stream_rpc_method_handler(
            self.Channel, request_deserializer=None, response_serializer=None
        )
        return grpc.method_handlers_generic_handler(pb.AGENT_NODE_SERVICE_NAME, unary)


# -- users' protobuf services ----------------------------------------------------


def service_handler(
    servicer: object,
    service: ServiceDescriptor,
    pipeline: Pipeline,
    clock: Clock,
) -> grpc.GenericRpcHandler[Any, Any]:
    """Serve ``service`` with ``servicer``, every method through the pipeline (so
    admission, governance and its listeners apply exactly as on every other door):
    unary ones as capabilities, streaming ones admitted and judged once before they
    start (a request stream is judged by method; its messages are the method's to
    check), with requests parsed by us."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        impl = getattr(servicer, method.name, None)
        if impl is None:
            continue
        handlers[method.name] = _method_handler(impl, method, pipeline, clock)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _method_handler(
    impl: Callable[..., Any], method: MethodDescriptor, pipeline: Pipeline, clock: Clock
) -> grpc.RpcMethodHandler[Any, Any]:
    req_cls: type[Message] = GetMessageClass(method.input_type)
    resp_cls: type[Message] = GetMessageClass(method.output_type)
    cap_id = f"{method.containing_service.full_name}/{method.name}"
    serialize = resp_cls.SerializeToString

    def context_for(context: Context) -> CallContext:
        md = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        deadline, enforced = _deadline(context, clock)
        return CallContext(
            door="grpc",
            peer=context.peer(),
            deadline=deadline,
            deadline_enforced=enforced,
            metadata=md,
        )

    if not method.client_streaming and not method.server_streaming:

        async def unary(data: bytes, context: Context) -> bytes:
            try:
                request = _parse(req_cls, data)
                params = json_format.MessageToDict(request)
                value = await pipeline.invoke(context_for(context), cap_id, params)
                response = resp_cls()
                json_format.ParseDict(value, response)
                return serialize(response)
            except AralError as exc:
                await abort(context, exc)
                raise

        return grpc.unary_unary_rpc_method_handler(unary)

    if not method.client_streaming:

        async def server_stream(data: bytes, context: Context) -> AsyncIterator[bytes]:
            try:
                request = _parse(req_cls, data)
                ctx = context_for(context)
                async for item in pipeline.stream_message(ctx, cap_id, impl, request):
                    yield serialize(item)
            except AralError as exc:
                await abort(context, exc)

        return grpc.unary_stream_rpc_method_handler(server_stream)

    async def parsed(requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for data in requests:
            yield _parse(req_cls, data)

    if not method.server_streaming:

        async def client_stream(requests: AsyncIterator[bytes], context: Context) -> bytes:
            # Admitted and judged before the first request is read (by method; the
            # requests are the method's to check), the slot held until it answers.
            ctx = context_for(context)

            async def run(_: Any) -> bytes:
                return serialize(await impl(parsed(requests), ctx))

            try:
                return await pipeline.call(ctx, cap_id, None, run, risk="unspecified")
            except AralError as exc:
                await abort(context, exc)
                raise

        return grpc.stream_unary_rpc_method_handler(client_stream)

    async def bidi(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        try:
            ctx = context_for(context)
            items = pipeline.stream(ctx, cap_id, None, lambda _: impl(parsed(requests), ctx))
            async for item in items:
                yield serialize(item)
        except AralError as exc:
            await abort(context, exc)

    return grpc.stream_stream_rpc_method_handler(bidi)


# -- server assembly -------------------------------------------------------------


def _check_free(host: str, port: int, address: str) -> None:
    """Raise a clear ``OSError`` if no address ``host`` resolves to can be bound at
    ``port`` (in use, or not allowed); grpc serves if any of them binds."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot bind the gRPC door to {address}: {exc}") from None
    failure: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                failure = failure or exc
            else:
                return
    if failure is not None:
        raise OSError(failure.errno, f"cannot bind the gRPC door to {address}: {failure.strerror}")


class GrpcServer:
    """A grpc.aio server with AgentNode, health, reflection and users' services."""

    def __init__(self, *, max_message_bytes: int, keepalive_ms: int) -> None:
        limit = transport_limit(max_message_bytes)
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.keepalive_time_ms", keepalive_ms),
                ("grpc.keepalive_timeout_ms", max(keepalive_ms // 2, 1000)),
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.so_reuseport", 0),
            ]
        )
        self.health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._services: list[str] = []
        self.port = 0

    def add(self, handler: grpc.GenericRpcHandler[Any, Any], service_name: str) -> None:
        self.server.add_generic_rpc_handlers((handler,))
        self._services.append(service_name)

    async def start(self, host: str, port: int) -> int:
        names = [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        reflection.enable_server_reflection([*names, reflection.SERVICE_NAME], self.server)
        address = join_host_port(host, port)
        if port:
            _check_free(host, port, address)  # grpc would log its own failure first
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises where it used to return 0
            raise OSError(f"cannot bind the gRPC door to {address}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC door to {address}")
        await self.server.start()
        for name in ("", *self._services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING first (peers and balancers stop sending), then drain."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)

    async def stop_now(self) -> None:
        """Cancel every call still in flight; cuts short a ``stop`` that is draining."""
        await self.server.stop(None)
