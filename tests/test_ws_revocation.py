"""A WebSocket that subscribes once and then only listens is held to its session's
rules as one that sends is (from an attack: its feed went on after its key was
revoked, its token expired, or its lifetime passed, as long as it sent nothing).

Before its events are sent, a socket's upgrade credentials are authenticated again
(at most once a second of the door's clock), and its lifetime is checked; either
failing closes it (1008, with the reason a message would be refused with), the
refusal on record as the subscription's. A socket that is sent nothing is closed
when its lifetime ends all the same. Time is the door's injected clock (and the
JWT verifier's): no test waits for it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge._approvals_feed import (
    RECHECK_SECONDS,
    SESSION_EXPIRED,
    UNDECIDED_SECONDS,
    FeedSocket,
    SessionGate,
)
from aralnode.bridge.ws import DECISIONS_SCOPE, WsDoor
from aralnode.core.clock import FixedClock
from aralnode.core.errors import RateLimited, Unauthenticated
from tests.conftest import DEMO, recorded
from tests.test_jwt import Signer, access_of, bearer, jwt_node, write_jwks

WATCHER_SCOPES = [DECISIONS_SCOPE, "agent:read"]


def door_of(node: Node) -> WsDoor:
    assert node._parts is not None
    door: WsDoor = node._parts.http.ws
    return door


async def subscribed(node: Node, headers: dict[str, str]) -> ClientConnection:
    """A socket subscribed to every caller's decisions, and nothing more."""
    ws = await connect(
        f"ws://127.0.0.1:{node.http_port}/ws", additional_headers=headers, open_timeout=10
    )
    await ws.send(json.dumps({"type": "subscribe", "channels": ["decisions"]}))
    async with asyncio.timeout(10):
        ack = json.loads(await ws.recv())
    assert (ack["type"], ack["channels"]) == ("subscribed", ["decisions"]), ack
    return ws


async def decision(node: Node, ws: ClientConnection, text: str) -> dict[str, Any]:
    """Make a decision (an in-process call: it reaches every ``aral:decisions``
    holder), and return what ``ws`` is sent next."""
    await node.invoke("demo.echo", {"text": text})
    async with asyncio.timeout(10):
        message: dict[str, Any] = json.loads(await ws.recv())
    return message


async def closed_instead(node: Node, ws: ClientConnection, text: str) -> tuple[int, str]:
    """Make a decision; ``ws`` must be closed rather than sent it: the close frame."""
    await node.invoke("demo.echo", {"text": text})
    async with asyncio.timeout(10):
        try:
            leaked = await ws.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
        else:
            pytest.fail(f"the socket was sent {leaked!r}")
    assert frame is not None
    return frame.code, frame.reason


def feed_refusals(seen: list[Any]) -> list[tuple[str, str, str]]:
    """The socket's refusals on record (its subscribing is on record as ``ok``)."""
    subscribing = [r for r in seen if r.action == "aral.ws/Subscribe"]
    return [(r.door, r.outcome, r.reason) for r in subscribing if r.outcome != "ok"]


async def test_a_listening_socket_is_closed_once_its_key_is_revoked(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ws-revoked", http_port=0)
    async with node:
        store = ApiKeyStore(node.config.apikeys_path)
        key, record = store.create("watcher", scopes=WATCHER_SCOPES)
        door, clock = door_of(node), FixedClock()
        door.clock = clock  # the sockets' own clock, moved here
        seen = recorded(node)
        ws = await subscribed(node, {"x-api-key": key})
        try:
            first = await decision(node, ws, "before")
            assert (first["event"], first["data"]["action"]) == ("decision_made", "demo.echo")
            store.revoke(record.id)
            clock.advance(RECHECK_SECONDS)
            # The reason an invoke on the socket would be refused with.
            assert await closed_instead(node, ws, "private") == (1008, "API_KEY_REVOKED")
        finally:
            await ws.close()
    assert feed_refusals(seen) == [("ws", "unauthorized", "API_KEY_REVOKED")]


async def test_a_listening_socket_is_closed_when_its_lifetime_ends(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ws-ttl-events", http_port=0)
    async with node:
        door, clock = door_of(node), FixedClock()
        door.clock, door.session_ttl = clock, 60.0  # the sockets' own clock, moved here
        key, _ = ApiKeyStore(node.config.apikeys_path).create("watcher", scopes=WATCHER_SCOPES)
        ws = await subscribed(node, {"x-api-key": key})
        try:
            clock.advance(59.0)
            assert (await decision(node, ws, "in time"))["event"] == "decision_made"
            clock.advance(1.0)
            # The reason its next message would be closed with.
            assert await closed_instead(node, ws, "too late") == (1008, SESSION_EXPIRED)
        finally:
            await ws.close()


async def test_a_socket_that_is_sent_nothing_is_closed_at_the_end_of_its_lifetime(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("ws-ttl-idle", http_port=0)
    async with node:
        door_of(node).session_ttl = 0.0  # past its lifetime as it opens
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        async with asyncio.timeout(10), connect(url, open_timeout=10) as ws:
            await ws.wait_closed()  # it sends nothing, and nothing is sent to it
        assert ws.close_code == 1008
        assert ws.close_reason == SESSION_EXPIRED


async def test_a_listening_socket_is_closed_once_its_token_expires_checked_once_a_second(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, signer)
    node = jwt_node(make_node, "ws-jwt-expiry", jwks)
    node.load(DEMO)
    async with node:
        verifier = access_of(node).jwt
        assert verifier is not None
        exp = int(time.time()) + 600
        token = signer.token(scope=" ".join(WATCHER_SCOPES), exp=exp)
        door, clock = door_of(node), FixedClock()
        door.clock = clock
        seen = recorded(node)
        ws = await subscribed(node, bearer(token))
        try:
            assert (await decision(node, ws, "valid"))["event"] == "decision_made"
            verifier.now = lambda: exp + verifier.rules.leeway + 1  # expired, leeway and all
            # Within a second of the last check: not verified again (a busy feed
            # does not verify per event), so this one still goes out.
            assert (await decision(node, ws, "same second"))["event"] == "decision_made"
            clock.advance(RECHECK_SECONDS)
            assert await closed_instead(node, ws, "expired") == (1008, "TOKEN_EXPIRED")
        finally:
            await ws.close()
    assert feed_refusals(seen) == [("ws", "unauthorized", "TOKEN_EXPIRED")]


def test_the_gate_checks_credentials_at_most_once_a_second_and_the_lifetime_always() -> None:
    clock = FixedClock()
    asked: list[float] = []
    refusal: list[Exception] = []

    def authenticate() -> None:
        asked.append(clock.monotonic())
        if refusal:
            raise refusal[0]

    gate = SessionGate(clock, 10.0, authenticate)
    assert gate.remaining() == 10.0
    assert [gate.refusal() for _ in range(3)] == [None] * 3
    assert asked == [0.0]  # the first event is checked; the rest of its second is not
    clock.advance(RECHECK_SECONDS)
    refusal.append(Unauthenticated("revoked", reason="API_KEY_REVOKED"))
    assert gate.refusal() == (1008, "API_KEY_REVOKED")
    # Its address held back for failed credentials (another client's, maybe): no
    # verdict on this one -- undecided, for ``UNDECIDED_SECONDS`` in a row at most.
    refusal[0] = RateLimited("wait", reason="RATE_LIMIT_AUTH_FAILURES", retry_after=1.0)
    clock.advance(RECHECK_SECONDS)
    assert gate.refusal() is None
    assert asked == [0.0, 1.0, 2.0]
    clock.advance(8.0)
    assert (gate.expired(), gate.remaining()) == (True, 0.0)
    assert gate.refusal() == (1008, SESSION_EXPIRED)  # whatever the credentials say
    assert asked == [0.0, 1.0, 2.0]
    forever = SessionGate(clock, None, authenticate)
    assert (forever.expired(), forever.remaining()) == (False, None)


class _Socket:
    """What a ``FeedSocket`` writes to: the frames, and the close."""

    def __init__(self) -> None:
        self.scope = {"type": "websocket", "client": ("127.0.0.1", 1)}
        self.frames: list[Any] = []

    async def send_text(self, text: str) -> None:
        self.frames.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.frames.append(("close", code, reason))


async def test_a_reply_does_not_carry_events_past_the_gate() -> None:
    """The events queued before a reply go out with it (``FeedSocket.reply``): they
    pass the same gate, so a client cannot have them flushed by sending pings."""

    def revoked() -> None:
        raise Unauthenticated("revoked", reason="API_KEY_REVOKED")

    ws = _Socket()
    gate = SessionGate(FixedClock(), None, revoked)
    feed = FeedSocket(cast(WebSocket, ws), lambda lost: {"lost": lost}, gate)
    feed.sub.offer({"type": "event", "event": "decision_made"})
    await feed.reply({"type": "pong", "id": 1})
    await feed.reply({"type": "pong", "id": 2})
    assert ws.frames == [("close", 1008, "API_KEY_REVOKED")]
    assert feed.closed


@pytest.mark.parametrize(
    "checking",
    [
        Unauthenticated("being checked", reason="TOKEN_NOT_INTROSPECTED", retry_after=0.5),
        RateLimited("held back", reason="RATE_LIMIT_AUTH_FAILURES", retry_after=1.0),
    ],
    ids=["with-its-issuer", "address-held-back"],
)
def test_a_credential_being_checked_with_its_issuer_is_undecided_for_a_while(
    checking: Exception,
) -> None:
    """From review: an opaque token's introspection answer ages out of the cache
    (5 min); the next check asks the issuer again and is refused "retry" meanwhile.
    That refused the stream then: a valid token's stream was ended every few minutes.
    Now it goes on while undecided, for ``UNDECIDED_SECONDS`` in a row at most. So
    does one that could not be asked because its address is held back for failed
    credentials (another client's behind the same address, maybe): from a review,
    a burst of bad keys from one address ended every stream open from it."""
    clock = FixedClock()
    answers: list[Exception | None] = []

    def authenticate() -> None:
        if answers and answers[0] is not None:
            raise answers[0]

    gate = SessionGate(clock, None, authenticate)
    answers.append(checking)
    assert gate.failure() is None  # undecided: the stream goes on
    clock.advance(RECHECK_SECONDS)
    answers[0] = None  # the issuer answered: decided, the count starts again
    assert gate.failure() is None
    answers[0] = checking
    seen = []
    for _ in range(int(UNDECIDED_SECONDS) + 1):
        clock.advance(RECHECK_SECONDS)
        seen.append(gate.failure())
    assert seen[:-1] == [None] * int(UNDECIDED_SECONDS)
    assert seen[-1] is checking  # undecided for too long: refused
    clock.advance(RECHECK_SECONDS)
    answers[0] = Unauthenticated("revoked", reason="TOKEN_INACTIVE")
    failure = gate.failure()
    assert failure is not None
    assert failure.reason == "TOKEN_INACTIVE"  # a decided refusal ends it at once
