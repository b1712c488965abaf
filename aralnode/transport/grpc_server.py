"""The gRPC server: one grpc.aio server with the node's doors, health and reflection.

The doors themselves (``aral.v1.AgentNode`` and users' services) are in
``aralnode.transport.grpc_door``, health and reflection on raw bytes in
``aralnode.transport.standard``; this module binds, starts and drains the server.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from aralnode import _proto as pb
from aralnode.core.addresses import join_host_port
from aralnode.transport.call_gate import CallGate
from aralnode.transport.connections import ConnectionLimits
from aralnode.transport.health import HealthService
from aralnode.transport.quota import StreamQuota
from aralnode.transport.reaper import StuckConnectionReaper
from aralnode.transport.reflection import reflection_handlers
from aralnode.transport.standard import Gate, standard_handler

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
AGENT_NODE = pb.AGENT_NODE_SERVICE_NAME

# Framing around an envelope. The envelope limit is ours to enforce and report with
# details; grpc's own transport limit (twice that, see ``transport_limit``) only
# stops frames far beyond it, before they are buffered whole.
FRAME_HEADROOM = 64 * 1024
MIB = 1024 * 1024


def transport_limit(max_message_bytes: int) -> int:
    return 2 * max_message_bytes + FRAME_HEADROOM


def _check_free(host: str, port: int, address: str) -> None:
    """Raise a clear ``OSError`` if no address ``host`` resolves to can be bound at
    ``port`` (in use, or not allowed); grpc serves if any of them binds."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot bind the gRPC door to {address}: {exc}") from None
    failure: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                failure = failure or exc
            else:
                return
    if failure is not None:
        raise OSError(failure.errno, f"cannot bind the gRPC door to {address}: {failure.strerror}")


@dataclass(frozen=True, slots=True)
class GrpcLimits:
    """What one outsider may hold of the gRPC port (``NodeConfig``'s ``grpc_*``
    fields say why each exists). The first ones are grpc core's own mechanisms; the
    per-address connection share is the reaper's (``transport.connections``), the
    call share and the request budget the call gate's (``transport.call_gate``).

    ``receive_bytes`` (``receive_bytes_per_address``): request bytes the port may be
    receiving at once (from one client address), each call that receives counted
    at the transport limit, the most grpc buffers of one message: 31 calls at once,
    7 from one address, at the default 4 MiB ``max_message_bytes``, and never fewer
    than one. ``max_calls_per_address``: calls one client address may have open at
    once (None: a quarter of ``max_concurrent_rpcs``)."""

    max_connections: int = 512
    max_streams_per_connection: int = 100
    max_concurrent_rpcs: int = 2048
    handshake_timeout_ms: int = 10_000
    connection_idle_ms: int = 300_000
    connection_age_ms: int | None = None
    connection_age_grace_ms: int = 5_000
    max_streams_per_address: int = 128
    max_connections_per_address: int = 128
    request_timeout_ms: int = 30_000
    receive_bytes: int = 256 * MIB
    receive_bytes_per_address: int = 64 * MIB
    max_calls_per_address: int | None = None

    def connection_limits(self) -> ConnectionLimits:
        """The reaper's share per address; a connection that never calls goes after
        twice the handshake timeout."""
        unused_after = 2 * self.handshake_timeout_ms / 1000
        return ConnectionLimits.of(
            self.max_connections, self.max_connections_per_address, unused_after
        )

    def call_gate(self, max_message_bytes: int, counters: Counter[str] | None) -> CallGate:
        """The gate of every call (module ``call_gate``), for ``max_message_bytes``."""
        limit = transport_limit(max_message_bytes)
        slots = max(1, self.receive_bytes // limit)
        calls_per_address = self.max_calls_per_address or max(1, self.max_concurrent_rpcs // 4)
        return CallGate(
            calls_per_address=calls_per_address,
            receive_slots=slots,
            receive_slots_per_address=max(1, self.receive_bytes_per_address // limit),
            request_timeout=self.request_timeout_ms / 1000,
            counters=counters,
        )

    def options(self) -> list[tuple[str, int]]:
        """The channel arguments that enforce them."""
        options = [
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.server_handshake_timeout_ms", self.handshake_timeout_ms),
            ("grpc.max_connection_idle_ms", self.connection_idle_ms),
            # No BDP probing: it grows every stream's initial window (to 4 MiB and
            # more), and grpc buffers up to that for a call that has not asked for
            # its message. Without it a call waiting for its turn of the request
            # budget (``call_gate``) holds 64 KiB at most; a call that reads still
            # opens its window to the whole message.
            ("grpc.http2.bdp_probe", 0),
        ]
        if self.connection_age_ms is not None:
            options.append(("grpc.max_connection_age_ms", self.connection_age_ms))
            options.append(("grpc.max_connection_age_grace_ms", self.connection_age_grace_ms))
        return options


class GrpcServer:
    """A grpc.aio server with AgentNode, health, reflection and users' services.

    ``listing_gate(service)`` is the gate before every call of that reflection
    service (it lists every service and message the node has): it raises to refuse
    the caller. Reflection answers as ``grpc.reflection.v1`` and ``v1alpha``. ``credentials``: serve
    TLS (``aralnode.transport.tls_grpc.server_credentials``) instead of plaintext.
    """

    def __init__(
        self,
        *,
        max_message_bytes: int,
        keepalive_ms: int,
        limits: GrpcLimits = GrpcLimits(),  # frozen: one default shared safely
        listing_gate: Callable[[str], Gate] | None = None,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
        counters: Counter[str] | None = None,
    ) -> None:
        limit = transport_limit(max_message_bytes)
        keepalive_timeout_ms = max(keepalive_ms // 2, 1000)
        # grpc core can leave a connection it ended open (reaper.py): bytes left unread,
        # or silence both ways, for three keepalive periods and the keepalive timeout
        # end it here. Silence must also last grpc's own handshake timeout (and the
        # keepalive timeout): a connection still in its TLS handshake has sent its
        # part and waits for the client, silent both ways, and is owed that long.
        self._reap_after = (3 * keepalive_ms + keepalive_timeout_ms) / 1000
        self._silent_after = max(
            self._reap_after, (limits.handshake_timeout_ms + keepalive_timeout_ms) / 1000
        )
        self._counters = counters
        self.reaper: StuckConnectionReaper | None = None
        self.server = grpc.aio.server(
            interceptors=interceptors,  # none unless a credential needs fetching first
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.keepalive_time_ms", keepalive_ms),
                ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
                # A client may ping once a second when no data flows; the third ping
                # sooner ends its connection (GOAWAY too_many_pings): acks to a
                # client that pings and never reads do not pile up.
                ("grpc.http2.min_ping_interval_without_data_ms", 1000),
                ("grpc.http2.max_ping_strikes", 2),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.so_reuseport", 0),
                *limits.options(),
            ],
            # Past it grpc answers RESOURCE_EXHAUSTED itself, before any handler.
            maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        )
        self.health = HealthService()
        # Streams that no pipeline stage shares out (Health/Watch, reflection, a
        # Channel before its handshake) keep to a share per client address.
        self.streams = StreamQuota(limits.max_streams_per_address)
        # Every call: its address's share of calls, a turn to receive its request.
        self.gate = limits.call_gate(max_message_bytes, counters)
        self._connection_limits = limits.connection_limits()
        health = standard_handler(HEALTH, self.health, streams=self.streams)
        self.server.add_generic_rpc_handlers((self.gate.wrap(health),))
        self._listing_gate = listing_gate
        self.credentials = credentials  # TLS (``transport.tls_grpc``); None: plaintext
        self._services: list[str] = []
        self.port = 0

    def add(self, handler: grpc.GenericRpcHandler[Any, Any], service_name: str) -> None:
        # The node's own request stream (a peer's channel) opens with a message at
        # once; a user's may begin with a silent client (``call_gate``).
        streams = "first" if service_name == AGENT_NODE else "none"
        self.server.add_generic_rpc_handlers((self.gate.wrap(handler, streams=streams),))
        self._services.append(service_name)

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (TLS with ``credentials``, else plaintext) and serve."""
        credentials = self.credentials
        handlers = reflection_handlers(
            [*self._services, HEALTH.full_name],
            gate_for=self._listing_gate,
            streams=self.streams,
        )
        # A reflection stream's every request waits its turn and comes in time: its
        # requests are small, and grpcurl asks them one after the other.
        self.server.add_generic_rpc_handlers(
            tuple(self.gate.wrap(handler, streams="every") for handler in handlers)
        )
        address = join_host_port(host, port)
        if port:
            _check_free(host, port, address)  # grpc would log its own failure first
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpcio raises where it used to return 0
            raise OSError(f"cannot bind the gRPC door to {address}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot bind the gRPC door to {address}")
        await self.server.start()
        self.reaper = StuckConnectionReaper(
            self.port,
            # Once a second at most: an address past its share of connections
            # keeps the extra ones until the next sweep.
            interval=min(self._reap_after / 4, 1.0),
            after=self._reap_after,
            silent_after=self._silent_after,
            counters=self._counters,
            limits=self._connection_limits,
            calls=self.gate.calls,
        )
        self.reaper.start()
        for name in ("", *self._services):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float) -> None:
        """Health NOT_SERVING first (peers and balancers stop sending), then drain."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)  # a stuck connection could hold the drain up
        if self.reaper is not None:
            await self.reaper.stop()

    async def stop_now(self) -> None:
        """Cancel every call still in flight; cuts short a ``stop`` that is draining."""
        await self.server.stop(None)
        if self.reaper is not None:
            await self.reaper.stop()
