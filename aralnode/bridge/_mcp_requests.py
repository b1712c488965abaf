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
any other version to its per-request path, which has no sessions.

A body that does not parse or validate is the SDK's to judge (it says why), and so
is a request it reads and refuses; its answer is watched (``watching``) and a refusal
of its own is given as the node's, on record like the rest, with the SDK's status
and words:

- ``MALFORMED_JSON`` (400, ``-32700``): not JSON;
- ``INVALID_JSONRPC_REQUEST`` (400, ``-32600``, JSON-RPC's code for it, where the SDK
  says ``-32602``): JSON, but no JSON-RPC message the SDK can validate (a batch, a
  missing or wrong member, parameters of the wrong shape);
- ``METHOD_NOT_FOUND`` (``-32601``; a 200, or the 2026 path's 404): a method the
  server does not have;
- ``MCP_REQUEST_REFUSED`` (the SDK's status and code): a request it read and refused
  (a header that disagrees with the body, a client capability or protocol version);
- ``SESSION_UNKNOWN`` (404): a session that ended after the node looked;
- ``NOT_ACCEPTABLE`` (406, the 2026 path): an Accept that takes no media type the
  answer would be in.

(The node parses every body before the SDK does, ``_jsonrpc.parse_body``: text that
is not JSON is refused there, and the SDK's parse error is only a fallback.)

Any other answer goes on as it came: a result, a failure (``-32603``), an error the
node made (its data is the seed's error object).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, check_accept_headers
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from mcp_types import JSONRPCRequest, jsonrpc_message_adapter
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request

from aralnode.bridge._http import (
    JSON,
    Message,
    MethodNotAllowed,
    NotAcceptable,
    Scope,
    Send,
    UnsupportedMediaType,
    header,
)
from aralnode.bridge._jsonrpc import (
    INVALID_REQUEST,
    PARSE_ERROR,
    JsonParseError,
    NotARequest,
    SdkAnswer,
)
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


def body_refusal(scope: Scope, body: Any) -> AralError | None:
    """Why a POST's body (as the node parsed it, ``_jsonrpc.parse_body``) is refused
    before the SDK reads it: a method with an ``id`` that is no request's (the SDK
    would take it as a notification, answer 202 and never reply); without a
    session, a JSON-RPC message that is not an ``initialize`` request (which alone
    opens a session). A body the SDK cannot validate is its to refuse."""
    if scope.get("method") != "POST":
        return None
    if type(body) is dict and "method" in body and "id" in body:
        asked = body["id"]  # MCP: a string or an integer, never null (no bool: JSON's own)
        if type(asked) is not str and type(asked) is not int:
            return NotARequest('a request\'s "id" must be a string or an integer')
    if header(scope, SESSION) is not None:
        return None
    if not handshake_era(scope):
        return None
    try:
        message = jsonrpc_message_adapter.validate_python(body, by_name=False)
    except (ValueError, RecursionError):  # (pydantic's ValidationError is a ValueError)
        return None
    if isinstance(message, JSONRPCRequest) and message.method == "initialize":
        return None
    return _required()


# -- what the SDK still refuses ------------------------------------------------------------

METHOD_NOT_FOUND = -32601
#: MCP's own refusals (``mcp_types.jsonrpc``): a header that disagrees with the body,
#: a client capability the server needs, an unsupported protocol version.
_MCP_REFUSING = frozenset({-32020, -32021, -32022})
#: JSON-RPC codes of the SDK's that say it refused a request it read. Any other
#: (``-32603``, a failure; a cancellation) goes on as it came.
_REFUSING = frozenset({INVALID_REQUEST, -32602}) | _MCP_REFUSING
#: How the SDK's answer to no request begins (``id`` null: a body it could not read
#: as one), as its two paths write it (the 2026 path puts ``id`` last).
_TO_NO_REQUEST = (b'{"jsonrpc":"2.0","id":null,"error":{', b'{"jsonrpc":"2.0","error":{')
#: The answers of the SDK's that may be refusals: a JSON-RPC error in a 200 or a 400
#: (which, by protocol version and error), a 404, the 2026 path's 406.
_WATCHED = frozenset({200, 400, 404, 406})
_MESSAGE_CHARS = 1000  # of the SDK's words kept (they can quote the caller's body)
# What a pydantic error adds to each complaint (the SDK passes its text on): the
# input echoed, its type, and a link naming the library's version -- nothing a client
# needs to mend its request, and what a prober reads the server's make from.
# (Each ends its line: the bracket may hold brackets of the echoed input.)
_VALIDATION_NOISE = re.compile(r"[ \t]*\[type=[^\n]*|\s*For further information visit \S*")
_SESSION_HEADER = MCP_SESSION_ID_HEADER.lower().encode("latin-1")


class NoSuchMethod(NotFound):
    """A JSON-RPC method the MCP server does not have."""

    default_reason = "METHOD_NOT_FOUND"
    rpc_code = METHOD_NOT_FOUND


class RefusedRequest(InvalidRequest):
    """A request the SDK read and refused (parameters not of its method's shape, a
    protocol version or client capability it lacks), with the SDK's JSON-RPC code."""

    default_reason = "MCP_REQUEST_REFUSED"
    rpc_code = -32602


def error_answers(request_id: Any) -> tuple[bytes, ...]:
    """How the SDK's JSON-RPC error answer to a request with ``request_id`` begins
    (its members in the order it writes them; the id as either of its paths writes
    it), or its answer to no request. Compared as bytes: a caller's long id is not
    scanned by a pattern on every answer."""
    if type(request_id) is int:
        forms = {str(request_id).encode()}
    elif type(request_id) is str:
        forms = {
            json.dumps(request_id, ensure_ascii=False, separators=(",", ":")).encode(),
            json.dumps(request_id, separators=(",", ":")).encode(),
        }
    else:
        return _TO_NO_REQUEST
    return (*_TO_NO_REQUEST, *(b'{"jsonrpc":"2.0","id":' + f + b',"error":{' for f in forms))


def sdk_refusal(
    status: int, body: bytes, request_id: Any = None
) -> tuple[AralError, Any, SdkAnswer] | None:
    """The SDK's own refusal of a request (``request_id``, as the node read it), from
    its answer (``status``, ``body``): the node's error, the id answered, and what of
    the answer to keep (``None``: no refusal -- a result, a failure, or an error the
    node made, which carries the seed's error object as its data)."""
    if status not in _WATCHED:
        return None
    # A 200 or a 400 is a refusal only as a JSON-RPC error answer (or, a 400, as no
    # JSON at all: the SDK's, from before it read a request).
    if status in (200, 400) and not (
        body.startswith(error_answers(request_id)) or (status == 400 and not body.startswith(b"{"))
    ):
        return None  # a result, or a body of no shape the SDK refuses in
    try:
        answer = json.loads(body)
        error = answer["error"]
        code, message, data = error.get("code"), str(error.get("message", "")), error.get("data")
        answered = answer.get("id")
    except (ValueError, TypeError, KeyError, AttributeError):  # no JSON-RPC error
        code, message, data, answered = None, "", None, None
    if isinstance(data, dict) and "reason" in data and "trace_id" in data:
        return None  # the node's own
    if status == 406:  # (no body: the request's own id)
        answered = request_id
    elif not (type(answered) is type(request_id) and answered == request_id):
        answered = None  # only an id the node read itself is echoed
    said = " ".join(_VALIDATION_NOISE.sub("", message[: 4 * _MESSAGE_CHARS]).split())
    refusal = _refusal(status, code, said[:_MESSAGE_CHARS], answered)
    if refusal is None:
        return None
    return refusal, answered, SdkAnswer(status, data if isinstance(data, dict) else None)


def _refusal(status: int, code: Any, message: str, answered: Any) -> AralError | None:
    """The node's error for the SDK's refusal with this status, code, message (``None``:
    no refusal)."""
    said = message or "the MCP server refused the request"
    if code == METHOD_NOT_FOUND:
        return NoSuchMethod(said)
    if status == 404:
        return SessionUnknown(said)
    if status == 406:
        return McpNotAcceptable(
            message or "the request's Accept takes no media type /mcp answers it in"
        )
    if code == PARSE_ERROR:
        return JsonParseError(said)
    if answered is None and code not in _MCP_REFUSING:
        return NotARequest(said)
    if code not in _REFUSING:
        return None
    refusal = RefusedRequest(said)
    refusal.rpc_code = code
    return refusal


def _may_refuse(start: Message) -> bool:
    """Whether an answer that starts so may be a refusal (an event stream is not)."""
    status = start["status"]
    if status != 200:
        return status in _WATCHED
    return any(
        key == b"content-type" and value.startswith(b"application/json")
        for key, value in start.get("headers", ())
    )


Refuse = Callable[[AralError, Any, SdkAnswer], Awaitable[None]]


def watching(send: Send, refuse: Refuse, request_id: Any = None) -> Send:
    """``send`` for the SDK's answer to a POST (of ``request_id``, as the node read
    it): a refusal of its own (``sdk_refusal``) goes to ``refuse`` instead, for the
    node to answer and put on record (with the session header the SDK's answer
    carried: an ``initialize`` it refused still opened one); any other answer goes
    on as it came. The SDK answers a POST in one body: a start it may refuse in is
    held until that body comes."""
    held: Message | None = None
    passing = replaced = False

    async def watched(message: Message) -> None:
        nonlocal held, passing, replaced
        if passing:
            await send(message)
        elif replaced:
            return  # (nothing follows a whole body)
        elif held is None:
            if message["type"] == "http.response.start" and _may_refuse(message):
                held = message
                return
            passing = True
            await send(message)
        else:
            found = None
            if not message.get("more_body"):
                body = bytes(message.get("body", b""))
                found = sdk_refusal(held["status"], body, request_id)
            if found is None:
                passing = True
                await send(held)
                await send(message)
                return
            replaced = True
            refusal, answered, kept = found
            session = [(k, v) for k, v in held.get("headers", ()) if k == _SESSION_HEADER]
            await refuse(refusal, answered, dataclasses.replace(kept, headers=tuple(session)))

    return watched


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
    "NoSuchMethod",
    "SessionRequired",
    "SessionUnknown",
    "body_refusal",
    "error_answers",
    "handshake_era",
    "head_refusal",
    "sdk_refusal",
    "watching",
]
