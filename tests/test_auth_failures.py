"""Failed authentication costs the caller (from an attack): a refused credential
took no token from any bucket, so a client held to 3 calls a minute could make the
node check any number of forged tokens, and with introspection configured, make it
ask the authorization server once for every made-up opaque token.

Where addresses are rate-limited, a refused credential is charged to its client's
address; one whose failures used up the rate is refused before its next credential
is checked, on every door (``RATE_LIMIT_AUTH_FAILURES``), and the HTTP doors ask no
authorization server for it.

Every door: gRPC, REST, MCP, WebSocket, the A2A standard's three bindings (JSON-RPC
on ``/a2a``, HTTP+JSON on ``/a2a/rest``, ``lf.a2a.v1.A2AService`` on gRPC) and the
ARAL REST API (``/api/v1/agents/{id}/…``), each refusing in its own form, with its
own retry hint (``Retry-After``; gRPC's ``google.rpc.RetryInfo``). The gRPC port
asks no authorization server for a spent address either (its credentials are
prepared in the call, where its peer is known), and a signed ARAL message's
signature is charged as any credential is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2 as a2a
from a2a.types import a2a_pb2_grpc

from aralnode import Node
from aralnode.transport.status import from_rpc_error
from tests.interop.aral_client import AralClient, detached, request_message
from tests.test_jwt import Refused, bearer, call, guarded, reason_of, serve
from tests.test_oauth import RESOURCE, Issuer
from tests.test_sessions import keys_for


async def test_failed_credentials_use_up_the_address_rate_on_every_door(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(
        "failures", demo=False, http_port=0, audit=True, rate_limit_per_address="3/min"
    )
    runs = guarded(node)
    async with node:
        (good,) = keys_for(node, "alice")
        forged = {"x-api-key": good[:-4] + "AAAA"}
        for door in ("rest", "grpc", "rest"):
            with pytest.raises(Refused) as failed:
                await call(door, node, "vault.whoami", forged)
            assert failed.value.reason == "API_KEY_INVALID"
        refused = node.pipeline.counters["auth.refused"]
        for door in ("grpc", "rest", "mcp", "ws"):
            with pytest.raises(Refused) as limited:
                await call(door, node, "vault.whoami", forged)
            assert limited.value.reason == "RATE_LIMIT_AUTH_FAILURES", door
        # Refused before the key was looked at: no more failures were counted.
        assert node.pipeline.counters["auth.refused"] == refused
        # The price of one client, one key: a good key from that address waits too.
        with pytest.raises(Refused) as waits:
            await call("rest", node, "vault.whoami", {"x-api-key": good})
        assert waits.value.reason == "RATE_LIMIT_AUTH_FAILURES"
        assert waits.value.response.headers["retry-after"]
    assert runs == []


async def test_made_up_opaque_tokens_stop_reaching_the_authorization_server(
    make_node: Callable[..., Node],
) -> None:
    issuer = Issuer()
    async with serve(issuer.app()) as base:
        node = make_node(
            "failures-introspect",
            demo=False,
            http_port=0,
            rate_limit_per_address="3/min",
            oauth_resource=RESOURCE,
            oauth_introspection_url=f"{base}/introspect",
            oauth_client_id="node-1",
            oauth_client_secret="s3cret",
        )
        guarded(node)
        async with node:
            reasons = []
            for i in range(12):
                with pytest.raises(Refused) as refused:
                    await call("rest", node, "vault.whoami", bearer(f"made-up-{i}"))
                reasons.append(refused.value.reason)
    assert reasons == ["TOKEN_INACTIVE"] * 3 + ["RATE_LIMIT_AUTH_FAILURES"] * 9
    assert issuer.asked == ["made-up-0", "made-up-1", "made-up-2"]


# -- the A2A standard's three bindings and the ARAL REST API ---------------------------

V1 = {"A2A-Version": "1.0"}
Headers = dict[str, str]
WHOAMI = {"skill": "vault.whoami", "parameters": {}}
# The door's status for a refused credential, then for a client past its failures.
STATUSES: dict[str, tuple[Any, Any]] = {
    "a2a-jsonrpc": (401, 429),
    "a2a-rest": (401, 429),
    "a2a-grpc": ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED"),
    "aral-invoke": (401, 429),
    "aral-capability": (401, 429),
    "aral-status": (401, 429),
    "aral-capabilities": (401, 429),
}


def _message(message_id: str) -> dict[str, Any]:
    """An A2A 1.0 message asking for ``vault.whoami``."""
    return {"role": "ROLE_USER", "messageId": message_id, "parts": [{"data": WHOAMI}]}


async def _http(node: Node, verb: str, path: str, body: Any, headers: Headers) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}", timeout=10) as http:
        return await http.request(verb, path, json=body, headers=headers)


def _jsonrpc_refusal(r: httpx.Response, request_id: str) -> str:
    """The node's reason in a JSON-RPC error (its ``data``: the node's error object)."""
    answer = r.json()
    # (refused before its body is read: its id may be unknown, then null)
    assert answer["jsonrpc"] == "2.0", answer
    assert answer["id"] in (None, request_id), answer
    error = answer["error"]
    assert isinstance(error["code"], int), error
    data = error["data"]
    assert data["trace_id"] == r.headers["x-trace-id"], error
    return str(data["reason"])


def _aip193_refusal(r: httpx.Response) -> str:
    """The reason in an AIP-193 error's ``ErrorInfo`` (A2A 1.0 §11.6)."""
    error = r.json()["error"]
    assert error["code"] == r.status_code, error
    assert error["status"] == {401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED"}[r.status_code]
    (info,) = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["metadata"]["trace_id"] == r.headers["x-trace-id"], info
    return str(info["reason"])


async def call_a2a_jsonrpc(node: Node, headers: Headers) -> Any:
    rpc = {"jsonrpc": "2.0", "id": "f1", "method": "SendMessage",
           "params": {"message": _message("f1")}}  # fmt: skip
    r = await _http(node, "POST", "/a2a", rpc, {**V1, **headers})
    if r.status_code != 200:
        raise Refused("a2a-jsonrpc", r.status_code, _jsonrpc_refusal(r, "f1"), r)
    return r.json()["result"]


async def call_a2a_rest(node: Node, headers: Headers) -> Any:
    r = await _http(node, "POST", "/a2a/rest/message:send", {"message": _message("f2")},
                    {**V1, **headers})  # fmt: skip
    if r.status_code != 200:
        raise Refused("a2a-rest", r.status_code, _aip193_refusal(r), r)
    return r.json()


async def call_a2a_grpc(node: Node, headers: Headers) -> Any:
    """``SendMessage`` through the a2a-sdk's own gRPC stub. A refusal's ``response``
    is the node's error read back from the status (its RetryInfo: ``retry_after``)."""
    message = a2a.Message(message_id="f3", role=a2a.Role.ROLE_USER)
    message.parts.add().data.struct_value.update(WHOAMI)
    async with grpc.aio.insecure_channel(node.address) as channel:
        stub = a2a_pb2_grpc.A2AServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            return await stub.SendMessage(
                a2a.SendMessageRequest(message=message),
                metadata=(("a2a-version", "1.0"), *headers.items()),
                timeout=10,
            )
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err)
            raise Refused("a2a-grpc", err.code().name, error.reason, error) from None


def _aral(door: str, verb: str, tail: str) -> Callable[[Node, Headers], Any]:
    """``door``: a caller of the ARAL REST API's ``verb /api/v1/agents/{node}/tail``."""
    body = {"capability": "vault.whoami", "parameters": {}} if tail == "invoke" else {}

    async def call_aral(node: Node, headers: Headers) -> Any:
        path = f"/api/v1/agents/{node.node_id}/{tail}"
        r = await _http(node, verb, path, body if verb == "POST" else None, headers)
        if r.status_code != 200:
            assert r.headers["x-api-version"] == "1.0"
            error = r.json()["error"]
            assert error["trace_id"] == r.headers["x-trace-id"], error
            raise Refused(door, r.status_code, reason_of(error), r)
        return r.json()

    return call_aral


CALLS = {
    "a2a-jsonrpc": call_a2a_jsonrpc,
    "a2a-rest": call_a2a_rest,
    "a2a-grpc": call_a2a_grpc,
    "aral-invoke": _aral("aral-invoke", "POST", "invoke"),
    "aral-capability": _aral("aral-capability", "POST", "capabilities/vault.whoami"),
    "aral-status": _aral("aral-status", "GET", "status"),
    "aral-capabilities": _aral("aral-capabilities", "GET", "capabilities"),
}
NEW_DOORS = tuple(CALLS)
CALLS["grpc"] = lambda node, headers: call("grpc", node, "vault.whoami", headers)


def retry_hint(refused: Refused) -> float:
    """A refusal's retry hint in its door's form: HTTP's ``Retry-After`` (whole
    seconds), gRPC's ``google.rpc.RetryInfo`` in the status details."""
    if isinstance(refused.response, httpx.Response):
        return float(refused.response.headers["retry-after"])
    hint = refused.response.retry_after
    assert hint is not None, refused
    return float(hint)


async def refused_on(door: str, node: Node, headers: Headers) -> Refused:
    """``door``'s refusal of ``vault.whoami`` with ``headers`` (a call it served fails)."""
    with pytest.raises(Refused) as refused:
        await CALLS[door](node, headers)
    assert refused.value.door == door
    return refused.value


@pytest.mark.parametrize("door", NEW_DOORS)
async def test_failed_credentials_use_up_the_address_rate_on_the_a2a_and_aral_doors(
    make_node: Callable[..., Node], door: str
) -> None:
    """The scenario above on one door alone: three forged keys are refused as
    API_KEY_INVALID in its form, then it refuses the address (its retry hint given)
    without checking the next key, a good one included; the handler never runs."""
    node = make_node(
        "failures-" + door, demo=False, http_port=0, audit=True, rate_limit_per_address="3/min"
    )
    runs = guarded(node)
    unauthenticated, exhausted = STATUSES[door]
    async with node:
        (good,) = keys_for(node, "alice")
        forged = {"x-api-key": good[:-4] + "AAAA"}
        for _ in range(3):
            failed = await refused_on(door, node, forged)
            assert (failed.status, failed.reason) == (unauthenticated, "API_KEY_INVALID")
        refused = node.pipeline.counters["auth.refused"]
        assert refused == 3  # each forged key checked once
        for key in (forged, forged, {"x-api-key": good}):
            limited = await refused_on(door, node, key)
            assert (limited.status, limited.reason) == (exhausted, "RATE_LIMIT_AUTH_FAILURES")
            assert retry_hint(limited) > 0
        assert node.pipeline.counters["auth.refused"] == refused
    assert runs == []


async def test_one_address_one_allowance_across_the_a2a_and_aral_doors(
    make_node: Callable[..., Node],
) -> None:
    """Failures on A2A's gRPC and JSON-RPC bindings and the ARAL REST API are charged
    to one client address: then every door refuses it (the older doors too)."""
    node = make_node("failures-across", demo=False, http_port=0, rate_limit_per_address="3/min")
    runs = guarded(node)
    async with node:
        (good,) = keys_for(node, "alice")
        forged = {"x-api-key": good[:-4] + "AAAA"}
        for door in ("a2a-grpc", "aral-invoke", "a2a-jsonrpc"):
            failed = await refused_on(door, node, forged)
            assert failed.reason == "API_KEY_INVALID", door
        refused = node.pipeline.counters["auth.refused"]
        for door in NEW_DOORS:
            assert (await refused_on(door, node, forged)).reason == "RATE_LIMIT_AUTH_FAILURES"
        for door in ("grpc", "rest"):
            with pytest.raises(Refused) as limited:
                await call(door, node, "vault.whoami", forged)
            assert limited.value.reason == "RATE_LIMIT_AUTH_FAILURES", door
        assert node.pipeline.counters["auth.refused"] == refused
    assert runs == []


@pytest.mark.parametrize(
    "door",
    [
        "a2a-jsonrpc",
        "a2a-rest",
        "aral-invoke",
        "a2a-grpc",
        "grpc",
    ],
)
async def test_made_up_opaque_tokens_stop_reaching_the_authorization_server_on_a2a(
    make_node: Callable[..., Node], door: str
) -> None:
    """The introspection variant on the A2A bindings, the ARAL REST API and gRPC:
    the authorization server is asked about the first three made-up tokens only (on
    gRPC, every one was asked: its credentials were prepared before the call's peer
    was known)."""
    issuer = Issuer()
    async with serve(issuer.app()) as base:
        node = make_node(
            "failures-introspect-" + door,
            demo=False,
            http_port=0,
            rate_limit_per_address="3/min",
            oauth_resource=RESOURCE,
            oauth_introspection_url=f"{base}/introspect",
            oauth_client_id="node-1",
            oauth_client_secret="s3cret",
        )
        guarded(node)
        async with node:
            reasons = [
                (await refused_on(door, node, bearer(f"made-up-{i}"))).reason for i in range(8)
            ]
    assert reasons == ["TOKEN_INACTIVE"] * 3 + ["RATE_LIMIT_AUTH_FAILURES"] * 5
    assert issuer.asked == ["made-up-0", "made-up-1", "made-up-2"]


async def test_forged_message_signatures_use_up_the_address_rate_on_the_aral_api(
    make_node: Callable[..., Node],
) -> None:
    """A signed ARAL message's signature is its credential: a forged one (a real
    ES256 signature over other bytes) is a failed authentication like a forged key
    (it was verified outside the authenticate stage: never charged)."""
    node = make_node("failures-message", demo=False, http_port=0, rate_limit_per_address="3/min")
    runs = guarded(node)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        client = AralClient(http)
        reasons = []
        for _ in range(5):
            body = json.dumps(
                request_message(client.agent_id, node.node_id, "vault.whoami", {})
            ).encode()
            signature = detached(client.key, body.replace(b"vault", b"VAULT"))
            reply = await client.post(node.node_id, body, signature)
            reasons.append((reply.status, reply.message["error"]["reason"]))
    assert reasons == [(401, "SIGNATURE_INVALID")] * 3 + [(429, "RATE_LIMIT_AUTH_FAILURES")] * 2
    assert runs == []


async def test_a_method_the_node_does_not_serve_asks_the_authorization_server_nothing(
    make_node: Callable[..., Node],
) -> None:
    """From the review of the gRPC fix: a call to a method that does not exist has
    no handler to prepare its credentials in, and was prepared at once -- with no
    stage after it to charge the failure, made-up tokens reached the issuer with no
    limit. Nothing is asked for it, spent address or not."""
    issuer = Issuer()
    async with serve(issuer.app()) as base:
        node = make_node(
            "failures-unserved",
            demo=False,
            http_port=0,
            rate_limit_per_address="3/min",
            oauth_resource=RESOURCE,
            oauth_introspection_url=f"{base}/introspect",
            oauth_client_id="node-1",
            oauth_client_secret="s3cret",
        )
        guarded(node)
        async with node, grpc.aio.insecure_channel(node.address) as channel:
            nope = channel.unary_unary("/x.Y/Nope")
            for i in range(4):
                with pytest.raises(grpc.aio.AioRpcError) as unserved:
                    await nope(b"", metadata=bearer(f"unserved-{i}").items())
                assert unserved.value.code() is grpc.StatusCode.UNIMPLEMENTED
            for i in range(4):  # the address spent: refused, and nothing asked
                await refused_on("grpc", node, bearer(f"made-up-{i}"))
            for i in range(4):
                with pytest.raises(grpc.aio.AioRpcError):
                    await nope(b"", metadata=bearer(f"after-{i}").items())
    assert issuer.asked == ["made-up-0", "made-up-1", "made-up-2"]
