"""The harness the hostile tests stand on: a node process, measured from outside."""

from __future__ import annotations

from pathlib import Path

from tests.hostile import MIB, NodeProcess


async def test_a_node_process_is_measured_and_probed(tmp_path: Path) -> None:
    async with NodeProcess.running(tmp_path / "n") as node:
        assert 8 * MIB < node.rss() < 1024 * MIB
        assert node.fds() > 3  # stdio, and the node's sockets
        await node.probe()
        assert node.alive()
    assert not node.alive()
