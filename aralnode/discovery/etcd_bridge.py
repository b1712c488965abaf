"""Bridge mode (``etcd_bridge``, discovery "mdns,etcd"): one node joins its LAN and
the registry for the nodes that speak only one of them.

- **LAN to etcd.** A peer this node found on its LAN by mDNS and verified by its
  own dial (``PeerInfo.reached``) is written into etcd under its node id, with
  ``via`` naming this bridge, on this node's lease. The write is create-only (an
  etcd transaction on the key's create revision): a node that registers itself, or
  another bridge that wrote first, holds the key, and nothing is overwritten. When
  the peer is gone, the key is deleted if it still holds what this bridge wrote.
- **etcd to LAN.** An etcd entry of a node that is not on this LAN (not a peer
  found here by mDNS) is announced on the LAN by mDNS with ``via`` in its TXT, so
  the LAN's mDNS-only nodes dial it (its addresses must be routable from the LAN);
  it is withdrawn (an mDNS goodbye) when the entry goes.

**No loops.** A re-announcement is never re-announced: a peer found through a
bridged mDNS record has source ``mdns-bridge`` and is not written to etcd, an entry
this bridge wrote is not announced back on the LAN, and an entry is never
announced on the LAN it came from. Each key has one writer in etcd (create-only),
so two bridges of one LAN do not echo each other either. Whatever is announced is
a hint: every node dials and verifies it like any other.

Bounds: at most ``MAX_BRIDGED`` nodes each way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aralnode._logs import get_logger
from aralnode.core.peers import PeerChange, PeerInfo, PeerState
from aralnode.discovery.backend import Announcement, Hint, HintSink
from aralnode.discovery.etcd import EtcdBackend, encode
from aralnode.discovery.mdns import MdnsBackend
from aralnode.discovery.supervisor import Supervisor

log = get_logger("aralnode.discovery")

MAX_BRIDGED = 256


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class EtcdBridge:
    """The bridge (see the module docstring); a discovery backend of its own, started
    after the mDNS and etcd backends it joins."""

    name = "etcd-bridge"

    def __init__(self, etcd: EtcdBackend, mdns: MdnsBackend, node_id: str) -> None:
        self.etcd, self.mdns, self.node_id = etcd, mdns, node_id
        self.into_etcd: dict[str, bytes] = {}  # node id -> the value this bridge wrote
        self.onto_lan: dict[str, Any] = {}  # node id -> its mDNS record here
        self._supervisor: Supervisor | None = None
        self._unsubscribe: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, announcement: Announcement, sink: HintSink) -> None:
        if not isinstance(sink, Supervisor):
            raise TypeError("the etcd bridge runs under the discovery supervisor")
        self._supervisor = sink
        self._unsubscribe = sink.table.on_change(self._on_change)
        self.etcd.on_hint = self._from_etcd
        self.etcd.on_withdraw = self._etcd_gone
        self.etcd.on_registered = self._registered
        if self.etcd.registered.is_set():
            self._registered()

    async def update(self, announcement: Announcement) -> None:
        """The bridge announces no record of its own."""

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self.etcd.on_hint = self.etcd.on_withdraw = self.etcd.on_registered = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for info in self.onto_lan.values():
            await self.mdns.withdraw_other(info)
        self.onto_lan.clear()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- LAN to etcd ---------------------------------------------------------------

    def _on_change(self, change: PeerChange) -> None:
        peer = change.peer
        if peer.state is PeerState.CONNECTED:
            self._maybe_to_etcd(peer)
        elif peer.state is PeerState.GONE and peer.node_id in self.into_etcd:
            value = self.into_etcd.pop(peer.node_id)
            self._spawn(self.etcd.delete_if(peer.node_id, value))

    def _registered(self) -> None:
        """A new lease (first contact, or back after an outage): what this bridge
        wrote went with the old one, and what it could not write while etcd was away
        was dropped; every verified LAN peer is written again."""
        self.into_etcd.clear()
        supervisor = self._supervisor
        for peer in supervisor.table.connected() if supervisor is not None else ():
            self._maybe_to_etcd(peer)

    def _maybe_to_etcd(self, peer: PeerInfo) -> None:
        """Write ``peer`` into etcd if it is a LAN peer this node verified itself
        (not one a bridge announced here) and not written already."""
        if peer.source != self.mdns.name or not peer.reached or not peer.node_id:
            return
        if peer.node_id not in self.into_etcd and len(self.into_etcd) < MAX_BRIDGED:
            self._spawn(self._to_etcd(peer))

    def _announcement_of(self, peer: PeerInfo) -> Announcement | None:
        where = _split(peer.address)
        supervisor = self._supervisor
        client = supervisor.connector.clients.get(peer.node_id) if supervisor else None
        card = client.peer.card if client is not None and client.peer is not None else None
        if where is None or card is None:
            return None
        return Announcement(
            node_id=peer.node_id,
            fingerprint=peer.key_fingerprint,
            protocol_versions=(peer.protocol_version,) if peer.protocol_version else (),
            grpc_port=where[1],
            capability_digest=card.capability_digest,
            hosts=(where[0],),
        )

    async def _to_etcd(self, peer: PeerInfo) -> None:
        announcement = self._announcement_of(peer)
        if announcement is None:
            return
        value = encode(announcement, via=self.node_id)
        self.into_etcd[peer.node_id] = value
        if await self.etcd.put_if_absent(peer.node_id, value):
            log.info("bridge: %s re-announced into etcd", peer.node_id)
        else:
            self.into_etcd.pop(peer.node_id, None)  # held by itself or another bridge

    # -- etcd to LAN -----------------------------------------------------------------

    def _on_lan(self, node_id: str) -> bool:
        """Whether ``node_id`` was found on this LAN (no need to announce it here)."""
        supervisor = self._supervisor
        peer = supervisor.table.by_node_id(node_id) if supervisor is not None else None
        return peer is not None and peer.source == self.mdns.name

    def _from_etcd(self, hint: Hint, via: str) -> None:
        node_id = hint.node_id
        if via == self.node_id or node_id in self.onto_lan or self._on_lan(node_id):
            return
        if len(self.onto_lan) >= MAX_BRIDGED or not hint.fingerprint:
            return
        where = _split(hint.addresses[0])
        if where is None:
            return
        announcement = Announcement(
            node_id=node_id,
            fingerprint=hint.fingerprint,
            protocol_versions=hint.protocol_versions,
            grpc_port=where[1],
            capability_digest=hint.capability_digest,
            hosts=(where[0],),
            via=self.node_id,
        )
        self.onto_lan[node_id] = None  # reserved while the record is made
        self._spawn(self._onto_lan(announcement))

    async def _onto_lan(self, announcement: Announcement) -> None:
        try:
            info = await self.mdns.announce_other(announcement)
        except Exception:
            log.warning("bridge: could not announce %s on the LAN", announcement.node_id)
            info = None
        if info is None:
            self.onto_lan.pop(announcement.node_id, None)
            return
        self.onto_lan[announcement.node_id] = info
        log.info("bridge: %s announced on the LAN from etcd", announcement.node_id)

    def _etcd_gone(self, key: str) -> None:
        node_id = key.rpartition("/")[2]
        info = self.onto_lan.pop(node_id, None)
        if info is not None:
            self._spawn(self.mdns.withdraw_other(info))
        # Another bridge's entry for one of our LAN's peers went: write it ourselves.
        supervisor = self._supervisor
        peer = supervisor.table.by_node_id(node_id) if supervisor is not None else None
        if peer is not None and peer.state is PeerState.CONNECTED:
            self._maybe_to_etcd(peer)


__all__ = ["MAX_BRIDGED", "EtcdBridge"]
