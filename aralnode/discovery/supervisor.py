"""The discovery supervisor: hints in from every backend, verified and followed peers out.

- **hints** come from the backends (mDNS sightings, configured addresses, a
  registry) and from peers that dialled us. A hint is never trusted: it only queues
  a dial. A hint that names a node id already connected is not even dialled. A hint
  may carry several addresses (a host announces every interface); they are tried
  in turn (at most ``MAX_DIAL_ADDRESSES``) until one verifies. A *persistent* hint
  (a configured peer) is dialled until reached, with backoff, and again whenever
  the peer is lost.
- **verification**: each dial is ``PeerConnector.connect(address,
  expected_node_id=..., expected_fingerprint=...)``, a signed Hello/Welcome that
  checks the card's key against what the hint claimed. Only then is the peer
  CONNECTED.
- **peers that dialled us**: their handshake proves their key, not that we can
  reach them, and any self-made key can dial. So they are STALE and unreached
  (channels they open are accepted; the table bounds how many) until our own dial
  back verifies them; unreached, they expire after ``peer_timeout_ms`` without
  evidence of life. The dial back goes to the IP their connection came from, at
  their card's ports: never to a host their card names (anyone can sign a card, and
  its hosts may be anywhere in our network).
- **liveness**: every verified peer is followed with ``grpc.health.v1``
  (``HealthFollowers``). A failure, or a health status other than SERVING /
  NOT_SERVING, makes the peer STALE (not used); NOT_SERVING is a goodbye (GONE);
  after ``peer_timeout_ms`` without a good probe it is GONE. A live A2A channel
  counts as evidence. A backend's withdrawal is unauthenticated, so it only
  triggers a Check: a peer that still answers SERVING stays.
- **keys**: a forgotten peer's key is unpinned; when the key ring is full, keys of
  GONE or unknown peers are evicted first.

Bounds: the dial backlog (``MAX_DIAL_BACKLOG``, oldest dropped), the dials running
at once (``DIALERS``), the addresses tried per dial (``MAX_DIAL_ADDRESSES``), the
hint keys remembered (``MAX_HINT_KEYS``, least recently seen dropped), the peer
table (capacity, pending and unreached caps), the pinned keys, each event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aralnode._logs import get_logger
from aralnode.core.envelope import SUPPORTED_VERSIONS
from aralnode.core.errors import AralError, RateLimited, Unauthenticated
from aralnode.core.handshake import VerifiedCard
from aralnode.core.identity import KeyRing
from aralnode.core.peers import (
    OriginFull,
    PeerChange,
    PeerEvent,
    PeerState,
    PeerTableFull,
    PeerTimeouts,
)
from aralnode.discovery.addresses import MAX_DIAL_ADDRESSES, dial_back_addresses, origin
from aralnode.discovery.backend import Announcement, DiscoveryBackend, Hint
from aralnode.discovery.events import PeerEventStream
from aralnode.discovery.liveness import NOT_SERVING, SERVING, HealthFollowers, check
from aralnode.mesh.connector import PeerConnector
from aralnode.service.tasks import TaskSet
from aralnode.transport.grpc_client import NodeClient

log = get_logger("aralnode.discovery")

DIALERS = 8
MAX_DIAL_BACKLOG = 256
MAX_HINT_KEYS = 512
#: The source of a peer that dialled us first (until a backend announces it).
INBOUND_SOURCE = "inbound"
# A GONE peer is forgotten after this many peer timeouts (60 s by default).
FORGET_AFTER_TIMEOUTS = 6


@dataclass(slots=True, frozen=True)
class _Dial:
    addresses: tuple[str, ...]  # tried in turn; the first one keys the backlog
    node_id: str = ""  # claimed (hint, card), not yet verified
    fingerprint: str = ""
    source: str = "mdns"
    refresh: bool = False  # re-handshake a connected peer: its capabilities changed

    @property
    def key(self) -> str:
        return self.addresses[0]


class Supervisor:
    """Turns hints into verified peers and keeps them honest (see the module docstring).

    Args:
        backends: Where hints come from (each also announces this node).
        announcement: What this node announces (read again when it changes).
        live_channels: Node ids with a live A2A channel now (evidence of life).
        dial_back: Dial back peers that dialled us (off with discovery "none").
    """

    def __init__(
        self,
        *,
        node_id: str,
        connector: PeerConnector,
        keyring: KeyRing,
        counters: Counter[str],
        backends: Sequence[DiscoveryBackend],
        announcement: Callable[[], Announcement],
        live_channels: Callable[[], Iterable[str]],
        keepalive_ms: int,
        peer_timeout_ms: int,
        dial_back: bool,
    ) -> None:
        self.node_id = node_id
        self.connector = connector
        self.table = table = connector.table
        self.keyring = keyring
        self.counters = counters
        self.backends = list(backends)
        self.announcement = announcement
        self.live_channels = live_channels
        self.keepalive = keepalive_ms / 1000
        self.dial_back = dial_back
        table.timeouts = PeerTimeouts(
            stale_ms=peer_timeout_ms,
            connected_ms=peer_timeout_ms + keepalive_ms,
            # Listed GONE for a while, then forgotten with all that is kept for it.
            forget_ms=FORGET_AFTER_TIMEOUTS * peer_timeout_ms,
        )
        table.on_forget(self._forgotten)
        keyring.evictable = self._key_evictable
        self.followers = HealthFollowers(
            keepalive=self.keepalive, table=table, owns=self._owns, report=self._report
        )
        self._dials: OrderedDict[str, _Dial] = OrderedDict()
        self._dialing: set[str] = set()
        self._dial_wake = asyncio.Event()
        self._claims: OrderedDict[str, tuple[str, str]] = OrderedDict()  # key -> (id, address)
        # node id -> (source, addresses) of the last hint that named it (bounded too)
        self._announced: OrderedDict[str, tuple[str, tuple[str, ...]]] = OrderedDict()
        self._persistent: set[str] = set()  # addresses dialled until reached
        self._tasks = TaskSet()
        self._streams: weakref.WeakSet[PeerEventStream] = weakref.WeakSet()
        self._unsubscribe: Callable[[], None] | None = None
        self._announcing: asyncio.Task[None] | None = None
        self._announce_again = False
        self._running = False
        self.started = False
        self._stopped = False

    def backend(self, name: str) -> DiscoveryBackend:
        """The backend called ``name``.

        Raises:
            KeyError: no such backend here.
        """
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start supervising peers, then every backend."""
        self._running = True
        self._unsubscribe = self.table.on_change(self._on_change)
        self._tasks.spawn(self._sweep())
        for _ in range(DIALERS):
            self._tasks.spawn(self._dialer())
        announcement = self.announcement()
        for backend in self.backends:
            await backend.start(announcement, self)
        self.started = True  # every backend announced and listening (``/readyz``)

    async def stop(self) -> None:
        """Say goodbye through every backend, stop following peers, end every event
        stream."""
        self._stopped = True
        self.started = False
        for stream in list(self._streams):
            stream.close()
        if not self._running:
            return
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
        for backend in self.backends:
            try:
                await backend.stop()
            except Exception:
                log.exception("stopping the %s backend failed", backend.name)
        if self._announcing is not None:
            self._announcing.cancel()
            await asyncio.gather(self._announcing, return_exceptions=True)
        await self.followers.stop()
        await self._tasks.cancel()

    def events(self, maxsize: int = 256) -> PeerEventStream:
        """A new bounded stream of peer changes (see ``PeerEventStream``)."""
        stream = PeerEventStream(self.table.on_change, maxsize)
        if self._stopped:
            stream.close()
        self._streams.add(stream)
        return stream

    def capabilities_changed(self) -> None:
        """Announce again (bursts, as a module registering ten capabilities, coalesce
        into one update)."""
        if not self._running or not self.backends:
            return
        self._announce_again = True
        if self._announcing is None or self._announcing.done():
            self._announcing = asyncio.ensure_future(self._announce())

    async def _announce(self) -> None:
        while self._announce_again:
            self._announce_again = False
            announcement = self.announcement()
            for backend in self.backends:
                await backend.update(announcement)

    # -- hints (the HintSink of every backend) -----------------------------------------

    def hint(self, hint: Hint) -> None:
        if not self._running:
            return
        if hint.persistent:
            for address in hint.addresses:
                self._persist(address, hint.source)
            return
        address = hint.addresses[0] if hint.addresses else ""
        if hint.node_id == self.node_id:
            self._remember(hint.key, (hint.node_id, address))
            return  # our own announcement, or someone claiming to be us: never dial
        versions = hint.protocol_versions
        if versions and not set(versions) & set(SUPPORTED_VERSIONS):
            self.counters["discovery.announcement_rejected"] += 1
            self._remember(hint.key, ("", address))  # incompatible: nothing to dial
            return
        self._remember(hint.key, (hint.node_id, address))
        if hint.node_id:
            announced = self._announced
            announced.pop(hint.node_id, None)
            announced[hint.node_id] = (hint.source, tuple(hint.addresses))
            if len(announced) > MAX_HINT_KEYS:
                announced.popitem(last=False)
        client = self.connector.clients.get(hint.node_id)
        if client is not None and client.peer is not None and self._is_connected(hint.node_id):
            # Already verified: the only news a hint can bring is new capabilities,
            # and only the address we verified may make us re-handshake.
            if client.address not in hint.addresses:
                return
            if (
                hint.capability_digest
                and client.peer.card.capability_digest != hint.capability_digest
            ):
                self._enqueue(
                    _Dial((client.address,), hint.node_id, hint.fingerprint, hint.source, True)
                )
            self._adopt(hint.node_id)
            return
        addresses = hint.addresses[:MAX_DIAL_ADDRESSES]
        if addresses:
            self._enqueue(_Dial(addresses, hint.node_id, hint.fingerprint, hint.source))

    def _adopt(self, node_id: str) -> None:
        """A peer that dialled us, and that we reached at the address it gave, that a
        backend announces at that address too (before or after): it is that
        backend's peer from now on, whichever end dialled first (a bridge writes its
        LAN's mDNS peers into etcd, ``etcd_bridge``)."""
        announced = self._announced.get(node_id)
        peer = self.table.get(node_id)
        client = self.connector.clients.get(node_id)
        if (
            announced is not None
            and peer is not None
            and client is not None
            and peer.state is PeerState.CONNECTED
            and peer.source == INBOUND_SOURCE
            and client.address in announced[1]
        ):
            self.table.apply(node_id, PeerEvent.DISCOVERED, source=announced[0])

    def rejected(self, key: str, reason: str) -> None:
        if not self._running:
            return
        self.counters["discovery.announcement_rejected"] += 1
        log.debug("ignoring %r: %s", key, reason)

    def withdraw(self, key: str) -> None:
        if not self._running:
            return
        claim = self._claims.pop(key, None)
        if claim is None:
            return
        node_id, address = claim
        self._announced.pop(node_id, None)
        self._dials.pop(address, None)
        client = self.connector.clients.get(node_id)
        peer = self.table.get(node_id)
        if (
            client is None
            or peer is None
            or peer.state not in (PeerState.CONNECTED, PeerState.STALE)
        ):
            return
        self._tasks.spawn(self._confirm_goodbye(key, claim, client))

    def settled(self, key: str) -> bool:
        """Whether looking at ``key`` again is pointless: it names us, a node we will
        not talk to, or a node that is connected. (The mDNS browser re-resolves
        unsettled names with backoff: a missed or failed dial is retried.)"""
        claim = self._claims.get(key)
        if claim is None:
            return False
        node_id = claim[0]
        return node_id in ("", self.node_id) or self._is_connected(node_id)

    def _remember(self, key: str, claim: tuple[str, str]) -> None:
        self._claims.pop(key, None)
        self._claims[key] = claim
        if len(self._claims) > MAX_HINT_KEYS:
            self._claims.popitem(last=False)

    async def _confirm_goodbye(self, key: str, claim: tuple[str, str], client: NodeClient) -> None:
        # Anyone on the LAN can send a goodbye for any name: ask the peer itself.
        node_id = claim[0]
        status, reason = await check(client, timeout=min(self.keepalive, 2.0))
        if not self._owns(node_id, client):
            return
        if status == SERVING:
            self.counters["discovery.goodbye_refuted"] += 1
            log.warning("goodbye for %s, but it answers SERVING: kept", node_id)
            self._remember(key, claim)
            return
        self._drop(node_id, PeerEvent.GOODBYE, f"goodbye; {status} {reason}".strip(), status)

    def inbound(self, verified: VerifiedCard, transport_peer: str, fields: dict[str, Any]) -> None:
        """A peer dialled us and proved its key (the server's Handshake).

        It is kept STALE and unreached (bounded by the table's ``max_inbound``, and
        ``max_inbound_per_origin`` per address it came from; when full it takes the
        place of an ungranted unreached peer of the best-represented address) and,
        with ``dial_back``, dialled back; only that dial makes it CONNECTED.

        Raises:
            RateLimited: too many peers that dialled us are still unreached, from its
                address (``TOO_MANY_PEERS_FROM_ADDRESS``) or granted ones everywhere
                (the handshake is refused; nothing of this peer is kept).
        """
        node_id = verified.node_id
        table = self.table
        current = table.get(node_id)
        if current is not None and (
            current.state is PeerState.CONNECTED
            or (current.state is PeerState.STALE and current.reached)
        ):
            table.apply(node_id, PeerEvent.INBOUND)  # evidence of life, nothing more
            return
        card = [e.address for e in verified.card.endpoints if e.protocol == "grpc"]
        candidates = dial_back_addresses(card, transport_peer)
        fields = {
            **fields,
            "address": candidates[0] if candidates else "",
            "origin": origin(transport_peer),
            "health": "UNKNOWN",
            "error": "it dialled us; not reached by us yet",
        }
        evicted = table.inbound_evicted
        try:
            table.apply(node_id, PeerEvent.INBOUND, **fields)
        except PeerTableFull as exc:
            self.counters["discovery.inbound_refused"] += 1
            reason = "TOO_MANY_PEERS_FROM_ADDRESS" if isinstance(exc, OriginFull) else None
            raise RateLimited(str(exc), reason=reason or "TOO_MANY_UNREACHED_PEERS") from None
        self.counters["discovery.inbound_evicted"] += table.inbound_evicted - evicted
        if self.dial_back and self._running and candidates:
            self._enqueue(
                _Dial(tuple(candidates), node_id, verified.key.fingerprint, INBOUND_SOURCE)
            )

    # -- dialling ----------------------------------------------------------------------

    def _enqueue(self, dial: _Dial) -> None:
        if dial.key in self._dialing and not dial.refresh:
            return
        self._dials.pop(dial.key, None)
        self._dials[dial.key] = dial
        if len(self._dials) > MAX_DIAL_BACKLOG:
            self._dials.popitem(last=False)
            self.counters["discovery.dial_dropped"] += 1
        self._dial_wake.set()

    def _is_connected(self, node_id: str) -> bool:
        peer = self.table.get(node_id)
        return (
            peer is not None
            and peer.state is PeerState.CONNECTED
            and node_id in self.connector.clients
        )

    async def _dialer(self) -> None:
        while True:
            while not self._dials:
                self._dial_wake.clear()
                await self._dial_wake.wait()
            _, dial = self._dials.popitem(last=False)
            for address in dial.addresses[:MAX_DIAL_ADDRESSES]:
                if dial.node_id and not dial.refresh and self._is_connected(dial.node_id):
                    break
                if address in self._dialing:
                    continue
                if await self._dial_one(address, dial):
                    break

    async def _dial_one(self, address: str, dial: _Dial) -> bool:
        """One handshake; True if it verified. Never raises but CancelledError: a
        dialer that died would leave hints unanswered for good."""
        self._dialing.add(address)
        try:
            await self.connector.connect(
                address,
                expected_node_id=dial.node_id,
                expected_fingerprint=dial.fingerprint,
                source=dial.source,
            )
            if dial.source == INBOUND_SOURCE:  # announced meanwhile, maybe
                self._adopt(dial.node_id)
            return True
        except Unauthenticated as exc:
            # Someone announced an id (or fingerprint) its key does not prove.
            self.counters["discovery.handshake_rejected"] += 1
            log.warning("rejected %s claiming %s: %s", address, dial.node_id, exc.message)
        except (AralError, OSError) as exc:
            self.counters["discovery.dial_failed"] += 1
            log.info("dial %s (%s) failed: %s", address, dial.node_id or "?", exc)
        except Exception:
            self.counters["discovery.dial_error"] += 1
            log.exception("dial %s (%s) failed unexpectedly", address, dial.node_id or "?")
        finally:
            self._dialing.discard(address)
        return False

    def _persist(self, address: str, source: str) -> None:
        self._persistent.add(address)
        self._tasks.spawn(self._dial_until_reached(address, source), f"dial {address}")

    async def _dial_until_reached(self, address: str, source: str) -> None:
        """Dial a configured peer until it verifies: backoff doubling to 10 s with
        jitter; the first failure, and each new reason, is a warning."""
        delay = 0.2
        last = ""
        while True:
            try:
                await self.connector.connect(address, source=source)
                if last:
                    log.info("static peer %s reached", address)  # a recovery: info
                return
            except (AralError, OSError) as exc:
                said = str(exc) or type(exc).__name__
                level = logging.INFO if said == last else logging.WARNING
                log.log(level, "static peer %s: %s; retrying in %.1fs", address, said, delay)
                last = said
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
            delay = min(delay * 2, 10.0)

    # -- liveness --------------------------------------------------------------------

    def _owns(self, node_id: str, client: NodeClient) -> bool:
        return self._running and self.connector.clients.get(node_id) is client

    def _on_change(self, change: PeerChange) -> None:
        peer = change.peer
        if change.event is not PeerEvent.VERIFIED or peer.state is not PeerState.CONNECTED:
            return
        if change.before is not PeerState.CONNECTED:
            log.info(
                "peer %s (%s) connected at %s via %s",
                peer.name,
                peer.key,
                peer.address,
                peer.source,
            )
        client = self.connector.clients.get(peer.key)
        if client is not None:
            self.followers.follow(peer.key, client)

    def _report(self, node_id: str, status: str, reason: str) -> None:
        table = self.table
        peer = table.get(node_id)
        if peer is None or peer.state not in (PeerState.CONNECTED, PeerState.STALE):
            return
        if status == SERVING:
            if peer.state is PeerState.STALE:
                table.apply(node_id, PeerEvent.HEALTHY, health=SERVING, error="")
                log.info("peer %s (%s) is healthy again", peer.name, node_id)
            else:
                table.touch(node_id)
        elif status == NOT_SERVING:
            # An aralnode says NOT_SERVING only once it drains for good (grpc's
            # enter_graceful_shutdown is permanent), and it says so on the channel
            # we verified: that is a goodbye, better authenticated than mDNS's.
            self._drop(node_id, PeerEvent.GOODBYE, "shutting down", health=NOT_SERVING)
        # Anything else (unreachable, UNKNOWN, SERVICE_UNKNOWN) is not a goodbye:
        # the peer is unhealthy, STALE, and expires unless it recovers.
        elif peer.state is PeerState.CONNECTED or peer.health != status:
            table.apply(node_id, PeerEvent.UNHEALTHY, health=status, error=reason)
            log.info("peer %s (%s) is stale: health %s %s", peer.name, node_id, status, reason)

    async def _sweep(self) -> None:
        interval = min(0.25, self.keepalive / 4)
        while True:
            await asyncio.sleep(interval)
            self.sweep()

    def sweep(self) -> None:
        """Count live channels as evidence, then expire what has none."""
        table = self.table
        for node_id in self.live_channels():
            peer = table.get(node_id)
            if peer is not None and peer.state in (PeerState.CONNECTED, PeerState.STALE):
                table.touch(node_id)
        for change in table.expire():
            if change.peer.state is PeerState.GONE:
                log.info(
                    "peer %s (%s) expired: %s", change.peer.name, change.peer.key, change.peer.error
                )
                self._release(change.peer.key, change.peer.address)

    # -- keys and release ----------------------------------------------------------------

    def _forgotten(self, key: str) -> None:
        # The table forgot a peer (GONE long enough, or evicted): forget its key too.
        if not key.startswith("addr:") and key not in self.connector.clients:
            self.keyring.unpin(key)

    def _key_evictable(self, key_id: str) -> bool:
        if key_id in self.connector.clients:
            return False
        peer = self.table.get(key_id)
        return peer is None or peer.state is PeerState.GONE

    def _drop(self, node_id: str, event: PeerEvent, reason: str, health: str = "") -> None:
        table = self.table
        peer = table.get(node_id)
        if peer is None:
            return
        with contextlib.suppress(ValueError):
            table.apply(node_id, event, error=reason, health=health or peer.health)
        log.info("peer %s (%s) dropped: %s", peer.name, node_id, reason)
        self._release(node_id, peer.address)

    def _release(self, node_id: str, address: str) -> None:
        self.followers.cancel(node_id)
        client = self.connector.release(node_id)
        if client is not None:
            self._tasks.spawn(client.close())
        if address in self._persistent and self._running:
            # A configured peer is dialled until it comes back.
            self._tasks.spawn(self._dial_until_reached(address, "static"), f"dial {address}")


__all__ = ["DIALERS", "MAX_DIAL_BACKLOG", "MAX_HINT_KEYS", "Supervisor"]
