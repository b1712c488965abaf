"""Circuit breakers on calls to peers (``aralnode.access.breaker``, PRO-023).

The state machine with a fixed clock and stand-in calls; then a real peer that is
stopped (its calls fail, the breaker opens, calls fail fast on every door with a
retry hint) and restarted (the half-open probe closes it). Time is moved on the
breaker's injected clock, never waited for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2

from aralnode import CallContext, Node, NodeConfig
from aralnode import _proto as pb
from aralnode.access.breaker import CIRCUIT_OPEN, Breakers, BreakerState, is_failure
from aralnode.cli import main as cli_main
from aralnode.core.clock import FixedClock
from aralnode.core.errors import (
    DeadlineExceeded,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unavailable,
)

# -- the state machine ----------------------------------------------------------------


async def _fail() -> None:
    raise Unavailable("down")


async def _ok() -> str:
    return "ok"


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (Unavailable("x"), True),
        (DeadlineExceeded("x"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError("a bug here, not news about the peer"), False),
        (NotFound("x"), False),
        (PermissionDenied("x"), False),
        (RateLimited("x"), False),
        (Unavailable("x", reason=CIRCUIT_OPEN), False),
    ],
)
def test_only_the_peer_failing_counts_as_a_failure(exc: BaseException, counts: bool) -> None:
    assert is_failure(exc) is counts


async def test_open_after_failures_then_half_open_probe_then_closed() -> None:
    clock = FixedClock()
    breakers = Breakers(clock, failures=3, cooldown=5, max_cooldown=60)
    for _ in range(2):
        with pytest.raises(Unavailable):
            await breakers.call("p", _fail)
    assert breakers.state("p") == (BreakerState.CLOSED, 0.0)
    with pytest.raises(Unavailable):
        await breakers.call("p", _fail)
    assert breakers.state("p") == (BreakerState.OPEN, 5.0)
    ran: list[int] = []

    async def counted() -> str:
        ran.append(1)
        return "ok"

    with pytest.raises(Unavailable) as fast:
        await breakers.call("p", counted)
    assert fast.value.reason == CIRCUIT_OPEN
    assert fast.value.retry_after == pytest.approx(5.0)
    assert "p" in fast.value.message
    assert ran == []
    assert await breakers.call("q", counted) == "ok"  # another peer: its own breaker
    clock.advance(5)
    assert breakers.state("p") == (BreakerState.HALF_OPEN, 0.0)
    assert await breakers.call("p", counted) == "ok"
    assert breakers.state("p") == (BreakerState.CLOSED, 0.0)
    assert breakers.counters["breaker.opened"] == breakers.counters["breaker.closed"] == 1


async def test_a_failed_probe_reopens_for_longer_and_one_probe_at_a_time() -> None:
    clock = FixedClock()
    breakers = Breakers(clock, failures=1, cooldown=2, max_cooldown=5)
    with pytest.raises(Unavailable):
        await breakers.call("p", _fail)
    clock.advance(2)
    with pytest.raises(Unavailable) as probe:  # the probe itself fails
        await breakers.call("p", _fail)
    assert probe.value.reason != CIRCUIT_OPEN
    assert breakers.state("p") == (BreakerState.OPEN, 4.0)  # doubled
    clock.advance(4)
    with pytest.raises(Unavailable):
        await breakers.call("p", _fail)
    assert breakers.state("p") == (BreakerState.OPEN, 5.0)  # capped
    clock.advance(5)

    async def second_call_while_probing() -> str:
        with pytest.raises(Unavailable) as busy:
            await breakers.call("p", _ok)
        assert busy.value.reason == CIRCUIT_OPEN
        return "probed"

    assert await breakers.call("p", second_call_while_probing) == "probed"
    assert breakers.state("p")[0] is BreakerState.CLOSED


async def test_a_probe_that_never_reached_the_peer_frees_its_turn() -> None:
    clock = FixedClock()
    breakers = Breakers(clock, failures=1, cooldown=1)
    with pytest.raises(Unavailable):
        await breakers.call("p", _fail)
    clock.advance(1)

    async def bug() -> None:
        raise ValueError("would not encode")

    with pytest.raises(ValueError, match="encode"):
        await breakers.call("p", bug)
    assert breakers.state("p")[0] is BreakerState.HALF_OPEN  # still, and free to probe
    assert await breakers.call("p", _ok) == "ok"


async def test_a_business_error_closes_nothing_open_and_resets_the_count() -> None:
    breakers = Breakers(FixedClock(), failures=2)
    with pytest.raises(Unavailable):
        await breakers.call("p", _fail)

    async def not_found() -> None:
        raise NotFound("no such thing")

    with pytest.raises(NotFound):
        await breakers.call("p", not_found)
    with pytest.raises(Unavailable):
        await breakers.call("p", _fail)
    assert breakers.state("p")[0] is BreakerState.CLOSED  # the count started again


def test_breakers_are_bounded() -> None:
    breakers = Breakers(FixedClock(), failures=1, max_peers=8)
    for i in range(100):
        breakers._failed(f"p{i}")
    assert len(breakers.not_closed()) == 8


def test_config_checks_the_breaker_fields() -> None:
    with pytest.raises(ValueError, match="breaker_failures"):
        NodeConfig(breaker_failures=-1)
    with pytest.raises(ValueError, match="breaker_cooldown_seconds"):
        NodeConfig(breaker_cooldown_seconds=10, breaker_max_cooldown_seconds=5)


# -- a real peer, stopped and restarted -------------------------------------------------


def _config(tmp: Path, name: str, **extra: Any) -> NodeConfig:
    cfg: dict[str, Any] = {
        "name": name,
        "host": "127.0.0.1",
        "grpc_port": 0,
        "http_port": None,
        "discovery": "none",
        "data_dir": tmp / name,
    }
    return NodeConfig(**{**cfg, **extra})


def _echo_node(cfg: NodeConfig, ran: list[str]) -> Node:
    node = Node(cfg)

    @node.capability(id="t.echo", risk="read_only")
    async def echo(ctx: CallContext) -> str:
        ran.append(ctx.caller)
        return "echo"

    return node


@pytest.fixture
async def caller(tmp_path: Path) -> AsyncIterator[Node]:
    cfg = _config(tmp_path, "a", http_port=0, breaker_failures=2, breaker_cooldown_seconds=30)
    async with Node(cfg) as node:
        yield node


async def _status(node: Node) -> tuple[pb.NodeStatus, pb.ListPeersResponse]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        status = await channel.unary_unary(
            "/aral.v1.AgentNode/GetStatus",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.NodeStatus.FromString,
        )(pb.GetStatusRequest(), timeout=10)
        peers = await channel.unary_unary(
            "/aral.v1.AgentNode/ListPeers",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.ListPeersResponse.FromString,
        )(pb.ListPeersRequest(), timeout=10)
    return status, peers


async def _forward_on_grpc(node: Node, to: str) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(node.address) as channel:
        invoke = channel.unary_unary(
            "/aral.v1.AgentNode/Invoke",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.InvokeResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await invoke(pb.InvokeRequest(call=pb.Call(capability="t.echo", to=to)), timeout=10)
    return refused.value


def _retry_info(err: grpc.aio.AioRpcError) -> float:
    trailers = dict(err.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])  # type: ignore[arg-type]
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds() / 1e9)
    raise AssertionError("no RetryInfo")


async def test_a_stopped_peer_opens_the_breaker_and_a_restarted_one_closes_it(
    caller: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, ran = caller, []
    clock = FixedClock()
    a.parts.send.breakers.clock = clock  # time moves when the test says
    b = _echo_node(_config(tmp_path, "b"), ran)
    async with b:
        port, b_id = b.grpc_port, b.node_id
        await a.connect(b.address, expected_node_id=b_id)
        assert await a.request(b_id, "t.echo", timeout=10) == "echo"
    # b is gone: calls to it fail (unavailable, or no answer in time) ...
    for _ in range(2):
        with pytest.raises((Unavailable, DeadlineExceeded)) as failed:
            await a.request(b_id, "t.echo", timeout=0.5)
        assert failed.value.reason != CIRCUIT_OPEN
    # ... and now fail fast, on every door, with a retry hint and the peer named.
    with pytest.raises(Unavailable) as fast:
        await a.request(b_id, "t.echo", timeout=10)
    assert fast.value.reason == CIRCUIT_OPEN
    assert fast.value.retry_after == pytest.approx(30)
    assert b_id in fast.value.message
    err = await _forward_on_grpc(a, b_id)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert CIRCUIT_OPEN in str(err.trailing_metadata())
    assert _retry_info(err) == pytest.approx(30)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.http_port}") as http:
        r = await http.post("/v1/invoke", json={"call": {"capability": "t.echo", "to": b_id}})
    assert r.status_code == 503
    assert r.headers["retry-after"] == "30"
    assert r.json()["error"]["reason"] == CIRCUIT_OPEN
    # The state shows in the status call, ListPeers and `aralnode peers`.
    status, peers = await _status(a)
    assert status.breakers[b_id] == "open"
    (listed,) = [p for p in peers.peers if p.node_id == b_id]
    assert (listed.breaker_state, listed.breaker_retry_after_ms) == ("open", 30_000)
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, ["peers", "--node", a.address, "--json"]) == 0
    (shown,) = [p for p in json.loads(capsys.readouterr().out) if p["node_id"] == b_id]
    assert (shown["breaker_state"], shown["breaker_retry_after_ms"]) == ("open", "30000")
    assert await asyncio.to_thread(cli_main, ["peers", "--node", a.address]) == 0
    table = capsys.readouterr().out
    assert "BREAKER" in table
    assert "open (30s)" in table
    assert ran == [a.node_id]  # nothing reached b while it was down or its breaker open
    # b is back (same key, same port); the cool-down is over: one probe closes it.
    b = _echo_node(_config(tmp_path, "b", grpc_port=port), ran)
    async with b:
        await a.connect(b.address, expected_node_id=b_id)
        clock.advance(30)
        status, _ = await _status(a)
        assert status.breakers[b_id] == "half_open"
        assert await a.request(b_id, "t.echo", timeout=10) == "echo"
        status, peers = await _status(a)
        assert b_id not in status.breakers
        (listed,) = [p for p in peers.peers if p.node_id == b_id]
        assert listed.breaker_state == "closed"
    assert a.pipeline.counters["breaker.opened"] == a.pipeline.counters["breaker.closed"] == 1
