"""The sans-IO channel protocol: no sockets, a fixed clock, property tests."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode import _proto as pb
from aralnode.core.channel import (
    MAX_SEQ,
    AckReceived,
    Batch,
    ChannelSession,
    Closed,
    ErrorsReceived,
    Event,
    FrameSeal,
    Inbound,
    LinkState,
    OpenParams,
    RecentIds,
    encode_batch,
    encode_sealed,
    frame_keys,
    make_open,
    read_open,
    verify_open,
)
from aralnode.core.clock import FixedClock
from aralnode.core.errors import (
    AralError,
    KeyMismatch,
    MalformedMessage,
    RateLimited,
    ReplayDetected,
    SignatureInvalid,
    Unauthenticated,
)
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.outbox import InboundRecord, OutboxEntry
from aralnode.core.replay import ReplayGuard

ALICE = Identity.generate()
BOB = Identity.generate()
K_AB, K_BA = b"a" * 32, b"b" * 32  # alice->bob, bob->alice


def params(window: int = 8, max_batch: int = 4, epoch: str = "ea", first: int = 1) -> OpenParams:
    return OpenParams(
        epoch=epoch,
        incarnation="i",
        resume=InboundRecord(),
        window=window,
        keepalive_ms=1000,
        max_batch=max_batch,
        first_unacked=first,
    )


def peer_open(**fields: object) -> pb.ChannelOpenContent:
    base: dict[str, object] = {
        "sender": BOB.node_id,
        "recipient": ALICE.node_id,
        "nonce": b"n" * 12,
        "timestamp_unix_ms": 1,
        "window": 8,
        "keepalive_ms": 1000,
        "session_epoch": "eb",
        "max_batch": 4,
    }
    base.update(fields)
    return pb.ChannelOpenContent(**base)  # type: ignore[arg-type]


class Link:
    """Alice's session and Bob's end of the stream (he seals what he sends)."""

    def __init__(
        self,
        clock: FixedClock | None = None,
        inbound: Inbound | None = None,
        *,
        sent_limit: int = 1000,
        ours: OpenParams | None = None,
        **fields: object,
    ) -> None:
        self.bob = FrameSeal(K_BA, K_AB)
        self.s = ChannelSession(
            peer_open=peer_open(**fields),
            params=ours or params(),
            inbound=inbound or Inbound(InboundRecord(), window=8),
            seal=FrameSeal(K_AB, K_BA),
            clock=clock or FixedClock(),
            timeout_ms=500,
            max_frame_bytes=1 << 20,
            sent_limit=sent_limit,
        )
        self.s.inbound.start("eb")

    def feed(self, body: bytes) -> list[Event]:
        """Bob sends the frame ``body`` (sealed)."""
        return self.s.receive(self.bob.seal(body))

    def read(self, data: bytes) -> pb.ChannelFrame:
        """What Alice sent, as Bob reads it."""
        return pb.ChannelFrame.FromString(self.bob.open(pb.ChannelFrame.FromString(data).sealed))


def entry(seq: int, data: bytes = b"m") -> OutboxEntry:
    return OutboxEntry(
        seq, f"id{seq}", 3, 0, 0, b"", pb.ARALMessage(content=data).SerializeToString()
    )


def batch_frame(first: int, n: int) -> bytes:
    msgs = [pb.ARALMessage(content=b"x%d" % i).SerializeToString() for i in range(n)]
    return encode_batch(first, msgs)


def ack(seq: int) -> bytes:
    return pb.ChannelFrame(ack=pb.Ack(seq=seq)).SerializeToString()


def closed(events: list[Event]) -> AralError:
    (event,) = events
    assert isinstance(event, Closed)
    assert not event.by_peer
    return event.error


# -- wire --------------------------------------------------------------------------------


@given(
    first=st.integers(1, 2**63),
    messages=st.lists(st.binary(max_size=300), max_size=20),
    ack=st.integers(0, 2**40),
)
def test_hand_encoded_batches_match_protobuf(first: int, messages: list[bytes], ack: int) -> None:
    sealed = [pb.ARALMessage(content=m).SerializeToString() for m in messages]
    frame = pb.ChannelFrame.FromString(encode_batch(first, sealed, ack))
    assert frame.WhichOneof("kind") == "batch"
    assert frame.batch.first_seq == first
    assert [m.content for m in frame.batch.messages] == messages
    assert frame.batch.ack == ack


@given(body=st.binary(max_size=3000), mac=st.binary(max_size=40))
def test_hand_encoded_sealed_frames_match_protobuf(body: bytes, mac: bytes) -> None:
    frame = pb.ChannelFrame.FromString(encode_sealed(body, mac))
    assert frame.WhichOneof("kind") == "sealed"
    assert (frame.sealed.body, frame.sealed.mac) == (body, mac)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_any_bytes_never_raise(data: bytes) -> None:
    link = Link()
    for event in link.s.receive(data) + Link().feed(data):
        assert isinstance(event, Batch | AckReceived | ErrorsReceived | Closed)


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_any_open_bytes_fail_cleanly(data: bytes) -> None:
    ring = KeyRing()
    ring.pin(BOB.public_key)
    with pytest.raises(AralError):
        verify_open(
            read_open(data),
            my_id=ALICE.node_id,
            keyring=ring,
            replay=ReplayGuard(FixedClock()),
            is_verified=lambda _: True,
        )


# -- opening -----------------------------------------------------------------------------


def test_open_round_trip_and_refusals() -> None:
    clock = FixedClock()
    ring = KeyRing()
    ring.pin(BOB.public_key)
    replay = ReplayGuard(clock, not_before_ms=0)
    sent = make_open(BOB, recipient=ALICE.node_id, clock=clock, params=params(epoch="eb"))
    opened = read_open(sent.frame)

    def check(**kw: object) -> pb.ChannelOpenContent:
        args: dict[str, object] = {
            "my_id": ALICE.node_id,
            "keyring": ring,
            "replay": ReplayGuard(clock, not_before_ms=0),
            "is_verified": lambda _: True,
        }
        args.update(kw)
        return verify_open(opened, **args)  # type: ignore[arg-type]

    content = check(replay=replay)
    assert (content.sender, content.session_epoch, content.nonce) == (BOB.node_id, "eb", sent.nonce)
    assert content.ephemeral_key == sent.ephemeral_key
    assert len(content.ephemeral_key) == 32
    with pytest.raises(ReplayDetected):
        check(replay=replay)  # the same open again
    with pytest.raises(Unauthenticated) as info:
        check(is_verified=lambda _: False)
    assert info.value.reason == "PEER_NOT_VERIFIED"
    with pytest.raises(Unauthenticated):
        check(keyring=KeyRing())
    with pytest.raises(MalformedMessage):
        check(my_id=BOB.node_id)
    with pytest.raises(KeyMismatch):
        check(answer_to=b"z" * 12)
    with pytest.raises(KeyMismatch):
        check(expected_sender=ALICE.node_id)
    tampered = pb.ChannelOpen()
    tampered.CopyFrom(opened)
    tampered.content = tampered.content[:-1] + bytes([tampered.content[-1] ^ 1])
    with pytest.raises(SignatureInvalid):
        verify_open(
            tampered,
            my_id=ALICE.node_id,
            keyring=ring,
            replay=ReplayGuard(clock, not_before_ms=0),
            is_verified=lambda _: True,
        )


def test_an_open_needs_an_ephemeral_key() -> None:
    clock = FixedClock()
    ring = KeyRing()
    ring.pin(BOB.public_key)
    sent = make_open(BOB, recipient=ALICE.node_id, clock=clock, params=params())
    content = pb.ChannelOpenContent.FromString(read_open(sent.frame).content)
    content.ephemeral_key = b"short"
    raw = content.SerializeToString()
    forged = pb.ChannelOpen(content=raw, signature=BOB.sign(pb.PAYLOAD_CHANNEL_OPEN, raw))
    with pytest.raises(MalformedMessage):
        verify_open(
            forged,
            my_id=ALICE.node_id,
            keyring=ring,
            replay=ReplayGuard(clock, not_before_ms=0),
            is_verified=lambda _: True,
        )


def test_a_channel_must_start_with_open() -> None:
    with pytest.raises(Unauthenticated) as info:
        read_open(batch_frame(1, 1))
    assert info.value.reason == "CHANNEL_NOT_OPEN"
    with pytest.raises(MalformedMessage):
        read_open(b"\xff\xff\xff")


# -- session keys ------------------------------------------------------------------------


def opens() -> tuple[FrameSeal, FrameSeal, pb.ChannelOpenContent, pb.ChannelOpenContent]:
    """Alice dials Bob: both ends' seals and both opens' contents."""
    clock = FixedClock()
    a = make_open(ALICE, recipient=BOB.node_id, clock=clock, params=params(epoch="ea"))
    a_content = pb.ChannelOpenContent.FromString(read_open(a.frame).content)
    b = make_open(BOB, recipient=ALICE.node_id, clock=clock, params=params(epoch="eb"))
    b_content = pb.ChannelOpenContent.FromString(read_open(b.frame).content)
    return (
        frame_keys(a, b_content, dialler=True),
        frame_keys(b, a_content, dialler=False),
        a_content,
        b_content,
    )


def sealed_of(data: bytes) -> pb.SealedFrame:
    return pb.ChannelFrame.FromString(data).sealed


def test_both_ends_derive_the_same_direction_keys() -> None:
    alice, bob, _, _ = opens()
    for i in range(3):
        assert bob.open(sealed_of(alice.seal(b"to bob %d" % i))) == b"to bob %d" % i
        assert alice.open(sealed_of(bob.seal(b"to alice %d" % i))) == b"to alice %d" % i
    # A frame does not verify in the other direction (its key differs).
    alice2, _, _, _ = opens()
    with pytest.raises(Unauthenticated):
        alice2.open(sealed_of(alice2.seal(b"reflected")))


def test_a_replayed_open_gives_its_replayer_no_key() -> None:
    """Mallory replays Alice's open to Bob first; Bob answers. Without Alice's
    ephemeral private key Mallory cannot produce a single frame Bob accepts."""
    clock = FixedClock()
    captured = make_open(ALICE, recipient=BOB.node_id, clock=clock, params=params(epoch="ea"))
    alice_content = pb.ChannelOpenContent.FromString(read_open(captured.frame).content)
    answer = make_open(BOB, recipient=ALICE.node_id, clock=clock, params=params(epoch="eb"))
    answer_content = pb.ChannelOpenContent.FromString(read_open(answer.frame).content)
    bob = frame_keys(answer, alice_content, dialler=False)
    # Mallory's best guess: her own ephemeral key in place of Alice's.
    mallory_open = make_open(ALICE, recipient=BOB.node_id, clock=clock, params=params())
    mallory = frame_keys(mallory_open, answer_content, dialler=True)
    ack_frame = ack(2**62)
    with pytest.raises(Unauthenticated) as info:
        bob.open(sealed_of(mallory.seal(ack_frame)))
    assert info.value.reason == "FRAME_MAC_INVALID"
    with pytest.raises(Unauthenticated):
        bob.open(pb.SealedFrame(body=ack_frame, mac=bytes(16)))


def test_sealed_frames_cannot_be_forged_replayed_dropped_or_reordered() -> None:
    first, second = ack(1), ack(2)

    def pair() -> tuple[FrameSeal, FrameSeal]:
        alice, bob, _, _ = opens()
        return alice, bob

    alice, bob = pair()
    f1 = alice.seal(first)
    tampered = pb.SealedFrame()
    tampered.CopyFrom(sealed_of(f1))
    tampered.body = ack(2**62)
    with pytest.raises(Unauthenticated):
        bob.open(tampered)  # forged body
    alice, bob = pair()
    f1 = alice.seal(first)
    assert bob.open(sealed_of(f1)) == first
    with pytest.raises(Unauthenticated):
        bob.open(sealed_of(f1))  # replayed
    alice, bob = pair()
    f1, f2 = alice.seal(first), alice.seal(second)
    with pytest.raises(Unauthenticated):
        bob.open(sealed_of(f2))  # f1 dropped (or the two reordered)


def test_frames_after_the_open_must_be_sealed() -> None:
    link = Link()
    error = closed(link.s.receive(batch_frame(1, 1)))
    assert isinstance(error, Unauthenticated)
    assert error.reason == "FRAME_NOT_SEALED"
    link = Link()
    error = closed(link.s.receive(encode_sealed(ack(1), bytes(16))))
    assert error.reason == "FRAME_MAC_INVALID"
    assert link.s.state is LinkState.CLOSED


# -- receiving ---------------------------------------------------------------------------


def test_batches_acks_and_duplicates() -> None:
    link = Link()
    (b,) = link.feed(batch_frame(1, 3))
    assert isinstance(b, Batch)
    assert b.first_seq == 1
    assert len(b.messages) == 3
    # A resend overlapping what was accepted: only the new tail comes out.
    link2 = Link(inbound=link.s.inbound)
    (b2,) = link2.feed(batch_frame(2, 3))
    assert isinstance(b2, Batch)
    assert b2.first_seq == 4
    assert len(b2.messages) == 1
    assert link2.s.duplicates == 2
    link3 = Link(inbound=link.s.inbound)
    assert link3.feed(batch_frame(1, 4)) == []  # entirely a resend: nothing new
    assert link3.s.duplicates == 4


def test_processing_out_of_order_acks_the_prefix() -> None:
    inbound = Inbound(InboundRecord(), window=8)
    inbound.accept(1, 4)
    assert inbound.processed(0, 2) is False
    assert inbound.processed_seq == 0
    assert inbound.processed(0, 1) is True
    assert inbound.processed_seq == 2
    inbound.processed(0, 4)
    inbound.processed(0, 3)
    assert inbound.processed_seq == 4
    assert inbound.ack_due() == 4
    assert inbound.take_ack() == 4
    assert inbound.unacked == 0
    assert inbound.ack_due() == 0


@settings(max_examples=100)
@given(st.data())
def test_processed_prefix_is_the_contiguous_prefix(data: st.DataObject) -> None:
    inbound = Inbound(InboundRecord(), window=1000)
    n = data.draw(st.integers(1, 60))
    inbound.accept(1, n)
    order = data.draw(st.permutations(range(1, n + 1)))
    done: set[int] = set()
    for seq in order:
        inbound.processed(0, seq)
        done.add(seq)
        prefix = 0
        while prefix + 1 in done:
            prefix += 1
        assert inbound.processed_seq == prefix
    assert inbound.pending == 0


def test_epoch_change_restarts_numbering() -> None:
    inbound = Inbound(InboundRecord("old", 50, 50), window=8)
    assert inbound.accept(40, 5) == 5  # all below the mark: duplicates
    assert inbound.start("new") is True
    assert inbound.accepted_seq == 0
    assert inbound.generation == 1
    assert inbound.processed(0, 51) is False  # a completion from the old epoch is ignored
    assert inbound.start("new") is False


def test_a_receiver_that_forgot_resumes_at_the_senders_first_unacked() -> None:
    inbound = Inbound(InboundRecord(), window=8)  # a restart without durable state
    inbound.start("eb", first_unacked=5001)
    assert (inbound.accepted_seq, inbound.processed_seq, inbound.unacked) == (5000, 5000, 0)
    link = Link(inbound=inbound)
    (b,) = link.feed(batch_frame(5001, 2))
    assert isinstance(b, Batch)
    assert b.first_seq == 5001
    # Never backwards: a lower first_unacked changes nothing.
    inbound.start("eb", first_unacked=3)
    assert inbound.accepted_seq == 5002


def test_resume_statement_becomes_the_ack_only_once_the_link_is_kept() -> None:
    inbound = Inbound(InboundRecord("eb", 0, 0), window=8)
    inbound.accept(1, 6)
    for seq in range(1, 5):
        inbound.processed(0, seq)
    stated = inbound.snapshot()  # what an open says; no side effect
    assert (stated.processed_seq, inbound.acked, inbound.ack_due()) == (4, 0, 4)
    inbound.processed(0, 5)
    inbound.resumed(stated)  # the peer took resume_after=4 as our ack
    assert (inbound.acked, inbound.ack_due(), inbound.unacked) == (4, 1, 2)


@pytest.mark.parametrize(
    ("frame", "error", "reason"),
    [
        (batch_frame(1, 5), RateLimited, "BATCH_TOO_LARGE"),
        (encode_batch(0, [b""]), MalformedMessage, "EMPTY_BATCH"),
        (pb.ChannelFrame().SerializeToString(), MalformedMessage, "EMPTY_FRAME"),
        (b"\x0a\x00", MalformedMessage, "UNEXPECTED_OPEN"),
        (encode_sealed(b"", b""), MalformedMessage, "NESTED_SEAL"),
        (b"\x12\x05garbage", MalformedMessage, "MALFORMED_MESSAGE"),
        (batch_frame(2, 1), MalformedMessage, "SEQ_GAP"),
        (batch_frame(2**62, 1), MalformedMessage, "SEQ_GAP"),
        (ack(1001), MalformedMessage, "ACK_BEYOND_SENT"),
        (ack(2**62), MalformedMessage, "ACK_BEYOND_SENT"),
    ],
)
def test_protocol_violations_close_with_a_reason(frame: bytes, error: type, reason: str) -> None:
    link = Link()
    err = closed(link.feed(frame))
    assert isinstance(err, error)
    assert err.reason == reason
    assert link.s.state is LinkState.CLOSED
    assert link.feed(batch_frame(1, 1)) == []
    assert link.s.inbound.accepted_seq == 0  # nothing of it was taken


def test_batches_are_consecutive_on_a_link() -> None:
    link = Link()
    link.feed(batch_frame(1, 2))
    assert closed(link.feed(batch_frame(2, 1))).reason == "SEQ_OUT_OF_ORDER"
    link = Link()
    link.feed(batch_frame(1, 2))
    assert closed(link.feed(batch_frame(4, 1))).reason == "SEQ_GAP"
    link = Link()
    link.feed(batch_frame(1, 2))
    (b,) = link.feed(batch_frame(3, 1))
    assert isinstance(b, Batch)
    link = Link()
    huge = Inbound(InboundRecord("eb", MAX_SEQ - 1, 0), window=8)
    link = Link(inbound=huge)
    assert closed(link.feed(batch_frame(MAX_SEQ, 2))).reason == "SEQ_OUT_OF_RANGE"


def test_peer_close_and_errors() -> None:
    link = Link()
    err = pb.MessageErrors(errors=[pb.MessageError(seq=3, message_id="x")])
    (event,) = link.feed(pb.ChannelFrame(errors=err).SerializeToString())
    assert isinstance(event, ErrorsReceived)
    assert event.errors[0].seq == 3
    close = pb.ChannelClose(status=14, reason="NODE_STOPPING", message="bye")
    (event,) = link.feed(pb.ChannelFrame(close=close).SerializeToString())
    assert isinstance(event, Closed)
    assert event.by_peer
    assert event.error.reason == "NODE_STOPPING"


# -- sending -----------------------------------------------------------------------------


def test_sending_respects_credit() -> None:
    link = Link(window=4)
    s = link.s
    assert s.sendable() == 4
    (frame,) = s.batch_frames([entry(1), entry(2), entry(3)])
    batch = link.read(frame).batch
    assert (batch.first_seq, len(batch.messages)) == (1, 3)
    assert s.sent_seq == 3
    assert s.in_flight == 3
    assert s.sendable() == 1
    (got,) = link.feed(ack(2))
    assert got == AckReceived(2)
    assert s.sendable() == 3
    link.feed(pb.ChannelFrame(credit=pb.Credit(window=64)).SerializeToString())
    assert s.sendable() == 4  # capped by the peer's max_batch
    with pytest.raises(ValueError, match="consecutive"):
        s.batch_frames([entry(5)])  # a gap is a bug on our side, never sent


def test_a_sender_past_its_credit_is_cut_off() -> None:
    link = Link()  # our window: 8; the hard limit is twice that
    for first in (1, 5, 9, 13):
        (event,) = link.feed(batch_frame(first, 4))
        assert isinstance(event, Batch)
    assert closed(link.feed(batch_frame(17, 1))).reason == "CREDIT_EXCEEDED"


def test_resume_after_skips_what_the_peer_processed_and_is_clamped() -> None:
    link = Link(resume_after=7, resume_epoch="ea", window=5, ours=params(epoch="ea"))
    s = link.s
    assert (s.peer_acked, s.sent_seq, s.send_window, s.resume_clamped) == (7, 7, 5, False)
    other = Link(resume_after=7, resume_epoch="some-old-epoch").s
    assert other.peer_acked == 0  # it speaks of numbering we no longer use
    # Beyond what we ever sent: clamped, so unsent messages are not dropped.
    wild = Link(resume_after=2**60, resume_epoch="ea", ours=params(epoch="ea"), sent_limit=3).s
    assert (wild.peer_acked, wild.sent_seq, wild.resume_clamped) == (3, 3, True)
    # Our outbox head: the peer acked everything below first_unacked.
    forgot = Link(ours=params(epoch="ea", first=41)).s
    assert (forgot.peer_acked, forgot.sent_seq) == (0, 40)


def test_acks_ride_on_batches_or_wait_briefly() -> None:
    clock = FixedClock()
    link = Link(clock)
    s = link.s
    link.feed(batch_frame(1, 2))
    gen = s.inbound.generation
    s.inbound.processed(gen, 1)
    assert s.control_frames() == []  # delayed: a batch may come to carry it
    frames = s.batch_frames([entry(1)])
    assert link.read(frames[0]).batch.ack == 1
    s.inbound.processed(gen, 2)
    assert s.control_frames() == []
    clock.advance(0.02)
    (frame,) = s.control_frames()
    assert link.read(frame).ack.seq == 2


def test_keepalive_pings_then_gives_up() -> None:
    clock = FixedClock()
    link = Link(clock)
    s = link.s
    assert s.keepalive() is None
    clock.advance(1.0)
    ping = s.keepalive()
    assert isinstance(ping, bytes)
    assert link.read(ping).WhichOneof("kind") == "ping"
    link.feed(pb.ChannelFrame(ping=pb.Ping(id=9)).SerializeToString())
    (pong,) = s.control_frames()
    assert link.read(pong).pong.id == 9
    clock.advance(1.6)  # peer keepalive 1 s + timeout 0.5 s of silence
    dead = s.keepalive()
    assert isinstance(dead, AralError)
    assert dead.reason == "PEER_SILENT"
    assert s.state is LinkState.CLOSED


def test_close_is_sealed_too() -> None:
    link = Link()
    frame = link.s.close(RateLimited("x", reason="SOMETHING"))
    assert link.read(frame).close.reason == "SOMETHING"


# -- per-peer message ids -----------------------------------------------------------------


def test_recent_ids_remember_a_bounded_number() -> None:
    ids = RecentIds(3)
    assert all(ids.add(m) for m in ("a", "b", "c"))
    assert not ids.add("b")
    assert ids.add("d")  # "a" falls out
    assert len(ids) == 3
    assert ids.add("a")
    assert not ids.add("d")


def test_an_ack_may_cover_what_an_earlier_link_sent() -> None:
    """The peer accepted seqs 1..10 on a previous link and finishes processing
    them after this link opened (its resume_after said 4): its ack of 10 is
    genuine; an ack past anything we ever sent is not."""
    link = Link(resume_after=4, resume_epoch="ea", ours=params(epoch="ea"), sent_limit=10)
    s = link.s
    assert (s.peer_acked, s.sent_seq) == (4, 4)
    (got,) = link.feed(ack(10))
    assert got == AckReceived(10)
    assert s.sent_seq == 10  # nothing up to it is resent
    assert closed(link.feed(ack(11))).reason == "ACK_BEYOND_SENT"
