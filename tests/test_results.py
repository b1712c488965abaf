"""What a plain ``Invoke`` gives back: its ``google.protobuf.Value`` result, read by
``unwrap`` (``aralnode call`` and MCP over stdio use it), keeps a capability's ints."""

from __future__ import annotations

import pytest

from aralnode import Node, NodeClient
from aralnode.testing import node_pair
from aralnode.transport.grpc_client import unwrap

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
