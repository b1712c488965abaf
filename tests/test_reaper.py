"""The stuck-connection reaper (aralnode/transport/reaper.py), on real loopback sockets.

A listener of the test's own stands in for grpc's: its accepted sockets are the
server's side of each connection, and the test makes them look stuck (bytes left
unread, nothing sent) or alive. ``scan(now=...)`` is given the time, so no test
waits for a clock; the kernel's own "last data sent" is only read with ``after``
at 0 (any) or an hour (none).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from aralnode.transport.calls import CallTable
from aralnode.transport.connections import ConnectionLimits
from aralnode.transport.reaper import (
    StuckConnectionReaper,
    _judge,
    _Reap,
    _State,
    _state,
    supported,
)

pytestmark = pytest.mark.skipif(not supported(), reason="the reaper reads /proc/self/fd")


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


@contextlib.contextmanager
def connection(server: socket.socket) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, the server's side) of one new connection."""
    client = socket.create_connection(server.getsockname()[:2], timeout=10)
    accepted, _ = server.accept()
    with client, accepted:
        yield client, accepted


def arrived(sock: socket.socket) -> None:
    """Return once ``sock`` has bytes to read (they are in its receive queue)."""
    readable, _, _ = select.select([sock], [], [], 10)
    assert readable, "the bytes sent did not arrive"


def ended(client: socket.socket) -> bool:
    """Whether the server's side was shut down: the client reads the end."""
    client.settimeout(10)
    try:
        return client.recv(1) == b""
    except ConnectionError:
        return True


def test_a_connection_whose_bytes_stay_unread_is_shut_down() -> None:
    with listener() as server, connection(server) as (client, accepted):
        client.sendall(b"x" * 1000)
        arrived(accepted)
        reaper = StuckConnectionReaper(server.getsockname()[1], interval=1, after=5)
        assert reaper.scan(now=100) == 0  # first seen: nothing read since
        assert reaper.scan(now=104) == 0  # not for 5 s yet
        assert reaper.scan(now=105) == 1
        assert ended(client)
        assert reaper.scan(now=106) == 0  # counted once, though still open here


def test_a_connection_that_reads_is_left_alone() -> None:
    with listener() as server, connection(server) as (client, accepted):
        reaper = StuckConnectionReaper(server.getsockname()[1], interval=1, after=5)
        for now in (100, 110, 120):
            client.sendall(b"x" * 1000)
            arrived(accepted)
            assert reaper.scan(now=now) == 0
            accepted.recv(500)  # it reads: what it has read grows, scan after scan
        accepted.recv(10_000)
        assert reaper.scan(now=200) == 0  # nothing waiting: nothing to judge
        client.settimeout(0)
        with pytest.raises(BlockingIOError):
            client.recv(1)  # still open


def test_a_connection_silent_both_ways_after_sending_is_shut_down() -> None:
    with listener() as server, connection(server) as (client, accepted):
        port = server.getsockname()[1]
        accepted.sendall(b"settings")
        assert client.recv(8) == b"settings"
        assert StuckConnectionReaper(port, interval=1, after=3600).scan() == 0
        assert StuckConnectionReaper(port, interval=1, after=0).scan() == 1
        assert ended(client)


def test_a_connection_the_server_never_wrote_to_is_not_judged_by_silence() -> None:
    """Before its handshake a connection has sent nothing; grpc's handshake timeout
    is what ends a silent one."""
    with listener() as server, connection(server) as (client, _):
        assert StuckConnectionReaper(server.getsockname()[1], interval=1, after=0).scan() == 0
        client.settimeout(0)
        with pytest.raises(BlockingIOError):
            client.recv(1)


def test_only_the_servers_side_of_its_own_port_is_looked_at() -> None:
    """Sockets on other ports, the listener and this process's own client sockets
    (whose peer port is the server's) are left alone."""
    with (
        listener() as server,
        listener() as other,
        connection(server) as (client, accepted),
        connection(other) as (other_client, other_accepted),
    ):
        for sock in (client, accepted, other_client, other_accepted):
            sock.sendall(b"x")
        for sock in (client, accepted, other_client, other_accepted):
            arrived(sock)
        reaper = StuckConnectionReaper(server.getsockname()[1], interval=1, after=0)
        assert reaper.scan(now=1) == 1  # sent once, nothing since, with after=0
        assert client.recv(1) == b"x"
        assert ended(client)
        for sock in (other_client, other_accepted):
            assert sock.recv(1) == b"x"  # what the other end sent, and nothing else:
            sock.settimeout(0)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # still open (a shut-down socket reads b"")
        server.settimeout(0)
        with pytest.raises(BlockingIOError):
            server.accept()  # the listener still listens, no connection waiting


async def test_a_sweep_counts_in_the_nodes_counters() -> None:
    counters: Counter[str] = Counter()
    with listener() as server, connection(server) as (client, accepted):
        accepted.sendall(b"settings")
        assert client.recv(8) == b"settings"
        reaper = StuckConnectionReaper(
            server.getsockname()[1], interval=1, after=0, counters=counters
        )
        assert await reaper.sweep() == 1
        assert counters["grpc.connections_reaped"] == 1
        assert ended(client)


async def test_started_it_sweeps_on_its_own_until_stopped() -> None:
    with listener() as server, connection(server) as (client, accepted):
        accepted.sendall(b"settings")
        assert client.recv(8) == b"settings"
        reaper = StuckConnectionReaper(server.getsockname()[1], interval=0.01, after=0)
        reaper.start()
        try:
            loop = asyncio.get_running_loop()
            assert await asyncio.wait_for(loop.run_in_executor(None, ended, client), 10)
        finally:
            await reaper.stop()
        await reaper.stop()  # twice: nothing left to stop


async def test_stopped_while_a_scan_runs_it_returns_once_the_scan_is_over() -> None:
    """A scan runs in a thread, which cancelling its task does not stop: ``stop``
    waits for it, so nothing is shut down after the server has stopped."""
    entered, release = threading.Event(), threading.Event()
    finished: list[bool] = []
    reaper = StuckConnectionReaper(1, interval=0, after=0)

    def scan(now: float | None = None, calls: object = None) -> int:
        entered.set()
        release.wait(10)
        finished.append(True)
        return 0

    reaper.scan = scan  # type: ignore[method-assign]
    reaper.start()
    assert reaper._task is not None
    # The scan is let go only once its task is cancelled (by ``stop``).
    reaper._task.add_done_callback(lambda _: release.set())
    assert await asyncio.to_thread(entered.wait, 10)
    await reaper.stop()
    assert finished == [True]


# -- the decision, on the kernel's figures ---------------------------------------------


def state(**fields: int) -> _State:
    values = {"sent_ms": 0, "received_ms": 0, "segments_out": 1, "read": 0, "waiting": 0}
    return _State(**(values | fields))


def test_silence_both_ways_for_the_span_is_reaped_and_not_a_millisecond_sooner() -> None:
    quiet = {"sent_ms": 1599, "received_ms": 5000}
    assert _judge(state(**quiet), None, now=0, after=1.6, silent_after=1.6) is None
    with pytest.raises(_Reap, match=r"nothing sent or received for 1\.6 s"):
        _judge(state(sent_ms=1600, received_ms=1600), None, now=0, after=1.6, silent_after=1.6)


def test_a_server_that_only_receives_is_not_judged_by_its_own_silence() -> None:
    """grpc core resets its keepalive timer on every read and owes no WINDOW_UPDATE
    for small messages: a client-streaming call's server can be quiet for seconds."""
    assert (
        _judge(state(sent_ms=60_000, received_ms=100), None, now=0, after=1.6, silent_after=1.6)
        is None
    )


def test_a_socket_that_never_sent_is_not_judged_by_silence() -> None:
    quiet = state(sent_ms=60_000, received_ms=60_000, segments_out=0)
    assert _judge(quiet, None, now=0, after=1.6, silent_after=1.6) is None


def test_unread_bytes_are_timed_from_when_reading_stopped() -> None:
    waiting = state(read=100, waiting=50)
    seen = _judge(waiting, None, now=10, after=5, silent_after=5)
    assert seen is not None
    assert seen.since == 10
    assert _judge(waiting, seen, now=14.9, after=5, silent_after=5) is seen
    moved = _judge(
        state(read=150, waiting=50), seen, now=14.9, after=5, silent_after=5
    )  # it read 50
    assert moved is not None
    assert moved.since == 14.9
    with pytest.raises(_Reap, match=r"50 bytes left unread for 5\.0 s"):
        _judge(waiting, seen, now=15, after=5, silent_after=5)
    assert _judge(state(read=100, waiting=0), seen, now=99, after=5, silent_after=5) is None


def test_the_kernels_figures_are_read_where_they_are() -> None:
    """Offsets in struct tcp_info and SIOCINQ, on a real socket: what was sent
    arrives as waiting, and reading moves it to read."""
    with listener() as server, connection(server) as (client, accepted):
        client.sendall(b"x" * 1000)
        arrived(accepted)
        before = _state(accepted)
        assert before is not None
        assert (before.read, before.waiting, before.segments_out) == (0, 1000, 0)
        assert accepted.recv(400) == b"x" * 400
        accepted.sendall(b"y")
        assert client.recv(1) == b"y"
        after = _state(accepted)
        assert after is not None
        assert (after.read, after.waiting, after.segments_out) == (400, 600, 1)


async def test_a_short_keepalive_leaves_a_handshake_its_whole_timeout() -> None:
    """The reaper's span is three keepalive periods and the keepalive timeout; for
    silence both ways, never less than the handshake timeout and the keepalive
    timeout: a client still in its TLS handshake is silent both ways, and grpc
    allows it that long. Bytes left unread keep the shorter span."""
    from aralnode.transport.grpc_server import GrpcLimits, GrpcServer

    spans = []
    for keepalive_ms, handshake_ms in ((200, 10_000), (5_000, 10_000), (5_000, 30_000)):
        server = GrpcServer(
            max_message_bytes=1 << 20,
            keepalive_ms=keepalive_ms,
            limits=GrpcLimits(handshake_timeout_ms=handshake_ms),
        )
        await server.start("127.0.0.1", 0)
        try:
            assert server.reaper is not None
            spans.append((server.reaper.after, server.reaper.silent_after))
        finally:
            await server.stop(0)
    assert spans == [(1.6, 11.0), (17.5, 17.5), (17.5, 32.5)]


def test_silence_has_its_own_span() -> None:
    silent = state(sent_ms=5000, received_ms=5000)
    assert _judge(silent, None, now=0, after=1.6, silent_after=11) is None
    with pytest.raises(_Reap):
        _judge(state(sent_ms=11_000, received_ms=11_000), None, now=0, after=1.6, silent_after=11)
    waiting = state(read=100, waiting=50)  # the unread rule keeps ``after``
    seen = _judge(waiting, None, now=10, after=1.6, silent_after=11)
    with pytest.raises(_Reap):
        _judge(waiting, seen, now=12, after=1.6, silent_after=11)


# -- each address's share of the port (transport/connections.py) -----------------------


@contextlib.contextmanager
def connection_from(
    server: socket.socket, source: str
) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, the server's side) of one new connection from ``source`` (127.0.0.x)."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.bind((source, 0))
    client.settimeout(10)
    client.connect(server.getsockname()[:2])
    accepted, _ = server.accept()
    with client, accepted:
        yield client, accepted


def peer_of(client: socket.socket) -> str:
    """How grpc's ``context.peer()`` names the client's connection."""
    host, port = client.getsockname()[:2]
    return f"ipv4:{host}:{port}"


def used(table: CallTable, *clients: socket.socket) -> None:
    """Each client's connection has carried a call (which has ended)."""
    for client in clients:
        table.leave(table.enter(peer_of(client), now=0), now=0)


def still_open(client: socket.socket) -> bool:
    client.settimeout(0)
    try:
        client.recv(1)
    except BlockingIOError:
        return True
    return False


def sharing(port: int, table: CallTable, **limits: float) -> StuckConnectionReaper:
    values = {"total": 16, "per_address": 2, "unused_after": 3600, "room": 1} | limits
    return StuckConnectionReaper(
        port,
        interval=1,
        after=3600,
        limits=ConnectionLimits(**values),  # type: ignore[arg-type]
        calls=table,
    )


def test_an_address_past_its_share_loses_its_newest_connection() -> None:
    """(Connections that came between two sweeps: at its share, an address's new
    ones wait, see tests/test_grpc_connections.py.)"""
    table = CallTable(per_address=100)
    with listener() as server, contextlib.ExitStack() as stack:
        reaper = sharing(server.getsockname()[1], table)
        first, _ = stack.enter_context(connection_from(server, "127.0.0.2"))
        other, _ = stack.enter_context(connection_from(server, "127.0.0.3"))
        used(table, first, other)
        assert reaper.scan(now=100) == 0
        newer = [stack.enter_context(connection_from(server, "127.0.0.2"))[0] for _ in range(2)]
        used(table, *newer)
        assert reaper.scan(now=101) == 1
        assert sorted(still_open(c) for c in newer) == [False, True]
        assert still_open(first)
        assert still_open(other)


def test_a_full_port_makes_room_from_the_address_holding_most() -> None:
    """Four places, one kept free: the oldest idle connection of the address holding
    most goes; a connection carrying a call is not taken."""
    table = CallTable(per_address=100)
    with listener() as server, contextlib.ExitStack() as stack:
        reaper = sharing(server.getsockname()[1], table, total=4, per_address=4)
        busy = stack.enter_context(connection_from(server, "127.0.0.2"))[0]
        table.enter(peer_of(busy), now=0)  # a call open on it
        assert reaper.scan(now=100) == 0
        oldest_idle = stack.enter_context(connection_from(server, "127.0.0.2"))[0]
        used(table, oldest_idle)
        assert reaper.scan(now=101) == 0
        rest = [
            stack.enter_context(connection_from(server, source))[0]
            for source in ("127.0.0.2", "127.0.0.3")
        ]
        used(table, *rest)
        assert reaper.scan(now=102) == 1
        assert ended(oldest_idle)
        assert all(still_open(c) for c in (busy, *rest))


def test_a_connection_that_never_carries_a_call_goes_after_its_time() -> None:
    table = CallTable(per_address=100)
    with listener() as server, connection(server) as (idle, _), connection(server) as (calls, _):
        reaper = sharing(server.getsockname()[1], table, unused_after=20)
        used(table, calls)
        assert reaper.scan(now=100) == 0  # first seen
        assert reaper.scan(now=119) == 0
        assert reaper.scan(now=120) == 1
        assert ended(idle)
        assert still_open(calls)


async def test_a_sweep_counts_by_rule_and_keeps_a_full_address_waiting() -> None:
    """The sweep counts what it shut down by rule and names the addresses at their
    share to the socket filter, which comes off when the reaper stops."""
    counters: Counter[str] = Counter()
    table = CallTable(per_address=100)
    with listener() as server, contextlib.ExitStack() as stack:
        reaper = sharing(server.getsockname()[1], table)
        reaper.counters = counters
        held = [stack.enter_context(connection_from(server, "127.0.0.2"))[0] for _ in range(3)]
        used(table, *held)
        assert await reaper.sweep() == 1
        assert counters == {"grpc.connections_over_address_limit": 1}
        assert reaper._filter is not None
        assert reaper._filter.blocked == {"127.0.0.2"}
        await reaper.stop()
        assert reaper._filter.blocked == frozenset()


def test_without_limits_nothing_is_shed() -> None:
    with listener() as server, contextlib.ExitStack() as stack:
        reaper = StuckConnectionReaper(server.getsockname()[1], interval=1, after=3600)
        for _ in range(5):
            stack.enter_context(connection_from(server, "127.0.0.2"))
        assert reaper.scan(now=1) == 0
        assert reaper.scan(now=10_000) == 0
