"""Hostile peers against a node's mesh: what a self-made key speaking the real
protocol can make a node do (dial, keep, admit), and the bounds that stop it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from aralnode import Identity, Node, NodeClient
from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.channel import OpenParams, encode_batch, make_open
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import build_content, seal
from aralnode.core.errors import RateLimited
from aralnode.core.handshake import build_card
from aralnode.core.identity import KeyRing
from aralnode.core.outbox import InboundRecord
from tests.channel_helpers import FAST, linked
from tests.hostile import MIB, NodeProcess
from tests.test_channel_bad_input import EPOCH, RawStream, reason_of


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


@contextlib.asynccontextmanager
async def same_port(first: Listener, host: str, second: Listener, other: str) -> AsyncIterator[int]:
    """Both listeners on one port number, on two hosts. The port is the kernel's pick
    for the first host; another process may hold it on the second (or on every
    address), so a taken pick is given back and another drawn, a bounded number of
    times."""
    for _ in range(20):
        async with contextlib.AsyncExitStack() as stack:
            port = await stack.enter_async_context(first.on(host))
            try:
                await stack.enter_async_context(second.on(other, port))
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            yield port
            return
    raise AssertionError(f"no port free on both {host} and {other} in 20 draws")


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
    async with node, same_port(own, "127.0.0.1", victim, "127.0.0.2") as port:
        me = Identity.generate()
        async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
            # We connect from 127.0.0.1 and claim to be at 127.0.0.2 (the victim).
            await client.handshake(self_made_card(me, [("grpc", f"127.0.0.2:{port}")]))
        # The dial back reaches the host we came from (same port) ...
        await asyncio.wait_for(own.connected.wait(), 20)
    # ... and never the host the card named (it used to be dialled first).
    assert victim.connections == 0


# -- a peer that never acks ------------------------------------------------------------


class Greedy:
    """A self-made key that handshakes, opens a channel giving no credit (so nothing
    can be sent to it), sends requests with big answers and never acks one."""

    def __init__(self, address: str, node_id: str) -> None:
        self.address, self.node_id = address, node_id
        self.me = Identity.generate()
        self.stream = RawStream(address)
        self.seq = 0
        self.errors: list[pb.MessageError] = []
        self.changed = asyncio.Condition()  # notified as errors arrive
        self._reading: asyncio.Task[None] | None = None

    async def open(self) -> None:
        async with NodeClient(self.address, identity=self.me, keyring=KeyRing()) as client:
            await client.handshake(self_made_card(self.me, []))
        params = OpenParams(
            epoch=EPOCH, incarnation="i1", resume=InboundRecord(), window=0, max_batch=64
        )
        sent = make_open(self.me, recipient=self.node_id, clock=SYSTEM_CLOCK, params=params)
        await self.stream.open_with(sent)
        self._reading = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        # Read what comes (acks of our requests, errors), so nothing blocks on us.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for frame in self.stream.frames():
                if frame.WhichOneof("kind") == "errors":
                    async with self.changed:
                        self.errors.extend(frame.errors.errors)
                        self.changed.notify_all()

    def request(self, params: object, action: str = "demo.echo") -> bytes:
        self.seq += 1
        body = pb.Body(
            type=pb.MessageType.MESSAGE_TYPE_REQUEST, action=action, parameters=codec.encode(params)
        )
        content = build_content(
            sender=self.me.node_id, recipient=self.node_id, body=body, clock=SYSTEM_CLOCK
        )
        content.header.channel.epoch = EPOCH
        content.header.channel.seq = self.seq
        return seal(content, self.me).SerializeToString()

    async def send(self, requests: list[bytes]) -> None:
        first = self.seq - len(requests) + 1
        await self.stream.send_sealed(encode_batch(first, requests))

    async def leave(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        await self.stream.aclose()


def big_echo() -> dict[str, object]:
    """A 40 kB echo request whose answer is 2 MB, about 1.5 MB gzipped: base64 of
    random bytes, each copy farther back than gzip's 32 kB window can see."""
    return {"text": base64.b64encode(os.urandom(30_000)).decode(), "times": 50}


async def counters(address: str) -> dict[str, int]:
    async with NodeClient(address, keyring=KeyRing()) as client:
        return dict((await client.status()).counters)


async def until_counted(address: str, want: Callable[[dict[str, int]], bool], what: str) -> None:
    """Wait (bounded) until the node's counters satisfy ``want``."""
    async with asyncio.timeout(30):
        while not want(await counters(address)):  # noqa: ASYNC110 - nothing signals a counter
            await asyncio.sleep(0.1)  # a poll of another process, bounded (noqa: sleep-ok)
    assert want(await counters(address)), what


async def eventually(predicate: Callable[[], object], timeout: float = 10) -> None:
    """Poll a condition that no event announces, within a deadline."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing signals these changes
            await asyncio.sleep(0.01)  # node state nothing announces; bounded (noqa: sleep-ok)


@pytest.mark.slow
async def test_responses_a_peer_never_acks_are_bounded_and_released(tmp_path: Path) -> None:
    """Waves of self-made keys, each sending requests with big answers and acking
    none: each peer's unacked responses stay under its bound (the requests beyond it
    are refused, RESOURCE_EXHAUSTED), and all of a peer's state goes once it is
    forgotten, so the waves do not add up."""
    waves, peers, requests = 3, 2, 6
    config = {"keepalive_ms": 200, "peer_timeout_ms": 500, "channel_response_bytes": 4 * MIB}
    async with NodeProcess.running(tmp_path, **config) as node:
        await node.probe()
        base, fds = node.rss(), node.fds()
        served = (await counters(node.grpc_address)).get("invoke.ok", 0)
        for wave in range(1, waves + 1):
            greedy = [Greedy(node.grpc_address, node.node_id) for _ in range(peers)]
            for peer in greedy:
                await peer.open()
                await peer.send([peer.request(big_echo()) for _ in range(requests)])
            served += peers * requests
            await until_counted(
                node.grpc_address,
                lambda c, n=served: (
                    c.get("invoke.ok", 0) + c.get("channel.response_backlog_full", 0) >= n
                ),
                "every request served or refused",
            )
            for peer in greedy:
                await peer.leave()
            await until_counted(
                node.grpc_address,
                lambda c, n=wave * peers: c.get("channel.peer_forgotten", 0) >= n,
                "the peers that left are forgotten",
            )
        grown, fds_now = node.rss() - base, node.fds()
        print(f"\nRSS grew {grown / MIB:.1f} MiB; fds {fds} -> {fds_now}")
        got = await counters(node.grpc_address)
        # Answers past a peer's bound went as errors, its requests past it were refused.
        assert got.get("channel.response_withheld", 0) > 0
        assert grown < 40 * MIB
        assert fds_now <= fds + 8
        await node.probe()


async def test_requests_beyond_the_response_bound_are_refused_and_forgetting_frees_all(
    make_node: Callable[..., Node],
) -> None:
    """Answers count against the peer's bound until it acks them: an answer past it
    goes as RESOURCE_EXHAUSTED, and while the bound is reached every new request is
    refused at once (a per-message error, nothing queued). Forgetting the peer
    releases everything."""
    node = make_node("target", channel_response_bytes=64 * 1024)
    async with node:
        hub = node.channels
        assert hub is not None
        greedy = Greedy(node.address, node.node_id)
        await greedy.open()
        try:
            echo = {"text": base64.b64encode(os.urandom(30_000)).decode(), "times": 2}
            await greedy.send([greedy.request(echo) for _ in range(3)])
            pc = hub.peers[greedy.me.node_id]
            await eventually(lambda: len(pc.responses) == 3)
            # The first answer is kept (nothing else was); the others would pass the
            # bound: they are errors, small.
            first, *rest = [hub.outbox.get(pc.peer_id, seq) for seq, _ in pc.responses]
            assert first is not None
            assert len(first.sealed) > 64 * 1024
            assert all(e is not None and len(e.sealed) < 4096 for e in rest)
            assert pc.response_bytes < 64 * 1024 + 2 * len(first.sealed) + 4096
            await greedy.send([greedy.request(echo) for _ in range(2)])
            async with asyncio.timeout(10), greedy.changed:
                await greedy.changed.wait_for(lambda: len(greedy.errors) == 2)
            assert {e.seq: reason_of(e) for e in greedy.errors} == {
                4: "RESPONSE_BACKLOG_FULL",
                5: "RESPONSE_BACKLOG_FULL",
            }
            assert len(pc.responses) == 3  # the refused ones left nothing behind
        finally:
            await greedy.leave()
        node.peer_table.remove(greedy.me.node_id)  # what expiry does, later
        assert greedy.me.node_id not in hub.peers
        assert hub.outbox.count(greedy.me.node_id) == 0
        # A request of its that was still being applied finds nobody to answer.
        late = pb.Body(type=pb.MessageType.MESSAGE_TYPE_RESPONSE, correlation_id="late")
        hub.reply(pc, late, content_type=codec.JSON, compression="", trace_id="t")
        assert hub.outbox.count(greedy.me.node_id) == 0
        assert node.pipeline.counters["channel.peer_forgotten"] == 1
        assert await node.invoke("demo.add", {"a": 1, "b": 2}) == 3


async def test_a_forgotten_peer_that_comes_back_gets_new_messages(
    make_node: Callable[..., Node],
) -> None:
    """After forgetting a peer the numbering goes on, so a peer that remembers us
    (its receive marks) takes what we send next as new, not as a resend."""
    a, b = make_node("alpha", **FAST), make_node("beta", **FAST)
    async with a, b:
        await linked(b, a)  # b dials, and redials when a drops the channel
        sub = b.subscribe("n")
        for i in range(3):
            await a.notify(b.node_id, "n", i)
        assert [(await anext(sub)).data for _ in range(3)] == [0, 1, 2]
        assert a.channels is not None
        assert await a.channels.flush(b.node_id, 10)
        a.peer_table.remove(b.node_id)  # forgotten: b's link closes, b redials
        assert b.node_id not in a.channels.peers
        assert await a.channels.wait_connected(b.node_id, 20)
        await a.notify(b.node_id, "n", "after")
        assert (await asyncio.wait_for(anext(sub), 10)).data == "after"


# -- inbound places ----------------------------------------------------------------------


class Relay:
    """A local port whose connections reach ``target`` from another loopback address
    (grpc cannot bind a client's source address): a peer "from" ``source``."""

    def __init__(self, target_port: int, source: str) -> None:
        self.target_port, self.source = target_port, source
        self._pipes: set[asyncio.Task[None]] = set()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port, local_addr=(self.source, 0)
        )
        for pipe in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            task = asyncio.ensure_future(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        try:
            async with server:
                yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            for task in list(self._pipes):
                task.cancel()
            await asyncio.gather(*self._pipes, return_exceptions=True)


async def hold_channel(address: str, node_id: str) -> RawStream | str:
    """A fresh key's handshake and open channel through ``address``: the stream (to
    hold), or the reason the handshake was refused."""
    me = Identity.generate()
    async with NodeClient(address, identity=me, keyring=KeyRing()) as client:
        try:
            await client.handshake(self_made_card(me, []))
        except RateLimited as exc:
            return exc.reason
    stream = RawStream(address)
    params = OpenParams(epoch=EPOCH, incarnation="i1", resume=InboundRecord(), window=8)
    answer = await stream.open_with(
        make_open(me, recipient=node_id, clock=SYSTEM_CLOCK, params=params)
    )
    assert answer.sender == node_id
    return stream


@pytest.mark.slow
async def test_keys_holding_channels_cannot_keep_new_peers_out(tmp_path: Path) -> None:
    """Throwaway keys from a handful of addresses take every place for peers that
    dialled us and hold channels there; each address gets its share only, and a new
    peer still gets in (in the place of one from the address holding the most)."""
    addresses, keys = 8, 9  # 72 keys; 64 places (8 per address)
    held: list[RawStream] = []
    async with NodeProcess.running(tmp_path) as node:
        await node.probe()
        base, fds = node.rss(), node.fds()
        port = int(node.grpc_address.rpartition(":")[2])
        async with contextlib.AsyncExitStack() as stack:
            refused: list[str] = []
            for i in range(addresses):
                relayed = await stack.enter_async_context(Relay(port, f"127.0.0.{i + 2}").running())
                for _ in range(keys):
                    got = await hold_channel(relayed, node.node_id)
                    if isinstance(got, str):
                        refused.append(got)
                    else:
                        held.append(got)
            try:
                # A new peer (from 127.0.0.1) is admitted and opens its channel.
                newcomer = await hold_channel(node.grpc_address, node.node_id)
                grown, fds_now = node.rss() - base, node.fds()
                print(f"\nRSS grew {grown / MIB:.1f} MiB; fds {fds} -> {fds_now}; {newcomer!r}")
                assert isinstance(newcomer, RawStream), newcomer
                held.append(newcomer)
                assert refused == ["TOO_MANY_PEERS_FROM_ADDRESS"] * addresses
                got = await counters(node.grpc_address)
                assert got.get("discovery.inbound_evicted", 0) == 1
                assert grown < 32 * MIB
                assert fds_now <= fds + 64 + 16  # a socket per held channel at most
                await node.probe()
            finally:
                for stream in held:
                    await stream.aclose()
