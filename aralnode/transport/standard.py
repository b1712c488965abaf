"""The standard gRPC services (health, reflection), with our own request parsing.

grpcio's generated ``add_*Servicer_to_server`` registers a service with protobuf
deserializers: bytes that do not parse then raise inside grpc, which logs a
traceback for every such request and answers UNKNOWN. Here each method gets the raw
bytes and parses them itself, as the node's own doors do (``grpc_door``), so garbage
is the caller's INVALID_ARGUMENT (``MALFORMED_MESSAGE``, with a
``google.rpc.Status``) and nothing is logged. The servicers themselves (grpcio's
reflection, our health) are unchanged; an optional ``gate`` decides, before a call
is served, whether its caller may use the service at all, and an optional
``StreamQuota`` keeps each client address to its share of open streams.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from aralnode.core.errors import AralError, MalformedMessage
from aralnode.transport.quota import StreamQuota
from aralnode.transport.status import abort

Context = grpc.aio.ServicerContext[Any, Any]
Gate = Callable[[Context], None]
"""Raises an ``AralError`` if the call's caller may not use the service."""


def _parse(cls: type[Message], data: bytes) -> Message:
    try:
        return cls.FromString(data)
    except (DecodeError, RecursionError):
        raise MalformedMessage(f"request does not parse as {cls.DESCRIPTOR.full_name}") from None


def standard_handler(
    descriptor: ServiceDescriptor,
    servicer: object,
    *,
    gate: Gate | None = None,
    streams: StreamQuota | None = None,
    name: str = "",
) -> grpc.GenericRpcHandler[Any, Any]:
    """Every method of ``descriptor`` that ``servicer`` implements, on raw request
    bytes (see the module docstring); responses are serialized as grpcio would.
    Streaming methods keep to ``streams``' share per client address. ``name``: the
    service's name on the wire, if not the descriptor's (one with the same messages)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        impl = getattr(servicer, method.name, None)
        if impl is not None:
            if streams is not None and method.server_streaming:
                impl = counted(impl, streams, generator=not inspect.iscoroutinefunction(impl))
            handlers[method.name] = _handler(method, impl, gate)
    return grpc.method_handlers_generic_handler(name or descriptor.full_name, handlers)


def counted(impl: Callable[..., Any], streams: StreamQuota, *, generator: bool) -> Any:
    """``impl`` counted against its caller's share of streams while it runs (of the
    same kind: a coroutine stays one, an async generator stays one)."""
    if generator:

        async def counted_items(request: Any, context: Context) -> AsyncIterator[Any]:
            key = await _enter(streams, context)
            try:
                async for item in impl(request, context):
                    yield item
            finally:
                streams.leave(key)

        return counted_items

    async def counted(request: Any, context: Context) -> Any:
        key = await _enter(streams, context)
        try:
            return await impl(request, context)
        finally:
            streams.leave(key)

    return counted


async def _enter(streams: StreamQuota, context: Context) -> str:
    try:
        return streams.enter(context.peer())
    except AralError as exc:
        await abort(context, exc)
        raise  # unreachable: abort raises


def _handler(
    method: MethodDescriptor, impl: Callable[..., Any], gate: Gate | None
) -> grpc.RpcMethodHandler[Any, Any]:
    request_cls: type[Message] = GetMessageClass(method.input_type)
    serialize = GetMessageClass(method.output_type).SerializeToString
    if method.client_streaming:
        if not method.server_streaming:  # no standard service has one
            raise TypeError(f"{method.full_name}: client streams are not served here")
        return grpc.stream_stream_rpc_method_handler(
            _bidi(impl, request_cls, gate), response_serializer=serialize
        )
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _server_stream(impl, request_cls, gate), response_serializer=serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        _unary(impl, request_cls, gate), response_serializer=serialize
    )


def _unary(
    impl: Callable[..., Any], request_cls: type[Message], gate: Gate | None
) -> Callable[[bytes, Context], Any]:
    async def unary(data: bytes, context: Context) -> Any:
        try:
            if gate is not None:
                gate(context)
            request = _parse(request_cls, data)
        except AralError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises
        return await impl(request, context)

    return unary


def _server_stream(
    impl: Callable[..., Any], request_cls: type[Message], gate: Gate | None
) -> Callable[[bytes, Context], Any]:
    # grpc tells a method that writes with ``context.write`` (a coroutine, as our
    # Health.Watch) from one that yields by its kind: keep the servicer's kind.
    async def parsed(data: bytes, context: Context) -> Message:
        try:
            if gate is not None:
                gate(context)
            return _parse(request_cls, data)
        except AralError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    if inspect.iscoroutinefunction(impl):

        async def writes(data: bytes, context: Context) -> None:
            await impl(await parsed(data, context), context)

        return writes

    async def yields(data: bytes, context: Context) -> AsyncIterator[Any]:
        async for item in impl(await parsed(data, context), context):
            yield item

    return yields


def _bidi(
    impl: Callable[..., Any], request_cls: type[Message], gate: Gate | None
) -> Callable[[AsyncIterator[bytes], Context], AsyncIterator[Any]]:
    async def requests(raw: AsyncIterator[bytes]) -> AsyncIterator[Message]:
        async for data in raw:
            yield _parse(request_cls, data)

    async def bidi(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        try:
            if gate is not None:
                gate(context)
            async for item in impl(requests(raw), context):
                yield item
        except AralError as exc:  # a request that does not parse, mid-stream
            await abort(context, exc)

    return bidi


__all__ = ["Gate", "counted", "standard_handler"]
