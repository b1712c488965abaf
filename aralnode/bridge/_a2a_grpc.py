"""The A2A door around each gRPC call of ``lf.a2a.v1.A2AService`` (the a2a-sdk's
servicer, behind ``transport.admitted.Admitted``): the caller admitted first, the
request held to ``_a2a_checks`` (its ``a2a-version`` metadata too: the SDK checks
none on gRPC), then each method but a send a call of the pipeline (``_a2a_calls``).
The context a call was admitted with is kept for the call's task: its owner, its
executor and the pipeline use it (one authentication a call).

A version refusal is A2A's ``VersionNotSupportedError`` (A2A 1.0 §5.4, §10.6):
``UNIMPLEMENTED`` with an ``ErrorInfo`` in domain ``a2a-protocol.org``, which the
node's generic refusal (``transport.status``: domain ``aral.dev``) is not. So
``check`` records it and keeps it for the call, and ``run`` / ``stream`` end the call
with it in A2A's form (``_a2a_errors.grpc_a2a``) before the servicer runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from google.protobuf.message import Message

from aralnode.bridge import _a2a_calls as calls
from aralnode.bridge._a2a_checks import (
    SERVED_MAJORS,
    VersionRefused,
    check_caller,
    check_message_of,
    check_version,
)
from aralnode.bridge._a2a_errors import grpc_a2a
from aralnode.bridge._approvals_feed import gated_items
from aralnode.core.context import CallContext, LazyMetadata
from aralnode.core.errors import AralError
from aralnode.service.refusals import refused

DOOR = "a2a"
_ADMITTED: ContextVar[tuple[Any, CallContext] | None] = ContextVar(
    "aralnode_a2a_admitted", default=None
)
# A refusal ``check`` recorded, for ``run`` / ``stream`` to answer in A2A's form.
_REFUSED: ContextVar[tuple[Any, AralError] | None] = ContextVar(
    "aralnode_a2a_refused", default=None
)


def _method(full: str) -> str:
    """``/lf.a2a.v1.A2AService/GetTask`` → ``GetTask``."""
    return full.rpartition("/")[2]


class GrpcGate:
    """``transport.admitted.Door`` for the A2A door (the module docstring)."""

    def __init__(self, door: calls.Door) -> None:
        self.door = door

    def context(self, grpc_context: Any) -> CallContext:
        """The context the call of ``grpc_context`` was admitted with (else one made)."""
        carried = _ADMITTED.get()
        if carried is not None and carried[0] is grpc_context:
            return carried[1]
        return self._build(grpc_context)

    def _build(self, grpc_context: Any) -> CallContext:
        if grpc_context is None:
            return self.door.service.contexts.build(DOOR)
        # As the gRPC door's: every pair kept (a credential given twice is refused).
        metadata = LazyMetadata(grpc_context.invocation_metadata)
        return self.door.service.contexts.build(DOOR, peer=grpc_context.peer(), metadata=metadata)

    def admit(self, grpc_context: Any) -> None:
        """``A2ADoor.admit`` for a gRPC call (its metadata and peer)."""
        ctx = self._build(grpc_context)
        self.door.admit(ctx)
        _ADMITTED.set((grpc_context, ctx))

    def check(self, method: str, request: Any, grpc_context: Any) -> None:
        """``_a2a_checks``' on the request; a refusal is audited (and raised)."""
        ctx = self.context(grpc_context)
        name = _method(method)
        # The metadata as the context read it once (admit); the request as it is.
        md = ctx.metadata
        pairs = md.pairs() if isinstance(md, LazyMetadata) else md.items()
        pipeline, action = self.door.service.pipeline, calls.action(name)
        try:
            check_version(
                (v for k, v in pairs if k.lower() == "a2a-version" and isinstance(v, str)),
                majors=SERVED_MAJORS,
            )  # fmt: skip
        except VersionRefused as exc:  # answered by ``run`` / ``stream`` (module docstring)
            refused(pipeline, ctx, action, exc, kind=calls.kind_of(name))
            _REFUSED.set((grpc_context, exc))
            return
        try:
            check_caller(name, ctx)
            if isinstance(request, Message):
                check_message_of(name, request)
        except AralError as exc:
            raise refused(pipeline, ctx, action, exc, kind=calls.kind_of(name)) from None

    def _refusal(self, grpc_context: Any) -> AralError | None:
        """The refusal ``check`` kept for this call, if any (taken)."""
        kept = _REFUSED.get()
        if kept is None or kept[0] is not grpc_context:
            return None
        _REFUSED.set(None)
        return kept[1]

    async def _answer(self, grpc_context: Any, exc: AralError) -> Any:
        """End the call with ``exc`` in A2A's form (raises, as ``abort`` does)."""
        ctx = self.context(grpc_context)
        now = self.door.service.clock.now_ms()
        await grpc_context.abort_with_status(grpc_a2a(exc, ctx.trace_id, now))

    async def _answer_each(self, grpc_context: Any, exc: AralError) -> AsyncIterator[Any]:
        """``_answer`` for a server stream (nothing is sent before it)."""
        yield await self._answer(grpc_context, exc)  # (never: the abort raises)

    def run(self, method: str, grpc_context: Any, call: Callable[[], Awaitable[Any]]) -> Any:
        """A unary call: a send as it is (its skill runs in the pipeline), any other
        method as a call of the pipeline (awaitable), its answer within the node's
        bound (``_a2a_calls.too_large``)."""
        name = _method(method)
        pipeline = self.door.service.pipeline
        if (refusal := self._refusal(grpc_context)) is not None:
            return self._answer(grpc_context, refusal)
        if not calls.governed(name):
            return self._sent(name, grpc_context, call())

        async def sized() -> Any:
            response = await call()
            size = response.ByteSize() if isinstance(response, Message) else 0
            if (over := calls.too_large(name, size, pipeline.max_result_bytes)) is not None:
                raise over
            return response

        return calls.run(pipeline, self.context(grpc_context), name, sized)

    def stream(
        self, method: str, grpc_context: Any, start: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        """A server stream: ``run``'s rule, as a stream of the pipeline; its items held
        to the caller's credentials (``A2ADoor.stream_gate``): a refusal ends it with
        its status (``UNAUTHENTICATED``), on record as its outcome."""
        name = _method(method)
        if (refusal := self._refusal(grpc_context)) is not None:
            return self._answer_each(grpc_context, refusal)
        ctx = self.context(grpc_context)
        gate = self.door.stream_gate(ctx, lambda: self._build(grpc_context))

        def gated() -> AsyncIterator[Any]:
            return gated_items(gate, start())

        if not calls.governed(name):
            return self._sent_each(name, grpc_context, gated())
        return calls.stream(self.door.service.pipeline, ctx, name, gated)

    async def _sent(self, name: str, grpc_context: Any, answer: Awaitable[Any]) -> Any:
        """A send: its skill's call is the executor's, in the pipeline. An error the
        SDK answers instead, before any executor runs (a task it does not hold or
        that has ended), is recorded here (the executor's refusals are tasks)."""
        try:
            return await answer
        except AralError as exc:
            raise self._refused(name, grpc_context, exc) from None

    async def _sent_each(
        self, name: str, grpc_context: Any, stream: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        """``_sent`` for a streamed send."""
        try:
            async for item in stream:
                yield item
        except AralError as exc:
            raise self._refused(name, grpc_context, exc) from None

    def _refused(self, name: str, grpc_context: Any, exc: AralError) -> AralError:
        ctx = self.context(grpc_context)
        return refused(self.door.service.pipeline, ctx, calls.action(name), exc, kind="invoke")


__all__ = ["GrpcGate"]
