"""Keys anyone can make (from an attack on authentication): a key made a second ago,
pinned by a handshake or not, names its signer and nothing more.

- On a node with ``allow_unsigned=False`` (anonymous callers refused on every door),
  a request signed by a key nobody verified was served with the anonymous role's
  scopes: its signer was named, and ``CallContext.anonymous`` looked at the name
  only. It counts as anonymous: refused, on gRPC and on the ARAL REST surface.
- A handshake-pinned stranger key that attached a delegation statement of its own
  got a rate bucket and a concurrency share of its own (``vouched``), escaping its
  address's: 20 calls of 20 went through a limit of 3 a minute.
- A stranger that opened an A2A channel (any key, one handshake) had its requests
  charged to its peer bucket only -- off by default, and a fresh key is a fresh
  bucket: unlimited calls where its Invoke got 3 a minute. A request from a peer
  nobody vouches for is charged to its link's address too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aralnode import Identity, Node, NodeClient, NodeConfig
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.delegation import make_statement
from aralnode.core.errors import AralError, RateLimited, Unauthenticated
from tests.interop.aral_client import AralClient

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


async def test_a_made_up_key_is_anonymous_where_anonymous_callers_are_refused(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("closed", http_port=0, allow_unsigned=False, audit=True)
    async with node:
        fresh = Identity.generate()
        async with NodeClient(node.address, identity=fresh, node_id=node.node_id) as client:
            client.keyring.pin(node.identity.public_key)
            with pytest.raises(Unauthenticated) as info:
                await client.request("demo.whoami", {})
            assert info.value.reason == "ANONYMOUS_REFUSED"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            reply = await AralClient(http).send(node.node_id, "demo.whoami", {})
            assert reply.status == 401, reply.message
            # A node the operator runs still serves: its own program's call.
            assert (await node.invoke("demo.add", {"a": 1, "b": 2})) == 3


async def test_a_made_up_delegation_keeps_a_stranger_in_its_address_bucket(
    tmp_path: Path,
) -> None:
    def config(name: str, **extra: object) -> NodeConfig:
        return NodeConfig(
            name=name, host="127.0.0.1", grpc_port=0, http_port=None, discovery="none",
            data_dir=tmp_path / name, **extra,  # type: ignore[arg-type]
        )  # fmt: skip

    target = Node(config("target", rate_limit_per_address="3/min"))
    target.load(DEMO)
    stranger = Node(config("stranger"))

    async def call(client: NodeClient) -> None:
        statement = make_statement(
            principal="x", kind="user", scopes={"*"}, chain=(),
            signer=stranger.node_id, now_ms=SYSTEM_CLOCK.now_ms(), ttl_ms=30_000,
        )  # fmt: skip
        await client.request("demo.echo", {"text": "hi"}, delegation=statement)

    async with target, NodeClient(target.address, identity=stranger.identity) as client:
        await client.handshake(stranger.card(), expected_node_id=target.node_id)
        for _ in range(3):
            await call(client)
        with pytest.raises(RateLimited) as info:
            await call(client)
        assert info.value.reason == "RATE_LIMIT_ADDRESS"


async def test_a_strangers_channel_requests_count_against_its_address(tmp_path: Path) -> None:
    def config(name: str, **extra: object) -> NodeConfig:
        return NodeConfig(
            name=name, host="127.0.0.1", grpc_port=0, http_port=None, discovery="none",
            data_dir=tmp_path / name, **extra,  # type: ignore[arg-type]
        )  # fmt: skip

    strangers = [Node(config(f"stranger{i}")) for i in range(2)]
    friend = Node(config("friend"))
    target = Node(
        config(
            "target",
            rate_limit_per_address="3/min",
            peer_grants={friend.node_id: frozenset({"agent:invoke"})},
        )
    )
    target.load(DEMO)
    reasons: list[str] = []
    async with target:
        for stranger in strangers:  # two keys, one address: one bucket
            async with stranger:
                await stranger.connect(target.address)
                assert await stranger.channels.wait_connected(target.node_id, 10)
                for _ in range(3):
                    try:
                        await stranger.request(target.node_id, "demo.echo", {"text": "x"})
                        reasons.append("ok")
                    except AralError as exc:
                        reasons.append(exc.reason)
        async with friend:  # a peer the operator named: its own bucket (none set)
            await friend.connect(target.address)
            assert await friend.channels.wait_connected(target.node_id, 10)
            for _ in range(4):
                assert await friend.request(target.node_id, "demo.echo", {"text": "x"})
    assert reasons == ["ok"] * 3 + ["RATE_LIMIT_ADDRESS"] * 3
