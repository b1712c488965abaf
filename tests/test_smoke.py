from __future__ import annotations

import pytest

from aralnode import CapabilityNotFound, Node, NodeClient
from aralnode.transport.grpc_client import unwrap


async def test_plain_call_returns_result(demo_node: Node) -> None:
    async with NodeClient(demo_node.address) as client:
        result = await client.call("demo.echo", {"text": "hi", "times": 2})
    assert unwrap(result) == {"text": "hi", "echo": ["hi", "hi"]}
    assert result.node_id == demo_node.node_id


async def test_unknown_capability_is_not_found(demo_node: Node) -> None:
    async with NodeClient(demo_node.address) as client:
        with pytest.raises(CapabilityNotFound) as info:
            await client.call("no.such", {})
    assert info.value.details == {"capability": "no.such"}
