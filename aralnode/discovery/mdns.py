"""The mDNS backend: DNS-SD over python-zeroconf's asyncio API, announcing this node
and browsing for others.

What travels is a *hint*: ``_aral._tcp.local.`` instances whose TXT record
(``aralnode.discovery.txt``) names a node id, its key fingerprint, protocol
versions and ports. Nothing read here is trusted beyond "try a handshake at this
address"; the supervisor verifies every peer in the gRPC handshake.

Everything here runs on the event loop; registration and resolution are awaited
in background tasks so nothing blocks it. Every structure is bounded: the backlog
of names to resolve (``max_backlog``, oldest dropped), the resolutions running at
once (``resolvers``), the names known to be present (``MAX_KNOWN``), the addresses
kept per instance (``MAX_SIGHTING_HOSTS``) and zeroconf's own record cache (capped
by the library).

zeroconf reports a name as added once. A name whose resolution failed, that fell
out of a full backlog, or whose peer is not connected (the ``settled`` callback says
so; e.g. its dial failed or was dropped) is resolved again, with exponential backoff
(``RETRY_BASE_S`` doubling to ``RETRY_MAX_S``), for as long as it is announced.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from aralnode._logs import get_logger
from aralnode.core.addresses import join_host_port
from aralnode.discovery.backend import Announcement, Hint, HintSink
from aralnode.discovery.txt import BadAnnouncement, parse_txt, to_txt

log = get_logger("aralnode.mdns")

SERVICE_TYPE = "_aral._tcp.local."
BRIDGED = "mdns-bridge"  # the source of a peer another node re-announced on the LAN
MAX_SIGHTING_HOSTS = 8  # addresses kept from one instance's A records
MAX_KNOWN = 512  # names the browser keeps re-resolving until they are settled
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0


def instance_label(name: str, node_id: str) -> str:
    """The DNS-SD instance label: the node name plus a key-derived suffix.

    The suffix makes names unique by construction among honest nodes (many
    nodes keep the default name); probing still renames on a real conflict.
    """
    return f"{name[:50]}-{node_id[:8]}"


@dataclass(slots=True, frozen=True)
class Sighting:
    """A resolved instance with a well-formed TXT record, and every address it
    announced (in its order, at most ``MAX_SIGHTING_HOSTS``)."""

    instance: str
    hosts: tuple[str, ...]
    port: int
    announcement: Announcement

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(join_host_port(h, self.port) for h in self.hosts)

    @property
    def address(self) -> str:
        """The first announced address."""
        return join_host_port(self.hosts[0], self.port)


@dataclass(slots=True, frozen=True)
class Withdrawal:
    """An instance left: a goodbye, or its records expired. Unauthenticated."""

    instance: str


@dataclass(slots=True, frozen=True)
class Rejection:
    """An instance that could not be used, and why (for counters and logs).

    ``retry``: the failure may pass (no answer, no address yet); otherwise what it
    announces is unusable and it is not resolved again until it changes.
    """

    instance: str
    reason: str
    retry: bool = False


MdnsEvent = Sighting | Withdrawal | Rejection


def open_zeroconf(interfaces: Iterable[str] = ()) -> AsyncZeroconf:
    """An AsyncZeroconf on the given interface addresses (all if empty)."""
    chosen = list(interfaces)
    if chosen:
        return AsyncZeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)
    return AsyncZeroconf(ip_version=IPVersion.V4Only)


class MdnsAnnouncer:
    """Registers one instance of ``_aral._tcp``; updates its TXT; says goodbye."""

    def __init__(
        self, aiozc: AsyncZeroconf, *, label: str, host_label: str, addresses: list[str]
    ) -> None:
        self._aiozc = aiozc
        self._name = f"{label}.{SERVICE_TYPE}"
        self._server = f"{host_label}.local."
        self._addresses = addresses
        self._info: AsyncServiceInfo | None = None
        self._lock = asyncio.Lock()
        self.latest: Announcement | None = None

    @property
    def instance(self) -> str:
        """The registered instance name (changed by zeroconf on a conflict)."""
        return self._info.name if self._info is not None else self._name

    def _make_info(self, announcement: Announcement) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            self.instance,
            port=announcement.grpc_port,
            properties=to_txt(announcement),
            server=self._server,
            parsed_addresses=self._addresses,
        )

    async def register(self) -> None:
        """Probe, register ``latest`` (renaming on conflict) and announce it.

        Probing takes about a second; an ``update`` made meanwhile waits for the
        lock and is announced right after.
        """
        async with self._lock:
            if self.latest is None:
                raise RuntimeError("nothing to announce: set `latest` first")
            info = self._make_info(self.latest)
            broadcast = await self._aiozc.async_register_service(info, allow_name_change=True)
            self._info = info
        await broadcast

    async def update(self, announcement: Announcement) -> None:
        """Re-announce with a new TXT (e.g. the capability digest changed)."""
        self.latest = announcement
        async with self._lock:
            if self._info is None:
                return  # not registered yet: `register` will use `latest`
            info = self._make_info(announcement)
            broadcast = await self._aiozc.async_update_service(info)
            self._info = info
        await broadcast

    async def goodbye(self) -> None:
        """Send the goodbye packets (TTL 0) and wait until they are out."""
        async with self._lock:
            info, self._info = self._info, None
            if info is not None:
                await (await self._aiozc.async_unregister_service(info))


@dataclass(slots=True)
class _Known:
    """A name that is announced: when to look at it again, and how often we did."""

    due: float
    attempts: int = 0
    resolved: bool = False  # its last resolution was a Sighting
    hopeless: bool = False  # what it announces is unusable: wait for a change


class MdnsBrowser:
    """Browses ``_aral._tcp``, resolves instances and reports ``MdnsEvent``s.

    Names waiting to be resolved sit in a bounded backlog (oldest dropped when it
    is full: a flood costs us a bounded amount and is counted in ``dropped``);
    ``resolvers`` tasks work it off, each resolution bounded by ``timeout_ms``.

    Every announced name is remembered (at most ``MAX_KNOWN``, least recently
    announced dropped) until it is removed, and resolved again with backoff while
    it is not settled: not resolved, dropped from the backlog, or resolved but
    ``settled(name)`` is false (the driver has not connected its node).
    """

    def __init__(
        self,
        aiozc: AsyncZeroconf,
        on_event: Callable[[MdnsEvent], None],
        *,
        resolvers: int = 4,
        max_backlog: int = 256,
        timeout_ms: int = 1500,
        settled: Callable[[str], bool] | None = None,
    ) -> None:
        self._aiozc = aiozc
        self._on_event = on_event
        self._max_backlog = max_backlog
        self._timeout_ms = timeout_ms
        self._settled = settled or (lambda _name: True)
        self._backlog: OrderedDict[str, None] = OrderedDict()
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._wake = asyncio.Event()
        self._browser: AsyncServiceBrowser | None = None
        self._resolvers = resolvers
        self._workers: list[asyncio.Task[None]] = []
        self.dropped = 0  # names pushed out of a full backlog

    def start(self) -> None:
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self._resolvers)]
        self._workers.append(asyncio.ensure_future(self._retry_loop()))
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._changed]
        )

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    @property
    def known(self) -> int:
        return len(self._known)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _changed(self, **kwargs: Any) -> None:
        # zeroconf calls handlers with keyword arguments on the event loop.
        name: str = kwargs["name"]
        change: ServiceStateChange = kwargs["state_change"]
        if change is ServiceStateChange.Removed:
            self._backlog.pop(name, None)
            self._known.pop(name, None)
            self._on_event(Withdrawal(name))
            return
        # Added or Updated: (re)start its backoff and resolve it now.
        self._known.pop(name, None)
        self._known[name] = _Known(due=self._now() + RETRY_BASE_S)
        if len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        self._queue(name)

    def _queue(self, name: str) -> None:
        self._backlog.pop(name, None)
        self._backlog[name] = None
        if len(self._backlog) > self._max_backlog:
            self._backlog.popitem(last=False)
            self.dropped += 1  # still known: the retry pass brings it back
        self._wake.set()

    def requeue_due(self, now: float) -> int:
        """Queue every known name that is due and unsettled; returns how many.

        A settled name is looked at again ``RETRY_BASE_S`` later (cheaply: one
        callback), so that a peer lost later is re-resolved promptly too.
        """
        queued = 0
        for name, known in self._known.items():
            if known.hopeless or known.due > now or name in self._backlog:
                continue
            if known.resolved and self._settled(name):
                known.attempts = 0
                known.due = now + RETRY_BASE_S
                continue
            known.attempts += 1
            known.due = now + min(RETRY_BASE_S * 2**known.attempts, RETRY_MAX_S)
            self._queue(name)
            queued += 1
        return queued

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(RETRY_BASE_S / 2)
            self.requeue_due(self._now())

    async def _work(self) -> None:
        while True:
            while not self._backlog:
                self._wake.clear()
                await self._wake.wait()
            await self.resolve_next()

    async def resolve_next(self) -> MdnsEvent | None:
        """Resolve the oldest name in the backlog and report it (``None``: empty)."""
        if not self._backlog:
            return None
        name, _ = self._backlog.popitem(last=False)
        event = await self._resolve(name)
        known = self._known.get(name)
        if known is not None:
            known.resolved = isinstance(event, Sighting)
            known.hopeless = isinstance(event, Rejection) and not event.retry
        self._on_event(event)
        return event

    async def _resolve(self, name: str) -> MdnsEvent:
        try:
            info = AsyncServiceInfo(SERVICE_TYPE, name)
            if not await info.async_request(self._aiozc.zeroconf, self._timeout_ms):
                return Rejection(name, "unresolved", retry=True)
            announcement = parse_txt(info.text or b"")
            hosts = info.parsed_addresses(IPVersion.V4Only)
            if not hosts or info.port is None:
                return Rejection(name, "no address", retry=True)
            if info.port != announcement.grpc_port:
                raise BadAnnouncement("SRV port and TXT grpc port disagree")
            unique = tuple(dict.fromkeys(hosts))[:MAX_SIGHTING_HOSTS]
            return Sighting(name, unique, info.port, announcement)
        except BadAnnouncement as exc:
            return Rejection(name, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # hostile input must never stop the browser
            log.debug("resolving %r failed", name, exc_info=True)
            return Rejection(name, f"unresolvable: {type(exc).__name__}", retry=True)


class MdnsService:
    """One node's mDNS presence: a zeroconf instance, its announcer and its browser.

    ``start`` returns at once; probing and the first announcements run in a
    background task so that the node's start never waits on the network.
    """

    def __init__(
        self,
        *,
        label: str,
        host_label: str,
        addresses: list[str],
        interfaces: Iterable[str] = (),
        settled: Callable[[str], bool] | None = None,
    ) -> None:
        self._label = label
        self._host_label = host_label
        self._addresses = addresses
        self._interfaces = list(interfaces)
        self._settled = settled
        self._aiozc: AsyncZeroconf | None = None
        self.announcer: MdnsAnnouncer | None = None
        self.browser: MdnsBrowser | None = None
        self._register: asyncio.Task[None] | None = None

    async def start(
        self, announcement: Announcement, on_event: Callable[[MdnsEvent], None]
    ) -> None:
        self._aiozc = aiozc = open_zeroconf(self._interfaces)
        self.announcer = MdnsAnnouncer(
            aiozc, label=self._label, host_label=self._host_label, addresses=self._addresses
        )
        self.announcer.latest = announcement
        self.browser = MdnsBrowser(aiozc, on_event, settled=self._settled)
        self.browser.start()
        self._register = asyncio.ensure_future(self._announce())

    async def _announce(self) -> None:
        assert self.announcer is not None
        try:
            await self.announcer.register()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mDNS registration failed; this node is not announced")

    async def update(self, announcement: Announcement) -> None:
        if self.announcer is not None:
            await self.announcer.update(announcement)

    async def close(self) -> None:
        """Goodbye (if announced), stop browsing, close the sockets."""
        if self._register is not None and not self._register.done():
            self._register.cancel()
            await asyncio.gather(self._register, return_exceptions=True)
        if self.announcer is not None:
            with contextlib.suppress(Exception):
                await self.announcer.goodbye()
        if self.browser is not None:
            await self.browser.close()
        if self._aiozc is not None:
            with contextlib.suppress(Exception):
                await self._aiozc.async_close()


class MdnsPort(Protocol):
    """What the mDNS backend drives: ``MdnsService``, or a stand-in in tests."""

    async def start(
        self, announcement: Announcement, on_event: Callable[[MdnsEvent], None]
    ) -> None: ...

    async def update(self, announcement: Announcement) -> None: ...

    async def close(self) -> None: ...


def mdns_hosts(hosts: Iterable[str]) -> list[str]:
    """The hosts to announce in A records: the IPv4 ones (mDNS runs over IPv4 here),
    or all of them if there is none."""
    hosts = list(hosts)
    return [h for h in hosts if ":" not in h] or hosts


class MdnsBackend:
    """Discovery over mDNS: announce, browse, and report sightings as hints.

    Args:
        port: The mDNS machinery (default: an ``MdnsService`` made at ``start``);
            tests put a stand-in here before the node starts.
    """

    name = "mdns"

    def __init__(
        self,
        *,
        label: str,
        host_label: str,
        interfaces: Iterable[str] = (),
        port: MdnsPort | None = None,
    ) -> None:
        self.label = label
        self.host_label = host_label
        self.interfaces = list(interfaces)
        self.port = port
        self._sink: HintSink | None = None

    async def start(self, announcement: Announcement, sink: HintSink) -> None:
        self._sink = sink
        if self.port is None:
            self.port = MdnsService(
                label=self.label,
                host_label=self.host_label,
                addresses=mdns_hosts(announcement.hosts),
                interfaces=self.interfaces,
                settled=sink.settled,
            )
        await self.port.start(announcement, self._on_event)

    def _on_event(self, event: MdnsEvent) -> None:
        sink = self._sink
        if sink is None:
            return
        if isinstance(event, Sighting):
            a = event.announcement
            sink.hint(
                Hint(
                    key=event.instance,
                    addresses=event.addresses,
                    node_id=a.node_id,
                    fingerprint=a.fingerprint,
                    protocol_versions=a.protocol_versions,
                    capability_digest=a.capability_digest,
                    # re-announced by a bridge: shown as such, and never bridged again
                    source=BRIDGED if a.via else self.name,
                )
            )
        elif isinstance(event, Withdrawal):
            sink.withdraw(event.instance)
        else:
            sink.rejected(event.instance, event.reason)

    async def update(self, announcement: Announcement) -> None:
        if self.port is not None:
            await self.port.update(announcement)

    async def announce_other(self, announcement: Announcement) -> AsyncServiceInfo | None:
        """Announce another node (a bridge's re-announcement, ``announcement.via``
        set) on this LAN; its record, for ``withdraw_other``. None before start."""
        port = self.port
        aiozc = getattr(port, "_aiozc", None)
        if aiozc is None:
            return None
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance_label('bridged', announcement.node_id)}.{SERVICE_TYPE}",
            port=announcement.grpc_port,
            properties=to_txt(announcement),
            server=f"aral-{announcement.node_id[:16]}-via.local.",
            parsed_addresses=mdns_hosts(announcement.hosts),
        )
        await (await aiozc.async_register_service(info, allow_name_change=True))
        return info

    async def withdraw_other(self, info: AsyncServiceInfo) -> None:
        """The goodbye of a record ``announce_other`` made."""
        aiozc = getattr(self.port, "_aiozc", None)
        if aiozc is not None:
            with contextlib.suppress(Exception):
                await (await aiozc.async_unregister_service(info))

    async def stop(self) -> None:
        self._sink = None
        if self.port is not None:
            await self.port.close()


__all__ = [
    "BRIDGED",
    "SERVICE_TYPE",
    "MdnsBackend",
    "MdnsBrowser",
    "MdnsEvent",
    "MdnsPort",
    "MdnsService",
    "Rejection",
    "Sighting",
    "Withdrawal",
    "instance_label",
    "mdns_hosts",
]
