"""The MCP tools of the node the HTTP door runs in: its capabilities, its services'
methods and its connected peers' capabilities, kept as ``ToolSpec`` for ``build_server``."""

from __future__ import annotations

import asyncio
from collections import Counter
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
from aralnode.core.errors import AralError, CapabilityNotFound, Unauthenticated
from aralnode.core.peers import PeerChange, PeerEvent, PeerState, PeerTable
from aralnode.core.proto_schema import ProtoComments, message_schema
from aralnode.service.auth import READ_SCOPES
from aralnode.service.node_service import NodeService
from aralnode.service.pipeline import Target as PipelineTarget

log = get_logger("aralnode.mcp")
# tools/list is the node's listing of what it serves: governed as ListCapabilities is.
LIST_ACTION = f"{pb.AGENT_NODE_SERVICE_NAME}/ListCapabilities"
# A peer shows its card in a handshake (ours to it, or its own to us).
_CARD_EVENTS = frozenset({PeerEvent.VERIFIED, PeerEvent.INBOUND})


class LocalTools:
    """Tools of the node this bridge runs in, kept per source: this node's own
    (rebuilt when its capabilities change) and each connected peer's (rebuilt when
    that peer shows a card, in a handshake). A peer's handshake costs the tools of
    that peer, not of every peer; a build yields to the loop every ``YIELD_EVERY``
    tools, so a card of thousands of capabilities never holds the other doors up."""

    YIELD_EVERY = 32

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
        self.dropped = 0  # peer tools left out for a schema that is not one
        self._tools: dict[str, ToolSpec] | None = None  # all of them, named
        self._own: list[ToolSpec] | None = None
        self._by_peer: dict[str, list[ToolSpec]] = {}  # node id -> tools of its card
        # Changes seen, so that a build a change overtook is used once, not kept.
        self._version = self._own_version = 0
        self._cards: Counter[str] = Counter()  # per peer: cards shown
        self._lock = asyncio.Lock()  # one build at a time; the others wait for it
        # Rebuilt only after a change: tools/call must not pay for a listing.
        self._unlisten = (
            self.registry.on_change(self._own_changed),
            peer_table.on_change(self._peer_changed),
        )

    def _changed(self) -> None:
        self._tools = None
        self._version += 1

    def _own_changed(self) -> None:
        self._own = None
        self._own_version += 1
        self._changed()

    def _peer_changed(self, change: PeerChange) -> None:
        peer = change.peer
        if change.event in _CARD_EVENTS and peer.node_id:
            self._by_peer.pop(peer.node_id, None)
            self._cards[peer.node_id] += 1
            self._changed()
        elif (change.before is PeerState.CONNECTED) != (peer.state is PeerState.CONNECTED):
            self._changed()  # listed or not listed any more; its tools are kept

    def close(self) -> None:
        """Stop following the registry and the peer table (the bridge is stopping)."""
        for unlisten in self._unlisten:
            unlisten()

    def now_ms(self) -> int:
        return self.service.clock.now_ms()

    def unknown(self, ctx: CallContext, name: str) -> AralError:
        pipeline = self.service.pipeline
        refusal: AralError = CapabilityNotFound(f"no tool {name!r} on this node")
        try:
            pipeline.stages.authenticate(ctx)
        except AralError as exc:
            refusal = exc
        pipeline.ended(ctx, PipelineTarget(name, kind="invoke"), refusal)
        return refusal

    async def tools(self) -> dict[str, ToolSpec]:
        tools = self._tools
        if tools is not None:
            return tools
        async with self._lock:
            if self._tools is not None:  # built while this one waited
                return self._tools
            version = self._version
            tools = assign_names(await self._assemble())
            if version == self._version:
                self._tools = tools
            return tools

    async def _assemble(self) -> list[ToolSpec]:
        own = self._own
        if own is None:
            version = self._own_version
            own = await self._own_tools()
            if version == self._own_version:
                self._own = own
        specs = list(own)
        live: set[str] = set()
        for peer in self._peers():
            node_id = peer.node_id
            live.add(node_id)
            built = self._by_peer.get(node_id)
            if built is None:
                card = self._cards[node_id]
                built = await self._peer_tools(peer)
                if card == self._cards[node_id]:
                    self._by_peer[node_id] = built
            specs += built
        for gone in [n for n in self._by_peer if n not in live]:
            del self._by_peer[gone]
        for gone in [n for n in self._cards if n not in live]:
            del self._cards[gone]
        return specs

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

        return await pipeline.call(ctx, LIST_ACTION, None, run, scopes=READ_SCOPES)

    def _peers(self) -> list[pb.Peer]:
        if not self.forward_peers:
            return []
        return [p for p in self.service.info.connected_peers() if p.node_id]

    async def _own_tools(self) -> list[ToolSpec]:
        files = {t.method.containing_service.file for t in self.targets}
        comments = self.docs.for_files(files)
        specs = []
        for i, cap in enumerate(list(self.registry)):
            if i % self.YIELD_EVERY == self.YIELD_EVERY - 1:
                await asyncio.sleep(0)
            specs.append(self._capability_tool(cap, comments))
        specs += [
            self._target_tool(target, comments)
            for target in self.targets
            if target.tool and target.call is not None
        ]
        return specs

    async def _peer_tools(self, peer: pb.Peer) -> list[ToolSpec]:
        """The tools of ``peer``'s card (a schema that is not one is left out)."""
        specs = []
        for i, cap_proto in enumerate(self.service.info.peer_capabilities(peer.node_id)):
            if i % self.YIELD_EVERY == self.YIELD_EVERY - 1:
                await asyncio.sleep(0)  # a card of thousands: the other doors go on
            try:
                specs.append(self._peer_tool(peer, cap_proto))
            except InvalidToolSchema as exc:
                self.dropped += 1
                log.warning("MCP: not listing %s of peer %s: %s", cap_proto.id, peer.node_id, exc)
        return specs

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
            scopes=READ_SCOPES if target.built_in else (),  # the built-ins' scope
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
