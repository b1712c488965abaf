"""The HTTP doors' long-lived streams are held to their caller's credentials as a
WebSocket is (``test_ws_revocation``; from the same attack: a stream that only
listened went on receiving events after its key was revoked or its token expired).

An MCP session's GET stream (its server-sent events) and an A2A stream
(``SubscribeToTask`` over JSON-RPC, HTTP+JSON and gRPC) have their credentials
authenticated again before their events (at most once a second of the door's
clock): once the key is revoked, the stream ends (the SSE response ends; gRPC's with
``UNAUTHENTICATED``) and the event is not sent, the refusal on record. A stream whose
token's lifetime is over ends though nothing is sent. Time is the doors' injected
clock: no test waits for it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2 as a2a
from mcp.server.streamable_http import GET_STREAM_KEY
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCNotification

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge._approvals_feed import RECHECK_SECONDS
from aralnode.bridge._mcp_sessions import SessionQuota
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import FixedClock
from aralnode.core.context import CallContext, Credentials
from aralnode.service.auth import Authenticated
from aralnode.service.pipeline import Pipeline
from aralnode.service.stages import Stages
from tests.conftest import recorded
from tests.test_a2a import ask, client_for, events, final_task
from tests.test_halts_inflight import LIBRARY, Gated
from tests.test_jwt import AUDIENCE, ISSUER, Signer, bearer, jwt_node, write_jwks
from tests.test_sessions import on, open_session

STREAM = {"Accept": "text/event-stream"}
SUBSCRIBE = "lf.a2a.v1.A2AService/SubscribeToTask"
SCOPES = ["agent:read", "agent:invoke"]


# -- MCP: a session's GET stream ---------------------------------------------------------


def sessions_of(node: Node) -> SessionQuota:
    assert node._parts is not None
    assert node._parts.http is not None
    mcp = node._parts.http.mcp
    assert mcp is not None
    sessions: SessionQuota = mcp.sessions
    return sessions


async def notify(node: Node, session: str, text: str) -> None:
    """A notification for ``session``'s GET stream, as the SDK's server sends one that
    answers no request (the node's tools send none of their own)."""
    transport = sessions_of(node).manager._server_instances[session]
    assert GET_STREAM_KEY in transport._request_streams  # the stream is open
    note = JSONRPCNotification(jsonrpc="2.0", method="notifications/message",
                               params={"level": "info", "data": text})  # fmt: skip
    assert transport._write_stream is not None
    await transport._write_stream.send(SessionMessage(note))


async def data_of(stream: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON of each event the stream is sent, until it ends (keep-alives skipped)."""
    async for line in stream.aiter_lines():
        if line.startswith("data:"):
            yield json.loads(line[len("data:") :])


async def test_an_mcp_get_stream_ends_once_its_key_is_revoked(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("mcp-get-revoked", http_port=0)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        store = ApiKeyStore(node.config.apikeys_path)
        key, record = store.create("watcher", scopes=SCOPES)
        me = {"x-api-key": key}
        clock = FixedClock()
        sessions_of(node).clock = clock  # the streams' own clock, moved here
        session = await open_session(http, me)
        seen = recorded(node)
        async with asyncio.timeout(10):
            async with http.stream("GET", "/mcp", headers={**on(session, me), **STREAM}) as got:
                assert got.status_code == 200
                stream = data_of(got)
                await notify(node, session, "before")
                assert (await anext(stream))["params"]["data"] == "before"
                store.revoke(record.id)
                clock.advance(RECHECK_SECONDS)
                await notify(node, session, "private")
                leaked = [event async for event in stream]  # the response ends instead
    assert leaked == []
    refusals = [(r.action, r.outcome, r.reason) for r in seen if r.outcome != "ok"]
    assert refusals == [("aral.http/mcp", "unauthorized", "API_KEY_REVOKED")]


async def test_an_idle_mcp_get_stream_ends_when_its_token_expires(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, signer)
    node = jwt_node(make_node, "mcp-get-expiry", jwks)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        exp = int(time.time()) + 600
        me = bearer(signer.token(scope=" ".join(SCOPES), exp=exp))
        session = await open_session(http, me)
        # By the streams' clock the token's lifetime is over (its verifier's, with
        # its leeway, still takes it): the stream ends though nothing is sent.
        sessions_of(node).clock = FixedClock(now_ms=exp * 1000)
        async with asyncio.timeout(10):
            async with http.stream("GET", "/mcp", headers={**on(session, me), **STREAM}) as got:
                assert got.status_code == 200
                assert [event async for event in data_of(got)] == []


# -- A2A: SubscribeToTask ----------------------------------------------------------------


def waiting_node(make_node: Callable[..., Node], name: str, **extra: Any) -> tuple[Node, Any]:
    """A node with ``test.wait`` (runs until the event is set), and that event."""
    node = make_node(name, http_port=0, **extra)
    release = asyncio.Event()

    @node.capability(id="test.wait", description="waits until released")
    async def wait() -> str:
        await release.wait()
        return "released"

    return node, release


async def waiting_task(node: Node, http: httpx.AsyncClient) -> a2a.Task:
    polling = await client_for(node, "JSONRPC", polling=True, httpx_client=http)
    try:
        return final_task(await events(polling, ask("test.wait", {}, message_id="r1")))
    finally:
        await polling.close()


async def read_all(call: Any, into: list[Any]) -> None:
    """Read a gRPC stream to its end, each item into ``into``."""
    while (item := await call.read()) is not grpc.aio.EOF:
        into.append(item)


def subscription_records(seen: list[Any]) -> list[tuple[str, str]]:
    return [(r.outcome, r.reason) for r in seen if r.action == SUBSCRIBE]


@pytest.mark.parametrize("transport", ["JSONRPC", "HTTP+JSON"])
async def test_an_a2a_subscription_ends_once_its_key_is_revoked(
    make_node: Callable[..., Node], transport: str
) -> None:
    node, release = waiting_node(make_node, f"a2a-revoked-{transport[0]}")
    async with node:
        store = ApiKeyStore(node.config.apikeys_path)
        key, record = store.create("watcher", scopes=SCOPES)
        assert node.parts.http is not None
        clock = node.parts.http.a2a.clock = FixedClock()  # the streams' own clock
        http = httpx.AsyncClient(headers={"x-api-key": key}, timeout=20)
        client = await client_for(node, transport, streaming=True, httpx_client=http)
        try:
            task = await waiting_task(node, http)
            seen = recorded(node)
            async with asyncio.timeout(10):
                stream = client.subscribe(a2a.SubscribeToTaskRequest(id=task.id))
                first = await anext(stream)  # the task as it is: waiting
                store.revoke(record.id)
                clock.advance(RECHECK_SECONDS)
                release.set()  # the task completes: its events are not sent
                leaked = [event async for event in stream]
        finally:
            release.set()
            await client.close()
            await http.aclose()
    assert first.HasField("task")
    assert leaked == []
    assert subscription_records(seen) == [("unauthorized", "API_KEY_REVOKED")]


async def test_an_a2a_grpc_subscription_ends_unauthenticated_once_its_key_is_revoked(
    make_node: Callable[..., Node],
) -> None:
    node, release = waiting_node(make_node, "a2a-revoked-grpc")
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        store = ApiKeyStore(node.config.apikeys_path)
        key, record = store.create("watcher", scopes=SCOPES)
        assert node.parts.http is not None
        clock = node.parts.http.a2a.clock = FixedClock()
        async with httpx.AsyncClient(headers={"x-api-key": key}, timeout=20) as http:
            task = await waiting_task(node, http)
        subscribe = channel.unary_stream(
            f"/{SUBSCRIBE}",
            request_serializer=a2a.SubscribeToTaskRequest.SerializeToString,
            response_deserializer=a2a.StreamResponse.FromString,
        )
        seen = recorded(node)
        call = subscribe(a2a.SubscribeToTaskRequest(id=task.id), timeout=10,
                         metadata=[("x-api-key", key), ("a2a-version", "1.0")])  # fmt: skip
        try:
            first = await call.read()
            store.revoke(record.id)
            clock.advance(RECHECK_SECONDS)
            release.set()
            leaked: list[Any] = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_all(call, leaked)
        finally:
            release.set()
            call.cancel()
    assert isinstance(first, a2a.StreamResponse)
    assert first.HasField("task")
    assert leaked == []
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert subscription_records(seen) == [("unauthorized", "API_KEY_REVOKED")]


async def test_an_idle_a2a_grpc_subscription_ends_when_its_token_expires(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, signer)
    node, release = waiting_node(make_node, "a2a-jwt-expiry", jwt_issuer=ISSUER,
                                 jwt_audience=AUDIENCE, jwt_jwks_file=jwks)  # fmt: skip
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        exp = int(time.time()) + 600
        me = bearer(signer.token(scope=" ".join(SCOPES), exp=exp))
        async with httpx.AsyncClient(headers=me, timeout=20) as http:
            task = await waiting_task(node, http)
        # By the streams' clock the token's lifetime is over (its verifier's, with
        # its leeway, still takes it): the task's stream, which would wait for it,
        # ends instead.
        assert node.parts.http is not None
        node.parts.http.a2a.clock = FixedClock(now_ms=exp * 1000)
        subscribe = channel.unary_stream(
            f"/{SUBSCRIBE}",
            request_serializer=a2a.SubscribeToTaskRequest.SerializeToString,
            response_deserializer=a2a.StreamResponse.FromString,
        )
        seen = recorded(node)
        call = subscribe(a2a.SubscribeToTaskRequest(id=task.id), timeout=10,
                         metadata=[*me.items(), ("a2a-version", "1.0")])  # fmt: skip
        try:
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await read_all(call, [])
        finally:
            release.set()
            call.cancel()
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert subscription_records(seen) == [("unauthorized", "TOKEN_EXPIRED")]


# -- every door's server streams, in the pipeline ----------------------------------------


@pytest.mark.parametrize("door", ["grpc", "rest"])
async def test_a_server_stream_ends_once_its_key_is_revoked(
    make_node: Callable[..., Node], door: str
) -> None:
    """From stop 45's list: REST's NDJSON and a user's gRPC server stream (every
    door's, through ``Pipeline.stream``) went on sending items after the caller's key
    was revoked. The pipeline asks the credentials again before an item, at most once
    a second of its clock: the next item is not sent, the refusal is on record."""
    servicer = Gated()
    servicer.more = asyncio.Event()
    node = make_node(f"stream-revoked-{door}", http_port=0)
    node.add_service(servicer, LIBRARY.lib)
    async with node:
        store = ApiKeyStore(node.config.apikeys_path)
        key, record = store.create("reader", scopes=SCOPES)
        clock = FixedClock()
        node.pipeline.clock = clock  # the streams' own clock, moved here
        seen = recorded(node)
        titles: list[str] = []

        def revoke() -> None:
            store.revoke(record.id)
            clock.advance(RECHECK_SECONDS)
            servicer.more.set()  # the next book is ready: it is not sent

        async with asyncio.timeout(10):
            if door == "grpc":
                async with grpc.aio.insecure_channel(node.address) as channel:
                    watch = channel.unary_stream(
                        "/library.v1.Library/WatchShelf",
                        request_serializer=lambda m: m.SerializeToString(),
                        response_deserializer=LIBRARY.lib.Book.FromString,
                    )
                    call = watch(LIBRARY.lib.WatchShelfRequest(shelf="sci"),
                                 metadata=[("x-api-key", key)])  # fmt: skip
                    titles.append((await call.read()).title)
                    revoke()
                    with pytest.raises(grpc.aio.AioRpcError) as ended:
                        await call.read()
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
            else:
                base = f"http://127.0.0.1:{node.http_port}"
                async with (
                    httpx.AsyncClient(base_url=base) as http,
                    http.stream("GET", "/v1/shelves/sci/books:watch",
                                headers={"x-api-key": key}) as got,  # fmt: skip
                ):
                    lines = got.aiter_lines()
                    titles.append(json.loads(await anext(lines))["title"])
                    revoke()
                    rest = [json.loads(line) async for line in lines if line]
                assert [r["error"]["reason"] for r in rest] == ["API_KEY_REVOKED"]
    assert titles == ["book 1"]
    refusals = [(r.action, r.outcome, r.reason) for r in seen if r.outcome != "ok"]
    assert refusals == [("library.v1.Library/WatchShelf", "unauthorized", "API_KEY_REVOKED")]


async def test_a_stream_is_not_asked_again_as_soon_as_it_is_admitted() -> None:
    """From a re-read: the recheck asked the first stage at the stream's first item,
    a moment after the same stage admitted it (an API key's file looked at twice a
    stream). Its credentials are asked again once a second has passed since."""
    asked: list[str] = []

    class Counting:
        def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
            asked.append(ctx.door)
            return Authenticated(caller="reader")

    clock = FixedClock()
    pipeline = Pipeline(CapabilityRegistry(), Stages.default(authenticator=Counting()), clock)

    async def books(_: Any) -> AsyncIterator[int]:
        for n in (1, 2, 3):
            yield n

    items = []
    stream = pipeline.stream(CallContext(door="rest", credentials=Credentials()), "x.y", {}, books)
    async for item in stream:
        items.append((item, len(asked)))
        clock.advance(RECHECK_SECONDS / 2)
    assert items == [(1, 1), (2, 1), (3, 2)]  # admitted; within the second; past it
