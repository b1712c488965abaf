"""The gRPC door: ``aral.v1.AgentNode`` and users' protobuf services.

Each method parses its request bytes itself (raw-bytes deserializers), so garbage
on the wire ends as INVALID_ARGUMENT with a ``google.rpc.Status``, never as grpc's
own INTERNAL "exception deserializing request". Then the door does what every door
does: the context from the ``ContextBuilder``, the call to the service layer
(``NodeService`` or the ``Pipeline``), errors mapped on the way out
(``transport.status``). No handler is called from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from aralnode import _proto as pb
from aralnode.core.audit import Point
from aralnode.core.capabilities import ProtoService, call_servicer, servicer_stream
from aralnode.core.context import NO_CREDENTIALS, CallContext, Credentials, LazyMetadata
from aralnode.core.errors import (
    AralError,
    InvalidRequest,
    MalformedMessage,
    MessageTooLarge,
    Unauthenticated,
    response_too_large,
)
from aralnode.service.auth import INVOKE_SCOPES, READ_SCOPES
from aralnode.service.context import ContextBuilder
from aralnode.service.node_service import NodeService
from aralnode.service.pipeline import Pipeline
from aralnode.service.refusals import refused
from aralnode.transport.grpc_server import transport_limit
from aralnode.transport.quota import StreamQuota
from aralnode.transport.status import abort, abort_method
from aralnode.transport.tls_grpc import peer_certificate

Context = grpc.aio.ServicerContext[Any, Any]
ChannelHook = Callable[[AsyncIterator[bytes], Context], Awaitable[None]]
Unary = Callable[[bytes, Context], Awaitable[bytes]]

# Room for the signature and wrapping around an envelope's content in one request.
ENVELOPE_OVERHEAD = 4096
_INVOKE = f"{pb.AGENT_NODE_SERVICE_NAME}/Invoke"  # (what a refusal here is audited as)


def _parse(cls: type[Message], data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except (DecodeError, RecursionError):
        raise MalformedMessage(f"request does not parse as {cls.DESCRIPTOR.full_name}") from None


def call_context(
    contexts: ContextBuilder, context: Context, trace_id: str | None = None
) -> CallContext:
    """What the gRPC door knows about a call, made a ``CallContext`` by the builder:
    the peer, the metadata (text values, read if asked; gRPC names are lower case)
    and the time left, which gRPC itself enforces; under mTLS the certificate the
    transport verified (``Credentials.peer_certificate``)."""
    credentials = NO_CREDENTIALS
    if contexts.certificates:
        pem = peer_certificate(context)
        credentials = Credentials(peer_certificate=pem) if pem else NO_CREDENTIALS
    return contexts.build(
        "grpc",
        peer=context.peer(),
        metadata=LazyMetadata(context.invocation_metadata),
        timeout=context.time_remaining(),
        timeout_enforced=True,
        trace_id=trace_id,
        credentials=credentials,
    )


def listing_gate(
    pipeline: Pipeline, contexts: ContextBuilder, service: str
) -> Callable[[Context], None]:
    """What ``listing_requires_auth`` asks of a call of reflection ``service``: a
    caller the pipeline's authenticate stage (the same authenticator as on every
    door) names.

    Raises:
        Unauthenticated: an anonymous caller (``ANONYMOUS_REFUSED``), or one the
            authenticator refused.
    """
    action = f"{service}/ServerReflectionInfo"

    def gate(context: Context) -> None:
        ctx = call_context(contexts, context)
        pipeline.authenticate(ctx, action)
        if ctx.anonymous:
            raise Unauthenticated(
                "this node lists its services to authenticated callers only",
                reason="ANONYMOUS_REFUSED",
            )
        pipeline.stages.authorize(ctx, READ_SCOPES, action)  # a listing needs agent:read

    return gate


class AgentNodeDoor:
    """``aral.v1.AgentNode`` on gRPC: bytes to the request message, the context from
    the builder, ``NodeService`` does the rest, its errors as ``google.rpc.Status``.
    ``Channel`` streams go to the mesh (``channel``)."""

    def __init__(
        self,
        service: NodeService,
        contexts: ContextBuilder,
        *,
        max_message_bytes: int,
        channel: ChannelHook | None = None,
        streams: StreamQuota | None = None,
    ) -> None:
        self.service = service
        self.contexts = contexts
        self.max_message_bytes = max_message_bytes
        self.channel = channel
        self.streams = streams

    async def Handshake(self, data: bytes, context: Context) -> bytes:
        try:
            try:
                request = _parse(pb.HandshakeRequest, data)
            except AralError:
                self.service.pipeline.counters["handshake.rejected"] += 1
                raise
            cert = peer_certificate(context) if self.contexts.certificates else b""
            return self.service.handshake(request, context.peer(), cert).SerializeToString()
        except AralError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def Invoke(self, data: bytes, context: Context) -> bytes:
        request: pb.InvokeRequest | None = None
        ctx: CallContext | None = None
        try:
            if len(data) > self.max_message_bytes + ENVELOPE_OVERHEAD:
                raise MessageTooLarge(
                    f"request is {len(data)} bytes; the limit is {self.max_message_bytes}",
                    details={"size": len(data), "limit": self.max_message_bytes},
                )
            request = _parse(pb.InvokeRequest, data)
            # The trace id is the call's own or its message's: NodeService sets it.
            ctx = call_context(self.contexts, context, trace_id="")
            response = await self.service.invoke(request, ctx)
            return self._sendable(response.SerializeToString(), ctx)
        except AralError as exc:
            # The trace id the call was served (or refused, and audited) under.
            trace_id = ctx.trace_id if ctx is not None else ""
            await abort(context, exc, trace_id or (request.call.trace_id if request else ""))
            raise

    def _sendable(self, body: bytes, ctx: CallContext) -> bytes:
        return sendable(
            body, ctx, self.service.pipeline, _INVOKE, transport_limit(self.max_message_bytes)
        )

    def _built_in(self, method: MethodDescriptor) -> Unary:
        run = self.service.method(method.name)
        assert run is not None
        cls: type[Message] = GetMessageClass(method.input_type)
        action = f"{pb.AGENT_NODE_SERVICE_NAME}/{method.name}"

        async def handle(data: bytes, context: Context) -> bytes:
            try:
                request = _parse(cls, data)
                ctx = call_context(self.contexts, context)
                response = await run(request, ctx)
                return sendable(
                    response.SerializeToString(),
                    ctx,
                    self.service.pipeline,
                    action,
                    transport_limit(self.max_message_bytes),
                )
            except AralError as exc:
                await abort(context, exc)
                raise

        return handle

    async def Channel(self, requests: AsyncIterator[bytes], context: Context) -> None:
        # A coroutine, not an async generator: grpc then lets the link's writer send
        # with ``context.write`` itself, a loop turn sooner than a yield would.
        if self.channel is None:
            await abort(
                context,
                InvalidRequest("channels are not enabled on this node", reason="UNIMPLEMENTED"),
            )
            return
        if self.streams is None:
            await self.channel(requests, context)
            return
        try:  # a peer's share of the port: its channels count against its address
            key = self.streams.enter(context.peer())
        except AralError as exc:
            await abort(context, exc)
            return
        try:
            await self.channel(requests, context)
        finally:
            self.streams.leave(key)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """Every method of the service: the two between nodes, and each built-in
        ``NodeService`` implements (from the descriptor, not a list of names)."""
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            "Handshake": _unary(self.Handshake),
            "Invoke": _unary(self.Invoke),
            "Channel": grpc.stream_stream_rpc_method_handler(
                self.Channel, request_deserializer=None, response_serializer=None
            ),
        }
        for method in pb.AGENT_NODE_SERVICE.methods:
            if method.name not in handlers and self.service.method(method.name) is not None:
                handlers[method.name] = _unary(self._built_in(method))
        return grpc.method_handlers_generic_handler(pb.AGENT_NODE_SERVICE_NAME, handlers)


def sendable(body: bytes, ctx: CallContext, pipeline: Pipeline, action: str, limit: int) -> bytes:
    """``body``, unless it is past what grpc sends (``transport_limit``): then a
    refusal the caller can read (RESOURCE_EXHAUSTED, ``RESPONSE_TOO_LARGE``) that
    the audit log records after the call's own record, rather than grpc's bare
    error and a traceback (every response the door serializes comes through here)."""
    if len(body) <= limit:
        return body
    error = response_too_large("the response", len(body), limit)
    raise refused(pipeline, ctx, action, error, point=Point.POST)


def _unary(fn: Unary) -> grpc.RpcMethodHandler[Any, Any]:
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=None, response_serializer=None
    )


# -- users' protobuf services ----------------------------------------------------


def service_handler(
    served: ProtoService, pipeline: Pipeline, contexts: ContextBuilder, *, max_send: int
) -> grpc.GenericRpcHandler[Any, Any]:
    """Serve ``service`` with ``servicer``, every method through the pipeline (so
    every stage applies exactly as on every other door): unary ones as their
    capabilities, on the request message as parsed (no JSON between the wire and the
    servicer); streaming ones admitted and judged once before they start (a request
    stream is judged by method; its messages are the method's to check)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in served.descriptor.methods:
        impl = getattr(served.servicer, method.name, None)
        if impl is not None:
            # A method that names no scope needs agent:invoke, as any capability.
            scopes = served.scopes_of(method.name) or INVOKE_SCOPES
            handlers[method.name] = _method_handler(
                _Method(
                    impl,
                    f"{served.full_name}/{method.name}",
                    GetMessageClass(method.input_type),
                    GetMessageClass(method.output_type).SerializeToString,
                    scopes,
                    pipeline,
                    contexts,
                    max_send,
                ),
                method,
            )
    return grpc.method_handlers_generic_handler(served.full_name, handlers)


@dataclass(slots=True, frozen=True)
class _Method:
    """One method of a user's service, as the door runs it."""

    impl: Callable[..., Any]
    cap_id: str
    request_cls: type[Message]
    serialize: Callable[[Message], bytes]
    scopes: tuple[str, ...]
    pipeline: Pipeline
    contexts: ContextBuilder
    max_send: int  # bytes grpc sends in one message

    def answer(self, response: Message, ctx: CallContext) -> bytes:
        """``response`` serialized, if grpc will send it (``sendable``)."""
        return sendable(self.serialize(response), ctx, self.pipeline, self.cap_id, self.max_send)

    async def parsed(self, requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for data in requests:
            yield _parse(self.request_cls, data)


def _method_handler(m: _Method, method: MethodDescriptor) -> grpc.RpcMethodHandler[Any, Any]:
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(_bidi(m))
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(_client_stream(m))
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(_server_stream(m))
    return grpc.unary_unary_rpc_method_handler(_unary_call(m))


# A user's method answers as its servicer would on a plain grpc.aio server: the
# trailing metadata it set goes with the answer, and a status it set itself goes
# exactly as set (``abort_method``).


def _unary_call(m: _Method) -> Unary:
    async def unary(data: bytes, context: Context) -> bytes:
        try:
            request = _parse(m.request_cls, data)
            ctx = call_context(m.contexts, context)
            response = m.answer(await m.pipeline.invoke_message(ctx, m.cap_id, request), ctx)
        except AralError as exc:
            await abort_method(context, exc)
            raise
        if ctx.trailers:
            context.set_trailing_metadata(ctx.trailers)
        return response

    return unary


def _server_stream(m: _Method) -> Callable[[bytes, Context], AsyncIterator[bytes]]:
    async def server_stream(data: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            request = _parse(m.request_cls, data)
            ctx = call_context(m.contexts, context)
            items = m.pipeline.stream_message(ctx, m.cap_id, m.impl, request, scopes=m.scopes)
            async with contextlib.aclosing(items):
                async for item in items:
                    yield m.answer(item, ctx)
        except AralError as exc:
            await abort_method(context, exc)
        if ctx.trailers:
            context.set_trailing_metadata(ctx.trailers)

    return server_stream


def _client_stream(m: _Method) -> Callable[[AsyncIterator[bytes], Context], Awaitable[bytes]]:
    async def client_stream(requests: AsyncIterator[bytes], context: Context) -> bytes:
        # Every stage before the first request is read (judged by method; the
        # requests are the method's to check), the slot held until it answers.
        ctx = call_context(m.contexts, context)

        async def run(_: Any) -> bytes:
            return m.serialize(await call_servicer(m.impl, m.parsed(requests), ctx))

        try:
            response = await m.pipeline.call(
                ctx, m.cap_id, None, run, risk="unspecified", scopes=m.scopes
            )
            response = sendable(response, ctx, m.pipeline, m.cap_id, m.max_send)
        except AralError as exc:
            await abort_method(context, exc)
            raise
        if ctx.trailers:
            context.set_trailing_metadata(ctx.trailers)
        return response

    return client_stream


def _bidi(m: _Method) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[bytes]]:
    run = servicer_stream(m.impl)

    async def bidi(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        ctx = call_context(m.contexts, context)
        try:
            items = m.pipeline.stream(
                ctx, m.cap_id, None, lambda _: run(m.parsed(requests), ctx), scopes=m.scopes
            )
            async with contextlib.aclosing(items):
                async for item in items:
                    yield m.answer(item, ctx)
        except AralError as exc:
            await abort_method(context, exc)
        if ctx.trailers:
            context.set_trailing_metadata(ctx.trailers)

    return bidi


__all__ = ["ENVELOPE_OVERHEAD", "AgentNodeDoor", "call_context", "listing_gate", "service_handler"]
