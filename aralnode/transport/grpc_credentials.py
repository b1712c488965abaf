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
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
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
        # A method's handler, preceded by the preparation (made once a handler; the
        # credentials are read in the call). ``None``: it cannot be (a synchronous one).
        self._preceded: dict[int, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        shown = _shown(handler_call_details.invocation_metadata)
        if not shown:
            return await continuation(handler_call_details)
        if self._spent is None:
            await self._prepare(shown)
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED, nothing asked
            return handler
        made = self._preceded.get(id(handler))
        if made is None or made[0] is not handler:
            made = (handler, _preceded(handler, self._before))
            if len(self._preceded) >= _MAX_HANDLERS:
                self._preceded.clear()
            self._preceded[id(handler)] = made
        if made[1] is None:  # a handler this cannot precede (a synchronous one): now
            await self._prepare(shown)
            return handler
        wrapped: grpc.RpcMethodHandler[Any, Any] = made[1]
        return wrapped

    async def _before(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """In the call: its credentials prepared, unless its peer is spent."""
        shown = _shown(context.invocation_metadata())
        spent = self._spent
        if shown and not (spent is not None and spent(context.peer())):
            await self._prepare(shown)


_MAX_HANDLERS = 4096  # (one a method the node serves: a bound, not a working limit)


def _shown(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata or () if k in _NAMES and isinstance(v, str)}


def _preceded(handler: Any, before: Before) -> Any:
    """``handler`` whose behaviour awaits ``before(context)`` first; ``handler``
    itself if it has none, ``None`` if its behaviour is not a coroutine or an async
    generator function."""
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


def _generator(behaviour: Callable[..., AsyncGenerator[Any]], before: Before) -> Any:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await before(context)
        responses = behaviour(request, context)
        try:
            async for response in responses:
                yield response
        finally:  # a call cancelled mid-stream: its handler's own cleanup now, not at GC
            await responses.aclose()

    return run


__all__ = ["PrepareCredentials"]
