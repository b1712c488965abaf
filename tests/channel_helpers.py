"""Helpers the channel tests share."""

from __future__ import annotations

from aralnode import Node

# Channels that notice a silent peer within about a second and a half.
FAST = {"keepalive_ms": 300, "channel_timeout_ms": 1500}


async def linked(a: Node, b: Node) -> None:
    """``a`` dials ``b``; returns once both ends have the channel up."""
    await a.connect(b.address)
    assert a.channels is not None
    assert b.channels is not None
    assert await a.channels.wait_connected(b.node_id, 10)
    assert await b.channels.wait_connected(a.node_id, 10)
