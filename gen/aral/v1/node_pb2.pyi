from aral.v1 import card_pb2 as _card_pb2
from aral.v1 import message_pb2 as _message_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PEER_STATE_UNSPECIFIED: _ClassVar[PeerState]
    PEER_STATE_DISCOVERED: _ClassVar[PeerState]
    PEER_STATE_HANDSHAKING: _ClassVar[PeerState]
    PEER_STATE_CONNECTED: _ClassVar[PeerState]
    PEER_STATE_STALE: _ClassVar[PeerState]
    PEER_STATE_GONE: _ClassVar[PeerState]
PEER_STATE_UNSPECIFIED: PeerState
PEER_STATE_DISCOVERED: PeerState
PEER_STATE_HANDSHAKING: PeerState
PEER_STATE_CONNECTED: PeerState
PEER_STATE_STALE: PeerState
PEER_STATE_GONE: PeerState

class Call(_message.Message):
    __slots__ = ("capability", "parameters", "to", "trace_id", "timeout_ms")
    CAPABILITY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    capability: str
    parameters: _struct_pb2.Struct
    to: str
    trace_id: str
    timeout_ms: int
    def __init__(self, capability: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., to: _Optional[str] = ..., trace_id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("message", "call")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CALL_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.ARALMessage
    call: Call
    def __init__(self, message: _Optional[_Union[_message_pb2.ARALMessage, _Mapping]] = ..., call: _Optional[_Union[Call, _Mapping]] = ...) -> None: ...

class CallResult(_message.Message):
    __slots__ = ("result", "message_id", "trace_id", "node_id", "decision")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    result: _struct_pb2.Value
    message_id: str
    trace_id: str
    node_id: str
    decision: str
    def __init__(self, result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., message_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., node_id: _Optional[str] = ..., decision: _Optional[str] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("message", "result")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    message: _message_pb2.ARALMessage
    result: CallResult
    def __init__(self, message: _Optional[_Union[_message_pb2.ARALMessage, _Mapping]] = ..., result: _Optional[_Union[CallResult, _Mapping]] = ...) -> None: ...

class ChannelFrame(_message.Message):
    __slots__ = ("open", "batch", "ack", "credit", "ping", "pong", "close", "errors", "sealed")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    PONG_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    open: ChannelOpen
    batch: MessageBatch
    ack: Ack
    credit: Credit
    ping: Ping
    pong: Ping
    close: ChannelClose
    errors: MessageErrors
    sealed: SealedFrame
    def __init__(self, open: _Optional[_Union[ChannelOpen, _Mapping]] = ..., batch: _Optional[_Union[MessageBatch, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., pong: _Optional[_Union[Ping, _Mapping]] = ..., close: _Optional[_Union[ChannelClose, _Mapping]] = ..., errors: _Optional[_Union[MessageErrors, _Mapping]] = ..., sealed: _Optional[_Union[SealedFrame, _Mapping]] = ...) -> None: ...

class SealedFrame(_message.Message):
    __slots__ = ("body", "mac")
    BODY_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    mac: bytes
    def __init__(self, body: _Optional[bytes] = ..., mac: _Optional[bytes] = ...) -> None: ...

class ChannelOpen(_message.Message):
    __slots__ = ("content", "signature")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    signature: _message_pb2.Signature
    def __init__(self, content: _Optional[bytes] = ..., signature: _Optional[_Union[_message_pb2.Signature, _Mapping]] = ...) -> None: ...

class ChannelOpenContent(_message.Message):
    __slots__ = ("sender", "recipient", "nonce", "timestamp_unix_ms", "resume_after", "window", "keepalive_ms", "session_epoch", "resume_epoch", "answer_to", "incarnation", "max_batch", "ephemeral_key", "first_unacked")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_MS_FIELD_NUMBER: _ClassVar[int]
    SESSION_EPOCH_FIELD_NUMBER: _ClassVar[int]
    RESUME_EPOCH_FIELD_NUMBER: _ClassVar[int]
    ANSWER_TO_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_KEY_FIELD_NUMBER: _ClassVar[int]
    FIRST_UNACKED_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    nonce: bytes
    timestamp_unix_ms: int
    resume_after: int
    window: int
    keepalive_ms: int
    session_epoch: str
    resume_epoch: str
    answer_to: bytes
    incarnation: str
    max_batch: int
    ephemeral_key: bytes
    first_unacked: int
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., nonce: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., resume_after: _Optional[int] = ..., window: _Optional[int] = ..., keepalive_ms: _Optional[int] = ..., session_epoch: _Optional[str] = ..., resume_epoch: _Optional[str] = ..., answer_to: _Optional[bytes] = ..., incarnation: _Optional[str] = ..., max_batch: _Optional[int] = ..., ephemeral_key: _Optional[bytes] = ..., first_unacked: _Optional[int] = ...) -> None: ...

class MessageBatch(_message.Message):
    __slots__ = ("first_seq", "messages", "ack")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    messages: _containers.RepeatedCompositeFieldContainer[_message_pb2.ARALMessage]
    ack: int
    def __init__(self, first_seq: _Optional[int] = ..., messages: _Optional[_Iterable[_Union[_message_pb2.ARALMessage, _Mapping]]] = ..., ack: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("window",)
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    window: int
    def __init__(self, window: _Optional[int] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("id", "timestamp_unix_ms")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    id: int
    timestamp_unix_ms: int
    def __init__(self, id: _Optional[int] = ..., timestamp_unix_ms: _Optional[int] = ...) -> None: ...

class ChannelClose(_message.Message):
    __slots__ = ("status", "reason", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: int
    reason: str
    message: str
    def __init__(self, status: _Optional[int] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class MessageErrors(_message.Message):
    __slots__ = ("errors",)
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[MessageError]
    def __init__(self, errors: _Optional[_Iterable[_Union[MessageError, _Mapping]]] = ...) -> None: ...

class MessageError(_message.Message):
    __slots__ = ("seq", "message_id", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    message_id: str
    error: _message_pb2.Error
    def __init__(self, seq: _Optional[int] = ..., message_id: _Optional[str] = ..., error: _Optional[_Union[_message_pb2.Error, _Mapping]] = ...) -> None: ...

class ListCapabilitiesRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class ListCapabilitiesResponse(_message.Message):
    __slots__ = ("node_id", "capabilities")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    capabilities: _containers.RepeatedCompositeFieldContainer[_card_pb2.Capability]
    def __init__(self, node_id: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[_card_pb2.Capability, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "name", "software", "protocol_versions", "endpoints", "started_at_unix_ms", "uptime_ms", "state", "capability_count", "peer_count", "counters", "key_algorithm", "key_fingerprint", "discovery", "breakers")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class BreakersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_MS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_COUNT_FIELD_NUMBER: _ClassVar[int]
    PEER_COUNT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DISCOVERY_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    software: str
    protocol_versions: _containers.RepeatedScalarFieldContainer[str]
    endpoints: _containers.RepeatedCompositeFieldContainer[_card_pb2.Endpoint]
    started_at_unix_ms: int
    uptime_ms: int
    state: str
    capability_count: int
    peer_count: int
    counters: _containers.ScalarMap[str, int]
    key_algorithm: str
    key_fingerprint: str
    discovery: str
    breakers: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., software: _Optional[str] = ..., protocol_versions: _Optional[_Iterable[str]] = ..., endpoints: _Optional[_Iterable[_Union[_card_pb2.Endpoint, _Mapping]]] = ..., started_at_unix_ms: _Optional[int] = ..., uptime_ms: _Optional[int] = ..., state: _Optional[str] = ..., capability_count: _Optional[int] = ..., peer_count: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ..., key_algorithm: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., discovery: _Optional[str] = ..., breakers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Peer(_message.Message):
    __slots__ = ("node_id", "name", "address", "state", "health", "capability_ids", "last_seen_unix_ms", "source", "protocol_version", "key_fingerprint", "breaker_state", "breaker_retry_after_ms", "channel_sent_seq", "channel_received_seq")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_IDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    BREAKER_RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_SENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_RECEIVED_SEQ_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    address: str
    state: PeerState
    health: str
    capability_ids: _containers.RepeatedScalarFieldContainer[str]
    last_seen_unix_ms: int
    source: str
    protocol_version: str
    key_fingerprint: str
    breaker_state: str
    breaker_retry_after_ms: int
    channel_sent_seq: int
    channel_received_seq: int
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., address: _Optional[str] = ..., state: _Optional[_Union[PeerState, str]] = ..., health: _Optional[str] = ..., capability_ids: _Optional[_Iterable[str]] = ..., last_seen_unix_ms: _Optional[int] = ..., source: _Optional[str] = ..., protocol_version: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., breaker_state: _Optional[str] = ..., breaker_retry_after_ms: _Optional[int] = ..., channel_sent_seq: _Optional[int] = ..., channel_received_seq: _Optional[int] = ...) -> None: ...

class ListPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "state", "principal", "caller", "door", "action", "direction", "reasons", "rules", "trace_id", "params_digest", "preview", "created_ms", "expires_ms", "decided_by", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    DOOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: str
    principal: str
    caller: str
    door: str
    action: str
    direction: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    rules: _containers.RepeatedScalarFieldContainer[str]
    trace_id: str
    params_digest: str
    preview: str
    created_ms: int
    expires_ms: int
    decided_by: str
    note: str
    def __init__(self, id: _Optional[str] = ..., state: _Optional[str] = ..., principal: _Optional[str] = ..., caller: _Optional[str] = ..., door: _Optional[str] = ..., action: _Optional[str] = ..., direction: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., rules: _Optional[_Iterable[str]] = ..., trace_id: _Optional[str] = ..., params_digest: _Optional[str] = ..., preview: _Optional[str] = ..., created_ms: _Optional[int] = ..., expires_ms: _Optional[int] = ..., decided_by: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class DecideRequest(_message.Message):
    __slots__ = ("id", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    note: str
    def __init__(self, id: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ListHaltsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Halt(_message.Message):
    __slots__ = ("subject", "kind", "reason", "rules", "since_ms", "trace_id")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    subject: str
    kind: str
    reason: str
    rules: _containers.RepeatedScalarFieldContainer[str]
    since_ms: int
    trace_id: str
    def __init__(self, subject: _Optional[str] = ..., kind: _Optional[str] = ..., reason: _Optional[str] = ..., rules: _Optional[_Iterable[str]] = ..., since_ms: _Optional[int] = ..., trace_id: _Optional[str] = ...) -> None: ...

class ListHaltsResponse(_message.Message):
    __slots__ = ("halts",)
    HALTS_FIELD_NUMBER: _ClassVar[int]
    halts: _containers.RepeatedCompositeFieldContainer[Halt]
    def __init__(self, halts: _Optional[_Iterable[_Union[Halt, _Mapping]]] = ...) -> None: ...

class ClearHaltRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class ClearHaltResponse(_message.Message):
    __slots__ = ("cleared",)
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    cleared: bool
    def __init__(self, cleared: _Optional[bool] = ...) -> None: ...
