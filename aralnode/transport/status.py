"""The one place where ``AralError`` meets gRPC status, in both directions.

Outgoing: an ``AralError`` becomes a ``google.rpc.Status`` with an ``ErrorInfo``
(reason, domain, metadata) and, when the error says so, a ``RetryInfo``; it travels
in the ``grpc-status-details-bin`` trailer so grpcurl and every gRPC client see it.
``ErrorInfo.metadata`` holds strings only, so the details also travel as a
``google.protobuf.Struct``, from which a client rebuilds them with their JSON types
(an integer stays an integer).
Incoming: an ``AioRpcError`` is turned back into the most specific ``AralError``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from aralnode.core import codec
from aralnode.core.errors import (
    ERROR_DOMAIN,
    AralError,
    Cancelled,
    DeadlineExceeded,
    StatusCode,
    Unavailable,
    error_from_status,
)


def to_rpc_status(exc: AralError, *, trace_id: str = "") -> grpc.Status:
    # As every door renders details (codec.jsonable): JSON text, whatever they hold.
    details = codec.jsonable(exc.details)
    metadata = {k: v if isinstance(v, str) else codec.dumps(v) for k, v in details.items()}
    metadata["code"] = exc.code
    if trace_id:
        metadata["trace_id"] = trace_id
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=metadata)
    status = status_pb2.Status(code=int(exc.status), message=exc.message)
    status.details.add().Pack(info)
    if exc.details:
        typed = struct_pb2.Struct()
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            typed.update(details)
            status.details.add().Pack(typed)
    if (seconds := codec.retry_delay(exc.retry_after)) is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(seconds * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return rpc_status.to_status(status)


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], exc: AralError, trace_id: str = ""
) -> None:
    """End the RPC with ``exc`` (raises, as ``ServicerContext.abort`` does)."""
    # grpc-stubs 1.53 predates ServicerContext.abort_with_status on aio.
    await context.abort_with_status(to_rpc_status(exc, trace_id=trace_id))  # type: ignore[attr-defined]


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def abort_method(context: grpc.aio.ServicerContext[Any, Any], exc: AralError) -> None:
    """End a call of a user's own method with ``exc`` (raises). A status its
    servicer set itself goes as it set it, as on a plain grpc.aio server (code,
    details, trailing metadata, no ``ErrorInfo`` of ours); the node's refusals as
    ``abort`` sends them."""
    if exc.servicer_status:
        code = _GRPC_CODES[int(exc.status)]
        await context.abort(code, exc.message, exc.trailing_metadata)
    await abort(context, exc)


def from_rpc_error(err: grpc.aio.AioRpcError) -> AralError:
    """Rebuild the remote error, with reason and details when the peer sent them."""
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(err.details() or "deadline exceeded")
    if code == grpc.StatusCode.CANCELLED:
        return Cancelled(err.details() or "cancelled")
    reason, retry_after = "", None
    details: dict[str, Any] = {}
    typed: dict[str, Any] | None = None
    trailers: Any = err.trailing_metadata() or ()
    for key, value in trailers:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for any_msg in status.details:
                if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    any_msg.Unpack(info)
                    reason, details = info.reason, dict(info.metadata)
                elif any_msg.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    any_msg.Unpack(retry)
                    retry_after = codec.retry_delay(retry.retry_delay.ToNanoseconds() / 1e9)
                elif any_msg.Is(struct_pb2.Struct.DESCRIPTOR):
                    struct = struct_pb2.Struct()
                    any_msg.Unpack(struct)
                    typed = codec.from_struct(struct)
    # ``code`` and ``trace_id`` ride in the metadata for grpcurl's reader; they are
    # not details of the error.
    details.pop("code", None)
    trace_id = str(details.pop("trace_id", ""))[:64]
    for key, value in list(details.items()):
        if value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                details[key] = json.loads(value)
    if typed is not None:
        details = typed
    error: AralError
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        error = Unavailable(err.details() or "peer unavailable", details=details)
    else:
        error = error_from_status(
            code.value[0],
            err.details() or code.name,
            reason=reason,
            details=details,
            retry_after=retry_after,
        )
    error.trace_id = trace_id
    return error


assert code_pb2.INVALID_ARGUMENT == StatusCode.INVALID_ARGUMENT
