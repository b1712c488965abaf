"""What must never stall a channel: an exception on the receive path, an idle
subscription, a failing handler, a refused duplicate dial."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from aralnode import Action, Decision, Direction, Node, Rule, RuleEvaluator
from aralnode import _proto as pb
from aralnode.core.channel import Batch, OpenParams, make_open
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.errors import AralError, InternalError, RateLimited, StatusCode
from aralnode.core.outbox import InboundRecord
from aralnode.mesh.attach import refusal
from aralnode.mesh.link import Link
from aralnode.mesh.streams import CHANNEL_METHOD, stream_write
from tests.channel_helpers import FAST, linked

MakeNode = Callable[..., Node]


async def nxt(sub: Any) -> Any:
    """The next notification (bounded: a stalled channel fails the test, not hangs it)."""
    return await asyncio.wait_for(anext(sub), 10)


def raising_rule(capability: str) -> Rule:
    def when(act: Action) -> bool:
        if act.direction is not Direction.SEND and act.capability == capability:
            raise ZeroDivisionError("a buggy rule")
        return False

    return Rule("buggy", when, Decision.BLOCK)


async def test_an_exception_in_governance_is_a_per_message_error(make_node: MakeNode) -> None:
    a, b = make_node("alpha", **FAST), make_node("beta", **FAST)
    b.governance = b.pipeline.governance = RuleEvaluator(
        [raising_rule("boom"), raising_rule("demo.add")]
    )
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        async with b.subscribe() as sub:
            await a.notify(b.node_id, "boom", {})
            await a.notify(b.node_id, "fine", {})
            assert (await nxt(sub)).event == "fine"
        # A request gets its error as the answer, not a timeout.
        with pytest.raises(InternalError):
            await a.request(b.node_id, "demo.add", {"a": 1, "b": 2}, timeout=10)
        assert await a.channels.flush(b.node_id, 10)  # everything acked: no stall
        # Failed closed, each where it was judged: a notification and a request.
        assert b.pipeline.counters["governance.failed"] == 2
        assert await a.request(b.node_id, "demo.echo", {"text": "still"}, timeout=10)


async def test_a_failing_inbox_transaction_does_not_stall_the_peer(make_node: MakeNode) -> None:
    a = make_node("alpha", **FAST)
    b = make_node("beta", durable=True, **FAST)
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        hub = b.channels
        assert hub is not None
        seen: list[int] = []
        b.on_notification("rec", lambda msg, tx: seen.append(msg.data["i"]))

        @contextlib.contextmanager
        def broken() -> Iterator[sqlite3.Connection | None]:
            raise sqlite3.OperationalError("disk I/O error")
            yield None

        real = hub.inbox.transaction
        hub.inbox.transaction = broken  # type: ignore[method-assign]
        await a.notify(b.node_id, "rec", {"i": 0})
        assert await a.channels.flush(b.node_id, 10)  # reported and acked, not stuck
        assert hub.pipeline.counters["channel.inbox_failed"] == 1
        record = hub.peers[a.node_id].inbound.record
        assert record.handled_seq == 0  # the mark moves only with a commit
        hub.inbox.transaction = real  # type: ignore[method-assign]
        await a.notify(b.node_id, "rec", {"i": 1})
        assert await a.channels.flush(b.node_id, 10)
        assert seen == [1]
        assert record.handled_seq == 2


async def test_a_failing_handler_leaves_no_partial_writes(make_node: MakeNode) -> None:
    a = make_node("alpha", **FAST)
    b = make_node("beta", durable=True, **FAST)
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        hub = b.channels
        assert hub is not None
        with hub.inbox.transaction() as tx:
            assert tx is not None
            tx.execute("CREATE TABLE effects (i INTEGER, step INTEGER)")

        def handler(msg: Any, tx: sqlite3.Connection | None) -> None:
            assert tx is not None
            tx.execute("INSERT INTO effects VALUES (?, 1)", (msg.data["i"],))
            if msg.data["i"] == 1:
                raise ValueError("failed halfway")
            tx.execute("INSERT INTO effects VALUES (?, 2)", (msg.data["i"],))

        b.on_notification("rec", handler)
        for i in range(3):
            await a.notify(b.node_id, "rec", {"i": i})
        assert await a.channels.flush(b.node_id, 10)
        db = hub.inbox.transaction
        with db() as tx:
            assert tx is not None
            rows = tx.execute("SELECT i, step FROM effects ORDER BY i, step").fetchall()
        assert rows == [(0, 1), (0, 2), (2, 1), (2, 2)]  # nothing of the failed one
        assert hub.pipeline.counters["channel.handler_failed"] == 1
        assert hub.peers[a.node_id].inbound.record.handled_seq == 3


async def test_an_idle_subscription_never_holds_up_the_channel(make_node: MakeNode) -> None:
    a = make_node("alpha", **FAST)
    b = make_node("beta", channel_window=16, **FAST)
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        idle = b.subscribe("x", maxsize=4)  # never iterated
        dropping = b.subscribe("x", maxsize=4, overflow="drop")
        for i in range(100):
            await a.notify(b.node_id, "x" if i % 2 else "y", {"i": i})
        assert await a.channels.flush(b.node_id, 10), "the idle subscription held the acks"
        assert [(await nxt(idle)).data["i"] for _ in range(4)] == [1, 3, 5, 7]
        with pytest.raises(RateLimited) as info:
            await nxt(idle)
        assert info.value.reason == "SUBSCRIPTION_OVERFLOW"
        with pytest.raises(StopAsyncIteration):
            await nxt(idle)
        assert len(dropping) == 4
        assert dropping.dropped == 46
        assert b.pipeline.counters["channel.subscription_overflow"] == 1


async def test_a_backpressure_subscription_slows_the_sender(make_node: MakeNode) -> None:
    a = make_node("alpha", **FAST)
    b = make_node("beta", channel_window=8, **FAST)
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        sub = b.subscribe("x", maxsize=2, overflow="backpressure")
        sent = [asyncio.ensure_future(a.notify(b.node_id, "x", {"i": i})) for i in range(40)]
        await asyncio.gather(*sent)
        # Held back by the consumer: at most its queue was processed and acked.
        assert a.channels.outbox.count(b.node_id) >= 38
        got = [(await nxt(sub)).data["i"] for _ in range(40)]
        assert got == list(range(40))
        assert await a.channels.flush(b.node_id, 10)
        assert a.channels.peers[b.node_id].max_in_flight <= 8
        sub.close()


async def test_a_refused_duplicate_open_leaves_the_live_link_alone(make_node: MakeNode) -> None:
    x, y = make_node("x", **FAST), make_node("y", **FAST)
    lo, hi = sorted((x, y), key=lambda n: n.node_id)
    release = asyncio.Event()

    @hi.capability(id="slow.wait")
    async def wait() -> str:
        await release.wait()
        return "done"

    async with lo, hi:
        await linked(lo, hi)  # dialled by the lower id: it wins every duplicate
        assert lo.channels is not None
        call = asyncio.ensure_future(lo.request(hi.node_id, "slow.wait", {}, timeout=30))
        assert await lo.channels.flush(hi.node_id, 10)  # the request was acked
        pc = lo.channels.peers[hi.node_id]
        link, acked, incarnation = pc.link, pc.inbound.acked, pc.incarnation
        # The higher id dials too, claiming to be a restarted process with
        # nothing processed: an open the lower id must refuse without acting on it.
        params = OpenParams(
            epoch="another-epoch", incarnation="another-process", resume=InboundRecord()
        )
        sent = make_open(hi.identity, recipient=lo.node_id, clock=SYSTEM_CLOCK, params=params)
        async with grpc.aio.insecure_channel(lo.address) as channel:
            stub: Any = channel.stream_stream(
                CHANNEL_METHOD, request_serializer=None, response_deserializer=None
            )
            stream = stub()
            await stream.write(sent.frame)
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await stream.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                    pass
            assert await stream.code() == grpc.StatusCode.UNAVAILABLE
        assert lo.pipeline.counters["channel.open_rejected"] == 1
        assert (pc.link, pc.inbound.acked, pc.incarnation) == (link, acked, incarnation)
        assert pc.inbound.record.epoch != "another-epoch"
        assert not call.done()  # not failed as PEER_RESTARTED
        release.set()
        assert await call == "done"


async def test_an_incoming_open_is_refused_only_once_our_own_is_sent(
    make_node: MakeNode,
) -> None:
    node = make_node("n", **FAST)
    async with node:
        hub = node.channels
        assert hub is not None
        higher = "~" + node.node_id  # sorts after any node id
        pc = hub.peer(higher)
        # Our dial may be handshaking (up to open_timeout): no refusal before our open.
        assert refusal(hub, pc, higher) is None
        pc.open_sent = True
        refused = refusal(hub, pc, higher)
        assert refused is not None
        assert refused.reason == "DUPLICATE_CHANNEL"
        lower = "!" + node.node_id  # sorts before: its dial wins anyway
        pc_low = hub.peer(lower)
        pc_low.open_sent = True
        assert refusal(hub, pc_low, lower) is None


async def test_channel_traffic_stays_out_of_the_node_replay_cache(make_node: MakeNode) -> None:
    a, b = make_node("alpha", **FAST), make_node("beta", **FAST)
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        before = len(b.replay)
        for i in range(300):
            await a.notify(b.node_id, "n", {"i": i})
        assert await a.channels.flush(b.node_id, 10)
        assert len(b.replay) == before  # a fast peer cannot fill it for every door


class Peer:
    peer_id = "peer"
    delivering: Any = None

    def __init__(self) -> None:
        self.errors: list[Any] = []

    def wake(self) -> None:
        pass


class FakeHub:
    """What a link needs of its hub besides verify/apply/detached."""

    def track(self, task: Any) -> Any:
        return task


async def no_write(frame: bytes) -> None:
    raise AssertionError("nothing is written here")


async def read_through(hub: Any, batches: list[Batch], *, reads: list[str] | None = None) -> None:
    """Run a link's reader, with ``hub`` faking verify and apply, over one frame per
    batch (frame i carries batch i); ``reads`` records each frame as it is read."""

    class Session:
        def receive(self, data: bytes) -> list[Any]:
            return [batches[int(data)]]

    async def frames() -> Any:
        for i in range(len(batches)):
            if reads is not None:
                reads.append(f"read {i}")
            yield str(i).encode()

    link = Link(hub, Peer(), Session(), no_write, dialler="peer")  # type: ignore[arg-type]
    await asyncio.wait_for(link._reader(frames()), 10)


async def read_then_cancel(link: Link, frames: Any, read: asyncio.Event) -> None:
    """Run ``link``'s reader over ``frames`` until ``read`` is set, then cancel it: the
    link ends, as when its stream breaks, with whatever it had read still in hand."""
    reader = asyncio.ensure_future(link._reader(frames))
    await asyncio.wait_for(read.wait(), 10)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader


async def test_batches_verify_ahead_but_apply_in_arrival_order() -> None:
    """The link starts verifying each batch as it arrives and applies them in
    order: here batch 0 verifies last, after batches 1 and 2 were read and
    verified, and still goes first; batches read before the stream ended are
    applied, not dropped."""
    loop = asyncio.get_running_loop()
    batches = [Batch(first_seq=1 + i, messages=[], generation=1) for i in range(3)]
    verified = [loop.create_future() for _ in batches]
    events: list[str] = []

    class Hub(FakeHub):
        def verify(self, peer: Any, batch: Batch) -> asyncio.Future[list[Any]]:
            i = batches.index(batch)
            events.append(f"verify {i}")
            if i > 0:
                verified[i].set_result([i])
            if i == 2:  # the first batch is the slowest to verify
                verified[0].set_result([0])
            return verified[i]

        def apply(self, peer: Any, batch: Batch, opened: list[Any]) -> list[Any]:
            events.append(f"apply {batches.index(batch)} {opened}")
            return []

    await read_through(Hub(), batches)
    assert events == [
        "verify 0",
        "verify 1",
        "verify 2",
        "apply 0 [0]",
        "apply 1 [1]",
        "apply 2 [2]",
    ]


async def test_a_small_batch_with_nothing_ahead_is_applied_at_once() -> None:
    """A batch verified inline (small) with nothing queued ahead skips the queue:
    it is applied before the next frame is read (a request's latency); a batch
    still verifying holds back the ones behind it, whatever their size."""
    loop = asyncio.get_running_loop()
    batches = [Batch(first_seq=1 + i, messages=[], generation=1) for i in range(4)]
    events: list[str] = []
    slow: asyncio.Future[list[Any]] = loop.create_future()

    class Hub(FakeHub):
        def verify(self, peer: Any, batch: Batch) -> asyncio.Future[list[Any]]:
            i = batches.index(batch)
            events.append(f"verify {i}")
            if i == 1:  # a large batch, still on the worker threads
                return slow
            done: asyncio.Future[list[Any]] = loop.create_future()
            done.set_result([i])
            if i == 2:
                slow.set_result([1])
            return done

        def apply(self, peer: Any, batch: Batch, opened: list[Any]) -> list[Any]:
            events.append(f"apply {batches.index(batch)}")
            return []

    await read_through(Hub(), batches, reads=events)
    assert events == [
        "read 0",
        "verify 0",
        "apply 0",  # at once
        "read 1",
        "verify 1",  # slow: queued
        "read 2",
        "verify 2",  # done, but behind batch 1: queued
        "read 3",
        "verify 3",
        "apply 1",
        "apply 2",
        "apply 3",
    ]


async def test_a_link_cancelled_again_while_it_winds_down_still_ends_detached() -> None:
    """A server handler's cancellation can reach a link twice: the second landed
    while the link waited for its reader and writer to stop, skipped marking it
    closed and detached, and the dead peer's link counted as alive forever (so
    discovery never expired the peer)."""
    started = asyncio.Event()
    never = asyncio.Event()
    detached: list[Any] = []
    outer: asyncio.Task[Any] | None = None

    class Session:
        state = None

        def sendable(self) -> int:
            return 0

        def control_frames(self) -> list[bytes]:
            return []

        def keepalive(self) -> None:
            return None

        def timer(self) -> float:
            started.set()
            return 3600.0

    class Hub(FakeHub):
        def detached(self, peer: Any, link: Any) -> None:
            detached.append(link)

    async def frames() -> Any:
        try:
            await never.wait()
            yield b""
        finally:
            assert outer is not None
            outer.cancel()  # the second cancellation, while run() winds down

    link = Link(Hub(), Peer(), Session(), no_write, dialler="peer")  # type: ignore[arg-type]
    outer = asyncio.ensure_future(link.run(frames()))
    await asyncio.wait_for(started.wait(), 10)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 10)
    assert link.closed.is_set()
    assert detached == [link]


async def test_batches_a_link_accepted_are_applied_after_it_ends_and_before_the_next() -> None:
    """The session accepts a batch's seqs as it is read, so a batch still verifying
    when its link is cancelled must be applied anyway: a resend would be taken for a
    duplicate and the channel would stall behind the never-processed seqs. And the
    peer's next link applies nothing until those are done (order per channel)."""
    loop = asyncio.get_running_loop()
    batches = [Batch(first_seq=1 + i, messages=[], generation=1) for i in range(4)]
    verified = [loop.create_future() for _ in batches]
    verified[3].set_result([3])  # the next link's batch: small, verified inline
    events: list[str] = []
    peer = Peer()

    class Hub(FakeHub):
        def verify(self, peer: Any, batch: Batch) -> asyncio.Future[list[Any]]:
            events.append(f"verify {batches.index(batch)}")
            return verified[batches.index(batch)]

        def apply(self, peer: Any, batch: Batch, opened: list[Any]) -> list[Any]:
            events.append(f"apply {opened[0]}")
            return []

    class Session:
        def receive(self, data: bytes) -> list[Any]:
            return [batches[int(data)]]

    first_read = asyncio.Event()
    never = asyncio.Event()

    async def first_link() -> Any:
        for i in range(3):
            yield str(i).encode()
        first_read.set()
        await never.wait()  # the stream stays open until the link is cancelled

    async def second_link() -> Any:
        yield b"3"

    one = Link(Hub(), peer, Session(), no_write, dialler="peer")  # type: ignore[arg-type]
    await read_then_cancel(one, first_link(), first_read)
    two = Link(Hub(), peer, Session(), no_write, dialler="peer")  # type: ignore[arg-type]
    second = asyncio.ensure_future(two._reader(second_link()))
    for i in range(3):  # the first link's batches finish verifying only now
        verified[i].set_result([i])
    await asyncio.wait_for(second, 10)
    assert events == [
        "verify 0",
        "verify 1",
        "verify 2",
        "verify 3",
        "apply 0",
        "apply 1",
        "apply 2",
        "apply 3",
    ]


async def test_errors_of_a_batch_applied_after_its_link_ended_are_kept_for_the_peer() -> None:
    """A batch applied after its link ended still owes the peer its per-message
    errors (its seqs are acked, so they are never resent): they wait on the peer
    for whichever link is up next, not on the dead link nobody writes for."""
    loop = asyncio.get_running_loop()
    batch = Batch(first_seq=1, messages=[], generation=1)
    verified: asyncio.Future[list[Any]] = loop.create_future()
    refused = pb.MessageError(seq=1, message_id="m1")
    read = asyncio.Event()

    class Hub(FakeHub):
        def verify(self, peer: Any, batch: Batch) -> asyncio.Future[list[Any]]:
            return verified

        def apply(self, peer: Any, batch: Batch, opened: list[Any]) -> list[Any]:
            return [refused]

    class Session:
        def receive(self, data: bytes) -> list[Any]:
            return [batch]

    async def frames() -> Any:
        yield b"0"
        read.set()
        await asyncio.Event().wait()  # open until the link is cancelled

    peer = Peer()
    link = Link(Hub(), peer, Session(), no_write, dialler="peer")  # type: ignore[arg-type]
    await read_then_cancel(link, frames(), read)
    verified.set_result([None])  # verification ends after the link did
    await asyncio.wait_for(peer.delivering, 10)
    assert peer.errors == [refused]


async def test_a_write_the_stream_no_longer_takes_ends_the_link_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write failing because the stream is gone (here the dialler's kind; grpc
    raises several, and ``stream_write`` maps any) ends the link as CHANNEL_ENDED,
    not as a failure of ours."""

    async def gone(frame: bytes) -> None:
        raise asyncio.InvalidStateError("RPC already finished.")  # the dialler's kind

    class Hub(FakeHub):
        def detached(self, peer: Any, link: Any) -> None:
            pass

    async def frames() -> Any:
        await asyncio.Event().wait()
        yield b""

    session: Any = None  # never reached: the first write fails
    link = Link(Hub(), Peer(), session, stream_write(gone), dialler="peer")  # type: ignore[arg-type]
    error = await asyncio.wait_for(link.run(frames(), first=b"answer"), 10)
    assert error is not None
    assert error.reason == "CHANNEL_ENDED"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_write_failing_with_the_calls_status_keeps_that_status() -> None:
    """On the dialling side a write can fail with the call's own status (the peer
    ended it with an error): that status is the link's reason, as the reader's."""

    async def ended(frame: bytes) -> None:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details="too many channels",
        )

    with pytest.raises(AralError) as caught:
        await stream_write(ended)(b"frame")
    assert caught.value.status == StatusCode.RESOURCE_EXHAUSTED
    assert "too many channels" in str(caught.value)
