"""The gRPC port's credential preparation runs in the call, before its handler
(``transport.grpc_credentials``): what wrapping a handler must keep."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from aralnode.transport.grpc_credentials import _preceded


async def test_a_preceded_stream_closes_its_handler_when_the_call_ends_early() -> None:
    """A server stream cancelled mid-way (its client gone) has its handler's own
    cleanup run then -- a quota it holds given back -- not when the collector or the
    loop's finalizer gets to it."""
    closed: list[bool] = []
    asked: list[Any] = []

    async def numbers(request: bytes, context: Any) -> AsyncIterator[int]:
        try:
            for i in range(10):
                yield i
        finally:
            closed.append(True)

    async def before(context: Any) -> None:
        asked.append(context)

    wrapped = _preceded(grpc.unary_stream_rpc_method_handler(numbers), before)
    stream = wrapped.unary_stream(b"", "the call's context")
    assert await anext(stream) == 0
    await stream.aclose()
    assert (closed, asked) == ([True], ["the call's context"])


async def test_a_handler_it_cannot_precede_is_left_to_be_prepared_at_once() -> None:
    def synchronous(request: bytes, context: Any) -> bytes:
        return request

    async def before(context: Any) -> None:
        raise AssertionError("not called: the handler cannot be preceded")

    assert _preceded(grpc.unary_unary_rpc_method_handler(synchronous), before) is None
