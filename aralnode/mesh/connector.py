"""The peer connector: dial an address, verify the node there, keep its client.

``PeerConnector.connect`` is the one way a peer becomes verified: a signed
Hello/Welcome handshake whose card must carry the key the caller expected (a node id
from a hint, a TXT fingerprint), after which -- once the connection point admitted
it, and only then -- its key is pinned, the peer's client is kept (one per node id)
and its channel is dialled. Peers that dialled *us* prove their key in
our handshake; their cards are kept too, so their capabilities can be listed before
our own dial reaches them.

Built from explicit parts (identity, key ring, peer table, the card to show), not
from the node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from aralnode import _proto as pb
from aralnode.core.clock import Clock
from aralnode.core.errors import AralError, KeyMismatch, PeerNotFound, RateLimited, Unavailable
from aralnode.core.handshake import DEFAULT_CARD_LIMITS, CardLimits, VerifiedCard
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.peers import PeerEvent, PeerInfo, PeerState, PeerTable, PeerTableFull
from aralnode.transport.grpc_client import NodeClient
from aralnode.transport.tls_grpc import ClientTls

# A dial that ends with these leaves no entry: the address is this node itself, or
# the peer was refused at the connection point (never in the peer table).
_NOT_KEPT = frozenset({"SELF", "HALTED", "CONNECTION_REFUSED_BY_POLICY"})


def card_fields(verified: VerifiedCard, address: str, version: str, source: str) -> dict[str, Any]:
    """The peer table fields a verified card gives."""
    card = verified.card
    return {
        "address": address,
        "node_id": card.node_id,
        "name": card.name,
        "health": "SERVING",
        "capability_ids": tuple(c.id for c in card.capabilities),
        "protocol_version": version,
        "key_fingerprint": verified.key.fingerprint,
        "source": source,
        "error": "",
    }


class PeerConnector:
    """Verified peers' clients, and the dial that makes a peer verified.

    Args:
        card: Our signed card, shown in every handshake.
        card_limits: What a peer's card may carry (past it the dial fails).
        on_verified: Called with (node id, address) once a dial verified a peer
            (the node opens its channel there).
        tls: Dial over TLS; the client kept checks the peer's certificate names
            the node id its handshake verified (``transport.tls_grpc``).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        keyring: KeyRing,
        clock: Clock,
        table: PeerTable,
        card: Callable[[], pb.SignedNodeCard],
        max_message_bytes: int,
        card_limits: CardLimits = DEFAULT_CARD_LIMITS,
        on_verified: Callable[[str, str], None] = lambda node_id, address: None,
        tls: ClientTls | None = None,
        admit: Callable[[str, str], None] | None = None,
    ) -> None:
        self.identity = identity
        self.admit = admit  # the connection injection point (``service.connections``)
        self.keyring = keyring
        self.clock = clock
        self.table = table
        self.card = card
        self.max_message_bytes = max_message_bytes
        self.card_limits = card_limits
        self.on_verified = on_verified
        self.tls = tls
        self.clients: dict[str, NodeClient] = {}
        self._inbound_cards: dict[str, VerifiedCard] = {}  # cards of peers that dialled us
        table.on_forget(self._forget_card)

    async def connect(
        self,
        address: str,
        *,
        expected_node_id: str = "",
        expected_fingerprint: str = "",
        source: str = "static",
    ) -> PeerInfo:
        """Dial ``address``, verify its card in a handshake, and keep it as a peer.

        Until verified the peer is keyed by its address, never by the id a hint
        claims, so a liar's failed handshake cannot touch the real peer's entry.

        Raises:
            KeyMismatch: the card's key is not ``expected_node_id``'s, or does not
                have ``expected_fingerprint`` (e.g. from an mDNS TXT record).
            Unavailable: ``DIAL_IN_PROGRESS``, another dial to ``address`` is under way.
            RateLimited: ``PEER_TABLE_FULL``, no room for another unverified peer.
        """
        key = f"addr:{address}"
        self._start_dial(key, address, source)
        try:
            client, verified = await self._dial(address, expected_node_id, expected_fingerprint)
            if self.tls is not None and not expected_node_id:
                # That dial's TLS checked the address; the client kept checks the
                # node id its handshake verified (the certificate must name it).
                await client.close()
                client, verified = await self._dial(address, verified.node_id, expected_fingerprint)
            await self._admit(client, verified, address)
        except BaseException as exc:
            if isinstance(exc, AralError) and exc.reason in _NOT_KEPT:
                self.table.remove(key)
            else:
                with contextlib.suppress(ValueError):  # the entry may have expired meanwhile
                    self.table.apply(key, PeerEvent.FAILED, error=str(exc) or type(exc).__name__)
            raise
        old = self.clients.pop(verified.node_id, None)
        if old is not None:
            await old.close()
        self.clients[verified.node_id] = client
        self.on_verified(verified.node_id, address)
        self.table.rekey(key, verified.node_id)
        return self.table.apply(
            verified.node_id,
            PeerEvent.VERIFIED,
            **card_fields(verified, address, client.version, source),
        )

    async def _admit(self, client: NodeClient, verified: VerifiedCard, address: str) -> None:
        """The last checks of a verified dial, then its key pinned: a dial that fails
        any check, or that the connection point refuses, pins nothing (so a refused
        peer's signed calls never count as a handshake-verified node's). On failure
        the client is closed."""
        try:
            if self.tls is not None:  # its certificate's key is its card's (see tls_grpc)
                await self.tls.check_server(address, verified.node_id)
            if self.admit is not None:  # verified; refused by policy or halted: kept nowhere
                self.admit(verified.node_id, address)
            self.keyring.pin(verified.key)  # bounded: KeyRingFull
        except BaseException:
            await client.close()
            raise

    async def _dial(
        self, address: str, expected_node_id: str, expected_fingerprint: str
    ) -> tuple[NodeClient, VerifiedCard]:
        client = NodeClient(
            address,
            identity=self.identity,
            keyring=self.keyring,
            clock=self.clock,
            max_message_bytes=self.max_message_bytes,  # as its server allows
            card_limits=self.card_limits,
            tls=self.tls,
            tls_node_id=expected_node_id,
        )
        try:
            return client, await self._verify(client, expected_node_id, expected_fingerprint)
        except BaseException:  # also on cancel: never leak the channel
            await client.close()
            raise

    def _start_dial(self, key: str, address: str, source: str) -> None:
        table = self.table
        existing = table.get(key)
        if existing is not None and existing.state is PeerState.HANDSHAKING:
            raise Unavailable(  # another dial owns the entry
                f"a handshake with {address} is already under way", reason="DIAL_IN_PROGRESS"
            )
        try:
            if existing is None or existing.state is PeerState.GONE:
                table.apply(key, PeerEvent.DISCOVERED, address=address, source=source)
            table.apply(key, PeerEvent.HANDSHAKE_STARTED)
        except PeerTableFull as exc:
            raise RateLimited(str(exc), reason="PEER_TABLE_FULL") from None

    async def _verify(
        self, client: NodeClient, expected_node_id: str, expected_fingerprint: str
    ) -> VerifiedCard:
        # Not pinned yet: only once every check and the connection point passed.
        verified = await client.handshake(self.card(), expected_node_id=expected_node_id, pin=False)
        if expected_fingerprint and verified.key.fingerprint != expected_fingerprint:
            raise KeyMismatch(
                "the node's key does not have the announced fingerprint",
                reason="FINGERPRINT_MISMATCH",
            )
        if verified.node_id == self.identity.node_id:
            raise Unavailable("that address is this node itself", reason="SELF")
        return verified

    def _forget_card(self, key: str) -> None:
        self._inbound_cards.pop(key, None)

    def remember_inbound(self, verified: VerifiedCard) -> None:
        """Keep the card of a peer that dialled us (until the table forgets it): its
        capabilities are listed even before our own dial reaches it, as calls to it
        already go."""
        self._inbound_cards[verified.node_id] = verified

    def peer_card(self, node_id: str) -> VerifiedCard | None:
        """The card a peer showed in a handshake: ours to it, else its own to us."""
        client = self.clients.get(node_id)
        if client is not None and client.peer is not None:
            return client.peer
        return self._inbound_cards.get(node_id)

    def peer_capabilities(self, node_id: str) -> list[pb.Capability]:
        """A verified peer's capabilities, as its card listed them.

        Raises:
            PeerNotFound: no card of ``node_id``.
        """
        verified = self.peer_card(node_id)
        if verified is None:
            raise PeerNotFound(f"no verified peer {node_id!r}")
        return list(verified.card.capabilities)

    def release(self, node_id: str) -> NodeClient | None:
        """Forget the client of ``node_id`` (the caller closes it)."""
        return self.clients.pop(node_id, None)

    async def close(self) -> None:
        """Close every client."""
        for client in list(self.clients.values()):
            await client.close()
        self.clients.clear()


__all__ = ["PeerConnector", "card_fields"]
