"""The WebSocket door: the seed's subscribe message, node events in the seed's shape,
and capability calls through the pipeline (door "ws")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from aralnode import Authenticated, CallContext, Credentials, Node
from aralnode.bridge._server import BoundedWebSocket
from aralnode.bridge.ws import (
    CHANNELS,
    DECISIONS_SCOPE,
    QUEUE_SIZE,
    EventHub,
    Subscriber,
    WsDoor,
)
from aralnode.core.governance import Action, Decision, Rule, RuleEvaluator, Verdict
from tests.conftest import DEMO, recorded


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    policy = RuleEvaluator(
        rules=[Rule(id="no-add", decision=Decision.BLOCK, capabilities=frozenset({"demo.add"}))]
    )
    n = make_node("ws", http_port=0, governance=policy)
    async with n:
        yield n


def ws_url(node: Node) -> str:
    return f"ws://127.0.0.1:{node.http_port}/ws"


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def recv_until(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if match(message):
                return message


def event(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m.get("type") == "event" and m.get("event") == name


async def test_subscribe_and_receive_node_events(
    node: Node, make_node: Callable[..., Node]
) -> None:
    async with connect(ws_url(node)) as ws:
        await send(ws, {"type": "subscribe", "agent_id": node.node_id, "channels": ["events"]})
        ack = await recv_until(ws, lambda m: m["type"] == "subscribed")
        assert ack["channels"] == ["capabilities", "decisions", "peers", "status"]
        status = await recv_until(ws, event("status"))
        assert status["agent_id"] == node.node_id
        assert status["data"]["state"] == "SERVING"
        assert status["timestamp"].endswith("Z")

        @node.capability(id="late.cap")
        async def late() -> str:
            return "late"

        changed = await recv_until(ws, event("capabilities_changed"))
        assert "late.cap" in changed["data"]["ids"]
        assert set(changed) == {"type", "timestamp", "agent_id", "channel", "event", "data"}

        peer = make_node("wspeer")
        async with peer:
            await node.connect(peer.address)
            joined = await recv_until(ws, event("peer_joined"))
            assert joined["data"]["nodeId"] == peer.node_id
            assert joined["data"]["name"] == "wspeer"


async def test_invoke_over_ws_runs_the_pipeline_and_reports_decisions(node: Node) -> None:
    async with connect(ws_url(node)) as ws:
        await send(ws, {"type": "subscribe", "agent_id": "*", "channels": ["decisions"]})
        await recv_until(ws, lambda m: m["type"] == "subscribed")
        await send(ws, {"type": "invoke", "id": 7, "capability": "demo.whoami"})
        decision = await recv_until(ws, event("decision_made"))
        assert decision["data"]["action"] == "demo.whoami"
        assert (decision["data"]["door"], decision["data"]["decision"]) == ("ws", "ok")
        result = await recv_until(ws, lambda m: m["type"] == "result")
        assert result["id"] == 7
        assert result["result"]["door"] == "ws"
        await send(
            ws,
            {"type": "invoke", "id": 8, "capability": "demo.add", "parameters": {"a": 1, "b": 2}},
        )
        blocked = await recv_until(ws, event("decision_made"))
        assert blocked["data"]["decision"] == "block"
        error = await recv_until(ws, lambda m: m["type"] == "error")
        assert (error["id"], error["error"]["code"]) == (8, "governance_blocked")


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("not json", "INVALID_REQUEST"),
        ("[1]", "INVALID_REQUEST"),
        ('{"type": "dance"}', "UNKNOWN_TYPE"),
        ('{"type": "subscribe", "agent_id": "someone-else"}', "UNKNOWN_AGENT"),
        ('{"type": "subscribe", "channels": ["weather"]}', "UNKNOWN_CHANNEL"),
        ('{"type": "subscribe", "channels": "events"}', "BAD_CHANNELS"),
        ('{"type": "invoke"}', "MISSING_FIELD"),
        ('{"type": "invoke", "capability": "nope"}', "CAPABILITY_NOT_FOUND"),
    ],
)
async def test_bad_messages_get_errors_and_the_socket_stays_open(
    node: Node, message: str, reason: str
) -> None:
    async with connect(ws_url(node)) as ws:
        await ws.send(message)
        error = await recv_until(ws, lambda m: m["type"] == "error")
        assert error["error"]["reason"] == reason
        await send(ws, {"type": "ping", "id": 1})
        assert (await recv_until(ws, lambda m: m["type"] == "pong"))["id"] == 1


async def test_foreign_origin_cannot_open_the_socket(node: Node) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(node), origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403


async def test_unsubscribe(node: Node) -> None:
    async with connect(ws_url(node)) as ws:
        await send(ws, {"type": "subscribe", "channels": ["capabilities", "peers"]})
        await recv_until(ws, lambda m: m["type"] == "subscribed")
        await send(ws, {"type": "unsubscribe", "channels": ["capabilities"]})
        reply = await recv_until(ws, lambda m: m["type"] == "unsubscribed")
        assert reply["channels"] == ["peers"]


@pytest.mark.parametrize(
    "frame",
    [b"\x00binary", "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000],
    ids=["binary", "deep-list", "deep-object"],
)
async def test_frames_that_are_no_json_objects_get_a_clean_error(
    node: Node, frame: str | bytes
) -> None:
    async with connect(ws_url(node), max_size=None) as ws:
        await ws.send(frame)
        error = await recv_until(ws, lambda m: m["type"] == "error")
        assert error["error"]["code"] == "invalid_request"
        await send(ws, {"type": "ping", "id": 2})
        assert (await recv_until(ws, lambda m: m["type"] == "pong"))["id"] == 2


async def test_frames_are_limited_as_rest_bodies_are(
    node: Node, make_node: Callable[..., Node]
) -> None:
    # Above the old fixed 1 MiB and below the node's 4 MiB message limit: served.
    text = "x" * (3 << 19)
    async with connect(ws_url(node), max_size=None) as ws:
        await send(
            ws, {"type": "invoke", "id": 1, "capability": "demo.echo", "parameters": {"text": text}}
        )
        result = await recv_until(ws, lambda m: m["type"] in ("result", "error"))
        assert result["type"] == "result", result
        assert result["result"]["text"] == text
    # Above the node's limit: the socket closes with 1009 (message too big).
    small = make_node("small", http_port=0, max_message_bytes=2048)
    async with small, connect(ws_url(small)) as ws:
        await send(
            ws,
            {
                "type": "invoke",
                "id": 2,
                "capability": "demo.echo",
                "parameters": {"text": "x" * 4096},
            },
        )
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


async def test_replies_are_never_dropped_while_events_are(node: Node) -> None:
    """Replies do not share the droppable event queue: a burst of requests and a
    burst of events at once lose events (counted), never a reply."""
    pings, burst = QUEUE_SIZE + 100, QUEUE_SIZE + 150
    service = node.parts.service
    hub = EventHub(service, node.peer_table)
    door = WsDoor(service, hub, name=node.name)
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for message in (
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": json.dumps({"type": "subscribe"})},
        *(
            {"type": "websocket.receive", "text": json.dumps({"type": "ping", "id": i})}
            for i in range(pings)
        ),
    ):
        incoming.put_nowait(message)
    pongs: list[int] = []
    events = dropped = 0
    complete = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await incoming.get()

    async def asgi_send(message: dict[str, Any]) -> None:
        nonlocal events, dropped
        if message["type"] != "websocket.send":
            return
        frame = json.loads(message["text"])
        if frame["type"] == "subscribed":  # the burst, while every ping waits its turn
            for i in range(burst):
                hub.publish("capabilities", "tick", lambda i=i: {"n": i})
        elif frame["type"] == "pong":
            pongs.append(frame["id"])
        elif frame.get("event") == "events_dropped":
            dropped += frame["data"]["count"]
        elif frame.get("event") == "tick":
            events += 1
        if len(pongs) == pings and events + dropped == burst:
            complete.set()

    scope = {"type": "websocket", "path": "/ws", "headers": [], "client": ("127.0.0.1", 1)}
    task = asyncio.create_task(door(scope, receive, asgi_send))
    try:
        async with asyncio.timeout(10):
            await complete.wait()
    finally:
        incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await task
    assert pongs == list(range(pings))
    assert dropped > 0


async def exchange(node: Node, message: dict[str, Any]) -> dict[str, Any]:
    """Send ``message`` on a fresh socket; the first reply."""
    async with connect(ws_url(node)) as ws:
        await send(ws, message)
        return await recv_until(ws, lambda m: True)


async def test_ws_subscribe_and_status_follow_the_shared_rules(
    make_node: Callable[..., Node],
) -> None:
    # (A node that refuses anonymous callers refuses their upgrade: below.)
    policy = RuleEvaluator(
        [Rule("no-feed", decision=Decision.BLOCK, capabilities=frozenset({"aral.ws/Subscribe"}))]
    )
    governed = make_node("governed-ws", http_port=0, governance=policy)
    async with governed:
        reply = await exchange(governed, {"type": "subscribe", "channels": ["decisions"]})
        assert reply["error"]["code"] == "governance_blocked"
        reply = await exchange(governed, {"type": "status", "id": 2})
        assert reply["type"] == "event"
        assert reply["event"] == "status"


async def test_subscribe_is_judged_once_per_channel_and_a_nudge_without_channels_grants_none(
    make_node: Callable[..., Node],
) -> None:
    judged: list[Any] = []

    class Empties:
        def evaluate(self, action: Action) -> Verdict:
            if action.capability == "aral.ws/Subscribe":
                judged.append(action.parameters)
                return Verdict(Decision.NUDGE, parameters={})
            return Verdict()

    node = make_node("empty-nudge-ws", http_port=0, governance=Empties())
    async with node:
        ask = {"type": "subscribe", "channels": ["peers", "events", "peers"]}
        reply = await exchange(node, ask)
        assert reply["type"] == "subscribed"
        assert reply["channels"] == []
    assert judged == [{"channels": sorted(CHANNELS)}]


async def test_a_nudge_narrows_the_channels_a_subscription_gets(
    make_node: Callable[..., Node],
) -> None:
    class PeersOnly:
        def evaluate(self, action: Action) -> Verdict:
            if action.capability == "aral.ws/Subscribe":
                return Verdict(Decision.NUDGE, parameters={"channels": ["peers"]})
            return Verdict()

    policy = PeersOnly()
    node = make_node("nudged-ws", http_port=0, governance=policy)
    async with node:
        reply = await exchange(node, {"type": "subscribe", "channels": ["events"]})
        assert reply["type"] == "subscribed"
        assert reply["channels"] == ["peers"]


async def test_a_node_stops_cleanly_with_subscribers_connected(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("leaving", http_port=0)
    await node.start()
    try:
        async with asyncio.timeout(30), connect(ws_url(node)) as ws:  # a hang fails
            await send(ws, {"type": "subscribe", "channels": ["events"]})
            await recv_until(ws, lambda m: m["type"] == "subscribed")
            await node.stop()  # must not raise
            await ws.wait_closed()
            assert ws.close_code == 1012  # service restart: come back later
    finally:
        await node.stop()


async def test_each_message_has_its_own_trace_and_errors_carry_it(node: Node) -> None:
    """A socket's messages are calls of their own: each gets its own trace id (its
    own, if it sent one), and an error reply carries it, as REST and MCP errors do."""
    async with connect(ws_url(node), additional_headers={"x-trace-id": "socket-wide"}) as ws:
        for i in (1, 2):
            await send(ws, {"type": "invoke", "id": i, "capability": "demo.echo",
                            "parameters": {"text": "a"}})  # fmt: skip
        first = await recv_until(ws, lambda m: m.get("id") == 1)
        second = await recv_until(ws, lambda m: m.get("id") == 2)
        assert first["trace_id"] != second["trace_id"]
        assert "socket-wide" not in (first["trace_id"], second["trace_id"])
        await send(ws, {"type": "invoke", "id": 3, "capability": "nope", "trace_id": "t-3"})
        error = await recv_until(ws, lambda m: m.get("id") == 3)
    assert error["type"] == "error"
    assert error["error"]["trace_id"] == "t-3"
    assert error["error"]["reason"] == "CAPABILITY_NOT_FOUND"


class Users:
    """Names the caller after ``x-user``; ``x-user: auditor`` also holds the scope
    that shows every caller's decisions."""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        user = ctx.metadata.get("x-user", "")
        scopes = frozenset({DECISIONS_SCOPE}) if user == "auditor" else frozenset()
        return Authenticated(user, scopes)


async def decisions_until_pong(ws: ClientConnection) -> list[dict[str, Any]]:
    """The decision events a socket has been sent so far (a pong follows them all)."""
    await send(ws, {"type": "ping", "id": "flush"})
    seen = []
    async with asyncio.timeout(10):
        while (message := json.loads(await ws.recv())).get("type") != "pong":
            if message.get("event") == "decision_made":
                seen.append(message["data"])
    return seen


async def test_decisions_go_only_to_callers_entitled_to_them(
    make_node: Callable[..., Node],
) -> None:
    """An anonymous subscriber sees the decisions on its own socket's calls; an
    authenticated one also its own calls on any door; only a holder of
    ``aral:decisions`` sees everyone's."""
    plain = make_node("entitled", http_port=0)
    node = Node(plain.config, authenticator=Users())
    node.load(DEMO)
    echo = {"capability": "demo.echo", "parameters": {"text": "x"}}
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        url = ws_url(node)
        async with (
            connect(url) as anonymous,
            connect(url, additional_headers={"x-user": "alice"}) as alice,
            connect(url, additional_headers={"x-user": "auditor"}) as auditor,
        ):
            for ws in (anonymous, alice, auditor):
                await send(ws, {"type": "subscribe", "channels": ["decisions"]})
                await recv_until(ws, lambda m: m["type"] == "subscribed")
            await send(anonymous, {"type": "invoke", "id": 1, **echo})
            own = await recv_until(anonymous, event("decision_made"))  # before its result
            await recv_until(anonymous, lambda m: m["type"] == "result")
            for user in ("", "alice", "bob"):
                headers = {"x-user": user} if user else {}
                answer = await http.post("/v1/invoke", json={"call": echo}, headers=headers)
                assert answer.status_code == 200
            seen = {}
            for name, ws in (("anonymous", anonymous), ("alice", alice), ("auditor", auditor)):
                seen[name] = [(d["door"], d["caller"]) for d in await decisions_until_pong(ws)]
    assert (own["data"]["door"], own["data"]["caller"]) == ("ws", "")  # its own call
    assert seen["anonymous"] == []  # and nobody else's
    assert seen["alice"] == [("rest", "alice")]
    assert seen["auditor"] == [("ws", ""), ("rest", ""), ("rest", "alice"), ("rest", "bob")]


async def test_the_pipeline_is_watched_only_while_someone_follows_decisions(
    node: Node,
) -> None:
    hub = node.parts.http.hub
    listeners = node.pipeline.verdict_listeners
    assert listeners == []  # subscribers to other channels do not need verdicts
    ctx = node.contexts.build("ws", peer="127.0.0.1:1")
    node.pipeline.authenticate(ctx, "aral.ws/Subscribe")
    sub = Subscriber()
    hub.subscribe(sub, {"peers", "decisions"}, ctx)
    assert listeners == [hub._verdict]
    hub.unsubscribe(sub, {"decisions"})
    assert listeners == []
    assert sub.channels == {"peers"}
    hub.remove(sub)
    assert not hub.subscribers


@pytest.mark.parametrize(
    ("rule", "status", "reason"),
    [
        ({"allow_unsigned": False}, 401, "ANONYMOUS_REFUSED"),
        ({"deny_by_default": True}, 403, "MISSING_SCOPE"),
    ],
)
async def test_a_socket_that_could_do_nothing_is_never_opened(
    make_node: Callable[..., Node], rule: dict[str, Any], status: int, reason: str
) -> None:
    """An anonymous upgrade where anonymous callers hold nothing is refused as its
    request would be on any other door, and audited: an open socket that every
    message is refused on would only hold the node's memory (frames queue in it)."""
    from aralnode.store.audit import read_records

    node = make_node("closed-ws", http_port=0, audit=True, **rule)
    async with node:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url(node)):
                pass
        assert refused.value.response.status_code == status
        assert json.loads(refused.value.response.body)["error"]["reason"] == reason
    records = [r for _, r in read_records(node.config.resolved_data_dir / "audit")]
    assert [(r.door, r.action, r.reason) for r in records if r.action == "aral.http/ws"] == [
        ("ws", "aral.http/ws", reason)
    ]


async def test_a_socket_holds_one_bounded_message_waiting_and_echoes_no_big_id(
    make_node: Callable[..., Node],
) -> None:
    """What a client that sends and never reads can make a socket hold is bounded:
    a message past ``max_message_bytes`` closes the socket (1009), the protocol reads
    one message at a time, and an id the reply would echo is small (from review: a
    megabyte id on each ping made the node write a megabyte per ping)."""
    node = make_node("ws-bounds", http_port=0, max_message_bytes=64 * 1024)
    async with node:
        server = node._parts.http._server  # type: ignore[union-attr]
        assert server.config.ws_max_size == 64 * 1024
        assert server.config.ws_protocol_class is BoundedWebSocket  # one message read at a time
        async with connect(ws_url(node), max_size=None) as ws:
            await send(ws, {"type": "ping", "id": "x" * 129})
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["id"], reply["error"]["reason"]) == (
                "error", None, "BAD_ID",
            )  # fmt: skip
            await send(ws, {"type": "ping", "id": "x" * 128})
            assert json.loads(await ws.recv()) == {"type": "pong", "id": "x" * 128}
            await send(ws, {"type": "ping", "id": "x" * (64 * 1024)})
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1009


async def test_a_client_that_pings_and_never_reads_meets_flow_control(
    make_node: Callable[..., Node],
) -> None:
    """From review: each ping was answered straight to the transport as it was read,
    so a client sending pings and never reading made the node hold every pong
    (200 MB sent, 200 MB held). Reading now pauses while the write buffer is full:
    what the node holds for the socket stays small however much the client sends."""
    import socket

    from websockets.frames import Frame, Opcode

    node = make_node("ws-pings", http_port=0)
    async with node:
        server = node._parts.http._server  # type: ignore[union-attr]
        reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # we never read
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        writer.write(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade"
            f"\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])  # a client's
        chunk = ping * 2000  # 262 KB of pings, as many pongs back
        sent = 0
        while sent < 40 * 1024 * 1024:  # bounded: stops at 40 MB, or when the node stops reading
            writer.write(chunk)
            try:
                async with asyncio.timeout(2):
                    await writer.drain()
            except TimeoutError:
                break
            sent += len(chunk)
        held = [
            p.transport.get_write_buffer_size()
            for p in list(server.server_state.connections)
            if hasattr(p, "keepalive_timeout")
        ]
        writer.transport.abort()
    assert held, "the node's WebSocket was not found"
    assert sent < 40 * 1024 * 1024, "the node read on while its pongs piled up"
    assert max(held) < 2 * 1024 * 1024, (held, sent)


async def test_an_invoke_takes_its_own_members_only_and_its_refusal_is_on_record(
    node: Node,
) -> None:
    """From an attack: ``params`` (misspelt) or ``"parameters": false`` ran the
    capability with no parameters at all -- its defaults, whatever they do. Both are
    refused now, as REST's ``/v1/invoke`` refuses them, and the refusal is recorded
    as a call's is."""
    seen = recorded(node)
    frames = [
        ({"capability": "demo.echo", "params": {"text": "hi"}}, ["params"]),
        ({"capability": "demo.echo", "parameters": False}, None),
        ({"capability": "demo.echo", "parameters": ""}, None),
        ({"capability": "demo.echo", "parameters": [1]}, None),
    ]
    for i, (frame, unknown) in enumerate(frames):
        reply = await exchange(node, {"type": "invoke", "id": i, **frame})
        assert (reply["type"], reply["id"]) == ("error", i), reply
        assert reply["error"]["reason"] == "INVALID_PARAMETERS", reply
        if unknown is not None:
            assert reply["error"]["details"]["unknown"] == unknown, reply
    refusals = [r for r in seen if r.action == "aral.ws/invoke"]
    assert [(r.door, r.outcome, r.reason, r.point) for r in refusals] == [
        ("ws", "invalid_request", "INVALID_PARAMETERS", "pre")
    ] * len(frames)
    # Absent or null parameters are none, as before.
    for frame in ({}, {"parameters": None}):
        ask = {"type": "invoke", "id": 9, "capability": "demo.whoami", **frame}
        reply = await exchange(node, ask)
        assert reply["type"] == "result", reply
