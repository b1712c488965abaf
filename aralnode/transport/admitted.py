"""A generic gRPC handler whose every method runs inside a door's own rules.

For a service whose servicer the node did not write (the a2a-sdk's
``lf.a2a.v1.A2AService``), a ``Door`` says what happens around each call:
``admit(context)`` runs before the servicer sees the request, ``check`` once it is
parsed, each raising an ``AralError`` to refuse it, which ends the call with that
refusal's status and ``ErrorInfo`` (``transport.status.abort``), as every door
refuses; ``run`` and ``stream`` then run the servicer's method (the A2A door: as a
call of the pipeline). The request bytes are parsed here, not by the servicer's
deserializer: a request that does not parse is ``INVALID_ARGUMENT`` /
``MALFORMED_MESSAGE`` as on every other method, not ``UNKNOWN`` and a traceback. A
server-streaming method's stream counts against its client address's share
(``StreamQuota``), as Health's ``Watch`` does.

The servicer's own error answer (its ``context.abort``, e.g. the SDK's
``TaskNotFoundError`` as ``NOT_FOUND``) reaches ``run`` and ``stream`` as the
``AralError`` of its status and ``ErrorInfo`` reason (the call's outcome for the
audit log), then the client as the servicer gave it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from aralnode.core.errors import AralError, MalformedMessage, error_from_status, status_value
from aralnode.transport.quota import StreamQuota
from aralnode.transport.standard import counted
from aralnode.transport.status import abort


class Door(Protocol):
    """What a door does around each call of a servicer it did not write."""

    def admit(self, context: Any) -> None:
        """Who calls, before the request is parsed (raises an ``AralError`` to refuse)."""

    def check(self, method: str, request: Any, context: Any) -> None:
        """The parsed request (raises an ``AralError`` to refuse)."""

    def run(self, method: str, context: Any, call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """``call()`` (the servicer's unary method) under the door's rules."""

    def stream(
        self, method: str, context: Any, start: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        """``start()`` (the servicer's stream) under the door's rules."""


class _Answered:
    """The servicer's own error answer to one call (module docstring)."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.aborted: BaseException | None = None

    async def of(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except grpc.aio.AbortError as exc:
            raise self._error(exc) from None

    async def each(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for item in stream:
                yield item
        except grpc.aio.AbortError as exc:
            raise self._error(exc) from None

    def _error(self, exc: BaseException) -> AralError:
        self.aborted = exc
        reason = ""
        for key, value in self.context.trailing_metadata() or ():
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        reason = info.reason[:64]
        code = self.context.code() or grpc.StatusCode.UNKNOWN
        return error_from_status(status_value(code), self.context.details() or "", reason=reason)

    async def end(self, exc: AralError) -> NoReturn:
        """End the call: with the servicer's own answer if it gave one, else ``exc``."""
        if self.aborted is not None:
            raise self.aborted
        await abort(self.context, exc)
        raise exc  # unreachable: abort raises


class Admitted(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """``inner``'s methods, each inside ``door`` (unary and server-streaming)."""

    def __init__(self, inner: Any, door: Door, streams: StreamQuota | None = None) -> None:
        self.inner, self.door, self.streams = inner, door, streams
        self._made: dict[str, tuple[Any, Any]] = {}  # method: (inner's handler, ours)

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
        """``inner``'s handler of the call's method, admitted: made once a method (the
        call gate that wraps this one keeps its own by the handler it is given)."""
        handler = self.inner.service(details)
        made = self._made.get(details.method)
        if made is not None and handler is not None and made[0] is handler:
            return made[1]
        admitted = self._made_for(details, handler)
        if handler is not None and admitted is not None:
            self._made[details.method] = (handler, admitted)  # one per method served
        return admitted

    def _made_for(self, details: grpc.HandlerCallDetails, handler: Any) -> Any:
        if handler is None:
            return None
        admitted, parse, method = self._admitted, handler.request_deserializer, details.method
        door = self.door
        if handler.unary_unary is not None:
            call = handler.unary_unary

            async def unary(data: bytes, context: Any) -> Any:
                request = await admitted(data, context, parse, method)
                answered = _Answered(context)
                run = lambda: answered.of(call(request, context))  # noqa: E731
                try:
                    return await door.run(method, context, run)
                except AralError as exc:
                    await answered.end(exc)

            return grpc.unary_unary_rpc_method_handler(
                unary, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream
            if self.streams is not None:  # a stream holds its address's share while open
                stream = counted(stream, self.streams, generator=True)

            async def streamed(data: bytes, context: Any) -> Any:
                request = await admitted(data, context, parse, method)
                answered = _Answered(context)
                try:
                    start = lambda: answered.each(stream(request, context))  # noqa: E731
                    async for item in door.stream(method, context, start):
                        yield item
                except AralError as exc:
                    await answered.end(exc)

            return grpc.unary_stream_rpc_method_handler(
                streamed, response_serializer=handler.response_serializer
            )
        raise TypeError(f"{details.method}: only unary and server-streaming methods are admitted")


__all__ = ["Admitted", "Door"]
