"""google.api.http templates and parameter tables, from descriptors alone (no server)."""

from __future__ import annotations

import pytest
from google.api import http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from aralnode import _proto as pb
from aralnode.bridge import routes
from aralnode.bridge.rest_params import query_fields
from aralnode.bridge.routes import TemplateError

INVOKE = pb.AGENT_NODE_SERVICE.methods_by_name["Invoke"]


def _method() -> MethodDescriptor:
    """A throwaway service's one method (in a fresh pool each time)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    inner = fdp.message_type.add(name="Inner")
    inner.field.add(name="leaf", number=1, type=9, label=1, json_name="leaf")
    req = fdp.message_type.add(name="Req")
    req.field.add(name="name", number=1, type=9, label=1, json_name="name")
    req.field.add(name="inner", number=2, type=11, label=1, type_name=".t.Inner", json_name="inner")
    req.field.add(name="tags", number=3, type=9, label=3, json_name="tags")
    req.field.add(name="count", number=4, type=5, label=1, json_name="count")
    svc = fdp.service.add(name="S")
    svc.method.add(name="M", input_type=".t.Req", output_type=".t.Inner")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool.FindMethodByName("t.S.M")


def compile_rule(template: str, body: str = "") -> routes.Binding:
    return routes._from_rule(_method(), http_pb2.HttpRule(get=template, body=body))


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("/v1/{name}", "/v1/abc", {"name": "abc"}),
        ("/v1/{name}", "/v1/a%2Fb", {"name": "a/b"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/7", {"name": "shelves/7"}),
        ("/v1/{name=shelves/**}", "/v1/shelves/7/books/9", {"name": "shelves/7/books/9"}),
        # "**" matches zero or more segments (http.proto)
        ("/v1/{name=shelves/**}", "/v1/shelves", {"name": "shelves"}),
        ("/v1/files/**:list", "/v1/files:list", {}),
        ("/v1/files/**:list", "/v1/files/a/b:list", {}),
        ("/v1/{name=shelves/**}", "/v1/shelvesX", None),
        # A multi-segment variable keeps an encoded slash encoded (http.proto): it is
        # not a segment boundary, so never the name of another resource.
        ("/v1/{name=shelves/**}", "/v1/shelves/7/a%2Fb", {"name": "shelves/7/a%2Fb"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/s%2f1", {"name": "shelves/s%2f1"}),
        ("/v1/{name=shelves/*}", "/v1/shelves/caf%C3%A9", {"name": "shelves/café"}),
        ("/v1/{inner.leaf}:run", "/v1/x.y:run", {"inner.leaf": "x.y"}),
        ("/v1/*/{name}", "/v1/anything/n", {"name": "n"}),
        ("/v1/{name}", "/v1/a/b", None),
        ("/v1/{name}:run", "/v1/abc", None),
    ],
)
def test_templates_match(template: str, path: str, expected: dict[str, str] | None) -> None:
    binding = compile_rule(template)
    found = binding.match(path)
    assert (None if found is None else {v.name: value for v, value in found.items()}) == expected


@pytest.mark.parametrize(
    "template",
    [
        "v1/{name}",
        "/v1/{name",
        "/v1/{nope}",
        "/v1/{inner}",
        "/v1/{tags}",
        "/v1//x",
        "/v1/{name=a{b}}",
        "/v1/a*",
    ],
)
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        compile_rule(template)


def test_query_fields_skip_path_and_body_fields() -> None:
    names = [n for n, _ in query_fields(compile_rule("/v1/{name}"))]
    assert names == ["inner.leaf", "tags", "count"]
    assert query_fields(compile_rule("/v1/{name}", body="*")) == []
    assert [n for n, _ in query_fields(compile_rule("/v1/{name}", body="inner"))] == [
        "tags",
        "count",
    ]


def test_agent_node_bindings_and_default_binding() -> None:
    invoke = routes.bindings(INVOKE)
    assert [(b.http_method, b.template) for b in invoke] == [
        ("POST", "/v1/invoke"),
        ("POST", "/v1/capabilities/{call.capability}:invoke"),
    ]
    assert invoke[1].openapi_path == "/v1/capabilities/{call_capability}:invoke"
    channel = routes.bindings(pb.AGENT_NODE_SERVICE.methods_by_name["Channel"])
    assert [(b.http_method, b.template, b.body, b.default) for b in channel] == [
        ("POST", "/aral.v1.AgentNode/Channel", "*", True)
    ]


def test_an_annotated_client_streaming_rpc_is_said_to_be_unserved_on_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request stream has no REST form: its rule is not served, and the log says
    so at start (it was dropped silently)."""
    from google.api import annotations_pb2

    from aralnode.bridge.targets import _user_target

    fdp = descriptor_pb2.FileDescriptorProto(name="u.proto", package="u", syntax="proto3")
    fdp.message_type.add(name="Chunk").field.add(name="data", number=1, type=12, label=1)
    method = fdp.service.add(name="U").method.add(
        name="Upload", input_type=".u.Chunk", output_type=".u.Chunk", client_streaming=True
    )
    method.options.Extensions[annotations_pb2.http].post = "/v2/upload"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    upload = pool.FindMethodByName("u.U.Upload")
    assert routes.http_rule(upload) is not None
    with caplog.at_level("WARNING", logger="aralnode.rest"):
        assert _user_target(None, None, upload) is None  # type: ignore[arg-type]
    assert "u.U.Upload streams its requests" in caplog.text
