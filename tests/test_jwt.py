"""Bearer JWTs through the real doors (issue 15, ident): the refusal matrix on gRPC,
REST, MCP and WebSocket (the handler never runs), the principal a good token names,
the verified-token cache, and JWKS rotation (file and URL) without a restart.

The helpers here (tokens, keys, a door-by-door caller, a loopback HTTP app) are
shared by ``test_apikeys``, ``test_oauth`` and ``test_sessions``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
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
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import CallContext, Node, NodeConfig
from aralnode import _proto as pb
from aralnode.access.bearer import BearerAuthenticator
from aralnode.access.jwks import JwksUrl
from aralnode.access.jwt import JwtRules, JwtVerifier, key_fits
from aralnode.access.tokens import TokenCache
from aralnode.core import codec
from aralnode.core.context import NO_CREDENTIALS
from aralnode.core.errors import Unauthenticated
from aralnode.transport.status import from_rpc_error

ISSUER = "https://issuer.test"
AUDIENCE = "aralnode-test"
DOORS = ("grpc", "rest", "mcp", "ws")


# -- keys and tokens ---------------------------------------------------------------


class Signer:
    """An issuer's key pair: its JWK (public) and tokens it signs."""

    def __init__(self, kid: str, kind: str = "EC") -> None:
        self.kid = kid
        if kind == "EC":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
            self.jwk = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
            self.jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        self.jwk.update(kid=kid, use="sig")

    def token(self, **claims: Any) -> str:
        return jwt.encode(
            claims_of(**claims), self.private, algorithm=self.alg, headers={"kid": self.kid}
        )

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def claims_of(**overrides: Any) -> dict[str, Any]:
    """Good claims for this node, with ``overrides`` (``None`` drops a claim)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "scope": "vault:read other:thing",
        "roles": ["reader"],
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], header: dict[str, Any]) -> str:
    """``header.claims.`` with no signature, as ``alg: none`` is."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_with(secret: bytes, claims: dict[str, Any], kid: str) -> str:
    """An HS256 token whose HMAC secret is ``secret`` (the forgery: the RSA public key)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def tampered(token: str) -> str:
    """``token`` with its payload changed (another ``sub``) and its signature kept."""
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["sub"] = "mallory"
    return f"{head}.{b64(json.dumps(claims).encode())}.{sig}"


def bad_tokens(good: Signer, rsa_signer: Signer) -> dict[str, tuple[str, str]]:
    """The refusal matrix: name -> (token, the reason the node gives)."""
    stranger = Signer("k-unknown")
    return {
        "alg none": (unsigned(claims_of(), {"alg": "none", "typ": "JWT"}), "TOKEN_ALG_NOT_ALLOWED"),
        "hs256 with the rsa public key": (
            hs256_with(rsa_signer.public_pem(), claims_of(), rsa_signer.kid),
            "TOKEN_ALG_NOT_ALLOWED",
        ),
        "wrong aud": (good.token(aud="someone-else"), "TOKEN_CLAIMS_INVALID"),
        "wrong iss": (good.token(iss="https://evil.test"), "TOKEN_CLAIMS_INVALID"),
        "expired": (good.token(exp=int(time.time()) - 3600), "TOKEN_EXPIRED"),
        "missing exp": (good.token(exp=None), "TOKEN_CLAIMS_INVALID"),
        "unknown kid": (stranger.token(), "UNKNOWN_KID"),
        "tampered payload": (tampered(good.token()), "TOKEN_INVALID"),
    }


def write_jwks(path: Path, *signers: Signer) -> None:
    """Write the JWKS atomically (a node may read it at any moment)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": [s.jwk for s in signers]}))
    tmp.replace(path)


# -- a node with a guarded capability ------------------------------------------------


def guarded(node: Node) -> list[str]:
    """Register ``vault.read`` (scope ``vault:read``) and ``vault.whoami`` (none) on
    ``node``; the list of callers each handler ran for."""
    runs: list[str] = []

    @node.capability(id="vault.read", scopes=("vault:read",))
    async def read(ctx: CallContext) -> dict[str, object]:
        runs.append(ctx.caller)
        return {"caller": ctx.caller}

    @node.capability(id="vault.whoami")
    async def whoami(ctx: CallContext) -> dict[str, object]:
        runs.append(ctx.caller)
        return {
            "caller": ctx.caller,
            "kind": ctx.kind,
            "roles": sorted(ctx.roles),
            "scopes": sorted(ctx.scopes),
        }

    return runs


def jwt_node(make_node: Callable[..., Node], name: str, jwks: Path, **extra: Any) -> Node:
    return make_node(
        name,
        demo=False,
        http_port=0,
        jwt_issuer=ISSUER,
        jwt_audience=AUDIENCE,
        jwt_jwks_file=jwks,
        **extra,
    )


# -- one call through each door --------------------------------------------------------


class Refused(Exception):
    """A door refused the call: its own status, and the node's reason."""

    def __init__(self, door: str, status: Any, reason: str, response: Any = None) -> None:
        super().__init__(f"{door}: {status} {reason}")
        self.door, self.status, self.reason, self.response = door, status, reason, response


def access_of(node: Node) -> BearerAuthenticator:
    """The started node's caller-identity authenticator."""
    assert node._parts is not None
    assert node._parts.access is not None
    return node._parts.access


def reason_of(error: dict[str, Any]) -> str:
    """The node's reason in an error object (the seed's shape)."""
    reason = error.get("reason") or error.get("details", {}).get("reason", "")
    return str(reason)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def call_grpc(node: Node, capability: str, headers: dict[str, str]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(node.address) as channel:
        invoke = channel.unary_unary(
            "/aral.v1.AgentNode/Invoke",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=pb.InvokeResponse.FromString,
        )
        try:
            reply = await invoke(
                pb.InvokeRequest(call=pb.Call(capability=capability)),
                metadata=tuple(headers.items()),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise Refused("grpc", exc.code(), from_rpc_error(exc).reason) from None
    result: dict[str, Any] = codec.from_value(reply.result.result)
    return result


async def call_rest(node: Node, capability: str, headers: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}", timeout=10) as http:
        r = await http.post(
            "/v1/invoke", json={"call": {"capability": capability}}, headers=headers
        )
    if r.status_code != 200:
        raise Refused("rest", r.status_code, reason_of(r.json()["error"]), r)
    result: dict[str, Any] = r.json()["result"]["result"]
    return result


def mcp_transport(node: Node, client: httpx2.AsyncClient) -> Any:
    return streamable_http_client(f"http://127.0.0.1:{node.http_port}/mcp", http_client=client)


def mcp_failure(group: BaseException) -> MCPError | None:
    """The ``MCPError`` an MCP client's task groups raised, however deep."""
    if isinstance(group, MCPError):
        return group
    if isinstance(group, BaseExceptionGroup):
        for inner in group.exceptions:
            if (found := mcp_failure(inner)) is not None:
                return found
    return None


async def call_mcp(node: Node, capability: str, headers: dict[str, str]) -> dict[str, Any]:
    try:
        async with (
            httpx2.AsyncClient(headers=headers, timeout=10) as http,
            Client(mcp_transport(node, http), mode="legacy") as client,
        ):
            result = await client.call_tool(capability, {})
    except (MCPError, BaseExceptionGroup) as exc:
        failure = mcp_failure(exc)
        if failure is None:
            raise
        data = failure.error.data if isinstance(failure.error.data, dict) else {}
        raise Refused("mcp", failure.error.code, reason_of(data)) from None
    if result.is_error:
        body = json.loads(result.content[0].text)  # type: ignore[union-attr]
        raise Refused("mcp", "tool error", reason_of(body.get("error", body)))
    text = result.content[0].text  # type: ignore[union-attr]
    structured: dict[str, Any] = result.structured_content or json.loads(text)
    return structured


async def call_ws(node: Node, capability: str, headers: dict[str, str]) -> dict[str, Any]:
    try:
        async with connect(f"ws://127.0.0.1:{node.http_port}/ws", additional_headers=headers) as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": capability}))
            async with asyncio.timeout(10):
                while True:
                    reply = json.loads(await ws.recv())
                    if reply.get("id") == 1:
                        break
    except InvalidStatus as exc:
        body = json.loads(exc.response.body or b"{}")
        reason = reason_of(body.get("error", {}))
        raise Refused("ws", exc.response.status_code, reason, exc.response) from None
    if reply["type"] == "error":
        raise Refused("ws", reply["error"]["code"], reason_of(reply["error"]))
    result: dict[str, Any] = reply["result"]
    return result


CALLS = {"grpc": call_grpc, "rest": call_rest, "mcp": call_mcp, "ws": call_ws}


async def call(door: str, node: Node, capability: str, headers: dict[str, str]) -> dict[str, Any]:
    """``capability`` called on ``door`` with ``headers``: its result, or ``Refused``."""
    return await CALLS[door](node, capability, headers)


# -- a loopback HTTP app a test serves (a JWKS URL, an introspection endpoint) --------


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve the ASGI ``app`` on 127.0.0.1 (a free port): its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    task = asyncio.create_task(server.main_loop())
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        await server.shutdown(sockets=[sock])
        sock.close()


# -- the tests ----------------------------------------------------------------------------


@pytest.fixture
def signers(tmp_path: Path) -> tuple[Signer, Signer, Path]:
    good, rsa_signer = Signer("k1"), Signer("k-rsa", "RSA")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, good, rsa_signer)
    return good, rsa_signer, jwks


@pytest.mark.parametrize("door", DOORS)
async def test_the_refusal_matrix_on_every_door(
    door: str, make_node: Callable[..., Node], signers: tuple[Signer, Signer, Path]
) -> None:
    good, rsa_signer, jwks = signers
    node = jwt_node(make_node, f"matrix-{door}", jwks)
    runs = guarded(node)
    expected_status = {
        "grpc": grpc.StatusCode.UNAUTHENTICATED,
        "rest": 401,
        "mcp": int(Unauthenticated.mcp_code),
        "ws": 401,
    }[door]
    async with node:
        for name, (token, reason) in bad_tokens(good, rsa_signer).items():
            with pytest.raises(Refused) as refused:
                await call(door, node, "vault.whoami", bearer(token))
            assert (refused.value.status, refused.value.reason) == (expected_status, reason), name
            if door in ("rest", "ws"):
                challenge = refused.value.response.headers["www-authenticate"]
                assert challenge.startswith("Bearer ")
                assert 'error="invalid_token"' in challenge
        # The good token passes on the same door, and only it ran the handler.
        assert (await call(door, node, "vault.whoami", bearer(good.token())))["caller"] == "alice"
    assert runs == ["alice"]


@pytest.mark.parametrize("door", DOORS)
async def test_a_good_token_names_its_principal(
    door: str, make_node: Callable[..., Node], signers: tuple[Signer, Signer, Path]
) -> None:
    good, rsa_signer, jwks = signers
    node = jwt_node(make_node, f"good-{door}", jwks, jwt_kind_claim="kind")
    guarded(node)
    async with node:
        who = await call(door, node, "vault.whoami", bearer(good.token()))
        # Its token's scopes, and what the implicit role of identified callers
        # holds on a development node (docs/authorization.md).
        implicit = ["agent:invoke", "agent:read"]
        assert who == {
            "caller": "alice",
            "kind": "user",
            "roles": ["reader"],
            "scopes": sorted([*implicit, "other:thing", "vault:read"]),
        }
        # RSA keys, a service named by the kind claim, scopes as scp.
        token = rsa_signer.token(sub="robot", kind="service", scope=None, scp=["vault:read"])
        who = await call(door, node, "vault.whoami", bearer(token))
        assert (who["caller"], who["kind"]) == ("robot", "service")
        assert who["scopes"] == sorted([*implicit, "vault:read"])
        assert (await call(door, node, "vault.read", bearer(token)))["caller"] == "robot"


async def test_a_missing_scope_is_permission_denied_with_insufficient_scope(
    make_node: Callable[..., Node], signers: tuple[Signer, Signer, Path]
) -> None:
    good, _, jwks = signers
    node = jwt_node(make_node, "scopes", jwks)
    runs = guarded(node)
    token = good.token(scope="other:thing")
    async with node:
        with pytest.raises(Refused) as rest:
            await call("rest", node, "vault.read", bearer(token))
        assert (rest.value.status, rest.value.reason) == (403, "MISSING_SCOPE")
        challenge = rest.value.response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="vault:read"' in challenge
        with pytest.raises(Refused) as over_grpc:
            await call("grpc", node, "vault.read", bearer(token))
        assert over_grpc.value.status == grpc.StatusCode.PERMISSION_DENIED
    assert runs == []


async def test_a_token_is_verified_once_then_served_from_the_cache(
    make_node: Callable[..., Node], signers: tuple[Signer, Signer, Path]
) -> None:
    good, _, jwks = signers
    node = jwt_node(make_node, "cached", jwks, token_cache_size=2)
    guarded(node)
    token = good.token()
    async with node:
        for door in ("grpc", "rest", "grpc"):
            await call(door, node, "vault.whoami", bearer(token))
        verifier = access_of(node).jwt
        assert verifier is not None
        assert verifier.verified == 1
        assert verifier.cache.hits >= 2
        # Bounded: more tokens than it holds push the oldest out.
        for sub in ("b", "c", "d"):
            await call("grpc", node, "vault.whoami", bearer(good.token(sub=sub)))
        assert len(verifier.cache) == 2


async def test_a_jwks_file_rotation_is_picked_up_without_a_restart(
    make_node: Callable[..., Node], signers: tuple[Signer, Signer, Path]
) -> None:
    good, _, jwks = signers
    node = jwt_node(make_node, "rotate-file", jwks)
    guarded(node)
    rotated = Signer("k2")
    async with node:
        with pytest.raises(Refused) as before:
            await call("grpc", node, "vault.whoami", bearer(rotated.token()))
        assert before.value.reason == "UNKNOWN_KID"
        write_jwks(jwks, rotated)  # the issuer rotated: k1 is gone, k2 is in
        with pytest.raises(Refused) as retired:
            await call("rest", node, "vault.whoami", bearer(good.token()))
        assert retired.value.reason == "UNKNOWN_KID"
        assert (await call("grpc", node, "vault.whoami", bearer(rotated.token())))[
            "caller"
        ] == "alice"
        assert (await call("rest", node, "vault.whoami", bearer(rotated.token())))[
            "caller"
        ] == "alice"


async def test_a_jwks_url_rotation_is_picked_up_and_unknown_kids_do_not_hammer_it(
    make_node: Callable[..., Node],
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    first, rotated = Signer("u1"), Signer("u2")
    published = [first]
    fetched: list[float] = []

    async def keys(_request: Any) -> JSONResponse:
        fetched.append(time.monotonic())
        return JSONResponse({"keys": [s.jwk for s in published]})

    app = Starlette(routes=[Route("/jwks", keys)])
    async with serve(app) as base:
        node = make_node(
            "rotate-url",
            demo=False,
            http_port=0,
            jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE,
            jwt_jwks_url=f"{base}/jwks",
            jwt_jwks_refetch_seconds=0,
        )
        guarded(node)
        async with node:
            verifier = access_of(node).jwt
            assert verifier is not None
            assert isinstance(verifier.keys, JwksUrl)
            await verifier.keys.settled()  # the fetch the start began
            assert (await call("rest", node, "vault.whoami", bearer(first.token())))[
                "caller"
            ] == "alice"
            published.append(rotated)
            # HTTP doors wait for the refetch an unknown kid starts: no retry needed.
            assert (await call("rest", node, "vault.whoami", bearer(rotated.token())))[
                "caller"
            ] == "alice"
            published.remove(first)
            # gRPC too: its interceptor awaits the refetch before the call runs.
            third = Signer("u3")
            published.append(third)
            assert (await call("grpc", node, "vault.whoami", bearer(third.token())))[
                "caller"
            ] == "alice"
            # Where nothing could wait (the authenticator alone), a miss refuses with
            # a retry hint and starts the fetch; the retry passes.
            fourth = Signer("u4")
            published.append(fourth)
            ctx = node.contexts.build("grpc", metadata=bearer(fourth.token()))
            access = access_of(node)
            with pytest.raises(Unauthenticated) as first_try:
                access.authenticate(ctx, NO_CREDENTIALS)
            assert first_try.value.reason == "UNKNOWN_KID"
            assert first_try.value.retry_after is not None
            await verifier.keys.settled()
            assert access.authenticate(ctx, NO_CREDENTIALS).caller == "alice"
            # Refetches are rate limited: with a long interval, random kids cost none
            # (and a call with one is not held up: there is no fetch to wait for).
            verifier.keys.refetch_seconds = 3600
            count = len(fetched)
            for i in range(20):
                with pytest.raises(Refused):
                    await call("grpc", node, "vault.whoami", bearer(Signer(f"r{i}").token()))
            assert len(fetched) == count


def test_pinned_algorithms_and_key_types() -> None:
    for bad in (["none"], ["HS256"], ["ES256", "HS512"], []):
        with pytest.raises(ValueError, match="jwt_algorithms"):
            NodeConfig(jwt_algorithms=bad)
    with pytest.raises(ValueError, match="jwt_audience"):
        NodeConfig(jwt_issuer=ISSUER, jwt_jwks_url="https://issuer.test/jwks")
    # A key verifies only the algorithm family of its kty (and its own alg, if named).
    ec_key, rsa_key = Signer("e"), Signer("r", "RSA")
    from jwt import PyJWK

    assert key_fits(PyJWK(ec_key.jwk), "ES256")
    assert not key_fits(PyJWK(ec_key.jwk), "RS256")
    assert key_fits(PyJWK(rsa_key.jwk), "RS256")
    assert not key_fits(PyJWK(rsa_key.jwk), "HS256")
    assert not key_fits(PyJWK({**rsa_key.jwk, "alg": "RS256"}), "PS256")


def test_an_rsa_key_never_verifies_a_token_claiming_another_family() -> None:
    rsa_signer = Signer("k", "RSA")

    class OneKey:
        def lookup(self, kid: str) -> Any:
            from jwt import PyJWK

            return PyJWK(rsa_signer.jwk) if kid == "k" else None

        def only_key(self) -> Any:
            return None

    rules = JwtRules(issuer=ISSUER, audience=AUDIENCE, algorithms=("ES256", "RS256"))
    verifier = JwtVerifier(rules, OneKey(), TokenCache(8))
    forged = Signer("k").token()  # ES256, with the RSA key's kid
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(forged)
    assert refused.value.reason == "TOKEN_INVALID"
    assert verifier.verify(rsa_signer.token()).caller == "alice"
