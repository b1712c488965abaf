"""JSON-RPC bodies at the HTTP doors the official SDKs serve (A2A at ``/a2a``, MCP
at ``/mcp``): read and checked by the node before the SDK reads them, and refused
in JSON-RPC's own shape.

The SDKs parse with ``json.loads`` or pydantic, which keep the last of a member
given twice; the REST door refuses such a body (``DUPLICATE_PARAMETER``: another
parser of the same bytes may keep the first), and so do these doors, before the
SDK sees it (``parse_body``). The A2A SDK also answers a body that does not
parse as JSON (invalid UTF-8, nested too deeply) with ``-32603`` and a logged
traceback, and logs a request it cannot validate with the request's own text:
the A2A door checks the request object first (``read_request``) and answers
``-32700`` / ``-32600`` itself, and ``bound_library_logs`` keeps what the SDK
still logs of a caller's input to one escaped, bounded line.

A refusal (``refuse``) carries what every door's does: its HTTP status, the
seed's error object (its ``trace_id``, the timestamp) as the JSON-RPC error's
``data``, ``X-Trace-Id`` and ``X-Request-Id``, ``Retry-After`` or
``WWW-Authenticate`` where they apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aralnode._logs import escape, get_logger
from aralnode.bridge import _http as h
from aralnode.core import codec
from aralnode.core.errors import AralError, InvalidParameters, MalformedMessage

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})
_QUOTED = 64  # characters of a caller's member name quoted in a refusal


class JsonParseError(MalformedMessage):
    """A body that is not JSON (nor UTF-8, or nested past the parser's depth)."""

    default_reason = "MALFORMED_JSON"
    rpc_code = PARSE_ERROR


class NotARequest(MalformedMessage):
    """JSON that is not one JSON-RPC 2.0 request object."""

    default_reason = "INVALID_JSONRPC_REQUEST"
    rpc_code = INVALID_REQUEST


def parse_body(body: bytes) -> Any:
    """``body`` parsed as the node parses every JSON body (``codec.loads``), before an
    SDK reads it (an SDK's parser keeps the last of a member given twice, and takes
    UTF-16).

    Raises:
        JsonParseError: not JSON (RFC 8259, UTF-8), or nested too deeply.
        InvalidParameters: a member given twice in one object (``DUPLICATE_PARAMETER``);
            NaN, an infinity or a number past a double or ±2**64 (``NOT_A_JSON_NUMBER``,
            ``-32602``: as the node refuses such a value in any call's parameters).
    """
    try:
        return codec.loads(body)
    except RecursionError:
        raise JsonParseError("the request body is nested too deeply") from None
    except UnicodeDecodeError:
        raise JsonParseError("the request body is not UTF-8") from None
    except codec.NotAJsonNumber as exc:
        raise not_a_number(exc) from None
    except ValueError as exc:
        raise JsonParseError(f"the request body is not JSON: {exc}") from None


def read_request(body: bytes) -> dict[str, Any]:
    """``body`` as one JSON-RPC 2.0 request object (``params`` not checked: the SDK
    reads them against the method's message).

    Raises:
        JsonParseError: not JSON (RFC 8259, UTF-8), or nested too deeply.
        NotARequest: JSON, but no request object (a batch, unknown members, ...).
        InvalidParameters: a member given twice in one object (``DUPLICATE_PARAMETER``);
            NaN, an infinity or a number past a double or ±2**64 (``NOT_A_JSON_NUMBER``,
            ``-32602``: as the node refuses such a value in any call's parameters).
    """
    request = parse_body(body)
    if isinstance(request, list):
        raise NotARequest("batch requests are not supported: send one request object")
    if not isinstance(request, dict):
        raise NotARequest("a JSON-RPC request is an object")
    extra = sorted(k[:_QUOTED] for k in request if k not in _MEMBERS)
    if extra:
        listed = ", ".join(repr(k) for k in extra[:4])
        raise NotARequest(f"unknown members of a JSON-RPC request: {listed}")
    if request.get("jsonrpc") != "2.0":
        raise NotARequest('"jsonrpc" must be "2.0"')
    if not isinstance(request.get("method"), str) or not request["method"]:
        raise NotARequest('"method" must be a non-empty string')
    if not _plain_id(request.get("id")):
        raise NotARequest('"id" must be a string, an integer or null')
    if "params" in request and not isinstance(request["params"], dict | list):
        raise NotARequest('"params" must be an object or an array')
    return request


def not_a_number(exc: ValueError) -> InvalidParameters:
    """The refusal of a request that holds ``exc``'s number (``codec.NotAJsonNumber``)."""
    return InvalidParameters(
        f"the request holds a number JSON has no form for: {str(exc)[:200]}",
        reason="NOT_A_JSON_NUMBER",
    )


def _plain_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (type(value) is int)


def rpc_error(
    exc: AralError,
    trace_id: str,
    now_ms: int,
    request_id: Any = None,
    data: Mapping[str, Any] | None = None,
) -> bytes:
    """``exc`` as a JSON-RPC error response: its code (``-32700``/``-32600`` for a
    body that is no request, else the node's table, as on MCP) and the seed's
    error object as its data (beside ``data``'s members, where an SDK's refusal
    had some its clients read: the seed's own win a clash)."""
    code = getattr(exc, "rpc_code", None) or int(exc.mcp_code)
    shape = h.error_body(exc, trace_id, now_ms)["error"]
    if data:
        shape = {**data, **shape}
    rid = request_id if _plain_id(request_id) else None
    error = {"code": code, "message": exc.message, "data": shape}
    return h.dumps({"jsonrpc": "2.0", "id": rid, "error": error})


async def refuse(
    send: h.Send,
    scope: h.Scope,
    exc: AralError,
    *,
    trace_id: str,
    now_ms: int,
    jsonrpc: bool,
    request_id: Any = None,
    metadata_url: str = "",
    sdk: SdkAnswer | None = None,
) -> None:
    """Answer ``exc``: a JSON-RPC error response (``jsonrpc``), else the seed's
    error shape, with the headers every door's refusal carries (a challenge that
    points at ``metadata_url``, RFC 9728, where one is given); for a refusal an SDK
    made, with what of its answer ``sdk`` keeps (its status, data, headers)."""
    trace_id = trace_id or h.trace_of(scope)
    data, status, kept = (None, 0, ()) if sdk is None else (sdk.data, sdk.status, sdk.headers)
    if jsonrpc:
        body = rpc_error(exc, trace_id, now_ms, request_id, data)
    else:
        body = h.dumps(h.error_body(exc, trace_id, now_ms))
    req_id = h.request_id(h.header(scope, b"x-request-id"))
    headers = [
        *h.id_headers(trace_id, req_id),
        *h.error_headers(exc, metadata_url=metadata_url),
        *kept,
    ]
    await h.send_body(send, status or exc.http_status, body, h.JSON, headers)


@dataclass(frozen=True, slots=True)
class SdkAnswer:
    """What of an SDK's own refusal the node's answer keeps: its HTTP status, the
    members of its error's data (an MCP client reads a version refusal's
    ``supported``), and headers (the session an ``initialize`` opened)."""

    status: int = 0
    data: Mapping[str, Any] | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()


def replaying(body: bytes, receive: h.Receive) -> h.Receive:
    """A ``receive`` that gives ``body`` (read already) as one chunk, then what the
    client sends next (its disconnect, for a stream)."""
    sent = False

    async def replay() -> h.Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


# -- what the SDKs log ---------------------------------------------------------------------

# What the A2A SDK logs with a traceback when a caller's request does not validate:
# the caller's error, not the node's, told in one line.
_CALLERS_ERRORS = (
    "Failed to validate base JSON-RPC request",
    "Failed to parse request params",
)


class _CallersErrorsInOneLine(logging.Filter):
    """A traceback the SDK logs for a request that does not validate: the
    exception's type and (bounded) text in the line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and str(record.msg).startswith(_CALLERS_ERRORS):
            line = f"{record.getMessage()}: {type(exc).__name__}: {escape(str(exc), 200)}"
            record.msg, record.args = line, None
            record.exc_info, record.exc_text = None, None
        return True


_ONE_LINE = _CallersErrorsInOneLine()


def bound_library_logs(prefix: str) -> None:
    """Give every logger under ``prefix`` (an SDK's, made so far) the node's safe
    log filter (escaped, cut to ``MAX_CHARS``, throttled: a caller chooses much of
    what an SDK logs) and ``_CallersErrorsInOneLine`` before it."""
    names = [n for n in logging.Logger.manager.loggerDict if n.startswith(prefix + ".")]
    for name in [prefix, *names]:
        logger = logging.getLogger(name)
        if _ONE_LINE not in logger.filters:
            logger.filters.insert(0, _ONE_LINE)
        get_logger(name)


__all__ = [
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "JsonParseError",
    "NotARequest",
    "SdkAnswer",
    "bound_library_logs",
    "not_a_number",
    "parse_body",
    "read_request",
    "refuse",
    "replaying",
    "rpc_error",
]
