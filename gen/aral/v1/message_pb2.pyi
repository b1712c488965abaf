from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MessageType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MESSAGE_TYPE_UNSPECIFIED: _ClassVar[MessageType]
    MESSAGE_TYPE_REQUEST: _ClassVar[MessageType]
    MESSAGE_TYPE_RESPONSE: _ClassVar[MessageType]
    MESSAGE_TYPE_NOTIFICATION: _ClassVar[MessageType]
MESSAGE_TYPE_UNSPECIFIED: MessageType
MESSAGE_TYPE_REQUEST: MessageType
MESSAGE_TYPE_RESPONSE: MessageType
MESSAGE_TYPE_NOTIFICATION: MessageType

class ARALMessage(_message.Message):
    __slots__ = ("content", "signature")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    signature: Signature
    def __init__(self, content: _Optional[bytes] = ..., signature: _Optional[_Union[Signature, _Mapping]] = ...) -> None: ...

class MessageContent(_message.Message):
    __slots__ = ("header", "body")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    header: Header
    body: Body
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., body: _Optional[_Union[Body, _Mapping]] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("version", "message_id", "timestamp_unix_ms", "sender", "recipient", "content_type", "compression", "trace_id", "nonce", "ttl_ms", "channel", "on_behalf_of", "delegation", "traceparent", "tracestate")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    ON_BEHALF_OF_FIELD_NUMBER: _ClassVar[int]
    DELEGATION_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    version: str
    message_id: str
    timestamp_unix_ms: int
    sender: str
    recipient: str
    content_type: str
    compression: str
    trace_id: str
    nonce: bytes
    ttl_ms: int
    channel: ChannelBinding
    on_behalf_of: str
    delegation: Delegation
    traceparent: str
    tracestate: str
    def __init__(self, version: _Optional[str] = ..., message_id: _Optional[str] = ..., timestamp_unix_ms: _Optional[int] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., content_type: _Optional[str] = ..., compression: _Optional[str] = ..., trace_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ttl_ms: _Optional[int] = ..., channel: _Optional[_Union[ChannelBinding, _Mapping]] = ..., on_behalf_of: _Optional[str] = ..., delegation: _Optional[_Union[Delegation, _Mapping]] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class Delegation(_message.Message):
    __slots__ = ("principal", "kind", "scopes", "chain", "issued_unix_ms", "expires_unix_ms")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    ISSUED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    principal: str
    kind: str
    scopes: _containers.RepeatedScalarFieldContainer[str]
    chain: _containers.RepeatedScalarFieldContainer[str]
    issued_unix_ms: int
    expires_unix_ms: int
    def __init__(self, principal: _Optional[str] = ..., kind: _Optional[str] = ..., scopes: _Optional[_Iterable[str]] = ..., chain: _Optional[_Iterable[str]] = ..., issued_unix_ms: _Optional[int] = ..., expires_unix_ms: _Optional[int] = ...) -> None: ...

class ChannelBinding(_message.Message):
    __slots__ = ("epoch", "seq")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    epoch: str
    seq: int
    def __init__(self, epoch: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class Body(_message.Message):
    __slots__ = ("type", "action", "parameters", "result", "error", "correlation_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    type: MessageType
    action: str
    parameters: bytes
    result: bytes
    error: Error
    correlation_id: str
    def __init__(self, type: _Optional[_Union[MessageType, str]] = ..., action: _Optional[str] = ..., parameters: _Optional[bytes] = ..., result: _Optional[bytes] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message", "details", "status")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    details: _struct_pb2.Struct
    status: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., status: _Optional[int] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("algorithm", "key_id", "value", "public_key")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    key_id: str
    value: bytes
    public_key: bytes
    def __init__(self, algorithm: _Optional[str] = ..., key_id: _Optional[str] = ..., value: _Optional[bytes] = ..., public_key: _Optional[bytes] = ...) -> None: ...
