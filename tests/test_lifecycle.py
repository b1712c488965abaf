"""Start, drain and stop: health goes NOT_SERVING first, in-flight calls finish."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
from collections.abc import Callable

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mcp import Client
from websockets.asyncio.client import connect

from aralnode import AralError, CallContext, Node, NodeClient, RateLimited
from aralnode import _proto as pb
from aralnode.transport.grpc_client import unwrap


async def test_graceful_stop_drains_in_flight_calls(make_node: Callable[..., Node]) -> None:
    node = make_node("drain", demo=False)
    started, release = asyncio.Event(), asyncio.Event()

    @node.capability(id="slow.op")
    async def slow() -> str:
        started.set()
        await release.wait()
        return "finished"

    await node.start()
    client = NodeClient(node.address)
    channel = grpc.aio.insecure_channel(node.address)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="aral.v1.AgentNode"))
    first = await asyncio.wait_for(watch.read(), 10)
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    call = asyncio.ensure_future(client.call("slow.op", {}))
    await asyncio.wait_for(started.wait(), 10)
    stopping = asyncio.ensure_future(node.stop(grace=30))
    second = await asyncio.wait_for(watch.read(), 10)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    # The Watch stream ends cleanly, so it cannot hold the drain open.
    assert await asyncio.wait_for(watch.read(), 10) is grpc.aio.EOF
    assert await watch.code() == grpc.StatusCode.OK
    assert not stopping.done()
    release.set()
    assert unwrap(await asyncio.wait_for(call, 10)) == "finished"
    await asyncio.wait_for(stopping, 30)
    assert node.status().state == "STOPPED"
    await client.close()
    await channel.close()


async def test_stop_twice_and_stop_before_start(make_node: Callable[..., Node]) -> None:
    never_started = make_node("idle")
    await never_started.stop()
    node = make_node("twice")
    await node.start()
    await node.stop()
    await node.stop()
    with pytest.raises(RuntimeError):
        await node.start()


@pytest.mark.parametrize("grpc_timeout", [0.2, 30.0])
async def test_deadline_stops_the_handler(
    make_node: Callable[..., Node], grpc_timeout: float
) -> None:
    """gRPC's own deadline (0.2 s) and a tighter call TTL (0.2 s under a 30 s gRPC
    deadline) both end in DEADLINE_EXCEEDED and cancel the running handler."""
    node = make_node("ttl", demo=False)
    never, cancelled = asyncio.Event(), asyncio.Event()

    @node.capability(id="hang")
    async def hang() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with node:
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = pb.AgentNodeStub(channel)
            request = pb.InvokeRequest(call=pb.Call(capability="hang", timeout_ms=200))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Invoke(request, timeout=grpc_timeout)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(cancelled.wait(), 10)
        assert node.pipeline.in_flight == 0


async def test_concurrency_limit_answers_resource_exhausted(make_node: Callable[..., Node]) -> None:
    node = make_node("busy", demo=False, max_concurrent=2, max_concurrent_per_caller=2)
    entered, release = asyncio.Semaphore(0), asyncio.Event()

    @node.capability(id="hold")
    async def hold() -> str:
        entered.release()
        await release.wait()
        return "ok"

    async with node, NodeClient(node.address) as client:
        held = [asyncio.ensure_future(client.call("hold", {})) for _ in range(2)]
        for _ in range(2):
            await asyncio.wait_for(entered.acquire(), 10)
        with pytest.raises(RateLimited) as info:
            await client.call("hold", {})
        assert info.value.retry_after is not None
        release.set()
        assert [unwrap(r) for r in await asyncio.gather(*held)] == ["ok", "ok"]


async def test_capability_exception_is_internal_and_node_survives(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("boom")

    @node.capability(id="boom")
    async def boom(ctx: CallContext) -> None:
        raise ZeroDivisionError("secret detail")

    async with node, NodeClient(node.address) as client:
        with pytest.raises(Exception) as info:
            await client.call("boom", {})
        assert "ZeroDivisionError" in str(info.value)
        assert "secret detail" not in str(info.value)
        assert unwrap(await client.call("demo.add", {"a": 1, "b": 1})) == 2


async def test_wildcard_bind_reads_interfaces_once_per_card(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aralnode.discovery import addresses as discovery

    calls: list[bool] = []

    def lan_addresses(*, ipv6: bool = False) -> list[str]:
        calls.append(ipv6)
        return ["10.0.0.7"]

    monkeypatch.setattr(discovery, "lan_addresses", lan_addresses)
    node = make_node("wild", host="0.0.0.0")
    async with node:
        for _ in range(5):
            assert node.status().endpoints[0].address.startswith("10.0.0.7:")
            assert node.address.startswith("10.0.0.7:")
        assert len(calls) == 1
        node.registry.remove("demo.add")  # capabilities changed: a new card, read again
        node.card()
        assert len(calls) == 2


@pytest.mark.parametrize(("port_key", "door"), [("grpc_port", "gRPC"), ("http_port", "HTTP")])
async def test_a_port_in_use_is_a_clear_error_naming_the_door(
    make_node: Callable[..., Node], port_key: str, door: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        overrides: dict[str, object] = {"http_port": 0, port_key: port}
        node = make_node("clash", **overrides)
        with pytest.raises(
            OSError, match=f"cannot bind the {door} door to 127.0.0.1:{port}"
        ) as info:
            await node.start()
        assert info.value.errno == errno.EADDRINUSE
    # The failed start stopped what it had started and freed the data dir.
    again = make_node("clash", http_port=0)
    async with again:
        assert again.node_id == node.node_id


async def test_two_nodes_cannot_share_a_data_dir(make_node: Callable[..., Node]) -> None:
    first = make_node("twin")
    second = make_node("twin")  # the same name: the same data dir
    async with first:
        with pytest.raises(OSError, match="is in use by another node") as info:
            await second.start()
        assert info.value.errno == errno.EBUSY
        assert f"pid {os.getpid()}" in str(info.value)
        await second.stop()
    # Released on stop: the same data dir serves again, with the same identity.
    again = make_node("twin")
    async with again:
        assert again.node_id == first.node_id


def stuck_capability(node: Node) -> asyncio.Event:
    """Register ``slow.forever`` on ``node``: a call that never ends by itself. The
    event is set once a call is running it."""
    started = asyncio.Event()

    @node.capability(id="slow.forever")
    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    return started


async def test_stop_called_again_ends_the_drain_now(make_node: Callable[..., Node]) -> None:
    node = make_node("drain", drain_seconds=3600)  # an hour's drain
    started = stuck_capability(node)
    await node.start()
    async with NodeClient(node.address) as client:
        call = asyncio.ensure_future(client.call("slow.forever", {}))
        async with asyncio.timeout(30):  # guards against a hang; nothing is timed
            await started.wait()
            draining = asyncio.ensure_future(node.stop())
            await node.stop()
            await draining
        with pytest.raises(AralError) as info:
            await call
        assert info.value.status.name == "UNAVAILABLE"


async def test_a_stop_cut_short_still_frees_the_node(make_node: Callable[..., Node]) -> None:
    node = make_node("cut", drain_seconds=3600)
    started = stuck_capability(node)
    await node.start()
    async with NodeClient(node.address) as client:
        call = asyncio.ensure_future(client.call("slow.forever", {}))
        async with asyncio.timeout(30):  # guards against a hang; nothing is timed
            await started.wait()
            draining = asyncio.ensure_future(node.stop())
            while node._stopping is None:  # until the teardown has begun
                await asyncio.wait({draining}, timeout=0)
            draining.cancel()  # e.g. a caller's own timeout around stop()
            with contextlib.suppress(asyncio.CancelledError):
                await draining
            await node.stop()  # returns: the node is stopped
            with pytest.raises(AralError):
                await call
    again = make_node("cut")
    async with again:  # and its data dir is free
        assert again.node_id == node.node_id


async def test_graceful_stop_lets_mcp_and_websocket_calls_finish(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MCP tool calls and WebSocket invokes get the node's drain, as gRPC and REST
    calls do: the MCP sessions end and the sockets close only once they answered."""
    node = make_node("drain-http", demo=False, http_port=0, drain_seconds=30)
    started, release = asyncio.Semaphore(0), asyncio.Event()

    @node.capability(id="slow.op")
    async def slow() -> str:
        started.release()
        await release.wait()
        return "finished"

    await node.start()
    draining = asyncio.Event()
    inflight = node.parts.http.inflight
    real_wait = inflight.wait_idle

    async def wait_idle(timeout: float) -> bool:
        draining.set()  # the bridge now waits for the calls: let them finish
        return await real_wait(timeout)

    monkeypatch.setattr(inflight, "wait_idle", wait_idle)
    base = f"127.0.0.1:{node.http_port}"

    async def over_ws() -> object:
        async with connect(f"ws://{base}/ws") as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "slow.op"}))
            return json.loads(await ws.recv())

    async def over_mcp() -> object:
        text = None
        # Ending the session after the node stopped fails (nobody listens): only
        # the call's answer counts here.
        with contextlib.suppress(Exception):
            async with Client(f"http://{base}/mcp") as client:
                await client.list_tools()  # the client checks results against these
                text = (await client.call_tool("slow.op", {})).content[0].text
        return text

    async with asyncio.timeout(60):  # guards against a hang; nothing is timed
        calls = asyncio.gather(over_ws(), over_mcp())
        await started.acquire()
        await started.acquire()
        stopping = asyncio.ensure_future(node.stop())
        await draining.wait()
        release.set()
        ws_reply, mcp_text = await calls
        await stopping
    assert ws_reply["result"] == "finished"  # type: ignore[index]
    assert json.loads(str(mcp_text)) == "finished"


async def test_a_rest_call_the_drain_cuts_off_gets_a_json_error(
    make_node: Callable[..., Node],
) -> None:
    """A REST call still running when the drain runs out ends with the node's own
    error shape (503 NODE_STOPPING), not the server's plain-text 500."""
    node = make_node("cut", demo=False, http_port=0, drain_seconds=0)
    started = stuck_capability(node)
    await node.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        call = asyncio.ensure_future(
            http.post("/v1/invoke", json={"call": {"capability": "slow.forever"}}, timeout=30)
        )
        async with asyncio.timeout(30):  # guards against a hang; nothing is timed
            await started.wait()
            await node.stop()
            answer = await call
    assert answer.status_code == 503
    assert answer.json()["error"]["reason"] == "NODE_STOPPING"
