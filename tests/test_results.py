"""What a plain ``Invoke`` gives back: its ``google.protobuf.Value`` result, read by
``unwrap`` (``aralnode call`` and MCP over stdio use it), keeps a capability's ints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2

from aralnode import Node, NodeClient, NodeConfig
from aralnode.core import codec
from aralnode.core.errors import AralError, MalformedMessage
from aralnode.testing import node_pair
from aralnode.transport.grpc_client import unwrap
from tests.conftest import DEMO

RESULT = {"n": 3, "half": 1.5, "items": [1, 2.5, {"year": 1980}], "none": None, "yes": True}


def _counts(node: Node) -> None:
    @node.capability(id="test.counts", risk="read_only")
    async def counts() -> dict[str, object]:
        return RESULT


@pytest.mark.parametrize("forwarded", [False, True])
async def test_an_int_result_comes_back_an_int(forwarded: bool) -> None:
    async with node_pair(_counts) as (a, b):
        # b runs it; asked directly, or through a (which forwards it to b).
        address, to = (a.address, b.node_id) if forwarded else (b.address, "")
        async with NodeClient(address) as client:
            result = await client.call("test.counts", {}, to=to, timeout=10)
    assert result.node_id == b.node_id
    value = unwrap(result)
    assert value == RESULT
    assert type(value["n"]) is int
    assert [type(x) for x in value["items"][:2]] == [int, float]
    assert type(value["items"][2]["year"]) is int
    assert type(value["half"]) is float
    assert value["yes"] is True


async def test_ints_stay_ints_on_the_way_in_and_out_of_every_door(tmp_path: Path) -> None:
    seen: list[object] = []
    node = Node(
        NodeConfig(name="ints", host="127.0.0.1", grpc_port=0, http_port=0,
                   discovery="none", data_dir=tmp_path)
    )  # fmt: skip

    node.load(str(Path(DEMO).parent / "library" / "server.py"))  # int32 fields

    @node.capability(id="test.echo_any", risk="read_only")
    async def echo_any(value: Any) -> Any:
        seen.append(value)
        return value

    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        # A plain gRPC call: the parameters reach the capability with their ints.
        async with NodeClient(node.address) as client:
            await client.call("test.echo_any", {"value": {"n": 7, "x": 0.5}}, timeout=10)
        assert seen[-1] == {"n": 7, "x": 0.5}
        assert type(seen[-1]["n"]) is int  # type: ignore[index]
        # REST /v1/invoke: the result's whole numbers print as ints.
        r = await http.post(
            "/v1/invoke",
            json={"call": {"capability": "test.echo_any", "parameters": {"value": [1980, 2.5]}}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["result"]["result"] == [1980, 2.5]
        assert '"result":[1980,2.5]' in r.text.replace(" ", "")
        # The schemas REST lists: an int32's bounds are ints, as JSON Schema has them.
        caps = (await http.get("/v1/capabilities")).json()["capabilities"]
        bounds = [v for c in caps for k, v in _items(c.get("inputSchema", {})) if k == "maximum"]
        assert 2147483647 in bounds  # library.v1's int32 fields (1980's year)
        assert all(type(v) is int for v in bounds), bounds


def _items(value: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair of a JSON document, at any depth."""
    if isinstance(value, dict):
        return [*value.items(), *(p for v in value.values() for p in _items(v))]
    if isinstance(value, list):
        return [p for v in value for p in _items(v)]
    return []


def test_protobuf_payloads_decode_like_json_ones() -> None:
    value = struct_pb2.Value()
    value.struct_value.update({"n": 3, "x": 1.5})
    decoded = codec.decode(value.SerializeToString(), codec.PROTOBUF)
    assert decoded == {"n": 3, "x": 1.5}
    assert type(decoded["n"]) is int
    nan = struct_pb2.Value(number_value=float("nan"))
    with pytest.raises(MalformedMessage):  # as JSON payloads refuse NaN
        codec.decode(nan.SerializeToString(), codec.PROTOBUF)


async def test_a_non_finite_result_is_a_clean_out_of_range_at_every_door(
    tmp_path: Path,
) -> None:
    """``1e308 + 1e308`` overflows to infinity, which no door can carry: the caller's
    values took the result out of range (OUT_OF_RANGE, 400), not a node failure."""
    node = Node(
        NodeConfig(name="inf", host="127.0.0.1", grpc_port=0, http_port=0,
                   discovery="none", data_dir=tmp_path)
    )  # fmt: skip

    @node.capability(id="test.overflow", risk="read_only")
    async def overflow(a: float, b: float) -> float:
        return a + b

    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        async with NodeClient(node.address) as client:
            with pytest.raises(AralError) as info:
                await client.call("test.overflow", {"a": 1e308, "b": 1e308}, timeout=10)
        assert info.value.code == "out_of_range"
        assert "has no JSON form" in info.value.message
        call = {"capability": "test.overflow", "parameters": {"a": 1e308, "b": 1e308}}
        r = await http.post("/v1/invoke", json={"call": call})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "out_of_range"
        assert r.json()["error"]["reason"] == "RESULT_NOT_JSON"


@pytest.mark.parametrize(
    "bad", [float("nan"), [1, float("-inf")], {"n": 10**400}, {"n": [2**53]}, -(2**60)]
)
def test_results_with_no_json_form_are_refused_as_such(bad: object) -> None:
    with pytest.raises(AralError, match="not JSON-representable") as info:
        codec.to_value(bad)
    assert info.value.code == "internal_error"


def test_an_int_a_double_cannot_hold_is_refused_not_changed() -> None:
    """A ``google.protobuf.Value`` carries numbers as doubles: 2**53 + 1 would arrive
    as 2**53. The Struct doors (gRPC Invoke, /v1/invoke) refuse it, saying why; the
    largest exact one goes through."""
    with pytest.raises(AralError, match="beyond ±2\\*\\*53"):
        codec.to_value({"id": 2**53 + 1})
    assert codec.from_value(codec.to_value(2**53 - 1)) == 2**53 - 1
