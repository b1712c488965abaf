"""A node is ready for its peers when its program says so (issue 14, items 18, 19).

* Notification handlers register before ``start()`` (``setup()`` under ``--load``
  does), and a durable node never acks a notification that no handler or
  subscription took: it holds it, unacked, until one is registered.
* ``connect()`` returns once the channel to the peer is open, so a ``broadcast``
  right after reaches it; a send that reaches nobody says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from aralnode import Node, NodeConfig
from aralnode.core.errors import PeerNotFound, Unavailable, Unimplemented
from tests.channel_helpers import FAST, linked

MakeNode = Callable[..., Node]
COUNT = 300  # notifications; fewer than the channel window, so all reach the receiver


class Seen:
    """A handler that records what it gets, and wakes a waiter once it has ``want``."""

    def __init__(self, want: int) -> None:
        self.items: list[int] = []
        self.want = want
        self.done = asyncio.Event()

    def __call__(self, msg: Any, tx: Any) -> None:
        self.items.append(msg.data["i"])
        if len(self.items) >= self.want:
            self.done.set()

    async def wait(self, timeout: float = 10) -> list[int]:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            pytest.fail(f"the handler got {len(self.items)} of {self.want}")
        return self.items


async def _send(a: Node, b: Node, count: int, start: int = 0) -> None:
    """``count`` notifications from ``a`` to ``b``, then a request behind them: once
    it is answered, ``b`` has applied every notification before it (batches are
    applied in arrival order)."""
    for i in range(start, start + count):
        await a.notify(b.node_id, "rec", {"i": i})
    assert await a.request(b.node_id, "demo.echo", {"text": "behind"}, timeout=10)


async def test_a_handler_registered_before_start_gets_everything(make_node: MakeNode) -> None:
    a = make_node("alpha", **FAST)
    b = make_node("beta", durable=True, **FAST)
    seen = Seen(COUNT)
    b.on_notification("rec", seen)  # as setup() does under --load, before start
    async with a, b:
        await linked(a, b)
        await _send(a, b, COUNT)
        assert await seen.wait() == list(range(COUNT))
        assert a.channels is not None
        assert await a.channels.flush(b.node_id, 10)


def test_setup_under_load_registers_a_handler(make_node: MakeNode, tmp_path: Any) -> None:
    module = tmp_path / "handlers.py"
    module.write_text(
        "def setup(node):\n    node.on_notification('rec', lambda msg, tx: None)\n",
    )
    node = make_node("loaded", durable=True)
    node.load(str(module))  # raised NOT_STARTED before


async def test_a_durable_node_holds_what_no_handler_took(make_node: MakeNode) -> None:
    """Notifications that arrive before any handler is registered are not acked:
    they wait, in order, and reach the handler once it is registered."""
    a = make_node("alpha", **FAST)
    b = make_node("beta", durable=True, **FAST)
    async with a, b:
        await linked(a, b)
        await _send(a, b, COUNT)
        assert a.channels is not None
        assert not await a.channels.flush(b.node_id, 0.2)  # nothing taken: nothing acked
        assert b.pipeline.counters["channel.unrouted"] == 0
        seen = Seen(COUNT + 5)
        b.on_notification("rec", seen)
        await _send(a, b, 5, start=COUNT)  # and those behind them, in order
        assert await seen.wait() == list(range(COUNT + 5))
        assert await a.channels.flush(b.node_id, 10)


async def test_more_than_a_window_waits_for_the_handler(make_node: MakeNode) -> None:
    """Past the receiver's credit the sender stops (nothing is acked while held);
    once a handler is registered the held ones reach it and the rest follow, in
    order, none lost (the issue's run lost 4,208 of 6,000)."""
    a = make_node("alpha", **FAST)
    b = make_node("beta", durable=True, channel_window=64, **FAST)
    async with a, b:
        await linked(a, b)
        for i in range(COUNT):
            await a.notify(b.node_id, "rec", {"i": i})  # queued: the outbox takes them
        assert a.channels is not None
        assert not await a.channels.flush(b.node_id, 0.2)
        seen = Seen(COUNT)
        b.on_notification("rec", seen)
        assert await seen.wait() == list(range(COUNT))
        assert await a.channels.flush(b.node_id, 10)


async def test_held_notifications_survive_a_restart(make_node: MakeNode) -> None:
    """Held, not acked: after the receiver restarts (its handler registered before
    start this time) the sender resends them and the handler gets each once."""
    a = make_node("alpha", **FAST)
    async with a:
        b = make_node("beta", durable=True, **FAST)
        async with b:
            await linked(a, b)
            await _send(a, b, 50)
        b = make_node("beta", durable=True, **FAST)
        seen = Seen(50)
        b.on_notification("rec", seen)
        async with b:
            await linked(b, a)  # b is at a new port: it dials
            assert await seen.wait() == list(range(50))
            assert a.channels is not None
            assert await a.channels.flush(b.node_id, 10)
            assert seen.items == list(range(50))  # once each


async def test_an_in_memory_node_acks_what_nobody_takes(make_node: MakeNode) -> None:
    """Without ``durable`` nothing outlives the process anyway: a notification no one
    takes is counted (``channel.unrouted``) and acked, the channel never waits."""
    a, b = make_node("alpha", **FAST), make_node("beta", **FAST)
    async with a, b:
        await linked(a, b)
        await _send(a, b, 10)
        assert a.channels is not None
        assert await a.channels.flush(b.node_id, 10)
        assert b.pipeline.counters["channel.unrouted"] == 10


# -- item 19: connect returns once the channel is open ---------------------------------


async def test_a_broadcast_right_after_connect_reaches_the_peer(make_node: MakeNode) -> None:
    a, b = make_node("alpha", **FAST), make_node("beta", **FAST)
    async with a, b, b.subscribe("hello") as sub:
        await a.connect(b.address)
        sent = await a.broadcast("hello", {"v": 1})
        assert list(sent) == [b.node_id]
        msg = await asyncio.wait_for(anext(sub), 10)
        assert msg.data == {"v": 1}
        assert msg.message_id == sent[b.node_id]


async def test_sends_that_reach_nobody_say_so(make_node: MakeNode) -> None:
    a = make_node("alpha", **FAST)
    async with a:
        assert await a.broadcast("hello", {"v": 1}) == {}  # no peer: an empty answer
        with pytest.raises(PeerNotFound):
            await a.notify("b" * 32, "hello", {})


async def test_connect_says_when_the_channel_did_not_open(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = make_node("alpha", channel_open_timeout_seconds=0.2, **FAST)
    b = make_node("beta", **FAST)
    async with a, b:
        # Verified, but no channel is ever dialled (nor does b dial back: no discovery).
        monkeypatch.setattr(a.connector, "on_verified", lambda node_id, address: None)
        with pytest.raises(Unavailable) as caught:
            await a.connect(b.address)
        assert caught.value.reason == "CHANNEL_NOT_OPEN"
        assert a.peer_table.get(b.node_id) is not None  # the peer itself is kept


def test_the_open_timeout_is_checked() -> None:
    with pytest.raises(ValueError, match="channel_open_timeout_seconds"):
        NodeConfig(channel_open_timeout_seconds=0)


async def test_connect_to_a_peer_without_channels_returns(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that serves ``Invoke`` alone (UNIMPLEMENTED for channels): ``connect``
    returns as soon as that is known, and requests go as ``Invoke``; a notification,
    which has no other way there, is refused rather than queued for nobody."""
    import grpc

    from aralnode.mesh import streams

    async def unimplemented(hub: Any, requests: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no channels here")

    monkeypatch.setattr(streams, "serve", unimplemented)
    a, b = make_node("alpha", **FAST), make_node("beta", **FAST)
    async with a, b:
        await a.connect(b.address)
        assert a.channels is not None
        assert a.channels.peer(b.node_id).unsupported
        got = await a.request(b.node_id, "demo.echo", {"text": "hi"}, timeout=10)
        assert got["text"] == "hi"
        with pytest.raises(Unimplemented) as caught:
            await a.notify(b.node_id, "hello", {})
        assert caught.value.reason == "CHANNELS_UNSUPPORTED"
        assert a.channels.outbox.count(b.node_id) == 0
