"""Hostile clients on the HTTP doors (REST, MCP, WebSocket): what any of them can
make the node hold (slots, header buffers, sessions, subscribers) stays bounded, and
what it may see (listings, other callers' decisions) is what it is entitled to.

Resource tests run the attack against a node process (``tests.hostile``) and then
check its RSS and fds from outside and that an ordinary client is still served."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aralnode import Node
from aralnode.bridge._http import AllowedAuthorities, parse_authority, parse_origin
from tests.hostile import MIB, NodeProcess

# -- Host and Origin are parsed, not prefix-matched (item 13) -----------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("localhost", ("localhost", None)),
        ("LocalHost:8080", ("localhost", 8080)),
        ("[::1]:80", ("[::1]", 80)),
        ("127.0.0.1:80@evil.example", None),
        ("user@localhost", None),
        ("localhost:8080.evil.example", None),
        ("localhost:", None),
        ("localhost:99999", None),
        ("localhost:\u0661", None),  # a digit, but not an ASCII one
        ("::1", None),
        ("[::1", None),
        ("[evil.example]", None),
        ("localhost/x", None),
        ("", None),
    ],
)
def test_an_authority_is_parsed_whole(text: str, parsed: tuple[str, int | None] | None) -> None:
    assert parse_authority(text) == parsed


def test_allowed_hosts_and_origins_match_exactly() -> None:
    allowed = AllowedAuthorities(
        ["localhost:*", "[::1]:*", "node.lan:8080"],
        ["http://localhost:*", "http://[::1]:*", "https://app.example/"],
    )
    admitted = ["localhost", "localhost:1", "node.lan:8080"]
    refused = ["node.lan:8081", "node.lan", "localhost:1@evil.example", "evil.example"]
    assert [allowed.host(h) for h in admitted + refused] == [True] * 3 + [False] * 4
    admitted = ["http://localhost:3000", "http://[::1]", "https://app.example"]
    refused = [
        "https://localhost:3000",  # another scheme
        "https://app.example:8443",
        "https://app.example.evil.example",
        "https://app.example/x",
        "null",
    ]
    assert [allowed.origin(o) for o in admitted + refused] == [True] * 3 + [False] * 5
    assert parse_origin("null") is None


# -- the header section is bounded in size, count and time (item 3) ----------------------

HEAD = b"GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n"
ATTACK_BYTES = 24 * MIB  # per connection, unless the node cuts it off first


def _port(node: NodeProcess) -> int:
    return int(node.info["http_port"])


async def _flood(port: int, first: bytes, filler: bytes, total: int) -> bytes:
    """Send ``first``, then ``filler`` over and over (``total`` bytes at most, as long
    as the node reads them); what the node answered (b"" if it only hung up)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(first)
        chunk = filler * max(1, 65536 // len(filler))
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        return b""  # the node took everything and has not answered
    except ConnectionError:
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


SHAPES = {
    # many header lines, one long header value, one long request target
    "lines": (HEAD, b"X-Filler: " + b"a" * 100 + b"\r\n"),
    "value": (HEAD + b"X-Filler: ", b"a" * 1000),
    "target": (b"GET /v1/status?", b"a" * 1000),
}


@pytest.mark.slow
@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_endless_header_sections_are_cut_off(tmp_path: Path, parser: str) -> None:
    """A header section that never ends (lines, one value, the request target), from
    several connections at once: the node stops reading each at its limit, so its
    memory does not follow the attacker's; other clients are served."""
    config = {"http_parser": parser} if parser != "auto" else {}
    async with NodeProcess.running(tmp_path / "n", **config) as node:
        await node.probe()
        before = node.rss()
        for first, filler in SHAPES.values():
            answers = await asyncio.gather(
                *(_flood(_port(node), first, filler, ATTACK_BYTES) for _ in range(3))
            )
            grown = node.rss() - before
            print(f"{parser}: after {first[:20]!r}: RSS +{grown / MIB:.1f} MiB, {node.fds()} fds")
            assert grown < 32 * MIB, f"RSS grew {grown / MIB:.0f} MiB"
            for answer in answers:
                assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:100]
        await node.probe()


async def _one_head(port: int, head: bytes) -> tuple[bytes, dict[str, Any]]:
    """Send one whole request head; the status line and JSON body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    return status, json.loads(rest.partition(b"\r\n\r\n")[2] or b"{}")


@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_heads_over_the_limits_get_431(make_node: Callable[..., Node], parser: str) -> None:
    node = make_node(
        "heads", http_port=0, http_max_headers=20, http_max_header_bytes=8192, http_parser=parser
    )
    async with node:
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(21))
        status, body = await _one_head(node.http_port, HEAD + many)
        assert status.startswith(b"HTTP/1.1 431"), status
        assert body["error"]["reason"] == "TOO_MANY_HEADERS"
        big = b"X-Big: " + b"a" * 9000 + b"\r\n"
        status, body = await _one_head(node.http_port, HEAD + big)
        assert status.startswith(b"HTTP/1.1 431"), status
        assert body["error"]["reason"] == "HEADERS_TOO_LARGE"
        fine = b"".join(b"X-H%d: v\r\n" % i for i in range(10)) + b"Connection: close\r\n"
        status, body = await _one_head(node.http_port, HEAD + fine)
        assert status.startswith(b"HTTP/1.1 200"), status


@pytest.mark.slow
@pytest.mark.parametrize("parser", ["auto", "h11"])
async def test_a_header_section_must_arrive_in_time(tmp_path: Path, parser: str) -> None:
    """Connections that send nothing, or part of a header section and then wait, are
    closed once ``http_header_timeout_seconds`` has passed (the fds come back)."""
    config = {"http_header_timeout_seconds": 1.0}
    if parser != "auto":
        config["http_parser"] = parser  # type: ignore[assignment]
    async with NodeProcess.running(tmp_path / "n", **config) as node:
        await node.probe()
        fds = node.fds()
        conns = [await asyncio.open_connection("127.0.0.1", _port(node)) for _ in range(60)]
        for i, (_, writer) in enumerate(conns):
            if i % 2:
                writer.write(HEAD + b"X-Slow: ")  # half a header line, then nothing
        async with asyncio.timeout(20):
            answers = [await reader.read() for reader, _ in conns]
        for _, writer in conns:
            writer.close()
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
        assert any(a.startswith(b"HTTP/1.1 408") for a in answers)
        await node.probe()
        print(f"{parser}: {fds} fds before, {node.fds()} after")
        assert node.fds() <= fds + 5
