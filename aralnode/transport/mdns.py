"""mDNS / DNS-SD over python-zeroconf's asyncio API: announce this node, browse for others.

What travels is a *hint*: ``_aral._tcp.local.`` instances whose TXT record names a
node id, its key fingerprint, protocol versions and ports. Nothing read here is
trusted beyond "try a handshake at this address"; the node driver
(``aralnode.discovery``) verifies every peer in the gRPC handshake.

TXT (version 1), kept under ``MAX_TXT_BYTES``::

    txtvers=1  id=<node id>  fp=<key fingerprint>  pv=<versions, comma separated>
    grpc=<port>  http=<port, optional>  cd=<capability digest>

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
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ifaddr
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from aralnode.core.addresses import join_host_port

log = logging.getLogger("aralnode.mdns")

SERVICE_TYPE = "_aral._tcp.local."
TXT_VERSION = "1"
# What we announce stays under this; what we accept may be a little larger, so
# that a later version adding a key still reaches older nodes.
MAX_TXT_BYTES = 200
MAX_ACCEPTED_TXT_BYTES = 255
_BASE32 = re.compile(r"^[a-z2-7]+$")
_VERSION = re.compile(r"^[A-Za-z0-9._/-]{1,16}$")
_HEX = re.compile(r"^[0-9a-f]{16}$")
NODE_ID_CHARS = 32  # base32 of 20 bytes
FINGERPRINT_CHARS = 52  # base32 of 32 bytes, unpadded
MAX_SIGHTING_HOSTS = 8  # addresses kept from one instance's A records
MAX_KNOWN = 512  # names the browser keeps re-resolving until they are settled
RETRY_BASE_S = 1.0
RETRY_MAX_S = 30.0


class BadAnnouncement(ValueError):
    """A TXT record that does not describe a usable aralnode (it is ignored)."""


@dataclass(slots=True, frozen=True)
class Announcement:
    """What one node says about itself in its TXT record."""

    node_id: str
    fingerprint: str
    protocol_versions: tuple[str, ...]
    grpc_port: int
    capability_digest: str
    http_port: int | None = None

    def to_txt(self) -> bytes:
        """The TXT record as DNS-SD wire bytes (length-prefixed ``key=value`` strings)."""
        pairs = [
            ("txtvers", TXT_VERSION),
            ("id", self.node_id),
            ("fp", self.fingerprint),
            ("pv", ",".join(self.protocol_versions)),
            ("grpc", str(self.grpc_port)),
        ]
        if self.http_port is not None:
            pairs.append(("http", str(self.http_port)))
        pairs.append(("cd", self.capability_digest))
        raw = b"".join(_txt_string(f"{k}={v}".encode()) for k, v in pairs)
        if len(raw) > MAX_TXT_BYTES:
            raise ValueError(f"TXT record is {len(raw)} bytes; the limit is {MAX_TXT_BYTES}")
        return raw


def _txt_string(data: bytes) -> bytes:
    if len(data) > 255:
        raise ValueError("a TXT string holds at most 255 bytes")
    return bytes([len(data)]) + data


def txt_pairs(raw: bytes) -> dict[str, str]:
    """Split DNS-SD TXT bytes into keys (lower-cased) and values.

    RFC 6763 §6.4: keys are case-insensitive and the first occurrence wins.

    Raises:
        BadAnnouncement: oversized, truncated, or not ASCII.
    """
    if len(raw) > MAX_ACCEPTED_TXT_BYTES:
        raise BadAnnouncement(f"TXT record is {len(raw)} bytes (limit {MAX_ACCEPTED_TXT_BYTES})")
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        end = pos + 1 + raw[pos]
        if end > len(raw):
            raise BadAnnouncement("TXT string runs past the end of the record")
        chunk = raw[pos + 1 : end]
        pos = end
        try:
            text = chunk.decode("ascii")
        except UnicodeDecodeError:
            raise BadAnnouncement("TXT string is not ASCII") from None
        key, _, value = text.partition("=")
        key = key.lower()
        if key and key not in pairs:
            pairs[key] = value
    return pairs


def _port(value: str | None, what: str, *, allow_zero: bool = False) -> int:
    if value is None or not value.isdigit() or len(value) > 5:
        raise BadAnnouncement(f"{what} port {value!r} is not a number")
    port = int(value)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise BadAnnouncement(f"{what} port {port} is out of range")
    return port


def parse_txt(raw: bytes) -> Announcement:
    """Read an ``Announcement`` out of TXT bytes; anything off is ``BadAnnouncement``.

    Checks only what can be checked without the key: shape, ranges, and that the
    node id is the fingerprint's prefix (both are the same SHA-256 of the key, so a
    TXT where they disagree was made up).
    """
    pairs = txt_pairs(raw)
    if pairs.get("txtvers") != TXT_VERSION:
        raise BadAnnouncement(f"unknown txtvers {pairs.get('txtvers')!r}")
    node_id, fp = pairs.get("id", ""), pairs.get("fp", "")
    if len(node_id) != NODE_ID_CHARS or not _BASE32.match(node_id):
        raise BadAnnouncement("id is not a node id")
    if len(fp) != FINGERPRINT_CHARS or not _BASE32.match(fp):
        raise BadAnnouncement("fp is not a key fingerprint")
    if not fp.startswith(node_id):
        raise BadAnnouncement("id is not derived from fp")
    versions = tuple(v for v in pairs.get("pv", "").split(",") if v)
    if not versions or len(versions) > 8 or not all(_VERSION.match(v) for v in versions):
        raise BadAnnouncement("pv is not a list of protocol versions")
    digest = pairs.get("cd", "")
    if not _HEX.match(digest):
        raise BadAnnouncement("cd is not a capability digest")
    http = pairs.get("http")
    return Announcement(
        node_id=node_id,
        fingerprint=fp,
        protocol_versions=versions,
        grpc_port=_port(pairs.get("grpc"), "grpc"),
        capability_digest=digest,
        http_port=None if http is None else _port(http, "http", allow_zero=True),
    )


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


def lan_addresses(*, ipv6: bool = False) -> list[str]:
    """This host's IPv4 addresses (and, with ``ipv6``, its global IPv6 ones),
    loopback and link-local excluded: what a node on a wildcard bind advertises."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if not ip.ip.startswith(("127.", "169.254.")):
                    out.append(ip.ip)
            elif ipv6:
                host = ip.ip[0]
                if host != "::1" and not host.lower().startswith("fe80"):
                    out.append(host)
    return list(dict.fromkeys(out))


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
            properties=announcement.to_txt(),
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
