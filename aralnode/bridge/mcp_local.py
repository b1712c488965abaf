"""The MCP tools of the node the HTTP door runs in: its capabilities, its services'
methods and its connected peers' capabilities, kept as ``ToolSpec`` for ``build_server``."""

from __future__ import annotations

from typing import Any

import mcp_types as types

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.bridge.mcp import (
    PEER_ID_CHARS,
    InvalidToolSchema,
    Listings,
    ToolSpec,
    _input_schema,
    _object_schema,
    _unwrapping,
    assign_names,
    peer_tool_key,
    peer_tool_name,
    remote_spec,
    tool_name,
)
from aralnode.bridge.targets import Target
from aralnode.core.capabilities import Capability, request_from
from aralnode.core.context import CallContext
from aralnode.core.errors import Unauthenticated
from aralnode.core.peers import PeerTable
from aralnode.core.proto_schema import ProtoComments, message_schema
from aralnode.service.node_service import NodeService

log = get_logger("aralnode.mcp")
# tools/list is the node's listing of what it serves: governed as ListCapabilities is.
LIST_ACTION = f"{pb.AGENT_NODE_SERVICE_NAME}/ListCapabilities"


class LocalTools:
    """Tools of the node this bridge runs in; rebuilt when capabilities or peers change."""

    def __init__(
        self,
        service: NodeService,
        peer_table: PeerTable,
        targets: list[Target],
        docs: ProtoComments,
        *,
        forward_peers: bool = True,
        peer_timeout: float | None = None,
        listing_requires_auth: bool = False,
    ) -> None:
        self.service = service
        self.listing_requires_auth = listing_requires_auth
        self.listings = Listings()
        self.registry = service.pipeline.registry
        self.targets = targets
        self.docs = docs
        self.forward_peers = forward_peers
        self.peer_timeout = peer_timeout
        self._tools: dict[str, ToolSpec] | None = None
        self.dropped = 0  # peer tools left out for a schema that is not one
        # Rebuilt only after a change: tools/call must not pay for a listing.
        self._unlisten = (
            self.registry.on_change(self._invalidate),
            peer_table.on_change(lambda _change: self._invalidate()),
        )

    def _invalidate(self) -> None:
        self._tools = None

    def close(self) -> None:
        """Stop following the registry and the peer table (the bridge is stopping)."""
        for unlisten in self._unlisten:
            unlisten()

    def now_ms(self) -> int:
        return self.service.clock.now_ms()

    async def tools(self) -> dict[str, ToolSpec]:
        if self._tools is None:
            self._tools = self._build(self._peers())
        return self._tools

    async def listing(self, ctx: CallContext) -> types.ListToolsResult:
        """``tools/list`` as the node's ``ListCapabilities``: authenticated (and not
        anonymous when ``listing_requires_auth``), governed and audited as it, and
        showing what the caller's scopes reach."""
        pipeline = self.service.pipeline
        if self.listing_requires_auth:
            pipeline.authenticate(ctx, LIST_ACTION)
            if ctx.anonymous:
                raise Unauthenticated(
                    "this node lists its tools to authenticated callers only",
                    reason="ANONYMOUS_REFUSED",
                )

        async def run(_: Any) -> types.ListToolsResult:
            return self.listings.answer(await self.tools(), ctx.scopes)

        return await pipeline.call(ctx, LIST_ACTION, None, run)

    def _peers(self) -> list[pb.Peer]:
        if not self.forward_peers:
            return []
        return [p for p in self.service.info.connected_peers() if p.node_id]

    def _build(self, peers: list[pb.Peer]) -> dict[str, ToolSpec]:
        files = {t.method.containing_service.file for t in self.targets}
        comments = self.docs.for_files(files)
        specs = [self._capability_tool(cap, comments) for cap in self.registry]
        specs += [
            self._target_tool(target, comments)
            for target in self.targets
            if target.tool and target.call is not None
        ]
        for peer in peers:
            for cap_proto in self.service.info.peer_capabilities(peer.node_id):
                try:
                    specs.append(self._peer_tool(peer, cap_proto))
                except InvalidToolSchema as exc:
                    self.dropped += 1
                    log.warning(
                        "MCP: not listing %s of peer %s: %s", cap_proto.id, peer.node_id, exc
                    )
        return assign_names(specs)

    def _capability_tool(self, cap: Capability, comments: dict[str, str]) -> ToolSpec:
        pipeline = self.service.pipeline
        cap_id = cap.id

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            return await pipeline.invoke(ctx, cap_id, args)

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
        arguments, wrapped = _input_schema(input_schema or {})
        return ToolSpec(
            name=tool_name(cap.id),
            description=description or cap.name or cap.id,
            input_schema=arguments,
            output_schema=_object_schema(output_schema),
            read_only=cap.risk == "read_only",
            run=_unwrapping(run) if wrapped else run,
            key=cap.id,
            scopes=cap.required_scopes,
        )

    def _target_tool(self, target: Target, comments: dict[str, str]) -> ToolSpec:
        method = target.method
        call = target.call
        assert call is not None
        pipeline = self.service.pipeline

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            pipeline.authenticate(ctx, target.full_name)  # before the arguments are read
            return target.json(await call(ctx, request_from(target.request_cls, args)))

        return ToolSpec(
            name=tool_name(method.full_name),
            description=comments.get(method.full_name) or method.full_name,
            input_schema=message_schema(method.input_type, comments=comments, closed=True),
            output_schema=message_schema(method.output_type, comments=comments),
            read_only=target.read_only,
            run=run,
            key=target.full_name,
        )

    def _peer_tool(self, peer: pb.Peer, cap: pb.Capability) -> ToolSpec:
        forward = self.service.forward
        node_id, cap_id, timeout = peer.node_id, cap.id, self.peer_timeout

        async def run(args: dict[str, Any], ctx: CallContext) -> Any:
            return await forward(node_id, cap_id, args, timeout, ctx)

        spec = remote_spec(
            peer_tool_name(peer.name, node_id, cap.id),
            cap,
            run,
            f" (on peer {peer.name or node_id} [{node_id[:PEER_ID_CHARS]}])",
        )
        spec.key = peer_tool_key(node_id, cap.id)
        return spec


__all__ = ["LocalTools"]
