"""``aralnode mcp --node HOST:PORT``: MCP over stdio, bridged to a running node over gRPC.

The process holds no capabilities of its own: ``tools/list`` asks the node
(``ListCapabilities``), ``tools/call`` makes a plain ``Invoke``, so the node's own
pipeline (authentication, limits, governance) decides, exactly as for any gRPC
caller. The node is reached through a ``RemoteNode`` (``NodeClient`` is one), which
the command makes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import mcp_types as types
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from mcp.server.stdio import stdio_server

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode._version import __version__
from aralnode.bridge.mcp import (
    InvalidToolSchema,
    Listings,
    ToolSpec,
    assign_names,
    build_server,
    remote_spec,
    tool_name,
)
from aralnode.bridge.targets import node_json
from aralnode.core import codec
from aralnode.core.capabilities import request_from
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, CapabilityNotFound
from aralnode.core.proto_schema import ProtoComments, message_schema
from aralnode.service.auth import ALL_SCOPES
from aralnode.service.context import ContextBuilder
from aralnode.service.node_service import BUILT_INS

log = get_logger("aralnode.mcp")
EVERYTHING = frozenset({ALL_SCOPES})


class RemoteNode(Protocol):
    """A running node reached over gRPC (``aralnode.transport.grpc_client.NodeClient``)."""

    async def capabilities(self, node_id: str = "") -> pb.ListCapabilitiesResponse: ...

    async def status(self) -> pb.NodeStatus: ...

    async def peers(self) -> list[pb.Peer]: ...

    async def call(
        self, capability: str, params: Any = None, *, timeout: float | None, trace_id: str
    ) -> pb.CallResult: ...


async def _peers(client: RemoteNode) -> Message:
    return pb.ListPeersResponse(peers=await client.peers())


# The node's own read-only methods (the tools of ``BUILT_INS``), over the client.
_REMOTE: dict[str, Callable[[RemoteNode, Any], Awaitable[Message]]] = {
    "GetStatus": lambda client, request: client.status(),
    "ListCapabilities": lambda client, request: client.capabilities(request.node_id),
    "ListPeers": lambda client, request: _peers(client),
}


class RemoteTools:
    """Tools of a node reached over gRPC, listed again at most every ``ttl`` seconds."""

    def __init__(
        self,
        client: RemoteNode,
        docs: ProtoComments,
        *,
        ttl: float = 2.0,
        call_timeout: float = 60.0,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.call_timeout = call_timeout
        self._tools: dict[str, ToolSpec] = {}
        self._fetched = float("-inf")
        self._docs = docs
        self.dropped = 0  # capabilities left out for a schema that is not one
        self._listings = Listings()

    def now_ms(self) -> int:
        return SYSTEM_CLOCK.now_ms()

    def unknown(self, ctx: CallContext, name: str) -> AralError:
        # No call reaches the node: it has nothing to record (this bridge's own
        # process refuses it, as the node would).
        return CapabilityNotFound(f"no tool {name!r} on this node")

    async def listing(self, ctx: CallContext) -> types.ListToolsResult:
        # The node listed what this bridge's caller may see (ListCapabilities ran
        # through its pipeline): all of it is listed.
        return self._listings.answer(await self.tools(), EVERYTHING)

    async def tools(self) -> dict[str, ToolSpec]:
        if time.monotonic() - self._fetched > self.ttl:
            response = await self.client.capabilities()
            specs = []
            for cap in response.capabilities:
                try:
                    specs.append(remote_spec(cap.id, cap, self._caller(cap.id)))
                except InvalidToolSchema as exc:
                    self.dropped += 1
                    log.warning("MCP: not listing %s: %s", cap.id, exc)
            # Named as on the HTTP door: a capability and a method that name alike
            # both stay, told apart by a hash of their ids.
            self._tools = assign_names([*specs, *self._node_tools()])
            self._fetched = time.monotonic()
        return self._tools

    def _caller(self, cap_id: str) -> Any:
        client, timeout = self.client, self.call_timeout

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            result = await client.call(cap_id, args, timeout=timeout, trace_id=ctx.trace_id)
            return codec.from_value(result.result) if result.HasField("result") else None

        return run

    def _node_tools(self) -> list[ToolSpec]:
        comments = self._docs.for_files([pb.AGENT_NODE_SERVICE.file])
        specs = []
        for method in pb.AGENT_NODE_SERVICE.methods:
            built_in = BUILT_INS.get(method.name)
            remote = _REMOTE.get(method.name)
            if built_in is None or not built_in.tool or remote is None:
                continue
            specs.append(
                ToolSpec(
                    name=tool_name(method.full_name),
                    description=comments.get(method.full_name) or method.full_name,
                    input_schema=message_schema(method.input_type, comments=comments, closed=True),
                    output_schema=message_schema(method.output_type, comments=comments),
                    read_only=True,
                    run=self._node_caller(method.input_type, remote),
                    key=f"{method.containing_service.full_name}/{method.name}",
                )
            )
        return specs

    def _node_caller(
        self, input_type: Descriptor, remote: Callable[[RemoteNode, Any], Awaitable[Message]]
    ) -> Any:
        client = self.client
        cls = GetMessageClass(input_type)

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            return node_json(await remote(client, request_from(cls, args)))

        return run


async def serve_stdio(client: RemoteNode, docs: ProtoComments, *, name: str) -> None:
    """Serve MCP on stdin/stdout until stdin closes, forwarding to ``client``'s node."""
    contexts = ContextBuilder(SYSTEM_CLOCK)
    server = build_server(
        RemoteTools(client, docs),
        name=name,
        version=__version__,
        context=lambda _ctx: contexts.build("mcp", peer="stdio"),
        instructions=f"Tools of {name}, generated from its capabilities.",
    )
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


__all__ = ["RemoteNode", "RemoteTools", "serve_stdio"]
