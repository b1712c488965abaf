"""The etcd backend: discovery past the LAN, through an etcd v3 cluster.

A node registers its announcement under ``<prefix><node id>``, bound to a lease it
keeps alive, and watches the prefix. What it reads there is a ``Hint`` like an mDNS
sighting, verified by the supervisor's handshake: anyone who can write to the
prefix can say anything, and a forged entry (another node's id beside an address
that does not hold its key) never yields a peer.

The wire: etcd's own v3 protos, as the ``aetcd`` package ships them generated
(``aetcd.rpc``: KV, Lease, Watch, Auth stubs), over a ``grpc.aio`` channel this
module opens -- TLS and several endpoints are this module's, as aetcd's own
client offers neither. No second protobuf runtime: the stubs run on the node's
grpcio and protobuf.

Lifecycle, in one task: connect to an endpoint (the next one after a failure),
authenticate if configured, grant a lease, put the announcement on it, read the
prefix, watch from the revision after that read (so nothing falls between them),
and keep the lease alive at a third of its TTL. On any failure (an etcd outage,
a lost leader) the peers already connected stay -- the supervisor holds them, and
discovery is only how they were found -- and the task reconnects with a bounded,
jittered backoff and registers again under a new lease. After a reconnect, the
keys that vanished meanwhile are withdrawn. ``stop`` revokes the lease (the
goodbye: the others see the key deleted at once rather than at its TTL).

Bounds on what an outsider who can write to the prefix may make us hold: a value
is at most ``MAX_VALUE_BYTES`` and is parsed strictly; at most ``MAX_KEYS`` keys
are tracked; hints are rate-limited (``HINTS_PER_SECOND``, a burst of
``HINT_BURST``): one past the rate is held back (counted as rejected) and hinted as
tokens come back, never dropped. The prefix is read ``PAGE_KEYS`` at a time (one
revision): large values cannot make a read larger than a gRPC message may be. Our own
key, overwritten or deleted by someone else, is written again (``REPAIR_SECONDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

from aralnode._logs import get_logger
from aralnode.discovery.backend import Announcement, Hint, HintSink

log = get_logger("aralnode.discovery")

SOURCE = "etcd"
VALUE_VERSION = 1
MAX_VALUE_BYTES = 4096
MAX_KEYS = 4096
MAX_ADDRESSES = 8
MAX_FIELD_CHARS = 256
HINTS_PER_SECOND = 200.0
HINT_BURST = 400
PAGE_KEYS = 8  # keys a read of the prefix: each value may be etcd's largest (1.5 MiB)
RECEIVE_BYTES = 32 * 1024 * 1024  # a page, or a watch fragment, with room to spare
DRAIN_SECONDS = 0.5  # how often hints held back by the rate are looked at again
REPAIR_SECONDS = 2.0  # our key written again at most this often
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
RPC_TIMEOUT = 5.0
STOP_TIMEOUT = 1.0
_EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009 - grpc-stubs lacks it


@dataclass(slots=True, frozen=True)
class EtcdSettings:
    """Where the registry is and how to reach it (``NodeConfig``'s etcd group).

    Attributes:
        endpoints: ``http(s)://HOST:PORT`` URLs, tried in turn.
        prefix: The key prefix of the mesh (ends with ``/``).
        lease_ttl: Seconds a registration outlives its node.
        ca_file / cert_file / key_file: TLS (``https`` endpoints): the CA, and a
            client certificate when etcd asks for one.
        username / password: etcd authentication (both or neither).
    """

    endpoints: tuple[str, ...]
    prefix: str = "/aral/v1/nodes/"
    lease_ttl: int = 10
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password: str = ""

    @classmethod
    def from_config(cls, cfg: Any) -> EtcdSettings:
        """From a ``NodeConfig`` (the password read from its file)."""
        password = ""
        if cfg.etcd_password_file is not None:
            password = Path(cfg.etcd_password_file).read_text(encoding="utf-8").strip()
        return cls(
            endpoints=tuple(cfg.etcd_endpoints),
            prefix=cfg.etcd_prefix,
            lease_ttl=cfg.etcd_lease_ttl_seconds,
            ca_file=cfg.etcd_ca_file,
            cert_file=cfg.etcd_cert_file,
            key_file=cfg.etcd_key_file,
            username=cfg.etcd_username,
            password=password,
        )


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, end)`` every key under ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def encode(announcement: Announcement, *, via: str = "") -> bytes:
    """The registry value of ``announcement`` (compact JSON). ``via``: the node id
    of the bridge that re-announced it (``aralnode.discovery.etcd_bridge``)."""
    value: dict[str, Any] = {
        "v": VALUE_VERSION,
        "node_id": announcement.node_id,
        "fingerprint": announcement.fingerprint,
        "protocols": list(announcement.protocol_versions),
        "addresses": [_host_port(h, announcement.grpc_port) for h in announcement.hosts],
        "digest": announcement.capability_digest,
    }
    if announcement.http_port:
        value["http_port"] = announcement.http_port
    if via:
        value["via"] = via
    return json.dumps(value, separators=(",", ":")).encode()


class BadValue(ValueError):
    """A registry value that is not a usable announcement."""


def _text(value: dict[str, Any], name: str, *, required: bool = True) -> str:
    got = value.get(name, "")
    if not isinstance(got, str) or len(got) > MAX_FIELD_CHARS or (required and not got):
        raise BadValue(f"{name!r} must be a non-empty string of at most {MAX_FIELD_CHARS}")
    return got


def _texts(value: dict[str, Any], name: str, limit: int) -> tuple[str, ...]:
    got = value.get(name, [])
    if not isinstance(got, list) or len(got) > limit:
        raise BadValue(f"{name!r} must be a list of at most {limit} strings")
    if not all(isinstance(x, str) and 0 < len(x) <= MAX_FIELD_CHARS for x in got):
        raise BadValue(f"{name!r} must hold non-empty strings")
    return tuple(got)


def decode(key: str, raw: bytes, prefix: str) -> tuple[Hint, str]:
    """The hint a registry value gives, and the bridge it came through ("" none).

    Raises:
        BadValue: too large, not JSON, a field missing or of the wrong type, or a
            key that does not name the node id the value claims.
    """
    if len(raw) > MAX_VALUE_BYTES:
        raise BadValue(f"value of {len(raw)} bytes (at most {MAX_VALUE_BYTES})")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadValue("value is not JSON") from None
    if not isinstance(value, dict) or value.get("v") != VALUE_VERSION:
        raise BadValue(f"value is not a version {VALUE_VERSION} announcement")
    node_id = _text(value, "node_id")
    if key[len(prefix) :] != node_id:
        raise BadValue("the key does not name the node id its value claims")
    addresses = _texts(value, "addresses", MAX_ADDRESSES)
    if not addresses:
        raise BadValue("no addresses")
    hint = Hint(
        key=key,
        addresses=addresses,
        node_id=node_id,
        fingerprint=_text(value, "fingerprint", required=False),
        protocol_versions=_texts(value, "protocols", 8),
        capability_digest=_text(value, "digest", required=False),
        source=SOURCE,
    )
    return hint, _text(value, "via", required=False)


class _Bucket:
    """A token bucket for hints (monotonic clock)."""

    __slots__ = ("at", "clock", "tokens")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.tokens, self.at = float(HINT_BURST), clock()

    def available(self) -> bool:
        """Whether a token is there now (refilled for the time since the last look)."""
        now = self.clock()
        self.tokens = min(HINT_BURST, self.tokens + (now - self.at) * HINTS_PER_SECOND)
        self.at = now
        return self.tokens >= 1

    def take(self) -> bool:
        if not self.available():
            return False
        self.tokens -= 1
        return True


class EtcdBackend:
    """The etcd discovery backend (see the module docstring).

    Attributes:
        registered: Set while this node's key is in etcd (tests, readiness).
        connected_endpoint: The endpoint in use ("" between connections).
        stats: Counts of what went to and came from etcd (the bench reads them):
            ``puts``, ``keepalives``, ``events``, ``registrations``, ``reconnects``,
            ``repairs`` (our key written again after someone else changed it).
    """

    name = SOURCE

    def __init__(self, settings: EtcdSettings) -> None:
        if not settings.endpoints:
            raise ValueError("the etcd backend needs at least one endpoint")
        self.settings = settings
        self.registered = asyncio.Event()
        self.connected_endpoint = ""
        self.stats = {"puts": 0, "keepalives": 0, "events": 0, "registrations": 0,
                      "reconnects": 0, "repairs": 0}  # fmt: skip
        self._prefix = settings.prefix.encode()
        self._announcement: Announcement | None = None
        self._sink: HintSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._lease = 0
        self._keys: OrderedDict[str, bytes] = OrderedDict()  # key -> value last hinted
        self._bucket = _Bucket()
        self._held: OrderedDict[str, bytes] = OrderedDict()  # keys the hint rate held back
        self._repairing: asyncio.Future[None] | None = None
        self._repaired_at = -REPAIR_SECONDS
        self._stopping = False
        # What a bridge learns from etcd (``etcd_bridge``): key -> (hint, via).
        self.on_hint: Any = None
        self.on_withdraw: Any = None
        self.on_registered: Any = None  # called after each registration (a new lease)

    # -- DiscoveryBackend ----------------------------------------------------------

    async def start(self, announcement: Announcement, sink: HintSink) -> None:
        self._announcement, self._sink = announcement, sink
        self._task = asyncio.create_task(self._run(), name="aralnode-etcd")

    async def update(self, announcement: Announcement) -> None:
        self._announcement = announcement
        if self._channel is not None and self._lease:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                await self._put(self._own_key(), encode(announcement), self._lease)

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        channel, lease = self._channel, self._lease
        if channel is not None and lease:
            # The goodbye: the others see our key deleted now, not at its TTL.
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                await rpc.LeaseStub(channel).LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease), timeout=STOP_TIMEOUT,
                    metadata=self._metadata,
                )  # fmt: skip
        await self._close()

    # -- registry writes (the bridge uses them too) ----------------------------------

    def _own_key(self) -> bytes:
        assert self._announcement is not None
        return self._prefix + self._announcement.node_id.encode()

    async def _put(self, key: bytes, value: bytes, lease: int) -> None:
        assert self._channel is not None
        await rpc.KVStub(self._channel).Put(
            rpc.PutRequest(key=key, value=value, lease=lease),
            timeout=RPC_TIMEOUT,
            metadata=self._metadata,
        )
        self.stats["puts"] += 1

    async def put_if_absent(self, node_id: str, value: bytes) -> bool:
        """Write another node's announcement (a bridge) on this node's lease, only
        if nobody holds its key (the node itself, or another bridge): one writer a
        key, so bridges never echo each other. False if not written."""
        if self._channel is None or not self._lease:
            return False
        key = self._prefix + node_id.encode()
        request = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.CREATE,
                                 key=key, create_revision=0)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value,
                                                              lease=self._lease))],
        )  # fmt: skip
        try:
            reply = await rpc.KVStub(self._channel).Txn(
                request, timeout=RPC_TIMEOUT, metadata=self._metadata
            )
        except (TimeoutError, grpc.aio.AioRpcError):
            return False
        self.stats["puts"] += int(reply.succeeded)
        return bool(reply.succeeded)

    async def delete_if(self, node_id: str, value: bytes) -> None:
        """Remove a key a bridge wrote, if it still holds what the bridge wrote
        (best effort: the bridge's lease ends it anyway)."""
        if self._channel is None:
            return
        key = self._prefix + node_id.encode()
        request = rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE,
                                 key=key, value=value)],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))],
        )  # fmt: skip
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            await rpc.KVStub(self._channel).Txn(
                request, timeout=RPC_TIMEOUT, metadata=self._metadata
            )

    # -- the connection's life ------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        turn = 0
        while not self._stopping:
            endpoint = self.settings.endpoints[turn % len(self.settings.endpoints)]
            turn += 1
            try:
                await self._session(endpoint)
                backoff = BACKOFF_FIRST
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc
                log.info("etcd %s: %s; reconnecting", endpoint, reason)
            self.registered.clear()
            self.connected_endpoint = ""
            await self._close()
            self.stats["reconnects"] += 1
            # Jittered: a cluster coming back is not met by every node at once.
            await asyncio.sleep(backoff * (0.5 + random.random()))  # noqa: S311 - jitter
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _session(self, endpoint: str) -> None:
        """One connection: register, read, watch, keep alive -- until it fails."""
        self._channel = self._open(endpoint)
        if self.settings.username:
            reply = await rpc.AuthStub(self._channel).Authenticate(
                rpc.AuthenticateRequest(
                    name=self.settings.username, password=self.settings.password
                ),
                timeout=RPC_TIMEOUT,
            )
            self._metadata = (("token", reply.token),)
        lease = await rpc.LeaseStub(self._channel).LeaseGrant(
            rpc.LeaseGrantRequest(TTL=self.settings.lease_ttl), timeout=RPC_TIMEOUT,
            metadata=self._metadata,
        )  # fmt: skip
        self._lease = lease.ID
        assert self._announcement is not None
        await self._put(self._own_key(), encode(self._announcement), lease.ID)
        self.stats["registrations"] += 1
        revision = await self._resync()
        self.connected_endpoint = endpoint
        self.registered.set()
        log.info("etcd %s: registered (lease %d s)", endpoint, self.settings.lease_ttl)
        if self.on_registered is not None:
            self.on_registered()
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep_alive(lease.ID))
            group.create_task(self._watch(revision + 1))
            group.create_task(self._drain_held())

    def _open(self, endpoint: str) -> grpc.aio.Channel:
        url = urlsplit(endpoint)
        target = url.netloc
        options = [
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.max_receive_message_length", RECEIVE_BYTES),
        ]
        if url.scheme != "https":
            return grpc.aio.insecure_channel(target, options=options)
        s = self.settings
        credentials = grpc.ssl_channel_credentials(
            root_certificates=s.ca_file.read_bytes() if s.ca_file else None,
            private_key=s.key_file.read_bytes() if s.key_file else None,
            certificate_chain=s.cert_file.read_bytes() if s.cert_file else None,
        )
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def _close(self) -> None:
        channel, self._channel = self._channel, None
        self._lease = 0
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(grace=None)

    async def _keep_alive(self, lease: int) -> None:
        assert self._channel is not None
        every = max(0.5, self.settings.lease_ttl / 3)
        # The stream written to (no request generator: grpc closes one it is
        # still reading when the channel goes, and complains).
        call = rpc.LeaseStub(self._channel).LeaseKeepAlive(metadata=self._metadata)
        try:
            while True:
                async with asyncio.timeout(RPC_TIMEOUT):
                    await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                    reply = await call.read()
                if reply is _EOF:
                    raise RuntimeError("the keep-alive stream ended")
                if reply.TTL <= 0:  # the lease is gone (expired during a partition)
                    raise RuntimeError("the registration's lease expired")
                self.stats["keepalives"] += 1
                await asyncio.sleep(every)
        finally:
            call.cancel()

    async def _resync(self) -> int:
        """Read the prefix, a page at a time at one revision: hint what is there,
        withdraw what is gone since the last read; the revision of the read."""
        assert self._channel is not None
        stub, start, end = rpc.KVStub(self._channel), self._prefix, prefix_end(self._prefix)
        present: set[str] = set()
        revision = 0
        while len(present) < MAX_KEYS:
            reply = await stub.Range(
                rpc.RangeRequest(key=start, range_end=end, limit=PAGE_KEYS, revision=revision),
                timeout=RPC_TIMEOUT, metadata=self._metadata,
            )  # fmt: skip
            revision = revision or int(reply.header.revision)
            for kv in reply.kvs:
                key = kv.key.decode("utf-8", "replace")
                present.add(key)
                self._seen(key, kv.value)
            if not reply.more or not reply.kvs:
                break
            start = reply.kvs[-1].key + b"\0"
        for key in [k for k in (*self._keys, *self._held) if k not in present]:
            self._gone(key)
        return revision

    async def _watch(self, start: int) -> None:
        assert self._channel is not None
        call = rpc.WatchStub(self._channel).Watch(metadata=self._metadata)
        try:
            await call.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=self._prefix, range_end=prefix_end(self._prefix),
                        start_revision=start, fragment=True,
                    )
                )
            )  # fmt: skip
            while True:
                reply = await call.read()
                if reply is _EOF:
                    raise RuntimeError("the watch stream ended")
                if reply.canceled or reply.compact_revision:
                    reason = reply.cancel_reason or "compacted"
                    raise RuntimeError(f"watch cancelled: {reason}")
                for event in reply.events:
                    self.stats["events"] += 1
                    key = event.kv.key.decode("utf-8", "replace")
                    if event.type == rpc.Event.PUT:
                        self._seen(key, event.kv.value)
                    else:
                        self._gone(key)
        finally:
            call.cancel()

    # -- what was seen ---------------------------------------------------------------

    def _seen(self, key: str, value: bytes) -> None:
        sink = self._sink
        assert sink is not None
        assert self._announcement is not None
        if self._keys.get(key) == value:
            self._held.pop(key, None)  # (back to what was hinted: nothing to give)
            return  # a re-read of what was hinted already
        if key == self._own_key().decode():  # ours, however it reads: never a hint
            self._keys[key] = value
            if value != encode(self._announcement):
                self._repair()  # someone else wrote our key
            return
        if key not in self._keys and len(self._keys) >= MAX_KEYS:
            sink.rejected(key, f"more than {MAX_KEYS} keys under the prefix")
            return
        try:
            hint, via = decode(key, value, self.settings.prefix)
        except BadValue as exc:
            sink.rejected(key, str(exc))
            return
        if hint.node_id == self._announcement.node_id and not via:
            self._keys[key] = value  # (our id under another key: no hint)
            return
        if not self._bucket.take():
            # Hinted as tokens come back (``drain``); what was hinted before (if
            # anything) stays in ``_keys``, so a delete meanwhile withdraws it.
            self._held[key] = value
            self._held.move_to_end(key)
            while len(self._held) > MAX_KEYS:
                self._held.popitem(last=False)
            sink.rejected(key, "hint rate exceeded")
            return
        self._held.pop(key, None)
        self._keys[key] = value
        sink.hint(hint)
        if self.on_hint is not None:
            self.on_hint(hint, via)

    def drain(self) -> None:
        """Hint what the rate held back, oldest first, as far as tokens allow."""
        for _ in range(len(self._held)):
            if not self._held or not self._bucket.available():
                return
            key, value = self._held.popitem(last=False)
            self._seen(key, value)

    async def _drain_held(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_SECONDS)
            self.drain()

    def _repair(self) -> None:
        """Write our key again, as the node announces itself now: one write at a time,
        at most one each ``REPAIR_SECONDS`` (two writers of one node id -- one key
        file in two places -- must not rewrite each other as fast as etcd allows)."""
        lease = self._lease
        if self._repairing is not None or self._stopping or not lease:
            return

        async def put() -> None:
            try:
                await asyncio.sleep(max(0.0, self._repaired_at + REPAIR_SECONDS - time.monotonic()))
                announcement = self._announcement
                if self._channel is None or self._lease != lease or announcement is None:
                    return  # (the session ended: the next one registers anew)
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
                    await self._put(self._own_key(), encode(announcement), lease)
                    self.stats["repairs"] += 1
                    if self.stats["repairs"] % 10 == 1:  # (two writers of one id: 1 in 10)
                        log.warning("etcd: our key was changed by another writer; written again")
            finally:
                self._repaired_at = time.monotonic()
                self._repairing = None

        self._repairing = asyncio.ensure_future(put())

    def _gone(self, key: str) -> None:
        self._held.pop(key, None)
        if self._announcement is not None and key == self._own_key().decode():
            self._keys.pop(key, None)
            self._repair()  # deleted by someone else (our own goodbye revokes the lease)
            return
        if self._keys.pop(key, None) is None:
            return
        assert self._sink is not None
        self._sink.withdraw(key)
        if self.on_withdraw is not None:
            self.on_withdraw(key)


def build(cfg: Any) -> EtcdBackend:
    """The backend a ``NodeConfig`` describes."""
    return EtcdBackend(EtcdSettings.from_config(cfg))


__all__ = [
    "BadValue",
    "EtcdBackend",
    "EtcdSettings",
    "build",
    "decode",
    "encode",
    "prefix_end",
]
