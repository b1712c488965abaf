"""Hostile clients holding sessions on the HTTP port: what one client can make the
node hold in MCP sessions and WebSockets stays its share, and a client from
elsewhere is still served (item 4); a peer with thousands of capabilities costs
tools/list its own tools only, built without stalling the loop (item 7).

The resource tests run the attack against a node process (``tests.hostile``) and
check its RSS and fds from outside; ``-s`` prints them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from aralnode import Node
from tests.hostile import MIB, NodeProcess

MCP_VERSION = "2025-06-18"
ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": MCP_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "hostile", "version": "0"},
    },
}


def client_from(url: str, address: str, connections: int = 8) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address`` (a loopback one)."""
    return httpx.AsyncClient(
        base_url=url,
        transport=httpx.AsyncHTTPTransport(local_address=address),
        limits=httpx.Limits(max_connections=connections),
        timeout=20,
    )


async def open_session(http: httpx.AsyncClient) -> str:
    """A handshake-era MCP session, initialized: its id."""
    opened = await http.post("/mcp", json=INIT, headers=ACCEPT)
    assert opened.status_code == 200, opened.text
    session = opened.headers["mcp-session-id"]
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    done = await http.post("/mcp", json=note, headers=session_headers(session))
    assert done.status_code == 202, done.text
    return session


def session_headers(session: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": session, "mcp-protocol-version": MCP_VERSION}


async def request(
    http: httpx.AsyncClient, session: str, method: str, params: dict[str, Any] | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return await http.post("/mcp", json=body, headers=session_headers(session))


async def served(url: str, address: str) -> None:
    """A fresh MCP client from ``address`` opens a session and calls a tool."""
    async with client_from(url, address) as http:
        session = await open_session(http)
        params = {"name": "demo.echo", "arguments": {"text": "hi"}}
        answer = await request(http, session, "tools/call", params)
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["structuredContent"]["echo"] == ["hi"], answer.text


async def open_many(http: httpx.AsyncClient, count: int, parallel: int = 8) -> list[str]:
    """``count`` sessions, ``parallel`` at a time, in the order they were opened."""
    sessions: list[str] = []
    for start in range(0, count, parallel):
        batch = range(start, min(count, start + parallel))
        sessions += await asyncio.gather(*(open_session(http) for _ in batch))
    return sessions


ATTACK = 1000  # sessions one client opens


@pytest.mark.slow
async def test_one_client_cannot_fill_the_mcp_sessions(tmp_path: Path) -> None:
    """A client (127.0.0.2) opens a thousand MCP sessions and never closes them: it
    keeps its own share (the newest), its oldest are ended, the node's memory does
    not follow its count, and a fresh MCP client from another address is served."""
    async with NodeProcess.running(tmp_path) as node:
        url = node.http_url
        await served(url, "127.0.0.1")  # the first session's costs are paid before
        before, fds = node.rss(), node.fds()
        async with client_from(url, "127.0.0.2") as attacker:
            sessions = await open_many(attacker, ATTACK)
            oldest = await request(attacker, sessions[0], "tools/list")
            newest = await request(attacker, sessions[-1], "tools/list")
        grown = node.rss() - before
        print(f"{ATTACK} sessions: RSS +{grown / MIB:.1f} MiB, fds {fds} -> {node.fds()}")
        assert newest.status_code == 200, newest.text
        assert oldest.status_code == 404, "the client's oldest session is still open"
        assert grown < 16 * MIB
        assert node.fds() <= fds + 16
        await served(url, "127.0.0.3")
        await node.probe()


async def test_a_full_node_evicts_from_whoever_holds_most(
    make_node: Callable[..., Node],
) -> None:
    """With every session taken, a new client still gets one: the least recently used
    session of the client holding the most is ended, not a light user's."""
    node = make_node("full", http_port=0, mcp_max_sessions=12, mcp_max_sessions_per_client=4)
    async with node:
        url = f"http://127.0.0.1:{node.http_port}"
        async with client_from(url, "127.0.0.9") as light:
            kept = await open_session(light)
            heavy: list[list[str]] = []
            for host in range(2, 5):  # three clients of four sessions each: 13 > 12
                async with client_from(url, f"127.0.0.{host}") as http:
                    heavy.append(await open_many(http, 4))
            await served(url, "127.0.0.20")
            assert (await request(light, kept, "tools/list")).status_code == 200
        gone = 0
        async with client_from(url, "127.0.0.2") as http:
            for sessions in heavy:
                for session in sessions:
                    gone += (await request(http, session, "tools/list")).status_code == 404
        assert gone == 2  # one for the fourth heavy client's last, one for the newcomer


async def test_a_member_given_twice_is_refused_as_on_rest(
    make_node: Callable[..., Node],
) -> None:
    """``tools/call`` arguments with a member twice: the SDK would take the last (and
    another parser the first); refused before it reads them, as REST refuses them,
    in a JSON-RPC error that carries the node's error and trace id."""
    node = make_node("dups", http_port=0)
    async with node, client_from(f"http://127.0.0.1:{node.http_port}", "127.0.0.1") as http:
        session = await open_session(http)
        body = (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": '
                b'{"name": "demo.echo", "arguments": {"text": "A", "text": "B"}}}')  # fmt: skip
        headers = {**session_headers(session), "content-type": "application/json"}
        r = await http.post("/mcp", content=body, headers=headers)
        once = await request(http, session, "tools/call",
                             {"name": "demo.echo", "arguments": {"text": "A"}})  # fmt: skip
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == -32602
    assert error["data"]["reason"] == "DUPLICATE_PARAMETER"
    assert error["data"]["trace_id"] == r.headers["x-trace-id"]
    assert once.json()["result"]["structuredContent"]["echo"] == ["A"]  # the session lives


# -- a peer with thousands of capabilities: tools/list is built per peer (item 7) --------


def _card(prefix: str, count: int) -> list[Any]:
    from aralnode import _proto as pb

    caps = []
    for i in range(count):
        cap = pb.Capability(id=f"{prefix}.cap{i}", name=f"cap {i}")
        cap.input_schema.update({"type": "object", "properties": {"n": {"type": "integer"}}})
        caps.append(cap)
    return caps


class FakePeers:
    """Stands in for what the node knows of its peers' cards: connected peers and
    their capabilities, changed by ``connect`` (which tells the peer table)."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
        self.node = node
        self.cards: dict[str, list[Any]] = {}
        info = node.parts.service.info  # type: ignore[union-attr]
        monkeypatch.setattr(info, "connected_peers", self.connected)
        monkeypatch.setattr(info, "peer_capabilities", lambda node_id: self.cards[node_id])

    def connected(self) -> list[Any]:
        from aralnode import _proto as pb

        state = pb.PeerState.PEER_STATE_CONNECTED
        return [pb.Peer(node_id=n, name=n[:4], state=state) for n in self.cards]

    def connect(self, node_id: str, caps: list[Any]) -> None:
        from aralnode.core.peers import PeerEvent

        self.cards[node_id] = caps
        self.node.peer_table.apply(node_id, PeerEvent.VERIFIED, node_id=node_id, name=node_id[:4])


async def test_a_handshake_rebuilds_the_tools_of_its_peer_only(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer with 2,000 capabilities is listed; then another peer connects, and a
    capability is added here: each change builds the tools of what changed, not the
    big peer's again; and building the big one lets the loop serve others meanwhile."""
    from aralnode.bridge import mcp

    checked = 0
    check = mcp.check_schema

    def counting(schema: dict[str, Any], what: str) -> None:
        nonlocal checked
        checked += 1
        check(schema, what)

    monkeypatch.setattr(mcp, "check_schema", counting)
    node = make_node("many", http_port=0)
    async with node:
        tools = node.parts.http.tools  # type: ignore[union-attr]
        peers = FakePeers(node, monkeypatch)
        peers.connect("b" * 32, _card("big", 2000))
        ticks = 0

        async def ticker() -> None:  # another door's work, waiting for the loop
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)  # one loop turn: what is counted (noqa: sleep-ok)

        other = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)  # one loop turn, for the ticker to start (noqa: sleep-ok)
        started = ticks
        listed = await tools.tools()
        served_meanwhile = ticks - started
        other.cancel()
        assert len([n for n in listed if ".big.cap" in n]) == 2000
        assert served_meanwhile > 10, "the loop served nothing else while 2,000 tools were built"
        assert checked == 2000
        peers.connect("s" * 32, _card("small", 3))
        listed = await tools.tools()
        assert len([n for n in listed if ".small.cap" in n]) == 3
        assert checked == 2003  # the big peer's tools were kept

        @node.capability(id="late.cap")
        async def late() -> None:
            return None

        listed = await tools.tools()
        assert "late.cap" in listed
        assert checked == 2003
        del peers.cards["s" * 32]
        from aralnode.core.peers import PeerEvent

        node.peer_table.apply("s" * 32, PeerEvent.GOODBYE)
        listed = await tools.tools()
        assert not any(".small.cap" in n for n in listed)
        assert checked == 2003


@pytest.mark.parametrize(
    "fields",
    [
        {"mcp_max_sessions_per_client": 0},
        {"mcp_max_sessions": 8, "mcp_max_sessions_per_client": 9},
    ],
)
def test_session_bounds_are_checked(fields: dict[str, int]) -> None:
    from aralnode import NodeConfig

    with pytest.raises(ValueError, match="mcp_max_sessions"):
        NodeConfig(**fields)  # type: ignore[arg-type]


# -- WebSockets: the other thing a client holds open on the HTTP port --------------------

SOCKETS = 200  # one client tries to open this many


async def _open_sockets(url: str, address: str, count: int) -> tuple[list[Any], list[int]]:
    """``count`` WebSockets from ``address``: those open, and the statuses refused."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    opened, refused = [], []
    for _ in range(count):
        try:
            opened.append(await connect(url, local_addr=(address, 0), open_timeout=20))
        except InvalidStatus as exc:
            refused.append(exc.response.status_code)
    return opened, refused


async def _subscribed(url: str, address: str) -> None:
    """A fresh WebSocket client from ``address`` subscribes and is answered."""
    from websockets.asyncio.client import connect

    async with connect(url, local_addr=(address, 0), open_timeout=20) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channels": ["status"]}))
        async with asyncio.timeout(20):
            assert json.loads(await ws.recv())["type"] == "subscribed"


@pytest.mark.slow
async def test_one_client_cannot_hold_every_websocket(tmp_path: Path) -> None:
    """A client (127.0.0.2) opens WebSockets and keeps them: it gets its share, the
    rest are refused before they are accepted (429), so its descriptors and memory
    stay bounded; another client's WebSocket is served."""
    async with NodeProcess.running(tmp_path) as node:
        url = f"ws://127.0.0.1:{node.info['http_port']}/ws"
        await _subscribed(url, "127.0.0.1")
        before, fds = node.rss(), node.fds()
        opened, refused = await _open_sockets(url, "127.0.0.2", SOCKETS)
        grown = node.rss() - before
        print(f"{SOCKETS} WebSockets: {len(opened)} open, RSS +{grown / MIB:.1f} MiB, ", end="")
        print(f"fds {fds} -> {node.fds()}")
        try:
            assert len(opened) == 16
            assert set(refused) == {429}
            assert node.fds() <= fds + 16 + 4
            assert grown < 8 * MIB
            await _subscribed(url, "127.0.0.3")
            await node.probe()
        finally:
            for ws in opened:
                await ws.close()


async def test_a_full_node_closes_the_oldest_websocket_of_whoever_holds_most(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("socks", http_port=0, ws_max_connections=4, ws_max_connections_per_client=2)
    async with node:
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        light, _ = await _open_sockets(url, "127.0.0.9", 1)
        heavy, _ = await _open_sockets(url, "127.0.0.2", 2)
        more, refused = await _open_sockets(url, "127.0.0.2", 1)
        assert (more, refused) == ([], [429])
        third, _ = await _open_sockets(url, "127.0.0.3", 1)  # the fourth: room for it
        newcomer, _ = await _open_sockets(url, "127.0.0.4", 1)  # a fifth: one must go
        async with asyncio.timeout(20):
            await heavy[0].wait_closed()
        assert heavy[0].close_code == 1013
        for ws in [*light, *heavy[1:], *third, *newcomer]:
            await ws.send(json.dumps({"type": "ping"}))
            async with asyncio.timeout(20):
                assert json.loads(await ws.recv())["type"] == "pong"
            await ws.close()
