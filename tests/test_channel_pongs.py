"""A channel peer that pings and never reads is owed one pong, not one per ping.

A pong echoes one ping's id and acknowledges nothing else, so the newest ping's is
all a session keeps: however many pings arrive while its writer is blocked on a
peer that does not read, what it owes stays one frame.
"""

from __future__ import annotations

from aralnode import _proto as pb
from aralnode.core.channel import ChannelSession, FrameSeal, Inbound, LinkState, OpenParams
from aralnode.core.clock import FixedClock
from aralnode.core.identity import Identity
from aralnode.core.outbox import InboundRecord

ALICE = Identity.generate()
BOB = Identity.generate()
K_AB, K_BA = b"a" * 32, b"b" * 32  # alice->bob, bob->alice


class Link:
    """Alice's session and Bob's end of the stream (he seals what he sends)."""

    def __init__(self, clock: FixedClock) -> None:
        self.bob = FrameSeal(K_BA, K_AB)
        ours = OpenParams(
            epoch="ea",
            incarnation="i",
            resume=InboundRecord(),
            window=8,
            keepalive_ms=1000,
            max_batch=4,
            first_unacked=1,
        )
        theirs = pb.ChannelOpenContent(
            sender=BOB.node_id,
            recipient=ALICE.node_id,
            nonce=b"n" * 12,
            timestamp_unix_ms=1,
            window=8,
            keepalive_ms=1000,
            session_epoch="eb",
            max_batch=4,
        )
        self.s = ChannelSession(
            peer_open=theirs,
            params=ours,
            inbound=Inbound(InboundRecord(), window=8),
            seal=FrameSeal(K_AB, K_BA),
            clock=clock,
            timeout_ms=500,
            max_frame_bytes=1 << 20,
            sent_limit=1000,
        )
        self.s.inbound.start("eb")

    def ping(self, ping_id: int) -> None:
        events = self.s.receive(
            self.bob.seal(pb.ChannelFrame(ping=pb.Ping(id=ping_id)).SerializeToString())
        )
        assert events == []

    def read(self, data: bytes) -> pb.ChannelFrame:
        """What Alice sent, as Bob reads it (in order: the MAC counter)."""
        return pb.ChannelFrame.FromString(self.bob.open(pb.ChannelFrame.FromString(data).sealed))


def test_a_ping_flood_leaves_one_pong_owed_for_the_newest_ping() -> None:
    link = Link(FixedClock())
    for ping_id in range(1, 20_001):  # the writer never gets a turn meanwhile
        link.ping(ping_id)
    assert link.s.state is LinkState.OPEN
    frames = link.s.control_frames()
    assert len(frames) == 1
    assert link.read(frames[0]).pong.id == 20_000
    assert link.s.control_frames() == []  # paid: nothing more is owed


def test_each_turn_owes_at_most_one_pong_and_acks_still_go_out() -> None:
    clock = FixedClock()
    link = Link(clock)
    link.s.receive(
        link.bob.seal(
            pb.ChannelFrame(
                batch=pb.MessageBatch(first_seq=1, messages=[pb.ARALMessage(content=b"m")])
            ).SerializeToString()
        )
    )
    link.s.inbound.processed(link.s.inbound.generation, 1)
    assert link.s.control_frames() == []  # the ack waits briefly (a batch may carry it)
    for ping_id in (7, 0, 5):  # ids need not grow; id 0 is a ping too
        link.ping(ping_id)
    clock.advance(1.0)  # past the ack delay
    frames = [link.read(f) for f in link.s.control_frames()]
    assert [f.WhichOneof("kind") for f in frames] == ["pong", "ack"]
    assert (frames[0].pong.id, frames[1].ack.seq) == (5, 1)
    link.ping(0)
    (pong,) = link.s.control_frames()
    assert link.read(pong).pong.id == 0
