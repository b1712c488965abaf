"""A generic gRPC handler whose every method admits its caller first.

For a service whose servicer the node did not write (the a2a-sdk's
``lf.a2a.v1.A2AService``): ``admit(context)`` runs before the servicer sees the
request and raises an ``AralError`` to refuse it, which ends the call with that
refusal's status and ``ErrorInfo`` (``transport.status.abort``), as every door
refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from aralnode.core.errors import AralError
from aralnode.transport.status import abort


class Admitted(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """``inner``'s methods, each behind ``admit`` (unary and server-streaming)."""

    def __init__(self, inner: Any, admit: Callable[[Any], None]) -> None:
        self.inner, self.admit = inner, admit

    async def _admit(self, context: Any) -> None:
        try:
            self.admit(context)
        except AralError as exc:
            await abort(context, exc)

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        handler = self.inner.service(details)
        if handler is None:
            return None
        admit = self._admit
        if handler.unary_unary is not None:
            call = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                await admit(context)
                return await call(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def streamed(request: Any, context: Any) -> Any:
                await admit(context)
                async for item in stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streamed, handler.request_deserializer, handler.response_serializer
            )
        raise TypeError(f"{details.method}: only unary and server-streaming methods are admitted")


__all__ = ["Admitted"]
