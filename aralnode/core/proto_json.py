"""JSON as the node reads it: one value per member, and where the proto3 JSON parser
(``json_format``) is laxer than proto3 JSON, held to it.

(That ``json.loads`` keeps the last of two members alike in one object is refused
where every door reads JSON: ``codec.loads``.)

- ``json_format`` reads an enum value that is not a name with ``int(value)``: ``2.5``
  becomes 2 and ``true`` becomes 1, silently. proto3 JSON says an enum is a name or
  an integer, and so do the schemas the doors show (``proto_schema``).
- It takes a field under its JSON name and under its proto name, and given both
  (``timeoutMs`` and ``timeout_ms``) keeps the last, silently: it compares the
  spellings, not the fields. One field given twice is refused, as a query parameter
  given twice is.

- A 64-bit integer field (and ``Int64Value``, ``UInt64Value``) given a whole
  double at or beyond ±2**53 takes it as it is, though the double may be another
  integer rounded: what a ``google.protobuf.Value`` makes of 9007199254740993, the
  form a plain call's parameters travel in over gRPC ``Invoke``, A2A and the
  channel. proto3 JSON carries such integers as strings, and the doors that read
  JSON numbers refuse them (``codec.check_json``); so is such a double, here.

- It reads ``bytes`` (and ``BytesValue``) with a lenient base64 decoder: ``"!!!"``
  becomes no bytes and ``"AP8=AP8="`` the first two, silently. proto3 JSON takes
  standard or URL-safe base64, padded or not; anything else is refused here.
- It cuts a ``Duration``'s fraction past nine digits (``1.0000000001s`` becomes
  ``1s``); proto3 JSON has nanoseconds at most, as the ``Timestamp`` parser holds.
- A ``Struct``, ``Value`` or ``ListValue`` holds numbers as doubles: an integer at or
  beyond ±2**53 in one would be another integer, silently. It is refused, as the
  doors that read JSON parameters refuse it anywhere (``codec.check_json``).
- It reads a number given as a string with Python's ``int()`` and ``float()``:
  ``"+5"``, ``"1_000"``, ``"١٢"`` (Arabic-Indic digits), ``" 1.5"``, ``"inf"`` and
  ``"-nan"`` are numbers to it. An integer's string form is its digits here (no sign
  for an unsigned one, ``"1e5"`` not); a float's a JSON number within its type's
  range, or ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, and never ``true``; the
  schemas the doors show say the same.
- It reads an integer map key with ``int()`` too, so ``"+1"`` and ``"1_0"`` are keys,
  and ``"1"`` and ``"01"`` in one object are one key, the last kept. A key is its
  integer's digits here (as the schemas say), and one key given twice is refused.
- Inside an ``Any``, the message its ``@type`` names is held to all of the above, as
  it would be as a field (a type the process does not know is the parser's to refuse).
- It reads a message given as an array or a string by iterating it: ``[]`` and
  ``""`` become the empty message, ``"ab"`` the fields ``a`` and ``b``. proto3 JSON
  (and every schema the doors show) has a message as an object, or null for a field
  (not for an element of a list or map); only the well-known types whose JSON is
  not an object (a Timestamp's string, a wrapper's scalar, a Value, a ListValue)
  are other. Anything else is refused here, a field's value and the whole value.

All are refused here, before the parser sees the value. Only the fields that can
matter are walked (a table per message type, made once): a message with no enum,
no number, no bytes, Duration, Struct-like or Any field, no map keyed by integers and
no field spelled two ways anywhere below it, and no message field (whose value must
be an object), costs one lookup.
"""

from __future__ import annotations

import binascii
import math
import re
from typing import Any, NoReturn

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from aralnode.core import codec


class DuplicateField(ValueError):
    """One field given twice in one object, under its two spellings."""


class InexactInteger(ValueError):
    """A 64-bit integer given as a double that may have been rounded."""


class _NotAnObject(ValueError):
    """The value ``check_json`` was given is not an object, for a message whose JSON
    is one (a field's value is named by the caller that walked the field)."""


_WIDE = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})
_WIDE_WRAPPERS = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})
_EXACT = 2**53
_INT32 = -(2**31)  # an enum's numbers: int32
# URL-safe base64 read as standard (the alphabets may mix, as the parser's decoder
# lets them).
_URLSAFE = str.maketrans("-_", "+/")
_DURATION = re.compile(r"-?[0-9]+(?:\.[0-9]{1,9})?s")
_BYTES, _SPAN, _DOUBLES, _ANY = "bytes", "duration", "doubles", "any"  # fields checked here
_OBJECT = "object"  # a message field with nothing to check below: its JSON type alone
_INT, _FLOAT = "int", "float"
_FLOAT_VALUE = "google.protobuf.FloatValue"
_FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
_NUMBER_KINDS = frozenset({_INT, _FLOAT})
_KINDS = {
    "google.protobuf.Any": _ANY,
    "google.protobuf.BytesValue": _BYTES,
    "google.protobuf.Duration": _SPAN,
    "google.protobuf.Struct": _DOUBLES,
    "google.protobuf.Value": _DOUBLES,
    "google.protobuf.ListValue": _DOUBLES,
    "google.protobuf.Int32Value": _INT,
    "google.protobuf.UInt32Value": _INT,
    "google.protobuf.Int64Value": _INT,
    "google.protobuf.UInt64Value": _INT,
    "google.protobuf.FloatValue": _FLOAT,
    "google.protobuf.DoubleValue": _FLOAT,
}
_NUMBERS = {
    FieldDescriptor.CPPTYPE_INT32: _INT,
    FieldDescriptor.CPPTYPE_UINT32: _INT,
    FieldDescriptor.CPPTYPE_INT64: _INT,
    FieldDescriptor.CPPTYPE_UINT64: _INT,
    FieldDescriptor.CPPTYPE_FLOAT: _FLOAT,
    FieldDescriptor.CPPTYPE_DOUBLE: _FLOAT,
}
# A number as a string: a JSON number (ASCII digits; leading zeros taken, as the
# parser and the schemas take them), and for a float one of the three words.
_NUMBER_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_FLOAT_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
# An integer map key: its digits (what ``proto_schema``'s key patterns say).
_SIGNED_KEY = re.compile(r"-?[0-9]+")
_UNSIGNED_TEXT = re.compile(r"[0-9]+")
_UNSIGNED_WRAPPERS = frozenset({"google.protobuf.UInt32Value", "google.protobuf.UInt64Value"})
_UNSIGNED_KEY = re.compile(r"[0-9]+")
_KEYS = {
    FieldDescriptor.CPPTYPE_INT32: _SIGNED_KEY,
    FieldDescriptor.CPPTYPE_INT64: _SIGNED_KEY,
    FieldDescriptor.CPPTYPE_UINT32: _UNSIGNED_KEY,
    FieldDescriptor.CPPTYPE_UINT64: _UNSIGNED_KEY,
}
# A map's keys joined by NUL, matched at once; and a key that may name the integer
# another names too (a leading zero, or "-0").
_KEY_RUNS = {
    _SIGNED_KEY: re.compile("-?[0-9]+(?:\x00-?[0-9]+)*"),
    _UNSIGNED_KEY: re.compile("[0-9]+(?:\x00[0-9]+)*"),
}
_UNCANONICAL = re.compile("(?:^|\x00)(?:-?0[0-9]|-0(?:\x00|$))")
# The message types whose JSON is not an object (all others' is, Struct, Any and
# Empty among them).
_NOT_OBJECTS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "Timestamp", "Duration", "FieldMask", "Value", "ListValue", "DoubleValue",
        "FloatValue", "Int64Value", "UInt64Value", "Int32Value", "UInt32Value", "BoolValue",
        "StringValue", "BytesValue",
    )
)  # fmt: skip
_OBJECTS = frozenset({dict})
_JSON_TYPES = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


# A field worth a look, as a table holds it: the field, its leaf (``_leaf``), its
# kind (``_kind``, or ``_OBJECT``), whether it is a 64-bit integer, and the pattern
# of its keys if it is a map keyed by integers (``_key_pattern``).
_Field = tuple[FieldDescriptor, FieldDescriptor, str, bool, "re.Pattern[str] | None"]
# By message full name: the (JSON name, proto name) pairs that differ, and the fields
# worth a look (an enum, a message with something to check below, or one whose JSON
# is an object, only that checked), by both names. Bounded by the message types the
# process has.
_TABLES: dict[str, tuple[tuple[tuple[str, str], ...], dict[str, _Field]]] = {}


def check_json(desc: Descriptor | Any, value: Any) -> None:
    """Refuse what ``json_format`` would read wrong in ``value`` (proto3 JSON of a
    ``desc``): an enum value that is neither a name nor an integer, a field given
    under both its names, and the rest the module's doc lists.

    Raises:
        DuplicateField: a field under both its names.
        InexactInteger: an integer a double would round (a 64-bit field's double, a
            Struct-like value's integer).
        ValueError: an enum value that is a bool, a number with a fraction or one
            past int32, or a string neither a value's name nor an int32's digits;
            bytes that are not base64; a Duration finer than nanoseconds; a number's
            string that is not a JSON number; an integer map key that is not its
            digits.
        DuplicateField: also two keys of one map that are one integer.
        ValueError: also a message that is not a JSON object (as a field's value, an
            element of one, or ``value`` itself; ``None`` is no value here).
    """
    if value is not None and _KINDS.get(desc.full_name) == _DOUBLES:
        _check_doubles(desc.full_name, value)  # (a whole value that is Struct-like)
    if not isinstance(value, dict):
        if value is not None and desc.full_name not in _NOT_OBJECTS:
            raise _NotAnObject(
                f"{desc.full_name} is a message, so a JSON object, not {_json_type(value)}"
            )
        return
    spelled, fields = _table(desc)
    for json_name, name in spelled:
        if json_name in value and name in value:
            raise DuplicateField(f"{name!r} is given twice, also as {json_name!r}")
    if not fields:
        return
    for key, item in value.items():
        plan = fields.get(key)
        if plan is None or item is None:
            continue
        field, leaf, kind, wide, keys = plan
        if kind in _NUMBER_KINDS and type(item) is int:  # (most number fields)
            continue
        if keys is not None and type(item) is dict and item:
            _check_keys(field, item, keys)
        values = _values(field, item)
        if kind in _NUMBER_KINDS:
            _check_numbers(kind, wide, field, values)
        elif kind:
            if kind == _OBJECT:
                _check_objects(field, item)
            else:
                for x in values:
                    _check_text(kind, field, x)
        elif leaf.enum_type is not None:
            _check_enum(field, leaf.enum_type, values)
        elif leaf.message_type is not None:  # (else text or a bool: a map's values)
            try:
                for x in values:
                    check_json(leaf.message_type, x)  # (whose first look is for an object)
            except _NotAnObject:  # x itself: named here, as a field's value
                _check_objects(field, item)
                raise


def _check_enum(field: FieldDescriptor, enum: EnumDescriptor, values: list[Any]) -> None:
    """Each of ``values`` (an enum field's) a name or an int32, as a number or its
    digits (as the schemas say): the parser would take a bool or a fraction as a
    number, wrap a larger number into another value, and read any string ``int()``
    reads ("+1", "1_0", " 5", "4294967297") as a number."""
    for x in values:
        if type(x) is str:
            number = len(x) <= 11 and _SIGNED_KEY.fullmatch(x) is not None
            valid = x in enum.values_by_name or (number and _INT32 <= int(x) < -_INT32)
        elif type(x) is int or (type(x) is float and x.is_integer()):
            valid = _INT32 <= x < -_INT32
        else:  # (a bool, a fraction; anything else is the parser's to refuse)
            valid = type(x) not in (bool, float)
        if not valid:
            raise ValueError(f"{field.full_name}: {x!r} is not a value of {enum.full_name}")


def _check_doubles(where: str, x: Any) -> None:
    """``x``, a Struct-like value, holds no number a double does not hold as it is."""
    try:
        codec.check_numbers(x)  # as every call's JSON parameters are held
    except ValueError as exc:
        raise InexactInteger(f"{where}: {exc}") from None


def _check_objects(field: FieldDescriptor, item: Any) -> None:
    """``item`` (not ``None``), the JSON of ``field``, whose values are messages whose
    JSON is an object: the value is one, or each element or map value is (a list or
    a map that is not one is the parser's to refuse). A long one's are looked through
    by type first, as numbers are.

    Raises:
        ValueError: a value, an element or a map value that is not an object (not
            ``_NotAnObject``: this names it, as a field's).
    """
    if _leaf(field) is not field:  # a map
        if type(item) is dict and item and not set(map(type, item.values())) <= _OBJECTS:
            key, x = next((k, x) for k, x in item.items() if type(x) is not dict)
            _not_an_object(f"{field.full_name}[{str(key)[:40]!r}]", _leaf(field), x)
    elif field.is_repeated:
        if type(item) is list and item and not set(map(type, item)) <= _OBJECTS:
            i, x = next((i, x) for i, x in enumerate(item) if type(x) is not dict)
            _not_an_object(f"{field.full_name}[{i}]", field, x)
    elif type(item) is not dict:
        _not_an_object(field.full_name, field, item)


def _not_an_object(where: str, field: FieldDescriptor, x: Any) -> NoReturn:
    desc = field.message_type
    name = desc.full_name if desc is not None else "message"
    raise ValueError(f"{where}: {name} is a message, so a JSON object, not {_json_type(x)}")


def _json_type(x: Any) -> str:
    return _JSON_TYPES.get(type(x), "a number")


def _is_object(field: FieldDescriptor) -> bool:
    """Whether ``field``'s value is a message whose JSON is an object."""
    desc = field.message_type
    return desc is not None and desc.full_name not in _NOT_OBJECTS


def _check_numbers(kind: str, wide: bool, field: FieldDescriptor, values: list[Any]) -> None:
    """The JSON values of a number field: a string a JSON number, a 64-bit field's
    double one that holds its integer. A long repeated field's are looked through by
    type first (a set of types, made in C), so numbers cost no Python loop."""
    if not values:
        return
    types = {type(values[0])} if len(values) == 1 else set(map(type, values))
    if str in types:
        for x in values:
            if type(x) is str:
                _check_text(kind, field, x)
    if kind == _FLOAT and (bool in types or str in types):
        _check_floats(field, values)
    if wide and float in types:
        for x in values:
            if type(x) is float and x.is_integer() and not -_EXACT < x < _EXACT:
                raise InexactInteger(
                    f"{field.full_name}: {x!r} came as a double, which holds no integer "
                    "beyond ±2**53 exactly: send 64-bit integers as strings"
                )


def _unsigned(field: FieldDescriptor) -> bool:
    """A uint32 or uint64 field, or a wrapper of one (its text has no sign: "-0" too)."""
    leaf = _leaf(field)
    if leaf.message_type is not None:
        return leaf.message_type.full_name in _UNSIGNED_WRAPPERS
    return leaf.cpp_type in (FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64)


def _signed_text(x: Any) -> bool:
    """A string that is no unsigned integer's digits (a number is the parser's)."""
    return type(x) is str and not _UNSIGNED_TEXT.fullmatch(x)


def _check_floats(field: FieldDescriptor, values: list[Any], single: bool | None = None) -> None:
    """A float field's JSON: never a boolean (the parser reads ``true`` as 1), and a
    number's string form one its type holds (the parser reads "1e400" as Infinity,
    where the same number unquoted is refused).

    Raises:
        ValueError: a boolean; a string past the type's range.
    """
    if single is None:  # (a float32 field, or its wrapper)
        leaf = _leaf(field)
        single = leaf.cpp_type == FieldDescriptor.CPPTYPE_FLOAT or (
            leaf.message_type is not None and leaf.message_type.full_name == _FLOAT_VALUE
        )
    for x in values:
        if type(x) is bool:
            raise ValueError(f"{field.full_name}: {str(x).lower()} is not a number")
        if type(x) is str and x not in _FLOAT_WORDS:
            number = float(x)
            if math.isinf(number) or (single and abs(number) > _FLOAT32_MAX):
                raise ValueError(
                    f"{field.full_name}: {x[:40]!r} is past the range of a "
                    f"{'float' if single else 'double'}"
                )


def _kind(field: FieldDescriptor) -> str:
    """How ``field``'s JSON is held to proto3 JSON here, if not as a message's."""
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    desc = field.message_type
    if desc is None:
        return _NUMBERS.get(field.cpp_type, "")
    return _KINDS.get(desc.full_name, "")


def _check_text(kind: str, field: FieldDescriptor, x: Any) -> None:
    """``x``, the JSON of a bytes, Duration or Struct-like field (anything else in it
    is for the parser to refuse).

    Raises:
        InexactInteger: a number a double does not hold as it is (an integer beyond
            ±2**53, NaN), in a Struct-like value.
        ValueError: bytes that are not base64; a Duration finer than nanoseconds.
    """
    if kind == _INT:
        digits = _UNSIGNED_TEXT if type(x) is str and _unsigned(field) else _SIGNED_KEY
        if type(x) is str and not digits.fullmatch(x):
            raise ValueError(
                f"{field.full_name}: {x[:40]!r} is not an integer (an integer's string form "
                'is its digits, as "12")'
            )
    elif kind == _FLOAT:
        if type(x) is str and not (_NUMBER_TEXT.fullmatch(x) or x in _FLOAT_WORDS):
            raise ValueError(
                f"{field.full_name}: {x[:40]!r} is not a number (a number's string form is "
                'a JSON number, as "12" or "1e5", or "NaN", "Infinity", "-Infinity")'
            )
    elif kind == _DOUBLES:
        _check_doubles(field.full_name, x)
    elif kind == _ANY:
        _check_any(field, x)
    elif type(x) is str:
        if kind == _BYTES and not _is_base64(x):
            raise ValueError(f"{field.full_name}: not base64 (standard or URL-safe)")
        if kind == _SPAN and not _DURATION.fullmatch(x):
            raise ValueError(
                f"{field.full_name}: {x[:40]!r} is not a duration in seconds with at most "
                "nine fractional digits (as '1.5s')"
            )


def _check_keys(field: FieldDescriptor, item: dict[Any, Any], single: re.Pattern[str]) -> None:
    """The keys of map ``field``'s JSON object ``item`` (not empty), whose keys are
    integers (``single``, a key's pattern): each its digits, and no integer given
    twice. The keys are matched joined, in one pass of the pattern; an integer can
    only be given twice by a key with a leading zero or ``"-0"`` (JSON keys of one
    object differ), so only a map holding one is looked through key by key.

    Raises:
        DuplicateField: two keys that are one integer (``"1"`` and ``"01"``).
        ValueError: a key that is not an integer's digits.
    """
    try:
        joined: str | None = "\x00".join(item)
    except TypeError:  # a key that is not text (not from JSON)
        joined = None
    if (
        joined is None
        or not _KEY_RUNS[single].fullmatch(joined)
        or joined.count("\x00") != len(item) - 1  # a key holding the separator
    ):
        bad = next((k for k in item if type(k) is not str or not single.fullmatch(k)), "")
        raise ValueError(f"{field.full_name}: the key {str(bad)[:40]!r} is not an integer")
    if _UNCANONICAL.search(joined):
        seen: set[int] = set()
        for k in item:
            n = int(k)
            if n in seen:
                raise DuplicateField(f"{field.full_name}: the key {n} is given twice")
            seen.add(n)


def _key_pattern(field: FieldDescriptor) -> re.Pattern[str] | None:
    """A key's pattern if ``field`` is a map keyed by integers, else ``None``."""
    desc = field.message_type
    if desc is None or not desc.GetOptions().map_entry:
        return None
    return _KEYS.get(desc.fields_by_name["key"].cpp_type)


def _is_base64(text: str) -> bool:
    """Standard or URL-safe base64, padded (a multiple of four long) or not (then no
    ``=`` at all): what ``proto_schema``'s pattern for bytes says, at C speed (the
    pattern in ``re`` takes 28 ms a MiB, this 5)."""
    if not text.isascii():
        return False
    data = text.translate(_URLSAFE).encode("ascii")
    if len(data) % 4:
        if b"=" in data:
            return False
        data += b"=" * (-len(data) % 4)
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return False
    return True


def _check_any(field: FieldDescriptor, x: Any) -> None:
    """An ``Any``'s JSON: the message its ``@type`` names, from the pool the parser
    looks it up in (a well-known type's JSON is its ``value``)."""
    if type(x) is not dict:
        _not_an_object(field.full_name, field, x)
    url = x.get("@type")
    if type(url) is not str:
        return  # the empty Any, or one the parser refuses
    name = url.rpartition("/")[2]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return
    if name.startswith("google.protobuf."):
        if (kind := _KINDS.get(name)) and "value" in x:
            _check_text(kind, field, x["value"])
            if kind == _FLOAT:
                _check_floats(field, [x["value"]], name == _FLOAT_VALUE)
            elif name in _UNSIGNED_WRAPPERS and _signed_text(x["value"]):
                raise ValueError(f"{field.full_name}: {x['value'][:40]!r} is not unsigned")
        return
    check_json(desc, {k: v for k, v in x.items() if k != "@type"})


def _is_wide(field: FieldDescriptor) -> bool:
    """A 64-bit integer field, or a wrapper of one (its JSON form is the number)."""
    if field.cpp_type in _WIDE:
        return True
    desc = field.message_type
    return desc is not None and desc.full_name in _WIDE_WRAPPERS


def _values(field: FieldDescriptor, item: Any) -> list[Any]:
    if _leaf(field) is not field:  # a map: its values
        return list(item.values()) if isinstance(item, dict) else []
    if field.is_repeated:
        return item if isinstance(item, list) else []
    return [item]


def _leaf(field: FieldDescriptor) -> FieldDescriptor:
    """The field whose type the JSON value has: a map's value field, else itself."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return field.message_type.fields_by_name["value"]
    return field


def _table(desc: Descriptor | Any) -> tuple[tuple[tuple[str, str], ...], dict[str, _Field]]:
    table = _TABLES.get(desc.full_name)
    if table is None:
        spelled = tuple((f.json_name, f.name) for f in desc.fields if f.json_name != f.name)
        fields: dict[str, _Field] = {}
        for f in desc.fields:
            leaf, keys = _leaf(f), _key_pattern(f)
            if keys is not None or _worth_a_look(leaf, set()):
                plan = (f, leaf, _kind(leaf), _is_wide(leaf), keys)
            elif _is_object(leaf):  # (a plain message: its JSON an object, or null)
                plan = (f, leaf, _OBJECT, False, None)
            else:
                continue
            fields[f.json_name] = fields[f.name] = plan
        table = _TABLES[desc.full_name] = (spelled, fields)
    return table


def _worth_a_look(field: FieldDescriptor, seen: set[str]) -> bool:
    """Whether ``field`` is an enum, a number (or its wrapper), bytes, a Duration, a
    Struct-like value, or a message with one of those, a map keyed by integers, a
    field spelled two ways or a message field somewhere below (the well-known types
    whose JSON is not an object have none in their JSON forms)."""
    if field.enum_type is not None or _is_wide(field) or _kind(field):
        return True
    desc = field.message_type
    if desc is None or desc.full_name in seen or desc.full_name in _NOT_OBJECTS:
        return False
    seen.add(desc.full_name)
    return any(
        f.json_name != f.name
        or _key_pattern(f) is not None
        or _is_object(_leaf(f))
        or _worth_a_look(_leaf(f), seen)
        for f in desc.fields
    )
