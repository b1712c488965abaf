"""The ARAL REST surface (``/api/v1/agents/{agent_id}/…``, bridge/aral_api.py):
routes, version negotiation, errors in the seed's codes, calls forwarded to a peer,
and signed messages from strangers and from verified peers.

The independent client (``tests/interop``) covers a node run as a process; here the
node is in process, to reach its peers and its policy."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from aralnode import Node
from aralnode.core import jws
from aralnode.core.governance import Decision, Rule, RuleEvaluator
from tests.channel_helpers import FAST, linked
from tests.conftest import recorded
from tests.interop.aral_client import AralClient, detached, request_message

Pair = tuple[Node, Node, httpx.AsyncClient]


@pytest.fixture
async def pair(make_node: Callable[..., Node]) -> AsyncIterator[Pair]:
    """A node with the demo on HTTP, and a linked peer ("far") with the demo too."""
    policy = RuleEvaluator(
        [Rule("no-convert", None, Decision.BLOCK, capabilities=frozenset({"demo.convert"}))]
    )
    node = make_node("near", http_port=0, governance=policy, **FAST)
    far = make_node("far", **FAST)
    async with node, far:
        await linked(node, far)
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            yield node, far, http


def error_of(r: httpx.Response) -> tuple[int, str, str]:
    error = r.json()["error"]
    return r.status_code, error["code"], error["reason"]


async def test_this_node_by_id_or_name(pair: Pair) -> None:
    node, _, http = pair
    for agent in (node.node_id, "near"):
        r = await http.get(f"/api/v1/agents/{agent}/status")
        assert r.status_code == 200
        assert r.json()["agent_id"] == node.node_id
        assert r.json()["peer_count"] == 1
    r = await http.post(
        "/api/v1/agents/near/invoke",
        json={"capability": "demo.add", "parameters": {"a": 1, "b": 0}},
    )
    assert r.json()["result"] == 1
    assert r.json()["agent_id"] == node.node_id


async def test_a_peer_is_reached_through_this_node(pair: Pair) -> None:
    """By its id or its name: status and capabilities as this node knows them, and
    calls forwarded over the channel (run there, judged here as well)."""
    _, far, http = pair
    for agent in (far.node_id, "far"):
        status = (await http.get(f"/api/v1/agents/{agent}/status")).json()
        assert status["agent_id"] == far.node_id
        assert status["state"] == "connected"
        assert status["status"] == "healthy"
        assert "demo.echo" in status["capabilities"]
        caps = (await http.get(f"/api/v1/agents/{agent}/capabilities")).json()
        assert caps["agent_id"] == far.node_id
        assert "demo.whoami" in {c["id"] for c in caps["capabilities"]}
    r = await http.post("/api/v1/agents/far/capabilities/demo.whoami", json={})
    answer = r.json()
    assert r.status_code == 200
    assert answer["agent_id"] == far.node_id
    # Ran on the peer, for this node's anonymous caller, through its channel door.
    assert answer["result"]["door"] == "channel"
    # This node's policy applies to what it forwards.
    r = await http.post("/api/v1/agents/far/invoke", json={"capability": "demo.convert"})
    assert error_of(r) == (403, "governance_blocked", "GOVERNANCE_BLOCK")


async def test_errors_in_the_seeds_codes(pair: Pair) -> None:
    node, _, http = pair
    base = f"/api/v1/agents/{node.node_id}"
    r = await http.get("/api/v1/agents/nobody/status")
    assert error_of(r) == (404, "not_found", "AGENT_NOT_FOUND")
    r = await http.get(f"{base}/memory")
    assert error_of(r) == (404, "not_found", "ROUTE_NOT_FOUND")
    r = await http.delete(f"{base}/invoke")
    assert r.status_code == 405
    assert r.json()["error"]["details"]["allow"] == ["POST"]
    r = await http.post(f"{base}/invoke", content=b"{not json")
    assert error_of(r)[:2] == (400, "invalid_request")
    r = await http.post(f"{base}/invoke", json={"parameters": {}})
    assert error_of(r)[:2] == (400, "invalid_request")
    r = await http.post(f"{base}/invoke", json={"capability": "demo.echo", "parameters": [1]})
    assert error_of(r)[:2] == (400, "invalid_request")
    r = await http.post(f"{base}/invoke", json={"capability": "demo.gone"})
    assert error_of(r) == (404, "not_found", "CAPABILITY_NOT_FOUND")
    # A misspelt member is refused, not ignored (the call would run with no parameters).
    for path, body, unknown in (
        ("invoke", {"capability": "demo.echo", "params": {"text": "hi"}}, ["params"]),
        ("capabilities/demo.echo", {"parameters": {"text": "hi"}, "timeout": 5}, ["timeout"]),
    ):
        r = await http.post(f"{base}/{path}", json=body)
        assert error_of(r)[:2] == (400, "invalid_request"), r.text
        assert r.json()["error"]["details"]["unknown"] == unknown
    r = await http.post(f"{base}/capabilities/demo.convert", json={"parameters": {"value": 1}})
    assert error_of(r) == (403, "governance_blocked", "GOVERNANCE_BLOCK")
    big = {"capability": "demo.echo", "parameters": {"text": "x" * (5 << 20)}}
    r = await http.post(f"{base}/invoke", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_ids_and_versions(pair: Pair) -> None:
    _, _, http = pair
    r = await http.get(
        "/api/v1/agents/near/status",
        headers={"X-Trace-Id": "t-42", "X-Request-Id": "r-42", "X-API-Version": "1"},
    )
    assert r.status_code == 200
    assert (r.headers["x-trace-id"], r.headers["x-request-id"]) == ("t-42", "r-42")
    assert r.headers["x-api-version"] == "1.0"
    assert r.headers["x-supported-versions"] == "1.0"
    r = await http.get("/api/v1/agents/near/status", headers={"X-API-Version": "2.0"})
    assert error_of(r)[:2] == (400, "unsupported_version")
    assert r.json()["error"]["details"]["supported"] == ["1.0"]
    assert r.headers["x-supported-versions"] == "1.0"
    # The trace id goes into the call: the capability's context sees it.
    r = await http.post(
        "/api/v1/agents/near/invoke",
        json={"capability": "demo.echo", "parameters": {"text": "t"}},
        headers={"X-Trace-Id": "t-43"},
    )
    assert r.json()["trace_id"] == "t-43"


async def test_a_capability_id_with_a_slash(make_node: Callable[..., Node]) -> None:
    from aralnode._assembly import import_spec
    from tests.test_parity import LIBRARY

    node = make_node("lib", http_port=0)
    library = import_spec(str(LIBRARY))
    node.add_service(library.Library(), library.lib)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}/api/v1/agents/lib/capabilities"
        async with httpx.AsyncClient(timeout=10) as http:
            for path in ("library.v1.Library/GetBook", "library.v1.Library%2FGetBook"):
                r = await http.post(
                    f"{base}/{path}", json={"parameters": {"shelf": "sci", "bookId": "1"}}
                )
                assert r.status_code == 200, r.text
                assert r.json()["result"]["year"] == 1980


async def test_who_calls_is_settled_before_any_agent_is_named(
    make_node: Callable[..., Node],
) -> None:
    """With deny-by-default and no credential: refused before the agent id is looked
    up, so a stranger learns nothing of which agents exist."""
    node = make_node("closed", http_port=0, deny_by_default=True)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}/api/v1/agents"
        async with httpx.AsyncClient(timeout=10) as http:
            known = await http.get(f"{base}/closed/status")
            unknown = await http.get(f"{base}/nobody/status")
            denied = await http.post(f"{base}/closed/invoke", json={"capability": "demo.echo"})
    assert known.status_code == unknown.status_code == 403
    assert known.json()["error"]["reason"] == unknown.json()["error"]["reason"] == "MISSING_SCOPE"
    assert denied.status_code == 403


async def test_a_refused_caller_learns_no_route_and_methods_either(
    make_node: Callable[..., Node],
) -> None:
    """From review: a wrong method answered 405 with its ``Allow`` list before the
    caller was known. A caller the node refuses is refused alike on every route."""
    node = make_node("routes", http_port=0, allow_unsigned=False)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}/api/v1/agents/routes"
        async with httpx.AsyncClient(timeout=10) as http:
            answers = [
                await http.post(f"{base}/status"),  # GET-only route, wrong method
                await http.delete(f"{base}/status"),
                await http.get(f"{base}/no-such-route"),
                await http.get(f"{base}/status"),
            ]
    assert {(r.status_code, r.json()["error"]["reason"]) for r in answers} == {
        (401, "ANONYMOUS_REFUSED")
    }
    assert all("allow" not in r.headers for r in answers)


# -- signed messages ------------------------------------------------------------------


def message_body(
    sender: str, recipient: str, action: str, params: dict[str, Any], **head: Any
) -> bytes:
    return json.dumps(request_message(sender, recipient, action, params, **head)).encode()


async def test_a_message_from_a_stranger_runs_as_that_stranger(pair: Pair) -> None:
    node, _, http = pair
    client = AralClient(http)
    reply = await client.send(node.node_id, "demo.whoami", {})
    assert reply.status == 200
    assert reply.signer == node.node_id
    assert reply.message["body"]["result"] == {
        "door": "rest",
        "caller": client.agent_id,
        "signed": True,
    }
    blocked = await client.send(node.node_id, "demo.convert", {"value": 1})
    assert blocked.status == 403
    assert blocked.signer == node.node_id
    assert blocked.message["body"]["error"]["reason"] == "GOVERNANCE_BLOCK"


async def test_a_message_is_refused_unless_fresh_addressed_and_well_formed(pair: Pair) -> None:
    node, far, http = pair
    client = AralClient(http)
    me, to = client.agent_id, node.node_id
    seen, reasons = recorded(node), []

    async def post(body: bytes) -> tuple[int, str]:
        reply = await client.post(to, body, detached(client.key, body))
        error = reply.message.get("error") or reply.message["body"].get("error")
        reasons.append(error["reason"])
        return reply.status, error["reason"]

    stale = int(time.time() * 1000) - 3_600_000
    assert await post(message_body(me, to, "demo.echo", {}, timestamp=stale)) == (
        401,
        "STALE_TIMESTAMP",
    )
    wrong = await post(message_body(me, far.node_id, "demo.echo", {}))
    assert wrong == (400, "WRONG_RECIPIENT")
    old = await post(message_body(me, to, "demo.echo", {}, version="0.9"))
    assert old == (400, "UNSUPPORTED_VERSION")
    response = json.loads(message_body(me, to, "demo.echo", {}))
    response["body"]["type"] = "response"
    assert await post(json.dumps(response).encode()) == (400, "NOT_A_REQUEST")
    assert (await post(b"[1, 2]"))[0] == 400
    # A header that names a key it does not carry, or an algorithm not its own.
    body = message_body(me, to, "demo.echo", {})
    token = detached(client.key, body)
    protected = json.loads(jws.unb64url(token.split(".")[0]))
    for change in ({"kid": "someone-else"}, {"alg": "HS256"}, {"jwk": None}):
        forged = jws.b64url(json.dumps({**protected, **change}).encode())
        reply = await client.post(to, body, f"{forged}..{token.split('.')[2]}")
        assert reply.status == 401
        assert reply.message["error"]["reason"] == "SIGNATURE_INVALID"
        reasons.append("SIGNATURE_INVALID")
    # Each refusal is audited, though none reached the pipeline's stages.
    assert [r.reason for r in seen] == reasons
    assert {(r.door, r.action, r.point) for r in seen} == {("rest", "aral.api/message", "pre")}


async def test_a_message_signed_by_a_verified_peer_has_its_rights(
    make_node: Callable[..., Node],
) -> None:
    """Deny by default: a stranger's key holds nothing; the key a handshake pinned
    (a linked peer's) holds what peers are granted."""
    node = make_node(
        "strict", http_port=0, deny_by_default=True, peer_scopes={"agent:invoke"}, **FAST
    )
    far = make_node("friend", **FAST)
    async with node, far:
        await linked(far, node)
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            stranger = await AralClient(http).send(node.node_id, "demo.whoami", {})
            body = message_body(far.node_id, node.node_id, "demo.whoami", {})
            signature = jws.sign(
                far.identity,
                body,
                detached=True,
                header={"jwk": jws.public_jwk(far.identity.public_key)},
            )
            friend = await AralClient(http).post(node.node_id, body, signature)
    assert stranger.status == 403
    assert stranger.message["body"]["error"]["reason"] == "MISSING_SCOPE"
    assert friend.status == 200, friend.message
    assert friend.message["body"]["result"]["caller"] == far.node_id
    assert friend.message["header"]["recipient"] == far.node_id


async def test_a_message_to_a_peer_is_forwarded(pair: Pair) -> None:
    node, far, http = pair
    reply = await AralClient(http).send(far.node_id, "demo.echo", {"text": "onward"})
    assert reply.status == 200
    assert reply.signer == node.node_id
    assert reply.message["body"]["result"]["text"] == "onward"


async def test_a_message_id_is_taken_once_even_with_a_new_signature(pair: Pair) -> None:
    """ECDSA signatures differ each time: replay is judged on (sender, id)."""
    node, _, http = pair
    client = AralClient(http)
    body = message_body(
        client.agent_id, node.node_id, "demo.echo", {"text": "x"}, messageId=str(uuid.uuid4())
    )
    assert (await client.post(node.node_id, body, detached(client.key, body))).status == 200
    again = await client.post(node.node_id, body, detached(client.key, body))
    assert again.status == 401
    assert again.message["body"]["error"]["reason"] == "REPLAY_DETECTED"


async def test_a_message_with_two_signature_headers_is_refused_before_either_is_checked(
    pair: Pair,
) -> None:
    """Two ``X-ARAL-Signature`` headers, a good one beside a forged one in either
    order (or the good one twice), are refused ``CREDENTIALS_AMBIGUOUS`` before any
    is verified: no copy counts, so the message id is not taken either, and the
    same message with one signature is then served."""
    node, _, http = pair
    client = AralClient(http)
    seen = recorded(node)
    body = message_body(client.agent_id, node.node_id, "demo.echo", {"text": "x"})
    good = detached(client.key, body)
    forged = detached(AralClient(http).key, body)  # another key: a bad signature here
    path = f"/api/v1/agents/{node.node_id}/messages"
    for first, second in ((forged, good), (good, forged), (good, good)):
        headers = [
            ("content-type", "application/json"),
            ("x-aral-signature", first),
            ("x-aral-signature", second),
        ]
        r = await http.post(path, content=body, headers=headers)
        reply = r.json()  # (a refusal after the check is a signed reply: its body's error)
        error = reply.get("error") or reply["body"]["error"]
        assert (r.status_code, error["reason"]) == (401, "CREDENTIALS_AMBIGUOUS"), r.text
    assert [(r.action, r.reason) for r in seen] == [
        ("aral.api/message", "CREDENTIALS_AMBIGUOUS")
    ] * 3
    assert (await client.post(node.node_id, body, good)).status == 200


async def test_refusals_before_the_call_runs_are_on_record(pair: Pair) -> None:
    """From an attack: a body that is not JSON, a member the route does not take,
    no capability, parameters not an object, a body past the limit and a version not
    served were refused with no audit record, where ``POST /v1/invoke`` records the
    same refusals. And ``"parameters": false`` ran the capability with none."""
    node, _, http = pair
    base = f"/api/v1/agents/{node.node_id}"
    seen = recorded(node)
    asks: list[tuple[str, dict[str, Any]]] = [
        ("invoke", {"content": b"{not json"}),
        ("invoke", {"json": {"capability": "demo.echo", "params": {"text": "hi"}}}),
        ("invoke", {"json": {"parameters": {}}}),
        ("invoke", {"json": {"capability": "demo.whoami", "parameters": False}}),
        ("invoke", {"json": {"capability": "demo.whoami", "parameters": ""}}),
        ("capabilities/demo.whoami", {"json": {"parameters": False}}),
        ("capabilities/demo.whoami", {"json": [1]}),
        ("invoke", {"json": {"capability": "demo.echo", "parameters": {"text": "x" * (5 << 20)}}}),
    ]
    for path, body in asks:
        r = await http.post(f"{base}/{path}", **body)
        assert r.status_code in (400, 413), (path, body, r.text)
    r = await http.post(
        f"{base}/invoke", json={"capability": "demo.whoami"}, headers={"X-API-Version": "9"}
    )
    assert error_of(r)[:2] == (400, "unsupported_version")
    actions = [r.action for r in seen]
    assert actions == ["aral.api/invoke"] * 5 + ["aral.api/capability"] * 2 + [
        "aral.api/invoke",
        "aral.api/version",
    ]
    assert all(r.point == "pre" and r.outcome != "ok" for r in seen)
    # Absent or null parameters are none, as before.
    for body in ({"capability": "demo.whoami"}, {"capability": "demo.whoami", "parameters": None}):
        r = await http.post(f"{base}/invoke", json=body)
        assert r.status_code == 200, r.text
