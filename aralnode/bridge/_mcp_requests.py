"""Requests the SDK's streamable HTTP transport would refuse at ``/mcp``, refused by
the node first.

The SDK (``StreamableHTTPSessionManager``, stateful, JSON responses) answers some
requests itself, in a body of its own (a JSON-RPC error without the node's error
object), with no ``X-Trace-Id`` and no audit record. The node checks the same
conditions before the SDK sees the request and refuses as it refuses everything
else on ``/mcp``: a JSON-RPC error whose ``data`` is the seed's error object (its
``reason``, ``trace_id``), the id headers, a record under ``aral.http/mcp`` with the
caller as verified, counted. The HTTP status is the SDK's, which is the spec's (a
404 for a session tells a client to open a new one), and so is the JSON-RPC code
(``-32600``), which the official client hands to its caller. In the SDK's order:

- 404 ``SESSION_UNKNOWN``: a session id the SDK does not hold (never opened, or
  ended: a DELETE, its idle time, evicted by the session quota);
- 405 ``METHOD_NOT_ALLOWED``: a method other than GET, POST and DELETE;
- 400 ``UNSUPPORTED_MEDIA_TYPE``: a POST whose Content-Type is missing or does not
  begin with ``application/json`` (in any case);
- 406 ``NOT_ACCEPTABLE``: a POST that does not accept JSON, a GET that does not
  accept an event stream;
- 415 ``UNSUPPORTED_MEDIA_TYPE``: a POST whose Content-Type begins so but is not
  ``application/json`` (``application/json-seq``, or in capitals);
- 400 ``SESSION_REQUIRED``: a GET or DELETE without a session id, or a POST without
  one whose body is a JSON-RPC message other than an ``initialize`` request.

Only requests for the SDK's handshake-era path are checked (no
``MCP-Protocol-Version``, or a version reached by ``initialize``): the SDK sends
any other version to its per-request path, which has no sessions. A body that
does not parse or validate is left to the SDK, which says why.
"""

from __future__ import annotations

from collections.abc import Callable

import pydantic_core
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, check_accept_headers
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import JSONRPCRequest, jsonrpc_message_adapter
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request

from aralnode.bridge._http import (
    JSON,
    MethodNotAllowed,
    NotAcceptable,
    Scope,
    UnsupportedMediaType,
    header,
)
from aralnode.bridge._jsonrpc import INVALID_REQUEST
from aralnode.core.errors import AralError, InvalidRequest, NotFound

SESSION = MCP_SESSION_ID_HEADER.encode("latin-1")
_VERSION = MCP_PROTOCOL_VERSION_HEADER.encode("latin-1")
METHODS = ("GET", "POST", "DELETE")


class SessionUnknown(NotFound):
    """A session id the SDK does not hold."""

    default_reason = "SESSION_UNKNOWN"
    rpc_code = INVALID_REQUEST


class SessionRequired(InvalidRequest):
    """A request that only a session may make, without a session id."""

    default_reason = "SESSION_REQUIRED"
    rpc_code = INVALID_REQUEST


class NotJson(InvalidRequest):
    """A POST that does not say it is JSON (the SDK's 400, before it looks further)."""

    default_reason = "UNSUPPORTED_MEDIA_TYPE"
    rpc_code = INVALID_REQUEST


class McpMethodNotAllowed(MethodNotAllowed):
    rpc_code = INVALID_REQUEST


class McpNotAcceptable(NotAcceptable):
    rpc_code = INVALID_REQUEST


class McpUnsupportedMediaType(UnsupportedMediaType):
    rpc_code = INVALID_REQUEST


def handshake_era(scope: Scope) -> bool:
    """Whether the SDK serves the request on its session path (as it routes: the
    first ``MCP-Protocol-Version`` header, absent or a handshake version)."""
    version = header(scope, _VERSION)
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


def head_refusal(scope: Scope, live: Callable[[str], bool]) -> AralError | None:
    """Why the SDK would refuse the request from its head alone, checked in the
    SDK's order (``None``: it would not); ``live`` says whether it holds a session."""
    if not handshake_era(scope):
        return None
    session = header(scope, SESSION)
    if session is not None and not live(session):
        return SessionUnknown(
            "this MCP session is not open (it never was, or it ended): start a new one"
        )
    method = scope.get("method", "")
    if method not in METHODS:
        return McpMethodNotAllowed(
            f"/mcp takes GET, POST and DELETE, not {method[:16]!r}",
            details={"allow": list(METHODS)},
        )
    takes_json, takes_stream = check_accept_headers(Request(scope))
    if method == "POST":
        content_type = header(scope, b"content-type") or ""
        if not content_type.lower().startswith(JSON):  # the SDK's first look at a POST
            return NotJson("a POST to /mcp must be application/json")
        if not takes_json:
            return McpNotAcceptable("a POST to /mcp must accept application/json")
        if not _json_exactly(content_type):
            return McpUnsupportedMediaType(
                f"a POST to /mcp must be {JSON}, not {content_type.split(';')[0][:64]!r}"
            )
        return None  # a POST without a session may open one: its body says (body_refusal)
    if method == "GET" and not takes_stream:
        return McpNotAcceptable("a GET on /mcp must accept text/event-stream")
    return None if session is not None else _required()


def body_refusal(scope: Scope, body: bytes) -> AralError | None:
    """Why the SDK would refuse a POST without a session for its body: a JSON-RPC
    message that is not an ``initialize`` request (which alone opens a session).
    A body the SDK cannot read is its to refuse (a parse or validation error)."""
    if scope.get("method") != "POST" or header(scope, SESSION) is not None:
        return None
    if not handshake_era(scope):
        return None
    try:
        message = jsonrpc_message_adapter.validate_python(
            pydantic_core.from_json(body), by_name=False
        )
    except (ValueError, RecursionError):  # (pydantic's ValidationError is a ValueError)
        return None
    if isinstance(message, JSONRPCRequest) and message.method == "initialize":
        return None
    return _required()


def _required() -> SessionRequired:
    return SessionRequired(
        "this request needs an mcp-session-id: open a session with initialize first"
    )


def _json_exactly(content_type: str) -> bool:
    """The SDK's second Content-Type rule: ``application/json`` (in lower case)
    before any parameter."""
    return any(part.strip() == JSON for part in content_type.split(";", maxsplit=1)[0].split(","))


__all__ = [
    "METHODS",
    "SESSION",
    "SessionRequired",
    "SessionUnknown",
    "body_refusal",
    "handshake_era",
    "head_refusal",
]
