"""Server-streaming methods run through the shared pipeline on every door: a stream
refused by governance is refused over gRPC and REST alike, and verdicts reach the
pipeline's listeners."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from aralnode import Node
from aralnode.core.context import CallContext
from aralnode.core.governance import Action, Decision, Rule, RuleEvaluator, Verdict

LIBRARY = str(Path(__file__).resolve().parent.parent / "examples" / "library" / "server.py")
WATCH = "library.v1.Library/WatchShelf"


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
    lib: Any = sys.modules["library_pb2"]
    async with node:
        async with grpc.aio.insecure_channel(node.address) as channel:
            call = channel.unary_stream(
                f"/{WATCH}",
                request_serializer=lib.WatchShelfRequest.SerializeToString,
                response_deserializer=lib.Book.FromString,
            )(lib.WatchShelfRequest(shelf="sci"))
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
