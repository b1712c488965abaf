"""Rate limits (token buckets, ``aralnode.access.buckets``) on every door.

The buckets' arithmetic is tested with a fixed clock; the doors with rates so slow
(a few an hour) that nothing refills while a test runs: a caller over its rate is
refused in its door's language with a retry hint, its call never reaches the
handler, and another caller (another address, another principal) is still served.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import httpx2
import pytest
from google.rpc import error_details_pb2, status_pb2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from websockets.asyncio.client import connect

from aralnode import CallContext, Node, NodeConfig
from aralnode import _proto as pb
from aralnode.access.buckets import BucketTable, RateLimiter
from aralnode.core.clock import FixedClock
from aralnode.core.context import Credentials
from aralnode.core.errors import RateLimited
from aralnode.core.rates import Rate, parse_overrides
from aralnode.service.auth import Authenticated
from aralnode.testing import node_pair

SLOW = "2/h"  # two calls, then nothing refills while a test runs


class HeaderPrincipal:
    """Whoever shows ``x-principal: NAME`` is principal NAME (a stand-in for a
    verified token); anyone else is left to the node's own rule."""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        name = ctx.metadata.get("x-principal")
        return Authenticated(name, roles=frozenset({"vip"}) if name == "vip" else frozenset())

    __slots__ = ()


# -- the buckets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "per_second", "burst"),
    [
        ("10/s", 10.0, 10.0),
        ("600/min", 10.0, 600.0),
        ("3600/h, burst 5", 1.0, 5.0),
        ("5/s burst 20", 5.0, 20.0),
        (2.5, 2.5, 2.5),
        (0.5, 0.5, 1.0),
    ],
)
def test_a_rate_is_written_as_config_writes_it(spec: Any, per_second: float, burst: float) -> None:
    rate = Rate.parse(spec)
    assert rate is not None
    assert (rate.per_second, rate.burst) == (per_second, burst)


@pytest.mark.parametrize("spec", [None, 0, "0", "off", "none", ""])
def test_no_rate_is_no_limit(spec: Any) -> None:
    assert Rate.parse(spec) is None


@pytest.mark.parametrize("spec", ["fast", "10/week", "-1/s", "10/s burst 0", float("nan"), True])
def test_config_refuses_a_rate_that_is_not_one(spec: Any) -> None:
    with pytest.raises(ValueError, match="rate_limit_per_address"):
        NodeConfig(rate_limit_per_address=spec)


def test_config_refuses_an_override_it_cannot_place() -> None:
    with pytest.raises(ValueError, match="principal:NAME"):
        NodeConfig(rate_limit_overrides={"alice": "1/s"})
    with pytest.raises(ValueError, match="rate_limit_max_buckets"):
        NodeConfig(rate_limit_max_buckets=1)


def test_a_bucket_refills_with_the_clock_and_says_when() -> None:
    clock = FixedClock()
    limiter = RateLimiter(clock, per_address=Rate.parse("2/s"))
    admitted = limiter.admit("address", "10.0.0.1")
    assert admitted is not None
    assert (admitted.limit, admitted.remaining) == (2, 1)
    limiter.admit("address", "10.0.0.1")
    with pytest.raises(RateLimited) as refused:
        limiter.admit("address", "10.0.0.1")
    error = refused.value
    assert error.reason == "RATE_LIMIT_ADDRESS"
    assert error.retry_after == pytest.approx(0.5)
    assert error.details["limit"] == 2
    assert error.details["remaining"] == 0
    assert error.details["reset"] == -(-(clock.now_ms() + 1000) // 1000)
    assert "10.0.0.1" in error.message
    limiter.admit("address", "10.0.0.2")  # another address: its own bucket
    clock.advance(0.5)
    limiter.admit("address", "10.0.0.1")  # one token back
    with pytest.raises(RateLimited):
        limiter.admit("address", "10.0.0.1")


def test_a_refusal_takes_no_token_from_the_other_buckets() -> None:
    clock = FixedClock()
    limiter = RateLimiter(clock, global_rate=Rate.parse("3/s"), per_principal=Rate.parse("1/s"))
    limiter.admit("principal", "alice")
    for _ in range(3):
        with pytest.raises(RateLimited) as refused:
            limiter.admit("principal", "alice")
        assert refused.value.reason == "RATE_LIMIT_PRINCIPAL"
    limiter.admit("principal", "bob")
    limiter.admit("principal", "carol")  # the global bucket kept its tokens
    with pytest.raises(RateLimited) as refused:
        limiter.admit("principal", "dave")
    assert refused.value.reason == "RATE_LIMIT_GLOBAL"


def test_an_admission_says_what_the_tightest_bucket_said() -> None:
    clock = FixedClock()
    for global_rate, own_rate, limit, remaining in (
        ("3/s", "10/s", 3, 2),  # the node's bucket is the tighter
        ("100/s", "2/s", 2, 1),  # the caller's
        ("4/s", "4/s", 4, 3),  # as tight: the caller's
    ):
        limiter = RateLimiter(
            clock, global_rate=Rate.parse(global_rate), per_principal=Rate.parse(own_rate)
        )
        admitted = limiter.admit("principal", "alice")
        assert admitted is not None
        assert (admitted.limit, admitted.remaining) == (limit, remaining)
    only_global = RateLimiter(clock, global_rate=Rate.parse("5/s"))
    admitted = only_global.admit("principal", "alice")
    assert admitted is not None
    assert (admitted.limit, admitted.remaining) == (5, 4)
    assert RateLimiter(clock).admit("principal", "alice") is None


def test_overrides_by_name_and_by_role() -> None:
    clock = FixedClock()
    overrides = parse_overrides({"principal:ci": "off", "role:vip": "100/s", "role:slow": "1/s"})
    limiter = RateLimiter(clock, per_principal=Rate.parse("1/s"), overrides=overrides)
    for _ in range(50):
        assert limiter.admit("principal", "ci") is None  # exempt
        limiter.admit("principal", "alice", roles=("slow", "vip"))  # the more generous role
    limiter.admit("principal", "bob")
    with pytest.raises(RateLimited):
        limiter.admit("principal", "bob")


def test_the_tables_are_bounded_and_drop_refilled_buckets_first() -> None:
    clock = FixedClock()
    rate = Rate.parse("1/s")
    assert rate is not None
    table = BucketTable(16)
    for i in range(16):
        table.get(f"a{i}", rate, clock.monotonic()).tokens = 0.0
    clock.advance(2)  # all refilled: any can go at no cost
    for i in range(1000):
        table.get(f"b{i}", rate, clock.monotonic()).tokens = 0.0
    assert len(table) == 16
    # The newest stay: the table forgot the old ones, not the clients calling now.
    assert table.get("b999", rate, clock.monotonic()).tokens == 0.0
    assert table.evicted == 1000 - 16


# -- every door ------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    retry_after: float | None = None
    detail: str = ""


Caller = Callable[[str | None], Awaitable[Outcome]]


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[tuple[Node, list[str]]]:
    cfg = NodeConfig(
        name="limited",
        host="127.0.0.1",
        grpc_port=0,
        http_port=0,
        discovery="none",
        data_dir=tmp_path / "limited",
        rate_limit_per_address=SLOW,
        rate_limit_per_principal=SLOW,
        rate_limit_overrides={"role:vip": "off"},
    )
    node = Node(cfg, authenticator=HeaderPrincipal())
    served: list[str] = []

    @node.capability(id="t.count", risk="read_only")
    async def count(ctx: CallContext) -> str:
        served.append(ctx.principal)
        return "ok"

    async with node:
        yield node, served


def _headers(principal: str | None) -> dict[str, str]:
    return {"x-principal": principal} if principal else {}


async def _grpc(node: Node, principal: str | None) -> Outcome:
    async with grpc.aio.insecure_channel(node.address) as channel:
        invoke = channel.unary_unary(
            "/aral.v1.AgentNode/Invoke",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.InvokeResponse.FromString,
        )
        metadata = tuple(_headers(principal).items())
        try:
            await invoke(
                pb.InvokeRequest(call=pb.Call(capability="t.count")), metadata=metadata, timeout=10
            )
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            status = status_pb2.Status.FromString(
                dict(err.trailing_metadata() or ())["grpc-status-details-bin"]  # type: ignore[arg-type]
            )
            retry = None
            for detail in status.details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    retry = info.retry_delay.ToNanoseconds() / 1e9
            return Outcome(False, retry, err.details() or "")
    return Outcome(True)


async def _rest(node: Node, principal: str | None) -> Outcome:
    url = f"http://127.0.0.1:{node.http_port}/v1/invoke"
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(
            url, json={"call": {"capability": "t.count"}}, headers=_headers(principal)
        )
    if r.status_code == 200:
        return Outcome(True)
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-ratelimit-remaining"] == "0"
    assert r.headers["x-ratelimit-limit"] == "2"
    assert int(r.headers["x-ratelimit-reset"]) > 1_700_000_000
    return Outcome(False, float(r.headers["retry-after"]), r.json()["error"]["message"])


async def _mcp(node: Node, principal: str | None) -> Outcome:
    url = f"http://127.0.0.1:{node.http_port}/mcp"
    async with (
        httpx2.AsyncClient(headers=_headers(principal), timeout=10) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        result = await client.call_tool("t.count", {})
    if not result.is_error:
        return Outcome(True)
    error = json.loads(result.content[0].text)["error"]  # type: ignore[union-attr]
    assert error["code"] == "rate_limit_exceeded"
    return Outcome(False, error["details"]["retry_after"], error["message"])


async def _ws(node: Node, principal: str | None) -> Outcome:
    url = f"ws://127.0.0.1:{node.http_port}/ws"
    async with connect(url, additional_headers=_headers(principal)) as ws:
        await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "t.count"}))
        async with asyncio.timeout(10):
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == 1:
                    break
    if "result" in reply:
        return Outcome(True)
    error = reply["error"]
    assert error["code"] == "rate_limit_exceeded", reply
    return Outcome(False, error["details"]["retry_after"], error["message"])


DOORS: dict[str, Callable[[Node, str | None], Awaitable[Outcome]]] = {
    "grpc": _grpc,
    "rest": _rest,
    "mcp": _mcp,
    "ws": _ws,
}


async def _until_refused(door: Caller, principal: str | None) -> tuple[int, Outcome]:
    """Calls until one is refused (bounded); how many were served, and the refusal."""
    for served in range(10):
        outcome = await door(principal)
        if not outcome.ok:
            return served, outcome
    raise AssertionError("never refused")


@pytest.mark.parametrize("door_name", sorted(DOORS))
async def test_over_its_rate_a_caller_is_refused_with_a_retry_hint_others_are_served(
    limited: tuple[Node, list[str]], door_name: str
) -> None:
    node, served = limited

    async def door(principal: str | None) -> Outcome:
        return await DOORS[door_name](node, principal)

    # An anonymous caller is its address: two calls, then refused. (The MCP client
    # lists the tools as it connects: a call too, which takes its token.)
    ok, refused = await _until_refused(door, None)
    assert ok == (1 if door_name == "mcp" else 2)
    assert served == ["anonymous"] * ok
    assert refused.retry_after is not None
    assert refused.retry_after > 60
    assert "127.0.0.1" in refused.detail
    assert "2/h" in refused.detail
    # A verified principal calling from the same address has its own bucket.
    ok_alice, refused = await _until_refused(door, "alice")
    assert ok_alice == ok
    assert served.count("alice") == ok
    assert "alice" in refused.detail
    assert (await door("bob")).ok
    for _ in range(5):  # a role exempt by an override
        assert (await door("vip")).ok
    # Refused calls never reached the handler.
    assert served.count("anonymous") == served.count("alice") == ok
    assert node.pipeline.counters["ratelimit.refused_address"] == 1
    assert node.pipeline.counters["ratelimit.refused_principal"] == 1


async def test_another_address_is_another_bucket_on_http(
    limited: tuple[Node, list[str]],
) -> None:
    node, served = limited
    url = f"http://127.0.0.1:{node.http_port}/v1/invoke"
    body = {"call": {"capability": "t.count"}}
    async with httpx.AsyncClient(timeout=10) as first:
        answers = [await first.post(url, json=body) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    # Served calls carry the headers too: the bucket's size and what is left of it.
    left = [(r.headers["x-ratelimit-limit"], r.headers["x-ratelimit-remaining"]) for r in answers]
    assert left == [("2", "1"), ("2", "0"), ("2", "0")]
    assert int(answers[0].headers["x-ratelimit-reset"]) > 1_700_000_000
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=other, timeout=10) as second:
        r = await second.post(url, json=body)
    assert r.status_code == 200, r.text
    assert len(served) == 3


async def test_a_peer_over_its_rate_is_refused_per_message_and_keeps_its_channel(
    tmp_path: Path,
) -> None:
    counted: list[str] = []

    def setup(b: Node) -> None:
        @b.capability(id="t.count", risk="read_only")
        async def count(ctx: CallContext) -> str:
            counted.append(ctx.caller)
            return "ok"

    async with node_pair(setup, rate_limit_per_peer=SLOW) as (a, b):
        assert await a.request(b.node_id, "t.count", timeout=10) == "ok"
        assert await a.request(b.node_id, "t.count", timeout=10) == "ok"
        with pytest.raises(RateLimited) as refused:
            await a.request(b.node_id, "t.count", timeout=10)
        assert refused.value.reason == "RATE_LIMIT_PEER"
        assert refused.value.retry_after is not None
        assert refused.value.retry_after > 60
        assert a.node_id in refused.value.message
        assert counted == [a.node_id] * 2
        # Notifications count too: past the rate each is refused, none delivered.
        notes: list[Any] = []
        b.on_notification("t.note", lambda msg, _tx: notes.append(msg.data))
        await a.notify(b.node_id, "t.note", {"n": 1})
        assert await a.parts.hub.flush(b.node_id, timeout=10)
        assert notes == []
        assert b.pipeline.counters["ratelimit.refused_peer"] == 2
        # b's own requests to a are not limited (a set no rate), and the channel lives.
        a.capability(id="t.pong", risk="read_only")(_pong)
        assert await b.request(a.node_id, "t.pong", timeout=10) == "pong"
        assert b.node_id in a.parts.hub.connected_peers()
        # Another peer has its own bucket: served while a is refused.
        cfg = NodeConfig(
            name="c", host="127.0.0.1", grpc_port=0, http_port=None, discovery="none",
            data_dir=tmp_path / "c",
        )  # fmt: skip
        async with Node(cfg) as c:
            await c.connect(b.address, expected_node_id=b.node_id)
            assert await c.request(b.node_id, "t.count", timeout=10) == "ok"
        with pytest.raises(RateLimited):
            await a.request(b.node_id, "t.count", timeout=10)
        assert counted == [a.node_id, a.node_id, c.node_id]


async def _pong() -> str:
    return "pong"


async def test_a_key_made_a_moment_ago_keeps_to_its_address_bucket(
    make_node: Callable[..., Node],
) -> None:
    """A handshake proves a key, and keys are free: one pinned by a handshake is no
    identity of its own for the rate limit unless the operator names it
    (``peer_grants``), so fresh keys cannot step around the address's bucket (from
    review: 50 signed calls from a new key passed an address limited to 5/s)."""
    from aralnode import Identity, NodeClient
    from aralnode.core.capabilities import CapabilityRegistry
    from aralnode.core.clock import SYSTEM_CLOCK
    from aralnode.core.handshake import build_card
    from aralnode.core.identity import KeyRing

    trusted = Identity.generate()
    node = make_node(
        "keys",
        rate_limit_per_address="3/h",
        rate_limit_per_principal="100/h",
        peer_grants={trusted.node_id: frozenset({"agent:invoke"})},
    )

    async def calls_until_refused(me: Identity) -> int:
        card = build_card(
            me, name="k", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
        )
        async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
            await client.handshake(card)
            for served in range(6):
                try:
                    await client.request("demo.echo", {"text": "x"})
                except RateLimited:
                    return served
        return 6

    async with node:
        # (A handshake is not a call: the three tokens are the address's.)
        assert await calls_until_refused(Identity.generate()) == 3
        assert await calls_until_refused(Identity.generate()) == 0  # a new key: same bucket
        assert await calls_until_refused(trusted) == 6  # a key the operator named: its own
