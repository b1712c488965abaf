"""The node as an OAuth 2.0 resource server (issue 15, ident): RFC 9728 metadata
(root and the MCP endpoint's path form), 401s with the ``WWW-Authenticate`` the MCP
authorization spec asks for -- followed by the official SDK's own discovery
helpers -- and RFC 7662 introspection of opaque tokens against an endpoint the test
serves on loopback."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    handle_protected_resource_response,
)
from mcp.shared.auth_utils import check_resource_allowed, resource_url_from_server_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aralnode import Node, NodeConfig
from aralnode.core.context import NO_CREDENTIALS
from aralnode.core.errors import Unauthenticated
from tests.test_hostile_mcp import ACCEPT, INIT
from tests.test_jwt import (
    AUDIENCE,
    ISSUER,
    Refused,
    Signer,
    access_of,
    bearer,
    call,
    guarded,
    jwt_node,
    serve,
    write_jwks,
)


@pytest.fixture
def issuer_keys(tmp_path: Path) -> tuple[Signer, Path]:
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, signer)
    return signer, jwks


def oauth_node(make_node: Callable[..., Node], name: str, jwks: Path) -> Node:
    return jwt_node(
        make_node,
        name,
        jwks,
        allow_unsigned=False,  # an MCP client without a token gets the 401 that starts OAuth
        oauth_authorization_servers=[ISSUER],
        oauth_scopes_supported=["vault:read"],
    )


async def test_the_protected_resource_metadata_documents(
    make_node: Callable[..., Node], issuer_keys: tuple[Signer, Path]
) -> None:
    node = oauth_node(make_node, "prm", issuer_keys[1])
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        base = f"http://127.0.0.1:{node.http_port}"
        for suffix in ("", "/mcp"):
            r = await http.get("/.well-known/oauth-protected-resource" + suffix)
            assert r.status_code == 200
            assert r.json() == {
                "resource": base + suffix,
                "authorization_servers": [ISSUER],
                "scopes_supported": ["vault:read"],
                "bearer_methods_supported": ["header"],
                "resource_name": "aralnode",
            }


async def test_the_mcp_client_discovers_the_metadata_from_our_401(
    make_node: Callable[..., Node], issuer_keys: tuple[Signer, Path]
) -> None:
    signer, jwks = issuer_keys
    node = oauth_node(make_node, "discover", jwks)
    runs = guarded(node)
    async with node, httpx2.AsyncClient(timeout=10) as http:
        server_url = f"http://127.0.0.1:{node.http_port}/mcp"
        # No token: 401 with a challenge naming the metadata, and no error code.
        r = await http.post(server_url, json=INIT, headers=ACCEPT)
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert "error=" not in challenge
        # One challenge, and the trace id every door's refusal carries.
        assert len(r.headers.get_list("www-authenticate")) == 1
        assert r.headers["x-trace-id"] == r.json()["error"]["data"]["trace_id"]
        # The SDK's own discovery: the header's URL first, then the well-known ones.
        found = extract_resource_metadata_from_www_auth(r)
        assert (
            found == f"http://127.0.0.1:{node.http_port}/.well-known/oauth-protected-resource/mcp"
        )
        urls = build_protected_resource_metadata_discovery_urls(found, server_url)
        for url in urls:  # each form the SDK may try is served
            metadata = await handle_protected_resource_response(await http.get(url))
            assert metadata is not None, url
            assert [str(s).rstrip("/") for s in metadata.authorization_servers] == [ISSUER]
        metadata = await handle_protected_resource_response(await http.get(urls[0]))
        assert metadata is not None
        assert check_resource_allowed(
            requested_resource=resource_url_from_server_url(server_url),
            configured_resource=str(metadata.resource),
        )
        # A bad token: 401, invalid_token; a good one through the official client.
        r = await http.post(
            server_url, json=INIT, headers={**ACCEPT, **bearer(signer.token(aud="x"))}
        )
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
        assert "resource_metadata=" in r.headers["www-authenticate"]
        with pytest.raises(Refused) as anonymous:
            await call("mcp", node, "vault.whoami", {})
        assert anonymous.value.reason == "ANONYMOUS_REFUSED"
        assert (await call("mcp", node, "vault.read", bearer(signer.token())))["caller"] == "alice"
    assert runs == ["alice"]


async def test_rest_answers_401_with_a_bearer_challenge(
    make_node: Callable[..., Node], issuer_keys: tuple[Signer, Path]
) -> None:
    node = oauth_node(make_node, "rest-401", issuer_keys[1])
    runs = guarded(node)
    async with node:
        with pytest.raises(Refused) as anonymous:
            await call("rest", node, "vault.whoami", {})
        assert (anonymous.value.status, anonymous.value.reason) == (401, "ANONYMOUS_REFUSED")
        assert anonymous.value.response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(Refused) as bad:
            await call("rest", node, "vault.whoami", {"authorization": "Basic dXNlcjpwYXNz"})
        assert (bad.value.status, bad.value.reason) == (401, "AUTH_SCHEME_UNSUPPORTED")
        assert 'error="invalid_token"' in bad.value.response.headers["www-authenticate"]
    assert runs == []


#: The resource the nodes introspecting with ``Issuer`` name (``oauth_resource``).
RESOURCE = "https://node.example/"


class Issuer:
    """An RFC 7662 introspection endpoint: its tokens, and the questions it got."""

    def __init__(self) -> None:
        now = int(time.time())
        mine = {"aud": RESOURCE, "exp": now + 600}
        self.tokens: dict[str, dict[str, Any]] = {
            "opaque-good": {"active": True, "sub": "carol", "scope": "vault:read", **mine},
            "opaque-late": {"active": True, "sub": "dave", "scope": "", **mine},
            "opaque-client": {"active": True, "client_id": "build-bot", **mine},
        }
        self.asked: list[str] = []
        expected = base64.b64encode(b"node-1:s3cret").decode()
        self.authorization = f"Basic {expected}"

    async def introspect(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != self.authorization:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = await request.form()
        token = str(form.get("token", ""))
        self.asked.append(token)
        return JSONResponse(self.tokens.get(token, {"active": False}))

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/introspect", self.introspect, methods=["POST"])])


async def test_opaque_tokens_are_introspected_once_and_cached(
    make_node: Callable[..., Node],
) -> None:
    issuer = Issuer()
    async with serve(issuer.app()) as base:
        node = make_node(
            "introspect",
            demo=False,
            http_port=0,
            oauth_resource=RESOURCE,
            oauth_introspection_url=f"{base}/introspect",
            oauth_client_id="node-1",
            oauth_client_secret="s3cret",
        )
        runs = guarded(node)
        async with node:
            # HTTP doors ask before the call; the answer is cached for every door.
            for door in ("rest", "mcp", "ws", "grpc"):
                assert (await call(door, node, "vault.read", bearer("opaque-good")))[
                    "caller"
                ] == "carol"
            assert issuer.asked.count("opaque-good") == 1
            who = await call("rest", node, "vault.whoami", bearer("opaque-client"))
            assert (who["caller"], who["kind"]) == ("build-bot", "service")
            # Inactive (or unknown to the issuer): refused, and remembered as such.
            for _ in range(2):
                with pytest.raises(Refused) as inactive:
                    await call("rest", node, "vault.whoami", bearer("opaque-revoked"))
                assert (inactive.value.status, inactive.value.reason) == (401, "TOKEN_INACTIVE")
            assert issuer.asked.count("opaque-revoked") == 1
            # gRPC asks first too (its interceptor), so a new token passes at once.
            assert (await call("grpc", node, "vault.whoami", bearer("opaque-late")))[
                "caller"
            ] == "dave"
            # Where nothing could wait (the authenticator alone): refused with a
            # retry hint, asked in the background; the retry passes.
            issuer.tokens["opaque-new"] = {**issuer.tokens["opaque-late"], "sub": "erin"}
            ctx = node.contexts.build("grpc", metadata=bearer("opaque-new"))
            access = access_of(node)
            with pytest.raises(Unauthenticated) as first:
                access.authenticate(ctx, NO_CREDENTIALS)
            assert first.value.reason == "TOKEN_NOT_INTROSPECTED"
            introspector = access.introspector
            assert introspector is not None
            await asyncio.gather(*introspector._asking.values())
            assert access.authenticate(ctx, NO_CREDENTIALS).caller == "erin"
    assert runs.count("carol") == 4
    assert "dave" in runs


async def test_metadata_names_the_jwt_issuer_when_no_server_is_configured(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    from aralnode._assembly import access_identity

    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, Signer("k"))
    cfg = NodeConfig(
        jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_jwks_file=jwks, data_dir=tmp_path
    )
    access = access_identity(cfg)
    assert access.jwt is not None
    assert access.introspector is None
    assert cfg.apikeys_path == tmp_path / "apikeys.json"
    node = jwt_node(make_node, "issuer-only", jwks)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        doc = (await http.get("/.well-known/oauth-protected-resource")).json()
        assert doc["authorization_servers"] == [ISSUER]
        assert "scopes_supported" not in doc


async def test_an_introspected_token_for_another_resource_is_refused(
    make_node: Callable[..., Node],
) -> None:
    """RFC 7662 says a token is active, not for whom: with a resource named, an
    answer whose ``aud`` names another resource server is refused (no passthrough
    of a token minted for someone else; from review)."""
    issuer = Issuer()
    mine = RESOURCE
    issuer.tokens["opaque-mine"] = {**issuer.tokens["opaque-good"], "aud": [mine, "x"]}
    issuer.tokens["opaque-theirs"] = {**issuer.tokens["opaque-good"], "aud": "https://other/"}
    issuer.tokens["opaque-nobodys"] = {
        k: v for k, v in issuer.tokens["opaque-good"].items() if k != "aud"
    }
    async with serve(issuer.app()) as base:
        node = make_node(
            "introspect-aud",
            demo=False,
            http_port=0,
            oauth_resource=mine,
            oauth_introspection_url=f"{base}/introspect",
            oauth_client_id="node-1",
            oauth_client_secret="s3cret",
        )
        runs = guarded(node)
        async with node:
            assert (await call("rest", node, "vault.read", bearer("opaque-mine")))["caller"] == (
                "carol"
            )
            for token in ("opaque-theirs", "opaque-nobodys"):  # another audience, or none
                with pytest.raises(Refused) as refused:
                    await call("rest", node, "vault.read", bearer(token))
                assert (refused.value.status, refused.value.reason) == (401, "TOKEN_INACTIVE")
    assert runs == ["carol"]


def test_introspection_without_an_audience_is_refused_at_start() -> None:
    """From an attack: a node introspecting with no audience to check took a token
    its authorization server minted for another API. Like a JWT issuer, an
    introspection endpoint needs the audience its tokens must name."""
    with pytest.raises(ValueError, match="oauth_introspection_url needs oauth_resource"):
        NodeConfig(oauth_introspection_url="https://as.example/introspect")
    for audience in ({"oauth_resource": RESOURCE}, {"jwt_audience": "node"}):
        config = NodeConfig(oauth_introspection_url="https://as.example/introspect", **audience)
        assert config.oauth_introspection_url
