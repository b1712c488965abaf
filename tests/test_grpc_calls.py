"""The gRPC port's call shares and request budget (aralnode/transport/calls.py).

``CallTable`` counts each client address's calls and the connection each runs on;
``ReceiveBudget`` gives turns to receive a request message, in all and per address,
a freed turn going to the waiting address that holds the fewest. No clock, no
network: turns are awaited as tasks, and each step is checked once the loop has
run what it made ready.
"""

from __future__ import annotations

import asyncio

import pytest

from aralnode.core.errors import RateLimited
from aralnode.transport.calls import CallTable, ReceiveBudget, connection_key, peer_connection


def test_a_connection_is_one_key_from_grpc_and_from_the_socket() -> None:
    assert peer_connection("ipv4:127.0.0.1:5000") == connection_key("127.0.0.1", 5000)
    assert peer_connection("ipv6:[::1]:5000") == connection_key("::1", 5000) == "[::1]:5000"
    assert peer_connection("ipv6:%5B::1%5D:5000") == "[::1]:5000"  # grpc's encoded form
    # An IPv4 client of a dual-stack socket: IPv4 both ways.
    assert connection_key("::ffff:127.0.0.1", 7) == "127.0.0.1:7"
    assert peer_connection("ipv6:[::ffff:127.0.0.1]:7") == "127.0.0.1:7"
    assert connection_key("fe80::1%eth0", 9) == "[fe80::1]:9"
    assert peer_connection("unix:/tmp/x") == "unix:/tmp/x"


def test_an_address_keeps_to_its_share_of_calls() -> None:
    table = CallTable(per_address=2)
    first = table.enter("ipv4:10.0.0.7:1000", now=1)
    table.enter("ipv4:10.0.0.7:1001", now=1)
    with pytest.raises(RateLimited) as info:
        table.enter("ipv4:10.0.0.7:1002", now=1)  # another connection, same address
    assert info.value.reason == "TOO_MANY_CALLS"
    assert info.value.details == {"limit": 2}
    assert table.refused == 1
    table.enter("ipv4:10.0.0.8:1000", now=1)  # another address has its own share
    table.leave(first, now=2)
    table.enter("ipv4:10.0.0.7:1002", now=2)
    assert table.held("ipv4:10.0.0.7:9") == 2


def test_an_ipv6_64_is_one_address() -> None:
    table = CallTable(per_address=1)
    table.enter("ipv6:[2001:db8::1]:1000", now=1)
    with pytest.raises(RateLimited):
        table.enter("ipv6:[2001:db8::ffff]:1000", now=1)
    table.enter("ipv6:[2001:db8:0:1::1]:1000", now=1)  # the next /64


def test_the_table_says_which_connections_carry_calls_and_forgets_gone_ones() -> None:
    table = CallTable(per_address=10)
    key = table.enter("ipv4:127.0.0.1:4000", now=10)
    table.enter("ipv4:127.0.0.1:4001", now=10)
    table.leave(key, now=11)
    calls, used = table.snapshot()
    assert calls == {"127.0.0.1:4001": 1}
    assert used == {"127.0.0.1:4000", "127.0.0.1:4001"}
    # Gone from the port, idle since before the sweep began: forgotten. A connection
    # with a call open, or active since, is kept whatever the sweep found.
    table.forget(live=set(), before=12)
    assert table.snapshot() == ({"127.0.0.1:4001": 1}, {"127.0.0.1:4001"})
    table.enter("ipv4:127.0.0.1:4002", now=13)
    table.leave(("127.0.0.1", "127.0.0.1:4002"), now=13)
    table.forget(live=set(), before=12)
    assert "127.0.0.1:4002" in table.snapshot()[1]


async def settle() -> None:
    """Let the loop run what is ready (futures set, their tasks resumed)."""
    for _ in range(5):
        await asyncio.sleep(0)  # one loop turn each, not a wait for time (noqa: sleep-ok)


async def test_turns_are_bounded_in_all_and_per_address() -> None:
    budget = ReceiveBudget(slots=3, per_address=2)
    await budget.acquire("a")
    await budget.acquire("a")
    third = asyncio.ensure_future(budget.acquire("a"))  # a's share is taken: it waits
    await budget.acquire("b")  # b has its own
    await settle()
    assert not third.done()
    fourth = asyncio.ensure_future(budget.acquire("c"))  # all three turns are taken
    await settle()
    assert not fourth.done()
    assert (budget.receiving, budget.waiting()) == (3, 2)
    budget.release("a")  # c holds none, a holds one: c goes first
    await settle()
    assert fourth.done()
    assert not third.done()
    budget.release("b")
    await settle()
    assert third.done()
    assert (budget.held("a"), budget.held("b"), budget.held("c")) == (2, 0, 1)


async def test_a_freed_turn_goes_to_the_address_holding_fewest() -> None:
    """An address that takes every turn it can does not keep a newcomer waiting for
    more than the first turn to come free."""
    budget = ReceiveBudget(slots=4, per_address=4)
    for _ in range(4):
        await budget.acquire("greedy")
    greedy = [asyncio.ensure_future(budget.acquire("greedy")) for _ in range(3)]
    await settle()
    newcomer = asyncio.ensure_future(budget.acquire("newcomer"))  # queued after greedy's
    await settle()
    budget.release("greedy")
    await settle()
    assert newcomer.done()
    assert not any(w.done() for w in greedy)
    budget.release("newcomer")  # nobody else waits: greedy's next waiter takes it
    await settle()
    assert sum(w.done() for w in greedy) == 1
    for w in greedy:
        w.cancel()


async def test_a_cancelled_waiter_gives_its_place_and_any_turn_back() -> None:
    budget = ReceiveBudget(slots=1, per_address=1)
    await budget.acquire("a")
    waiter = asyncio.ensure_future(budget.acquire("b"))
    await settle()
    waiter.cancel()
    await settle()
    assert budget.waiting() == 0
    # Given a turn and cancelled before it ran: the turn comes back.
    late = asyncio.ensure_future(budget.acquire("b"))
    await settle()
    budget.release("a")  # hands the turn to ``late``...
    late.cancel()  # ...which is cancelled before it resumes
    await settle()
    assert late.cancelled()
    assert budget.receiving == 0
    await asyncio.wait_for(budget.acquire("c"), 5)  # free again
