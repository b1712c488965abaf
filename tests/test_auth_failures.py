"""Failed authentication costs the caller (from an attack): a refused credential
took no token from any bucket, so a client held to 3 calls a minute could make the
node check any number of forged tokens, and with introspection configured, make it
ask the authorization server once for every made-up opaque token.

Where addresses are rate-limited, a refused credential is charged to its client's
address; one whose failures used up the rate is refused before its next credential
is checked, on every door (``RATE_LIMIT_AUTH_FAILURES``), and the HTTP doors ask no
authorization server for it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aralnode import Node
from tests.test_jwt import Refused, bearer, call, guarded, serve
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
