"""Parameter and result encodings (PRO-003) and compression (PRO-004).

``application/json`` is the default; ``application/msgpack`` and
``application/x-protobuf`` (a ``google.protobuf.Value``) are negotiated through
the message header. Payloads above a threshold are gzip-compressed on send; a
decompressed payload is bounded so a small bomb cannot exhaust memory.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import re
import zlib
from collections import OrderedDict
from typing import Any

import msgpack
import pydantic_core
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import DecodeError, Message

from aralnode.core.errors import (
    AralError,
    InternalError,
    InvalidParameters,
    InvalidRequest,
    MalformedMessage,
    MessageTooLarge,
    OutOfRange,
)

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
    """Encode a JSON-compatible value.

    Raises:
        InvalidRequest: the value has no JSON form (pydantic-core would print NaN and
            infinities as the constants ``NaN``/``Infinity``, which no JSON parser,
            ours included, takes).
    """
    if not content_type or content_type == JSON:
        try:
            _json_members(value)
            return _to_json(value)
        except (pydantic_core.PydanticSerializationError, ValueError) as exc:
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
    """Decode bytes made by :func:`encode`; empty bytes decode to ``None``.

    Raises:
        MalformedMessage: not valid for ``content_type`` (NaN and infinities included).
        InvalidParameters: a JSON object or MessagePack map with a member twice
            (``DUPLICATE_PARAMETER``, as the doors refuse a body with one).
    """
    if not data:
        return None
    try:
        if not content_type or content_type == JSON:
            value = _from_json(data, allow_inf_nan=False)
            # (_json_members refuses an infinity: 1e400 parses as one even so)
            if _json_members(value) != data.count(b'":') or _spaced_member(data):
                json.loads(data, object_pairs_hook=_members_once)  # which member is twice
            return value
        if content_type == MSGPACK:
            return msgpack.unpackb(
                data, raw=False, strict_map_key=False, object_pairs_hook=_members_once
            )
        if content_type == PROTOBUF:
            msg = struct_pb2.Value()
            msg.ParseFromString(data)
            return from_value(msg, allow_inf_nan=False)  # as JSON payloads
    except InvalidParameters:  # a member twice
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise MalformedMessage(f"payload is not valid {content_type or JSON}: {exc}") from None
    except Exception as exc:  # protobuf DecodeError and msgpack's ExtraData share no base
        raise MalformedMessage(f"payload is not valid {content_type}: {exc}") from None
    raise InvalidRequest(
        f"unsupported content type {content_type!r}", reason="UNSUPPORTED_CONTENT_TYPE"
    )


# -- JSON at the doors -----------------------------------------------------------------
# Every door reads JSON with ``loads`` and writes it with ``dumps``: what the node takes
# in and what it sends out is RFC 8259 JSON, whichever door, and nothing in between
# meets a number that one door could print and another could not.

# No protobuf integer (int64, uint64) holds more; a bigger literal is no field's value,
# and as a double it is not the number that was sent.
_MAX_INT = 2**64


class NotAJsonNumber(ValueError):
    """A number ``loads`` refuses (``NaN``, an infinity, one past a double or ±2**64):
    a door that tells it from text that is no JSON at all refuses it as
    ``NOT_A_JSON_NUMBER``, as the pipeline refuses such a value (service/values.py)."""


def loads(data: str | bytes) -> Any:
    """Parse JSON the way every door does: RFC 8259 only.

    Refused (``NotAJsonNumber``): the ``NaN``/``Infinity`` literals Python's parser
    takes, a number that overflows a double (``1e400``), and an integer no protobuf
    integer holds (beyond ±2**64): one of 4,000 digits would otherwise reach a double
    conversion, and overflow there, long after the request was taken. Refused
    (``ValueError``): a string with a lone surrogate (``"\\ud800"``, which RFC 8259's
    grammar allows and no UTF-8 text holds: I-JSON, RFC 7493, forbids it), which
    every later step that writes the text out -- an error naming it, a protobuf
    string, the audit log -- would fail on. Refused as ``InvalidParameters``
    (``DUPLICATE_PARAMETER``): an object with a member twice.

    Raises:
        ValueError: not JSON, or one of the above (``RecursionError``: nested too deeply).
        InvalidParameters: a member given twice in one object.
    """
    if not isinstance(data, str):
        # UTF-8, strictly (RFC 8259), not what json.loads makes of bytes: it guesses
        # UTF-16 and -32 and decodes with surrogatepass, so the bytes of a surrogate
        # ("\\xed\\xa0\\x80") would become one. A UTF-8 byte order mark is ignored, as
        # RFC 8259 lets a parser.
        data = bytes(data).removeprefix(codecs.BOM_UTF8).decode("utf-8")
    value = json.loads(
        data,
        parse_constant=_no_constant,
        parse_float=_finite,
        parse_int=_bounded_int,
        object_pairs_hook=_members_once,
    )
    # Only text with a surrogate escape (or, given as text, a surrogate) is looked at
    # again: an emoji escaped as its pair is one too, and passes.
    if _SURROGATE_TEXT.search(data) is not None:
        _no_lone_surrogate(value)
    return value


_SURROGATE_TEXT = re.compile("\\\\u[dD][89a-fA-F]|[\ud800-\udfff]")


def _no_lone_surrogate(value: Any) -> None:
    """``ValueError`` if a string in ``value`` (a key or a value) is not UTF-8-able."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise ValueError(
            f"a string holds a lone surrogate ({bad}), which no UTF-8 text has"
        ) from None


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refused if it has a member twice (``json.loads`` would keep the
    last, silently, and another parser of the same bytes may keep the first)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                name = (key if isinstance(key, str) else repr(key))[:100]  # (a MessagePack key)
                # (a lone surrogate in it, escaped: the error is written out as UTF-8)
                name = name.encode("utf-8", "backslashreplace").decode("utf-8")
                raise InvalidParameters(
                    f"the member {name!r} is given twice in one object",
                    reason="DUPLICATE_PARAMETER",
                    details={"parameter": name},
                )
            seen.add(key)
    return obj


def _json_members(value: Any) -> int:
    """The members of every object in JSON ``value`` (``decode`` counts them against
    its text); ``ValueError`` for NaN or an infinity anywhere in it (JSON has no such
    numbers). What ``encode`` and ``decode`` check, once a payload: ``_check_numbers``
    does more, for a ``google.protobuf.Value``, and costs more."""
    kind = type(value)
    count = 0
    if kind is dict:
        count = len(value)
        items = value.values()
    elif kind is list or kind is tuple:  # (a program's value, to ``encode``)
        items = value
    else:
        if kind is float and not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
        return 0
    for item in items:
        kind = type(item)
        if kind is dict or kind is list or kind is tuple:
            count += _json_members(item)
        elif kind is float and not math.isfinite(item):
            raise ValueError(f"{item} is not a JSON number")
    return count


# A member's name is a string and ends with '"' before its ':'. The fast parser keeps
# the last of a member given twice, silently; a duplicate leaves fewer members parsed
# than there are '":' in the text, and the text can only have more (a string may hold
# '":'), unless a name's quote and colon stand apart ('"a" : 1'). So when the counts
# agree and no '"' has whitespace after it, no object has a member twice; else the json
# module reads the text again (``decode``) to tell, and to name the member.
_spaced_member = re.compile(rb'"[ \t\n\r]').search  # a '"' with whitespace after it


def _no_constant(name: str) -> Any:
    raise NotAJsonNumber(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    n = float(text)
    if not math.isfinite(n):
        raise NotAJsonNumber(f"{text[:40]} is beyond the range of a double")
    return n


def _bounded_int(text: str) -> int:
    if len(text) > 21:  # -18446744073709551616: no int() of a big literal
        raise NotAJsonNumber(f"an integer of {len(text)} digits is beyond ±2**64")
    n = int(text)
    if not -_MAX_INT <= n < _MAX_INT:
        raise NotAJsonNumber(f"{text} is beyond ±2**64")
    return n


def dumps(value: Any, *, pretty: bool = False) -> str:
    """The one JSON printer of every door (REST, MCP, WebSocket, the CLI): compact
    UTF-8 text (``pretty``: indented, keys sorted, ASCII, for a terminal), and never
    a non-JSON number.

    Raises:
        ValueError: ``value`` holds NaN or an infinity (or a circular reference).
        TypeError: ``value`` holds something that is not JSON.
    """
    if pretty:
        return json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class NestedTooDeeply(RecursionError):
    """A value nested deeper than a ``google.protobuf.Value`` can carry."""


#: How deep a ``google.protobuf.Value`` may nest, in protobuf messages (a JSON object
#: is three: Value, Struct, its map entry; an array two: Value, ListValue). protobuf
#: parses at most 100 levels, and a Value travels inside a few messages of its own
#: (an Invoke response's CallResult, an A2A task's artifact).
MAX_VALUE_DEPTH = 90


def check_json(value: Any) -> None:
    """Raise ``ValueError`` if ``value`` holds a number some door could not carry as
    it is: NaN or an infinity (no JSON form), or an integer beyond ±2**53 (a
    ``google.protobuf.Value``, the gRPC and channel doors' form, holds doubles);
    ``NestedTooDeeply`` if it nests deeper than a Value can (``MAX_VALUE_DEPTH``).
    The pipeline checks every call's parameters and results with it, so that every
    door refuses the same values the same way."""
    _check_numbers(value, depth=1)


def check_numbers(value: Any) -> None:
    """``check_json``'s numbers alone (no depth bound: a value inside a message, whose
    depth the protobuf parser bounds): ``ValueError`` for NaN, an infinity or an
    integer beyond ±2**53 anywhere in ``value``."""
    _check_numbers(value)


# A peer's or a servicer's retry delay is advice to a client: past a day it says
# nothing a client would act on, and a Retry-After header or a Duration must hold it.
MAX_RETRY_AFTER = 86_400.0


def retry_delay(seconds: object) -> float | None:
    """A retry delay someone else gave (a peer's error, a RetryInfo, a servicer) as
    one every door can print: ``None`` unless a finite number of seconds, at most
    ``MAX_RETRY_AFTER`` and at least 0."""
    if type(seconds) not in (int, float) or not math.isfinite(seconds):  # type: ignore[arg-type]
        return None
    return min(max(float(seconds), 0.0), MAX_RETRY_AFTER)  # type: ignore[arg-type]


# Deeper than this, details are stringified: a Struct nested much further would
# exceed protobuf's parse recursion limit (100 messages, two per JSON level) and the
# peer could not read the error at all.
_MAX_DETAIL_DEPTH = 32


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as something ``Struct.update`` takes: JSON values kept as they are,
    nested; anything else (or too deep, or a number no double holds) as ``str``."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        try:
            float(value)
        except OverflowError:
            return str(value)
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < _MAX_DETAIL_DEPTH:
        if isinstance(value, dict):
            return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [jsonable(x, depth + 1) for x in value]
    return str(value)


def error_dict(exc: AralError) -> dict[str, Any]:
    """The seed's error object for ``exc`` (``AralError.to_dict``), its details as
    ``jsonable`` makes them: what the REST, MCP and WebSocket doors render. Details
    come from capabilities and peers; a NaN among them must not make the refusal
    itself invalid JSON, or a 500."""
    out = exc.to_dict()
    out["details"] = jsonable(out["details"])
    return out


def to_value(value: Any) -> struct_pb2.Value:
    """A JSON-compatible value as ``google.protobuf.Value`` (plain calls' results).

    A ``Value`` number is a double: an integer beyond ±2**53 would arrive as another
    integer, so it is refused here rather than changed on the way.

    Raises:
        InternalError: the value has no exact ``Value`` form (a capability returned it).
    """
    msg = struct_pb2.Value()
    try:
        _check_numbers(value, depth=1)
        json_format.ParseDict(value, msg)
    except NestedTooDeeply as exc:  # (the pipeline refuses such results first)
        raise OutOfRange(f"the result is {exc}", reason="RESULT_NOT_JSON") from None
    except (json_format.ParseError, TypeError, ValueError, OverflowError) as exc:
        raise InternalError(f"capability result is not JSON-representable: {exc}") from None
    return msg


def _check_numbers(value: Any, *, depth: int = 0) -> None:
    """Raise ``ValueError`` for NaN or an infinity (JSON has no such numbers, and a
    door printing one would fail after the call had run) or an integer a double
    cannot hold exactly, anywhere in ``value``; with ``depth`` (the protobuf level
    ``value``'s Value would be at), ``NestedTooDeeply`` past ``MAX_VALUE_DEPTH``."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a JSON number")
    elif kind is int:
        if not -_EXACT_INT < value < _EXACT_INT:
            raise ValueError(
                f"{value} is beyond ±2**53 and a google.protobuf.Value carries numbers as "
                "doubles; give it as a string"
            )
    elif kind is dict:
        if depth:
            depth += 3  # its values' Values: under a Struct and a map entry
            if depth > MAX_VALUE_DEPTH and value:
                raise NestedTooDeeply(f"nested deeper than {MAX_VALUE_DEPTH} protobuf levels")
        for v in value.values():
            if type(v) in _CHECKED:
                _check_numbers(v, depth=depth)
    elif kind is list or kind is tuple:
        if depth:
            depth += 2  # its items' Values: under a ListValue
            if depth > MAX_VALUE_DEPTH and value:
                raise NestedTooDeeply(f"nested deeper than {MAX_VALUE_DEPTH} protobuf levels")
        for v in value:
            if type(v) in _CHECKED:
                _check_numbers(v, depth=depth)


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
    if kind is OrderedDict:  # (MessageToDict's form of an Any): a plain object
        value, kind = dict(value), dict
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
_WALKED = frozenset({float, dict, list, OrderedDict})
# What ``_check_numbers`` looks into.
_CHECKED = frozenset({float, int, dict, list, tuple})


def json_size_over(value: Any, limit: int) -> int:
    """A lower bound of ``value``'s JSON size once it is past ``limit`` bytes; 0 if
    it is not. Counts the characters of strings and keys and a few bytes a number,
    stops as soon as the bound is passed: a list holding one long string many times
    is found without writing it out."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            total += len(item) + 2
        elif kind is dict:
            total += 2
            for key, v in item.items():
                total += len(key) + 4
                stack.append(v)
        elif kind is list or kind is tuple:
            total += 2 + len(item)
            stack.extend(item)
        elif kind is bytes:
            total += len(item) * 4 // 3
        else:
            total += 4
        if total > limit:
            return total
    return 0


def message_json(message: Message, *, zeros: bool = False) -> Any:
    """A protobuf message as proto3 JSON (camelCase names, zero fields left out
    unless ``zeros``), each whole double below 2**53 as ``int`` (see
    :func:`whole_numbers`).

    Raises:
        OutOfRange: a ``google.protobuf.Value`` in it holds NaN or an infinity, which
            proto3 JSON has no form for (a double field's are the strings "NaN",
            "Infinity"; a Value's would read back as strings): ``NOT_A_JSON_NUMBER``.
            A Timestamp or Duration past proto3 JSON's range, an Any of a type this
            process does not know (valid on the wire, all three): ``NO_JSON_FORM``.
    """
    try:
        printed = json_format.MessageToDict(message, always_print_fields_with_no_presence=zeros)
    except (ValueError, TypeError, json_format.Error, DecodeError) as exc:
        # (TypeError: an Any of an unknown type; DecodeError: an Any's bytes)
        said = str(exc)
        number = "for Value.number_value" in said and "type_url" not in said
        raise OutOfRange(
            f"a {message.DESCRIPTOR.full_name} has no JSON form: {said[:300]}",
            reason="NOT_A_JSON_NUMBER" if number else "NO_JSON_FORM",
        ) from None
    return whole_numbers(printed)


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
    if not inflater.eof:
        raise MalformedMessage(f"payload is truncated {compression}")
    if inflater.unused_data:  # signed bytes no reader of the payload would look at
        raise MalformedMessage(f"payload has bytes after its {compression} stream")
    return out
