"""Hostile input on a node's Channel stream: a clean close with a status, or a
per-message error -- never an unhandled exception -- and the node keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from aralnode import Node
from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.channel import (
    FrameSeal,
    OpenParams,
    SentOpen,
    encode_batch,
    encode_sealed,
    frame_keys,
    make_open,
)
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import build_content, seal
from aralnode.core.errors import Unauthenticated, Unavailable
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.outbox import InboundRecord
from aralnode.mesh.streams import CHANNEL_METHOD, _accept
from aralnode.transport.grpc_client import NodeClient
from tests.conftest import recorded

MakeNode = Callable[..., Node]
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
EPOCH = "e1"


class RawStream:
    """A Channel stream we drive frame by frame. After ``open_with`` it holds the
    session keys, so it speaks the protocol like a (possibly misbehaving) peer."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        stub: Any = self.channel.stream_stream(
            CHANNEL_METHOD, request_serializer=None, response_deserializer=None
        )
        self.call = stub()
        self.seal: FrameSeal | None = None
        self.answer = pb.ChannelOpenContent()

    async def send(self, frame: bytes) -> None:
        await self.call.write(frame)

    async def send_sealed(self, body: bytes) -> None:
        assert self.seal is not None
        await self.call.write(self.seal.seal(body))

    async def open_with(self, sent: SentOpen) -> pb.ChannelOpenContent:
        """Send our open, read the answer, key the session."""
        await self.send(sent.frame)
        answer = await self.next_of("open")
        self.answer = pb.ChannelOpenContent.FromString(answer.open.content)
        self.seal = frame_keys(sent, self.answer, dialler=True)
        return self.answer

    async def frames(self) -> AsyncIterator[pb.ChannelFrame]:
        while True:
            data = await self.call.read()
            if data is _EOF:
                return
            frame = pb.ChannelFrame.FromString(data)
            if frame.WhichOneof("kind") == "sealed":
                assert self.seal is not None
                frame = pb.ChannelFrame.FromString(self.seal.open(frame.sealed))
            yield frame

    async def next_of(self, kind: str) -> pb.ChannelFrame:
        async for frame in self.frames():
            if frame.WhichOneof("kind") == kind:
                return frame
        raise AssertionError(f"stream ended without a {kind} frame")

    async def closed_with(self) -> tuple[pb.ChannelClose, grpc.StatusCode]:
        close = (await self.next_of("close")).close
        code = await self.call.code()
        return close, code

    async def aclose(self) -> None:
        self.call.cancel()
        await self.channel.close()


@pytest.fixture
async def node(make_node: MakeNode) -> AsyncIterator[Node]:
    n = make_node("target", keepalive_ms=2000)
    async with n:
        yield n


@pytest.fixture
async def stream(node: Node) -> AsyncIterator[RawStream]:
    s = RawStream(node.address)
    yield s
    await s.aclose()


async def verified_identity(node: Node) -> Identity:
    """A peer that completed a handshake with ``node`` (so its key is pinned there)."""
    me = Identity.generate()
    card = build_card(
        me, name="raw", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
    )
    async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
        await client.handshake(card)
    return me


def make_our_open(me: Identity, node: Node, **fields: Any) -> SentOpen:
    base: dict[str, Any] = {"epoch": EPOCH, "incarnation": "i1", "resume": InboundRecord()}
    base.update(window=64, max_batch=16)
    base.update(fields)
    return make_open(me, recipient=node.node_id, clock=SYSTEM_CLOCK, params=OpenParams(**base))


def open_frame(me: Identity, node: Node) -> bytes:
    return make_our_open(me, node).frame


def message(
    me: Identity,
    node: Node,
    event: str = "evt",
    message_id: str | None = None,
    *,
    seq: int,
    epoch: str = EPOCH,
    parameters: bytes | None = None,
) -> pb.ARALMessage:
    body = pb.Body(
        type=pb.MessageType.MESSAGE_TYPE_NOTIFICATION,
        action=event,
        parameters=codec.encode({"x": 1}) if parameters is None else parameters,
    )
    content = build_content(
        sender=me.node_id,
        recipient=node.node_id,
        body=body,
        clock=SYSTEM_CLOCK,
        message_id=message_id,
    )
    content.header.channel.epoch = epoch
    content.header.channel.seq = seq
    return seal(content, me)


async def opened(node: Node, **fields: Any) -> tuple[Identity, RawStream]:
    me = await verified_identity(node)
    s = RawStream(node.address)
    answer = await s.open_with(make_our_open(me, node, **fields))
    assert answer.sender == node.node_id
    return me, s


async def still_serves(node: Node, make_node: MakeNode) -> None:
    other = make_node("other", keepalive_ms=2000)
    async with other:
        await other.connect(node.address)
        assert await other.request(node.node_id, "demo.add", {"a": 1, "b": 1}, timeout=10) == 2


async def rpc_reason(call: Any) -> str:
    """The ErrorInfo reason of a finished RPC."""
    for key, value in await call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def reason_of(err: pb.MessageError) -> str:
    return err.error.details.fields["reason"].string_value


def refused_opens(seen: list[Any]) -> list[tuple[str, str, str, str]]:
    return [(r.action, r.point, r.reason, r.caller) for r in seen if r.point == "connect"]


async def test_garbage_first_frame(node: Node, stream: RawStream, make_node: MakeNode) -> None:
    seen = recorded(node)
    await stream.send(b"\xff\x00garbage\x01")
    close, code = await stream.closed_with()
    assert close.reason == "MALFORMED_MESSAGE"
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # On record, as a hello that does not verify is (from review: nothing was).
    assert refused_opens(seen) == [
        ("aral.v1.AgentNode/Channel", "connect", "MALFORMED_MESSAGE", "")
    ]
    await still_serves(node, make_node)


async def test_frames_before_the_open(node: Node, stream: RawStream) -> None:
    me = Identity.generate()
    await stream.send(encode_batch(1, [message(me, node, seq=1).SerializeToString()]))
    close, code = await stream.closed_with()
    assert close.reason == "CHANNEL_NOT_OPEN"
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_open_from_an_unverified_peer(node: Node, stream: RawStream) -> None:
    seen = recorded(node)
    stranger = Identity.generate()  # never did a handshake
    await stream.send(open_frame(stranger, node))
    close, code = await stream.closed_with()
    assert close.reason == "PEER_NOT_VERIFIED"
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert refused_opens(seen) == [
        ("aral.v1.AgentNode/Channel", "connect", "PEER_NOT_VERIFIED", "")
    ]


async def test_replayed_open(node: Node) -> None:
    me = await verified_identity(node)
    frame = open_frame(me, node)
    first = RawStream(node.address)
    second = RawStream(node.address)
    try:
        await first.send(frame)
        await first.next_of("open")
        await second.send(frame)
        close, code = await second.closed_with()
        assert close.reason == "REPLAY_DETECTED"
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.parametrize("attempt", ["bare", "guessed-key", "random-mac"])
async def test_an_open_replayed_first_cannot_speak(
    node: Node, make_node: MakeNode, attempt: str
) -> None:
    """Mallory captures a peer's open and replays it on her own stream before the
    real one arrives: the node answers, but without the peer's ephemeral private
    key she cannot produce a frame -- not a batch, not a forged ack -- it accepts."""
    assert node.channels is not None
    me = await verified_identity(node)
    for i in range(3):
        await node.notify(me.node_id, "queued", {"i": i})  # waiting for `me`
    captured = make_our_open(me, node)
    mallory = RawStream(node.address)
    try:
        await mallory.send(captured.frame)
        answer = pb.ChannelOpenContent.FromString((await mallory.next_of("open")).open.content)
        forged_ack = pb.ChannelFrame(ack=pb.Ack(seq=2**62)).SerializeToString()
        batch = encode_batch(1, [message(me, node, "evil", seq=1).SerializeToString()])
        if attempt == "bare":
            await mallory.send(batch)
            expected = "FRAME_NOT_SEALED"
        else:
            if attempt == "guessed-key":
                own = make_our_open(me, node)  # her own ephemeral key in place of me's
                mallory.seal = frame_keys(own, answer, dialler=True)
                await mallory.send(mallory.seal.seal(forged_ack))
            else:
                await mallory.send(encode_sealed(forged_ack, bytes(16)))
            mallory.seal = None
            expected = "FRAME_MAC_INVALID"
        # The node closes: its close is sealed for the real peer (she cannot read
        # it), and the RPC ends with the status.
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (data := await mallory.call.read()) is not _EOF:
                assert pb.ChannelFrame.FromString(data).WhichOneof("kind") == "sealed"
        assert await mallory.call.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await rpc_reason(mallory.call) == expected
        pc = node.channels.peers[me.node_id]
        assert pc.inbound.accepted_seq == 0  # nothing of hers was taken
        assert node.channels.outbox.count(me.node_id) == 3  # nor her forged ack
        assert node.pipeline.counters["channel.received"] == 0
    finally:
        await mallory.aclose()
    await still_serves(node, make_node)


async def test_bad_messages_get_per_message_errors(node: Node, make_node: MakeNode) -> None:
    assert node.channels is not None
    me, s = await opened(node)
    seen = recorded(node)
    try:
        sub = node.subscribe()
        good = message(me, node, "good", seq=1)
        forged = message(me, node, "forged", seq=2)
        forged.signature.value = bytes(64)  # right length, wrong signature
        stranger = message(Identity.generate(), node, "stranger", seq=3)  # someone else's
        garbage = pb.ARALMessage(content=b"\x08\xff\xff", signature=good.signature)
        elsewhere = message(me, node, "elsewhere", seq=9)  # bound to another position
        other_epoch = message(me, node, "old", seq=6, epoch="e0")
        batch = [good, forged, stranger, garbage, elsewhere, other_epoch]
        await s.send_sealed(encode_batch(1, [m.SerializeToString() for m in batch]))
        errors = (await s.next_of("errors")).errors.errors
        assert {e.seq: reason_of(e) for e in errors} == {
            2: "SIGNATURE_INVALID",
            3: "KEY_MISMATCH",
            4: "SIGNATURE_INVALID",
            5: "CHANNEL_BINDING_MISMATCH",
            6: "CHANNEL_BINDING_MISMATCH",
        }
        assert (await anext(sub)).event == "good"
        # The same message id again, at a new sequence number: a replay.
        again = message(me, node, "good", message_id=good_id(good), seq=7)
        withdrawn = pb.ARALMessage()  # a tombstone: the sender withdrew seq 8
        await s.send_sealed(encode_batch(7, [again.SerializeToString(), b""]))
        (err,) = (await s.next_of("errors")).errors.errors
        assert (err.seq, reason_of(err)) == (7, "REPLAY_DETECTED")
        assert withdrawn.ByteSize() == 0
        # Everything was acked, delivered or not.
        while (await s.next_of("ack")).ack.seq < 8:
            pass
        assert node.pipeline.counters["channel.withdrawn"] == 1
        # Channel traffic stays out of the node-wide replay cache (only the open).
        assert len(node.replay) <= 2
        # Each refusal is audited, though the pipeline never judged it: under the
        # channel (not the action its unverified content names), from its peer.
        refused = [r for r in seen if r.point == "pre"]
        assert [r.reason for r in refused] == [
            "SIGNATURE_INVALID", "KEY_MISMATCH", "SIGNATURE_INVALID",
            "CHANNEL_BINDING_MISMATCH", "CHANNEL_BINDING_MISMATCH", "REPLAY_DETECTED",
        ]  # fmt: skip
        assert {(r.door, r.action, r.direction, r.peer) for r in refused} == {
            ("channel", "aral.v1.AgentNode/Channel", "receive", me.node_id)
        }
        assert [r.action for r in seen if r.point != "pre"] == ["good"]
    finally:
        await s.aclose()
    await still_serves(node, make_node)


async def test_a_message_with_a_member_twice_is_refused_as_the_doors_refuse_it(
    node: Node,
) -> None:
    """A signed notification whose JSON has a member twice: the parser would keep the
    last, silently; refused as REST, MCP, A2A and the WebSocket refuse such a body,
    and audited; the next message is delivered."""
    me, s = await opened(node)
    seen = recorded(node)
    try:
        sub = node.subscribe()
        twice = message(me, node, "twice", seq=1, parameters=b'{"x":1,"y":{"z":1,"z":2}}')
        after = message(me, node, "after", seq=2, parameters=b'{"url":"http://x/\\":y"}')
        await s.send_sealed(encode_batch(1, [twice.SerializeToString(), after.SerializeToString()]))
        (err,) = (await s.next_of("errors")).errors.errors
        assert (err.seq, reason_of(err)) == (1, "DUPLICATE_PARAMETER")
        delivered = await anext(sub)
        assert (delivered.event, delivered.data) == ("after", {"url": 'http://x/":y'})
        refused = [(r.door, r.point, r.reason) for r in seen if r.reason]
        assert refused == [("channel", "pre", "DUPLICATE_PARAMETER")], refused
    finally:
        await s.aclose()


def good_id(msg: pb.ARALMessage) -> str:
    return pb.MessageContent.FromString(msg.content).header.message_id


async def test_oversized_batch_closes_the_channel(node: Node, make_node: MakeNode) -> None:
    me, s = await opened(node)
    try:
        many = [message(me, node, seq=i + 1).SerializeToString() for i in range(300)]
        await s.send_sealed(encode_batch(1, many))  # max_batch is 256
        close, code = await s.closed_with()
        assert close.reason == "BATCH_TOO_LARGE"
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await s.aclose()
    await still_serves(node, make_node)


@pytest.mark.parametrize(
    ("frame", "reason", "status"),
    [
        (pb.ChannelFrame().SerializeToString(), "EMPTY_FRAME", grpc.StatusCode.INVALID_ARGUMENT),
        (b"\x0a\x00", "UNEXPECTED_OPEN", grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.ChannelFrame(ack=pb.Ack(seq=2**62)).SerializeToString(),
            "ACK_BEYOND_SENT",
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (encode_batch(2**62, [b""]), "SEQ_GAP", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_protocol_violations_close_the_channel(
    node: Node, frame: bytes, reason: str, status: grpc.StatusCode
) -> None:
    """Even from the authenticated peer: a forged-looking ack cannot delete the
    outbox, a jump in sequence numbers cannot blackhole later messages."""
    assert node.channels is not None
    me = await verified_identity(node)
    for i in range(3):
        await node.notify(me.node_id, "queued", {"i": i})
    s = RawStream(node.address)
    try:
        await s.open_with(make_our_open(me, node))
        await s.send_sealed(frame)
        close, code = await s.closed_with()
        assert (close.reason, code) == (reason, status)
    finally:
        await s.aclose()
    assert node.channels.outbox.count(me.node_id) == 3
    assert node.channels.peers[me.node_id].inbound.accepted_seq == 0


async def test_unsealed_frames_after_the_open_close(node: Node) -> None:
    me, s = await opened(node)
    seen = recorded(node)
    try:
        await s.send(encode_batch(1, [message(me, node, seq=1).SerializeToString()]))
        close, code = await s.closed_with()
        assert (close.reason, code) == ("FRAME_NOT_SEALED", grpc.StatusCode.UNAUTHENTICATED)
    finally:
        await s.aclose()
    # The disconnect record says why (it said "ok", from review).
    assert node.channels is not None
    async with asyncio.timeout(10):
        await node.channels.peers[me.node_id].wait_down()
    ended = [(r.outcome, r.reason) for r in seen if r.point == "disconnect"]
    assert ended == [("unauthorized", "FRAME_NOT_SEALED")]


async def test_resume_after_beyond_what_was_sent_is_clamped(node: Node) -> None:
    """A resume_after past the last seq the node assigned must not drop its
    unsent messages."""
    assert node.channels is not None
    me = await verified_identity(node)
    for i in range(3):
        await node.notify(me.node_id, "queued", {"i": i})
    resume = InboundRecord(node.channels.outbox.epoch, 2**40, 0)
    s = RawStream(node.address)
    try:
        await s.open_with(make_our_open(me, node, resume=resume))
        batch = (await s.next_of("batch")).batch
        assert (batch.first_seq, len(batch.messages)) == (1, 3)
    finally:
        await s.aclose()
    assert node.pipeline.counters["channel.resume_clamped"] == 1


async def test_invoke_refuses_channel_bound_messages(node: Node) -> None:
    """A captured channel request cannot be relayed through the unary door."""
    me = await verified_identity(node)
    body = pb.Body(
        type=pb.MessageType.MESSAGE_TYPE_REQUEST,
        action="demo.add",
        parameters=codec.encode({"a": 1, "b": 2}),
    )
    content = build_content(
        sender=me.node_id, recipient=node.node_id, body=body, clock=SYSTEM_CLOCK
    )
    content.header.channel.epoch = EPOCH
    content.header.channel.seq = 1
    request = pb.InvokeRequest(message=seal(content, me))
    async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
        with pytest.raises(Unauthenticated) as info:
            await client._rpc(lambda: client.stub.Invoke(request, timeout=10))
    assert info.value.reason == "CHANNEL_BOUND_MESSAGE"


async def test_an_answer_that_cannot_be_written_leaves_no_live_link(node: Node) -> None:
    """The accepting side attaches the link, then writes its answer. When that write
    fails (the dialler is already gone), the link must still end closed and
    detached: attached but never run, it counted as the peer's live channel forever,
    and discovery never let the dead peer go."""
    me = await verified_identity(node)
    hub = node.channels
    assert hub is not None
    never = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield open_frame(me, node)
        await never.wait()  # the dialler sends nothing more

    async def gone(frame: bytes) -> None:
        raise Unavailable("the channel stream is gone", reason="CHANNEL_ENDED")

    error = await asyncio.wait_for(_accept(hub, requests(), gone, "test"), 10)
    assert error is not None
    assert error.reason == "CHANNEL_ENDED"
    assert not hub.peers[me.node_id].connected
    assert me.node_id not in hub.connected_peers()


async def test_queued_batches_go_out_up_to_the_window_without_waiting_for_acks(
    make_node: MakeNode,
) -> None:
    """More than one batch queued goes out batch after batch while the window allows,
    with nothing from the peer in between: the writer must not sit waiting for a
    wake-up (the keepalive timer is a minute away). The rest goes once an ack opens
    the window again."""
    n = make_node("target", keepalive_ms=60_000, peer_timeout_ms=120_000)
    async with n:
        me = await verified_identity(n)
        for i in range(40):
            await n.notify(me.node_id, "queued", {"i": i})
        s = RawStream(n.address)

        async def seqs_until(last: int) -> list[int]:
            seqs: list[int] = []
            while not seqs or seqs[-1] < last:
                batch = (await s.next_of("batch")).batch
                seqs += range(batch.first_seq, batch.first_seq + len(batch.messages))
            return seqs

        try:
            await s.open_with(make_our_open(me, n, max_batch=16, window=32))
            async with asyncio.timeout(20):  # a liveness bound, far below the keepalive
                assert await seqs_until(32) == list(range(1, 33))  # two batches, unacked
                await s.send_sealed(pb.ChannelFrame(ack=pb.Ack(seq=32)).SerializeToString())
                assert await seqs_until(40) == list(range(33, 41))
        finally:
            await s.aclose()
