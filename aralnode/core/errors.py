"""One error tree for every door, and one table mapping it to gRPC, HTTP and MCP.

::

    AralError                       (INTERNAL, 500, internal_error)
    ├── InvalidRequest              (INVALID_ARGUMENT, 400, invalid_request)
    │   ├── MalformedMessage        bytes that do not parse, missing fields
    │   ├── InvalidParameters       parameters that do not match the capability schema
    │   └── UnsupportedVersion      (FAILED_PRECONDITION, 400, unsupported_version)
    ├── MessageTooLarge             (RESOURCE_EXHAUSTED, 413, payload_too_large)
    ├── Unauthenticated             (UNAUTHENTICATED, 401, unauthorized)
    │   ├── SignatureInvalid        the signature does not verify over the received bytes
    │   ├── KeyMismatch             key and claimed identity disagree
    │   ├── InvalidKey              a public key that does not parse
    │   │   └── UnsupportedKey      a key of a type or curve the node does not take
    │   ├── UnknownKey              no key known for the key id, none supplied
    │   ├── ReplayDetected          (sender, message id) already seen in the window
    │   └── StaleMessage            timestamp outside the accepted window
    ├── PermissionDenied            (PERMISSION_DENIED, 403, forbidden)
    │   └── GovernanceBlocked       governance said block / halt / unapproved escalate
    ├── NotFound                    (NOT_FOUND, 404, not_found)
    │   ├── CapabilityNotFound
    │   └── PeerNotFound
    ├── RateLimited                 (RESOURCE_EXHAUSTED, 429, rate_limit_exceeded)
    ├── DeadlineExceeded            (DEADLINE_EXCEEDED, 504, timeout)
    ├── Cancelled                   (CANCELLED, 499, cancelled)
    ├── Unavailable                 (UNAVAILABLE, 503, service_unavailable)
    └── InternalError               (INTERNAL, 500, internal_error)
        └── HandlerFailed           a capability raised something that is not an AralError

Adapters never invent statuses: the gRPC adapter turns an ``AralError`` into a
``google.rpc.Status`` with an ``ErrorInfo`` (and ``RetryInfo`` when set), the REST
bridge into the seed's JSON error shape, the MCP bridge into a JSON-RPC error or an
error result. Foreign exceptions are translated at the boundary, in one place each.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

ERROR_DOMAIN = "aral.dev"


class StatusCode(enum.IntEnum):
    """Canonical status codes (google.rpc.Code), without importing grpc."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class McpErrorCode(enum.IntEnum):
    """JSON-RPC error codes the MCP bridge answers with."""

    INVALID_PARAMS = -32602
    METHOD_NOT_FOUND = -32601
    INTERNAL_ERROR = -32603


class AralError(Exception):
    """Root of every error aralnode raises on purpose.

    Attributes:
        message: Human-readable explanation, safe to show to the caller.
        reason: Stable UPPER_SNAKE reason (``ErrorInfo.reason``).
        details: Extra machine-readable facts (``ErrorInfo.metadata`` / JSON ``details``).
        retry_after: Seconds the caller should wait before retrying, if known.
    """

    status: ClassVar[StatusCode] = StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    mcp_code: ClassVar[McpErrorCode] = McpErrorCode.INTERNAL_ERROR
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        """The seed's error object (PRO-021), without trace id and timestamp."""
        return {
            "code": self.code,
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidRequest(AralError):
    status = StatusCode.INVALID_ARGUMENT
    http_status = 400
    code = "invalid_request"
    mcp_code = McpErrorCode.INVALID_PARAMS
    default_reason = "INVALID_REQUEST"


class MalformedMessage(InvalidRequest):
    default_reason = "MALFORMED_MESSAGE"


class InvalidParameters(InvalidRequest):
    default_reason = "INVALID_PARAMETERS"


class UnsupportedVersion(InvalidRequest):
    status = StatusCode.FAILED_PRECONDITION
    code = "unsupported_version"
    default_reason = "UNSUPPORTED_VERSION"


class MessageTooLarge(AralError):
    status = StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    code = "payload_too_large"
    mcp_code = McpErrorCode.INVALID_PARAMS
    default_reason = "MESSAGE_TOO_LARGE"


class Unauthenticated(AralError):
    status = StatusCode.UNAUTHENTICATED
    http_status = 401
    code = "unauthorized"
    default_reason = "UNAUTHENTICATED"


class SignatureInvalid(Unauthenticated):
    default_reason = "SIGNATURE_INVALID"


class KeyMismatch(Unauthenticated):
    default_reason = "KEY_MISMATCH"


class InvalidKey(Unauthenticated):
    default_reason = "INVALID_KEY"


class UnsupportedKey(InvalidKey):
    default_reason = "UNSUPPORTED_KEY"


class UnknownKey(Unauthenticated):
    default_reason = "UNKNOWN_KEY"


class ReplayDetected(Unauthenticated):
    default_reason = "REPLAY_DETECTED"


class StaleMessage(Unauthenticated):
    default_reason = "STALE_TIMESTAMP"


class PermissionDenied(AralError):
    status = StatusCode.PERMISSION_DENIED
    http_status = 403
    code = "forbidden"
    default_reason = "PERMISSION_DENIED"


class GovernanceBlocked(PermissionDenied):
    code = "governance_blocked"
    default_reason = "GOVERNANCE_BLOCKED"


class NotFound(AralError):
    status = StatusCode.NOT_FOUND
    http_status = 404
    code = "not_found"
    mcp_code = McpErrorCode.INVALID_PARAMS
    default_reason = "NOT_FOUND"


class CapabilityNotFound(NotFound):
    default_reason = "CAPABILITY_NOT_FOUND"


class PeerNotFound(NotFound):
    default_reason = "PEER_NOT_FOUND"


class RateLimited(AralError):
    status = StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    code = "rate_limit_exceeded"
    default_reason = "RATE_LIMITED"


class DeadlineExceeded(AralError):
    status = StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    code = "timeout"
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(AralError):
    status = StatusCode.CANCELLED
    http_status = 499
    code = "cancelled"
    default_reason = "CANCELLED"


class Unavailable(AralError):
    status = StatusCode.UNAVAILABLE
    http_status = 503
    code = "service_unavailable"
    default_reason = "UNAVAILABLE"


class InternalError(AralError):
    default_reason = "INTERNAL"


class HandlerFailed(InternalError):
    default_reason = "HANDLER_FAILED"


ERROR_TYPES: tuple[type[AralError], ...] = (
    AralError,
    InvalidRequest,
    MalformedMessage,
    InvalidParameters,
    UnsupportedVersion,
    MessageTooLarge,
    Unauthenticated,
    SignatureInvalid,
    KeyMismatch,
    InvalidKey,
    UnsupportedKey,
    UnknownKey,
    ReplayDetected,
    StaleMessage,
    PermissionDenied,
    GovernanceBlocked,
    NotFound,
    CapabilityNotFound,
    PeerNotFound,
    RateLimited,
    DeadlineExceeded,
    Cancelled,
    Unavailable,
    InternalError,
    HandlerFailed,
)

_BY_REASON: dict[str, type[AralError]] = {t.default_reason: t for t in ERROR_TYPES[1:]}
# governance.enforce names the decision in the reason.
_BY_REASON.update({f"GOVERNANCE_{d}": GovernanceBlocked for d in ("ESCALATE", "BLOCK", "HALT")})
_BY_STATUS: dict[StatusCode, type[AralError]] = {}
for _t in ERROR_TYPES:
    _BY_STATUS.setdefault(_t.status, _t)
_BY_STATUS[StatusCode.RESOURCE_EXHAUSTED] = RateLimited
_BY_STATUS[StatusCode.INTERNAL] = InternalError


def error_from_status(
    status: int,
    message: str,
    *,
    reason: str = "",
    details: Mapping[str, Any] | None = None,
    retry_after: float | None = None,
) -> AralError:
    """Rebuild the most specific error for a status received from a remote node."""
    cls = _BY_REASON.get(reason)
    if cls is None or cls.status != status:
        try:
            cls = _BY_STATUS.get(StatusCode(status), AralError)
        except ValueError:
            cls = AralError
    return cls(message, reason=reason or None, details=details, retry_after=retry_after)


def error_table() -> list[dict[str, Any]]:
    """Rows of the mapping table, for docs and tests."""
    return [
        {
            "error": t.__name__,
            "grpc": t.status.name,
            "http": t.http_status,
            "code": t.code,
            "reason": t.default_reason,
            "mcp": int(t.mcp_code),
        }
        for t in ERROR_TYPES
    ]
