"""What the doors say, and that they agree: JSON in, JSON out, on every door.

Every door reads JSON with ``codec.loads`` and writes it with ``codec.dumps``, and
the pipeline checks every call's JSON parameters and results (``codec.check_json``).
So a number JSON has no form for (NaN, an infinity, ``1e400``, a 4,000-digit
integer) is refused as invalid wherever it comes from (a body, a Struct, a peer, a
capability's arithmetic), and nothing a door sends is ever invalid JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client
from websockets.asyncio.client import connect

from aralnode import AralError, CallContext, Node, NodeClient
from aralnode import _proto as pb
from aralnode.bridge import mcp as mcp_bridge
from aralnode.bridge._http import dumps as http_dumps
from aralnode.bridge._http import error_body, error_headers
from aralnode.bridge._sockets import ws_error
from aralnode.bridge.mcp import tool_name
from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import FixedClock
from aralnode.core.envelope import error_body as channel_error_body
from aralnode.core.envelope import remote_error
from aralnode.core.errors import MalformedMessage, OutOfRange, RateLimited
from aralnode.core.handshake import build_card, verify_card
from aralnode.core.identity import Identity
from aralnode.service.values import json_result
from aralnode.transport.status import to_rpc_status
from tests.conftest import recorded


def strict(text: str | bytes) -> Any:
    """Parse as RFC 8259 JSON: no NaN, no Infinity (Python's parser takes them)."""

    def refuse(name: str) -> Any:
        raise AssertionError(f"invalid JSON sent: {name} in {text[:200]!r}")

    return json.loads(text, parse_constant=refuse)


HUGE = "9" * 4000
LIBRARY = Path(__file__).resolve().parent.parent / "examples" / "library" / "server.py"
GET_BOOK = "library.v1.Library/GetBook"
# Request bodies a caller may send: each is refused as invalid (400), never a 500.
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", HUGE, "-" + HUGE]


def _tree(depth: int) -> dict[str, Any]:
    """A tree ``depth`` levels deep, one child a level: as JSON, an object and an
    array a level (five protobuf messages as a ``google.protobuf.Value``)."""
    tree: dict[str, Any] = {"value": "leaf", "children": []}
    for i in range(depth):
        tree = {"value": str(i), "children": [tree]}
    return tree


def _give(node: Node, values: dict[str, Any]) -> None:
    """``test.give`` returns ``values[key]``: results the test chooses, NaN too;
    ``test.take`` takes anything, and says it ran (``TAKEN``)."""

    @node.capability(id="test.give", risk="read_only")
    async def give(key: str) -> Any:
        return values[key]

    @node.capability(id="test.take", risk="read_only")
    async def take(tree: Any) -> int:
        TAKEN.append(tree)
        return len(TAKEN)

    @node.capability(id="test.refuse", risk="read_only")
    async def refuse(key: str) -> Any:
        delay = DELAYS[key]
        raise RateLimited("slow down", retry_after=delay, details={"v": delay})


RESULTS = {
    "nan": float("nan"),
    "inf": [1, float("inf")],
    "deep-inf": {"a": {"b": [float("-inf")]}},
    "big-int": 2**60,
    # Deeper than a google.protobuf.Value can carry (protobuf parses 100 levels): the
    # envelope doors could not send it, so no door does (it was a 500 on POST
    # /v1/invoke, after the capability had run).
    "too-deep": _tree(20),
}
TAKEN: list[Any] = []
DELAYS = {"inf": float("inf"), "nan": float("nan"), "1e300": 1e300, "-5": -5.0}


@contextlib.asynccontextmanager
async def node_with_doors(make_node: Callable[..., Node]) -> AsyncIterator[tuple[Node, str]]:
    node = make_node("doors", http_port=0)
    _give(node, RESULTS)
    async with node:
        yield node, f"127.0.0.1:{node.http_port}"


# -- item 15: numbers JSON has no form for ----------------------------------------------


@pytest.mark.parametrize("number", BAD_NUMBERS, ids=lambda n: n[:12])
async def test_a_body_with_a_number_json_has_not_is_refused_as_invalid(
    make_node: Callable[..., Node], number: str
) -> None:
    async with node_with_doors(make_node) as (_, http):
        body = '{"call":{"capability":"demo.add","parameters":{"a":' + number + ',"b":1}}}'
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:
            r = await client.post(
                "/v1/invoke", content=body, headers={"content-type": "application/json"}
            )
        assert r.status_code == 400, r.text
        assert strict(r.text)["error"]["code"] == "invalid_request"
        async with connect(f"ws://{http}/ws") as ws:
            frame = '{"type":"invoke","id":1,"capability":"demo.add","parameters":{"a":%s,"b":1}}'
            await ws.send(frame % number)
            reply = strict(await ws.recv())
        assert reply["type"] == "error", reply
        assert reply["error"]["code"] == "invalid_request", reply


async def test_non_finite_parameters_are_refused_on_every_door(
    make_node: Callable[..., Node],
) -> None:
    """NaN in a Struct (gRPC, the channel's protobuf payloads), in-process, over MCP:
    refused as invalid parameters before the capability runs."""
    async with node_with_doors(make_node) as (node, _):
        invoke = grpc.aio.insecure_channel(node.address)
        async with invoke:
            rpc = invoke.unary_unary(
                "/aral.v1.AgentNode/Invoke",
                request_serializer=pb.InvokeRequest.SerializeToString,
                response_deserializer=pb.InvokeResponse.FromString,
            )
            request = pb.InvokeRequest(call=pb.Call(capability="demo.add"))
            request.call.parameters.update({"a": float("nan"), "b": 1})
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await rpc(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ctx = CallContext(door="local", caller="app")
        with pytest.raises(AralError) as local:
            await node.invoke("demo.add", {"a": float("inf"), "b": 1}, ctx=ctx)
        assert (local.value.code, local.value.reason) == ("invalid_request", "NOT_A_JSON_NUMBER")
        with pytest.raises(AralError) as big:
            await node.invoke("demo.add", {"a": 10**4000, "b": 1}, ctx=ctx)
        assert big.value.code == "invalid_request"


async def test_an_overflowing_result_is_out_of_range_on_every_door(
    make_node: Callable[..., Node],
) -> None:
    """``1e308 + 1e308`` is infinity: the same refusal (OUT_OF_RANGE, 400) on every
    door, and no door prints ``Infinity``."""
    params = {"a": 1e308, "b": 1e308}
    async with node_with_doors(make_node) as (node, http):
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:
            r = await client.post(
                "/v1/invoke", json={"call": {"capability": "demo.add", "parameters": params}}
            )
        assert r.status_code == 400, r.text
        assert strict(r.text)["error"]["code"] == "out_of_range"
        async with NodeClient(node.address) as grpc_client:
            with pytest.raises(AralError) as info:
                await grpc_client.call("demo.add", params, timeout=10)
        assert (info.value.code, info.value.reason) == ("out_of_range", "RESULT_NOT_JSON")
        async with connect(f"ws://{http}/ws") as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "demo.add",
                                      "parameters": params}))  # fmt: skip
            reply = strict(await ws.recv())
        assert reply["error"]["code"] == "out_of_range", reply
        async with Client(f"http://{http}/mcp") as mcp:
            result = await mcp.call_tool(tool_name("demo.add"), params)
        assert result.is_error
        assert strict(result.content[0].text)["error"]["code"] == "out_of_range"  # type: ignore[union-attr]


@pytest.mark.parametrize("key", sorted(RESULTS))
async def test_a_result_no_door_can_carry_is_refused_alike_and_never_sent(
    make_node: Callable[..., Node], key: str
) -> None:
    async with node_with_doors(make_node) as (node, http):
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:
            r = await client.post(
                "/v1/invoke", json={"call": {"capability": "test.give", "parameters": {"key": key}}}
            )
        assert r.status_code == 400, r.text
        assert strict(r.text)["error"]["reason"] == "RESULT_NOT_JSON"
        async with connect(f"ws://{http}/ws") as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "test.give",
                                      "parameters": {"key": key}}))  # fmt: skip
            reply = strict(await ws.recv())
        assert reply["error"]["reason"] == "RESULT_NOT_JSON", reply
        async with Client(f"http://{http}/mcp") as mcp:
            result = await mcp.call_tool(tool_name("test.give"), {"key": key})
        assert result.is_error
        assert strict(result.content[0].text)["error"]["reason"] == "RESULT_NOT_JSON"  # type: ignore[union-attr]
        with pytest.raises(OutOfRange):
            await node.invoke("test.give", {"key": key}, ctx=CallContext(door="local"))


async def test_a_result_past_what_one_message_carries_is_refused_alike_before_it_is_written(
    make_node: Callable[..., Node],
) -> None:
    """From review: a 4 KB request (a long string, ``times=100``) made the node write
    400 MB of JSON on its event loop, then gzip it, then keep it for a peer. A result
    past ``max_message_bytes`` is now refused on every door before any writes it:
    RESPONSE_TOO_LARGE, audited as the call's outcome."""
    node = make_node("big", http_port=0, max_message_bytes=64 * 1024)
    seen = recorded(node)

    @node.capability(id="test.big", risk="read_only")
    async def big(times: int) -> Any:
        return {"echo": ["x" * 1000] * times}  # one string, many times: small in memory

    async with node:
        http = f"127.0.0.1:{node.http_port}"
        reasons = {}
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:

            def call(times: int) -> dict[str, Any]:
                return {"call": {"capability": "test.big", "parameters": {"times": times}}}

            ok = await client.post("/v1/invoke", json=call(10))
            assert ok.status_code == 200, ok.text
            r = await client.post("/v1/invoke", json=call(500))
            reasons["rest"] = (r.status_code, strict(r.text)["error"]["reason"])
        async with connect(f"ws://{http}/ws") as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "test.big",
                                      "parameters": {"times": 500}}))  # fmt: skip
            reasons["ws"] = strict(await ws.recv())["error"]["reason"]
        async with Client(f"http://{http}/mcp") as mcp:
            result = await mcp.call_tool(tool_name("test.big"), {"times": 500})
        reasons["mcp"] = strict(result.content[0].text)["error"]["reason"]  # type: ignore[union-attr]
        stranger = Identity.generate()
        async with NodeClient(node.address, identity=stranger, node_id=node.node_id) as client:
            with pytest.raises(AralError) as signed:
                await client.request("test.big", {"times": 500}, timeout=10)
            # (read back by reason: by status alone it was taken for a rate limit)
            reasons["grpc-signed"] = (signed.value.code, signed.value.reason)
    assert reasons == {
        "rest": (413, "RESPONSE_TOO_LARGE"),
        "ws": "RESPONSE_TOO_LARGE",
        "mcp": "RESPONSE_TOO_LARGE",
        "grpc-signed": ("payload_too_large", "RESPONSE_TOO_LARGE"),
    }
    refused = [(r.door, r.reason) for r in seen if r.action == "test.big" and r.reason]
    assert sorted(refused) == sorted(
        [("rest", "RESPONSE_TOO_LARGE"), ("ws", "RESPONSE_TOO_LARGE"),
         ("mcp", "RESPONSE_TOO_LARGE"), ("grpc", "RESPONSE_TOO_LARGE")]
    )  # fmt: skip


@pytest.mark.parametrize("delay", sorted(DELAYS))
async def test_a_retry_delay_and_details_with_no_json_form_still_make_a_clean_refusal(
    make_node: Callable[..., Node], delay: str
) -> None:
    """A servicer's or a peer's ``retry_after`` of infinity, NaN or 1e300 seconds,
    and NaN in its details: each door still answers 429 / RESOURCE_EXHAUSTED with
    valid JSON and a Retry-After a client can read."""
    async with node_with_doors(make_node) as (node, http):
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:
            call = {"capability": "test.refuse", "parameters": {"key": delay}}
            r = await client.post("/v1/invoke", json={"call": call})
        assert r.status_code == 429, r.text
        assert strict(r.text)["error"]["code"] == "rate_limit_exceeded"
        assert r.headers.get("retry-after") in (None, *(str(n) for n in range(1, 86_401)))
        async with NodeClient(node.address) as grpc_client:
            with pytest.raises(AralError) as info:
                await grpc_client.call("test.refuse", {"key": delay}, timeout=10)
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.retry_after is None or 0 <= info.value.retry_after <= 86_400
        async with connect(f"ws://{http}/ws") as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "test.refuse",
                                      "parameters": {"key": delay}}))  # fmt: skip
            assert strict(await ws.recv())["error"]["code"] == "rate_limit_exceeded"
        async with Client(f"http://{http}/mcp") as mcp:
            result = await mcp.call_tool(tool_name("test.refuse"), {"key": delay})
        assert strict(result.content[0].text)["error"]["code"] == "rate_limit_exceeded"  # type: ignore[union-attr]


def test_a_peer_error_with_a_non_finite_retry_delay_or_detail_is_read_as_a_clean_one() -> None:
    for delay in (math.inf, math.nan, -1.0, 1e300):
        err = pb.Error(code="rate_limit_exceeded", message="wait", status=8)
        err.details.update({"reason": "RATE_LIMIT", "v": 1.0})
        err.details["retry_after"] = delay  # as a hostile peer sends it
        err.details["nan"] = math.nan
        exc = remote_error(err)
        assert exc.retry_after is None or 0 <= exc.retry_after <= codec.MAX_RETRY_AFTER
        strict(http_dumps(error_body(exc, "t", 0)))  # no 500, no invalid JSON
        assert all(b"inf" not in v and b"nan" not in v for _, v in error_headers(exc))
        to_rpc_status(exc)  # no OverflowError making a RetryInfo
        channel_error_body(exc, "c")


def test_a_peer_card_whose_schema_holds_nan_is_refused() -> None:
    identity = Identity.generate()
    registry = CapabilityRegistry()
    clock = FixedClock(1_000)
    card = build_card(identity, name="x", endpoints=[], registry=registry, clock=clock)
    raw = pb.NodeCard.FromString(card.card)
    cap = raw.capabilities.add(id="evil.cap", name="evil")
    cap.input_schema.update({"type": "object", "properties": {"n": {"maximum": 1}}})
    cap.input_schema["properties"]["n"]["maximum"] = math.nan
    signed = raw.SerializeToString()
    forged = pb.SignedNodeCard(card=signed, signature=identity.sign(pb.PAYLOAD_NODE_CARD, signed))
    with pytest.raises(MalformedMessage) as info:
        verify_card(forged)
    assert info.value.reason == "NOT_A_JSON_NUMBER"
    # The MCP bridge refuses such a schema too (a card it got some other way).
    with pytest.raises(mcp_bridge.InvalidToolSchema):
        mcp_bridge.remote_spec("evil.cap", cap, _never)


async def _never(value: Any, ctx: CallContext) -> Any:
    raise AssertionError("not called")


# -- the property: nothing a door sends is invalid JSON ---------------------------------

NUMBERS = (
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
)
VALUES = st.recursive(
    st.none() | st.booleans() | st.text(max_size=8) | NUMBERS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


def _rendered(value: Any) -> list[str]:
    """What each door sends for a result ``value`` (or its refusal): REST's body,
    the WebSocket's frame, MCP's text, the CLI's output."""
    try:
        json_result(value, "test.give")
    except AralError as exc:
        err = exc
        return [
            http_dumps(error_body(err, "t", 0)).decode(),
            codec.dumps(ws_error(err, 1, 0)),
            mcp_bridge.error_result(err, "t", 0)["content"][0]["text"],
            codec.dumps(mcp_bridge.mcp_error(err, "t", 0).error.model_dump(), pretty=True),
        ]
    spec = mcp_bridge.ToolSpec(
        name="t", description="", input_schema={}, output_schema=None, read_only=True,
        run=_never, key="test.give",
    )  # fmt: skip
    return [
        http_dumps({"result": {"result": value}}).decode(),
        codec.dumps({"type": "result", "id": 1, "result": value}),
        mcp_bridge.result_of(value, spec)["content"][0]["text"],
        codec.dumps(value, pretty=True),
    ]


@settings(max_examples=300, deadline=None)
@given(VALUES)
def test_no_door_ever_sends_invalid_json(value: Any) -> None:
    """Whatever a capability returns, each door's answer is RFC 8259 JSON: the value
    itself when every door can carry it, else the same refusal."""
    for text in _rendered(value):
        strict(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40) | VALUES.map(json.dumps))
def test_what_the_doors_read_is_json_and_nothing_else(text: str) -> None:
    """``codec.loads`` (REST bodies, WebSocket frames, the CLI) takes RFC 8259 JSON
    with numbers some door can hold, and refuses the rest with ``ValueError``."""
    try:
        value = codec.loads(text)
    except (ValueError, RecursionError):
        return
    strict(codec.dumps(value))  # what was taken can always be sent back


# -- item 21: one spelling per thing, and the doors agree ----------------------------------


def _cli_env() -> dict[str, str]:
    import os

    return dict(os.environ)


async def _cli(*args: str) -> tuple[int, str, str]:
    """``aralnode ARGS`` as a user runs it (this worktree's package: PYTHONPATH)."""
    import asyncio
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aralnode.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_cli_env(),
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_rest_invoke_answers_what_the_other_doors_answer(
    make_node: Callable[..., Node],
) -> None:
    """``/v1/invoke`` is ``Invoke``'s response as proto3 JSON: no ``messageId: ""``
    for a plain call (no door has a message id for one)."""
    call = {"capability": "demo.add", "parameters": {"a": 1.5, "b": 1.5}}
    async with (
        node_with_doors(make_node) as (_, http),
        httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client,
    ):
        r = await client.post("/v1/invoke", json={"call": call})
    assert r.status_code == 200, r.text
    assert set(r.json()["result"]) == {"result", "traceId", "nodeId", "decision"}, r.text
    assert r.json()["result"]["result"] == 3
    assert '"result":3,' in r.text


async def test_a_forwarded_not_found_names_the_node_that_has_no_such_capability() -> None:
    from aralnode.testing import node_pair

    async with node_pair() as (a, b), NodeClient(a.address) as client:
        with pytest.raises(AralError) as forwarded:
            await client.call("demo.nope", {}, to=b.node_id, timeout=10)
        with pytest.raises(AralError) as here:
            await client.call("demo.nope", {}, timeout=10)
    assert forwarded.value.reason == "CAPABILITY_NOT_FOUND"
    assert b.node_id in forwarded.value.message, forwarded.value.message
    assert "this node" not in forwarded.value.message
    assert a.node_id in here.value.message, here.value.message


async def test_the_cli_prints_a_reason_once(make_node: Callable[..., Node]) -> None:
    """``[NOT_FOUND]``, not ``[NOT_FOUND NOT_FOUND]``, when the reason is the status;
    ``[NOT_FOUND CAPABILITY_NOT_FOUND]`` when it says more."""
    from aralnode.core.errors import NotFound

    node = make_node("reasons")

    @node.capability(id="test.missing", risk="read_only")
    async def missing() -> None:
        raise NotFound("no such book")

    async with node:
        code, _, err = await _cli("call", "--node", node.address, "test.missing")
        assert code == 1
        assert re.search(r"no such book \[NOT_FOUND\] \(trace [0-9a-f]{32}\)$", err.strip()), err
        code, _, err = await _cli("call", "--node", node.address, "demo.nope")
        assert re.search(r"\[NOT_FOUND CAPABILITY_NOT_FOUND\] \(trace \w+\)$", err.strip()), err


@contextlib.asynccontextmanager
async def inbound_peer(make_node: Callable[..., Node]) -> AsyncIterator[tuple[Node, Node, str]]:
    """``node`` (HTTP on) and a ``peer`` that dialled it: on ``node`` that peer is
    verified by its handshake, with a live channel, but not reached by ``node``."""
    from tests.channel_helpers import FAST

    node = make_node("seen", http_port=0, **FAST)
    peer = make_node("dialler", demo=False, **FAST)
    async with node, peer:
        yield node, peer, f"127.0.0.1:{node.http_port}"


async def test_status_peers_and_events_tell_one_story(make_node: Callable[..., Node]) -> None:
    """A peer that dialled in, with a live channel: ``status`` counts it, ``peers``
    lists it, the WebSocket says it joined; its state is the proto enum name
    everywhere (REST, the WebSocket, ``peers --json``, the table), and a peer
    event's data is the same proto3 JSON (camelCase) as ``/v1/peers`` gives."""
    from tests.channel_helpers import linked

    async with inbound_peer(make_node) as (node, peer, http):
        async with connect(f"ws://{http}/ws") as ws:
            await ws.send(json.dumps({"type": "subscribe", "agent_id": "*", "channels": ["peers"]}))
            assert strict(await ws.recv())["type"] == "subscribed"
            await linked(peer, node)
            async with asyncio.timeout(10):
                while True:
                    frame = strict(await ws.recv())
                    if frame.get("event") in ("peer_joined", "peer_changed"):
                        break
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:
            status = (await client.get("/v1/status")).json()
            peers = (await client.get("/v1/peers")).json()["peers"]
        code, table, _ = await _cli("peers", "--node", node.address)
        code_json, listed, _ = await _cli("peers", "--node", node.address, "--json")
    assert (code, code_json) == (0, 0)
    assert [p["nodeId"] for p in peers] == [peer.node_id]
    state = peers[0]["state"]
    assert state.startswith("PEER_STATE_"), state
    assert status["peerCount"] == len(peers) == 1, (status["peerCount"], peers)
    assert frame["event"] == "peer_joined", frame
    data = frame["data"]
    assert data["nodeId"] == peer.node_id, data
    assert data["state"] == state, data
    same = {k: v for k, v in peers[0].items() if k != "lastSeenUnixMs"}
    assert {k: data[k] for k in same} == same, data
    assert json.loads(listed)[0]["state"] == state
    assert state in table, table


class _NanNode:
    """A node (reached over gRPC, as ``aralnode mcp`` reaches one) whose plain call
    answers NaN in its ``Value``: an old or hostile node."""

    async def capabilities(self, node_id: str = "") -> pb.ListCapabilitiesResponse:
        return pb.ListCapabilitiesResponse(capabilities=[pb.Capability(id="odd.nan", name="nan")])

    async def status(self) -> pb.NodeStatus:
        return pb.NodeStatus()

    async def peers(self) -> list[pb.Peer]:
        return []

    async def call(
        self, capability: str, params: Any = None, *, timeout: float | None, trace_id: str
    ) -> pb.CallResult:
        return pb.CallResult(result=struct_pb2.Value(number_value=math.nan))


async def test_stdio_mcp_answers_a_nan_result_with_a_clean_refusal() -> None:
    from aralnode.bridge.mcp_stdio import RemoteTools
    from aralnode.core.clock import SYSTEM_CLOCK
    from aralnode.service.context import ContextBuilder

    contexts = ContextBuilder(SYSTEM_CLOCK)
    server = mcp_bridge.build_server(
        RemoteTools(_NanNode(), _NoDocs()), name="nan", version="0",
        context=lambda _ctx: contexts.build("mcp", peer="stdio"),
    )  # fmt: skip
    async with Client(server) as client:
        result = await client.call_tool(tool_name("odd.nan"), {})
    assert result.is_error
    body = strict(result.content[0].text)  # type: ignore[union-attr]
    assert body["error"]["reason"] == "RESULT_NOT_JSON", body


class _NoDocs:
    def for_files(self, files: Any) -> dict[str, str]:
        return {}


def test_a_grpc_status_carries_details_as_json_whatever_they_hold() -> None:
    """ErrorInfo metadata (what grpcurl shows) holds each detail as a string or JSON
    text: a NaN or an object in a capability's details is a string there, not ``NaN``
    inside JSON text (invalid JSON) or a TypeError that loses the refusal."""
    from google.rpc import error_details_pb2, status_pb2

    exc = AralError("x", details={"n": math.nan, "o": object(), "l": [1, math.inf]})
    status = to_rpc_status(exc)
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(raw).details[0].Unpack(info)
    # Strings go as they are; anything else as JSON text (clients parse "[..." / "{...").
    assert info.metadata["n"] == "nan"
    assert info.metadata["o"].startswith("<object object")
    assert strict(info.metadata["l"]) == [1, "inf"]


async def test_parameters_nested_deeper_than_a_value_holds_are_refused_before_the_call(
    make_node: Callable[..., Node],
) -> None:
    """A tree 18 levels deep is 91 protobuf levels as a Value, past what one can carry
    inside a response: refused alike on every door (TOO_DEEP), the capability never
    run, rather than run and its answer lost on the way back."""
    deep = {"tree": _tree(18)}
    TAKEN.clear()
    async with node_with_doors(make_node) as (node, http):
        async with httpx.AsyncClient(base_url=f"http://{http}", timeout=10) as client:
            r = await client.post(
                "/v1/invoke", json={"call": {"capability": "test.take", "parameters": deep}}
            )
        assert (r.status_code, strict(r.text)["error"]["reason"]) == (400, "TOO_DEEP"), r.text
        async with NodeClient(node.address) as grpc_client:
            with pytest.raises(AralError) as info:
                await grpc_client.call("test.take", deep, timeout=10)
        assert info.value.reason == "TOO_DEEP"
        async with connect(f"ws://{http}/ws") as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "test.take",
                                      "parameters": deep}))  # fmt: skip
            assert strict(await ws.recv())["error"]["reason"] == "TOO_DEEP"
        async with Client(f"http://{http}/mcp") as mcp:
            result = await mcp.call_tool(tool_name("test.take"), deep)
        assert result.is_error
        assert strict(result.content[0].text)["error"]["reason"] == "TOO_DEEP"  # type: ignore[union-attr]
        with pytest.raises(AralError) as local:
            await node.invoke("test.take", deep, ctx=CallContext(door="local"))
        assert local.value.reason == "TOO_DEEP"
        assert TAKEN == []
        # One level less is carried there and back.
        shallow = {"tree": _tree(16)}
        assert await node.invoke("test.take", shallow, ctx=CallContext(door="local")) == 1


async def test_a_64_bit_integer_that_came_as_a_double_is_refused_not_rounded(
    make_node: Callable[..., Node],
) -> None:
    """A Struct (gRPC ``Invoke``'s parameters, ``POST /v1/invoke``'s) holds numbers as
    doubles: 2**53 + 1 arrives as 2**53. Given to an int64 field it is refused, as
    the doors that read JSON numbers refuse it; as a string it arrives exact."""
    node = make_node("wide", http_port=0)
    node.load(str(LIBRARY))
    big = 2**53 + 1
    async with node:
        async with NodeClient(node.address) as client:
            with pytest.raises(AralError) as info:
                await client.call(GET_BOOK, {"shelf": "sci", "bookId": big}, timeout=10)
            assert (info.value.code, info.value.reason) == ("invalid_request", "NOT_A_JSON_NUMBER")
            with pytest.raises(AralError) as exact:
                await client.call(GET_BOOK, {"shelf": "sci", "bookId": str(big)}, timeout=10)
        assert exact.value.code == "not_found"
        assert str(big) in exact.value.message  # the servicer was asked for this book
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            body = '{"call":{"capability":"%s","parameters":{"shelf":"sci","bookId":%d}}}'
            r = await http.post(
                "/v1/invoke", content=body % (GET_BOOK, big),
                headers={"content-type": "application/json"},
            )  # fmt: skip
        assert (r.status_code, r.json()["error"]["reason"]) == (400, "NOT_A_JSON_NUMBER")
