"""A protobuf request as governance reads it: its proto3 JSON view (``codec.message_json``)
with every 64-bit integer as a JSON number.

proto3 JSON writes ``int64``, ``uint64``, ``sint64``, ``fixed64`` and ``sfixed64``
(and the ``Int64Value``/``UInt64Value`` wrappers) as strings, so that JavaScript
does not round them. A policy reads numbers: ``params.bookId == 4`` must fire
for book 4 on every door, whether the caller sent the number ``4``, the string
``"4"`` or the binary field -- and a string would also fail every ordering rule
(``params.amount > 1000``) closed, refusing the call for the policy's form rather
than judging it. CEL's integers are 64-bit, like the fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from aralnode.core import codec

_WIDE = frozenset({
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
})  # fmt: skip
_WIDE_WRAPPERS = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})
#: Well-known types whose JSON is not their fields (a string, a list, any value):
#: left as proto3 JSON writes them (an ``Any`` is judged by its JSON as it came).
_OPAQUE = frozenset({
    "google.protobuf.Any",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
})  # fmt: skip


def governed_json(message: Message) -> Any:
    """``message`` as proto3 JSON (``codec.message_json``), 64-bit integers as ints."""
    view = codec.message_json(message)
    if type(view) is dict:
        _widen(message, view)
    return view


def _widen(message: Message, view: dict[str, Any]) -> None:
    for field, value in message.ListFields():
        name = field.json_name
        if name not in view:
            continue
        if field.type in _WIDE:
            view[name] = _ints(view[name])
        elif field.message_type is not None:
            view[name] = _member(field, value, view[name])


def _member(field: FieldDescriptor, value: Any, shown: Any) -> Any:
    """A message-typed field's view, widened (map, repeated or single)."""
    kind = field.message_type
    assert kind is not None
    if kind.GetOptions().map_entry:
        entry = kind.fields_by_name["value"]
        if entry.type in _WIDE and type(shown) is dict:
            return {k: _ints(v) for k, v in shown.items()}
        if entry.message_type is not None and type(shown) is dict:
            return {k: _one(entry.message_type, value[_key(kind, k)], v) for k, v in shown.items()}
        return shown
    if field.is_repeated:
        if type(shown) is not list:
            return shown
        return [_one(kind, item, v) for item, v in zip(value, shown, strict=False)]
    return _one(kind, value, shown)


def _one(kind: Descriptor, value: Message, shown: Any) -> Any:
    if kind.full_name in _WIDE_WRAPPERS:
        return _ints(shown)
    if kind.full_name not in _OPAQUE and type(shown) is dict:
        _widen(value, shown)
    return shown


def _key(entry: Descriptor, text: str) -> Any:
    """A map's key as the map holds it (JSON writes every key as a string)."""
    key = entry.fields_by_name["key"]
    if key.type == FieldDescriptor.TYPE_BOOL:
        return text == "true"
    if key.cpp_type in (FieldDescriptor.CPPTYPE_STRING,):
        return text
    return int(text)


def _ints(shown: Any) -> Any:
    """A 64-bit integer's JSON text as an int (a list of them, each)."""
    if type(shown) is str:
        return int(shown)
    if type(shown) is list:
        return [int(v) if type(v) is str else v for v in shown]
    return shown


__all__ = ["governed_json"]
