"""Every call of the gRPC port, counted and made to wait its turn for its request.

``CallGate.wrap`` wraps a generic handler so that each of its calls, whatever the
method:

- counts against its client address's share of the port's calls
  (``CallTable``: ``RESOURCE_EXHAUSTED``, ``TOO_MANY_CALLS`` past it), and says on
  which connection it runs (the reaper's sweep reads which connections carry calls);
- asks grpc for its request message only with a turn of the ``ReceiveBudget``, and
  must have it whole within ``request_timeout`` of its turn (``DEADLINE_EXCEEDED``,
  ``REQUEST_TIMEOUT``); a turn not had within that span is ``RESOURCE_EXHAUSTED``
  (``TOO_MANY_REQUEST_BYTES``). Until then grpc keeps the call's window small
  (``aralnode.transport.calls``).

A method with one request message (unary, server-streaming) is counted only: grpc.aio
reads its message before any code of ours runs, with the window open to the whole
message, and serving it as a request-streaming method that reads its own message
(which would let it wait its turn) cost a unary call 80 to 100 µs of CPU more, 15 %
(measured), past the unary budget. Its partial messages are bounded by the calls an
address may have open (docs/limits.md). A method whose requests are a stream reads
them as ``wrap``'s ``streams`` says: ``first``, its first message
with a turn and in time, the others as its handler asks for them (the node's own
service: a peer's channel opens with a message at once, then waits for the next
for as long as the peer is quiet); ``every``, each message with a turn and in time
(reflection: small requests, asked one after the other; a stream that asks nothing
more ends); ``none``, every message as its handler asks (users' services: a client
may be silent first, for as long as its method allows).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from aralnode.core.errors import AralError, DeadlineExceeded, MalformedMessage, RateLimited
from aralnode.transport.calls import CallTable, ReceiveBudget
from aralnode.transport.status import abort

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
_END = object()


class CallGate:
    """The port's call shares and request budget (module docstring).

    Args:
        calls_per_address: Calls one client address may have open.
        receive_slots: Calls receiving their request message at once.
        receive_slots_per_address: Of those, from one client address.
        request_timeout: Seconds a call may wait for its turn, and then for its
            request message to arrive whole.
        counters: The node's event counters (``grpc.calls_refused``,
            ``grpc.requests_timed_out``, ``grpc.requests_not_received``).
    """

    def __init__(
        self,
        *,
        calls_per_address: int,
        receive_slots: int,
        receive_slots_per_address: int,
        request_timeout: float,
        counters: Counter[str] | None = None,
    ) -> None:
        self.calls = CallTable(calls_per_address)
        self.budget = ReceiveBudget(receive_slots, receive_slots_per_address)
        self.request_timeout = request_timeout
        self.counters = counters if counters is not None else Counter()

    def wrap(
        self, handler: grpc.GenericRpcHandler[Any, Any], *, streams: str = "first"
    ) -> grpc.GenericRpcHandler[Any, Any]:
        """``handler``'s calls through the gate; ``streams``: which messages of a
        request stream wait their turn (``first``, ``every``, ``none``: module doc)."""
        if streams not in ("first", "every", "none"):
            raise ValueError(f"streams must be first, every or none, not {streams!r}")
        return _Gated(self, handler, streams)

    async def enter(self, context: Context) -> tuple[str, str]:
        """Count the call against its address's share (refused past it)."""
        try:
            return self.calls.enter(context.peer())
        except AralError as exc:
            await self.refuse(context, exc)
            raise  # unreachable: refuse raises

    async def refuse(self, context: Context, refusal: AralError) -> None:
        """A call past its address's share: counted, and ended with ``refusal``."""
        self.counters["grpc.calls_refused"] += 1
        await abort(context, refusal)

    async def receive(self, context: Context, address: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()`` (one request message), with a turn of the budget, in time."""
        try:
            async with asyncio.timeout(self.request_timeout):
                await self.budget.acquire(address)
        except TimeoutError:
            self.counters["grpc.requests_not_received"] += 1
            refusal = RateLimited(
                "the gRPC port is receiving as many request messages as it may at once",
                reason="TOO_MANY_REQUEST_BYTES",
                retry_after=1.0,
                details={"limit": self.budget.slots},
            )
            await abort(context, refusal)
            raise  # unreachable: abort raises
        try:
            async with asyncio.timeout(self.request_timeout):
                return await read()
        except TimeoutError:
            self.counters["grpc.requests_timed_out"] += 1
            late = DeadlineExceeded(
                f"the request message did not arrive whole within {self.request_timeout:g} s",
                reason="REQUEST_TIMEOUT",
                details={"timeout_seconds": self.request_timeout},
            )
            await abort(context, late)
            raise  # unreachable: abort raises
        finally:
            self.budget.release(address)

    async def request(self, context: Context, address: str) -> Any:
        """The call's one request message."""
        message = await self.receive(context, address, context.read)
        if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs lack it
            await abort(context, MalformedMessage("the call carried no request message"))
        return message

    async def requests(
        self, requests: AsyncIterator[Any], context: Context, address: str, every: bool
    ) -> AsyncIterator[Any]:
        """``requests``: the first (each, with ``every``) read with a turn, in time."""
        iterator: AsyncIterator[Any] | None = None

        def next_item() -> Awaitable[Any]:
            nonlocal iterator  # (made at the first read: grpc's receiver, never started
            if iterator is None:  # when a call is refused before, warns as it goes)
                iterator = aiter(requests)
            return anext(iterator, _END)

        gated = True
        while True:
            if gated:
                item = await self.receive(context, address, next_item)
            else:
                item = await next_item()
            if item is _END:
                return
            yield item
            gated = every


class _Gated(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """``inner``'s methods, each inside the gate."""

    def __init__(self, gate: CallGate, inner: Any, streams: str) -> None:
        self.gate, self.inner, self.streams = gate, inner, streams
        self._made: dict[str, tuple[Any, Any]] = {}  # method: (inner's handler, ours)

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        handler = self.inner.service(details)
        if handler is None:
            return None
        made = self._made.get(details.method)
        if made is not None and made[0] is handler:
            return made[1]
        gated = _gated(self.gate, handler, self.streams)
        self._made[details.method] = (handler, gated)  # one per method the inner serves
        return gated


def _kind(behavior: Callable[..., Any]) -> str | None:
    if inspect.isasyncgenfunction(behavior):
        return "generator"
    if inspect.iscoroutinefunction(behavior):
        return "coroutine"
    return None  # a synchronous behavior: left as it is


def _gated(gate: CallGate, handler: Any, streams: str) -> Any:
    serialize, deserialize = handler.response_serializer, handler.request_deserializer
    behavior = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    kind = _kind(behavior)
    if kind is None:
        return handler
    if handler.request_streaming:
        wrapped = _streamed_requests(gate, behavior, kind, streams)
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
    else:
        wrapped = _one_request(gate, behavior, kind)
        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
    return make(wrapped, request_deserializer=deserialize, response_serializer=serialize)


def _one_request(gate: CallGate, behavior: Callable[..., Any], kind: str) -> Any:
    """A method of one request message (which grpc has read whole), counted."""
    if kind == "generator":

        async def items(request: Any, context: Context) -> AsyncIterator[Any]:
            key = await gate.enter(context)
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                gate.calls.leave(key)

        return items

    async def call(request: Any, context: Context) -> Any:
        try:  # (written out, no await: the unary path of every call)
            key = gate.calls.enter(context.peer())
        except AralError as exc:
            await gate.refuse(context, exc)
            raise  # unreachable: refuse raises
        try:
            return await behavior(request, context)
        finally:
            gate.calls.leave(key)

    return call


def _streamed_requests(
    gate: CallGate, behavior: Callable[..., Any], kind: str, streams: str
) -> Any:
    """A method whose requests are a stream, its reads gated as ``streams`` says."""

    def read(requests: AsyncIterator[Any], context: Context, address: str) -> Any:
        if streams == "none":
            return requests
        return gate.requests(requests, context, address, every=streams == "every")

    if kind == "generator":

        async def items(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            key = await gate.enter(context)
            try:
                async for item in behavior(read(requests, context, key[0]), context):
                    yield item
            finally:
                gate.calls.leave(key)

        return items

    async def call(requests: AsyncIterator[Any], context: Context) -> Any:
        key = await gate.enter(context)
        try:
            return await behavior(read(requests, context, key[0]), context)
        finally:
            gate.calls.leave(key)

    return call


__all__ = ["CallGate"]
