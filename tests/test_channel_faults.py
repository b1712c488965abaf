"""Channel faults with node *processes* on loopback: SIGKILL mid-stream, SIGSTOP,
a slow receiver. The peer process is this file run as a script (see ``_peer``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aralnode import Node, NodeConfig

MakeNode = Callable[..., Node]
HERE = Path(__file__).resolve()
FAST = {"keepalive_ms": 300, "channel_timeout_ms": 1000}


class Peer:
    """A node process speaking one JSON line per event on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info

    @classmethod
    async def start(cls, *args: str) -> Peer:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HERE), *args, stdout=asyncio.subprocess.PIPE
        )
        peer = cls(proc, {})
        peer.info = await peer.line(60)
        return peer

    async def line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            raise AssertionError(f"peer process exited ({await self.proc.wait()})")
        return json.loads(raw)  # type: ignore[no-any-return]

    async def wait_for(self, key: str, timeout: float) -> dict[str, Any]:
        while True:
            msg = await self.line(timeout)
            if key in msg:
                return msg

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), 30)


@pytest.fixture
async def peers() -> AsyncIterator[list[Peer]]:
    started: list[Peer] = []
    yield started
    for p in started:
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGCONT)
            await p.stop(signal.SIGKILL)


async def test_sigkill_the_receiver_mid_stream_exactly_once(
    make_node: MakeNode, peers: list[Peer], tmp_path: Path
) -> None:
    total, kill_at = 20_000, 5_000
    data = tmp_path / "receiver"
    rx = await Peer.start("receiver", str(data), "0", str(kill_at))
    peers.append(rx)
    port = rx.info["port"]
    sender = make_node("sender", demo=False, **FAST)
    async with sender:
        hub = sender.channels
        assert hub is not None
        await sender.connect(rx.info["address"])
        peer_id = rx.info["node_id"]
        assert await hub.wait_connected(peer_id, 20)

        async def send_all() -> None:
            for i in range(total):
                await sender.notify(peer_id, "rec", {"i": i})

        sending = asyncio.ensure_future(send_all())
        try:
            await rx.wait_for("reached", 60)
            assert await rx.stop(signal.SIGKILL) == -signal.SIGKILL
            rx2 = await Peer.start("receiver", str(data), str(port), "0")
            peers.append(rx2)
            assert rx2.info["node_id"] == peer_id
            await asyncio.wait_for(sending, 90)
        finally:
            sending.cancel()
        assert await hub.flush(peer_id, 90), "the receiver never acked everything"
        assert hub.peers[peer_id].links_opened >= 2
        assert await rx2.stop() == 0
    db = sqlite3.connect(data / "channels.sqlite3")
    try:
        rows, distinct, ids = db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT i), COUNT(DISTINCT message_id) FROM received"
        ).fetchone()
        order = [r[0] for r in db.execute("SELECT i FROM received ORDER BY rowid")]
    finally:
        db.close()
    assert (rows, distinct, ids) == (total, total, total)  # every one, exactly once
    assert order == list(range(total))  # and in order, across the crash


async def test_sigstop_is_detected_and_the_channel_comes_back(
    make_node: MakeNode, peers: list[Peer], tmp_path: Path
) -> None:
    far = await Peer.start("echo", str(tmp_path / "echo"), "0", "0")
    peers.append(far)
    near = make_node("near", **FAST)
    events: asyncio.Queue[bool] = asyncio.Queue()
    async with near:
        hub = near.channels
        assert hub is not None
        peer_id = far.info["node_id"]
        await near.connect(far.info["address"])
        assert await hub.wait_connected(peer_id, 20)
        hub.link_listeners.append(lambda p, up: events.put_nowait(up) if p == peer_id else None)
        assert await near.request(peer_id, "demo.add", {"a": 1, "b": 2}, timeout=10) == 3
        far.proc.send_signal(signal.SIGSTOP)
        # keepalive 0.3 s + timeout 1 s; the bound here is only a test timeout.
        assert await asyncio.wait_for(events.get(), 20) is False
        far.proc.send_signal(signal.SIGCONT)
        assert await asyncio.wait_for(events.get(), 30) is True
        assert await near.request(peer_id, "demo.add", {"a": 2, "b": 2}, timeout=10) == 4


async def test_slow_receiver_bounds_the_sender(
    make_node: MakeNode, peers: list[Peer], tmp_path: Path
) -> None:
    n, window, limit = 300, 16, 48
    slow = await Peer.start("slow", str(tmp_path / "slow"), "0", str(n), str(window))
    peers.append(slow)
    sender = make_node("sender", demo=False, outbox_limit=limit, **FAST)
    async with sender:
        hub = sender.channels
        assert hub is not None
        peer_id = slow.info["node_id"]
        await sender.connect(slow.info["address"])
        assert await hub.wait_connected(peer_id, 20)
        for i in range(n):
            await sender.notify(peer_id, "work", {"i": i})
        pc = hub.peers[peer_id]
        assert pc.max_outbox == limit  # notify had to wait: the sender slowed down
        assert pc.max_in_flight <= window  # never more in flight than the credit
        done = await slow.wait_for("done", 60)
        assert done == {"done": n, "in_order": True, "max_queued": done["max_queued"]}
        assert done["max_queued"] <= window  # the receiver's memory is bounded too
        assert await hub.flush(peer_id, 30)


# -- the peer process ------------------------------------------------------------------------


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _peer(role: str, data_dir: str, port: int, arg: int, window: int) -> None:
    config = NodeConfig(
        name=role,
        host="127.0.0.1",
        grpc_port=port,
        http_port=None,
        discovery="none",
        data_dir=Path(data_dir),
        durable=role == "receiver",
        channel_window=window or 1024,
        **FAST,  # type: ignore[arg-type]
    )
    node = Node(config)
    if role == "echo":
        node.load(str(HERE.parent.parent / "examples" / "demo.py"))
    await node.start()
    hub = node.channels
    assert hub is not None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tasks: list[asyncio.Task[None]] = []
    if role == "receiver":
        with hub.inbox.transaction() as tx:
            assert tx is not None
            tx.execute(
                "CREATE TABLE IF NOT EXISTS received (i INTEGER, message_id TEXT, seq INTEGER)"
            )
            count = int(tx.execute("SELECT COUNT(*) FROM received").fetchone()[0])
        reach = arg

        def record(msg: Any, tx: sqlite3.Connection | None) -> None:
            nonlocal count
            assert tx is not None
            # Written in the transaction that marks the message handled.
            tx.execute(
                "INSERT INTO received VALUES (?, ?, ?)", (msg.data["i"], msg.message_id, msg.seq)
            )
            count += 1
            if count == reach:
                _emit(reached=count)

        node.on_notification("rec", record)
    elif role == "slow":

        async def consume() -> None:
            expected, max_queued = 0, 0
            # Backpressure: a full queue withholds acks, so the sender slows down.
            async with node.subscribe("work", maxsize=window // 2, overflow="backpressure") as sub:
                async for msg in sub:
                    max_queued = max(max_queued, len(sub) + 1)
                    in_order = msg.data["i"] == expected
                    expected += 1
                    await asyncio.sleep(0.01)  # 10 ms of "work" per message (noqa: sleep-ok)
                    if not in_order or expected == arg:
                        _emit(done=expected, in_order=in_order, max_queued=max_queued)

        tasks.append(asyncio.ensure_future(consume()))
    _emit(address=node.address, node_id=node.node_id, port=node.grpc_port)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await node.stop(0.5)


if __name__ == "__main__":
    role, data_dir, port, arg, *rest = sys.argv[1:]
    asyncio.run(_peer(role, data_dir, int(port), int(arg), int(rest[0]) if rest else 0))
