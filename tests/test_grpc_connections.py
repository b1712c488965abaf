"""Which gRPC connections a sweep shuts down, which addresses it keeps waiting
(aralnode/transport/connections.py), and the socket filter that keeps them waiting
(aralnode/transport/synfilter.py, on real loopback sockets; other client hosts are
sockets bound to 127.0.0.x).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from aralnode.transport import synfilter
from aralnode.transport.connections import Conn, ConnectionLimits, blocked, shed
from aralnode.transport.reaper import supported
from aralnode.transport.synfilter import SynFilter, attach, listeners, program

LIMITS = ConnectionLimits(total=16, per_address=4, unused_after=20, room=2)


def conns(address: str, n: int, *, start: int = 0, calls: int = 0, used: bool = True) -> list[Conn]:
    """``n`` connections of ``address``, the i-th first seen at ``start + i``."""
    return [
        Conn(inode=hash((address, start + i)) & 0xFFFFFF, address=address, since=start + i,
             calls=calls, used=used)
        for i in range(n)
    ]  # fmt: skip


def test_an_address_past_its_share_loses_its_newest_idle_connections_first() -> None:
    busy = conns("10.0.0.1", 2, start=100, calls=1)  # the newest, but carrying calls
    idle = conns("10.0.0.1", 4, start=0)
    other = conns("10.0.0.2", 4, start=0)
    out = shed([*busy, *idle, *other], LIMITS, now=101)
    assert [(s.conn, s.rule) for s in out] == [(idle[3], "address"), (idle[2], "address")]
    assert "6 connections from its address, its limit 4" in out[0].why


def test_connections_with_calls_go_only_when_nothing_else_is_past_the_share() -> None:
    busy = conns("10.0.0.1", 6, start=0, calls=2)
    out = shed(busy, LIMITS, now=10)
    assert [s.conn for s in out] == [busy[5], busy[4]]


def test_a_connection_that_never_carried_a_call_goes_after_its_time() -> None:
    fresh = conns("10.0.0.1", 1, start=0, used=False)
    used = conns("10.0.0.1", 1, start=0)
    assert shed([*fresh, *used], LIMITS, now=19.9) == []
    out = shed([*fresh, *used], LIMITS, now=20)
    assert [(s.conn, s.rule) for s in out] == [(fresh[0], "unused")]


def test_a_nearly_full_port_makes_room_from_the_address_holding_most() -> None:
    """14 of 16 places (room 2) is the most kept: past it, the oldest idle
    connection of the heaviest address goes, one at a time."""
    heavy = conns("10.0.0.1", 4, start=0)
    busy = conns("10.0.0.2", 4, start=0, calls=1)  # holds as many, all carrying calls
    light = [c for i in range(3, 7) for c in conns(f"10.0.0.{i}", 2, start=0)]
    out = shed([*heavy, *busy, *light], LIMITS, now=60)
    # 16 held: two go, from 10.0.0.1 (the heaviest with an idle one), oldest first.
    assert [(s.conn, s.rule) for s in out] == [(heavy[0], "room"), (heavy[1], "room")]


def test_room_is_made_from_the_next_heaviest_once_the_heaviest_is_lighter() -> None:
    a = conns("10.0.0.1", 4, start=0)
    b = conns("10.0.0.2", 4, start=10)
    c = conns("10.0.0.3", 4, start=20)
    d = conns("10.0.0.4", 3, start=30)
    e = conns("10.0.0.5", 2, start=40)
    out = shed([*a, *b, *c, *d, *e], LIMITS, now=50)  # 17: three go
    assert [s.conn.address for s in out] == ["10.0.0.3", "10.0.0.2", "10.0.0.1"]


def test_nothing_goes_when_every_connection_left_carries_calls() -> None:
    many = [c for i in range(8) for c in conns(f"10.0.0.{i}", 2, calls=1)]
    assert shed(many, LIMITS, now=1) == []


def test_who_waits_for_new_connections() -> None:
    """An address at its share waits; while the port is within two rooms of full,
    so does every address holding ``crowd`` (2 here) or more."""
    at_share = conns("10.0.0.1", 4)
    assert blocked([*at_share, *conns("10.0.0.2", 3)], LIMITS) == {"10.0.0.1"}
    crowded = [*at_share, *conns("10.0.0.2", 3), *conns("10.0.0.3", 3), *conns("10.0.0.4", 2)]
    crowded += conns("10.0.0.5", 1)  # 13 > 16 - 2 * 2
    assert blocked(crowded, LIMITS) == {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
    assert ConnectionLimits.of(512, 128, 20).crowd == 8


# -- the socket filter ------------------------------------------------------------------

needs_linux = pytest.mark.skipif(not supported(), reason="a Linux socket filter")


@contextlib.contextmanager
def listening(family: socket.AddressFamily = socket.AF_INET) -> Iterator[socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::"
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen(16)
        yield sock


def dial(port: int, source: str, target: str = "127.0.0.1") -> socket.socket:
    """A connection begun (non-blocking) from ``source``."""
    family = socket.AF_INET6 if ":" in source else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.connect((target, port))
    return sock


def accepted(server: socket.socket, client: socket.socket) -> socket.socket:
    """The server's side of ``client``'s connection, once accepted."""
    server.settimeout(10)
    conn, peer = server.accept()
    assert peer[1] == client.getsockname()[1], (peer, client.getsockname())
    return conn


def state(sock: socket.socket) -> int:
    """The TCP state (tcp_info.tcpi_state): 1 established, 2 SYN sent."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


@needs_linux
@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_a_named_address_waits_and_every_other_connects(family: socket.AddressFamily) -> None:
    """(A dual-stack listener's IPv4 clients are filtered as IPv4.) The first
    packet of the named address is dropped, so its connection stays in SYN_SENT
    while one from another address, begun after it, is accepted."""
    with listening(family) as server:
        port = server.getsockname()[1]
        attach(server, program(["127.0.0.2"]))
        with (
            dial(port, "127.0.0.2") as waiting,
            dial(port, "127.0.0.3") as other,
            accepted(server, other),
        ):
            assert state(waiting) == 2
            server.settimeout(0)
            with pytest.raises(BlockingIOError):
                server.accept()


@needs_linux
def test_an_ipv6_64_is_matched_by_its_first_64_bits() -> None:
    with listening(socket.AF_INET6) as server:
        port = server.getsockname()[1]
        attach(server, program(["::/64"]))  # ::1's /64
        with (
            dial(port, "::1", "::1") as waiting,
            dial(port, "127.0.0.3") as other,
            accepted(server, other),
        ):
            assert state(waiting) == 2
        attach(server, program(["2001:db8::/64", "10.9.9.9"]))
        with dial(port, "::1", "::1") as client, accepted(server, client):
            pass


@needs_linux
def test_held_connections_go_on_and_the_filter_comes_off() -> None:
    """Only a connection's first packet is dropped: one the named address already
    holds keeps working (its sockets inherit the filter); with no address named,
    the filter is taken off and the address connects again."""
    with listening() as server:
        port = server.getsockname()[1]
        gate = SynFilter(port)
        with dial(port, "127.0.0.2") as held, accepted(server, held) as served:
            gate.apply(["127.0.0.2"])
            found = listeners(port)
            for sock in found:
                sock.close()
            assert len(found) == 1
            with dial(port, "127.0.0.2") as waiting:
                held.setblocking(True)
                held.sendall(b"ping")
                assert served.recv(4) == b"ping"
                served.sendall(b"pong")
                assert held.recv(4) == b"pong"
                assert state(waiting) == 2
                gate.clear()
                assert gate.blocked == frozenset()
            with dial(port, "127.0.0.2") as again, accepted(server, again):
                pass


@needs_linux
def test_a_filter_that_cannot_be_replaced_is_taken_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """From review: an attach that failed (the kernel's socket memory for filters,
    say) left the last program on the socket for good, its addresses waiting until
    the process ended. A failure takes every filter off, and no more is tried."""
    with listening() as server:
        port = server.getsockname()[1]
        gate = SynFilter(port)
        gate.apply(["127.0.0.2"])

        def refused(sock: socket.socket, code: object) -> None:
            raise OSError(12, "Cannot allocate memory")

        monkeypatch.setattr(synfilter, "attach", refused)
        gate.apply(["127.0.0.2", "127.0.0.4"])
        assert gate.blocked == frozenset()
        with dial(port, "127.0.0.2") as again, accepted(server, again):
            pass
        gate.apply(["127.0.0.2"])  # (none is tried again)
        assert gate.blocked == frozenset()


def test_the_program_names_each_address_once_and_skips_what_it_cannot_match() -> None:
    many = program(["10.0.0.1", "10.0.0.1", "2001:db8::/64", "fe80::1%eth0", "not an address"])
    one = program(["10.0.0.1", "2001:db8::/64", "fe80::1"])
    assert many == one
    assert len(program([f"10.0.{i // 256}.{i % 256}" for i in range(1000)])) < 4096
