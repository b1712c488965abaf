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
    ├── AlreadyExists               (ALREADY_EXISTS, 409, already_exists)
    ├── FailedPrecondition          (FAILED_PRECONDITION, 400, failed_precondition)
    ├── Aborted                     (ABORTED, 409, aborted)
    ├── OutOfRange                  (OUT_OF_RANGE, 400, out_of_range)
    ├── Unimplemented               (UNIMPLEMENTED, 501, not_implemented)
    ├── DataLoss                    (DATA_LOSS, 500, data_loss)
    ├── UnknownError                (UNKNOWN, 500, unknown)
    └── InternalError               (INTERNAL, 500, internal_error)
        └── HandlerFailed           a capability raised something that is not an AralError

Every canonical status has its class, so a status a user's servicer sets
(``CallContext.abort``/``set_code``, with ``grpc.StatusCode`` or our ``StatusCode``)
reaches every door as the most specific error for it (``error_from_status``), in
that door's language: NOT_FOUND is 404 ``not_found`` on REST and an MCP error result
``not_found``; on the servicer's own gRPC method it is sent as the servicer set it.

Adapters never invent statuses: the gRPC adapter turns an ``AralError`` into a
``google.rpc.Status`` with an ``ErrorInfo`` (and ``RetryInfo`` when set), the REST
bridge into the seed's JSON error shape, the MCP bridge into a JSON-RPC error or an
error result. Foreign exceptions are translated at the boundary, in one place each.

Every error is bounded where it is made: a refusal often quotes what it refuses (an
offered version list, a parameter's name, a capability id), bytes an outsider
chose. ``AralError`` keeps its message within ``MAX_MESSAGE_BYTES`` (UTF-8) and its
details within ``MAX_DETAILS_BYTES`` (as JSON), so what any door renders from it (a
gRPC status and its trailers, a JSON body, an MCP error result) stays small: gRPC
clients drop a trailer past 16 KiB, and may past 8 KiB.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Any, ClassVar

ERROR_DOMAIN = "aral.dev"

# The most one error carries. Its gRPC form holds the message twice (grpc-message,
# percent-encoded: up to 3 bytes a byte) and the details twice (ErrorInfo metadata
# and a Struct), in base64: 512 + 1024 stay under 6 KiB, below grpc's 8 KiB soft limit.
MAX_MESSAGE_BYTES = 512
MAX_DETAILS_BYTES = 1024
MAX_REASON_CHARS = 64
_TRUNCATED = "… (truncated)"
# The shape details keep (each bound alone is generous; the byte budget decides).
_MAX_DEPTH = 8  # a validation error list: details → errors → [i] → loc → [j] is 5
_MAX_ITEMS = 16
_MAX_TEXT = 256
_MAX_INT = 2**63


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
        servicer_status: The status a user's servicer set itself (``abort``,
            ``set_code``): its own gRPC method sends it exactly as set, as a plain
            grpc.aio server would (code, details, ``trailing_metadata``; no
            ``ErrorInfo`` of ours).
        trailing_metadata: The trailing metadata the servicer set, for that method.
        trace_id: The trace a remote node refused or failed the call under, when it
            said (a client's error from a node: what to look for in its logs and audit).
    """

    servicer_status: bool = False
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()
    trace_id: str = ""

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
        message = bounded_text(message, MAX_MESSAGE_BYTES)
        super().__init__(message)
        self.message = message
        self.reason = reason[:MAX_REASON_CHARS] if reason else self.default_reason
        self.details: dict[str, Any] = bounded_details(details) if details else {}
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


def bounded_text(text: str, limit: int) -> str:
    """``text`` if its UTF-8 form fits in ``limit`` bytes, else its longest prefix
    that does with a mark saying it was cut."""
    if len(text) * 4 <= limit:  # the usual short message: no encoding needed
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    room = limit - len(_TRUNCATED.encode())
    return data[:room].decode("utf-8", "ignore") + _TRUNCATED


def bounded_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` cut to a JSON-able shape within ``MAX_DETAILS_BYTES``: nesting,
    items per list or object and text lengths bounded first, then top-level entries
    dropped from the end until the rest fits (``"truncated": true`` says so)."""
    shaped = _shaped(details, 0)
    if not isinstance(shaped, dict):  # pragma: no cover - a Mapping stays a dict
        return {}
    if _json_size(shaped) <= MAX_DETAILS_BYTES:
        return shaped
    out: dict[str, Any] = {"truncated": True}
    budget = MAX_DETAILS_BYTES - _json_size(out)
    for key, value in shaped.items():
        kept = value
        cost = _json_size({key: kept})  # '{' and '}' weigh what ', ' does
        if cost > budget:
            kept = _shrunk(value, budget - _json_size({key: None}))
            cost = _json_size({key: kept})
            if cost > budget:
                break
        out[key] = kept
        budget -= cost
    return out


def _shaped(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return bounded_text(value, _MAX_TEXT)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if -_MAX_INT < value < _MAX_INT else "(a very large integer)"
    if depth >= _MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())[:_MAX_ITEMS]
        return {bounded_text(str(k), _MAX_TEXT // 4): _shaped(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple | set | frozenset):
        return [_shaped(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
    return bounded_text(str(value), _MAX_TEXT)


def _shrunk(value: Any, room: int) -> Any:
    """A smaller stand-in for a top-level value that does not fit in ``room`` bytes:
    a list's first items, a text's prefix, else nothing."""
    if isinstance(value, list):
        while value and _json_size(value) > room:
            value = value[: len(value) // 2]
        return value
    if isinstance(value, str):
        return bounded_text(value, max(room - 16, 0))
    return None


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))


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


RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"


def response_too_large(
    what: str, size: int, limit: int, *, at_least: bool = False
) -> MessageTooLarge:
    """The refusal of an answer past what the node sends (``RESPONSE_TOO_LARGE``),
    whichever door found it: ``what`` is ``size`` bytes (``at_least``: a bound)."""
    over = "over " if at_least else ""
    return MessageTooLarge(
        f"{what} is {over}{size} bytes; this node sends at most {limit}",
        reason=RESPONSE_TOO_LARGE,
        details={"size": size, "limit": limit},
    )


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


class CertIdentityMismatch(Unauthenticated):
    """mTLS: a peer's certificate does not name the node whose key signs its card
    and envelopes (or there is none)."""

    default_reason = "CERT_IDENTITY_MISMATCH"


class PermissionDenied(AralError):
    status = StatusCode.PERMISSION_DENIED
    http_status = 403
    code = "forbidden"
    default_reason = "PERMISSION_DENIED"


class CertDenied(PermissionDenied):
    """mTLS: a node id or certificate serial on the deny list (``tls_deny``)."""

    default_reason = "CERT_DENIED"


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


class AlreadyExists(AralError):
    status = StatusCode.ALREADY_EXISTS
    http_status = 409
    code = "already_exists"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(AralError):
    status = StatusCode.FAILED_PRECONDITION
    http_status = 400
    code = "failed_precondition"
    mcp_code = McpErrorCode.INVALID_PARAMS
    default_reason = "FAILED_PRECONDITION"


class Aborted(AralError):
    status = StatusCode.ABORTED
    http_status = 409
    code = "aborted"
    default_reason = "ABORTED"


class OutOfRange(AralError):
    status = StatusCode.OUT_OF_RANGE
    http_status = 400
    code = "out_of_range"
    mcp_code = McpErrorCode.INVALID_PARAMS
    default_reason = "OUT_OF_RANGE"


class Unimplemented(AralError):
    status = StatusCode.UNIMPLEMENTED
    http_status = 501
    code = "not_implemented"
    mcp_code = McpErrorCode.METHOD_NOT_FOUND
    default_reason = "UNIMPLEMENTED"


class DataLoss(AralError):
    status = StatusCode.DATA_LOSS
    code = "data_loss"
    default_reason = "DATA_LOSS"


class UnknownError(AralError):
    status = StatusCode.UNKNOWN
    code = "unknown"
    default_reason = "UNKNOWN"


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
    CertIdentityMismatch,
    PermissionDenied,
    CertDenied,
    GovernanceBlocked,
    NotFound,
    CapabilityNotFound,
    PeerNotFound,
    RateLimited,
    DeadlineExceeded,
    Cancelled,
    Unavailable,
    AlreadyExists,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    DataLoss,
    UnknownError,
    InternalError,
    HandlerFailed,
)

_BY_REASON: dict[str, type[AralError]] = {t.default_reason: t for t in ERROR_TYPES[1:]}
# governance.enforce names the decision in the reason.
_BY_REASON.update({f"GOVERNANCE_{d}": GovernanceBlocked for d in ("ESCALATE", "BLOCK", "HALT")})
# (By status alone RESOURCE_EXHAUSTED reads as a rate limit, which it is not.)
_BY_REASON[RESPONSE_TOO_LARGE] = MessageTooLarge
_BY_STATUS: dict[StatusCode, type[AralError]] = {}
for _t in ERROR_TYPES:
    _BY_STATUS.setdefault(_t.status, _t)
_BY_STATUS[StatusCode.RESOURCE_EXHAUSTED] = RateLimited
_BY_STATUS[StatusCode.FAILED_PRECONDITION] = FailedPrecondition
_BY_STATUS[StatusCode.INTERNAL] = InternalError


def status_value(code: object) -> int:
    """A canonical status code as its number, however it is given: our
    ``StatusCode``, an ``int``, or a ``grpc.StatusCode`` (whose value is
    ``(number, name)``; core does not import grpc).

    Raises:
        TypeError: ``code`` is none of those, or not a canonical code (0..16).
    """
    value = getattr(code, "value", code)
    if isinstance(value, tuple) and value:
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 16:
        return int(value)
    raise TypeError(f"not a status code: {code!r}")


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
