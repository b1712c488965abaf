"""How a starting node's parts are made and wired (the composition root's workshop).

``build_parts`` makes, in order: the channel hub and its gRPC streams, the peer
connector, the discovery supervisor, ``NodeService`` with its forwarder, the gRPC
server with every door, and (when HTTP is on) the HTTP bridge. Each part gets
exactly what it uses; ``NodeParts.stop`` takes them down in the reverse order.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

from google.protobuf.descriptor import ServiceDescriptor

from aralnode import _proto as pb
from aralnode._access import NodeTls, access_identity, breakers, install_access, node_tls
from aralnode._halts import wire_halts
from aralnode._interop import install_interop
from aralnode._logs import get_logger
from aralnode._tracing import install_tracing
from aralnode._tracing import shutdown as shutdown_tracing
from aralnode._version import __version__
from aralnode.access.bearer import BearerAuthenticator
from aralnode.access.breaker import Breakers
from aralnode.access.tls import (
    server_ssl_context,
)
from aralnode.config import NodeConfig
from aralnode.core import codec
from aralnode.core.addresses import join_host_port
from aralnode.core.capabilities import CapabilityRegistry, ProtoService
from aralnode.core.clock import SYSTEM_CLOCK, Clock
from aralnode.core.envelope import SUPPORTED_VERSIONS
from aralnode.core.errors import PeerNotFound
from aralnode.core.handshake import VerifiedCard
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.peers import PeerInfo, PeerState, PeerTable
from aralnode.core.replay import ReplayGuard
from aralnode.discovery.backend import Announcement, DiscoveryBackend
from aralnode.discovery.supervisor import INBOUND_SOURCE, Supervisor
from aralnode.mesh.connector import PeerConnector, card_fields
from aralnode.mesh.hub import ChannelHub, ChannelSettings, NotificationHandler
from aralnode.mesh.streams import ChannelStreams
from aralnode.service.calls import Forwarder
from aralnode.service.connections import admit_peer
from aralnode.service.context import ContextBuilder
from aralnode.service.node_service import Envelopes, NodeService, peer_proto
from aralnode.service.pipeline import Pipeline
from aralnode.service.tracing import client_span
from aralnode.store.base import Inbox, Outbox
from aralnode.store.memory import MemoryInbox, MemoryOutbox
from aralnode.store.proto_docs import ProtoDocs
from aralnode.store.sqlite import SqliteStore
from aralnode.transport.grpc_credentials import PrepareCredentials
from aralnode.transport.grpc_door import AgentNodeDoor, listing_gate, service_handler
from aralnode.transport.grpc_server import GrpcLimits, GrpcServer, transport_limit
from aralnode.transport.tls_grpc import ClientTls, server_credentials

CHANNEL_STORE = "channels.sqlite3"
log = get_logger("aralnode")


class NodeView(Protocol):
    """What the workshop reads from the node it builds for."""

    config: NodeConfig
    clock: Clock
    registry: CapabilityRegistry
    keyring: KeyRing
    peer_table: PeerTable
    pipeline: Pipeline
    contexts: ContextBuilder
    grpc_port: int
    http_port: int | None
    tracer_provider: Any
    _proto_docs: ProtoDocs
    _notification_handlers: list[tuple[str | None, NotificationHandler]]

    @property
    def identity(self) -> Identity: ...

    @property
    def node_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    def card(self) -> pb.SignedNodeCard: ...

    def status(self) -> pb.NodeStatus: ...

    def advertised_hosts(self) -> list[str]: ...


@dataclass(slots=True)
class NodeParts:
    """Everything a running node runs."""

    replay: ReplayGuard
    hub: ChannelHub
    streams: ChannelStreams
    connector: PeerConnector
    discovery: Supervisor
    service: NodeService
    grpc: GrpcServer
    http: Any  # aralnode.bridge.http.HttpBridge; None without HTTP
    send: PeerSender
    access: BearerAuthenticator | None = None  # bearer tokens and API keys (ident)
    tracer_provider: Any = None  # the node's own, when tracing (flushed at the end)

    async def stop_now(self) -> None:
        """Cut a draining ``stop`` short: the calls still in flight are cancelled."""
        if self.http is not None:
            self.http.stop_now()
        await self.grpc.stop_now()

    async def stop(self, drain: float) -> None:
        """NOT_SERVING, goodbye, channels closed, both doors drained at once (one
        grace period, not two), peers' clients closed."""
        # NOT_SERVING before the goodbye: peers that re-check a goodbye must find us
        # draining, or they would keep us (see discovery.supervisor).
        await self.grpc.health.enter_graceful_shutdown()
        await self.discovery.stop()
        await self.streams.close()
        draining = [self.grpc.stop(drain)]
        if self.http is not None:
            draining.append(self.http.stop(drain))
        await asyncio.gather(*draining)
        await self.connector.close()
        if self.access is not None:
            await self.access.close()
        await shutdown_tracing(self.tracer_provider, drain)


class PeerSender:
    """Sends a request a pipeline already judged: over the peer's channel, or as a
    unary signed ``Invoke`` to a peer that refused channels (nodes of the ARAL
    interop profile may serve Invoke alone)."""

    def __init__(
        self, hub: ChannelHub, connector: PeerConnector, breakers: Breakers | None = None
    ) -> None:
        self.hub = hub
        self.connector = connector
        # A peer that keeps failing is not called for a while (access.breaker).
        self.breakers = breakers or Breakers(SYSTEM_CLOCK, failures=0)

    async def __call__(
        self,
        peer: str,
        capability: str,
        params: Any,
        *,
        timeout: float | None,
        on_behalf_of: str,
        trace_id: str,
        content_type: str = codec.JSON,
        delegation: pb.Delegation | None = None,
    ) -> Any:
        pc = self.hub.peers.get(peer)
        client = self.connector.clients.get(peer)
        options: dict[str, Any] = {
            "timeout": timeout, "content_type": content_type, "on_behalf_of": on_behalf_of,
            "trace_id": trace_id, "delegation": delegation,
        }  # fmt: skip
        if pc is not None and pc.unsupported and client is not None:
            # A peer that serves no channels: a unary Invoke, its client span as a
            # channel request has (the hub makes that one).
            with client_span(self.hub.tracer, capability, peer):
                return await self.breakers.call(
                    peer, lambda: client.request(capability, params, **options)
                )
        return await self.breakers.call(
            peer, lambda: self.hub.send_request(peer, capability, params, **options)
        )


class NodeFacts:
    """What ``NodeService`` and the bridges read of the node (its ``NodeInfo``)."""

    def __init__(self, node: NodeView, connector: PeerConnector) -> None:
        self.node = node
        self.connector = connector
        self.discovery: Supervisor | None = None
        self.breakers = Breakers(SYSTEM_CLOCK, failures=0)  # the node's, once built
        self.hub: ChannelHub | None = None  # the node's, once built

    def status(self) -> pb.NodeStatus:
        status = self.node.status()
        for peer, state in self.breakers.not_closed().items():
            status.breakers[peer] = state.value
        return status

    def card(self) -> pb.SignedNodeCard:
        return self.node.card()

    def peer_protos(self) -> list[pb.Peer]:
        return [self.peer_as_proto(p) for p in self.node.peer_table.snapshot()]

    def peer_as_proto(self, peer: PeerInfo) -> pb.Peer:
        proto = peer_proto(peer)
        state, wait = self.breakers.state(peer.node_id)
        proto.breaker_state = state.value
        proto.breaker_retry_after_ms = math.ceil(wait * 1000)
        channel = self.hub.peers.get(peer.node_id) if self.hub is not None else None
        if channel is not None:  # message counts each way, for rates (the /ui page)
            proto.channel_sent_seq = channel.sent_max
            proto.channel_received_seq = channel.inbound.accepted_seq
        return proto

    def capabilities_of(self, node_id: str) -> pb.ListCapabilitiesResponse:
        """This node's capabilities, or a verified peer's as its card listed them."""
        node = self.node
        if node_id and node_id != node.node_id:
            caps = self.connector.peer_capabilities(node_id)
            return pb.ListCapabilitiesResponse(node_id=node_id, capabilities=caps)
        own = [c.to_proto() for c in node.registry]
        return pb.ListCapabilitiesResponse(node_id=node.node_id, capabilities=own)

    def peer_capabilities(self, node_id: str) -> list[pb.Capability]:
        try:
            return self.connector.peer_capabilities(node_id)
        except PeerNotFound:
            return []

    def connected_peers(self) -> list[pb.Peer]:
        return [p for p in self.peer_protos() if p.state == pb.PeerState.PEER_STATE_CONNECTED]

    def inbound_handshake(self, verified: VerifiedCard, transport_peer: str, version: str) -> None:
        # Not CONNECTED yet: discovery keeps it unreached (bounded) and dials it back.
        assert self.discovery is not None
        self.discovery.inbound(
            verified, transport_peer, card_fields(verified, "", version, INBOUND_SOURCE)
        )
        # Kept (it is in the table now) until the table forgets it: its capabilities
        # are listed even before our own dial reaches it, as calls to it already go.
        self.connector.remember_inbound(verified)


def build_parts(
    node: NodeView,
    backends: Sequence[DiscoveryBackend],
    services: list[ProtoService],
) -> NodeParts:
    """Every part of a starting node, wired (nothing is started yet)."""
    cfg = node.config
    tls = node_tls(cfg, node.contexts)  # first: bad TLS files refuse the start before anything runs
    replay = ReplayGuard(node.clock, window_ms=cfg.replay_window_ms, skew_ms=cfg.clock_skew_ms)
    hub = _hub(node, replay)
    try:
        access = access_identity(cfg)
        parts = _around_hub(node, backends, services, replay, hub, tls, access=access)
        parts.access = access
        parts.tracer_provider = install_tracing(node, node.pipeline, hub)
        install_access(node.pipeline.stages.authenticate, parts.http, access)
        return parts
    except BaseException:
        hub.discard()  # its stores and threads: nothing else was started
        raise


def _around_hub(  # noqa: PLR0917 - the parts made so far, in order
    node: NodeView,
    backends: Sequence[DiscoveryBackend],
    services: list[ProtoService],
    replay: ReplayGuard,
    hub: ChannelHub,
    tls: NodeTls | None,
    *,
    access: BearerAuthenticator,
) -> NodeParts:
    cfg = node.config
    client_tls = ClientTls(tls.files) if tls is not None else None
    bind = tls.bind if tls is not None else None
    admit = lambda peer, address: admit_peer(node.pipeline, peer, address)  # noqa: E731
    streams = ChannelStreams(hub, tls=client_tls, bind_certificate=bind, admit=admit)
    # A peer the table forgets (GONE long enough, or evicted) leaves nothing behind.
    node.peer_table.on_forget(streams.forget)
    connector = PeerConnector(
        identity=node.identity,
        keyring=node.keyring,
        clock=node.clock,
        table=node.peer_table,
        card=node.card,
        max_message_bytes=cfg.max_message_bytes,  # as our server allows
        card_limits=cfg.card_limits,
        on_verified=streams.dial,
        tls=client_tls,
        admit=admit,
    )
    wire_halts(node, hub)
    facts = NodeFacts(node, connector)
    facts.hub = hub
    discovery = facts.discovery = _supervisor(node, connector, backends, hub)
    send = PeerSender(hub, connector, breakers(cfg, node.clock, node.pipeline.counters))
    facts.breakers = send.breakers
    service = NodeService(
        info=facts,
        pipeline=node.pipeline,
        contexts=node.contexts,
        forward=Forwarder(
            node.pipeline, send, default_timeout=cfg.forward_timeout_seconds, node_id=node.node_id
        ),
        envelopes=Envelopes(
            identity=node.identity,
            keyring=node.keyring,
            replay=replay,
            allow_unsigned=cfg.allow_unsigned,
            max_message_bytes=cfg.max_message_bytes,
            keepalive_ms=cfg.keepalive_ms,
            card_limits=cfg.card_limits,
        ),
        clock=node.clock,
    )
    service.bind_certificate = bind
    grpc = _grpc(node, service, services, streams, tls, access)
    http = _http(node, service, services, tls) if cfg.http_port is not None else None
    install_interop(node, service, grpc, http)
    return NodeParts(replay, hub, streams, connector, discovery, service, grpc, http, send)


def _supervisor(
    node: NodeView, connector: PeerConnector, backends: Sequence[DiscoveryBackend], hub: ChannelHub
) -> Supervisor:
    """Discovery: the backends' hints, verified through the connector."""
    cfg = node.config
    return Supervisor(
        node_id=node.node_id,
        connector=connector,
        keyring=node.keyring,
        counters=node.pipeline.counters,
        backends=backends,
        announcement=lambda: announcement(node),
        live_channels=hub.connected_peers,
        keepalive_ms=cfg.keepalive_ms,
        peer_timeout_ms=cfg.peer_timeout_ms,
        dial_back=cfg.discovery != "none",
    )


def _grpc(  # noqa: PLR0917 - the parts made so far, in order
    node: NodeView,
    service: NodeService,
    services: list[ProtoService],
    streams: ChannelStreams,
    tls: NodeTls | None,
    access: BearerAuthenticator,
) -> GrpcServer:
    """The gRPC server with its doors (AgentNode, users' services), from the config."""
    cfg = node.config
    limits = GrpcLimits(
        max_connections=cfg.grpc_max_connections,
        max_streams_per_connection=cfg.grpc_max_streams_per_connection,
        max_concurrent_rpcs=cfg.grpc_max_concurrent_rpcs,
        handshake_timeout_ms=cfg.grpc_handshake_timeout_ms,
        connection_idle_ms=cfg.grpc_connection_idle_ms,
        connection_age_ms=cfg.grpc_connection_age_ms,
        connection_age_grace_ms=int(cfg.drain_seconds * 1000),
        max_streams_per_address=cfg.grpc_max_streams_per_address,
        max_connections_per_address=cfg.grpc_max_connections_per_address,
        request_timeout_ms=cfg.grpc_request_timeout_ms,
    )
    grpc = GrpcServer(
        max_message_bytes=cfg.max_message_bytes,
        keepalive_ms=cfg.keepalive_ms,
        limits=limits,
        listing_gate=(
            functools.partial(listing_gate, node.pipeline, node.contexts)
            if cfg.listing_requires_auth
            else None
        ),
        credentials=server_credentials(tls.files) if tls is not None else None,
        interceptors=(
            [PrepareCredentials(access.prepare, node.pipeline.stages.authenticate.spent)]
            if access.needs_preparing
            else []
        ),
        counters=node.pipeline.counters,
    )
    door = AgentNodeDoor(
        service,
        node.contexts,
        max_message_bytes=cfg.max_message_bytes,
        channel=streams.serve,
        streams=grpc.streams,
    )
    grpc.add(door.handler(), pb.AGENT_NODE_SERVICE_NAME)
    for served in services:
        handler = service_handler(
            served, node.pipeline, node.contexts, max_send=transport_limit(cfg.max_message_bytes)
        )
        grpc.add(handler, served.full_name)
    return grpc


def _hub(node: NodeView, replay: ReplayGuard) -> ChannelHub:
    """The hub, from the config (memory or SQLite stores)."""
    cfg = node.config
    outbox: Outbox
    inbox: Inbox
    if cfg.durable:
        store = SqliteStore(cfg.resolved_data_dir / CHANNEL_STORE)
        outbox = inbox = store
    else:
        outbox, inbox = MemoryOutbox(), MemoryInbox()
    table = node.peer_table

    halts = node.pipeline.stages.govern.halts

    def is_verified(node_id: str) -> bool:
        # A channel opens only for a peer whose card we verified in a handshake
        # (either direction); its key is then pinned in the key ring. A halted
        # peer opens none.
        if halts and halts.is_halted(node_id):
            return False
        peer = table.get(node_id)
        return peer is not None and peer.state in (PeerState.CONNECTED, PeerState.STALE)

    return ChannelHub(
        identity=node.identity,
        keyring=node.keyring,
        replay=replay,
        pipeline=node.pipeline,
        contexts=node.contexts,
        clock=node.clock,
        outbox=outbox,
        inbox=inbox,
        is_verified=is_verified,
        card=node.card,
        handlers=node._notification_handlers,
        settings=ChannelSettings(
            window=cfg.channel_window,
            outbox_limit=cfg.outbox_limit,
            keepalive_ms=cfg.keepalive_ms,
            timeout_ms=cfg.channel_timeout_ms,
            sign=cfg.channel_signing,
            allow_unsigned=cfg.allow_unsigned,
            max_message_bytes=cfg.max_message_bytes,
            response_bytes=cfg.channel_response_bytes,
            card_limits=cfg.card_limits,
            verify_processes=cfg.channel_verify_processes,
        ),
    )


def _http(
    node: NodeView, service: NodeService, services: list[ProtoService], tls: NodeTls | None
) -> Any:
    # Imported here: starlette, uvicorn and the MCP SDK load only when HTTP is on.
    from aralnode.bridge._oauth import ProtectedResource  # noqa: PLC0415 - see above
    from aralnode.bridge.http import HttpBridge, HttpLimits  # noqa: PLC0415 - see above

    cfg = node.config
    return HttpBridge(
        service,
        node.peer_table,
        services,
        name=node.name,
        # The addresses we advertise are ours: a Host naming one of them is no rebinding.
        allowed_hosts=[
            *cfg.http_allowed_hosts,
            *(join_host_port(h, "*") for h in node.advertised_hosts()),
        ],
        allowed_origins=list(cfg.http_allowed_origins),
        max_body_bytes=cfg.max_message_bytes,
        version=__version__,
        docs=node._proto_docs,  # comments read once, for capabilities and bridges
        limits=HttpLimits(
            parser=cfg.http_parser,
            max_header_bytes=cfg.http_max_header_bytes,
            max_headers=cfg.http_max_headers,
            header_timeout=cfg.http_header_timeout_seconds,
            body_timeout=cfg.http_body_timeout_seconds,
            max_connections=cfg.http_max_connections,
            max_connections_per_address=cfg.http_max_connections_per_address,
            mcp_sessions=cfg.mcp_max_sessions,
            mcp_sessions_per_client=cfg.mcp_max_sessions_per_client,
            ws_sockets=cfg.ws_max_connections,
            ws_sockets_per_client=cfg.ws_max_connections_per_client,
            listing_requires_auth=cfg.listing_requires_auth,
        ),
        ssl_context=(
            server_ssl_context(tls.files.material, mutual=False)
            if tls is not None and cfg.tls_http
            else None
        ),
        oauth=ProtectedResource(
            resource=cfg.oauth_resource,
            authorization_servers=list(cfg.oauth_authorization_servers)
            or ([cfg.jwt_issuer] if cfg.jwt_issuer else []),
            scopes_supported=list(cfg.oauth_scopes_supported),
            session_ttl=cfg.session_ttl_seconds,
        ),
    )


def announcement(node: NodeView) -> Announcement:
    """What ``node`` announces to discovery."""
    return Announcement(
        node_id=node.node_id,
        fingerprint=node.identity.public_key.fingerprint,
        protocol_versions=SUPPORTED_VERSIONS,
        grpc_port=node.grpc_port,
        capability_digest=node.registry.digest,
        http_port=node.http_port or None,  # bound port, once the HTTP door is up
        hosts=tuple(node.advertised_hosts()),
        # The A2A standard's well-known path, on the HTTP port (bridge/a2a.py).
        a2a_card="/.well-known/agent-card.json" if node.config.a2a and node.http_port else "",
    )


def build_backends(config: NodeConfig, node_id: str) -> list[DiscoveryBackend]:
    """The discovery backends ``config`` names: mDNS, etcd, and the static peers in
    any mode that has them."""
    backends: list[DiscoveryBackend] = []
    if "mdns" in config.discovery_backends:
        from aralnode.discovery.mdns import MdnsBackend, instance_label  # noqa: PLC0415

        backends.append(
            MdnsBackend(
                label=instance_label(config.name, node_id),
                host_label=f"aral-{node_id[:16]}",
                interfaces=config.interfaces,
            )
        )
    if "etcd" in config.discovery_backends:
        from aralnode.discovery import etcd  # noqa: PLC0415

        backends.append(etcd.build(config))
        if config.etcd_bridge:  # after both backends it joins (config: mdns,etcd)
            from aralnode.discovery.etcd_bridge import EtcdBridge  # noqa: PLC0415

            backends.append(EtcdBridge(backends[-1], backends[0], node_id))  # type: ignore[arg-type]
    if config.peers:
        from aralnode.discovery.static import StaticBackend  # noqa: PLC0415

        backends.append(StaticBackend(config.peers))
    return backends


def service_descriptor(
    service: ServiceDescriptor | ModuleType, name: str | None
) -> ServiceDescriptor:
    """The descriptor a user named: itself, or the one (or ``name``d) service of a
    generated ``*_pb2`` module."""
    if isinstance(service, ServiceDescriptor):
        return service
    services: dict[str, ServiceDescriptor] = service.DESCRIPTOR.services_by_name
    if name is None:
        if len(services) != 1:
            raise ValueError(f"{service.__name__} has {len(services)} services; pass name=")
        return next(iter(services.values()))
    if name not in services:
        raise ValueError(f"{service.__name__} has no service {name!r}")
    return services[name]


def import_spec(spec: str) -> ModuleType:
    """A module by dotted name, or a ``.py`` file (its folder importable while it loads)."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {spec}")
        mod_name = f"aralnode_loaded_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"cannot load {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module
    return importlib.import_module(spec)


__all__ = [
    "NodeFacts",
    "NodeParts",
    "PeerSender",
    "announcement",
    "build_backends",
    "build_parts",
    "import_spec",
    "service_descriptor",
]
