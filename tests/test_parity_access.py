"""The parity scenario for callers' credentials: one body over every door a caller
with a token reaches (gRPC ``Invoke``, the user's rpc, its REST route,
``/v1/invoke``, the ARAL REST surface's ``/api/v1/agents/{id}/invoke``, A2A
``SendMessage`` (the a2a-sdk client), MCP through the official client, WebSocket).
The same key gets the same answer everywhere; a key without the scope, an unknown or
revoked key, a JWT for another audience and a caller past its rate are refused
alike, each door in its own language, with the same reason, and the handler never
runs.

(The A2A channel and the in-process door have no bearer: a channel peer is its
verified node key, see ``tests/test_delegation.py`` and ``tests/test_parity.py``.)
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from jwt.algorithms import ECAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import Node
from aralnode import _proto as pb
from aralnode.access.apikeys import ApiKeyStore
from aralnode.core import codec
from tests.test_jwt import mcp_failure, reason_of
from tests.test_parity import (
    GET,
    HTTP_STATUS,
    SEARCH,
    Outcome,
    assert_same_results,
    grpc_outcome,
    open_doors,
)
from tests.test_parity import from_body as parity_from_body

ISSUER, AUDIENCE = "https://issuer.parity.invalid/", "aralnode-parity"
HTTP_STATUS_ALL = {**HTTP_STATUS, 429: "RESOURCE_EXHAUSTED"}
ROUTES = {SEARCH: ("POST", "/library.v1.Library/Search"), GET: ("GET", "/v1/shelves/sci/books/1")}
# A dict, or (name, value) pairs where a header is given more than once.
Headers = dict[str, str] | list[tuple[str, str]]


def pairs(headers: Headers) -> tuple[tuple[str, str], ...]:
    """``headers`` as gRPC metadata: (name, value) pairs, repeats kept."""
    return tuple(headers.items()) if isinstance(headers, dict) else tuple(headers)


def from_body(error: dict[str, Any]) -> Outcome:
    """The seed's error object as an outcome (a rate limit's code included), its
    retry hint checked."""
    if error["code"] == "rate_limit_exceeded":
        assert error["details"]["retry_after"] > 0, error
        return Outcome(status="RESOURCE_EXHAUSTED", reason=error["reason"])
    return parity_from_body(error)


class Doors:
    """Every door a bearer reaches, each called with the caller's headers."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.base = f"http://127.0.0.1:{node.http_port}"

    async def grpc_invoke(self, cap: str, params: Any, headers: Headers) -> Outcome:
        request = pb.InvokeRequest(call=pb.Call(capability=cap))
        request.call.parameters.update(params)
        async with grpc.aio.insecure_channel(self.node.address) as channel:
            invoke = channel.unary_unary(
                "/aral.v1.AgentNode/Invoke",
                request_serializer=pb.InvokeRequest.SerializeToString,
                response_deserializer=pb.InvokeResponse.FromString,
            )
            try:
                reply = await invoke(request, metadata=pairs(headers), timeout=10)
            except grpc.aio.AioRpcError as err:
                return grpc_outcome(err)
        return Outcome(codec.from_value(reply.result.result))

    async def grpc_method(self, cap: str, params: Any, headers: Headers) -> Outcome:
        method = next(
            m for s in (p.descriptor for p in self.node._services) for m in s.methods
            if f"{s.full_name}/{m.name}" == cap
        )  # fmt: skip
        request_cls = GetMessageClass(method.input_type)
        async with grpc.aio.insecure_channel(self.node.address) as channel:
            rpc = channel.unary_unary(
                f"/{cap}",
                request_serializer=request_cls.SerializeToString,
                response_deserializer=GetMessageClass(method.output_type).FromString,
            )
            try:
                request = json_format.ParseDict(params, request_cls())
                reply = await rpc(request, metadata=pairs(headers), timeout=10)
            except grpc.aio.AioRpcError as err:
                return grpc_outcome(err)
        return Outcome(json_format.MessageToDict(reply))

    async def _http(self, verb: str, path: str, body: Any, headers: Headers) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.base, timeout=10) as http:
            return await http.request(verb, path, json=body, headers=headers)

    @staticmethod
    def _refused(r: httpx.Response) -> Outcome:
        error = r.json()["error"]
        error = error.get("data", error)  # JSON-RPC (A2A): the node's error is its data
        outcome = Outcome(status=HTTP_STATUS_ALL[r.status_code], reason=error["reason"])
        if r.status_code == 401:
            assert r.headers["www-authenticate"].startswith("Bearer"), r.headers
        if r.status_code == 429:
            assert float(r.headers["retry-after"]) > 0
        return outcome

    async def rest_invoke(self, cap: str, params: Any, headers: Headers) -> Outcome:
        body = {"call": {"capability": cap, "parameters": params}}
        r = await self._http("POST", "/v1/invoke", body, headers)
        return Outcome(r.json()["result"]["result"]) if r.status_code == 200 else self._refused(r)

    async def aral_invoke(self, cap: str, params: Any, headers: Headers) -> Outcome:
        path = f"/api/v1/agents/{self.node.node_id}/invoke"
        r = await self._http("POST", path, {"capability": cap, "parameters": params}, headers)
        return Outcome(r.json()["result"]) if r.status_code == 200 else self._refused(r)

    async def a2a(self, cap: str, params: Any, headers: Headers) -> Outcome:
        """A2A ``SendMessage`` (the official a2a-sdk client, JSON-RPC) with the
        caller's headers: a COMPLETED task's artifact or a REJECTED task's code."""
        from a2a.client import ClientConfig, create_client
        from a2a.helpers.proto_helpers import new_data_part
        from a2a.types import a2a_pb2 as a2a

        async with httpx.AsyncClient(headers=headers, timeout=10) as http:
            config = ClientConfig(
                streaming=False, supported_protocol_bindings=["JSONRPC"], httpx_client=http
            )
            client = await create_client(self.base, config)
            message = a2a.Message(message_id="parity", role=a2a.Role.ROLE_USER)
            message.parts.append(new_data_part({"skill": cap, "parameters": params}))
            try:
                request = a2a.SendMessageRequest(message=message)
                got = [e async for e in client.send_message(request)]
            except Exception as exc:  # refused before the SDK saw it: the HTTP 401
                status = exc.__cause__
                if not isinstance(status, httpx.HTTPStatusError):
                    raise
                return self._refused(status.response)
        task = got[-1].task
        if task.status.state == a2a.TaskState.TASK_STATE_COMPLETED:
            return Outcome(json_format.MessageToDict(task.artifacts[0].parts[0].data))
        meta = json_format.MessageToDict(task.status.message.metadata)
        status = {"rate_limit_exceeded": "RESOURCE_EXHAUSTED"}.get(meta["code"])
        return Outcome(status=status, reason=meta["reason"]) if status else parity_from_body(meta)

    async def rest_route(self, cap: str, params: Any, headers: Headers) -> Outcome:
        verb, path = ROUTES[cap]
        r = await self._http(verb, path, params if verb == "POST" else None, headers)
        return Outcome(r.json()) if r.status_code == 200 else self._refused(r)

    async def mcp(self, cap: str, params: Any, headers: Headers) -> Outcome:
        transport = f"{self.base}/mcp"
        try:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=10) as http,
                Client(streamable_http_client(transport, http_client=http)) as client,
            ):
                result = await client.call_tool(cap.replace("/", "."), params)
        except (MCPError, BaseExceptionGroup) as exc:  # refused at the HTTP level (401)
            failure = mcp_failure(exc)
            if failure is None:
                raise
            data = failure.error.data if isinstance(failure.error.data, dict) else {}
            return Outcome(status="UNAUTHENTICATED", reason=reason_of(data))
        body = json.loads(result.content[0].text)  # type: ignore[union-attr]
        return from_body(body["error"]) if result.is_error else Outcome(body)

    async def ws(self, cap: str, params: Any, headers: Headers) -> Outcome:
        url = f"ws://127.0.0.1:{self.node.http_port}/ws"
        message = {"type": "invoke", "id": 1, "capability": cap, "parameters": params}
        try:
            async with connect(url, additional_headers=headers) as ws:
                await ws.send(json.dumps(message))
                reply = json.loads(await ws.recv())
        except InvalidStatus as exc:  # refused at the upgrade
            body = json.loads(exc.response.body or b"{}")
            status = HTTP_STATUS_ALL[exc.response.status_code]
            return Outcome(status=status, reason=reason_of(body.get("error", {})))
        if reply["type"] == "error":
            return from_body(reply["error"])
        return Outcome(reply["result"])

    def all(self) -> dict[str, Callable[[str, Any, Headers], Any]]:
        return {
            "grpc-invoke": self.grpc_invoke,
            "grpc-method": self.grpc_method,
            "rest-route": self.rest_route,
            "rest-invoke": self.rest_invoke,
            "aral-invoke": self.aral_invoke,
            "a2a": self.a2a,
            "mcp": self.mcp,
            "ws": self.ws,
        }


def issuer(tmp_path: Path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    """An identity provider's JWKS file and its signing key."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "alg": "ES256"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return path, key


def token(key: ec.EllipticCurvePrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "parity-user", "exp": now + 600} | claims
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": "k1"})


@asynccontextmanager
async def keyed_doors(
    make_node: Callable[..., Node], tmp_path: Path, **config: Any
) -> AsyncIterator[tuple[Doors, ApiKeyStore, ec.EllipticCurvePrivateKey, list[str]]]:
    """The parity node (tests/test_parity.py) trusting a JWT issuer, with its API key
    store, the issuer's key, and a record of the Search handler's runs."""
    jwks, key = issuer(tmp_path)
    async with open_doors(
        make_node,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_file=jwks,
        apikeys_file=tmp_path / "keys.json",
        **config,
    ) as doors:
        ran: list[str] = []
        doors.node.pipeline.stages.audit.sinks.append(_Seen(ran))
        yield Doors(doors.node), ApiKeyStore(tmp_path / "keys.json"), key, ran


class _Seen:
    """An audit sink that notes the calls that succeeded (the handler ran), and
    every door's record of a refusal (``refused``: door, action, reason)."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran
        self.refused: list[tuple[str, str, str]] = []

    def write(self, record: Any) -> None:
        if record.outcome == "ok" and record.action == SEARCH:
            self.ran.append(record.door)
        elif record.outcome != "ok":
            self.refused.append((record.door, record.action, record.reason))


CASES = ["good-key", "good-jwt", "no-scope", "unknown-key", "revoked-key", "wrong-audience"]


@pytest.mark.parametrize("case", CASES)
async def test_every_door_treats_a_credential_alike(
    make_node: Callable[..., Node], tmp_path: Path, case: str
) -> None:
    async with keyed_doors(make_node, tmp_path) as (doors, store, key, ran):
        good, _ = store.create("parity-bot", scopes=["library:search"])
        bare, _ = store.create("bare-bot", scopes=[])
        revoked, record = store.create("gone-bot", scopes=["library:search"])
        store.revoke(record.id)
        headers = {
            "good-key": {"x-api-key": good},
            "good-jwt": {"authorization": "Bearer " + token(key, scope="library:search")},
            "no-scope": {"authorization": f"Bearer {bare}"},
            "unknown-key": {"authorization": f"Bearer {good[:-4]}AAAA"},
            "revoked-key": {"x-api-key": revoked},
            "wrong-audience": {"authorization": "Bearer " + token(key, aud="someone-else")},
        }[case]
        answers = {
            name: await call(SEARCH, {"text": "cosmos"}, headers)
            for name, call in doors.all().items()
        }
    expected = {
        "no-scope": ("PERMISSION_DENIED", "MISSING_SCOPE"),
        "unknown-key": ("UNAUTHENTICATED", "API_KEY_INVALID"),
        "revoked-key": ("UNAUTHENTICATED", "API_KEY_REVOKED"),
        "wrong-audience": ("UNAUTHENTICATED", "TOKEN_CLAIMS_INVALID"),
    }.get(case)
    if expected is None:
        assert_same_results(answers)  # (A2A's numbers are doubles: equal, not identical)
        doors_ran = ["grpc", "grpc", "rest", "rest", "rest", "a2a", "mcp", "ws"]
        assert sorted(ran) == sorted(doors_ran), ran
        return
    for name, outcome in answers.items():
        # MCP says why in its tool error; a refused session has only the status.
        assert (outcome.status, outcome.reason) == expected or (
            name == "mcp" and outcome.status == expected[0] and not outcome.reason
        ), (name, outcome)
    assert ran == []


async def test_every_door_refuses_a_caller_past_its_rate_with_a_retry_hint(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Each door's caller (its own key) gets a few calls, then RESOURCE_EXHAUSTED
    ``RATE_LIMIT_PRINCIPAL`` in the door's language (RetryInfo, 429 + Retry-After,
    the MCP and WebSocket error's retry_after); the other doors' callers, each with
    a bucket of its own, are not affected by it."""
    async with keyed_doors(make_node, tmp_path, rate_limit_per_principal="3/h") as (
        doors,
        store,
        _,
        ran,
    ):
        refusals: dict[str, Outcome] = {}
        for name, call in doors.all().items():
            key, _ = store.create(f"rate-{name}", scopes=["library:search", "agent:read"])
            for _ in range(5):  # 3 tokens: a refusal comes by the 4th call (MCP lists first)
                outcome = await call(SEARCH, {"text": "cosmos"}, {"x-api-key": key})
                if not outcome.ok:
                    refusals[name] = outcome
                    break
    assert set(refusals) == set(doors.all()), refusals
    for name, outcome in refusals.items():
        assert (outcome.status, outcome.reason) == (
            "RESOURCE_EXHAUSTED",
            "RATE_LIMIT_PRINCIPAL",
        ) or (name == "mcp" and outcome.status == "RESOURCE_EXHAUSTED"), (name, outcome)
    assert {"grpc", "rest", "ws"} <= set(ran), ran  # each caller was served before its refusal


DUPLICATES = ["key-twice", "bearer-twice", "same-key-twice", "bearer-and-key-twice"]


@pytest.mark.parametrize("case", DUPLICATES)
async def test_every_door_refuses_a_credential_header_given_twice(
    make_node: Callable[..., Node], tmp_path: Path, case: str
) -> None:
    """A credential header more than once is ambiguous (parsers disagree on which
    one counts, as with two Host headers): refused UNAUTHENTICATED
    ``CREDENTIALS_AMBIGUOUS`` on every door, audited, never run -- whichever copy
    is the good one, and even when both are the same."""
    async with keyed_doors(make_node, tmp_path) as (doors, store, _, ran):
        good, _ = store.create("parity-bot", scopes=["library:search"])
        garbage = "aral_0000000000000000_" + "x" * 43
        garbage_bearer, good_bearer = f"Bearer {garbage}", f"Bearer {good}"
        headers = {
            "key-twice": [("x-api-key", garbage), ("x-api-key", good)],
            "bearer-twice": [("authorization", garbage_bearer), ("authorization", good_bearer)],
            "same-key-twice": [("x-api-key", good), ("x-api-key", good)],
            "bearer-and-key-twice": [
                ("authorization", good_bearer), ("x-api-key", garbage), ("x-api-key", good),
            ],
        }[case]  # fmt: skip
        seen = next(s for s in doors.node.pipeline.stages.audit.sinks if isinstance(s, _Seen))
        answers = {
            name: await call(SEARCH, {"text": "cosmos"}, headers)
            for name, call in doors.all().items()
        }
        # Each door's own caller alone is served: the node itself works.
        assert (await doors.rest_invoke(SEARCH, {"text": "cosmos"}, {"x-api-key": good})).ok
    ambiguous = ("UNAUTHENTICATED", "CREDENTIALS_AMBIGUOUS")
    wrong = {
        name: outcome
        for name, outcome in answers.items()
        # MCP says why in its tool error; a refused session has only the status.
        if (outcome.status, outcome.reason) != ambiguous
        and not (name == "mcp" and outcome.status == ambiguous[0] and not outcome.reason)
    }
    assert wrong == {}, wrong
    assert ran == ["rest"]  # the one good call: no door ran the doubled one
    audited = {door for door, _, reason in seen.refused if reason == "CREDENTIALS_AMBIGUOUS"}
    assert audited == {"grpc", "rest", "a2a", "mcp", "ws"}, seen.refused
