"""The one door to generated code: only this module imports ``gen/`` (package ``aral``).

Messages are imported eagerly; the gRPC stubs (``*_pb2_grpc``, which import grpc)
only on first use, so the sans-IO core can use messages without pulling in grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aral.v1 import card_pb2, message_pb2, node_pb2

if TYPE_CHECKING:
    from aral.v1.node_pb2_grpc import AgentNodeServicer as AgentNodeServicer
    from aral.v1.node_pb2_grpc import AgentNodeStub as AgentNodeStub
    from aral.v1.node_pb2_grpc import (
        add_AgentNodeServicer_to_server as add_AgentNodeServicer_to_server,
    )

ARALMessage = message_pb2.ARALMessage
MessageContent = message_pb2.MessageContent
Header = message_pb2.Header
ChannelBinding = message_pb2.ChannelBinding
Delegation = message_pb2.Delegation
Body = message_pb2.Body
Error = message_pb2.Error
Signature = message_pb2.Signature
MessageType = message_pb2.MessageType

Capability = card_pb2.Capability
RiskCategory = card_pb2.RiskCategory
Endpoint = card_pb2.Endpoint
NodeCard = card_pb2.NodeCard
SignedNodeCard = card_pb2.SignedNodeCard
Hello = card_pb2.Hello
Welcome = card_pb2.Welcome
HandshakeRequest = card_pb2.HandshakeRequest
HandshakeResponse = card_pb2.HandshakeResponse

Call = node_pb2.Call
CallResult = node_pb2.CallResult
InvokeRequest = node_pb2.InvokeRequest
InvokeResponse = node_pb2.InvokeResponse
ChannelFrame = node_pb2.ChannelFrame
SealedFrame = node_pb2.SealedFrame
ChannelOpen = node_pb2.ChannelOpen
ChannelOpenContent = node_pb2.ChannelOpenContent
MessageBatch = node_pb2.MessageBatch
Ack = node_pb2.Ack
Credit = node_pb2.Credit
Ping = node_pb2.Ping
ChannelClose = node_pb2.ChannelClose
MessageErrors = node_pb2.MessageErrors
MessageError = node_pb2.MessageError
ListCapabilitiesRequest = node_pb2.ListCapabilitiesRequest
ListCapabilitiesResponse = node_pb2.ListCapabilitiesResponse
GetStatusRequest = node_pb2.GetStatusRequest
NodeStatus = node_pb2.NodeStatus
ListPeersRequest = node_pb2.ListPeersRequest
ListPeersResponse = node_pb2.ListPeersResponse
Peer = node_pb2.Peer
PeerState = node_pb2.PeerState
ListApprovalsRequest = node_pb2.ListApprovalsRequest
ListApprovalsResponse = node_pb2.ListApprovalsResponse
Approval = node_pb2.Approval
DecideRequest = node_pb2.DecideRequest
ListHaltsRequest = node_pb2.ListHaltsRequest
ListHaltsResponse = node_pb2.ListHaltsResponse
Halt = node_pb2.Halt
ClearHaltRequest = node_pb2.ClearHaltRequest
ClearHaltResponse = node_pb2.ClearHaltResponse

_GRPC_NAMES = ("AgentNodeServicer", "AgentNodeStub", "add_AgentNodeServicer_to_server")

FILE_DESCRIPTORS = (message_pb2.DESCRIPTOR, card_pb2.DESCRIPTOR, node_pb2.DESCRIPTOR)
AGENT_NODE_SERVICE = node_pb2.DESCRIPTOR.services_by_name["AgentNode"]
AGENT_NODE_SERVICE_NAME = AGENT_NODE_SERVICE.full_name

# Payload types bound into every signature (DSSE PAE), so that a signature made
# for one kind of payload can never be passed off as another.
PAYLOAD_MESSAGE = "application/vnd.aral.v1.message-content+proto"
PAYLOAD_NODE_CARD = "application/vnd.aral.v1.node-card+proto"
PAYLOAD_HELLO = "application/vnd.aral.v1.hello+proto"
PAYLOAD_WELCOME = "application/vnd.aral.v1.welcome+proto"
PAYLOAD_CHANNEL_OPEN = "application/vnd.aral.v1.channel-open+proto"


def __getattr__(name: str) -> Any:
    if name in _GRPC_NAMES:
        value = getattr(importlib.import_module("aral.v1.node_pb2_grpc"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
