"""The A2A door's HTTP requests: JSON-RPC at ``/a2a`` and HTTP+JSON under
``/a2a/rest`` (docs/a2a.md).

Each request is admitted (its credentials), then read and checked before the
a2a-sdk reads it: its ``A2A-Version``, its body (at most ``max_body_bytes``: the SDK
would read any size; on ``/a2a`` one JSON-RPC request object, ``_jsonrpc.read_request``,
not ``-32603`` from the SDK with a traceback; no member twice, as on REST) and what
``_a2a_checks`` holds it to (the caller too: ``GetExtendedAgentCard`` is not for an
anonymous one). A refusal there is the node's, audited, with the call's trace id, in
the binding's own form (``refuse``): on ``/a2a`` a JSON-RPC error for the request's
``id`` (its version is checked once the request object is read, so that it can be
echoed), elsewhere (HTTP+JSON) AIP-193 (``_a2a_errors``). Then the SDK serves it, each
method a call of the pipeline (``_a2a_calls``); a stream's events are held to its
caller's credentials (``GatedStream``). A JSON-RPC notification (no ``id``) is
served, or refused, on record, and answered with no content (204), as JSON-RPC 2.0
says; one by an A2A 0.3 method is no request (0.3's models need an ``id``) and is
answered so.

The Agent Card and the JWKS go with HTTP's caching headers (``send_cached``, A2A 1.0
§8.6.1).
"""

from __future__ import annotations

import hashlib
from email.utils import formatdate
from typing import Any

from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher

from aralnode.bridge import _a2a_calls as calls
from aralnode.bridge import _http as h
from aralnode.bridge import _jsonrpc as rpc
from aralnode.bridge._a2a_checks import (
    body_json,
    check_caller,
    check_ids,
    check_request,
    check_version,
)
from aralnode.bridge._a2a_errors import A2A_REASONS, aip_193, jsonrpc_a2a
from aralnode.bridge._approvals_feed import GatedStream
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.service.refusals import refused

DOOR = "a2a"
JSONRPC_PATH = "/a2a"
REST_PREFIX = calls.REST_PREFIX
# The context a request was admitted with, in its ASGI scope (``A2ADoor.call_context``).
ADMITTED = "aralnode.a2a.admitted"
_BODILESS = ("GET", "HEAD", "DELETE")
#: How long a client may keep the card before it asks again (A2A 1.0 §8.6.1): a
#: capability added or removed changes it, and the ETag makes asking again cheap.
CARD_MAX_AGE = 300


class _Read:
    """What the door read of a request: the A2A method it calls (1.0's name; "" for
    none A2A has), its body (None: not read), its JSON-RPC request object."""

    __slots__ = ("body", "method", "rpc")

    def __init__(self) -> None:
        self.method = ""
        self.body: bytes | None = None
        self.rpc: dict[str, Any] | None = None

    @property
    def request_id(self) -> Any:
        return None if self.rpc is None else self.rpc.get("id")

    @property
    def notification(self) -> bool:
        """A JSON-RPC request without ``id``: it gets no answer."""
        return self.rpc is not None and "id" not in self.rpc

    async def read(self, door: calls.Door, scope: h.Scope, receive: h.Receive) -> None:
        """Read and check the request (the module docstring).

        Raises:
            AralError: the refusal.
        """
        versions = [v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"a2a-version"]
        path, verb = str(scope.get("path", "")), scope.get("method")
        if path == JSONRPC_PATH:
            request = await self._read_jsonrpc(door, scope, receive)
            check_version(versions)  # (once the request's id is known: echoed)
            v03 = calls.jsonrpc_v03(request["method"])
            check_request(self.method, request.get("params"), v03=v03)
            return
        check_version(versions)
        self.method, ids = calls.rest_method(door.app.routes, scope)
        if not self.method and (no_route := calls.unrouted(door.app.routes, scope)):
            raise no_route  # (looked for only when no A2A method was found)
        check_ids([ids, calls.query_ids(scope)])
        if verb in _BODILESS:
            return
        calls.json_media(h.header(scope, b"content-type"))
        self.body = body = await h.read_body(scope, receive, door.max_body_bytes)
        if body:  # (A2A 0.3's REST, under v1/, names a message's parts "content")
            v03 = path.startswith(f"{REST_PREFIX}/v1/")
            check_request(self.method, body_json(body), parts="content" if v03 else "parts")

    async def _read_jsonrpc(
        self, door: calls.Door, scope: h.Scope, receive: h.Receive
    ) -> dict[str, Any]:
        """The JSON-RPC request object on ``/a2a`` (kept as ``self.rpc``); its method."""
        verb = scope.get("method")
        if verb != "POST":
            raise h.MethodNotAllowed(
                f"{str(verb)[:16]} is not allowed here", details={"allow": ["POST"]}
            )
        calls.json_media(h.header(scope, b"content-type"))
        self.body = body = await h.read_body(scope, receive, door.max_body_bytes)
        request = rpc.read_request(body)
        self.method = calls.jsonrpc_method(request["method"])
        if calls.jsonrpc_v03(request["method"]) and "id" not in request:
            raise rpc.NotARequest(  # (answered: it is no notification either)
                f"{request['method']} is A2A 0.3's, whose requests have an id: "
                "send one (0.3 has no notifications)"
            )
        self.rpc = request
        return request


async def serve(door: calls.Door, scope: h.Scope, receive: h.Receive, send: h.Send) -> None:
    """Admit, read and check a request, then have the SDK serve it (module docstring)."""
    ctx = h.call_context(door.service.contexts, scope, DOOR)
    try:
        door.admit(ctx)  # (its refusal on record already)
    except AralError as exc:
        await refuse(door, scope, send, exc, ctx)
        return
    read = _Read()
    try:
        await read.read(door, scope, receive)
        check_caller(read.method, ctx)
    except AralError as exc:  # on record, as the HTTP port's other refusals
        action, kind = calls.action(read.method), calls.kind_of(read.method)
        refusal = refused(door.service.pipeline, ctx, action, exc, kind=kind)
        if read.notification:
            await _no_content(scope, send, ctx)
        else:
            await refuse(door, scope, send, refusal, ctx, request_id=read.request_id)
        return
    scope = {**scope, ADMITTED: ctx}  # (``A2ADoor.call_context``)
    if read.body is not None:  # handed on as one plain chunk
        headers = [(k, v) for k, v in scope.get("headers", ())
                   if k not in (b"content-encoding", b"content-length")]  # fmt: skip
        headers.append((b"content-length", str(len(read.body)).encode()))
        if read.rpc is not None and _v1_without_version(headers, scope, read.rpc):
            headers.append((b"a2a-version", b"1.0"))
        scope["headers"] = headers
        receive = rpc.replaying(read.body, receive)
    if read.notification:  # no answer
        await _served(door, ctx, read, (scope, receive, _dropped))
        await _no_content(scope, send, ctx)
        return
    gated = None
    if read.method in calls.STREAMS:  # its events held to its credentials (``a2a``)
        again = lambda: h.call_context(door.service.contexts, scope, DOOR)  # noqa: E731
        gated = GatedStream(door.stream_gate(ctx, again), receive, send)
        receive, send = gated.receive, gated.send
    await _served(door, ctx, read, (scope, receive, send), gated)


async def _served(
    door: calls.Door,
    ctx: CallContext,
    read: _Read,
    asgi: tuple[h.Scope, h.Receive, h.Send],
    gated: GatedStream | None = None,
) -> None:
    """The SDK's answer, a method other than a send's as a call of the pipeline
    (``_a2a_calls``): a stage's refusal is the node's answer, even after the SDK
    answered (its answer is held until then); the SDK's own error is its answer as it
    gave it, recorded as the call's outcome. A stream its ``gated`` ended has that
    refusal as its outcome."""
    scope, receive, send = asgi
    pipeline = door.service.pipeline
    if not calls.governed(read.method):  # (the executor runs its skill in the pipeline)
        await _sent(door, ctx, read, asgi, gated)
        return
    answer = calls.SdkAnswer(
        send, read.method, jsonrpc=read.rpc is not None, limit=pipeline.max_result_bytes,
        trace_id=ctx.trace_id,
    )  # fmt: skip

    async def sdk() -> None:
        await door.app(scope, receive, answer.send)
        if gated is not None and gated.failure is not None:
            raise gated.failure
        if (error := answer.error()) is not None:
            raise error

    try:
        await calls.run(pipeline, ctx, read.method, sdk)
    except AralError as exc:
        # Fail closed, as gRPC does: a refusal after the SDK answered (the audit log
        # could not keep the record, a post-check) goes instead of the held answer. A
        # server-sent stream has gone as it came: it just ends.
        if not answer.streaming and not answer.gave(exc):
            await refuse(door, scope, send, exc, ctx, request_id=read.request_id)
            return
    await answer.flush()


async def _sent(
    door: calls.Door,
    ctx: CallContext,
    read: _Read,
    asgi: tuple[h.Scope, h.Receive, h.Send],
    gated: GatedStream | None = None,
) -> None:
    """A send: its skill's call is the executor's, in the pipeline, on record there.
    An error the SDK answers instead, before any executor runs (a task it does not
    hold or that has ended, a message it cannot take), is recorded here (the
    executor answers its own refusals as a task, never as an error)."""
    scope, receive, send = asgi
    answer = calls.SdkAnswer(
        send, read.method, jsonrpc=read.rpc is not None, limit=0, trace_id=ctx.trace_id
    )
    await door.app(scope, receive, answer.send)
    error = gated.failure if gated is not None and gated.failure else answer.error()
    if error is not None:
        refused(door.service.pipeline, ctx, calls.action(read.method), error, kind="invoke")
    await answer.flush()


async def _dropped(_: h.Message) -> None:
    """Where a notification's answer goes."""


async def _no_content(scope: h.Scope, send: h.Send, ctx: CallContext) -> None:
    """A notification's answer: 204, no body (its trace id in ``X-Trace-Id``)."""
    ids = h.id_headers(ctx.trace_id, h.request_id(h.header(scope, b"x-request-id")))
    await send({"type": "http.response.start", "status": 204, "headers": ids})
    await send({"type": "http.response.body", "body": b""})


async def refuse(
    door: calls.Door,
    scope: h.Scope,
    send: h.Send,
    exc: AralError,
    ctx: CallContext,
    *,
    request_id: Any = None,
) -> None:
    """A refusal by the node, as every door's: its trace id (``X-Trace-Id``, the
    error's ``trace_id``) and headers (``WWW-Authenticate``, ``Retry-After``…), in the
    binding's form: on JSON-RPC a JSON-RPC error (for ``request_id``; an A2A error's
    ``data`` an array of its ``ErrorInfo``, A2A 1.0 §9.5), on HTTP+JSON AIP-193
    (§11.6). The node's error object is in the ``ErrorInfo`` where it is not ``data``."""
    jsonrpc = scope.get("path") == JSONRPC_PATH
    now = door.service.clock.now_ms()
    if jsonrpc and exc.reason not in A2A_REASONS:  # ``data``: the node's error object
        await rpc.refuse(send, scope, exc, trace_id=ctx.trace_id, now_ms=now, jsonrpc=True,
                         request_id=request_id)  # fmt: skip
        return
    trace_id = ctx.trace_id or h.trace_of(scope)
    body = jsonrpc_a2a(exc, trace_id, now, request_id) if jsonrpc else aip_193(exc, trace_id, now)
    headers = [
        *h.id_headers(trace_id, h.request_id(h.header(scope, b"x-request-id"))),
        *h.error_headers(exc),
    ]
    await h.send_body(send, exc.http_status, body, h.JSON, headers)


async def send_cached(
    scope: h.Scope, send: h.Send, body: bytes, content_type: str, *, made_ms: int = 0
) -> None:
    """``body`` (a public document: the card, the JWKS) with HTTP's caching headers
    (A2A 1.0 §8.6.1): ``Cache-Control`` with a ``max-age``, a strong ``ETag`` (a hash
    of the bytes: a card made again, signed again, has another), ``Last-Modified``
    (``made_ms``, if given); 304 with no body when ``If-None-Match`` names the ETag
    (or ``*``; compared weakly, as RFC 9110 §13.1.2 says for it)."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = [
        (b"cache-control", f"public, max-age={CARD_MAX_AGE}".encode()),
        (b"etag", etag.encode()),
    ]
    if made_ms:
        headers.append((b"last-modified", formatdate(made_ms / 1000, usegmt=True).encode()))
    asked = h.header(scope, b"if-none-match")
    if asked is not None and scope.get("method") in ("GET", "HEAD"):
        tags = {t.strip().removeprefix("W/") for t in asked.split(",")}
        if etag in tags or "*" in tags:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
    await h.send_body(send, 200, body, content_type, headers)


def _v1_without_version(
    headers: list[tuple[bytes, bytes]], scope: h.Scope, request: dict[str, Any]
) -> bool:
    """A JSON-RPC call by an A2A 1.0 method name (which 0.3 does not have) that says
    no version: read as 1.0, the one version it can mean (A2A 1.0 §3.6.2 takes an
    empty version as 0.3, under which the call would be an unknown method)."""
    if any(k == b"a2a-version" for k, _ in headers) or b"A2A-Version" in scope.get(
        "query_string", b""
    ):
        return False
    return request.get("method") in JsonRpcDispatcher.METHOD_TO_MODEL


__all__ = [
    "ADMITTED",
    "CARD_MAX_AGE",
    "DOOR",
    "JSONRPC_PATH",
    "REST_PREFIX",
    "refuse",
    "send_cached",
    "serve",
]
