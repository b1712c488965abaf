"""A message's JSON is an object (proto3 JSON, and every schema the doors show):
``proto_json.check_json`` refuses an array, a string or a scalar where a message goes,
as a field's value, an element or map value of one, or the whole value.

Before: ``json_format`` iterated what it was given, so ``{"book": []}`` and
``{"book": ""}`` were an empty Book that reached the handler, and ``{"call": "ab"}``
was read as the fields ``a`` and ``b``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    struct_pb2,
    timestamp_pb2,
    type_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor
from google.protobuf.message_factory import GetMessageClass
from jsonschema import Draft202012Validator
from mcp import Client

from aralnode import Node
from aralnode.core import codec
from aralnode.core.capabilities import request_from
from aralnode.core.errors import InvalidParameters, OutOfRange
from aralnode.core.proto_json import check_json
from aralnode.core.proto_schema import message_schema

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = str(ROOT / "examples" / "library" / "server.py")
NOT_OBJECTS = [[], [[1]], "", "ab", 5, 1.5, True]


@pytest.fixture
def lib(make_node: Callable[..., Node]) -> Any:
    """``library_pb2``, imported by loading the example."""
    make_node("loader", demo=False).load(LIBRARY)
    return sys.modules["library_pb2"]


def _refused(desc: Descriptor, value: Any) -> str:
    """What ``check_json`` and the parser every door uses say of ``value``: both refuse."""
    with pytest.raises(ValueError) as checked:
        check_json(desc, value)
    with pytest.raises(InvalidParameters) as parsed:
        request_from(GetMessageClass(desc), value)
    assert parsed.value.reason == "INVALID_PARAMETERS"
    assert str(checked.value) in str(parsed.value)
    return str(checked.value)


def _schema_accepts(desc: Descriptor, value: Any) -> bool:
    return Draft202012Validator(message_schema(desc, closed=True)).is_valid(value)


@pytest.mark.parametrize("value", NOT_OBJECTS)
def test_a_message_field_that_is_not_an_object_is_refused(lib: Any, value: Any) -> None:
    desc = lib.CreateBookRequest.DESCRIPTOR
    said = _refused(desc, {"shelf": "sci", "book": value})
    assert said.startswith("library.v1.CreateBookRequest.book: library.v1.Book is a message")
    assert not _schema_accepts(desc, {"book": value})  # what the schema says too


@pytest.mark.parametrize("value", NOT_OBJECTS)
def test_the_whole_value_that_is_not_an_object_is_refused(lib: Any, value: Any) -> None:
    said = _refused(lib.CreateBookRequest.DESCRIPTOR, value)
    assert said.startswith("library.v1.CreateBookRequest is a message, so a JSON object")


@pytest.mark.parametrize(
    ("books", "where"),
    [
        ([[1]], "[0]"), (["x"], "[0]"), ([[]], "[0]"), ([{"title": "a"}, ""], "[1]"),
    ],
)  # fmt: skip
def test_each_element_of_a_repeated_message_field_is_an_object(
    lib: Any, books: list[Any], where: str
) -> None:
    desc = lib.ListBooksResponse.DESCRIPTOR
    said = _refused(desc, {"books": books})
    assert said.startswith(f"library.v1.ListBooksResponse.books{where}: library.v1.Book is")


def test_objects_and_null_stay_what_they_were(lib: Any) -> None:
    create = GetMessageClass(lib.CreateBookRequest.DESCRIPTOR)
    assert not request_from(create, {"shelf": "sci", "book": None}).HasField("book")
    assert request_from(create, {"book": {}}).HasField("book")
    assert request_from(create, None) == create()
    book = request_from(create, {"book": {"title": "t", "createTime": "2020-01-01T00:00:00Z"}})
    assert (book.book.title, book.book.create_time.seconds) == ("t", 1577836800)
    listed = GetMessageClass(lib.ListBooksResponse.DESCRIPTOR)
    books = request_from(listed, {"books": [{"title": "a"}, {}]}).books
    assert [b.title for b in books] == ["a", ""]
    assert not request_from(listed, {"books": []}).books
    # null is no element of a list (or a map), as it was not: the parser says so.
    with pytest.raises(InvalidParameters):
        request_from(listed, {"books": [{}, None]})


def _shapes() -> Descriptor:
    """A message of a plain message (strings alone: nothing else to check below it),
    one holding that, a map of them, and the well-known types, in a fresh pool."""
    pool = descriptor_pool.DescriptorPool()
    deps = []
    for module in (
        any_pb2, duration_pb2, empty_pb2, field_mask_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
    ):  # fmt: skip
        dep = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(dep)
        pool.Add(dep)
        deps.append(dep.name)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="shapes.proto", package="sh", syntax="proto3", dependency=deps
    )
    fdp.message_type.add(name="Plain").field.add(
        name="name", number=1, type=9, label=1, json_name="name"
    )
    fdp.message_type.add(name="Mid").field.add(
        name="plain", number=1, type=11, label=1, type_name=".sh.Plain", json_name="plain"
    )
    msg = fdp.message_type.add(name="S")
    entry = msg.nested_type.add(name="ByNameEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=9, label=1, json_name="key")
    entry.field.add(
        name="value", number=2, type=11, label=1, type_name=".sh.Plain", json_name="value"
    )
    wkt = ("Empty", "Any", "Struct", "Timestamp", "Duration", "FieldMask", "Value", "ListValue")
    fields = [
        ("plain", 1, ".sh.Plain"), ("plains", 3, ".sh.Plain"), ("mid", 1, ".sh.Mid"),
        ("by_name", 3, ".sh.S.ByNameEntry"), ("int32", 1, ".google.protobuf.Int32Value"),
        ("text", 1, ".google.protobuf.StringValue"), ("flag", 1, ".google.protobuf.BoolValue"),
        *((kind.lower(), 1, f".google.protobuf.{kind}") for kind in wkt),
    ]  # fmt: skip
    for number, (name, label, type_name) in enumerate(fields, 1):
        json_name = "byName" if name == "by_name" else name
        msg.field.add(
            name=name, number=number, type=11, label=label, type_name=type_name, json_name=json_name
        )
    pool.Add(fdp)
    return pool.FindMessageTypeByName("sh.S")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"plain": []}, "sh.S.plain: sh.Plain is a message, so a JSON object, not an array"),
        ({"plain": "ab"}, "sh.S.plain: sh.Plain is a message, so a JSON object, not a string"),
        ({"plains": [{}, "x"]}, "sh.S.plains[1]: sh.Plain is a message"),
        ({"plains": [[1]]}, "sh.S.plains[0]: sh.Plain is a message"),
        ({"mid": {"plain": []}}, "sh.Mid.plain: sh.Plain is a message"),
        ({"mid": ""}, "sh.S.mid: sh.Mid is a message"),
        ({"byName": {"a": {}, "b": []}}, "sh.S.by_name['b']: sh.Plain is a message"),
        ({"byName": {"a": "x"}}, "sh.S.by_name['a']: sh.Plain is a message"),
        ({"byName": {"a": None}}, "sh.S.by_name['a']: sh.Plain is a message, so a JSON object, "
                                  "not null"),
        ({"empty": []}, "sh.S.empty: google.protobuf.Empty is a message"),
        ({"empty": ""}, "sh.S.empty: google.protobuf.Empty is a message"),
        ({"any": []}, "sh.S.any: google.protobuf.Any is a message"),
        (
            {"any": {"@type": "type.googleapis.com/google.protobuf.Any", "value": "x"}},
            "sh.S.any: google.protobuf.Any is a message",
        ),
    ],
)  # fmt: skip
def test_a_message_anywhere_is_an_object(body: Any, said: str) -> None:
    # (Plain has nothing to check below it: once, its fields were not looked at at all.)
    assert _refused(_shapes(), body).startswith(said)


@pytest.mark.parametrize(
    "body",
    [
        {"plain": {"name": "x"}}, {"plain": None}, {"plains": [{}, {"name": "y"}]},
        {"mid": {"plain": {}}}, {"mid": {"plain": None}}, {"byName": {"a": {"name": "z"}}},
        {"empty": {}}, {"empty": None}, {"any": {}}, {"struct": {"a": [1]}},
        {"timestamp": "2020-01-01T00:00:00Z"}, {"duration": "1.5s"}, {"fieldmask": "a,bC"},
        {"int32": 5}, {"int32": None}, {"text": "x"}, {"flag": True}, {"text": None},
        {"value": []}, {"value": "x"}, {"value": 5}, {"value": {"a": 1}}, {"value": None},
        {"listvalue": []}, {"listvalue": [1, "x", {}]},
    ],
)  # fmt: skip
def test_objects_and_well_known_types_whose_json_is_not_an_object_are_taken(body: Any) -> None:
    desc = _shapes()
    check_json(desc, body)
    request_from(GetMessageClass(desc), body)
    assert _schema_accepts(desc, body), body


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("shapes", http_port=0)
    n.load(LIBRARY)
    async with n:
        yield n


async def test_rest_refuses_a_message_that_is_not_an_object(node: Node) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for call in ([], "", "ab"):
            r = await http.post("/v1/invoke", json={"call": call})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["reason"] == "INVALID_PARAMETERS", error  # (before: MISSING_FIELD)
            assert "aral.v1.InvokeRequest.call: aral.v1.Call is a message" in error["message"]
        r = await http.post("/v1/shelves/new/books", json=[])  # the body is the book
        assert r.status_code == 400, r.text
        assert "CreateBookRequest.book: library.v1.Book is a message" in r.text
        listed = await http.get("/v1/shelves/new/books")
        assert listed.status_code == 200, listed.text
        assert listed.json().get("books", []) == []


async def test_mcp_refuses_a_message_that_is_not_an_object(node: Node) -> None:
    async with Client(f"http://127.0.0.1:{node.http_port}/mcp") as client:
        for book in ([], "title"):
            result = await client.call_tool(
                "library.v1.Library.CreateBook", {"shelf": "sci", "book": book}
            )
            assert result.is_error
            error = json.loads(result.content[0].text)["error"]
            assert (error["code"], error["reason"]) == ("invalid_request", "INVALID_PARAMETERS")
            # (before: the handler ran on an empty Book, and said it had no title)
            assert "CreateBookRequest.book: library.v1.Book is a message" in error["message"]
        made = await client.call_tool(
            "library.v1.Library.CreateBook", {"shelf": "sci", "book": {"title": "t"}}
        )
        assert not made.is_error


def _floats() -> Descriptor:
    """A message of float and double fields, plain, repeated and wrapped."""
    pool = descriptor_pool.DescriptorPool()
    dep = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(dep)
    pool.Add(dep)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="floats.proto", package="fl", syntax="proto3", dependency=[dep.name]
    )
    msg = fdp.message_type.add(name="F")
    msg.field.add(name="f", number=1, type=2, label=1, json_name="f")
    msg.field.add(name="d", number=2, type=1, label=1, json_name="d")
    msg.field.add(name="fs", number=3, type=2, label=3, json_name="fs")
    msg.field.add(name="wf", number=4, type=11, label=1, json_name="wf",
                  type_name=".google.protobuf.FloatValue")  # fmt: skip
    msg.field.add(name="wd", number=5, type=11, label=1, json_name="wd",
                  type_name=".google.protobuf.DoubleValue")  # fmt: skip
    pool.Add(fdp)
    return pool.FindMessageTypeByName("fl.F")


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"f": True}, "fl.F.f: true is not a number"),
        ({"d": False}, "fl.F.d: false is not a number"),
        ({"fs": [1.5, True]}, "fl.F.fs: true is not a number"),
        ({"wf": True}, "fl.F.wf: true is not a number"),
        ({"wd": False}, "fl.F.wd: false is not a number"),
        ({"f": "1e39"}, "fl.F.f: '1e39' is past the range of a float"),
        ({"wf": "-4e38"}, "fl.F.wf: '-4e38' is past the range of a float"),
        ({"d": "1e400"}, "fl.F.d: '1e400' is past the range of a double"),
        ({"wd": "-1e309"}, "fl.F.wd: '-1e309' is past the range of a double"),
    ],
)
def test_a_float_is_no_boolean_and_its_string_within_its_range(body: Any, said: str) -> None:
    """From an attack: a float field took ``true`` as 1 and ``"1e39"`` (a string) as
    Infinity, where the same number unquoted is refused and the schema says neither."""
    desc = _floats()
    assert _refused(desc, body).startswith(said)
    assert not _schema_accepts(desc, body)


@pytest.mark.parametrize(
    "body",
    [{"f": 1.5}, {"f": "1.5"}, {"f": "NaN"}, {"d": "-Infinity"}, {"d": "1e300"},
     {"fs": [1, 2.5, "3"]}, {"wf": "3e38"}, {"wd": 2}],
)  # fmt: skip
def test_floats_and_their_strings_in_range_are_taken(body: Any) -> None:
    desc = _floats()
    check_json(desc, body)
    request_from(GetMessageClass(desc), body)


def _tree() -> Any:
    """A service whose request nests itself (``R{children: [R]}``), in a fresh pool."""
    pool = descriptor_pool.DescriptorPool()
    fdp = descriptor_pb2.FileDescriptorProto(name="tree.proto", package="tr", syntax="proto3")
    msg = fdp.message_type.add(name="R")
    msg.field.add(name="children", number=1, type=11, label=3, type_name=".tr.R",
                  json_name="children")  # fmt: skip
    msg.field.add(name="id", number=2, type=9, label=1, json_name="id")
    fdp.service.add(name="T").method.add(name="Echo", input_type=".tr.R", output_type=".tr.R")
    pool.Add(fdp)
    return pool.FindServiceByName("tr.T")


async def test_a_protobuf_request_nests_as_deep_on_the_json_doors_as_on_grpc(
    make_node: Callable[..., Node],
) -> None:
    """From an attack: a protobuf method's JSON parameters (MCP's, the in-process
    door's) were held to a ``Value``'s depth, 43 levels of JSON, where REST and gRPC
    parse the same request into its message, whose parser bounds it. They are held
    to the parser's bound now, on every door. (Its result stays a Value's: Invoke
    and the channel carry it as one.)"""
    service = _tree()
    request_cls = GetMessageClass(service.methods_by_name["Echo"].input_type)

    class Echo:  # (its answer is shallow: a result is a Value, whose depth is bounded)
        async def Echo(self, request: Any, ctx: Any) -> Any:
            depth = 0
            while request.children:
                request, depth = request.children[0], depth + 1
            return request_cls(id=f"{request.id} at {depth}")

    node = make_node("tree")
    node.add_service(Echo(), service)
    deep: dict[str, Any] = {"id": "leaf"}
    for _ in range(40):  # 83 levels of JSON
        deep = {"children": [deep]}
    async with node:
        answer = await node.invoke("tr.T/Echo", deep)
    assert answer == {"id": "leaf at 40"}


def test_an_any_prints_as_a_plain_object_the_checks_take() -> None:
    # MessageToDict gives an Any as an OrderedDict, which the checks (an exact dict)
    # refused as "not a JSON object": a protobuf body holding an Any was 400 on REST.
    option = type_pb2.Option(name="o")
    option.value.Pack(duration_pb2.Duration(seconds=5))
    printed = codec.message_json(option)
    assert type(printed["value"]) is dict
    assert printed["value"] == {
        "@type": "type.googleapis.com/google.protobuf.Duration",
        "value": "5s",
    }
    check_json(type_pb2.Option.DESCRIPTOR, printed)
    assert request_from(type_pb2.Option, printed) == option
    # Valid on the wire, no JSON form: an OUT_OF_RANGE refusal, not a 500.
    option.value.value = b"\xff\xff"  # (a Duration's bytes that do not parse)
    with pytest.raises(OutOfRange) as refused:
        codec.message_json(option)
    assert refused.value.reason == "NO_JSON_FORM"
