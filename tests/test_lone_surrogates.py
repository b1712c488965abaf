"""A lone surrogate (``"\\ud800"``: RFC 8259's grammar takes the escape, no UTF-8 text
holds the character) is refused where every door reads JSON (``codec.loads``), as the
caller's error. Before, it passed the parser and broke whatever wrote it out later:
HTTP 500 on REST, the ARAL API, MCP and A2A (the error naming it, a policy's CEL
value), a WebSocket dropped without an error frame or left with a dead invoker, and
``aralnode audit tail`` failing on the record it left."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from aralnode import Node
from aralnode.cli_audit import _shown
from aralnode.core import codec

LONE = ['"\\ud800"', '"\\udfff"', '"a\\ud83d"', '"\\ude00b"', '"\\ud83d\\ud83d"']
PAIRED = ['"\\ud83d\\ude00"', '"\\uD83D\\uDE00"', '"\\\\ud800"']  # an emoji; a backslash


@pytest.mark.parametrize("text", LONE)
def test_a_lone_surrogate_anywhere_is_not_json_the_node_takes(text: str) -> None:
    for place in (text, f"[1, {text}]", f'{{"k": {text}}}', f"{{{text}: 1}}"):
        with pytest.raises(ValueError, match="lone surrogate"):
            codec.loads(place)
        with pytest.raises(ValueError, match="lone surrogate"):
            codec.loads(place.encode())


@pytest.mark.parametrize("text", PAIRED)
def test_a_surrogate_pair_and_an_escaped_backslash_are_text(text: str) -> None:
    value = codec.loads(f'{{"k": {text}}}'.encode())
    assert value == json.loads(f'{{"k": {text}}}')
    value["k"].encode("utf-8")  # what was taken can be written out


@pytest.mark.parametrize(
    "body",
    [
        b'{"k": "\xed\xa0\x80"}',  # a surrogate's own bytes: no UTF-8 has them
        '{"k": "\ud800"}'.encode("utf-16", "surrogatepass"),  # json.loads guessed UTF-16
        '{"k": "ok"}'.encode("utf-16-le"),  # UTF-16 at all: RFC 8259 says UTF-8
        b'{"k": "\xff"}',
    ],
)
def test_bytes_are_read_as_utf8_strictly(body: bytes) -> None:
    """From review: bytes went to json.loads, which guesses UTF-16 and -32 and
    decodes with surrogatepass, so a surrogate's raw bytes passed the check."""
    with pytest.raises(ValueError):  # (not UTF-8, or NULs where JSON has none)
        codec.loads(body)


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert codec.loads(b'\xef\xbb\xbf{"k": "\xc3\xa9"}') == {"k": "\u00e9"}


def test_text_already_decoded_with_a_surrogate_in_it_is_refused_too() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        codec.loads('{"k": "\ud800"}')


def test_a_member_twice_is_named_even_when_its_name_is_a_lone_surrogate() -> None:
    with pytest.raises(codec.InvalidParameters) as info:
        codec.loads(b'{"\\ud800": 1, "\\ud800": 2}')
    assert info.value.reason == "DUPLICATE_PARAMETER"
    str(info.value).encode("utf-8")  # its message can be sent
    json.dumps(info.value.details, ensure_ascii=False).encode("utf-8")


def test_audit_tail_shows_a_surrogate_an_older_record_holds_escaped() -> None:
    assert _shown("cap\ud800x") == "cap\\ud800x"
    _shown("cap\ud800x").encode("utf-8")


def _requests(agent: str) -> list[tuple[str, bytes, dict[str, str]]]:
    json_type = {"content-type": "application/json"}
    mcp = {**json_type, "accept": "application/json, text/event-stream"}
    a2a = {**json_type, "A2A-Version": "1.0"}
    call = b'{"call":{"capability":"demo.echo","parameters":{"text":"\\ud800"}}}'
    return [
        ("/v1/invoke", call, json_type),
        ("/v1/invoke", b'{"\\ud800":1,"\\ud800":2}', json_type),
        (
            "/v1/invoke",
            b'{"call":{"capability":"demo.echo","parameters":{"text":"\xed\xa0\x80"}}}',
            json_type,
        ),
        (f"/api/v1/agents/{agent}/invoke", b'{"capability":"\\ud800x"}', json_type),
        (
            f"/api/v1/agents/{agent}/invoke",
            b'{"capability":"demo.echo","parameters":{"text":"\\ud800"}}',
            json_type,
        ),
        ("/mcp", b'{"\\ud800":1,"\\ud800":2}', mcp),
        (
            "/mcp",
            b'{"jsonrpc":"2.0","id":"\\ud800","method":"tools/list","params":{}}',
            mcp,
        ),
        ("/a2a", b'{"jsonrpc":"2.0","id":"\\ud800","method":"GetTask","params":{"id":"x"}}', a2a),
        ("/a2a/rest/message:send", b'{"\\ud800":1,"\\ud800":2}', a2a),
    ]


async def test_every_json_door_refuses_a_lone_surrogate_as_the_callers_error(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("surrogates", http_port=0)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            for path, body, headers in _requests(node.config.name):
                r = await http.post(path, content=body, headers=headers)
                assert 400 <= r.status_code < 500 or _jsonrpc_error(r), (path, body, r.text)
                answer = json.loads(r.text)  # JSON, in the door's own error shape
                assert "error" in answer, (path, answer)
            assert (await http.get("/v1/status")).status_code == 200  # still serving
        async with connect(f"ws://127.0.0.1:{node.http_port}/ws") as ws:
            await ws.send('{"type":"ping","id":"\\ud800"}')
            reply = json.loads(await ws.recv())
            assert reply["type"] == "error", reply
            await ws.send('{"type":"invoke","id":1,"capability":"\\ud800"}')
            assert json.loads(await ws.recv())["type"] == "error"
            # The socket still answers: an error frame each, not a dead invoker.
            await ws.send('{"type":"invoke","id":2,"capability":"demo.echo",'
                          '"parameters":{"text":"hi"}}')  # fmt: skip
            answer = json.loads(await ws.recv())
            assert answer["type"] == "result", answer
            assert answer["id"] == 2


def _jsonrpc_error(r: httpx.Response) -> Any:
    """A JSON-RPC door may answer 200 with an error object."""
    return r.status_code == 200 and "error" in json.loads(r.text)
