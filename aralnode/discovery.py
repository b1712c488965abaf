"""Discovery and peer supervision: mDNS hints in, verified and followed peers out.

The driver sits at the node level and wires three things together:

- **hints**: mDNS sightings (``aralnode.transport.mdns``), static ``--peer``
  addresses, and peers that dialled us. A hint is never trusted: it only queues a
  dial. A TXT record that names a node id already connected is not even dialled.
  A hint may carry several addresses (a host announces every interface); they are
  tried in turn (at most ``MAX_DIAL_ADDRESSES``) until one verifies.
- **verification**: each dial is ``Node.connect(address, expected_node_id=...,
  expected_fingerprint=...)``, a signed Hello/Welcome that checks the card's key
  against the id and the TXT fingerprint. Only then is the peer CONNECTED.
- **peers that dialled us**: their handshake proves their key, not that we can
  reach them, and any self-made key can dial. So they are STALE and unreached
  (channels they open are accepted; at most ``max_inbound`` of them) until our own
  dial back verifies them; unreached, they expire after ``peer_timeout_ms`` without
  evidence of life. The dial back goes to their card's addresses, with a wildcard or
  loopback host replaced by the address their connection came from.
- **liveness**: every verified peer is followed with ``grpc.health.v1`` — a Watch
  (a draining peer says NOT_SERVING at once: it is GONE) plus a Check every
  ``keepalive_ms`` (a silent peer fails it). A failure, or a health status other
  than SERVING/NOT_SERVING, makes the peer STALE (not used); after
  ``peer_timeout_ms`` without a good probe it is GONE, channel closed. A CONNECTED
  peer without evidence for keepalive + timeout (no working follower) is GONE too.
  A live A2A channel counts as evidence. An mDNS goodbye is unauthenticated, so it
  only triggers a Check: a peer that still answers SERVING stays.
- **keys**: a forgotten peer's key is unpinned; when the key ring is full, keys of
  GONE or unknown peers are evicted first.

Bounds: the dial backlog (``MAX_DIAL_BACKLOG``, oldest dropped), the dials running
at once (``DIALERS``), the addresses tried per dial (``MAX_DIAL_ADDRESSES``), the
instance→node map (``MAX_INSTANCES``, least recently seen dropped), the peer table
(capacity, pending and unreached caps), the pinned keys, and each event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aralnode.core.addresses import join_host_port
from aralnode.core.envelope import SUPPORTED_VERSIONS
from aralnode.core.errors import AralError, RateLimited, Unauthenticated
from aralnode.core.peers import PeerChange, PeerEvent, PeerState, PeerTableFull, PeerTimeouts
from aralnode.core.tasks import TaskSet
from aralnode.transport.mdns import (
    Announcement,
    MdnsEvent,
    MdnsService,
    Rejection,
    Sighting,
    Withdrawal,
    instance_label,
    lan_addresses,
)

if TYPE_CHECKING:
    from aralnode.config import NodeConfig
    from aralnode.core.handshake import VerifiedCard
    from aralnode.node import Node
    from aralnode.transport.grpc_client import NodeClient

__all__ = ["Discovery", "PeerEventStream", "advertised_hosts"]

log = logging.getLogger("aralnode.discovery")

DIALERS = 8
MAX_DIAL_BACKLOG = 256
MAX_DIAL_ADDRESSES = 4
MAX_INSTANCES = 512
MAX_ADVERTISED = 8
SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"
WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - comparing, not binding


def advertised_hosts(config: NodeConfig) -> list[str]:
    """The hosts at which peers can reach a node with this config (never empty).

    A specific bind host is itself. On a wildcard bind: the ``interfaces`` chosen,
    else every non-loopback interface address (IPv6 too on ``::``), at most
    ``MAX_ADVERTISED``; loopback only if the host has nothing else.
    """
    host = config.bind_host
    if host not in WILDCARDS:
        return [host]
    hosts = list(config.interfaces) or lan_addresses(ipv6=host == "::")
    return hosts[:MAX_ADVERTISED] or ["127.0.0.1"]


def transport_host(peer: str) -> str:
    """The IP in a grpc peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``,
    percent-encoded or not); "" for anything else."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


def dial_back_addresses(card_addresses: list[str], transport_peer: str) -> list[str]:
    """Where to dial back a peer that dialled us, best first (at most
    ``MAX_DIAL_ADDRESSES``).

    Its card's addresses, the one its connection came from first; a card host that
    is a wildcard, or loopback while the connection is not, is replaced by the
    connection's IP (a node bound to 0.0.0.0 used to list 127.0.0.1).
    """
    seen = transport_host(transport_peer)
    seen_ip = _ip(seen)
    matching: list[str] = []
    others: list[str] = []
    ports: list[int] = []
    for address in card_addresses:
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            continue
        port = int(port_text)
        ports.append(port)
        ip = _ip(host)
        replace = (
            ip is not None
            and seen_ip is not None
            and (ip.is_unspecified or (ip.is_loopback and not seen_ip.is_loopback))
        )
        if replace or (ip is not None and ip == seen_ip):
            matching.append(join_host_port(seen, port))
        elif ip is None or not ip.is_unspecified:
            others.append(join_host_port(host, port))
    if seen_ip is not None and not seen_ip.is_unspecified and ports and not matching:
        others.append(join_host_port(seen, ports[0]))  # last resort: where it came from
    return list(dict.fromkeys([*matching, *others]))[:MAX_DIAL_ADDRESSES]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class MdnsPort(Protocol):
    """What the driver needs from mDNS: ``MdnsService``, or a fake in tests."""

    async def start(
        self, announcement: Announcement, on_event: Callable[[MdnsEvent], None]
    ) -> None: ...

    async def update(self, announcement: Announcement) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True, frozen=True)
class _Dial:
    addresses: tuple[str, ...]  # tried in turn; the first one keys the backlog
    node_id: str = ""  # claimed (TXT, card), not yet verified
    fingerprint: str = ""
    source: str = "mdns"
    refresh: bool = False  # re-handshake a connected peer: its capabilities changed

    @property
    def key(self) -> str:
        return self.addresses[0]


class PeerEventStream:
    """An async iterator over peer changes, bounded.

    When the consumer falls ``maxsize`` changes behind, the oldest are discarded
    and counted in ``dropped`` (``Node.peers()`` then gives the current truth).
    It ends when ``close()`` is called or the node stops.

    Example::

        async with node.peer_events() as events:
            async for change in events:
                print(change.event, change.peer.name, change.peer.state.name)
    """

    def __init__(
        self, subscribe: Callable[[Callable[[PeerChange], None]], Callable[[], None]], maxsize: int
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._queue: deque[PeerChange] = deque()
        self._maxsize = maxsize
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self._unsubscribe = subscribe(self._push)

    def _push(self, change: PeerChange) -> None:
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(change)
        self._wake.set()

    def close(self) -> None:
        """Stop listening; the iteration ends after the changes already queued."""
        if not self._closed:
            self._closed = True
            self._unsubscribe()
            self._wake.set()

    def __aiter__(self) -> PeerEventStream:
        return self

    async def __anext__(self) -> PeerChange:
        while not self._queue:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()

    async def __aenter__(self) -> PeerEventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Discovery:
    """Turns hints into verified peers and keeps them honest (see the module docstring).

    Args:
        node: The node it serves (its config, identity, table and ``connect``).
        mdns: The mDNS adapter; by default an ``MdnsService`` when the node's
            discovery mode is "mdns", none otherwise. ``node.discovery.mdns`` may
            be replaced before the node starts (tests use a fake).
    """

    def __init__(self, node: Node, mdns: MdnsPort | None = None) -> None:
        self.node = node
        cfg = node.config
        self.mode = cfg.discovery
        self.mdns = mdns
        self.keepalive = cfg.keepalive_ms / 1000
        node.peer_table.timeouts = PeerTimeouts(
            stale_ms=cfg.peer_timeout_ms, connected_ms=cfg.peer_timeout_ms + cfg.keepalive_ms
        )
        node.peer_table.on_forget(self._forgotten)
        node.keyring.evictable = self._key_evictable
        self.counters = node.pipeline.counters
        self._dials: OrderedDict[str, _Dial] = OrderedDict()
        self._dialing: set[str] = set()
        self._dial_wake = asyncio.Event()
        self._instances: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._followers: dict[str, tuple[NodeClient, asyncio.Task[None]]] = {}
        self._tasks = TaskSet()
        self._streams: weakref.WeakSet[PeerEventStream] = weakref.WeakSet()
        self._unsubscribe: Callable[[], None] | None = None
        self._txt_task: asyncio.Task[None] | None = None
        self._txt_dirty = False
        self._running = False
        self._stopped = False
        node.registry.on_change(self._capabilities_changed)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start supervising peers and, in "mdns" mode, announce and browse."""
        self._running = True
        self._unsubscribe = self.node.peer_table.on_change(self._on_change)
        self._tasks.spawn(self._sweep())
        for _ in range(DIALERS):
            self._tasks.spawn(self._dialer())
        if self.mode == "mdns":
            if self.mdns is None:
                cfg = self.node.config
                self.mdns = MdnsService(
                    label=instance_label(cfg.name, self.node.node_id),
                    host_label=f"aral-{self.node.node_id[:16]}",
                    addresses=self._addresses(),
                    interfaces=cfg.interfaces,
                    settled=self.settled,
                )
            await self.mdns.start(self.announcement(), self._on_mdns)

    async def stop(self) -> None:
        """Say goodbye, stop following peers, end every event stream."""
        self._stopped = True
        for stream in list(self._streams):
            stream.close()
        if not self._running:
            return
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self.mdns is not None:
            await self.mdns.close()
        tasks = [*(task for _, task in self._followers.values())]
        if self._txt_task is not None:
            tasks.append(self._txt_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._tasks.cancel()
        self._followers.clear()

    def events(self, maxsize: int = 256) -> PeerEventStream:
        """A new bounded stream of peer changes (see ``PeerEventStream``)."""
        stream = PeerEventStream(self.node.peer_table.on_change, maxsize)
        if self._stopped:
            stream.close()
        self._streams.add(stream)
        return stream

    # -- what we announce ----------------------------------------------------------

    def announcement(self) -> Announcement:
        node = self.node
        http_port = node.http_port or None  # bound port, once the HTTP door is up
        return Announcement(
            node_id=node.node_id,
            fingerprint=node.identity.public_key.fingerprint,
            protocol_versions=SUPPORTED_VERSIONS,
            grpc_port=node.grpc_port,
            capability_digest=node.registry.digest,
            http_port=http_port,
        )

    def _addresses(self) -> list[str]:
        # What the card lists, IPv4 only: mDNS runs over IPv4 (A records).
        hosts = self.node.advertised_hosts()
        return [h for h in hosts if ":" not in h] or hosts

    def _capabilities_changed(self) -> None:
        # Coalesce bursts (a module registering ten capabilities) into one update.
        if not self._running or self.mdns is None:
            return
        self._txt_dirty = True
        if self._txt_task is None or self._txt_task.done():
            self._txt_task = asyncio.ensure_future(self._push_txt())

    async def _push_txt(self) -> None:
        while self._txt_dirty and self.mdns is not None:
            self._txt_dirty = False
            await self.mdns.update(self.announcement())

    # -- hints ---------------------------------------------------------------------

    def _on_mdns(self, event: MdnsEvent) -> None:
        if not self._running:
            return
        if isinstance(event, Rejection):
            self.counters["discovery.announcement_rejected"] += 1
            log.debug("ignoring mDNS instance %r: %s", event.instance, event.reason)
        elif isinstance(event, Sighting):
            self._sighted(event)
        elif isinstance(event, Withdrawal):
            self._withdrawn(event.instance)

    def _remember(self, instance: str, claim: tuple[str, str]) -> None:
        self._instances.pop(instance, None)
        self._instances[instance] = claim
        if len(self._instances) > MAX_INSTANCES:
            self._instances.popitem(last=False)

    def settled(self, instance: str) -> bool:
        """Whether resolving ``instance`` again is pointless: it names us, a node we
        will not talk to, or a node that is connected. (The mDNS browser re-resolves
        unsettled names with backoff: a missed or failed dial is retried.)"""
        claim = self._instances.get(instance)
        if claim is None:
            return False
        node_id = claim[0]
        return node_id in ("", self.node.node_id) or self._is_connected(node_id)

    def _sighted(self, s: Sighting) -> None:
        a = s.announcement
        if a.node_id == self.node.node_id:
            self._remember(s.instance, (a.node_id, s.address))
            return  # our own announcement, or someone claiming to be us: never dial
        if not set(a.protocol_versions) & set(SUPPORTED_VERSIONS):
            self.counters["discovery.announcement_rejected"] += 1
            self._remember(s.instance, ("", s.address))  # incompatible: nothing to dial
            return
        self._remember(s.instance, (a.node_id, s.address))
        client = self.node._clients.get(a.node_id)
        if client is not None and client.peer is not None and self._is_connected(a.node_id):
            # Already verified: the only news a TXT can bring is new capabilities,
            # and only the address we verified may make us re-handshake.
            if (
                client.peer.card.capability_digest != a.capability_digest
                and client.address in s.addresses
            ):
                self._enqueue(
                    _Dial((client.address,), a.node_id, a.fingerprint, "mdns", refresh=True)
                )
            return
        addresses = s.addresses[:MAX_DIAL_ADDRESSES]
        self._enqueue(_Dial(addresses, a.node_id, a.fingerprint, "mdns"))

    def _withdrawn(self, instance: str) -> None:
        claim = self._instances.pop(instance, None)
        if claim is None:
            return
        node_id, address = claim
        self._dials.pop(address, None)
        client = self.node._clients.get(node_id)
        peer = self.node.peer_table.get(node_id)
        if (
            client is None
            or peer is None
            or peer.state not in (PeerState.CONNECTED, PeerState.STALE)
        ):
            return
        self._tasks.spawn(self._confirm_goodbye(instance, claim, client))

    async def _confirm_goodbye(
        self, instance: str, claim: tuple[str, str], client: NodeClient
    ) -> None:
        # Anyone on the LAN can send a goodbye for any name: ask the peer itself.
        node_id = claim[0]
        status, reason = await _check(client, timeout=min(self.keepalive, 2.0))
        if not self._owns(node_id, client):
            return
        if status == SERVING:
            self.counters["discovery.goodbye_refuted"] += 1
            log.warning("mDNS goodbye for %s, but it answers SERVING: kept", node_id)
            self._remember(instance, claim)
            return
        self._drop(node_id, PeerEvent.GOODBYE, f"mDNS goodbye; {status} {reason}".strip(), status)

    def _on_change(self, change: PeerChange) -> None:
        peer = change.peer
        if change.event is not PeerEvent.VERIFIED or peer.state is not PeerState.CONNECTED:
            return
        client = self.node._clients.get(peer.key)
        if change.before is not PeerState.CONNECTED:
            log.info(
                "peer %s (%s) connected at %s via %s",
                peer.name,
                peer.key,
                peer.address,
                peer.source,
            )
        if client is not None:
            self._follow(peer.key, client)

    def inbound(self, verified: VerifiedCard, transport_peer: str, fields: dict[str, Any]) -> None:
        """A peer dialled us and proved its key (the server's Handshake).

        It is kept STALE and unreached (bounded by the table's ``max_inbound``) and,
        unless discovery is "none", dialled back; only that dial makes it CONNECTED.

        Raises:
            RateLimited: too many peers that dialled us are still unreached (the
                handshake is refused; nothing of this peer is kept).
        """
        node_id = verified.node_id
        table = self.node.peer_table
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
            "health": "UNKNOWN",
            "error": "it dialled us; not reached by us yet",
        }
        try:
            table.apply(node_id, PeerEvent.INBOUND, **fields)
        except PeerTableFull as exc:
            self.counters["discovery.inbound_refused"] += 1
            raise RateLimited(str(exc), reason="TOO_MANY_UNREACHED_PEERS") from None
        if self.mode != "none" and self._running and candidates:
            self._enqueue(_Dial(tuple(candidates), node_id, verified.key.fingerprint, "inbound"))

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
        peer = self.node.peer_table.get(node_id)
        return (
            peer is not None and peer.state is PeerState.CONNECTED and node_id in self.node._clients
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
            await self.node.connect(
                address,
                expected_node_id=dial.node_id,
                expected_fingerprint=dial.fingerprint,
                source=dial.source,
            )
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

    # -- liveness --------------------------------------------------------------------

    def _owns(self, node_id: str, client: NodeClient) -> bool:
        return self._running and self.node._clients.get(node_id) is client

    def _follow(self, node_id: str, client: NodeClient) -> None:
        current = self._followers.get(node_id)
        if current is not None:
            if current[0] is client:
                return
            current[1].cancel()
        task = asyncio.ensure_future(self._follower(node_id, client))
        self._followers[node_id] = (client, task)
        task.add_done_callback(lambda t: self._forget_follower(node_id, t))

    def _forget_follower(self, node_id: str, task: asyncio.Task[None]) -> None:
        current = self._followers.get(node_id)
        if current is not None and current[1] is task:
            del self._followers[node_id]

    async def _follower(self, node_id: str, client: NodeClient) -> None:
        watch: asyncio.Task[None] | None = None
        try:
            while self._owns(node_id, client):
                peer = self.node.peer_table.get(node_id)
                if (
                    (watch is None or watch.done())
                    and peer is not None
                    and peer.state is PeerState.CONNECTED
                ):
                    watch = asyncio.ensure_future(self._watch(node_id, client))
                await asyncio.sleep(self.keepalive)
                status, reason = await _check(client, timeout=self.keepalive)
                if not self._owns(node_id, client):
                    return
                self._report(node_id, status, reason)
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch(self, node_id: str, client: NodeClient) -> None:
        stub = health_pb2_grpc.HealthStub(client.channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            async for response in call:
                if not self._owns(node_id, client):
                    return
                status = _status_name(response.status)
                self._report(node_id, status, "")
                if status != SERVING:
                    # It is draining: stop holding a stream open on it.
                    return
        except grpc.aio.AioRpcError as err:
            if self._owns(node_id, client) and err.code() is not grpc.StatusCode.CANCELLED:
                self._report(node_id, UNREACHABLE, err.code().name)
        finally:
            call.cancel()

    def _report(self, node_id: str, status: str, reason: str) -> None:
        table = self.node.peer_table
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
            # we verified: that is a goodbye, and better authenticated than mDNS's.
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
        table = self.node.peer_table
        hub = self.node.channels
        if hub is not None:
            for node_id in hub.connected_peers():
                peer = table.get(node_id)
                if peer is not None and peer.state in (PeerState.CONNECTED, PeerState.STALE):
                    table.touch(node_id)
        for change in table.expire():
            if change.peer.state is PeerState.GONE:
                log.info(
                    "peer %s (%s) expired: %s", change.peer.name, change.peer.key, change.peer.error
                )
                self._release(change.peer.key, change.peer.source, change.peer.address)

    # -- keys --------------------------------------------------------------------------

    def _forgotten(self, key: str) -> None:
        # The table forgot a peer (GONE long enough, or evicted): forget its key too.
        if not key.startswith("addr:") and key not in self.node._clients:
            self.node.keyring.unpin(key)

    def _key_evictable(self, key_id: str) -> bool:
        if key_id in self.node._clients:
            return False
        peer = self.node.peer_table.get(key_id)
        return peer is None or peer.state is PeerState.GONE

    def _drop(self, node_id: str, event: PeerEvent, reason: str, health: str = "") -> None:
        table = self.node.peer_table
        peer = table.get(node_id)
        if peer is None:
            return
        with contextlib.suppress(ValueError):
            table.apply(node_id, event, error=reason, health=health or peer.health)
        log.info("peer %s (%s) dropped: %s", peer.name, node_id, reason)
        self._release(node_id, peer.source, peer.address)

    def _release(self, node_id: str, source: str, address: str) -> None:
        follower = self._followers.pop(node_id, None)
        if follower is not None:
            follower[1].cancel()
        client = self.node._clients.pop(node_id, None)
        if client is not None:
            self._tasks.spawn(client.close())
        if source == "static" and address in self.node.config.peers and self._running:
            # A static peer is dialled until it comes back.
            self._tasks.spawn(self.node._dial_forever(address))


async def _check(client: NodeClient, *, timeout: float) -> tuple[str, str]:
    stub = health_pb2_grpc.HealthStub(client.channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        return UNREACHABLE, err.code().name
    return _status_name(response.status), ""


def _status_name(status: int) -> str:
    """SERVING, NOT_SERVING (a draining aralnode: a goodbye), or the other status's
    own name (UNKNOWN, SERVICE_UNKNOWN: unhealthy, not gone)."""
    if status == health_pb2.HealthCheckResponse.SERVING:
        return SERVING
    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
        return NOT_SERVING
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return name
