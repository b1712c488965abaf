"""The MCP door, on the official ``mcp`` SDK's low-level ``Server``.

Tools are generated, never written: one per capability (which includes every
unary method of a user's service, as ``package.Service/Method``), one per
read-only ``aral.v1.AgentNode`` method, and optionally one per capability of each
connected peer (``peer.<name>-<id>.<capability>``, ``<id>`` the head of the peer's
node id), forwarded over the signed channel. Input and output schemas are JSON
Schema 2020-12 from the descriptors (or from the function's type hints);
descriptions from the proto comments. Schemas a peer (or, over stdio, the node)
sends are checked against the 2020-12 meta-schema: a tool whose schema is not
one is left out (logged and counted), never listed broken.

Both transports name tools with ``assign_names``: ids made valid MCP names, and
ids that come out alike told apart by a hash of each original id, so a tool's
name never depends on the order tools happened to be listed in.

Two transports: streamable HTTP at ``/mcp`` inside the node (``McpHttp``), and
stdio in a separate process that bridges to a running node over gRPC
(``aralnode mcp --node HOST:PORT``, ``serve_stdio``).

A failing call is an MCP *error result* (``isError: true`` with the seed's error
object as text), so a model can read and correct it; only an unknown tool is a
JSON-RPC error (``-32602``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import mcp_types as types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.bridge import _jsonrpc as rpc
from aralnode.bridge._http import (
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    call_context,
    client_peer,
    iso_ms,
    read_body,
    trace_of,
)
from aralnode.bridge._mcp_requests import body_refusal, watching
from aralnode.bridge._mcp_sessions import SessionQuota
from aralnode.core import codec
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, InternalError, NotFound, OutOfRange
from aralnode.core.proto_schema import SCHEMA_DIALECT
from aralnode.service.auth import AGENT_INVOKE, ALL_SCOPES
from aralnode.service.context import ContextBuilder
from aralnode.service.stages import address_of, reaches
from aralnode.service.tracing import from_meta

log = get_logger("aralnode.mcp")

_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOOL_NAME = 128
PEER_PREFIX = "peer."
PEER_ID_CHARS = 8  # of the peer's node id in its tools' names: 40 bits, base32
WRAPPED = "value"  # the argument holding a capability's input when that is not an object
_OBJECT_KEYWORDS = frozenset(
    {"properties", "required", "additionalProperties", "patternProperties", "propertyNames"}
)
_COMBINATORS = frozenset({"anyOf", "oneOf", "allOf", "not", "$ref", "if", "enum", "const"})

Run = Callable[[dict[str, Any], CallContext], Awaitable[Any]]


@dataclass(slots=True)
class ToolSpec:
    """A tool and how to run it.

    Attributes:
        name: The tool's name (``tool_name`` of its id, or a peer tool's label), until
            ``assign_names`` settles it.
        key: What the tool is, unique among a listing (a capability id, a method's
            full name, ``peer:<node id>/<capability id>``); collisions are resolved by it.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    read_only: bool
    run: Run
    key: str = ""
    scopes: tuple[str, ...] = ()  # a caller needs them to call it, and to see it listed
    label: str = ""  # the name it came with (``name`` is what ``assign_names`` made it)
    _mcp: types.Tool | None = field(default=None, repr=False, compare=False)

    def to_mcp(self) -> types.Tool:
        """The tool as ``tools/list`` shows it; built once (a listing of many tools
        reuses every entry that did not change)."""
        built = self._mcp
        if built is None or built.name != self.name:
            built = self._mcp = types.Tool(
                name=self.name,
                description=self.description or None,
                input_schema=self.input_schema,
                output_schema=self.output_schema,
                annotations=types.ToolAnnotations(read_only_hint=True) if self.read_only else None,
            )
        return built


def tool_name(raw: str) -> str:
    """``raw`` made a valid MCP tool name: ``[A-Za-z0-9._-]{1,128}``.

    ``library.v1.Library/GetBook`` becomes ``library.v1.Library.GetBook``; a name
    too long keeps its head and gets a hash of the whole, so two long names that
    share a head stay apart.
    """
    name = _BAD_CHARS.sub("_", raw.replace("/", ".")) or "_"
    if len(name) > MAX_TOOL_NAME:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
        name = f"{name[: MAX_TOOL_NAME - 11]}-{digest}"
    return name


def _suffixed(name: str, key: str, digits: int = 10) -> str:
    digest = hashlib.sha256(key.encode()).hexdigest()[:digits]
    return f"{name[: MAX_TOOL_NAME - digits - 1]}-{digest}"


def assign_names(specs: Iterable[ToolSpec]) -> dict[str, ToolSpec]:
    """The tools by final name; each spec's ``name`` is set to it.

    A name is the spec's own (``tool_name`` of its id, or a peer tool's label).
    When several tools come out as one name, one whose key *is* that name keeps
    it, and every other gets ``-<hash of its key>``: the result depends on which
    tools exist, never on the order they came in. The same key twice is one
    tool: the first is kept.
    """
    by_key: dict[str, ToolSpec] = {}
    for spec in specs:
        key = spec.key or spec.name
        if key in by_key:
            log.warning("MCP tool %r is listed twice; keeping the first", key)
            continue
        spec.key = key
        spec.label = spec.label or spec.name
        by_key[key] = spec
    groups: dict[str, list[ToolSpec]] = {}
    for spec in by_key.values():
        # From the name it came with: a spec kept from an earlier listing is named
        # afresh, as if it were new (a clash that is gone leaves no suffix behind).
        groups.setdefault(tool_name(spec.label), []).append(spec)
    out: dict[str, ToolSpec] = {}
    clashing: list[tuple[str, ToolSpec]] = []
    for name, group in groups.items():
        if len(group) == 1:
            out[name] = group[0]
            continue
        for spec in group:
            if spec.key == name:
                out[name] = spec
            else:
                clashing.append((name, spec))
    for name, spec in sorted(clashing, key=lambda item: item[1].key):
        final = _suffixed(name, spec.key)
        if final in out:  # a suffix that is somebody's plain name: longer, still stable
            final = _suffixed(name, spec.key, 64)
        out[final] = spec
    for final, spec in out.items():
        spec.name = final
    return out


def peer_tool_key(node_id: str, cap_id: str) -> str:
    return f"peer:{node_id}/{cap_id}"


def peer_tool_name(peer_name: str, node_id: str, cap_id: str) -> str:
    """``peer.<name>-<id head>.<capability>``: a peer chooses its name, not its id, so
    the id keeps two peers that call themselves alike apart (and honest)."""
    short = node_id[:PEER_ID_CHARS]
    label = f"{peer_name}-{short}" if peer_name else short
    return tool_name(f"{PEER_PREFIX}{label}.{cap_id}")


class InvalidToolSchema(ValueError):
    """A schema from elsewhere that is not JSON Schema 2020-12."""


def check_schema(schema: dict[str, Any], what: str) -> None:
    """Raises ``InvalidToolSchema`` unless ``schema`` is valid JSON Schema 2020-12."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise InvalidToolSchema(f"{what} is not JSON Schema 2020-12: {exc.message}") from None
    except RecursionError:
        raise InvalidToolSchema(f"{what} is nested too deeply") from None


def _object_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    # MCP up to 2025-11-25 wants an object at the root of an output schema; a
    # capability returning a bare number simply has no structured output.
    if not schema or schema.get("type") != "object":
        return None
    return schema


def _input_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An object schema for a tool's arguments (MCP requires one), and whether the
    capability's own input is wrapped in it as the ``value`` argument.

    An object schema is used as is; an empty one (anything) becomes "any object";
    one without a ``type`` that only says object things gets ``type: object``;
    anything else (a string, an array, a union) becomes ``{"value": <it>}``, with
    its ``$defs`` kept at the root so that its references still resolve.
    """
    kind = schema.get("type")
    if kind == "object":
        return schema, False
    if not schema or set(schema) <= {"$schema", "title", "description"}:
        return {**schema, "$schema": SCHEMA_DIALECT, "type": "object", "properties": {}}, False
    if isinstance(kind, list) and "object" in kind:
        return {**schema, "type": "object"}, False  # arguments are an object, never null
    keys = set(schema)
    if kind is None and keys & _OBJECT_KEYWORDS and not keys & _COMBINATORS:
        return {"$schema": SCHEMA_DIALECT, **schema, "type": "object"}, False
    inner = {k: v for k, v in schema.items() if k not in ("$schema", "$defs", "definitions")}
    wrapped: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "type": "object",
        "properties": {WRAPPED: inner},
        "required": [WRAPPED],
        "additionalProperties": False,
    }
    for defs in ("$defs", "definitions"):
        if defs in schema:
            wrapped[defs] = schema[defs]
    return wrapped, True


def _unwrapping(run: Run) -> Run:
    async def unwrap(args: dict[str, Any], ctx: CallContext) -> Any:
        value: Any = args.get(WRAPPED)  # the capability's own input, whatever it is
        return await run(value, ctx)

    return unwrap


# Results are returned in wire form (the SDK takes dicts as handler results and still
# checks them against the protocol surface): building a CallToolResult model only to
# dump it again costs a third of the bridge's own time per call.


def result_of(value: Any, tool: ToolSpec) -> dict[str, Any]:
    """A successful ``CallToolResult``: JSON text always, structured content when the
    tool's output schema says object."""
    text = codec.dumps(value)
    result: dict[str, Any] = {
        "content": [{"type": "text", "text": text}],
        "isError": False,
        "resultType": "complete",
    }
    if tool.output_schema is not None and isinstance(value, dict):
        result["structuredContent"] = value
    return result


def error_result(exc: AralError, trace_id: str, now_ms: int) -> dict[str, Any]:
    """An error ``CallToolResult`` whose text is the seed's error object."""
    body = {"error": {**codec.error_dict(exc), "trace_id": trace_id, "timestamp": iso_ms(now_ms)}}
    text = codec.dumps(body)
    return {"content": [{"type": "text", "text": text}], "isError": True, "resultType": "complete"}


class ToolSource(Protocol):
    """Where the tools come from: this node (HTTP) or a node reached over gRPC (stdio)."""

    async def tools(self) -> dict[str, ToolSpec]: ...

    async def listing(self, ctx: CallContext) -> types.ListToolsResult:
        """``tools/list`` for the caller ``ctx``: a call like any other (the node's
        pipeline decides), listing what the caller's scopes reach.

        Raises:
            AralError: the caller may not list.
        """
        ...

    def now_ms(self) -> int: ...

    def unknown(self, ctx: CallContext, name: str) -> AralError:
        """The refusal of a call to a tool that is not there (as every door refuses
        an unknown capability: the caller authenticated, the refusal on record)."""
        ...


class Listings:
    """``tools/list`` answers, built once per set of tools and per the scopes that
    make a difference to it (the ones some tool needs), at most ``MAX`` kept."""

    MAX = 64

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] | None = None
        self._needed: frozenset[str] = frozenset()
        self._answers: dict[frozenset[str] | None, types.ListToolsResult] = {}

    def answer(self, tools: dict[str, ToolSpec], scopes: frozenset[str]) -> types.ListToolsResult:
        """The tools of ``tools`` a caller holding ``scopes`` may call."""
        if tools is not self._tools:
            self._tools = tools
            # A tool that names no scope needs agent:invoke (``reaches``).
            self._needed = frozenset(s for t in tools.values() for s in t.scopes) | {AGENT_INVOKE}
            self._answers.clear()
        key = None if ALL_SCOPES in scopes else scopes & self._needed
        listed = self._answers.get(key)
        if listed is None:
            if len(self._answers) >= self.MAX:
                self._answers.clear()
            shown = [t.to_mcp() for t in tools.values() if reaches(scopes, t.scopes)]
            listed = self._answers[key] = types.ListToolsResult(tools=shown)
        return listed


def mcp_error(exc: AralError, trace_id: str, now_ms: int, message: str = "") -> MCPError:
    """A refusal as a JSON-RPC error (in its words, or ``message``), the seed's error
    object as its data."""
    data = {**codec.error_dict(exc), "trace_id": trace_id, "timestamp": iso_ms(now_ms)}
    return MCPError(int(exc.mcp_code), message or exc.message, data)


def remote_spec(name: str, cap: pb.Capability, run: Run, suffix: str = "") -> ToolSpec:
    """A tool for a capability described by another process (a peer, or the node a
    stdio bridge serves); its key is the capability id.

    Raises:
        InvalidToolSchema: a schema it sent is not JSON Schema 2020-12.
    """
    try:
        input_schema = (
            codec.from_struct(cap.input_schema, allow_inf_nan=False)
            if cap.HasField("input_schema")
            else {}
        )
        output_schema = (
            codec.from_struct(cap.output_schema, allow_inf_nan=False)
            if cap.HasField("output_schema")
            else None
        )
    except RecursionError:
        raise InvalidToolSchema(f"the schemas of {cap.id!r} are nested too deeply") from None
    except ValueError as exc:  # NaN or an infinity: tools/list would be no JSON
        raise InvalidToolSchema(f"the schemas of {cap.id!r} are not JSON: {exc}") from None
    check_schema(input_schema, f"the input schema of {cap.id!r}")
    if output_schema is not None:
        check_schema(output_schema, f"the output schema of {cap.id!r}")
    arguments, wrapped = _input_schema(input_schema)
    return ToolSpec(
        name=tool_name(name),
        description=(cap.description or cap.name or cap.id) + suffix,
        input_schema=arguments,
        output_schema=_object_schema(output_schema),
        read_only=cap.risk == pb.RiskCategory.RISK_CATEGORY_READ_ONLY,
        run=_unwrapping(run) if wrapped else run,
        key=cap.id,
    )


# -- the server --------------------------------------------------------------------------


def build_server(
    source: ToolSource,
    *,
    name: str,
    version: str,
    context: Callable[[Any], CallContext],
    instructions: str | None = None,
) -> Server[Any]:
    """The SDK's low-level server with ``tools/list`` and ``tools/call`` from ``source``.

    Args:
        context: Builds the door's ``CallContext`` from the SDK's request context.
    """

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        call_ctx = context(ctx)
        try:
            return await source.listing(call_ctx)
        except AralError as exc:
            raise mcp_error(exc, call_ctx.trace_id, source.now_ms()) from None

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
        tools = await source.tools()
        tool = tools.get(params.name)
        call_ctx = context(ctx)
        from_meta(call_ctx, params.meta)  # a traceparent in _meta outranks the header's
        if tool is None:
            _unknown_tool(source, call_ctx, params.name)
        # The HTTP request that carried the call (none over stdio): a client that
        # goes away ends its call, as on REST.
        request = getattr(ctx, "request", None)
        receive = getattr(request, "receive", None)
        try:
            if receive is None:
                value = await tool.run(params.arguments or {}, call_ctx)
            else:
                async with DisconnectWatch(receive, getattr(request, "scope", None)):
                    value = await tool.run(params.arguments or {}, call_ctx)
        except AralError as exc:
            return error_result(exc, call_ctx.trace_id, source.now_ms())
        except Exception as exc:
            log.exception("MCP tool %s failed (trace %s)", tool.name, call_ctx.trace_id)
            err = InternalError(f"internal error: {type(exc).__name__}")
            return error_result(err, call_ctx.trace_id, source.now_ms())
        try:
            return result_of(value, tool)
        except ValueError as exc:  # NaN from a node the stdio door serves: not JSON
            refusal = OutOfRange(f"the result has no JSON form: {exc}", reason="RESULT_NOT_JSON")
            return error_result(refusal, call_ctx.trace_id, source.now_ms())

    return Server(
        name,
        version=version,
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,  # returns wire-form dicts, which the SDK accepts
    )


def _unknown_tool(source: ToolSource, ctx: CallContext, name: str) -> NoReturn:
    """Refuse a call to a tool that is not there, on record like every door's."""
    refusal = source.unknown(ctx, name)
    if not isinstance(refusal, NotFound):  # its credentials were refused
        raise mcp_error(refusal, ctx.trace_id, source.now_ms())
    # In the SDK's words for it, with the seed's error object, as every refusal here.
    raise mcp_error(refusal, ctx.trace_id, source.now_ms(), f"unknown tool {name!r}")


def http_context(contexts: ContextBuilder) -> Callable[[Any], CallContext]:
    """The MCP door's contexts: from the HTTP request the SDK's request context
    carries, made by the builder (``door="mcp"``)."""

    def context(ctx: Any) -> CallContext:
        request = getattr(ctx, "request", None)
        scope = getattr(request, "scope", None)
        if not scope:
            return contexts.build("mcp")
        return call_context(contexts, scope, "mcp")

    return context


class McpHttp:
    """Streamable HTTP at ``/mcp``: the SDK's session manager, run for the node's lifetime.

    JSON responses (no SSE per POST) and sessions: fast for request/response tool
    calls, and still a session a client may open a GET stream on. Sessions are held
    to ``max_sessions`` in all and ``max_sessions_per_client`` per client, with fair
    eviction (``SessionQuota``). It serves behind the port's ``HostGuard``, which
    alone checks Host and Origin (the SDK's own check is off).
    """

    def __init__(
        self,
        server: Server[Any],
        *,
        max_body_bytes: int,
        max_sessions: int = 1024,
        max_sessions_per_client: int = 32,
        client_of: Callable[[Scope], str] | None = None,
        now_ms: Callable[[], int] = lambda: 0,
        on_open: Callable[[str, Scope], None] | None = None,
    ) -> None:
        # The port's HostGuard checks Host and Origin before any request gets here,
        # as for every door; the SDK's own check (exact strings, ``name:*`` only with
        # a port) would refuse some the guard serves, in a shape of its own.
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.manager = StreamableHTTPSessionManager(
            app=server,
            json_response=True,
            stateless=False,
            security_settings=security,
            max_request_body_size=max_body_bytes,  # the node's limit, as on REST
            max_sessions=max_sessions,  # a backstop: the quota makes room before it
        )
        self.sessions = SessionQuota(
            self.manager,
            per_client=max_sessions_per_client,
            total=max_sessions,
            client_of=client_of or (lambda scope: address_of(client_peer(scope))),
            refuse=self._refuse,
            on_open=on_open,
        )
        self.max_body_bytes = max_body_bytes
        self.now_ms = now_ms
        # Told of each refusal made here, before the SDK reads the request (the
        # scope, the error, its trace id): the audit log's record of it.
        self.on_refused: Callable[[Scope, AralError, str], None] | None = None
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The manager's task group must be entered and left by one task.
        self._task = asyncio.create_task(self._run(), name="mcp session manager")
        waiter = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def _run(self) -> None:
        async with self.manager.run():
            self._ready.set()
            await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app to mount at ``/mcp``: a POST's body is read first and
        refused if a member is in it twice (tool arguments included), as on REST
        (the SDK would take the last), or if it needs a session it does not name
        (``_mcp_requests.body_refusal``)."""
        if scope.get("method") == "POST":
            # Read as it came (the SDK reads no content-encoding), within the limit.
            raw = {**scope, "headers": [(k, v) for k, v in scope.get("headers", ())
                                        if k != b"content-encoding"]}  # fmt: skip
            refusal: AralError | None
            try:
                body = await read_body(raw, receive, self.max_body_bytes)
                value = rpc.parse_body(body)  # as the node reads every JSON body
                refusal = body_refusal(scope, value)
            except AralError as exc:
                refusal = exc
            if refusal is not None:
                await self._refuse(scope, send, refusal)
                return
            receive = rpc.replaying(body, receive)
            # What the SDK still refuses (no message it can validate, a method it
            # does not have) is answered here instead, on record (``watching``).
            asked = value.get("id") if type(value) is dict else None
            send = watching(send, functools.partial(self._refuse, scope, send), asked)
        await self.sessions(scope, receive, send)

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        refusal: AralError,
        request_id: Any = None,
        sdk: rpc.SdkAnswer | None = None,
    ) -> None:
        """Answer a refusal made here (or the SDK's, with what of its answer ``sdk``
        keeps: ``watching``) as the gate answers its own; ``on_refused`` puts it on
        record."""
        trace = trace_of(scope)
        if self.on_refused is not None:
            self.on_refused(scope, refusal, trace)
        await rpc.refuse(
            send, scope, refusal, trace_id=trace, now_ms=self.now_ms(), jsonrpc=True,
            request_id=request_id, sdk=sdk,
        )  # fmt: skip


__all__ = [
    "InvalidToolSchema",
    "Listings",
    "McpHttp",
    "ToolSource",
    "ToolSpec",
    "assign_names",
    "build_server",
    "check_schema",
    "error_result",
    "http_context",
    "mcp_error",
    "peer_tool_name",
    "remote_spec",
    "result_of",
    "tool_name",
]
