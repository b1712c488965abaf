"""The discovery backend interface: hints in, withdrawals out.

A backend tells the ``Supervisor`` where other nodes *might* be (``Hint``) and when
one it told of is gone (``withdraw``); it also announces this node where the
mechanism has such a thing (an mDNS record, a registry key). A backend never makes
a peer: every hint is only "try a handshake here", verified by the supervisor's
dial, so a forged entry in any registry never yields a peer.

Backends: ``mdns`` (``aralnode.discovery.mdns``), ``static`` (configured addresses).
A new one (a registry such as etcd) is one new module implementing
``DiscoveryBackend``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(slots=True, frozen=True)
class Announcement:
    """What a node says about itself to discovery (never trusted by the receiver).

    Attributes:
        hosts: Addresses peers may reach it at (the card's hosts).
        via: The node id of the bridge that re-announced it, "" when a node speaks
            for itself (``aralnode.discovery.etcd_bridge``: never bridged again).
        a2a_card: The path of its A2A Agent Card on its HTTP port ("" when it
            serves none): ``http(s)://<host>:<http_port><a2a_card>``.
    """

    node_id: str
    fingerprint: str
    protocol_versions: tuple[str, ...]
    grpc_port: int
    capability_digest: str
    http_port: int | None = None
    hosts: tuple[str, ...] = ()
    via: str = ""
    a2a_card: str = ""


@dataclass(slots=True, frozen=True)
class Hint:
    """Somewhere a node might be.

    Attributes:
        key: The backend's own name for what it saw (an mDNS instance, a registry
            key, a configured address); a withdrawal names the same key.
        addresses: ``host:port`` candidates, tried in turn (best first).
        node_id / fingerprint: What the hint claims; the handshake checks both.
        protocol_versions: What it claims to speak (empty: unknown, try anyway).
        capability_digest: Its capabilities' digest (a change on a connected peer
            means its card changed: the supervisor handshakes again).
        source: The backend's name, shown on the peer.
        persistent: Dial until reached, and again whenever it is lost (configured
            peers); other hints are dialled once per sighting.
    """

    key: str
    addresses: tuple[str, ...]
    node_id: str = ""
    fingerprint: str = ""
    protocol_versions: tuple[str, ...] = ()
    capability_digest: str = ""
    source: str = ""
    persistent: bool = False


class HintSink(Protocol):
    """Where a backend reports (the supervisor). Called on the event loop."""

    def hint(self, hint: Hint) -> None:
        """A node might be at ``hint.addresses``."""

    def withdraw(self, key: str) -> None:
        """What ``key`` named is gone (unauthenticated: a hint too)."""

    def rejected(self, key: str, reason: str) -> None:
        """Something was seen under ``key`` that is not a usable node (counted)."""

    def settled(self, key: str) -> bool:
        """Whether looking at ``key`` again is pointless (it names us, a node we will
        not talk to, or one that is connected)."""


class DiscoveryBackend(Protocol):
    """One way of finding nodes (see the module docstring)."""

    name: str

    async def start(self, announcement: Announcement, sink: HintSink) -> None:
        """Announce this node and begin reporting hints; returns promptly."""

    async def update(self, announcement: Announcement) -> None:
        """This node's announcement changed (its capabilities)."""

    async def stop(self) -> None:
        """Say goodbye where the mechanism can, and stop reporting."""


__all__ = ["Announcement", "DiscoveryBackend", "Hint", "HintSink"]
