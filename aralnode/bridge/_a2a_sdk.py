"""The a2a-sdk's request handler and gRPC servicer, each with what the door needs
of them beyond what the SDK (1.3.0) does, until the SDK does it itself.

- ``RequestHandler``: a message that names its task and no context continues the
  task in the task's context (A2A 1.0 §3.4.3: "Agents MUST infer contextId from the
  task if only taskId is provided"). The SDK made the follow-up a new context id
  once it had let go of the parked task (a2a-python #1206): the executor's events
  then disagreed with the task's, and the SDK failed the task for good. The context
  is filled in from the stored task (as its caller may see it) before the SDK reads
  the message, on every binding and version (each adapter calls these two
  methods). A context the message names is left as it is: one that is not its
  task's is still refused by the SDK (§3.4.3, ``InvalidParamsError``).
- ``Servicer``: the gRPC status of A2A's errors as §5.4 maps them where the SDK's
  differs (``_a2a_errors.SPEC_GRPC``: ``UNIMPLEMENTED``, not
  ``FAILED_PRECONDITION``), with the same ``ErrorInfo`` (§10.6).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers import DefaultRequestHandler, GrpcHandler
from a2a.server.tasks import TaskStore
from a2a.types import a2a_pb2
from a2a.utils.errors import A2A_ERROR_REASONS, A2AError

from aralnode.bridge._a2a_errors import SPEC_GRPC, grpc_spec


class RequestHandler(DefaultRequestHandler):
    """The SDK's request handler; a follow-up's context inferred from its task."""

    async def on_message_send(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> a2a_pb2.Message | a2a_pb2.Task:
        await self._infer_context(params, context)
        sent: a2a_pb2.Message | a2a_pb2.Task = await super().on_message_send(params, context)
        return sent

    async def on_message_send_stream(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event, None]:
        await self._infer_context(params, context)
        async with aclosing(super().on_message_send_stream(params, context)) as events:
            async for event in events:
                yield event

    async def _infer_context(
        self, params: a2a_pb2.SendMessageRequest, context: ServerCallContext
    ) -> None:
        """Name the context of the task ``params`` names, if it names none (a task
        not found is left to the SDK: ``TaskNotFoundError``)."""
        message = params.message
        if not message.task_id or message.context_id:
            return
        store = self.task_store
        if isinstance(store, TaskStore):  # (the owner's tasks only: the context's user)
            task = await store.get(message.task_id, context)
            if task is not None:
                message.context_id = task.context_id


class Servicer(GrpcHandler):
    """The SDK's gRPC servicer; A2A's errors with §5.4's gRPC status."""

    async def abort_context(self, error: A2AError, context: Any) -> None:
        reason = A2A_ERROR_REASONS.get(type(error), "")
        code = SPEC_GRPC.get(reason)
        if code is None:
            await super().abort_context(error, context)
            return
        status = grpc_spec(code, reason, error.message)
        kept = tuple(context.trailing_metadata() or ())  # (as the SDK's own keeps them)
        context.set_trailing_metadata(kept + tuple(status.trailing_metadata))
        await context.abort(status.code, status.details)


__all__ = ["RequestHandler", "Servicer"]
