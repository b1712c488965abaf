"""Streaming methods run through the shared pipeline on every door: a stream refused
by governance is refused over gRPC and REST alike, a nudge's parameters are the ones
the stream runs with, client-streaming and bidi methods are admitted and judged too,
and verdicts reach the pipeline's listeners."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2

from aralnode import Node
from aralnode.core.context import CallContext
from aralnode.core.governance import Action, Decision, Rule, RuleEvaluator, Verdict

LIBRARY = str(Path(__file__).resolve().parent.parent / "examples" / "library" / "server.py")
WATCH = "library.v1.Library/WatchShelf"


def _watch(channel: grpc.aio.Channel, shelf: str) -> Any:
    """A WatchShelf call on ``channel`` (the library example's server stream)."""
    lib: Any = sys.modules["library_pb2"]  # loaded with the example
    return channel.unary_stream(
        f"/{WATCH}",
        request_serializer=lib.WatchShelfRequest.SerializeToString,
        response_deserializer=lib.Book.FromString,
    )(lib.WatchShelfRequest(shelf=shelf))


async def test_blocked_stream_on_grpc_and_rest(make_node: Callable[..., Node]) -> None:
    policy = RuleEvaluator(
        [
            Rule(
                "no-watch",
                decision=Decision.BLOCK,
                reason="watching is off",
                capabilities=frozenset({WATCH}),
            )
        ]
    )
    node = make_node("streams", demo=False, http_port=0, governance=policy)
    node.load(LIBRARY)
    seen: list[tuple[str, str]] = []

    def listener(ctx: CallContext | None, action: Action, verdict: Verdict) -> None:
        seen.append((action.capability, verdict.decision.label))

    node.pipeline.verdict_listeners.append(listener)
    async with node:
        async with grpc.aio.insecure_channel(node.address) as channel:
            call = _watch(channel, "sci")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call.read()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "watching is off" in (info.value.details() or "")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.http_port}", timeout=10
        ) as http:
            r = await http.get("/v1/shelves/sci/books:watch")
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "governance_blocked"
        assert node.pipeline.in_flight == 0
    assert seen.count((WATCH, "block")) == 2


async def test_allowed_stream_holds_a_concurrency_slot_until_done(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("streams-ok", demo=False, http_port=0)
    node.load(LIBRARY)
    async with node:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.http_port}", timeout=10
        ) as http:
            r = await http.get("/v1/shelves/sci/books:watch")
            assert r.status_code == 200
            assert len([line for line in r.text.splitlines() if line.strip()]) >= 1
        assert node.pipeline.in_flight == 0
        assert node.pipeline.counters["stream.ok"] == 1


class Switch:
    """An evaluator whose verdict the test sets; it records what it judged."""

    def __init__(self) -> None:
        self.verdict = Verdict()
        self.judged: list[tuple[str, Any]] = []

    def evaluate(self, action: Action) -> Verdict:
        self.judged.append((action.capability, action.parameters))
        return self.verdict


async def test_a_nudge_replaces_a_streams_request_on_grpc_and_rest(
    make_node: Callable[..., Node],
) -> None:
    switch = Switch()
    node = make_node("nudged", demo=False, http_port=0, governance=switch)
    node.load(LIBRARY)
    # Whatever shelf is asked for, governance points the stream at "sci".
    switch.verdict = Verdict(Decision.NUDGE, parameters={"shelf": "sci"})
    async with node:
        async with grpc.aio.insecure_channel(node.address) as channel:
            call = _watch(channel, "nowhere")  # NOT_FOUND unless nudged
            books = [book async for book in call]
            assert books
            assert {book.shelf for book in books} == {"sci"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.http_port}", timeout=10
        ) as http:
            r = await http.get("/v1/shelves/nowhere/books:watch")
            assert r.status_code == 200
            shelves = [json.loads(line)["shelf"] for line in r.text.splitlines() if line.strip()]
            assert shelves == ["sci"] * len(books)
        assert node.pipeline.in_flight == 0
    assert switch.judged == [(WATCH, {"shelf": "nowhere"})] * 2


def _streams_service() -> Any:
    """A service with a client-streaming and a bidi method, over Int64Value."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="streams_test.proto",
        package="streams.v1",
        dependency=["google/protobuf/wrappers.proto"],
        syntax="proto3",
    )
    svc = fdp.service.add(name="Streams")
    for name, server_streaming in (("Sum", False), ("Echo", True)):
        svc.method.add(
            name=name,
            input_type=".google.protobuf.Int64Value",
            output_type=".google.protobuf.Int64Value",
            client_streaming=True,
            server_streaming=server_streaming,
        )
    pool.Add(fdp)
    return pool.FindServiceByName("streams.v1.Streams")


class Streams:
    async def Sum(self, requests: Any, ctx: CallContext) -> Any:
        total = 0
        async for r in requests:
            total += r.value
        return wrappers_pb2.Int64Value(value=total)

    async def Echo(self, requests: Any, ctx: CallContext) -> Any:
        async for r in requests:
            yield r


async def test_client_and_bidi_streams_run_through_the_pipeline(
    make_node: Callable[..., Node],
) -> None:
    switch = Switch()
    node = make_node("streams-in", demo=False, governance=switch)
    node.add_service(Streams(), _streams_service())
    i64 = wrappers_pb2.Int64Value
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        ser, de = i64.SerializeToString, i64.FromString
        sum_ = channel.stream_unary("/streams.v1.Streams/Sum", ser, de)
        echo = channel.stream_stream("/streams.v1.Streams/Echo", ser, de)
        values = [i64(value=v) for v in (1, 2, 3)]
        assert (await sum_(iter(values))).value == 6
        assert [r.value async for r in echo(iter(values))] == [1, 2, 3]
        judged = [("streams.v1.Streams/Sum", None), ("streams.v1.Streams/Echo", None)]
        assert switch.judged == judged

        switch.verdict = Verdict(Decision.BLOCK, reasons=("streams are off",))
        # Refused before the method reads a request: the status needs none sent.
        for refused in (sum_(), echo()):
            assert await refused.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "streams are off" in (await refused.details() or "")
        assert node.pipeline.in_flight == 0
