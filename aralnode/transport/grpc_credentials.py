"""Before a gRPC call: fetch what checking its bearer token will need.

The pipeline's authenticator runs inside the call and cannot wait on the network.
For a token it cannot decide from what it holds -- an opaque token not yet asked
about (RFC 7662), a JWT whose ``kid`` needs a JWKS refetch -- this interceptor
awaits that work first, as the HTTP port does for its requests, so the call is
decided at once rather than refused for a retry. Installed only when the node has
such work to do (an introspection URL or a JWKS URL): every other call pays
nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:  # generic in grpc-stubs only; a plain ABC at run time
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

_NAMES = ("authorization", "x-api-key")

Prepare = Callable[[Mapping[str, str]], Awaitable[None]]


class PrepareCredentials(_Interceptor):
    """Awaits ``prepare`` with a call's credential metadata, then lets it run."""

    def __init__(self, prepare: Prepare) -> None:
        self._prepare = prepare

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        metadata = handler_call_details.invocation_metadata or ()
        shown = {k: v for k, v in metadata if k in _NAMES and isinstance(v, str)}
        if shown:
            await self._prepare(shown)
        return await continuation(handler_call_details)


__all__ = ["PrepareCredentials"]
