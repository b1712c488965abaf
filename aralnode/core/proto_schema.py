"""JSON Schema (2020-12) from protobuf message descriptors, following the proto3 JSON
mapping (``json_format``): 64-bit integers as strings, bytes as base64, enums by
name, well-known types by their JSON form, recursion through ``$defs``.

Two shapes: ``message_schema`` gives one self-contained schema (MCP tools,
capability cards); ``SchemaSet`` collects many messages into one shared
``definitions`` map whose ``$ref`` prefix the caller picks (OpenAPI's
``#/components/schemas/``). Descriptions come from proto comments when the caller
has them (``source_comments`` / ``comments_from_descriptor_set``): generated
``_pb2`` modules drop source info, so comments travel in a ``FileDescriptorSet``
made with ``protoc --include_source_info``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    FileDescriptor,
)
from google.protobuf.message import DecodeError

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# The end of the text in every regex dialect a validator may use (ECMA-262's as Python's,
# whose ``$`` also matches before a final newline: "AP8=\n" is not base64).
_END = "(?![\\s\\S])"


class ProtoComments(Protocol):
    """Where proto comments come from (``aralnode.store.proto_docs.ProtoDocs`` reads
    them from descriptor sets on disk)."""

    def for_files(self, files: Iterable[FileDescriptor]) -> dict[str, str]:
        """Comments by full name of ``files`` and everything they import."""


def _at_most(limit: int) -> str:
    """A regex of the decimal strings of 0..``limit`` (leading zeros allowed, as the
    parser allows them), so that a 64-bit integer's string form is held to its range
    as ``minimum``/``exclusiveMaximum`` hold its number form."""
    digits = str(limit)
    n = len(digits)
    alternatives = [f"[0-9]{{1,{n - 1}}}"] if n > 1 else []
    for i, d in enumerate(digits):
        if d != "0":
            rest = f"[0-9]{{{n - i - 1}}}" if n - i - 1 else ""
            alternatives.append(f"{digits[:i]}[0-{int(d) - 1}]{rest}")
    alternatives.append(digits)
    return "(?:" + "|".join(alternatives) + ")"


# A 32-bit integer: a number, or its digits as a string (proto3 JSON takes both), each
# held to its range (the string by its pattern).
_INT32 = {
    "type": ["integer", "string"],
    "pattern": f"^(?:{_at_most(2**31 - 1)}|-{_at_most(2**31)})" + _END,
    "minimum": -(2**31),
    "maximum": 2**31 - 1,
    "format": "int32",
}
_UINT32 = {
    "type": ["integer", "string"],
    "pattern": f"^{_at_most(2**32 - 1)}" + _END,
    "minimum": 0,
    "maximum": 2**32 - 1,
    "format": "uint32",
}

# The number form's bounds are powers of two, exact as doubles: a capability card
# carries its schema in a Struct, where 2**63 - 1 would become 2**63.
_INT64 = {
    "type": ["string", "integer"],
    "pattern": f"^(?:{_at_most(2**63 - 1)}|-{_at_most(2**63)})" + _END,
    "minimum": -(2**63),
    "exclusiveMaximum": 2**63,
    "format": "int64",
}
_UINT64 = {
    "type": ["string", "integer"],
    "pattern": f"^{_at_most(2**64 - 1)}" + _END,
    "minimum": 0,
    "exclusiveMaximum": 2**64,
    "format": "uint64",
}

_WORDS = {"enum": ["NaN", "Infinity", "-Infinity"]}
# A float: a number, one of the three words, or a number's text (proto3 JSON takes
# "1.5"), held by its pattern to what its type holds: no more than 200 digits and a
# two-digit exponent for a double (below 1e300); 29 and one digit for a float (below
# 1e38, where its largest is 3.4e38, which bounds its number form too).
_FLOAT = {
    "oneOf": [
        {"type": "number"},
        {
            "type": "string",
            "pattern": "^-?[0-9]{1,200}(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?" + _END,
        },
        _WORDS,
    ]
}
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32 = {
    "oneOf": [
        {"type": "number", "minimum": -_FLOAT32_MAX, "maximum": _FLOAT32_MAX},
        {"type": "string", "pattern": "^-?[0-9]{1,29}(?:\\.[0-9]+)?(?:[eE][+-]?[0-9])?" + _END},
        _WORDS,
    ]
}

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: _FLOAT,
    FieldDescriptor.TYPE_FLOAT: _FLOAT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    # Standard or URL-safe base64, padded or not (what the parser takes: proto_json).
    FieldDescriptor.TYPE_BYTES: {
        "type": "string",
        "contentEncoding": "base64",
        "pattern": "^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?"
        + _END,
    },
}

_NULL: dict[str, Any] = {"type": "null"}
# A NullValue field's JSON is null (the printer writes nothing else; the parser
# also takes the value's name and number).
_NULL_VALUE: dict[str, Any] = {"oneOf": [_NULL, {"enum": ["NULL_VALUE", 0]}]}
# A map key's JSON text, for keys that are not strings (``propertyNames``).
_SIGNED_KEY = {"type": "string", "pattern": "^-?[0-9]+" + _END}
_UNSIGNED_KEY = {"type": "string", "pattern": "^[0-9]+" + _END}
_KEY_NAMES: dict[int, dict[str, Any]] = {
    **dict.fromkeys(
        (
            FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
            FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
        ),
        _SIGNED_KEY,
    ),
    **dict.fromkeys(
        (
            FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32,
            FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64,
        ),
        _UNSIGNED_KEY,
    ),
    FieldDescriptor.TYPE_BOOL: {"type": "string", "enum": ["true", "false"]},
}  # fmt: skip


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema``, or JSON ``null``.

    The proto3 JSON parser reads ``null`` for any field as "not set" (its default;
    for a ``Value`` the null value): a schema of what it accepts says so. Only for a
    field's value itself, never for an item of a repeated field or a map's value,
    where the parser refuses ``null``.
    """
    if not schema or schema.get("type") == "null":
        return schema  # anything (a Value), or null already
    kind = schema.get("type")
    if kind is not None and not schema.keys() & {"enum", "const", "anyOf", "oneOf", "allOf"}:
        kinds = kind if isinstance(kind, list) else [kind]
        return schema if "null" in kinds else {**schema, "type": [*kinds, "null"]}
    if "oneOf" in schema and len(schema) == 1:
        if _NULL in schema["oneOf"]:
            return schema  # (a wrapper's: null already one of its branches, and once only)
        return {"oneOf": [*schema["oneOf"], _NULL]}  # enums and floats: one more branch
    return {"anyOf": [schema, _NULL]}


_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.NullValue": {"type": "null"},
    # What the parser takes of RFC 3339: upper-case T and Z, at most nine fractional
    # digits; a Duration within ±10,000 years; a FieldMask's paths with no '_' (lower
    # camel case, comma-separated).
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\\.[0-9]{1,9})?"
        "(?:Z|[+-][0-9]{2}:[0-9]{2})" + _END,
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": f"^-?{_at_most(315_576_000_000)}(\\.[0-9]{{1,9}})?s" + _END,
    },
    "google.protobuf.FieldMask": {"type": "string", "pattern": "^[^_]*" + _END},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    # An empty object is the empty Any; any other names its type.
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "anyOf": [{"maxProperties": 0}, {"required": ["@type"]}],
    },
    # A wrapper's JSON is its scalar's (or null): the same schema, range and all.
    **{
        f"google.protobuf.{name}Value": nullable(_SCALARS[kind])
        for name, kind in (
            ("Double", FieldDescriptor.TYPE_DOUBLE),
            ("Float", FieldDescriptor.TYPE_FLOAT),
            ("Int64", FieldDescriptor.TYPE_INT64),
            ("UInt64", FieldDescriptor.TYPE_UINT64),
            ("Int32", FieldDescriptor.TYPE_INT32),
            ("UInt32", FieldDescriptor.TYPE_UINT32),
            ("Bool", FieldDescriptor.TYPE_BOOL),
            ("String", FieldDescriptor.TYPE_STRING),
            ("Bytes", FieldDescriptor.TYPE_BYTES),
        )
    },
}


def _at_most_one(members: Iterable[FieldDescriptor]) -> list[dict[str, Any]]:
    """A oneof's rule: once one member is set (present, not null), every other one is
    absent or null. The parser refuses a second member the same way, and reads a null
    one as unset."""
    names = [f.json_name for f in members]
    return [
        {
            "if": {"required": [name], "properties": {name: {"not": _NULL}}},
            "then": {"properties": {other: _NULL for other in names if other != name}},
        }
        for name in names
    ]


def enum_schema(desc: EnumDescriptor) -> dict[str, Any]:
    """An enum's JSON: a value's name, or a number.

    A proto3 enum is open: the parser takes any int32 and keeps it, and the printer
    writes a number it has no name for as that number, so any int32 is valid. A
    closed (proto2) enum takes only its values' numbers.
    """
    names = [v.name for v in desc.values]
    if desc.is_closed:
        numbers: dict[str, Any] = {"type": "integer", "enum": [v.number for v in desc.values]}
    else:
        numbers = dict(_INT32)
    return {"oneOf": [{"type": "string", "enum": names}, numbers]}


class _Builder:
    def __init__(
        self,
        comments: dict[str, str] | None,
        *,
        ref_prefix: str = "#/$defs/",
        closed: bool = False,
    ) -> None:
        self.defs: dict[str, dict[str, Any]] = {}
        self.comments = comments or {}
        self.ref_prefix = ref_prefix
        self.closed = closed

    def message(self, desc: Descriptor) -> dict[str, Any]:
        if desc.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[desc.full_name])
        if desc.full_name not in self.defs:
            self.defs[desc.full_name] = {}  # placeholder breaks recursion
            self.defs[desc.full_name] = self._object(desc)
        return {"$ref": f"{self.ref_prefix}{desc.full_name}"}

    def _object(self, desc: Descriptor) -> dict[str, Any]:
        props: dict[str, Any] = {}
        for f in desc.fields:
            schema = self.field(f)
            if self.closed:
                schema = nullable(schema)
            doc = self.comments.get(f.full_name)
            if doc:
                schema = {**schema, "description": doc}
            props[f.json_name] = schema
        out: dict[str, Any] = {"type": "object", "properties": props}
        if self.closed:
            # json_format.ParseDict rejects unknown fields, so a closed schema is the
            # honest one for requests (it still accepts every message the parser does,
            # except the original snake_case spellings it also tolerates).
            out["additionalProperties"] = False
            oneofs = [_at_most_one(o.fields) for o in desc.oneofs if len(o.fields) > 1]
            if oneofs:
                out["allOf"] = [rule for rules in oneofs for rule in rules]
        doc = self.comments.get(desc.full_name)
        if doc:
            out["description"] = doc
        return out

    def field(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            entry = f.message_type.fields_by_name
            schema = {"type": "object", "additionalProperties": self.single(entry["value"])}
            keys = _KEY_NAMES.get(entry["key"].type)
            if keys is not None:  # a number or a bool key is its JSON text
                schema["propertyNames"] = keys
            return schema
        if f.is_repeated:
            return {"type": "array", "items": self.single(f)}
        return self.single(f)

    def single(self, f: FieldDescriptor) -> dict[str, Any]:
        if f.type in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            assert f.message_type is not None
            return self.message(f.message_type)
        if f.type == FieldDescriptor.TYPE_ENUM:
            assert f.enum_type is not None
            if f.enum_type.full_name == "google.protobuf.NullValue":
                return dict(_NULL_VALUE)
            return enum_schema(f.enum_type)
        return dict(_SCALARS[f.type])


def message_schema(
    desc: Descriptor,
    *,
    comments: dict[str, str] | None = None,
    closed: bool = False,
) -> dict[str, Any]:
    """A self-contained JSON Schema for messages of type ``desc``.

    Args:
        desc: The message descriptor.
        comments: Optional map of full names to leading comments, used as descriptions.
        closed: Describe what the proto3 JSON parser accepts (right for request
            schemas): every message object gets ``additionalProperties: false``,
            every field also takes ``null``, and at most one member of a oneof
            may be set.
    """
    b = _Builder(comments, closed=closed)
    ref = b.message(desc)
    # The root object goes at the top level (tools such as MCP want an ``object``
    # schema at the root), not behind a ``$ref``.
    if "$ref" in ref:
        root = b.defs.pop(desc.full_name)
        if _mentions(b.defs, desc.full_name) or _mentions(root, desc.full_name):
            b.defs[desc.full_name] = root  # recursive: keep the def the root refers to
        schema: dict[str, Any] = {"$schema": SCHEMA_DIALECT, **root}
    else:
        schema = {"$schema": SCHEMA_DIALECT, **ref}
    if b.defs:
        schema["$defs"] = b.defs
    return schema


class SchemaSet:
    """Schemas of many messages sharing one map of definitions (OpenAPI components).

    Example::

        schemas = SchemaSet("#/components/schemas/", comments=comments)
        ref = schemas.message(method.input_type)      # {"$ref": "#/components/schemas/pkg.Msg"}
        doc["components"]["schemas"] = schemas.definitions
    """

    def __init__(
        self,
        ref_prefix: str = "#/$defs/",
        *,
        comments: dict[str, str] | None = None,
        closed: bool = False,
    ) -> None:
        self._builder = _Builder(comments, ref_prefix=ref_prefix, closed=closed)

    @property
    def definitions(self) -> dict[str, dict[str, Any]]:
        """Every message schema referenced so far, by full name."""
        return self._builder.defs

    def message(self, desc: Descriptor) -> dict[str, Any]:
        """A ``$ref`` to ``desc`` (or the inline JSON form of a well-known type)."""
        return self._builder.message(desc)

    def field(self, f: FieldDescriptor) -> dict[str, Any]:
        """The schema of one field's JSON value (arrays and maps included)."""
        return self._builder.field(f)


def _mentions(tree: Any, full_name: str) -> bool:
    target = f"#/$defs/{full_name}"
    if isinstance(tree, dict):
        return any(v == target or _mentions(v, full_name) for v in tree.values())
    if isinstance(tree, list):
        return any(_mentions(v, full_name) for v in tree)
    return False


def source_comments(file_desc: Any) -> dict[str, str]:
    """Leading comments by full name, if the descriptor kept source info."""
    proto = descriptor_pb2.FileDescriptorProto()
    file_desc.CopyToProto(proto)
    if not proto.HasField("source_code_info"):
        return {}
    return _comments_from(proto)


def comments_from_descriptor_set(data: bytes) -> dict[str, dict[str, str]]:
    """Leading comments by full name, per file, from a serialized ``FileDescriptorSet``
    (``protoc --include_source_info --descriptor_set_out=...``).

    Returns:
        ``{file name: {full name: comment}}``; files without source info map to ``{}``.

    Raises:
        ValueError: ``data`` is not a ``FileDescriptorSet``.
    """
    fds = descriptor_pb2.FileDescriptorSet()
    try:
        fds.ParseFromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a FileDescriptorSet: {exc}") from None
    return {f.name: _comments_from(f) for f in fds.file}


def _comments_from(proto: Any) -> dict[str, str]:
    # Paths: 4 = message_type, 2 = field, 6 = service, 2 = method (in a service),
    # 5 = enum_type, 2 = value (in an enum).
    out: dict[str, str] = {}
    pkg = f"{proto.package}." if proto.package else ""
    for loc in proto.source_code_info.location:
        text = (loc.leading_comments or loc.trailing_comments).strip()
        if not text:
            continue
        path = list(loc.path)
        name = _name_for(proto, pkg, path)
        if name:
            out[name] = " ".join(line.strip() for line in text.splitlines())
    return out


def _name_for(proto: Any, pkg: str, path: list[int]) -> str:
    if len(path) == 2 and path[0] == 5:
        return f"{pkg}{proto.enum_type[path[1]].name}"
    if len(path) >= 2 and path[0] == 4:
        msg = proto.message_type[path[1]]
        name = f"{pkg}{msg.name}"
        rest = path[2:]
        while len(rest) >= 2 and rest[0] == 3:
            msg = msg.nested_type[rest[1]]
            name = f"{name}.{msg.name}"
            rest = rest[2:]
        if not rest:
            return name
        if len(rest) == 2 and rest[0] == 2:
            return f"{name}.{msg.field[rest[1]].name}"
        return ""
    if len(path) >= 2 and path[0] == 6:
        svc = proto.service[path[1]]
        if len(path) == 2:
            return f"{pkg}{svc.name}"
        if len(path) == 4 and path[2] == 2:
            return f"{pkg}{svc.name}.{svc.method[path[3]].name}"
    return ""
