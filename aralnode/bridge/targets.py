"""What the HTTP bridges can run: every rpc of every service the node serves, as a
``Target``, made from the descriptors.

A unary target takes the request message and a ``CallContext`` and returns the
response message, always through the service layer:

- ``aral.v1.AgentNode`` methods are ``NodeService``'s (the table ``BUILT_INS``
  says which; ``Handshake`` and ``Channel`` are between nodes only, and ``Invoke``
  takes plain calls here, never signed messages);
- a user's unary method runs ``Pipeline.invoke_message`` on its capability
  (``package.Service/Method``), the message as the door parsed it;
- a user's server-streaming method yields messages through ``Pipeline.stream``
  (every stage before the first message), as on the gRPC door.

Doors convert at their edge only: JSON (or protobuf bytes) to the request message,
the response message to JSON (``to_json`` for users' messages, ``node_json`` for
the node's own) or protobuf bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.bridge.routes import http_rule
from aralnode.core import codec
from aralnode.core.capabilities import ProtoService
from aralnode.core.context import CallContext
from aralnode.service.auth import INVOKE_SCOPES
from aralnode.service.node_service import BUILT_INS, NodeService

UnaryCall = Callable[[CallContext, Message], Awaitable[Message]]
StreamCall = Callable[[CallContext, Message], AsyncIterator[Message]]


def to_json(message: Message) -> Any:
    """A user's message as proto3 JSON (zero fields left out; whole numbers as ints),
    as every door gives it."""
    return codec.message_json(message)


def node_json(message: Message) -> dict[str, Any]:
    """A response of the node's own methods (status, peers, capabilities, Invoke) as
    proto3 JSON with zero and empty fields too: a client reads a node with no peers
    as ``{"peers": []}`` and ``peerCount`` 0, not as missing keys."""
    out: dict[str, Any] = codec.message_json(message, zeros=True)
    if isinstance(message, pb.InvokeResponse) and not message.result.message_id:
        # A plain call has no message id, and no other door shows an empty one.
        out.get("result", {}).pop("messageId", None)
    return out


@dataclass(slots=True)
class Target:
    """One bridged rpc.

    Attributes:
        method: Its descriptor.
        call: Unary: request message in, response message out (through the service layer).
        stream: Server-streaming: request message in, messages out.
        capability_id: The capability a user method runs as ("" for AgentNode).
        tool: Whether the MCP bridge lists it as a tool of its own (user methods are
            tools through their capability already).
        built_in: One of the node's own methods (its JSON prints zero fields).
    """

    method: MethodDescriptor
    request_cls: type[Message]
    response_cls: type[Message]
    call: UnaryCall | None = None
    stream: StreamCall | None = None
    capability_id: str = ""
    tool: bool = False
    read_only: bool = False
    built_in: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.method.containing_service.full_name}/{self.method.name}"

    def json(self, message: Message) -> Any:
        """The response as this target's JSON form."""
        return node_json(message) if self.built_in else to_json(message)


def _built_in_target(service: NodeService, method: MethodDescriptor) -> Target | None:
    entry = BUILT_INS.get(method.name)
    run = service.method(method.name)
    if entry is None or run is None:
        return None
    if method.name == "Invoke":

        async def call(ctx: CallContext, request: Message) -> Message:
            assert isinstance(request, pb.InvokeRequest)
            return await service.invoke(request, ctx, envelopes=False)

    else:

        async def call(ctx: CallContext, request: Message) -> Message:
            return await run(request, ctx)

    return Target(
        method,
        GetMessageClass(method.input_type),
        GetMessageClass(method.output_type),
        call=call,
        tool=entry.tool,
        read_only=entry.tool,
        built_in=True,
    )


log = get_logger("aralnode.rest")


def _user_target(
    service: NodeService, served: ProtoService, method: MethodDescriptor
) -> Target | None:
    if method.client_streaming:
        if http_rule(method) is not None:  # its author meant it for REST: say why not
            log.warning(
                "%s streams its requests: its google.api.http rule is not served (a "
                "request stream has no REST or MCP form; it is served on gRPC)",
                method.full_name,
            )
        return None
    impl = getattr(served.servicer, method.name, None)
    if impl is None:
        return None
    req_cls: type[Message] = GetMessageClass(method.input_type)
    resp_cls: type[Message] = GetMessageClass(method.output_type)
    cap_id = f"{method.containing_service.full_name}/{method.name}"
    pipeline = service.pipeline
    if method.server_streaming:
        scopes = served.scopes_of(method.name) or INVOKE_SCOPES  # none named: agent:invoke

        def stream(ctx: CallContext, request: Message) -> AsyncIterator[Message]:
            # Every stage first, exactly as on the gRPC door.
            return pipeline.stream_message(ctx, cap_id, impl, request, scopes=scopes)

        return Target(method, req_cls, resp_cls, stream=stream, capability_id=cap_id)

    async def call(ctx: CallContext, request: Message) -> Message:
        response: Message = await pipeline.invoke_message(ctx, cap_id, request)
        return response

    return Target(method, req_cls, resp_cls, call=call, capability_id=cap_id)


def build_targets(service: NodeService, services: list[ProtoService]) -> list[Target]:
    """Targets for the node's own service and every user service, in declaration order."""
    targets = []
    for method in pb.AGENT_NODE_SERVICE.methods:
        built_in = _built_in_target(service, method)
        if built_in is not None:
            targets.append(built_in)
    for served in services:
        for method in served.descriptor.methods:
            user = _user_target(service, served, method)
            if user is not None:
                targets.append(user)
    return targets


__all__ = ["Target", "build_targets", "node_json", "to_json"]
