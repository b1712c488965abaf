"""The REST door: HTTP/JSON transcoded from ``google.api.http`` rules at run time.

Per request: match a ``Binding`` (routes.py) -> the context from the
``ContextBuilder`` -> the proto3-JSON request from path variables, query parameters
and the body, parsed into the request message -> the target (targets.py), which
runs the service layer -> the response message, ``response_body`` picked -> JSON
(or its protobuf bytes, by ``Accept``); server-streaming methods answer NDJSON, or
SSE when ``Accept: text/event-stream``. Every failure is an ``AralError``
rendered in the seed's shape with the status from ``aralnode.core.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from aralnode._logs import get_logger
from aralnode.bridge import _http as h
from aralnode.bridge.rest_params import default_json, parse_scalar, query_fields, set_at
from aralnode.bridge.routes import Binding
from aralnode.bridge.targets import Target, to_json
from aralnode.core import codec
from aralnode.core.capabilities import request_from
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext, clean_trace_id
from aralnode.core.errors import (
    AralError,
    InternalError,
    InvalidParameters,
    InvalidRequest,
    MalformedMessage,
    NotFound,
    Unavailable,
)
from aralnode.service.context import ContextBuilder
from aralnode.service.pipeline import Pipeline
from aralnode.service.refusals import refused

log = get_logger("aralnode.rest")

# What a request on no route is recorded as: the door's own label, never the path.
REST_ACTION = "aral.http/rest"
_TIMEOUT_MS = re.compile(r"[0-9]{1,9}")  # ASCII digits only, at most ~11.5 days
# A stream gives the event loop a turn at least this often, so that a disconnect
# is noticed even while a generator that never waits keeps producing.
_YIELD_EVERY = 64


class Route:
    """A binding with its target and precomputed parameter tables."""

    __slots__ = ("binding", "body_cls", "offered", "query", "target")

    def __init__(self, binding: Binding, target: Target) -> None:
        self.binding = binding
        self.target = target
        self.query: dict[str, tuple[FieldDescriptor, ...]] = {}
        for name, path in query_fields(binding):
            self.query[name] = path
            camel = ".".join(f.json_name for f in path)
            self.query.setdefault(camel, path)
        body_field = binding.body_field
        self.body_cls: type[Message] | None = None
        if binding.body == "*":
            self.body_cls = target.request_cls
        elif (
            body_field is not None
            and body_field.message_type is not None
            and not body_field.is_repeated
        ):
            self.body_cls = GetMessageClass(body_field.message_type)
        # What a unary answer can be: protobuf only when the response (body) is a message.
        response_field = binding.response_field
        scalar = response_field is not None and (
            response_field.message_type is None or response_field.is_repeated
        )
        self.offered: tuple[str, ...] = (h.JSON,) if scalar else (h.JSON, h.PROTOBUF)


# The request types whose proto3 JSON is not an object: a body of one is its JSON
# (an rpc may take a google.protobuf.Int64Value or a Timestamp as its request).
_NOT_OBJECTS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue", "FloatValue", "Int64Value", "UInt64Value", "Int32Value",
        "UInt32Value", "BoolValue", "StringValue", "BytesValue", "Timestamp", "Duration",
        "FieldMask", "Value", "ListValue",
    )
)  # fmt: skip


class RestDoor:
    """The ASGI app serving every binding of every target."""

    def __init__(
        self,
        pipeline: Pipeline,
        contexts: ContextBuilder,
        bindings: list[tuple[Binding, Target]],
        *,
        max_body_bytes: int,
    ) -> None:
        self.pipeline = pipeline
        self.contexts = contexts
        self.clock: Clock = contexts.clock
        self.max_body_bytes = max_body_bytes
        self.routes = [
            Route(b, t) for b, t in bindings if t.call is not None or t.stream is not None
        ]
        # Literal templates (no variables) go straight to a dict: the common calls skip the regexes.
        self._exact: dict[tuple[str, str], Route] = {}
        for r in self.routes:
            if not r.binding.variables and "*" not in r.binding.template:
                self._exact.setdefault((r.binding.http_method, r.binding.template), r)

    async def __call__(self, scope: h.Scope, receive: h.Receive, send: h.Send) -> None:
        ctx = h.call_context(self.contexts, scope, "rest")
        # Read as the trace id is: from the metadata (a repeated header: its last value).
        req_id = ctx.message_id = h.request_id(ctx.metadata.get("x-request-id"))
        action = ""  # once the caller is known: what a refusal before the call is recorded as
        try:
            route, variables = self._route(ctx, scope)
            action = route.target.full_name
            self._deadline(ctx)
            body = await h.read_body(scope, receive, self.max_body_bytes)
            params = self.params(route, variables, scope.get("query_string", b""), body, ctx)
            if route.target.stream is not None:
                action = ""  # the pipeline records what happens from here
                await self._stream(
                    route, params, ctx, receive, send, head=scope["method"] == "HEAD"
                )
                return
            call = route.target.call
            assert call is not None
            # Negotiated before the call runs: a refusal must not come after its effects.
            kind = h.negotiate(ctx.metadata.get("accept"), route.offered)
            request = request_from(route.target.request_cls, params)
            action = ""  # the pipeline records what happens from here
            async with h.DisconnectWatch(receive, scope):  # a client that goes ends its call
                response = await call(ctx, request)
            payload, content_type = self.encode(route, response, kind)
        except h.ClientGone:
            return  # nobody to answer
        except AralError as exc:
            if action:  # refused before the pipeline ran: audit it
                refused(self.pipeline, ctx, action, exc)
            await self._error(send, exc, ctx, req_id)
            return
        except asyncio.CancelledError:
            # The server cut the call off (its drain ran out): say so in our own
            # shape, not uvicorn's plain-text 500, if nothing was sent yet.
            with contextlib.suppress(Exception):
                stopping = Unavailable(
                    "the node stopped before the call ended", reason="NODE_STOPPING"
                )
                await self._error(send, stopping, ctx, req_id)
            raise
        except Exception as exc:
            log.exception(
                "REST %s %s failed (trace %s)", scope["method"], scope.get("path"), ctx.trace_id
            )
            await self._error(
                send, InternalError(f"internal error: {type(exc).__name__}"), ctx, req_id
            )
            return
        await h.send_body(
            send, 200, payload, content_type, _ids(ctx, req_id), gzip_ok=h.accepts_gzip(scope)
        )

    def _route(self, ctx: CallContext, scope: h.Scope) -> tuple[Route, dict[Any, str]]:
        """The request's route, once its caller is known: a caller the node refuses
        learns nothing of what it would have accepted, not even which paths exist
        (it is refused alike on every path)."""
        try:
            route, variables = self.match(scope["method"], _raw_path(scope))
        except AralError as exc:
            self.pipeline.authenticate(ctx, REST_ACTION)  # a refusal is audited there
            raise refused(self.pipeline, ctx, REST_ACTION, exc) from None
        self.pipeline.authenticate(ctx, route.target.full_name)
        return route, variables

    def _deadline(self, ctx: CallContext) -> None:
        """The call's deadline from ``X-Timeout-Ms`` (none: the node's default)."""
        timeout_ms = ctx.metadata.get("x-timeout-ms")
        if timeout_ms is None:
            return
        if not _TIMEOUT_MS.fullmatch(timeout_ms):
            raise InvalidRequest(
                "X-Timeout-Ms is a whole number of milliseconds (at most 9 digits)",
                reason="BAD_TIMEOUT",
                details={"header": "x-timeout-ms", "value": timeout_ms[:32]},
            )
        if int(timeout_ms) > 0:
            self.contexts.deadline_in(ctx, int(timeout_ms) / 1000)

    # -- matching and request building ---------------------------------------------------

    def match(self, method: str, path: str) -> tuple[Route, dict[Any, str]]:
        """The route for ``method`` on ``path``, and its variables.

        HEAD is GET without the body (RFC 9110 §9.3.2): it matches GET routes, and
        the server (uvicorn) sends the head of GET's answer only.

        Raises:
            MethodNotAllowed: the path is bound, not for ``method`` (``Allow`` lists
                the methods it is bound for, HEAD with GET).
            NotFound: nothing is bound to the path.
        """
        asked, method = method, "GET" if method == "HEAD" else method
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact, {}
        allowed: list[str] = []
        for decoded in (False, True):
            # Raw first, so a single-segment variable may hold an encoded '/'
            # (capability ids do); then decoded, for multi-segment variables whose
            # value a client sent %2F-encoded as one segment.
            candidate = _unquote_path(path) if decoded else path
            for route in self.routes:
                found = route.binding.match(candidate, decode=not decoded)
                if found is None:
                    continue
                if route.binding.http_method == method:
                    return route, found
                allowed.append(route.binding.http_method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            raise h.MethodNotAllowed(
                f"{asked} is not allowed on {path}", details={"allow": sorted(set(allowed))}
            )
        raise NotFound(f"no route for {method} {path}", reason="ROUTE_NOT_FOUND")

    def params(
        self,
        route: Route,
        variables: dict[Any, str],
        query_string: bytes,
        body: bytes,
        ctx: CallContext,
    ) -> Any:
        """The request's proto3 JSON (or the body alone: ``_NOT_OBJECTS``)."""
        binding = route.binding
        params: dict[str, Any] = {}
        if binding.body and body:
            value = self._decode_body(route, body, ctx.metadata.get("content-type"))
            if binding.body == "*":
                if not isinstance(value, dict):
                    if route.target.request_cls.DESCRIPTOR.full_name in _NOT_OBJECTS:
                        return value  # (a wrapper's JSON is its scalar, a Timestamp's a string)
                    raise InvalidParameters("the request body must be a JSON object")
                params = value
            else:
                assert binding.body_field is not None
                params[binding.body_field.json_name] = value
        if query_string:
            given: set[tuple[FieldDescriptor, ...]] = set()
            for name, text in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
                path = route.query.get(name)
                if path is None:
                    raise InvalidParameters(
                        f"unknown query parameter {name!r}",
                        details={
                            "parameter": name,
                            "allowed": sorted(
                                {".".join(f.name for f in p) for p in route.query.values()}
                            ),
                        },
                    )
                leaf = path[-1]
                value = parse_scalar(leaf, text, name)
                if leaf.is_repeated:
                    existing = _get(params, path)
                    value = [*existing, value] if isinstance(existing, list) else [value]
                elif path in given:
                    # One value or the other would be a guess (and two parsers of the
                    # same URL may guess differently): neither is taken.
                    dotted = ".".join(f.name for f in path)
                    raise InvalidParameters(
                        f"query parameter {dotted!r} takes one value; it was given twice",
                        reason="DUPLICATE_PARAMETER",
                        details={"parameter": dotted},
                    )
                given.add(path)
                set_at(params, path, value)
        for var, text in variables.items():
            said = _body_value(params, var.field_path)
            if said is not None:
                # The path wins (as in every google.api.http transcoder), but what it
                # replaces must have been valid: the schema says so of the body.
                request_from(route.target.request_cls, _nested(var.field_path, said))
            set_at(params, var.field_path, parse_scalar(var.field_path[-1], text, var.name))
        return params

    def _decode_body(self, route: Route, body: bytes, content_type: str | None) -> Any:
        media = (content_type or h.JSON).split(";")[0].strip().lower()
        if media in h.PROTOBUF_TYPES:
            if route.body_cls is None:
                raise h.UnsupportedMediaType("this body is not a message; send it as JSON")
            message = route.body_cls()
            try:
                message.ParseFromString(body)
            except (DecodeError, RecursionError):
                raise MalformedMessage(
                    f"body does not parse as {message.DESCRIPTOR.full_name}"
                ) from None
            return to_json(message)
        if media != h.JSON and not media.endswith("+json"):
            raise h.UnsupportedMediaType(
                f"content-type {media!r} is not supported; use {h.JSON} or {h.PROTOBUF}"
            )
        try:
            return codec.loads(body)
        except (ValueError, RecursionError) as exc:
            raise MalformedMessage(f"the request body is not JSON: {exc}") from None

    # -- responses ---------------------------------------------------------------------------

    def encode(self, route: Route, message: Message, kind: str) -> tuple[bytes, str]:
        """The response message as the negotiated body: its protobuf bytes, or its
        JSON; ``response_body`` picks one field of it."""
        response_field = route.binding.response_field
        if kind == h.PROTOBUF:
            if response_field is not None:
                if response_field.message_type is None or response_field.is_repeated:
                    raise h.NotAcceptable("this response is not a message; ask for JSON")
                message = getattr(message, response_field.name)
            return message.SerializeToString(), h.PROTOBUF
        value = route.target.json(message)
        if response_field is not None:
            value = (
                value.get(response_field.json_name, default_json(response_field))
                if isinstance(value, dict)
                else value
            )
        return h.dumps(value), h.JSON

    async def _stream(
        self,
        route: Route,
        params: dict[str, Any],
        ctx: CallContext,
        receive: h.Receive,
        send: h.Send,
        *,
        head: bool = False,
    ) -> None:
        """Answer a server stream, for as long as the client is there (for HEAD: up
        to its first item, which settles the status, and no further).

        Once a client is gone, uvicorn's ``send`` returns without error, so a stream
        that never ends would hold its pipeline slot forever: the stream runs in a
        task of its own while this one waits for ``http.disconnect``, and whichever
        ends first ends the other. The generator is always closed here, so its
        ``finally`` (and the pipeline's) runs now, not at garbage collection.
        """
        kind = h.negotiate(ctx.metadata.get("accept"), (h.NDJSON, h.JSON, h.SSE))
        assert route.target.stream is not None
        request = request_from(route.target.request_cls, params)
        items: AsyncIterator[Message] = route.target.stream(ctx, request)
        pump = asyncio.ensure_future(self._pump(route, items, ctx, kind == h.SSE, send, head=head))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
            if pump.done():
                pump.result()  # a refusal before the first item: the caller answers it
            else:
                log.debug("REST stream %s: client went away", route.target.full_name)
        finally:
            for task in (pump, gone):
                task.cancel()
            # Wait for the pump to unwind: the generator cannot be closed while it runs.
            await asyncio.gather(pump, gone, return_exceptions=True)
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _pump(
        self,
        route: Route,
        items: AsyncIterator[Message],
        ctx: CallContext,
        sse: bool,
        send: h.Send,
        *,
        head: bool = False,
    ) -> None:
        # Pull the first item before answering, so that a refusal gets its real status.
        try:
            first: Message | None = await anext(items)
        except StopAsyncIteration:
            first = None
        headers = [
            (b"content-type", (h.SSE if sse else h.NDJSON).encode()),
            (b"cache-control", b"no-cache"),
            *_ids(ctx, ctx.message_id),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            if first is not None and not head:
                await send(_chunk(to_json(first), sse, "message"))
                sent = 1
                async for item in items:
                    await send(_chunk(to_json(item), sse, "message"))
                    sent += 1
                    if sent % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let the disconnect watcher run
        except AralError as exc:
            await send(_chunk(h.error_body(exc, ctx.trace_id, self.clock.now_ms()), sse, "error"))
        except Exception as exc:
            log.exception("REST stream %s failed (trace %s)", route.target.full_name, ctx.trace_id)
            err = InternalError(f"internal error: {type(exc).__name__}")
            await send(_chunk(h.error_body(err, ctx.trace_id, self.clock.now_ms()), sse, "error"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _error(self, send: h.Send, exc: AralError, ctx: CallContext, req_id: str) -> None:
        ids = _ids(ctx, req_id)  # first: it settles the trace id the body repeats
        body = h.dumps(h.error_body(exc, ctx.trace_id, self.clock.now_ms()))
        await h.send_body(send, exc.http_status, body, h.JSON, [*ids, *h.error_headers(exc)])


def _chunk(value: Any, sse: bool, event: str) -> h.Message:
    data = h.dumps(value)
    body = b"event: " + event.encode() + b"\ndata: " + data + b"\n\n" if sse else data + b"\n"
    return {"type": "http.response.body", "body": body, "more_body": True}


async def _disconnected(receive: h.Receive) -> None:
    """Returns once the client has gone (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _ids(ctx: CallContext, req_id: str) -> list[tuple[bytes, bytes]]:
    # The trace id may have come from a body (a ``Call``'s own); whatever it is now,
    # the header and the error body must agree, and the header must be sane.
    ctx.trace_id = clean_trace_id(ctx.trace_id)
    return [*h.id_headers(ctx.trace_id, req_id), *h.rate_limit_headers(ctx)]


def _get(params: dict[str, Any], path: tuple[FieldDescriptor, ...]) -> Any:
    node: Any = params
    for f in path:
        if not isinstance(node, dict):
            return None
        node = node.get(f.json_name)
    return node


def _body_value(params: dict[str, Any], path: tuple[FieldDescriptor, ...]) -> Any:
    """What the body already says for ``path`` (in either spelling), or None."""
    node: Any = params
    for f in path:
        if not isinstance(node, dict):
            return None
        child = node.get(f.json_name)
        node = node.get(f.name) if child is None else child
    return node


def _nested(path: tuple[FieldDescriptor, ...], value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for the path ``a.b``."""
    out: dict[str, Any] = {}
    set_at(out, path, value)
    return out


def _raw_path(scope: h.Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return str(raw.decode("latin-1")).split("?", 1)[0]
    return str(scope["path"])


def _unquote_path(path: str) -> str:
    return unquote(path)
