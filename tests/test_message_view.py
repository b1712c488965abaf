"""Governance's view of a protobuf request (``core.message_view.governed_json``): its
proto3 JSON with every 64-bit integer as a number, wherever it is in the message --
a field, a repeated field, a nested message, a map's values (and a message in a
map keyed by an int64), the Int64Value wrapper -- so that ``params.id == 4`` fires
for 4 and an ordering rule does not fail on a string."""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
from google.protobuf.message_factory import GetMessageClass

from aralnode.core.message_view import governed_json

F = descriptor_pb2.FieldDescriptorProto


def message_type() -> type:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    f = descriptor_pb2.FileDescriptorProto(
        name="view.proto", package="view", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )  # fmt: skip
    f.message_type.add(name="Sub").field.add(name="big", number=1, type=F.TYPE_INT64, label=1)
    m = f.message_type.add(name="M")
    for name, number, kind, label, type_name in (
        ("one", 1, F.TYPE_INT64, F.LABEL_OPTIONAL, ""),
        ("many", 2, F.TYPE_UINT64, F.LABEL_REPEATED, ""),
        ("sub", 3, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".view.Sub"),
        ("subs", 4, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".view.Sub"),
        ("wrapped", 5, F.TYPE_MESSAGE, F.LABEL_OPTIONAL, ".google.protobuf.Int64Value"),
        ("by_key", 6, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".view.M.ByKeyEntry"),
        ("counts", 7, F.TYPE_MESSAGE, F.LABEL_REPEATED, ".view.M.CountsEntry"),
        ("small", 8, F.TYPE_INT32, F.LABEL_OPTIONAL, ""),
        ("text", 9, F.TYPE_STRING, F.LABEL_OPTIONAL, ""),
    ):
        field = m.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name
    by_key = m.nested_type.add(name="ByKeyEntry")
    by_key.options.map_entry = True
    by_key.field.add(name="key", number=1, type=F.TYPE_INT64, label=1)
    by_key.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=1, type_name=".view.Sub")
    counts = m.nested_type.add(name="CountsEntry")
    counts.options.map_entry = True
    counts.field.add(name="key", number=1, type=F.TYPE_STRING, label=1)
    counts.field.add(name="value", number=2, type=F.TYPE_SFIXED64, label=1)
    pool.Add(f)
    return GetMessageClass(pool.FindMessageTypeByName("view.M"))


def test_every_64_bit_integer_is_a_number() -> None:
    message = message_type()(one=-5, many=[1, 2**63], small=7, text="4")
    message.sub.big = 9
    message.subs.add(big=10)
    message.wrapped.value = 11
    message.by_key[12].big = 13
    message.counts["x"] = -14
    assert governed_json(message) == {
        "one": -5,
        "many": [1, 2**63],
        "sub": {"big": 9},
        "subs": [{"big": 10}],
        "wrapped": 11,
        "byKey": {"12": {"big": 13}},
        "counts": {"x": -14},
        "small": 7,
        "text": "4",  # a string stays one
    }


def test_an_empty_message_is_an_empty_object() -> None:
    assert governed_json(message_type()()) == {}
