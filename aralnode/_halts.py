"""Halts and channel ends wired into a starting node (issue 16): a halted peer is
dropped from the mesh (its channel closed, its dial stopped) and opens no channel;
every channel's end is audited (the disconnection point); every peer we dial passes
the connection point too (service/connections.py)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aralnode.config import NodeConfig
from aralnode.core.audit import AuditRecord, Point
from aralnode.core.clock import Clock
from aralnode.core.errors import AralError
from aralnode.core.governance import Direction
from aralnode.core.peers import PeerTable
from aralnode.mesh.hub import ChannelHub
from aralnode.service.halts import PEER, HaltEntry
from aralnode.service.pipeline import Pipeline


class NodeView(Protocol):
    """What of the node the wiring reads (``_assembly.NodeView`` has it all)."""

    config: NodeConfig
    clock: Clock
    peer_table: PeerTable
    pipeline: Pipeline


def wire_halts(node: NodeView, hub: ChannelHub) -> None:
    """A halted peer dropped; every channel's end audited."""
    stages = node.pipeline.stages
    grace = node.config.channel_timeout_ms / 1000

    async def drop(peer_id: str) -> None:
        # The halted call's refusal (queued for the peer) goes out first, bounded:
        # then the table forgets the peer, and its streams and hub let it go.
        if peer_id in hub.peers:
            await hub.flush(peer_id, grace)
        if node.peer_table.get(peer_id) is not None:
            node.peer_table.remove(peer_id)
        else:
            hub.forget(peer_id)  # a peer that dialled us and was never in our table

    def on_halt(event: str, entry: HaltEntry) -> None:
        if event == "halted" and entry.kind == PEER:
            # Not inside the halted call: its refusal must still be answered.
            hub.track(asyncio.ensure_future(drop(entry.subject)))

    def on_link(peer_id: str, up: bool) -> None:
        if up:
            return
        pc = hub.peers.get(peer_id)
        error = pc.ended_by if pc is not None else None
        halts = stages.govern.halts
        # Why it ended: halted, or what ended it (a frame that did not verify, say);
        # a peer's clean close is "ok".
        reason = "HALTED" if halts and halts.is_halted(peer_id) else ""
        outcome = "closed" if reason else "ok"
        if not reason and error is not None:
            outcome, reason = error.code, error.reason
        record = AuditRecord(
            door="channel", caller=peer_id, principal=peer_id, action="disconnect",
            direction=Direction.DISCONNECT.value, peer=peer_id, trace_id="", decision="",
            outcome=outcome, reason=reason, point=Point.DISCONNECT,
        )  # fmt: skip
        # The channel has ended either way; a failed write is logged and counted.
        with contextlib.suppress(AralError):
            stages.audit.record(record)

    hub.link_listeners.append(on_link)
    halts = stages.govern.halts
    if halts is not None:
        halts.listeners.append(on_halt)


__all__ = ["wire_halts"]
