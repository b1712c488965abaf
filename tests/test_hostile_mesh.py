"""Hostile peers against a node's mesh: what a self-made key speaking the real
protocol can make a node do (dial, keep, admit), and the bounds that stop it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aralnode import Identity, Node, NodeClient
from aralnode import _proto as pb
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.handshake import build_card
from aralnode.core.identity import KeyRing


class Listener:
    """A TCP port that counts who connects to it (and hangs up on them)."""

    def __init__(self) -> None:
        self.connections = 0
        self.connected = asyncio.Event()

    async def _accept(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.connected.set()
        writer.close()

    @contextlib.asynccontextmanager
    async def on(self, host: str, port: int = 0) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._accept, host, port)
        async with server:
            yield server.sockets[0].getsockname()[1]


def self_made_card(me: Identity, endpoints: list[tuple[str, str]]) -> pb.SignedNodeCard:
    return build_card(
        me, name="stranger", endpoints=endpoints, registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
    )


async def test_a_card_cannot_make_the_node_dial_another_host(
    make_node: Callable[..., Node],
) -> None:
    """A peer that dialled us is dialled back only where its connection came from:
    the addresses its (self-signed, unverified) card lists are someone else's
    network, a blind SSRF. The port may come from the card; the host may not."""
    node = make_node("target", discovery="static")  # dials back peers that dialled it
    victim, own = Listener(), Listener()
    async with node, own.on("127.0.0.1") as port, victim.on("127.0.0.2", port):
        me = Identity.generate()
        async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
            # We connect from 127.0.0.1 and claim to be at 127.0.0.2 (the victim).
            await client.handshake(self_made_card(me, [("grpc", f"127.0.0.2:{port}")]))
        # The dial back reaches the host we came from (same port) ...
        await asyncio.wait_for(own.connected.wait(), 20)
    # ... and never the host the card named (it used to be dialled first).
    assert victim.connections == 0
