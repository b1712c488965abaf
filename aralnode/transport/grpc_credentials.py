"""Before a gRPC call: fetch what checking its bearer token will need.

The pipeline's authenticator runs inside the call and cannot wait on the network.
For a token it cannot decide from what it holds -- an opaque token not yet asked
about (RFC 7662), a JWT whose ``kid`` needs a JWKS refetch -- this interceptor
awaits that work first, as the HTTP port does for its requests, so the call is
decided at once rather than refused for a retry. Installed only when the node has
such work to do (an introspection URL or a JWKS URL): every other call pays
nothing.

A client whose failed authentications used up its address's allowance (``spent``)
is refused by the authenticate stage before its credential is checked; nothing is
fetched for it either (a made-up opaque token a call would otherwise be one
question to the authorization server). The address is the call's peer, which only
the call's context knows: the work is then done in the call, before its handler.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # generic in grpc-stubs only; a plain ABC at run time
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

_NAMES = ("authorization", "x-api-key")

Prepare = Callable[[Mapping[str, str]], Awaitable[None]]
Before = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


class PrepareCredentials(_Interceptor):
    """Awaits ``prepare`` with a call's credential metadata, then lets it run;
    not for a peer ``spent`` says is past its failed authentications."""

    def __init__(self, prepare: Prepare, spent: Callable[[str], bool] | None = None) -> None:
        self._prepare = prepare
        self._spent = spent

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        metadata = handler_call_details.invocation_metadata or ()
        shown = {k: v for k, v in metadata if k in _NAMES and isinstance(v, str)}
        if not shown:
            return await continuation(handler_call_details)
        spent = self._spent
        if spent is None:
            await self._prepare(shown)
            return await continuation(handler_call_details)

        async def before(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if not spent(context.peer()):
                await self._prepare(shown)

        handler = await continuation(handler_call_details)
        wrapped: grpc.RpcMethodHandler[Any, Any] | None = _preceded(handler, before)
        if wrapped is None:  # a handler this cannot wrap (a synchronous one): now
            await self._prepare(shown)
            return handler
        return wrapped


def _preceded(handler: Any, before: Before) -> Any:
    """``handler`` whose behaviour awaits ``before(context)`` first; ``handler``
    itself if it has none (not served: grpc answers UNIMPLEMENTED), ``None`` if its
    behaviour is not a coroutine or an async generator function."""
    if handler is None:
        return None
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is None:
            continue
        if inspect.isasyncgenfunction(behaviour):
            return handler._replace(**{kind: _generator(behaviour, before)})
        if inspect.iscoroutinefunction(behaviour):
            return handler._replace(**{kind: _coroutine(behaviour, before)})
        return None
    return handler


def _coroutine(behaviour: Callable[..., Awaitable[Any]], before: Before) -> Any:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await before(context)
        return await behaviour(request, context)

    return run


def _generator(behaviour: Callable[..., AsyncIterator[Any]], before: Before) -> Any:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await before(context)
        async for response in behaviour(request, context):
            yield response

    return run


__all__ = ["PrepareCredentials"]
