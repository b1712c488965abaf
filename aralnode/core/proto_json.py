"""Where the proto3 JSON parser (``json_format``) is laxer than proto3 JSON, held to it.

``json_format`` reads an enum value that is not a name with ``int(value)``: ``2.5``
becomes 2 and ``true`` becomes 1, silently. proto3 JSON says an enum is a name or an
integer, and so do the schemas the doors show (``proto_schema``), so such a value
is refused here, before the parser sees it. Only the fields that lead to an enum are
walked (a table per message type, made once), so a message with no enum anywhere
below it costs one lookup.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# By message full name: {JSON name or proto name: field} of the fields that are an
# enum or lead to one. Bounded by the message types the process has.
_TABLES: dict[str, dict[str, FieldDescriptor]] = {}


def check_enum_values(desc: Descriptor | Any, value: Any) -> None:
    """Refuse an enum value in ``value`` (proto3 JSON of a ``desc``) that is neither
    a name nor an integer.

    Raises:
        ValueError: one is a bool or a number with a fraction; says which field.
    """
    table = _table(desc)
    if not table or not isinstance(value, dict):
        return
    for name, item in value.items():
        field = table.get(name)
        if field is None or item is None:
            continue
        leaf = _leaf(field)
        for x in _values(field, item):
            if leaf.enum_type is None:
                check_enum_values(leaf.message_type, x)
            elif isinstance(x, bool) or (isinstance(x, float) and not x.is_integer()):
                raise ValueError(
                    f"{field.full_name}: {x!r} is not a value of {leaf.enum_type.full_name}"
                )


def _values(field: FieldDescriptor, item: Any) -> list[Any]:
    if _is_map(field):
        return list(item.values()) if isinstance(item, dict) else []
    if field.is_repeated:
        return item if isinstance(item, list) else []
    return [item]


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _leaf(field: FieldDescriptor) -> FieldDescriptor:
    """The field whose type the JSON value has: a map's value field, else itself."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return field.message_type.fields_by_name["value"]
    return field


def _table(desc: Descriptor | Any) -> dict[str, FieldDescriptor]:
    table = _TABLES.get(desc.full_name)
    if table is None:
        table = _TABLES[desc.full_name] = {
            name: f
            for f in desc.fields
            if _leads_to_enum(_leaf(f), set())
            for name in (f.json_name, f.name)
        }
    return table


def _leads_to_enum(field: FieldDescriptor, seen: set[str]) -> bool:
    """Whether ``field`` is an enum or a message with one somewhere below (the
    well-known types' JSON forms have none to check)."""
    if field.enum_type is not None:
        return True
    desc = field.message_type
    if desc is None or desc.full_name in seen or desc.full_name.startswith("google.protobuf."):
        return False
    seen.add(desc.full_name)
    return any(_leads_to_enum(_leaf(f), seen) for f in desc.fields)
