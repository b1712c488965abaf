from aral.v1 import message_pb2 as _message_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RiskCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RISK_CATEGORY_UNSPECIFIED: _ClassVar[RiskCategory]
    RISK_CATEGORY_READ_ONLY: _ClassVar[RiskCategory]
    RISK_CATEGORY_LIMITED_WRITE: _ClassVar[RiskCategory]
    RISK_CATEGORY_EXTERNAL_API: _ClassVar[RiskCategory]
    RISK_CATEGORY_DATABASE: _ClassVar[RiskCategory]
    RISK_CATEGORY_SYSTEM: _ClassVar[RiskCategory]
    RISK_CATEGORY_FINANCIAL: _ClassVar[RiskCategory]
RISK_CATEGORY_UNSPECIFIED: RiskCategory
RISK_CATEGORY_READ_ONLY: RiskCategory
RISK_CATEGORY_LIMITED_WRITE: RiskCategory
RISK_CATEGORY_EXTERNAL_API: RiskCategory
RISK_CATEGORY_DATABASE: RiskCategory
RISK_CATEGORY_SYSTEM: RiskCategory
RISK_CATEGORY_FINANCIAL: RiskCategory

class Capability(_message.Message):
    __slots__ = ("id", "name", "description", "input_schema", "output_schema", "required_scopes", "risk", "grpc_method")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_SCOPES_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    GRPC_METHOD_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    description: str
    input_schema: _struct_pb2.Struct
    output_schema: _struct_pb2.Struct
    required_scopes: _containers.RepeatedScalarFieldContainer[str]
    risk: RiskCategory
    grpc_method: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., input_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., output_schema: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., required_scopes: _Optional[_Iterable[str]] = ..., risk: _Optional[_Union[RiskCategory, str]] = ..., grpc_method: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("protocol", "address")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    protocol: str
    address: str
    def __init__(self, protocol: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class NodeCard(_message.Message):
    __slots__ = ("node_id", "name", "endpoints", "protocol_versions", "public_key", "key_algorithm", "capabilities", "issued_at_unix_ms", "software", "capability_digest")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    protocol_versions: _containers.RepeatedScalarFieldContainer[str]
    public_key: bytes
    key_algorithm: str
    capabilities: _containers.RepeatedCompositeFieldContainer[Capability]
    issued_at_unix_ms: int
    software: str
    capability_digest: str
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., protocol_versions: _Optional[_Iterable[str]] = ..., public_key: _Optional[bytes] = ..., key_algorithm: _Optional[str] = ..., capabilities: _Optional[_Iterable[_Union[Capability, _Mapping]]] = ..., issued_at_unix_ms: _Optional[int] = ..., software: _Optional[str] = ..., capability_digest: _Optional[str] = ...) -> None: ...

class SignedNodeCard(_message.Message):
    __slots__ = ("card", "signature")
    CARD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    card: bytes
    signature: _message_pb2.Signature
    def __init__(self, card: _Optional[bytes] = ..., signature: _Optional[_Union[_message_pb2.Signature, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("card", "protocol_versions", "nonce", "timestamp_unix_ms", "expected_node_id")
    CARD_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    card: SignedNodeCard
    protocol_versions: _containers.RepeatedScalarFieldContainer[str]
    nonce: bytes
    timestamp_unix_ms: int
    expected_node_id: str
    def __init__(self, card: _Optional[_Union[SignedNodeCard, _Mapping]] = ..., protocol_versions: _Optional[_Iterable[str]] = ..., nonce: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., expected_node_id: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("card", "selected_version", "hello_nonce", "timestamp_unix_ms", "keepalive_ms")
    CARD_FIELD_NUMBER: _ClassVar[int]
    SELECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    HELLO_NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    KEEPALIVE_MS_FIELD_NUMBER: _ClassVar[int]
    card: SignedNodeCard
    selected_version: str
    hello_nonce: bytes
    timestamp_unix_ms: int
    keepalive_ms: int
    def __init__(self, card: _Optional[_Union[SignedNodeCard, _Mapping]] = ..., selected_version: _Optional[str] = ..., hello_nonce: _Optional[bytes] = ..., timestamp_unix_ms: _Optional[int] = ..., keepalive_ms: _Optional[int] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("hello", "signature")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    hello: bytes
    signature: _message_pb2.Signature
    def __init__(self, hello: _Optional[bytes] = ..., signature: _Optional[_Union[_message_pb2.Signature, _Mapping]] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("welcome", "signature")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    welcome: bytes
    signature: _message_pb2.Signature
    def __init__(self, welcome: _Optional[bytes] = ..., signature: _Optional[_Union[_message_pb2.Signature, _Mapping]] = ...) -> None: ...
