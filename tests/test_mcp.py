"""The MCP door through the official ``mcp`` client: streamable HTTP at /mcp and stdio
(``aralnode mcp --node``), tools generated from capabilities and proto methods."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from aralnode import Node
from aralnode import _proto as pb
from aralnode.bridge.mcp import (
    WRAPPED,
    InvalidToolSchema,
    ToolSpec,
    _input_schema,
    assign_names,
    peer_tool_name,
    remote_spec,
    tool_name,
)
from aralnode.bridge.mcp_local import LocalTools
from aralnode.core.context import CallContext
from aralnode.core.governance import Decision, Rule, RuleEvaluator

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = str(ROOT / "examples" / "library" / "server.py")
EXPECTED_TOOLS = {
    "demo.echo",
    "demo.add",
    "library.v1.Library.GetBook",
    "library.v1.Library.ListBooks",
    "library.v1.Library.CreateBook",
    "library.v1.Library.Search",
    "aral.v1.AgentNode.GetStatus",
    "aral.v1.AgentNode.ListPeers",
    "aral.v1.AgentNode.ListCapabilities",
}


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("mcp", http_port=0)
    n.load(LIBRARY)
    async with n:
        yield n


def url(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}/mcp"


def stdio(node: Node) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "aralnode.cli", "mcp", "--node", node.address],
        cwd=str(ROOT),
        env=dict(os.environ),  # PYTHONPATH: this worktree's package and its gen/
    )


def error_text(result: Any) -> dict[str, Any]:
    assert result.is_error
    body: dict[str, Any] = json.loads(result.content[0].text)
    return body["error"]


async def check_tools_and_calls(client: Client) -> None:
    listed = (await client.list_tools()).tools
    tools = {t.name: t for t in listed}
    assert set(tools) >= EXPECTED_TOOLS
    assert "library.v1.Library.WatchShelf" not in tools  # streaming: not a tool
    for tool in listed:
        assert tool.input_schema["type"] == "object"
        Draft202012Validator.check_schema(tool.input_schema)
        if tool.output_schema is not None:
            Draft202012Validator.check_schema(tool.output_schema)
    get_book = tools["library.v1.Library.GetBook"]
    assert set(get_book.input_schema["properties"]) == {"shelf", "bookId"}
    # Over stdio the tools come from the node's capability cards; both carry the
    # proto comments.
    assert get_book.description == "Gets one book from a shelf."
    assert get_book.input_schema["properties"]["shelf"]["description"] == "Shelf to look on."
    assert get_book.output_schema is not None
    annotations = tools["demo.echo"].annotations
    assert annotations is not None
    assert annotations.read_only_hint

    result = await client.call_tool("library.v1.Library.GetBook", {"shelf": "fic", "bookId": "3"})
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["title"] == "Dune"
    assert json.loads(result.content[0].text)["author"] == "Frank Herbert"

    result = await client.call_tool("demo.add", {"a": 2, "b": 3})
    assert not result.is_error
    assert json.loads(result.content[0].text) == 5

    # bad arguments: an error result the model can read, not a crash
    bad = await client.call_tool("demo.add", {"a": "two", "b": 3})
    assert error_text(bad)["code"] == "invalid_request"
    bad = await client.call_tool("library.v1.Library.GetBook", {"shelf": "fic", "bookId": "three"})
    assert error_text(bad)["code"] == "invalid_request"
    missing = await client.call_tool("library.v1.Library.GetBook", {"shelf": "fic", "bookId": "99"})
    assert error_text(missing)["code"] == "not_found"
    with pytest.raises(MCPError):
        await client.call_tool("no.such.tool", {})
    # the client still works after all that
    status = await client.call_tool("aral.v1.AgentNode.GetStatus", {})
    assert status.structured_content is not None
    assert status.structured_content["state"] == "SERVING"


async def test_streamable_http_with_the_official_client(node: Node) -> None:
    async with Client(url(node)) as client:
        await check_tools_and_calls(client)
        whoami = await client.call_tool("demo.whoami", {})
        assert json.loads(whoami.content[0].text)["door"] == "mcp"


async def test_streamable_http_legacy_handshake(node: Node) -> None:
    async with Client(url(node), mode="legacy") as client:
        result = await client.call_tool("demo.echo", {"text": "hi"})
        assert result.structured_content == {"text": "hi", "echo": ["hi"]}


async def test_stdio_bridge_with_the_official_client(node: Node) -> None:
    async with Client(stdio(node)) as client:
        await check_tools_and_calls(client)


async def test_governance_applies_on_mcp(make_node: Callable[..., Node]) -> None:
    policy = RuleEvaluator(
        rules=[Rule(id="no-add", decision=Decision.BLOCK, capabilities=frozenset({"demo.add"}))]
    )
    node = make_node("mcpgov", http_port=0, governance=policy)
    async with node, Client(url(node)) as client:
        blocked = await client.call_tool("demo.add", {"a": 1, "b": 2})
        assert error_text(blocked)["code"] == "governance_blocked"


async def test_peer_tools_are_forwarded_over_the_signed_channel(
    make_node: Callable[..., Node],
) -> None:
    alpha = make_node("alpha", http_port=0, demo=False)
    beta = make_node("beta")
    async with beta, alpha:
        await alpha.connect(beta.address)
        async with Client(url(alpha)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            # the peer's chosen name, and the head of the id it cannot choose
            echo = f"peer.beta-{beta.node_id[:8]}.demo.echo"
            assert echo in names
            assert "demo.echo" not in names  # alpha has no demo capabilities itself
            result = await client.call_tool(echo, {"text": "via alpha"})
            assert result.structured_content == {"text": "via alpha", "echo": ["via alpha"]}


async def test_mcp_refuses_foreign_host_and_origin(node: Node) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient() as http:
        r = await http.post(url(node), json=body, headers={**headers, "Host": "rebind.example"})
        assert r.status_code == 421
        r = await http.post(
            url(node), json=body, headers={**headers, "Origin": "https://evil.example"}
        )
        assert r.status_code == 403


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("library.v1.Library/GetBook", "library.v1.Library.GetBook"),
        ("demo.echo", "demo.echo"),
        ("has space/and:colon", "has_space.and_colon"),
        ("", "_"),
    ],
)
def test_tool_names_follow_mcp_rules(raw: str, name: str) -> None:
    assert tool_name(raw) == name


def test_long_tool_names_stay_distinct() -> None:
    a, b = tool_name("x" * 200 + "a"), tool_name("x" * 200 + "b")
    assert len(a) == len(b) == 128
    assert a != b


def spec(key: str, name: str | None = None) -> ToolSpec:
    async def run(args: Any, ctx: CallContext) -> Any:
        return args

    return ToolSpec(
        name=name or tool_name(key),
        description="",
        input_schema={"type": "object"},
        output_schema=None,
        read_only=False,
        run=run,
        key=key,
    )


def test_colliding_names_get_a_stable_hash_not_an_order() -> None:
    keys = ["a.b", "a/b", "a:b", "a_b", "x:y", "x;y", "c"]
    first = {t.key: name for name, t in assign_names(spec(k) for k in keys).items()}
    again = {t.key: name for name, t in assign_names(spec(k) for k in reversed(keys)).items()}
    assert first == again
    assert len(set(first.values())) == len(keys)
    # a key that is its name keeps it; the others get a hash of their own key
    assert (first["a.b"], first["a_b"], first["c"]) == ("a.b", "a_b", "c")
    assert first["a/b"].startswith("a.b-")
    assert first["a:b"].startswith("a_b-")
    # no key is the name: every one is hashed
    assert first["x:y"].startswith("x_y-")
    assert first["x;y"].startswith("x_y-")
    # the suffix depends on the id alone: the same tool keeps its name as others come
    alone = assign_names([spec("a/b"), spec("a.b")])
    assert {t.key: n for n, t in alone.items()}["a/b"] == first["a/b"]
    # and the names are valid MCP names
    for name in first.values():
        assert len(name) <= 128
        assert tool_name(name) == name


def test_the_same_peer_name_on_two_peers_stays_apart() -> None:
    a = peer_tool_name("twin", "aaaaaaaaaaaaaaaa", "demo.echo")
    b = peer_tool_name("twin", "bbbbbbbbbbbbbbbb", "demo.echo")
    assert a != b
    assert a == "peer.twin-aaaaaaaa.demo.echo"
    assert peer_tool_name("", "cccccccccccccccc", "x/y") == "peer.cccccccc.x.y"


def capability(input_schema: Any = None, output_schema: Any = None) -> pb.Capability:
    cap = pb.Capability(id="remote.cap", name="cap")
    if input_schema is not None:
        cap.input_schema.update(input_schema)
    if output_schema is not None:
        cap.output_schema.update(output_schema)
    return cap


async def _run(args: Any, ctx: CallContext) -> Any:
    return args


@pytest.mark.parametrize(
    ("input_schema", "output_schema"),
    [
        ({"type": "nonsense"}, None),
        ({"type": "object", "properties": {"a": {"minLength": -1}}}, None),
        ({"type": "object", "required": "a"}, None),
        ({"type": "object"}, {"type": 5}),
    ],
)
def test_peer_schemas_that_are_not_json_schema_are_refused(
    input_schema: Any, output_schema: Any
) -> None:
    with pytest.raises(InvalidToolSchema):
        remote_spec("remote.cap", capability(input_schema, output_schema), _run)


@pytest.mark.parametrize(
    ("schema", "sample"),
    [
        ({}, None),
        ({"type": "string"}, "x"),
        ({"type": ["object", "null"], "properties": {"a": {"type": "integer"}}}, None),
        ({"properties": {"a": {"type": "integer"}}}, None),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 1),
        (
            {
                "type": "array",
                "items": {"$ref": "#/$defs/item"},
                "$defs": {"item": {"type": "string"}},
            },
            ["x"],
        ),
    ],
)
def test_input_schemas_are_always_objects(schema: dict[str, Any], sample: Any) -> None:
    arguments, wrapped = _input_schema(schema)
    assert arguments["type"] == "object"
    Draft202012Validator.check_schema(arguments)
    assert wrapped == (sample is not None)
    if wrapped:
        # the capability's own input is the one argument, and refs still resolve
        validator = Draft202012Validator(arguments)
        assert validator.is_valid({WRAPPED: sample})
        assert not validator.is_valid({WRAPPED: {"no": "thing"}})
        assert not validator.is_valid({})


async def test_a_wrapped_input_reaches_the_capability_unwrapped() -> None:
    tool = remote_spec("remote.cap", capability({"type": "string"}), _run)
    assert tool.input_schema["required"] == [WRAPPED]
    assert await tool.run({WRAPPED: "text"}, CallContext(door="mcp")) == "text"


async def test_peer_tools_with_bad_schemas_are_dropped_and_counted(
    make_node: Callable[..., Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = make_node("drops", http_port=0, demo=False)
    async with node:
        tools = node.parts.http.tools
        assert isinstance(tools, LocalTools)
        good = capability({"type": "object"})
        bad = pb.Capability(id="bad.cap", name="bad")
        bad.input_schema.update({"type": "nonsense"})
        peer = pb.Peer(node_id="p" * 32, name="other", state=pb.PeerState.PEER_STATE_CONNECTED)
        monkeypatch.setattr(tools.service.info, "peer_capabilities", lambda node_id: [good, bad])
        built = assign_names(await tools._peer_tools(peer))
        assert "peer.other-pppppppp.remote.cap" in built
        assert not any("bad.cap" in name for name in built)
        assert tools.dropped == 1


async def test_a_stopped_bridge_leaves_no_peer_listeners(make_node: Callable[..., Node]) -> None:
    node = make_node("listeners", http_port=0)
    before = len(node.peer_table._listeners)
    registry_before = len(node.registry._listeners)
    async with node:
        assert len(node.peer_table._listeners) > before  # MCP tools and WS events follow it
    assert len(node.peer_table._listeners) == before
    assert len(node.registry._listeners) == registry_before


async def test_mcp_bodies_are_held_to_the_nodes_limit(make_node: Callable[..., Node]) -> None:
    """/mcp takes no larger a body than REST does (the SDK's own default is 4 MiB)."""
    node = make_node("small-mcp", http_port=0, max_message_bytes=2048)
    async with node, httpx.AsyncClient(timeout=10) as http:
        big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "x" * 4096}
        r = await http.post(
            url(node),
            json=big,
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert r.status_code == 413
