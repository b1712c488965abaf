"""A generic gRPC handler whose every method runs inside a door's own rules.

For a service whose servicer the node did not write (the a2a-sdk's
``lf.a2a.v1.A2AService``), a ``Door`` says what happens before each call:
``admit(context)`` runs before the servicer sees the request, ``check`` once it is
parsed, each raising an ``AralError`` to refuse it, which ends the call with that
refusal's status and ``ErrorInfo`` (``transport.status.abort``), as every door
refuses. The request bytes are parsed here, not by the servicer's
deserializer: a request that does not parse is ``INVALID_ARGUMENT`` /
``MALFORMED_MESSAGE`` as on every other method, not ``UNKNOWN`` and a traceback. A
server-streaming method's stream counts against its client address's share
(``StreamQuota``), as Health's ``Watch`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from aralnode.core.errors import AralError, MalformedMessage
from aralnode.transport.quota import StreamQuota
from aralnode.transport.standard import counted
from aralnode.transport.status import abort


class Door(Protocol):
    """What a door does before each call of a servicer it did not write."""

    def admit(self, context: Any) -> None:
        """Who calls, before the request is parsed (raises an ``AralError`` to refuse)."""

    def check(self, method: str, request: Any, context: Any) -> None:
        """The parsed request (raises an ``AralError`` to refuse)."""


class Admitted(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """``inner``'s methods, each inside ``door`` (unary and server-streaming)."""

    def __init__(self, inner: Any, door: Door, streams: StreamQuota | None = None) -> None:
        self.inner, self.door, self.streams = inner, door, streams

    async def _admitted(
        self, data: bytes, context: Any, parse: Callable[[bytes], Any] | None, method: str
    ) -> Any:
        """The request, once its caller is admitted and its bytes parse and pass."""
        try:
            self.door.admit(context)
            try:
                request = parse(data) if parse is not None else data
            except (DecodeError, RecursionError, UnicodeDecodeError, ValueError):
                raise MalformedMessage(f"the request to {method} does not parse") from None
            self.door.check(method, request, context)
            return request
        except AralError as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        handler = self.inner.service(details)
        if handler is None:
            return None
        admitted, parse, method = self._admitted, handler.request_deserializer, details.method
        if handler.unary_unary is not None:
            call = handler.unary_unary

            async def unary(data: bytes, context: Any) -> Any:
                return await call(await admitted(data, context, parse, method), context)

            return grpc.unary_unary_rpc_method_handler(
                unary, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream
            if self.streams is not None:  # a stream holds its address's share while open
                stream = counted(stream, self.streams, generator=True)

            async def streamed(data: bytes, context: Any) -> Any:
                request = await admitted(data, context, parse, method)
                async for item in stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streamed, response_serializer=handler.response_serializer
            )
        raise TypeError(f"{details.method}: only unary and server-streaming methods are admitted")


__all__ = ["Admitted", "Door"]
