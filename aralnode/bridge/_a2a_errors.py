"""The A2A door's errors in the forms A2A 1.0 gives them (docs/a2a.md, "Refusals").

Section numbers are the A2A 1.0 specification's (``docs/specification.md``):

- **HTTP+JSON** (``/a2a/rest``, §11.6): every refusal of the node's there is an
  AIP-193 error, as the a2a-sdk's own are: ``{"error": {code, status, message,
  details}}``, ``code`` the HTTP status, ``status`` the canonical code's name,
  ``details`` a ``google.rpc.ErrorInfo`` in ProtoJSON (``aip_193``).
- **A2A's own errors** (§3.3.2: ``VersionNotSupportedError``…, by their reasons in
  ``A2A_REASONS``) carry their ``ErrorInfo`` in domain ``a2a-protocol.org`` on every
  binding (§9.5, §10.6, §11.6): on JSON-RPC as an array in ``error.data``
  (``jsonrpc_a2a``), on gRPC in the status's details (``grpc_a2a``). The node's other
  refusals keep domain ``aral.dev`` (and, on JSON-RPC, the node's error object as
  ``data``: §9.5 asks the array of A2A's errors only).
- Whatever the form, the node's error object is kept: its ``code``, ``trace_id``,
  ``timestamp`` and details ride in the ``ErrorInfo``'s ``metadata`` (strings, as
  ``google.rpc.ErrorInfo`` holds them; JSON text for the rest).
- **§5.4's codes** where the a2a-sdk (1.3.0) gives others: ``SPEC_GRPC`` (gRPC
  ``UNIMPLEMENTED`` for three errors the SDK sends as ``FAILED_PRECONDITION``) and
  ``SPEC_HTTP`` (409 for ``TaskNotCancelableError``, which the SDK sends as 400…).
"""

from __future__ import annotations

from typing import Any

from a2a.utils.errors import (
    A2A_ERROR_MAPPING,
    InvalidParamsError,
    InvalidRequestError,
    MethodNotFoundError,
)
from a2a.utils.errors import InternalError as SdkInternalError
from a2a.utils.grpc_status import GrpcStatus, status_to_grpc
from google.rpc import error_details_pb2, status_pb2

from aralnode.bridge import _http as h
from aralnode.core import codec
from aralnode.core.errors import ERROR_DOMAIN, AralError, StatusCode

A2A_DOMAIN = "a2a-protocol.org"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
# The reasons of A2A's own errors (§3.3.2's table), not the JSON-RPC ones the SDK
# also names (INVALID_PARAMS…): these take domain a2a-protocol.org wherever raised.
_GENERIC = (InvalidParamsError, InvalidRequestError, MethodNotFoundError, SdkInternalError)
A2A_REASONS = frozenset(
    mapping.reason for cls, mapping in A2A_ERROR_MAPPING.items() if cls not in _GENERIC
)
# §5.4's gRPC status where the SDK's differs (it says FAILED_PRECONDITION).
SPEC_GRPC = {
    "PUSH_NOTIFICATION_NOT_SUPPORTED": StatusCode.UNIMPLEMENTED,
    "UNSUPPORTED_OPERATION": StatusCode.UNIMPLEMENTED,
    "VERSION_NOT_SUPPORTED": StatusCode.UNIMPLEMENTED,
}
# §5.4's HTTP status where the SDK's differs (it says 400, 400, 500).
SPEC_HTTP = {
    "TASK_NOT_CANCELABLE": 409,
    "CONTENT_TYPE_NOT_SUPPORTED": 415,
    "INVALID_AGENT_RESPONSE": 502,
}


def domain_of(reason: str) -> str:
    """The ``ErrorInfo`` domain of a refusal: A2A's for its own errors, else ARAL's."""
    return A2A_DOMAIN if reason in A2A_REASONS else ERROR_DOMAIN


def metadata_of(exc: AralError, trace_id: str, now_ms: int) -> dict[str, str]:
    """The node's error object as ``ErrorInfo.metadata``: its details (JSON text for
    what is not a string), then its code, trace id and time (which win a clash)."""
    details = codec.jsonable(exc.details)
    metadata = {str(k): v if isinstance(v, str) else codec.dumps(v) for k, v in details.items()}
    metadata.update(code=exc.code, trace_id=trace_id, timestamp=h.iso_ms(now_ms))
    return metadata


def error_info(exc: AralError, trace_id: str, now_ms: int) -> dict[str, Any]:
    """``exc`` as a ``google.rpc.ErrorInfo`` in ProtoJSON (an ``Any``: its ``@type``)."""
    return {
        "@type": ERROR_INFO_TYPE,
        "reason": exc.reason,
        "domain": domain_of(exc.reason),
        "metadata": metadata_of(exc, trace_id, now_ms),
    }


def aip_193(exc: AralError, trace_id: str, now_ms: int) -> bytes:
    """``exc`` as an HTTP+JSON error body (§11.6, AIP-193)."""
    error = {
        "code": exc.http_status,
        "status": exc.status.name,
        "message": exc.message,
        "details": [error_info(exc, trace_id, now_ms)],
    }
    return h.dumps({"error": error})


def jsonrpc_a2a(exc: AralError, trace_id: str, now_ms: int, request_id: Any) -> bytes:
    """An A2A error of the node's (``A2A_REASONS``) as a JSON-RPC error response
    (§9.5): its A2A code, ``data`` an array holding its ``ErrorInfo``."""
    code = getattr(exc, "rpc_code", None) or int(exc.mcp_code)
    plain = request_id is None or isinstance(request_id, str) or type(request_id) is int
    rid = request_id if plain else None
    error = {"code": code, "message": exc.message, "data": [error_info(exc, trace_id, now_ms)]}
    return h.dumps({"jsonrpc": "2.0", "id": rid, "error": error})


def grpc_a2a(exc: AralError, trace_id: str, now_ms: int) -> GrpcStatus:
    """An A2A error of the node's as a gRPC status (§10.6): its status, an
    ``ErrorInfo`` in domain a2a-protocol.org with the node's error object."""
    info = error_details_pb2.ErrorInfo(
        reason=exc.reason, domain=domain_of(exc.reason), metadata=metadata_of(exc, trace_id, now_ms)
    )
    status = status_pb2.Status(code=int(exc.status), message=exc.message)
    status.details.add().Pack(info)
    return status_to_grpc(status)


def grpc_spec(code: StatusCode, reason: str, message: str) -> GrpcStatus:
    """An a2a-sdk error as §5.4 and §10.6 send it on gRPC (``SPEC_GRPC``)."""
    status = status_pb2.Status(code=int(code), message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=A2A_DOMAIN))
    return status_to_grpc(status)


__all__ = [
    "A2A_DOMAIN",
    "A2A_REASONS",
    "ERROR_INFO_TYPE",
    "SPEC_GRPC",
    "SPEC_HTTP",
    "aip_193",
    "domain_of",
    "error_info",
    "grpc_a2a",
    "grpc_spec",
    "jsonrpc_a2a",
    "metadata_of",
]
