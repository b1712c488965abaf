"""The error root bounds what any error can carry back to a caller.

Refusals quote what they refuse (an offered version list, a parameter name, a
capability id): an outsider chooses those bytes. Every ``AralError`` keeps its
message and details within a fixed size whatever it was given, so each door's
rendering (a gRPC status and its trailers, REST's JSON body, an MCP error result,
a WebSocket frame) is bounded too, with no door-specific code.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import httpx
import pytest

from aralnode import Node
from aralnode import _proto as pb
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.errors import ERROR_TYPES, AralError, error_from_status
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity
from aralnode.transport.status import from_rpc_error

# What one error may weigh: its message in UTF-8, its details as JSON. gRPC clients
# refuse trailers past 16 KiB and may refuse them past 8 KiB (grpc's soft limit).
MESSAGE_BYTES = 512
DETAILS_BYTES = 1024
TRAILER_BYTES = 8 * 1024


def json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode())


HOSTILE_DETAILS: dict[str, Any] = {
    "offered": [f"v{i:04d}" for i in range(1000)],
    "long": "é" * 100_000,
    "deep": json.loads("[" * 500 + "]" * 500),
    **{f"key-{i}-" + "k" * 300: i for i in range(200)},
    "big": 10**4000,
}


@pytest.mark.parametrize("cls", ERROR_TYPES, ids=lambda t: t.__name__)
def test_every_error_is_bounded_whatever_it_is_given(cls: type[AralError]) -> None:
    exc = cls("ü" * 100_000, details=HOSTILE_DETAILS, reason="R" * 10_000)
    assert len(exc.message.encode()) <= MESSAGE_BYTES
    assert len(str(exc).encode()) <= MESSAGE_BYTES
    assert json_size(exc.details) <= DETAILS_BYTES
    assert len(exc.reason) <= 64
    assert json_size(exc.to_dict()) <= MESSAGE_BYTES + DETAILS_BYTES + 128
    assert exc.message.startswith("ü" * 100)  # cut, not replaced
    assert exc.details["offered"][:3] == ["v0000", "v0001", "v0002"]


def test_small_errors_are_left_exactly_as_they_are() -> None:
    details = {"shelf": "sci", "book_id": 99, "errors": [{"field": "a", "type": "missing"}]}
    exc = error_from_status(5, "no book 99 on shelf 'sci'", reason="NOT_FOUND", details=details)
    assert exc.message == "no book 99 on shelf 'sci'"
    assert exc.details == details
    assert exc.reason == "NOT_FOUND"


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("errors", http_port=0)
    async with n:
        yield n


def trailer_size(err: grpc.aio.AioRpcError) -> int:
    return sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())


async def test_a_thousand_offered_versions_do_not_make_a_giant_trailer(node: Node) -> None:
    """The handshake's refusal lists what was offered; the client still gets the
    status (a trailer past its limit would be dropped as 'Stream removed')."""
    me = Identity.generate()
    registry = CapabilityRegistry()
    card = build_card(me, name="me", endpoints=[], registry=registry, clock=SYSTEM_CLOCK)
    for offered in ([f"v{i:04d}" for i in range(1000)], ["ü" * 60] * 1000):
        hello = pb.Hello(
            card=card, protocol_versions=offered, nonce=Identity.generate().node_id.encode()[:16],
            timestamp_unix_ms=SYSTEM_CLOCK.now_ms(),
        )  # fmt: skip
        raw = hello.SerializeToString()
        request = pb.HandshakeRequest(hello=raw, signature=me.sign(pb.PAYLOAD_HELLO, raw))
        async with grpc.aio.insecure_channel(node.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb.AgentNodeStub(channel).Handshake(request, timeout=10)
        err = info.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert from_rpc_error(err).reason == "UNSUPPORTED_VERSION"
        assert trailer_size(err) + len((err.details() or "").encode()) * 3 <= TRAILER_BYTES


HUGE_PARAMS = {f"{c}" * 20_000: 1 for c in "ABCDEFGHIJKL"} | {"text": "x"}


async def test_parameter_names_are_not_echoed_without_bound(node: Node) -> None:
    """The same refusal (invalid parameters naming each unknown one) on gRPC and on
    REST: bounded on both."""
    call = pb.Call(capability="demo.echo")
    call.parameters.update(HUGE_PARAMS)
    async with grpc.aio.insecure_channel(node.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb.AgentNodeStub(channel).Invoke(pb.InvokeRequest(call=call), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert trailer_size(err) <= TRAILER_BYTES
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        body = {"call": {"capability": "demo.echo", "parameters": HUGE_PARAMS}}
        reply = await http.post("/v1/invoke", json=body, timeout=10)
    assert reply.status_code == 400
    assert reply.json()["error"]["reason"] == "INVALID_PARAMETERS"
    assert len(reply.content) <= MESSAGE_BYTES + DETAILS_BYTES + 512
