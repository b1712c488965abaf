"""The MCP door, on the official ``mcp`` SDK's low-level ``Server``.

Tools are generated, never written: one per capability (which includes every
unary method of a user's service, as ``package.Service/Method``), one per
read-only ``aral.v1.AgentNode`` method, and optionally one per capability of each
connected peer (``peer.<name>.<capability>``), forwarded over the signed channel.
Input and output schemas are JSON Schema 2020-12 from the descriptors (or from
the function's type hints); descriptions from the proto comments.

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
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import mcp_types as types
from google.protobuf import json_format
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError

from aralnode import _proto as pb
from aralnode.bridge._docs import ProtoDocs
from aralnode.bridge._http import Receive, Scope, Send, iso_ms, request_id
from aralnode.bridge.targets import NodeHooksLike, NodeSurface, Target
from aralnode.core.capabilities import Capability
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, InternalError, McpErrorCode, PeerNotFound
from aralnode.core.proto_schema import SCHEMA_DIALECT, message_schema

log = logging.getLogger("aralnode.mcp")

_BAD_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOOL_NAME = 128
PEER_PREFIX = "peer."

Run = Callable[[dict[str, Any], CallContext], Awaitable[Any]]


@dataclass(slots=True)
class ToolSpec:
    """A tool and how to run it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    read_only: bool
    run: Run

    def to_mcp(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            description=self.description or None,
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            annotations=types.ToolAnnotations(read_only_hint=True) if self.read_only else None,
        )


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


def _object_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    # MCP up to 2025-11-25 wants an object at the root of an output schema; a
    # capability returning a bare number simply has no structured output.
    if not schema or schema.get("type") != "object":
        return None
    return schema


def _input_schema(schema: dict[str, Any]) -> dict[str, Any]:
    if schema.get("type") == "object":
        return schema
    return {"$schema": SCHEMA_DIALECT, "type": "object", "properties": {}, **schema}


# Results are returned in wire form (the SDK takes dicts as handler results and still
# checks them against the protocol surface): building a CallToolResult model only to
# dump it again costs a third of the bridge's own time per call.


def result_of(value: Any, tool: ToolSpec) -> dict[str, Any]:
    """A successful ``CallToolResult``: JSON text always, structured content when the
    tool's output schema says object."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
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
    body = {"error": {**exc.to_dict(), "trace_id": trace_id, "timestamp": iso_ms(now_ms)}}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return {"content": [{"type": "text", "text": text}], "isError": True, "resultType": "complete"}


class ToolSource(Protocol):
    """Where the tools come from: this node (HTTP) or a node reached over gRPC (stdio)."""

    async def tools(self) -> dict[str, ToolSpec]: ...

    def now_ms(self) -> int: ...


# -- tools of this node ------------------------------------------------------------------


class LocalTools:
    """Tools of the node this bridge runs in; rebuilt when capabilities or peers change."""

    def __init__(
        self,
        node: NodeSurface,
        hooks: NodeHooksLike,
        targets: list[Target],
        docs: ProtoDocs,
        *,
        forward_peers: bool = True,
        peer_timeout: float = 30.0,
    ) -> None:
        self.node = node
        self.hooks = hooks
        self.targets = targets
        self.docs = docs
        self.forward_peers = forward_peers
        self.peer_timeout = peer_timeout
        self._tools: dict[str, ToolSpec] | None = None
        # Rebuilt only after a change: tools/call must not pay for a listing.
        node.registry.on_change(self._invalidate)
        node.peer_table.on_change(lambda _change: self._invalidate())

    def _invalidate(self) -> None:
        self._tools = None

    def now_ms(self) -> int:
        return self.node.clock.now_ms()

    async def tools(self) -> dict[str, ToolSpec]:
        if self._tools is None:
            self._tools = self._build(self._peers())
        return self._tools

    def _peers(self) -> list[pb.Peer]:
        if not self.forward_peers:
            return []
        return [
            p
            for p in self.hooks.peers()
            if p.state == pb.PeerState.PEER_STATE_CONNECTED and p.node_id
        ]

    def _build(self, peers: list[pb.Peer]) -> dict[str, ToolSpec]:
        files = {t.method.containing_service.file for t in self.targets}
        comments = self.docs.for_files(files)
        out: dict[str, ToolSpec] = {}

        def add(spec: ToolSpec) -> None:
            name, n = spec.name, 2
            while name in out:  # two ids that sanitize alike: keep both, distinctly
                name, n = f"{spec.name[: MAX_TOOL_NAME - 4]}_{n}", n + 1
            spec.name = name
            out[name] = spec

        for cap in self.node.registry:
            add(self._capability_tool(cap, comments))
        for target in self.targets:
            if target.tool and target.call is not None:
                add(self._target_tool(target, comments))
        for peer in peers:
            for cap_proto in self._peer_capabilities(peer.node_id):
                add(self._peer_tool(peer, cap_proto))
        return out

    def _capability_tool(self, cap: Capability, comments: dict[str, str]) -> ToolSpec:
        pipeline = self.node.pipeline
        cap_id = cap.id

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            return (await pipeline.invoke(ctx, cap_id, args)).value

        input_schema, output_schema, description = (
            cap.input_schema,
            cap.output_schema,
            cap.description,
        )
        if cap.method is not None:
            # Rebuilt with the proto comments the core registry does not have.
            input_schema = message_schema(cap.method.input_type, comments=comments, closed=True)
            output_schema = message_schema(cap.method.output_type, comments=comments)
            description = comments.get(cap.method.full_name) or description
        return ToolSpec(
            name=tool_name(cap.id),
            description=description or cap.name or cap.id,
            input_schema=_input_schema(input_schema or {}),
            output_schema=_object_schema(output_schema),
            read_only=cap.risk == "read_only",
            run=run,
        )

    def _target_tool(self, target: Target, comments: dict[str, str]) -> ToolSpec:
        method = target.method
        call = target.call
        assert call is not None

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            return await call(ctx, args)

        return ToolSpec(
            name=tool_name(method.full_name),
            description=comments.get(method.full_name) or method.full_name,
            input_schema=message_schema(method.input_type, comments=comments, closed=True),
            output_schema=message_schema(method.output_type, comments=comments),
            read_only=target.read_only,
            run=run,
        )

    def _peer_capabilities(self, node_id: str) -> list[pb.Capability]:
        try:
            return self.hooks.peer_capabilities(node_id)
        except PeerNotFound:
            return []  # connected inbound only: no client of ours to forward through

    def _peer_tool(self, peer: pb.Peer, cap: pb.Capability) -> ToolSpec:
        forward = self.hooks.forward
        node_id, cap_id, timeout = peer.node_id, cap.id, self.peer_timeout

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            return await forward(node_id, cap_id, args, timeout, ctx)

        return remote_spec(
            f"{PEER_PREFIX}{peer.name or node_id[:16]}.{cap.id}",
            cap,
            run,
            f" (on peer {peer.name or node_id})",
        )


def remote_spec(name: str, cap: pb.Capability, run: Run, suffix: str = "") -> ToolSpec:
    input_schema = (
        json_format.MessageToDict(cap.input_schema) if cap.HasField("input_schema") else {}
    )
    output_schema = (
        json_format.MessageToDict(cap.output_schema) if cap.HasField("output_schema") else None
    )
    return ToolSpec(
        name=tool_name(name),
        description=(cap.description or cap.name or cap.id) + suffix,
        input_schema=_input_schema(input_schema),
        output_schema=_object_schema(output_schema),
        read_only=cap.risk == pb.RiskCategory.RISK_CATEGORY_READ_ONLY,
        run=run,
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
    cache: dict[str, Any] = {"tools": None, "listed": None}

    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        tools = await source.tools()
        if cache["tools"] is not tools:
            cache["listed"] = types.ListToolsResult(tools=[t.to_mcp() for t in tools.values()])
            cache["tools"] = tools
        listed: types.ListToolsResult = cache["listed"]
        return listed

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> Any:
        tools = await source.tools()
        tool = tools.get(params.name)
        if tool is None:
            raise MCPError(int(McpErrorCode.INVALID_PARAMS), f"unknown tool {params.name!r}")
        call_ctx = context(ctx)
        try:
            value = await tool.run(params.arguments or {}, call_ctx)
        except AralError as exc:
            return error_result(exc, call_ctx.trace_id, source.now_ms())
        except Exception as exc:
            log.exception("MCP tool %s failed (trace %s)", tool.name, call_ctx.trace_id)
            err = InternalError(f"internal error: {type(exc).__name__}")
            return error_result(err, call_ctx.trace_id, source.now_ms())
        return result_of(value, tool)

    return Server(
        name,
        version=version,
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,  # returns wire-form dicts, which the SDK accepts
    )


def http_context(ctx: Any) -> CallContext:
    """``CallContext(door="mcp")`` from the SDK's request context (HTTP request attached)."""
    request = getattr(ctx, "request", None)
    scope = getattr(request, "scope", None)
    if not scope:
        return CallContext(door="mcp")
    client = scope.get("client")
    metadata = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
    return CallContext(
        door="mcp",
        peer=f"{client[0]}:{client[1]}" if client else "",
        metadata=metadata,
        trace_id=request_id(metadata.get("x-trace-id")),
    )


class McpHttp:
    """Streamable HTTP at ``/mcp``: the SDK's session manager, run for the node's lifetime.

    JSON responses (no SSE per POST) and sessions: fast for request/response tool
    calls, and still a session a client may open a GET stream on.
    """

    def __init__(
        self, server: Server[Any], *, allowed_hosts: list[str], allowed_origins: list[str]
    ) -> None:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
        )
        self.manager = StreamableHTTPSessionManager(
            app=server, json_response=True, stateless=False, security_settings=security
        )
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
        """The ASGI app to mount at ``/mcp``."""
        await self.manager.handle_request(scope, receive, send)


__all__ = [
    "LocalTools",
    "McpHttp",
    "ToolSource",
    "ToolSpec",
    "build_server",
    "error_result",
    "http_context",
    "remote_spec",
    "result_of",
    "tool_name",
]
