"""The MCP door through the official ``mcp`` client: streamable HTTP at /mcp and stdio
(``aralnode mcp --node``), tools generated from capabilities and proto methods."""

from __future__ import annotations

import json
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
from aralnode.bridge.mcp import tool_name
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
            assert "peer.beta.demo.echo" in names
            assert "demo.echo" not in names  # alpha has no demo capabilities itself
            result = await client.call_tool("peer.beta.demo.echo", {"text": "via alpha"})
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
