"""Query parameters of the REST door: which request fields a query string may set
(``query_fields``, also the OpenAPI document's parameters), and their text parsed
into proto3 JSON values (``http.proto``'s rules for a field named in the query)."""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from aralnode.bridge.routes import Binding
from aralnode.core.errors import InvalidParameters

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_INTS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_FIXED32,
    }
)
_FLOATS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})
# Well-known types whose JSON form is one scalar, so they can come as a parameter.
_SCALAR_WKT = {
    "google.protobuf.Timestamp": None,
    "google.protobuf.Duration": None,
    "google.protobuf.FieldMask": None,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.TYPE_BYTES,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
}


def is_scalar_param(f: FieldDescriptor) -> bool:
    """Whether ``f`` can be a path or query parameter (a scalar in its JSON form)."""
    if f.message_type is None:
        return True
    return f.message_type.full_name in _SCALAR_WKT and not f.message_type.GetOptions().map_entry


def query_fields(binding: Binding) -> list[tuple[str, tuple[FieldDescriptor, ...]]]:
    """The request fields that may come as query parameters, by dotted proto name.

    Everything bound by neither the path nor the body: with ``body: "*"`` nothing,
    with ``body: "field"`` everything outside that field. Nested messages are
    walked (``a.b``) once per type, so recursive messages end.
    """
    if binding.body == "*":
        return []
    bound = {tuple(f.full_name for f in v.field_path) for v in binding.variables}
    out: list[tuple[str, tuple[FieldDescriptor, ...]]] = []

    def walk(desc: Descriptor, prefix: tuple[FieldDescriptor, ...], seen: frozenset[str]) -> None:
        for f in desc.fields:
            path = (*prefix, f)
            if tuple(x.full_name for x in path) in bound:
                continue
            if not prefix and binding.body_field is not None and f.name == binding.body_field.name:
                continue
            if is_scalar_param(f):
                out.append((".".join(x.name for x in path), path))
            elif (
                f.message_type is not None
                and not f.is_repeated
                and f.message_type.full_name not in seen
                and not f.message_type.full_name.startswith("google.protobuf.")
            ):
                walk(f.message_type, path, seen | {f.message_type.full_name})

    walk(binding.method.input_type, (), frozenset({binding.method.input_type.full_name}))
    return out


_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def parse_scalar(f: FieldDescriptor, text: str, name: str) -> Any:
    kind = f.type
    if f.message_type is not None:
        kind = _SCALAR_WKT.get(f.message_type.full_name) or FieldDescriptor.TYPE_STRING
    try:
        if kind == FieldDescriptor.TYPE_BOOL:
            low = text.lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError("expected true or false")
        # Digits only, as proto3 JSON's string forms (Python's int() and float() also
        # take "+5", "1_000", " 5", other scripts' digits, "inf").
        if kind in _INTS:
            if not _INTEGER.fullmatch(text):
                raise ValueError("expected an integer's digits")
            return int(text)
        if kind in _FLOATS:
            if text in ("NaN", "Infinity", "-Infinity"):
                return text
            if not _NUMBER.fullmatch(text):
                raise ValueError("expected a number")
            return float(text)
        if kind == FieldDescriptor.TYPE_ENUM:
            return int(text) if _INTEGER.fullmatch(text) else text
    except ValueError as exc:
        raise InvalidParameters(
            f"parameter {name!r}: {exc}", details={"field": name, "value": text[:100]}
        ) from None
    return text  # strings, bytes (base64), 64-bit integers (JSON strings), Timestamp...


def set_at(target: dict[str, Any], path: tuple[FieldDescriptor, ...], value: Any) -> None:
    node = target
    for f in path[:-1]:
        child = node.get(f.json_name)
        if child is None and f.name != f.json_name:
            child = node.pop(f.name, None)
        if child is None:
            child = {}
        elif not isinstance(child, dict):
            # A message's JSON is an object: what the body sent is refused, not replaced.
            raise InvalidParameters(
                f"{f.name!r} is a message, so a JSON object, not {type(child).__name__}",
                details={"field": f.name},
            )
        node[f.json_name] = child
        node = child
    leaf = path[-1]
    if leaf.name != leaf.json_name:
        node.pop(leaf.name, None)  # the path wins over the same field spelled otherwise in the body
    node[leaf.json_name] = value


def default_json(f: FieldDescriptor) -> Any:
    if f.is_repeated:
        return {} if f.message_type is not None and f.message_type.GetOptions().map_entry else []
    if f.message_type is not None:
        return None if f.message_type.full_name.startswith("google.protobuf.") else {}
    if f.enum_type is not None:
        return f.enum_type.values[0].name
    if f.type in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return "0"
    return f.default_value if not isinstance(f.default_value, bytes) else ""


__all__ = ["default_json", "is_scalar_param", "parse_scalar", "query_fields", "set_at"]
