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

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from aralnode._logs import get_logger
from aralnode.bridge import _http as h
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

log = get_logger("aralnode.rest")

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_INTS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
_TIMEOUT_MS = re.compile(r"[0-9]{1,9}")  # ASCII digits only, at most ~11.5 days
# A stream gives the event loop a turn at least this often, so that a disconnect
# is noticed even while a generator that never waits keeps producing.
_YIELD_EVERY = 64
# Well-known types whose JSON form is one scalar, so they can come as a parameter.
_SCALAR_WKT = {
    "google.protobuf.Timestamp": None,
    "google.protobuf.Duration": None,
    "google.protobuf.FieldMask": None,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.TYPE_BYTES,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
}


def is_scalar_param(f: FieldDescriptor) -> bool:
    """Whether ``f`` can be a path or query parameter (a scalar in its JSON form)."""
    if f.message_type is None:
        return True
    return f.message_type.full_name in _SCALAR_WKT and not f.message_type.GetOptions().map_entry


def query_fields(binding: Binding) -> list[tuple[str, tuple[FieldDescriptor, ...]]]:
    """The request fields that may come as query parameters, by dotted proto name.

    Everything bound by neither the path nor the body: with ``body: "*"`` nothing,
    with ``body: "field"`` everything outside that field. Nested messages are
    walked (``a.b``) once per type, so recursive messages end.
    """
    if binding.body == "*":
        return []
    bound = {tuple(f.full_name for f in v.field_path) for v in binding.variables}
    out: list[tuple[str, tuple[FieldDescriptor, ...]]] = []

    def walk(desc: Descriptor, prefix: tuple[FieldDescriptor, ...], seen: frozenset[str]) -> None:
        for f in desc.fields:
            path = (*prefix, f)
            if tuple(x.full_name for x in path) in bound:
                continue
            if not prefix and binding.body_field is not None and f.name == binding.body_field.name:
                continue
            if is_scalar_param(f):
                out.append((".".join(x.name for x in path), path))
            elif (
                f.message_type is not None
                and not f.is_repeated
                and f.message_type.full_name not in seen
                and not f.message_type.full_name.startswith("google.protobuf.")
            ):
                walk(f.message_type, path, seen | {f.message_type.full_name})

    walk(binding.method.input_type, (), frozenset({binding.method.input_type.full_name}))
    return out


def _scalar(f: FieldDescriptor, text: str, name: str) -> Any:
    kind = f.type
    if f.message_type is not None:
        kind = _SCALAR_WKT.get(f.message_type.full_name) or FieldDescriptor.TYPE_STRING
    try:
        if kind == FieldDescriptor.TYPE_BOOL:
            low = text.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError("expected true or false")
        if kind in _INTS:
            return int(text)
        if kind in _FLOATS:
            return text if text in ("NaN", "Infinity", "-Infinity") else float(text)
        if kind == FieldDescriptor.TYPE_ENUM:
            return int(text) if text.lstrip("-").isdigit() else text
    except ValueError as exc:
        raise InvalidParameters(
            f"parameter {name!r}: {exc}", details={"field": name, "value": text[:100]}
        ) from None
    return text  # strings, bytes (base64), 64-bit integers (JSON strings), Timestamp...


def _set(target: dict[str, Any], path: tuple[FieldDescriptor, ...], value: Any) -> None:
    node = target
    for f in path[:-1]:
        child = node.get(f.json_name)
        if child is None and f.name != f.json_name:
            child = node.pop(f.name, None)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            # A message's JSON is an object: what the body sent is refused, not replaced.
            raise InvalidParameters(
                f"{f.name!r} is a message, so a JSON object, not {type(child).__name__}",
                details={"field": f.name},
            )
        node[f.json_name] = child
        node = child
    leaf = path[-1]
    if leaf.name != leaf.json_name:
        node.pop(leaf.name, None)  # the path wins over the same field spelled otherwise in the body
    node[leaf.json_name] = value


def _default_json(f: FieldDescriptor) -> Any:
    if f.is_repeated:
        return {} if f.message_type is not None and f.message_type.GetOptions().map_entry else []
    if f.message_type is not None:
        return None if f.message_type.full_name.startswith("google.protobuf.") else {}
    if f.enum_type is not None:
        return f.enum_type.values[0].name
    if f.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return "0"
    return f.default_value if not isinstance(f.default_value, bytes) else ""


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
        try:
            timeout_ms = ctx.metadata.get("x-timeout-ms")
            if timeout_ms is not None:
                if not _TIMEOUT_MS.fullmatch(timeout_ms):
                    raise InvalidRequest(
                        "X-Timeout-Ms is a whole number of milliseconds (at most 9 digits)",
                        reason="BAD_TIMEOUT",
                        details={"header": "x-timeout-ms", "value": timeout_ms[:32]},
                    )
                if int(timeout_ms) > 0:
                    self.contexts.deadline_in(ctx, int(timeout_ms) / 1000)
            route, variables = self.match(scope["method"], _raw_path(scope))
            # Who calls, before anything of the request is read: a caller the node
            # refuses learns nothing of what it would have accepted.
            self.pipeline.authenticate(ctx, route.target.full_name)
            body = await h.read_body(scope, receive, self.max_body_bytes)
            params = self.params(route, variables, scope.get("query_string", b""), body, ctx)
            if route.target.stream is not None:
                await self._stream(
                    route, params, ctx, receive, send, head=scope["method"] == "HEAD"
                )
                return
            call = route.target.call
            assert call is not None
            # Negotiated before the call runs: a refusal must not come after its effects.
            kind = h.negotiate(ctx.metadata.get("accept"), route.offered)
            request = request_from(route.target.request_cls, params)
            async with h.DisconnectWatch(receive, scope):  # a client that goes ends its call
                response = await call(ctx, request)
            payload, content_type = self.encode(route, response, kind)
        except h.ClientGone:
            return  # nobody to answer
        except AralError as exc:
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
                value = _scalar(leaf, text, name)
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
                _set(params, path, value)
        for var, text in variables.items():
            said = _body_value(params, var.field_path)
            if said is not None:
                # The path wins (as in every google.api.http transcoder), but what it
                # replaces must have been valid: the schema says so of the body.
                request_from(route.target.request_cls, _nested(var.field_path, said))
            _set(params, var.field_path, _scalar(var.field_path[-1], text, var.name))
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
                value.get(response_field.json_name, _default_json(response_field))
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
    _set(out, path, value)
    return out


def _raw_path(scope: h.Scope) -> str:
    raw = scope.get("raw_path")
    if raw:
        return str(raw.decode("latin-1")).split("?", 1)[0]
    return str(scope["path"])


def _unquote_path(path: str) -> str:
    return unquote(path)
