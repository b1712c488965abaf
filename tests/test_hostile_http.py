"""Hostile clients on the HTTP doors (REST, MCP, WebSocket): what any of them can
make the node hold (slots, header buffers, sessions, subscribers) stays bounded, and
what it may see (listings, other callers' decisions) is what it is entitled to.

Resource tests run the attack against a node process (``tests.hostile``) and then
check its RSS and fds from outside and that an ordinary client is still served."""

from __future__ import annotations

import pytest

from aralnode.bridge._http import AllowedAuthorities, parse_authority, parse_origin

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
