"""Parameter and result encodings (PRO-003) and compression (PRO-004).

``application/json`` is the default; ``application/msgpack`` and
``application/x-protobuf`` (a ``google.protobuf.Value``) are negotiated through
the message header. Payloads above a threshold are gzip-compressed on send; a
decompressed payload is bounded so a small bomb cannot exhaust memory.
"""

from __future__ import annotations

import gzip
import math
import zlib
from typing import Any

import msgpack
import pydantic_core
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from aralnode.core.errors import InternalError, InvalidRequest, MalformedMessage, MessageTooLarge

JSON = "application/json"
MSGPACK = "application/msgpack"
PROTOBUF = "application/x-protobuf"
CONTENT_TYPES = (JSON, MSGPACK, PROTOBUF)
GZIP = "gzip"
DEFLATE = "deflate"
COMPRESSIONS = ("", GZIP, DEFLATE)

# pydantic-core's JSON (Rust) is 3-5x faster than the json module on the hot path.
_to_json = pydantic_core.to_json
_from_json = pydantic_core.from_json


def encode(value: Any, content_type: str = JSON) -> bytes:
    """Encode a JSON-compatible value."""
    if not content_type or content_type == JSON:
        try:
            return _to_json(value)
        except pydantic_core.PydanticSerializationError as exc:
            raise InvalidRequest(f"value is not JSON-serializable: {exc}") from None
    if content_type == MSGPACK:
        return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
    if content_type == PROTOBUF:
        msg = struct_pb2.Value()
        json_format.ParseDict(value, msg)
        return msg.SerializeToString()
    raise InvalidRequest(
        f"unsupported content type {content_type!r}", reason="UNSUPPORTED_CONTENT_TYPE"
    )


def decode(data: bytes, content_type: str = JSON) -> Any:
    """Decode bytes made by :func:`encode`; empty bytes decode to ``None``."""
    if not data:
        return None
    try:
        if not content_type or content_type == JSON:
            return _from_json(data, allow_inf_nan=False)
        if content_type == MSGPACK:
            return msgpack.unpackb(data, raw=False, strict_map_key=False)
        if content_type == PROTOBUF:
            msg = struct_pb2.Value()
            msg.ParseFromString(data)
            return from_value(msg, allow_inf_nan=False)  # as JSON payloads
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise MalformedMessage(f"payload is not valid {content_type or JSON}: {exc}") from None
    except Exception as exc:  # protobuf DecodeError and msgpack's ExtraData share no base
        raise MalformedMessage(f"payload is not valid {content_type}: {exc}") from None
    raise InvalidRequest(
        f"unsupported content type {content_type!r}", reason="UNSUPPORTED_CONTENT_TYPE"
    )


def to_value(value: Any) -> struct_pb2.Value:
    """A JSON-compatible value as ``google.protobuf.Value`` (plain calls' results).

    A ``Value`` number is a double: an integer beyond ±2**53 would arrive as another
    integer, so it is refused here rather than changed on the way.

    Raises:
        InternalError: the value has no exact ``Value`` form (a capability returned it).
    """
    msg = struct_pb2.Value()
    try:
        _check_numbers(value)
        json_format.ParseDict(value, msg)
    except (json_format.ParseError, TypeError, ValueError, OverflowError) as exc:
        raise InternalError(f"capability result is not JSON-representable: {exc}") from None
    return msg


def _check_numbers(value: Any) -> None:
    """Raise ``ValueError`` for NaN or an infinity (JSON has no such numbers, and a
    door printing one would fail after the call had run) or an integer a double
    cannot hold exactly, anywhere in ``value``."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
    elif kind is int:
        if not -_EXACT_INT < value < _EXACT_INT:
            raise ValueError(
                f"{value} is beyond ±2**53 and a google.protobuf.Value carries numbers as "
                "doubles; return it as a string"
            )
    elif kind is dict:
        for v in value.values():
            if type(v) in _CHECKED:
                _check_numbers(v)
    elif kind is list:
        for v in value:
            if type(v) in _CHECKED:
                _check_numbers(v)


# A whole double below this in magnitude is exactly the integer it came from (2**53
# itself may have been 2**53 + 1, rounded).
_EXACT_INT = 2**53


def _number(n: float) -> int | float:
    """``n`` as ``int`` if it is a whole double below 2**53 in magnitude, else as is."""
    return int(n) if n.is_integer() and -_EXACT_INT < n < _EXACT_INT else n


def from_value(value: struct_pb2.Value, *, allow_inf_nan: bool = True) -> Any:
    """A ``google.protobuf.Value`` (a plain call's result or parameters, error
    details) as Python.

    Struct numbers are doubles; a whole one below 2**53 in magnitude comes back as
    ``int``, as the canonical proto3 JSON printers (C++, Go) print it without
    ``.0``, so an ``int`` a capability returned is an ``int`` to its caller. Others
    stay ``float``; NaN and infinities too, unless ``allow_inf_nan`` is false.

    Raises:
        ValueError: a non-finite number, with ``allow_inf_nan=False``.
    """
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        if not allow_inf_nan and not math.isfinite(n):
            raise ValueError(f"{n} is not a JSON number")
        return _number(n)
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return from_struct(value.struct_value, allow_inf_nan=allow_inf_nan)
    if kind == "list_value":
        return [from_value(v, allow_inf_nan=allow_inf_nan) for v in value.list_value.values]
    return None  # null_value, or nothing set


def from_struct(struct: struct_pb2.Struct, *, allow_inf_nan: bool = True) -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a dict, numbers as in :func:`from_value`."""
    return {k: from_value(v, allow_inf_nan=allow_inf_nan) for k, v in struct.fields.items()}


def whole_numbers(value: Any) -> Any:
    """JSON from ``MessageToDict`` with each whole double below 2**53 as ``int``, as
    the canonical printers give it (a Struct's ``1980``, a schema's ``maximum``).
    A container with nothing to change is returned as it is (no copy), one with a
    change is copied, never changed in place."""
    kind = type(value)
    if kind is float:
        return _number(value)
    if kind is dict:
        copy: Any = None
        for k, v in value.items():
            if type(v) in _WALKED and (w := whole_numbers(v)) is not v:
                if copy is None:
                    copy = dict(value)
                copy[k] = w
        return value if copy is None else copy
    if kind is list:
        copy = None
        for i, v in enumerate(value):
            if type(v) in _WALKED and (w := whole_numbers(v)) is not v:
                if copy is None:
                    copy = list(value)
                copy[i] = w
        return value if copy is None else copy
    return value


# What ``whole_numbers`` looks into (exact JSON types: bool is not walked as a float).
_WALKED = frozenset({float, dict, list})
# What ``_check_numbers`` looks into.
_CHECKED = frozenset({float, int, dict, list})


def message_json(message: Message) -> Any:
    """A protobuf message as proto3 JSON (camelCase names, zero fields left out),
    each whole double below 2**53 as ``int`` (see :func:`whole_numbers`)."""
    return whole_numbers(json_format.MessageToDict(message))


def compress(data: bytes, compression: str) -> bytes:
    if compression == GZIP:
        return gzip.compress(data, compresslevel=5)
    if compression == DEFLATE:
        return zlib.compress(data, 5)
    return data


def decompress(data: bytes, compression: str, limit: int) -> bytes:
    """Undo :func:`compress`, refusing output larger than ``limit`` bytes."""
    if not compression:
        return data
    if compression not in (GZIP, DEFLATE):
        raise InvalidRequest(
            f"unsupported compression {compression!r}", reason="UNSUPPORTED_COMPRESSION"
        )
    wbits = 16 + zlib.MAX_WBITS if compression == GZIP else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise MalformedMessage(f"payload is not valid {compression}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise MessageTooLarge(f"decompressed payload exceeds {limit} bytes")
    return out
