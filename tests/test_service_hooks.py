"""The service layer's hooks, plugged in once, hold on every door: an authenticator
that reads a header, a response check, an audit sink."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect

from aralnode import (
    Action,
    AuditRecord,
    Authenticated,
    CallContext,
    Credentials,
    Node,
    NodeClient,
    PermissionDenied,
)
from aralnode import _proto as pb
from aralnode._assembly import import_spec
from aralnode.transport.grpc_client import unwrap
from tests.test_parity import LIBRARY


class HeaderToken:
    """Grants ``secret:read`` to whoever shows ``x-token: letmein`` (a stand-in for
    a bearer token)."""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        if ctx.metadata.get("x-token") == "letmein":
            return Authenticated("token-user", frozenset({"secret:read"}))
        return Authenticated()


class Redact:
    def check(self, ctx: CallContext, action: Action, result: Any) -> Any:
        if isinstance(result, dict) and "pin" in result:
            return {**result, "pin": "****"}
        return result


class Records:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def write(self, record: AuditRecord) -> None:
        self.records.append(record)


async def test_hooks_plugged_in_once_hold_on_every_door(make_node: Callable[..., Node]) -> None:
    audit = Records()
    node = make_node("hooked", http_port=0, demo=False)
    node = Node(
        node.config,
        authenticator=HeaderToken(),  # asked first; the node's own rule decides the rest
        checks=[Redact()],
        audit=[audit],
    )

    @node.capability(id="vault.read", scopes=("secret:read",))
    async def read(ctx: CallContext) -> dict[str, object]:
        return {"who": ctx.caller, "pin": 1234}

    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        body = {"call": {"capability": "vault.read"}}
        # No token: refused on every door.
        assert (await http.post("/v1/invoke", json=body)).status_code == 403
        async with NodeClient(node.address) as client:
            with pytest.raises(PermissionDenied) as refused:
                await client.call("vault.read")
            assert refused.value.reason == "MISSING_SCOPE"
        # With it: REST headers, gRPC metadata, a WebSocket's handshake headers.
        rest = await http.post("/v1/invoke", json=body, headers={"x-token": "letmein"})
        assert rest.json()["result"]["result"] == {"who": "token-user", "pin": "****"}
        async with grpc.aio.insecure_channel(node.address) as channel:
            invoke = channel.unary_unary(
                "/aral.v1.AgentNode/Invoke",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            raw = await invoke(
                pb.InvokeRequest(call=pb.Call(capability="vault.read")),
                metadata=(("x-token", "letmein"),),
                timeout=10,
            )
            result = pb.InvokeResponse.FromString(raw).result
            assert unwrap(result) == {"who": "token-user", "pin": "****"}
        ws_url = f"ws://127.0.0.1:{node.http_port}/ws"
        async with connect(ws_url, additional_headers={"x-token": "letmein"}) as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": "vault.read"}))
            reply = json.loads(await ws.recv())
        assert reply["result"] == {"who": "token-user", "pin": "****"}
    doors = [(r.door, r.caller, r.outcome) for r in audit.records if r.action == "vault.read"]
    assert ("rest", "", "forbidden") in doors
    assert ("grpc", "", "forbidden") in doors
    assert ("rest", "token-user", "ok") in doors
    assert ("grpc", "token-user", "ok") in doors
    assert ("ws", "token-user", "ok") in doors


class HideAuthors:
    """Redacts the author of any book, whatever the door or the form of the call."""

    def check(self, ctx: CallContext, action: Action, result: Any) -> Any:
        if isinstance(result, dict) and "author" in result:
            return {**result, "author": "(hidden)"}
        return result


async def test_a_response_check_sees_json_on_every_door(make_node: Callable[..., Node]) -> None:
    """A protobuf method's result reaches the checks as its JSON view, and what they
    change goes back into the message: the same redaction on the method's own rpc,
    its REST route and /v1/invoke."""
    plain = make_node("redacted", http_port=0, demo=False)
    node = Node(plain.config, checks=[HideAuthors()])
    library = import_spec(str(LIBRARY))
    node.add_service(library.Library(), library.lib)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        route = (await http.get("/v1/shelves/sci/books/1")).json()
        body = {"call": {"capability": "library.v1.Library/GetBook",
                         "parameters": {"shelf": "sci", "bookId": "1"}}}  # fmt: skip
        invoked = (await http.post("/v1/invoke", json=body)).json()["result"]["result"]
        async with grpc.aio.insecure_channel(node.address) as channel:
            get_book = channel.unary_unary(
                "/library.v1.Library/GetBook",
                request_serializer=library.lib.GetBookRequest.SerializeToString,
                response_deserializer=library.lib.Book.FromString,
            )
            book = await get_book(library.lib.GetBookRequest(shelf="sci", book_id=1), timeout=10)
    assert route["author"] == invoked["author"] == book.author == "(hidden)"
    assert route["title"] == book.title == "Cosmos"
