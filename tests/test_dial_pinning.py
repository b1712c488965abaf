"""A dial pins the peer's key only once every check and the connection point passed.

A pinned key is what makes a signed ``Invoke`` count as a handshake-verified node's
(``peer_scopes``). A peer that dials us is refused before anything is pinned; one we
dial must be too: a dial the policy refuses, or whose key is not the announced one,
leaves its key unpinned -- and a key pinned by an earlier good dial stays pinned.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aralnode import CallContext, Identity, Node, NodeClient, PermissionDenied
from aralnode.core.errors import KeyMismatch, Unavailable
from aralnode.core.governance import Decision, Rule, RuleEvaluator
from aralnode.core.identity import KeyRing


def with_secret(node: Node) -> None:
    @node.capability(id="vault.read", scopes=("vault",))
    async def read(ctx: CallContext) -> dict[str, str]:
        """A capability only callers holding the `vault` scope may run."""
        return {"caller": ctx.caller}


async def signed_invoke(hub: Node, me: Identity) -> object:
    """``me``'s own signed request to ``hub`` (key embedded, no handshake of its own)."""
    ring = KeyRing()
    ring.pin(hub.identity.public_key)  # to read the hub's signed answer
    async with NodeClient(hub.address, identity=me, keyring=ring, node_id=hub.node_id) as client:
        return await client.request("vault.read", {}, timeout=10)


async def test_a_dial_the_policy_refuses_pins_nothing(make_node: Callable[..., Node]) -> None:
    stranger = make_node("stranger", demo=False)
    async with stranger:
        sid = stranger.node_id
        members_only = RuleEvaluator(
            [
                Rule(
                    "members-only",
                    lambda action: action.principal == sid,
                    Decision.BLOCK,
                    reason="not a member",
                    capabilities=frozenset({"connect"}),
                )
            ]
        )
        hub = make_node("hub", governance=members_only, peer_scopes=frozenset({"vault"}))
        with_secret(hub)
        async with hub:
            with pytest.raises(PermissionDenied) as refused:
                await hub.connect(stranger.address)  # we dial it (a hint, a static peer)
            assert refused.value.reason == "CONNECTION_REFUSED_BY_POLICY"
            assert not hub.keyring.is_pinned(sid)
            assert [p.node_id for p in hub.peers()] == []
            with pytest.raises(PermissionDenied) as denied:
                await signed_invoke(hub, stranger.identity)
            assert denied.value.reason == "MISSING_SCOPE"  # no peer scopes for it


async def test_a_dial_to_the_wrong_key_pins_nothing_and_unpins_nothing(
    make_node: Callable[..., Node],
) -> None:
    hub = make_node("hub", peer_scopes=frozenset({"vault"}))
    with_secret(hub)
    peer = make_node("peer", demo=False)
    async with hub, peer:
        pid = peer.node_id
        with pytest.raises(KeyMismatch) as mismatch:
            await hub.connect(peer.address, expected_fingerprint="not-its-fingerprint")
        assert mismatch.value.reason == "FINGERPRINT_MISMATCH"
        assert not hub.keyring.is_pinned(pid)
        with pytest.raises(PermissionDenied) as denied:
            await signed_invoke(hub, peer.identity)
        assert denied.value.reason == "MISSING_SCOPE"
        # A good dial pins it: from then on its signed calls are a verified node's.
        await hub.connect(peer.address)
        assert hub.keyring.is_pinned(pid)
        assert await signed_invoke(hub, peer.identity) == {"caller": pid}
        # A later failed dial does not take back a key an earlier one pinned.
        with pytest.raises(KeyMismatch):
            await hub.connect(peer.address, expected_fingerprint="not-its-fingerprint")
        assert hub.keyring.is_pinned(pid)
        assert await signed_invoke(hub, peer.identity) == {"caller": pid}


async def test_a_dial_to_ourselves_pins_nothing(make_node: Callable[..., Node]) -> None:
    hub = make_node("hub", demo=False)
    async with hub:
        pinned = hub.keyring.pinned
        with pytest.raises(Unavailable) as own:
            await hub.connect(hub.address)
        assert own.value.reason == "SELF"
        assert hub.keyring.pinned == pinned
        assert not hub.keyring.is_pinned(hub.node_id)


async def test_a_channel_redial_the_connection_point_refuses_pins_nothing(
    make_node: Callable[..., Node],
) -> None:
    """From review: the channel's redial (after a peer restarts, say) handshook and
    pinned without the connection point, so a peer halted or refused by a policy
    reloaded since had its key pinned again. It passes the point first now."""
    from aralnode.mesh.streams import _dial_once

    hub = make_node("hub")
    peer = make_node("peer", demo=False)
    async with hub, peer:
        assert hub.channels is not None
        seen: list[tuple[str, str]] = []

        def refuse(node_id: str, address: str) -> None:
            seen.append((node_id, address))
            raise PermissionDenied("refused by policy", reason="CONNECTION_REFUSED_BY_POLICY")

        channel = hub.channels.peer(peer.node_id)
        ran, error = await _dial_once(hub.channels, channel, peer.address, None, refuse)
        assert (ran, getattr(error, "reason", None)) == (False, "CONNECTION_REFUSED_BY_POLICY")
        assert seen == [(peer.node_id, peer.address)]
        assert not hub.keyring.is_pinned(peer.node_id)
