"""Every call of the gRPC port through the call gate (aralnode/transport/call_gate.py),
on a ``GrpcServer`` in this process (its own health and reflection services).

A raw HTTP/2 client (tests/test_hostile_grpc.py's) sends what grpcio would not: a
message that never ends. What the server grants shows in its WINDOW_UPDATE frames;
a PING's acknowledgement, after an ordinary call has been answered, is the mark
that everything the server had to say up to then has been read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from aralnode import NodeConfig
from aralnode.transport.grpc_server import GrpcLimits, GrpcServer, transport_limit
from aralnode.transport.status import from_rpc_error
from tests.test_hostile_grpc import INITIAL_WINDOW, Granted, RawConnection

CHECK = b"/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# A method whose every request message waits its turn (a unary one's grpc reads
# before any code of ours: counted, not budgeted).
GATED = REFLECTION.encode()
MIB = 1024 * 1024


@contextlib.asynccontextmanager
async def serving(limits: GrpcLimits, counters: Counter[str]) -> AsyncIterator[GrpcServer]:
    server = GrpcServer(max_message_bytes=MIB, keepalive_ms=5000, limits=limits, counters=counters)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop(0)


def unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


async def check(port: int) -> None:
    """An ordinary Health/Check, from 127.0.0.1; it must be served."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = await unary(channel, CHECK.decode())(
            health_pb2.HealthCheckRequest().SerializeToString(), timeout=20
        )
        assert health_pb2.HealthCheckResponse.FromString(raw).status == 1  # SERVING


async def test_a_call_waiting_its_turn_gets_no_window_for_its_message() -> None:
    """One turn to receive per address (``receive_bytes_per_address`` = one message
    at the transport limit): the first stream gets its window for the whole message;
    the second, waiting, gets nothing past the initial 64 KiB however much its
    message announces (before, grpc opened every stream's window to its whole
    message at once: 2 GB for five connections). Once the first message is whole,
    the second stream gets its turn."""
    counters: Counter[str] = Counter()
    one = transport_limit(MIB)
    limits = GrpcLimits(receive_bytes=2 * one, receive_bytes_per_address=one)
    async with serving(limits, counters) as server:
        conn = await RawConnection.open(server.port, source="127.0.0.2")
        granted = Granted(conn)
        try:
            first = conn.request_part(GATED, MIB, 1000)
            second = conn.request_part(GATED, MIB, 1000)
            await granted.until(lambda: granted.window[first] >= MIB - INITIAL_WINDOW)
            await check(server.port)  # from another address: its own turns
            await granted.flushed()
            assert granted.window[second] == 0
            conn.send_data(first, MIB - 1000, end=True)  # the first message is whole
            await granted.until(lambda: granted.window[second] >= MIB - INITIAL_WINDOW)
        finally:
            granted.close()


async def test_a_message_that_does_not_come_whole_in_time_ends_its_call() -> None:
    counters: Counter[str] = Counter()
    async with serving(GrpcLimits(request_timeout_ms=200), counters) as server:
        conn = await RawConnection.open(server.port, source="127.0.0.2")
        granted = Granted(conn)
        try:
            stream = conn.request_part(GATED, 1000, 10)  # 990 bytes never come
            await granted.until(lambda: stream in granted.ended)
            assert counters["grpc.requests_timed_out"] == 1
            await check(server.port)
        finally:
            granted.close()


async def test_a_turn_not_had_in_time_is_refused() -> None:
    """The only turn held by a message that never ends: a call from another address
    waits for it, up to the request timeout, then is refused (RESOURCE_EXHAUSTED,
    with a retry hint), and never held more than its initial window meanwhile."""
    counters: Counter[str] = Counter()
    limits = GrpcLimits(receive_bytes=transport_limit(MIB), request_timeout_ms=60_000)
    async with serving(limits, counters) as server:
        conn = await RawConnection.open(server.port, source="127.0.0.2")
        granted = Granted(conn)
        try:
            holder = conn.request_part(GATED, MIB, 10)
            await granted.until(lambda: granted.window[holder] > 0)
            server.gate.request_timeout = 0.2  # the next ones' span
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stream = channel.stream_stream(
                    REFLECTION, request_serializer=None, response_deserializer=None
                )(timeout=20)
                try:
                    await stream.write(
                        reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
                    )
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stream.read()
                finally:
                    stream.cancel()
            error = from_rpc_error(info.value)
            assert error.reason == "TOO_MANY_REQUEST_BYTES", error
            assert error.retry_after is not None
            assert counters["grpc.requests_not_received"] == 1
        finally:
            granted.close()


async def test_an_address_keeps_to_its_share_of_calls() -> None:
    """Every method counts (here Health/Watch, which stays open)."""
    counters: Counter[str] = Counter()
    async with (
        serving(GrpcLimits(max_calls_per_address=3), counters) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        watch = channel.unary_stream(WATCH)
        request = health_pb2.HealthCheckRequest().SerializeToString()
        held = [watch(request) for _ in range(3)]
        for call in held:
            await call.read()  # SERVING: each is open
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(channel, CHECK.decode())(request, timeout=20)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert from_rpc_error(info.value).reason == "TOO_MANY_CALLS"
        assert counters["grpc.calls_refused"] == 1
        held[0].cancel()
        await check_after_cancel(channel, request)
        for call in held:
            call.cancel()


async def check_after_cancel(channel: grpc.aio.Channel, request: bytes) -> None:
    """A cancelled call gives its place back: a call that follows it is served
    (retried while the server has yet to see the cancellation)."""
    async with asyncio.timeout(20):
        while True:
            try:
                await unary(channel, CHECK.decode())(request, timeout=20)
                return
            except grpc.aio.AioRpcError as exc:
                refused = from_rpc_error(exc).reason
            assert refused == "TOO_MANY_CALLS"
            await asyncio.sleep(0.05)  # nothing announces the server's end of it (noqa: sleep-ok)


async def test_an_idle_reflection_stream_ends_after_the_request_timeout() -> None:
    """A reflection stream reads each request with a turn, in time: one that asks
    nothing more ends (DEADLINE_EXCEEDED) rather than hold a turn."""
    counters: Counter[str] = Counter()
    async with (
        serving(GrpcLimits(request_timeout_ms=300), counters) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        call = channel.stream_stream(
            REFLECTION, request_serializer=None, response_deserializer=None
        )()
        await call.write(
            reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
        )
        answer = reflection_pb2.ServerReflectionResponse.FromString(await call.read())
        assert answer.list_services_response.service
        assert await call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert counters["grpc.requests_timed_out"] == 1


def test_the_node_config_says_what_the_limits_default_to() -> None:
    """``NodeConfig``'s ``grpc_*`` fields reach ``GrpcLimits`` in ``_assembly``: the
    defaults agree, and a bound that would let nothing in is refused."""
    config, limits = NodeConfig(), GrpcLimits()
    assert config.grpc_max_connections_per_address == limits.max_connections_per_address
    assert config.grpc_request_timeout_ms == limits.request_timeout_ms
    with pytest.raises(ValueError, match="grpc_max_connections_per_address"):
        NodeConfig(grpc_max_connections_per_address=0)
    with pytest.raises(ValueError, match="grpc_request_timeout_ms"):
        NodeConfig(grpc_request_timeout_ms=10)


class FakeContext:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:5555"


class Details:
    method = "/test.Talker/Talk"
    invocation_metadata = ()


async def test_a_users_request_stream_is_read_as_its_servicer_asks() -> None:
    """A user's client-streaming or bidi method may begin with a silent client: its
    messages are not held to the request timeout (the node's own channel's first
    one is, reflection's every one is). The call still counts in its address's share."""
    seen: list[object] = []

    async def bidi(requests: object, context: object) -> None:
        seen.append(requests)

    handlers = {"Talk": grpc.stream_stream_rpc_method_handler(bidi)}
    generic = grpc.method_handlers_generic_handler("test.Talker", handlers)
    gate = GrpcLimits().call_gate(MIB, None)
    details: Any = Details()
    requests = object()
    for streams, same in (("none", True), ("first", False)):
        handler = gate.wrap(generic, streams=streams).service(details)
        assert handler is not None
        assert handler.stream_stream is not None
        await handler.stream_stream(requests, FakeContext())
        assert (seen.pop() is requests) is same
    assert gate.calls.held("ipv4:127.0.0.1:1") == 0  # counted while it ran, then left
    with pytest.raises(ValueError, match="streams"):
        gate.wrap(generic, streams="some")
