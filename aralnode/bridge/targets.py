"""What the bridges can run: every rpc of every service the node serves, as a ``Target``.

A target takes proto3-JSON parameters and a ``CallContext`` and returns proto3 JSON,
always through the node's pipeline:

- a user's unary method is the capability ``package.Service/Method`` (registered
  by ``node.add_service``), so its target is ``pipeline.invoke(ctx, id, params)``;
- ``aral.v1.AgentNode`` methods map to the node's own functions through one small
  table of adapters (``Invoke`` with a plain ``call`` runs the pipeline, or
  forwards to a peer; the others read status, capabilities and peers). Methods
  that only make sense between nodes (``Handshake``, ``Channel``) are not bridged;
- a user's server-streaming method yields messages through ``pipeline.stream``
  (admission and governance before the first message), as on the gRPC door.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.calls import plain_call
from aralnode.core.capabilities import CapabilityRegistry, request_from
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext
from aralnode.core.errors import InvalidRequest
from aralnode.core.peers import PeerTable
from aralnode.core.pipeline import Pipeline

Forward = Callable[[str, str, Any, float | None, CallContext], Awaitable[Any]]


class NodeSurface(Protocol):
    """What the bridges need from the node (``Node`` and its gRPC hooks provide it)."""

    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def pipeline(self) -> Pipeline: ...
    @property
    def registry(self) -> CapabilityRegistry: ...
    @property
    def peer_table(self) -> PeerTable: ...

    def status(self) -> pb.NodeStatus: ...


class NodeHooksLike(Protocol):
    """The subset of the gRPC door's ``NodeHooks`` the bridges use."""

    @property
    def peers(self) -> Callable[[], list[pb.Peer]]: ...
    @property
    def peer_capabilities(self) -> Callable[[str], list[pb.Capability]]: ...
    @property
    def capabilities(self) -> Callable[[str], pb.ListCapabilitiesResponse]: ...
    @property
    def forward(self) -> Forward: ...


JsonCall = Callable[[CallContext, dict[str, Any]], Awaitable[Any]]
StreamCall = Callable[[CallContext, Message], AsyncIterator[Message]]


@dataclass(slots=True)
class Target:
    """One bridged rpc.

    Attributes:
        method: Its descriptor.
        call: Unary: JSON parameters in, JSON result out (through the pipeline).
        stream: Server-streaming: request message in, messages out.
        capability_id: The capability a unary user method runs as ("" for AgentNode).
        tool: Whether the MCP bridge lists it as a tool of its own (user methods are
            tools through their capability already).
    """

    method: MethodDescriptor
    request_cls: type[Message]
    response_cls: type[Message]
    call: JsonCall | None = None
    stream: StreamCall | None = None
    capability_id: str = ""
    tool: bool = False
    read_only: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.method.containing_service.full_name}/{self.method.name}"


def to_json(message: Message) -> dict[str, Any]:
    """A user's message as proto3 JSON, as the capability handler gives its unary
    results (zero fields left out; whole numbers as ints)."""
    out: dict[str, Any] = codec.whole_numbers(json_format.MessageToDict(message))
    return out


def node_json(message: Message) -> dict[str, Any]:
    """A response of the node's own methods (status, peers, capabilities, Invoke) as
    proto3 JSON with zero and empty fields too: a client reads a node with no peers
    as ``{"peers": []}`` and ``peerCount`` 0, not as missing keys."""
    out: dict[str, Any] = codec.whole_numbers(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    )
    return out


# -- aral.v1.AgentNode adapters ----------------------------------------------------------

Adapter = Callable[["NodeSurface", "NodeHooksLike", Any, CallContext], Awaitable[Message]]


async def _invoke(
    node: NodeSurface, hooks: NodeHooksLike, request: Any, ctx: CallContext
) -> Message:
    if request.WhichOneof("kind") != "call":
        raise InvalidRequest(
            "this door takes a plain `call`; signed messages travel over gRPC",
            reason="UNSUPPORTED_KIND",
        )
    reply = await plain_call(
        request.call,
        ctx,
        pipeline=node.pipeline,
        forward=hooks.forward,
        node_id=node.node_id,
        clock=node.clock,
    )
    return pb.InvokeResponse(result=reply)


async def _list_capabilities(
    node: NodeSurface, hooks: NodeHooksLike, request: Any, ctx: CallContext
) -> Message:
    return hooks.capabilities(request.node_id)


async def _get_status(
    node: NodeSurface, hooks: NodeHooksLike, request: Any, ctx: CallContext
) -> Message:
    return node.status()


async def _list_peers(
    node: NodeSurface, hooks: NodeHooksLike, request: Any, ctx: CallContext
) -> Message:
    return pb.ListPeersResponse(peers=hooks.peers())


# name -> (adapter, listed as an MCP tool). Invoke is not a tool: every capability
# already is one, and peers' capabilities are forwarded as tools of their own.
NODE_ADAPTERS: dict[str, tuple[Adapter, bool]] = {
    "Invoke": (_invoke, False),
    "ListCapabilities": (_list_capabilities, True),
    "GetStatus": (_get_status, True),
    "ListPeers": (_list_peers, True),
}


def _node_target(
    node: NodeSurface, hooks: NodeHooksLike, method: MethodDescriptor
) -> Target | None:
    entry = NODE_ADAPTERS.get(method.name)
    if entry is None:
        return None
    adapter, tool = entry
    req_cls: type[Message] = GetMessageClass(method.input_type)
    resp_cls: type[Message] = GetMessageClass(method.output_type)

    name = method.name

    async def call(ctx: CallContext, params: dict[str, Any]) -> Any:
        request = request_from(req_cls, params)
        if name == "Invoke":  # runs the pipeline itself (here or through a forward)
            return node_json(await adapter(node, hooks, request, ctx))

        async def run(_: Any) -> Message:
            return await adapter(node, hooks, request, ctx)

        method_id = f"{pb.AGENT_NODE_SERVICE_NAME}/{name}"
        return node_json(await node.pipeline.call(ctx, method_id, None, run))

    return Target(method, req_cls, resp_cls, call=call, tool=tool, read_only=tool)


def _user_target(node: NodeSurface, servicer: object, method: MethodDescriptor) -> Target | None:
    if method.client_streaming:
        return None  # a request stream has no REST or MCP form
    req_cls: type[Message] = GetMessageClass(method.input_type)
    resp_cls: type[Message] = GetMessageClass(method.output_type)
    cap_id = f"{method.containing_service.full_name}/{method.name}"
    impl = getattr(servicer, method.name, None)
    if impl is None:
        return None
    if method.server_streaming:
        stream_impl = impl

        pipe = node.pipeline

        def stream(ctx: CallContext, request: Message) -> AsyncIterator[Message]:
            # Admission and governance first, exactly as on the gRPC door.
            return pipe.stream_message(ctx, cap_id, stream_impl, request)

        return Target(method, req_cls, resp_cls, stream=stream, capability_id=cap_id)
    pipeline = node.pipeline

    async def call(ctx: CallContext, params: dict[str, Any]) -> Any:
        return await pipeline.invoke(ctx, cap_id, params)

    return Target(method, req_cls, resp_cls, call=call, capability_id=cap_id)


def build_targets(
    node: NodeSurface,
    hooks: NodeHooksLike,
    services: list[tuple[object, ServiceDescriptor]],
) -> list[Target]:
    """Targets for the node's own service and every user service, in declaration order."""
    targets = []
    for method in pb.AGENT_NODE_SERVICE.methods:
        node_target = _node_target(node, hooks, method)
        if node_target is not None:
            targets.append(node_target)
    for servicer, service in services:
        for method in service.methods:
            user_target = _user_target(node, servicer, method)
            if user_target is not None:
                targets.append(user_target)
    return targets
