"""The composition root: a ``Node`` builds every part from its config and runs them.

::

    service   ContextBuilder, Pipeline (its Stages), NodeService, Forwarder
    mesh      ChannelHub + ChannelStreams (A2A channels), PeerConnector
    discovery Supervisor over the backends (mdns, static)
    doors     the gRPC server (AgentNodeDoor, users' services), the HTTP bridge

Everything is made here and handed to the parts that use it; no part reaches back into
the node. The node is also the in-process door (``invoke``, ``request``, ``notify``,
``subscribe``), and its contexts come from the same builder.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import ModuleType
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from aralnode import _proto as pb
from aralnode._access import node_pipeline
from aralnode._assembly import (
    NodeParts,
    build_backends,
    build_parts,
    import_spec,
    service_descriptor,
)
from aralnode._governance import Governance
from aralnode._interop import request_a2a
from aralnode._logs import get_logger
from aralnode._operations import install_operations
from aralnode.access.delegation import program_statement
from aralnode.config import NodeConfig
from aralnode.core import codec
from aralnode.core.addresses import join_host_port
from aralnode.core.capabilities import (
    Capability,
    CapabilityRegistry,
    ProtoService,
    function_capability,
    method_capabilities,
)
from aralnode.core.clock import SYSTEM_CLOCK, Clock
from aralnode.core.context import CallContext, new_trace_id
from aralnode.core.envelope import SUPPORTED_VERSIONS, new_message_id
from aralnode.core.errors import MessageTooLarge, Unavailable
from aralnode.core.governance import Direction, Evaluator
from aralnode.core.handshake import SOFTWARE, build_card, check_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.peers import PRESENT, PeerInfo, PeerTable
from aralnode.core.replay import ReplayGuard
from aralnode.discovery.addresses import advertised_hosts
from aralnode.discovery.backend import DiscoveryBackend
from aralnode.discovery.events import PeerEventStream
from aralnode.discovery.supervisor import Supervisor
from aralnode.mesh.connector import PeerConnector
from aralnode.mesh.hub import ChannelHub, NotificationHandler, Overflow, Subscription
from aralnode.service.auth import Authenticator
from aralnode.service.context import ContextBuilder
from aralnode.service.stages import AuditSink, ResponseCheck
from aralnode.store.datadir import lock_data_dir, release_data_dir
from aralnode.store.keys import load_identity
from aralnode.store.proto_docs import ProtoDocs

log = get_logger("aralnode")
# Where asyncio reports a library's abandoned task (the a2a-sdk leaves two for each
# send to an ended task): an outsider's requests must not flood it, unescaped.
get_logger("asyncio")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Node:
    """One aralnode: capabilities, its doors, peers, and their lifecycle.

    Example::

        node = Node(NodeConfig(name="alpha", grpc_port=0, discovery="none"))

        @node.capability(risk="read_only")
        async def echo(text: str) -> str:
            '''Echo the text back.'''
            return text

        async with node:
            await node.wait_closed()

    Args:
        governance: The evaluator of the pipeline's govern stage (default: allow all).
        backends: Discovery backends to use instead of those the config names.
        authenticator: Who callers are, for every door: asked first; a caller it
            does not name is decided by the node's own rule (``PeerAuthenticator``,
            with ``peer_scopes`` and ``peer_grants``).
        checks: Response checks of the post-check stage, in order.
        audit: Audit sinks; a call whose record cannot be written fails.
    """

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        identity: Identity | None = None,
        clock: Clock = SYSTEM_CLOCK,
        governance: Evaluator | None = None,
        backends: Sequence[DiscoveryBackend] | None = None,
        authenticator: Authenticator | None = None,
        checks: Sequence[ResponseCheck] = (),
        audit: Sequence[AuditSink] = (),
        tracer_provider: Any = None,  # an OpenTelemetry TracerProvider (docs/tracing.md)
    ) -> None:
        self.config = cfg = config or NodeConfig()
        self.tracer_provider = tracer_provider
        self.clock = clock
        self._identity = identity
        self.governing = Governance()  # the policy file and the audit log, once started
        self.registry = CapabilityRegistry()
        self.keyring = KeyRing()
        self.peer_table = PeerTable(
            clock,
            max_inbound_per_origin=cfg.max_inbound_per_address,
            # A granted peer is trusted by id: never evicted to admit a stranger.
            protected=lambda key: key in cfg.peer_grants,
        )
        self.contexts = ContextBuilder(clock)
        self.roles, self.pipeline = node_pipeline(
            cfg,
            self.registry,
            clock,
            lambda: self.node_id,
            authenticator=authenticator,
            governance=governance,
            checks=checks,
            audit=audit,
        )
        self._backends = None if backends is None else list(backends)
        self._services: list[ProtoService] = []
        self._parts: NodeParts | None = None
        self._lock: int | None = None  # the data dir's lock, held while the node runs
        self._stopping: asyncio.Future[None] | None = None
        self._streams: weakref.WeakSet[PeerEventStream] = weakref.WeakSet()
        self._card: pb.SignedNodeCard | None = None
        self._hosts: list[str] | None = None  # advertised hosts, read with the card
        self._closed = asyncio.Event()
        self._state = "NEW"
        self._started_ms = 0
        self.grpc_port = 0
        self.http_port: int | None = None  # bound HTTP port once started; None if disabled
        self.registry.on_change(self._capabilities_changed)
        self._proto_docs = ProtoDocs()
        # Handlers registered before start (``setup()`` under ``--load``): the hub
        # starts with them, so no notification arrives before its handler.
        self._notification_handlers: list[tuple[str | None, NotificationHandler]] = []

    @property
    def governance(self) -> Evaluator:
        """The evaluator every door's calls and every channel message go through."""
        return self.pipeline.governance

    @governance.setter
    def governance(self, evaluator: Evaluator) -> None:
        self.pipeline.governance = evaluator

    # -- identity and parts ----------------------------------------------------------

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = load_identity(self.config.resolved_data_dir, self.config.key_algorithm)
        return self._identity

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def parts(self) -> NodeParts:
        """What the node runs (once started; before, ``Unavailable``: ``NOT_STARTED``)."""
        if self._parts is None:
            raise Unavailable("the node is not running", reason="NOT_STARTED")
        return self._parts

    @property
    def replay(self) -> ReplayGuard:
        """The replay window of signed messages (once started)."""
        return self.parts.replay

    @property
    def channels(self) -> ChannelHub | None:
        """A2A channels, once started."""
        return None if self._parts is None else self._parts.hub

    @property
    def connector(self) -> PeerConnector:
        """Verified peers' clients (once started)."""
        return self.parts.connector

    @property
    def discovery(self) -> Supervisor:
        """The discovery supervisor (once started)."""
        return self.parts.discovery

    @property
    def address(self) -> str:
        """``host:port`` at which this node's gRPC door answers: the bound host, or on
        a wildcard bind the first address it advertises (see ``advertised_hosts``)."""
        return join_host_port(self.advertised_hosts()[0], self.grpc_port)

    def advertised_hosts(self) -> list[str]:
        """Hosts peers can reach this node at (``discovery.advertised_hosts``). On a
        wildcard bind this enumerates the interfaces, so it is read once per card:
        again only when the card is rebuilt (capabilities changed)."""
        if self._hosts is None:
            self._hosts = advertised_hosts(self.config.bind_host, self.config.interfaces)
        return self._hosts

    # -- registration ----------------------------------------------------------------

    def capability(
        self,
        fn: F | None = None,
        *,
        id: str | None = None,
        description: str | None = None,
        scopes: tuple[str, ...] = (),
        risk: str = "unspecified",
    ) -> Any:
        """Register an ``async def`` as a capability; usable bare or with options."""

        def register(f: F) -> F:
            self.registry.add(
                function_capability(f, id=id, description=description, scopes=scopes, risk=risk)
            )
            return f

        return register(fn) if fn is not None else register

    def add_capability(self, cap: Capability, *, replace: bool = False) -> Capability:
        return self.registry.add(cap, replace=replace)

    def add_service(
        self,
        servicer: object,
        service: ServiceDescriptor | ModuleType,
        name: str | None = None,
        *,
        scopes: Mapping[str, Sequence[str]] | None = None,
    ) -> list[Capability]:
        """Serve a protobuf service: over gRPC as itself, and each unary method as a
        capability (``package.Service/Method``) on every other door.

        Args:
            servicer: Object with one ``async def Method(request, ctx)`` per rpc.
            service: The service descriptor, or a generated ``*_pb2`` module
                (then ``name`` picks the service; optional if it has one).
            scopes: Scopes a caller needs, by method name (``{"Delete": ("admin",)}``);
                required on every door, the method's own gRPC one included.
        """
        if self._state != "NEW":
            raise RuntimeError("add services before the node starts")
        descriptor = service_descriptor(service, name)
        comments = self._proto_docs.for_files([descriptor.file])
        caps = method_capabilities(servicer, descriptor, comments=comments, scopes=scopes)
        for cap in caps:
            self.registry.add(cap)
        self.registry.note_streams(descriptor)
        self._services.append(
            ProtoService(servicer, descriptor, {m: tuple(s) for m, s in dict(scopes or {}).items()})
        )
        return caps

    def load(self, spec: str | os.PathLike[str]) -> None:
        """Import a module or ``.py`` file (a path) and call its ``setup(node)``.

        Raises:
            ValueError: the module has no ``setup``, or it is not a plain function.
        """
        module = import_spec(spec := os.fspath(spec))
        setup = getattr(module, "setup", None)
        if setup is None:
            raise ValueError(f"{spec} has no setup(node) function")
        if inspect.iscoroutinefunction(setup):
            raise ValueError(f"{spec}: setup(node) must be a plain function, not async def")
        result = setup(self)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never run: no "never awaited" warning either
            raise ValueError(f"{spec}: setup(node) must be a plain function, not awaitable")

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "NEW":
            raise RuntimeError(f"node is {self._state}")
        cfg = self.config
        self._state = "STARTING"
        self._lock = lock_data_dir(cfg.resolved_data_dir)
        try:
            self.registry.owner = self.node_id  # (the identity may be loaded here)
            await self._start()
        except BaseException:
            # Whatever started is stopped, and the data dir is free again.
            with contextlib.suppress(Exception):
                await self.stop(grace=0)
            raise
        log.info("node %s (%s) serving gRPC on %s", cfg.name, self.node_id, self.address)

    async def _start(self) -> None:
        self.governing.start(self.config, self.identity, self.pipeline, self.clock, self.registry)
        backends = self._backends
        if backends is None:
            backends = build_backends(self.config, self.node_id)
        parts = self._parts = build_parts(self, backends, list(self._services))
        install_operations(self, parts)
        self.grpc_port = await parts.grpc.start(self.config.bind_host, self.config.grpc_port)
        if parts.http is not None:
            self.http_port = await parts.http.start(
                self.config.bind_host, self.config.http_port or 0
            )
            self._card = None  # the card now lists the HTTP endpoint too
        self._started_ms = self.clock.now_ms()
        self._state = "SERVING"
        await parts.discovery.start()

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, drain in-flight calls for ``grace`` seconds (default
        ``drain_seconds``), stop.

        Called again while an earlier call drains, it ends the drain now (the calls
        still in flight are cancelled) and returns once the node has stopped. The
        stop runs to its end even if the caller is cancelled meanwhile; the data dir
        is released however it ends."""
        if self._state in ("STOPPED", "NEW") and self._stopping is None:
            self._state = "STOPPED"
            self._closed.set()
            return
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop(grace))
        elif not self._stopping.done() and self._parts is not None:
            await self._parts.stop_now()
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        self._state = "DRAINING"
        try:
            for stream in list(self._streams):
                stream.close()
            if self._parts is not None:
                drain = self.config.drain_seconds if grace is None else grace
                await self._parts.stop(drain)
        finally:
            await self.governing.stop(self.pipeline)
            self._state = "STOPPED"
            if self._lock is not None:
                release_data_dir(self._lock)  # the data dir is free
                self._lock = None
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- card and status -------------------------------------------------------------

    def _endpoints(self) -> list[tuple[str, str]]:
        # Every address peers may reach us at: never 0.0.0.0, nor loopback on a LAN bind.
        hosts = self.advertised_hosts()
        out = [("grpc", join_host_port(h, self.grpc_port)) for h in hosts]
        if self.http_port:
            out += [("http", join_host_port(h, self.http_port)) for h in hosts]
        return out

    def card(self) -> pb.SignedNodeCard:
        if self._card is None:
            self._card = build_card(
                self.identity, name=self.name, endpoints=self._endpoints(),
                registry=self.registry, clock=self.clock,
            )  # fmt: skip
            self._check_own_card(self._card)
        return self._card

    def _check_own_card(self, signed: pb.SignedNodeCard) -> None:
        """Warn when our own card is past the bounds we hold peers' cards to: peers
        with the same bounds refuse it (``CARD_TOO_LARGE``) and never connect."""
        card = pb.NodeCard()
        card.ParseFromString(signed.card)
        try:
            check_card(card, self.config.card_limits)
        except MessageTooLarge as exc:
            log.warning("peers with this node's card bounds will refuse its card: %s", exc)

    def _capabilities_changed(self) -> None:
        self._card = None
        self._hosts = None
        if self._parts is not None:
            self._parts.discovery.capabilities_changed()

    def status(self) -> pb.NodeStatus:
        now = self.clock.now_ms()
        return pb.NodeStatus(
            node_id=self.node_id,
            name=self.name,
            software=SOFTWARE,
            protocol_versions=list(SUPPORTED_VERSIONS),
            endpoints=[pb.Endpoint(protocol=p, address=a) for p, a in self._endpoints()],
            started_at_unix_ms=self._started_ms,
            uptime_ms=now - self._started_ms if self._started_ms else 0,
            state=self._state,
            capability_count=len(self.registry),
            peer_count=sum(1 for p in self.peer_table.snapshot() if p.state in PRESENT),
            counters=dict(self.pipeline.counters),
            key_algorithm=self.identity.algorithm,
            key_fingerprint=self.identity.public_key.fingerprint,
            discovery=self.config.discovery,
        )

    # -- the in-process door ---------------------------------------------------------

    async def invoke(
        self, capability: str, params: Any = None, *, ctx: CallContext | None = None
    ) -> Any:
        """Run a local capability through the full pipeline (the in-process door).
        Without ``ctx`` the call is the node's own, with every scope; a ``ctx`` the
        program made keeps the caller and scopes it set."""
        return await self.pipeline.invoke(self.contexts.local(ctx), capability, params)

    async def request(
        self,
        peer: str,
        capability: str,
        params: Any = None,
        *,
        timeout: float | None = 30.0,
        content_type: str = codec.JSON,
        on_behalf_of: str = "",
        trace_id: str = "",
    ) -> Any:
        """Invoke ``capability`` on a verified peer over the A2A channel: judged by
        this node's pipeline (``Direction.SEND``), then a signed request; its
        signed response's result (see docs/channels.md).

        Only a peer that refused channels (answered UNIMPLEMENTED) is called with
        a unary signed ``Invoke`` instead: nodes of the ARAL interop profile may
        serve Invoke alone. An A2A agent that is no peer is reached by its Agent
        Card's URL as ``peer`` (``http(s)://…``, docs/a2a.md), judged alike.

        Args:
            on_behalf_of: The principal this node acts for ("anonymous" for an
                unauthenticated caller), stated in a signed delegation with the
                scopes of its implicit role here (``anonymous`` or
                ``authenticated``), so the peer grants no more than those and
                what it grants this node (docs/authorization.md).
        """
        if peer.startswith(("http://", "https://")):
            return await request_a2a(self, peer, capability, params, timeout=timeout)
        trace_id = trace_id or new_trace_id()  # carried: both ends' records name it
        ctx = self.contexts.local(trace_id=trace_id)
        params = self.pipeline.judge_message(
            ctx, capability, params, direction=Direction.SEND, peer=peer
        )
        return await self.parts.send(
            peer,
            capability,
            params,
            timeout=timeout,
            content_type=content_type,
            on_behalf_of=on_behalf_of,
            trace_id=trace_id,
            delegation=program_statement(
                self.roles, on_behalf_of, signer=self.node_id, now_ms=self.clock.now_ms(),
                ttl_ms=int((timeout or self.config.forward_timeout_seconds) * 1000),
            ) if on_behalf_of else None,
        )  # fmt: skip

    async def notify(
        self, peer: str, event: str, data: Any = None, *, content_type: str = codec.JSON
    ) -> str:
        """Send a notification over the channel, judged by this node's pipeline
        (``Direction.SEND``); returns its message id once queued (delivered at least
        once, in order; acked messages are never lost). Once in 32 calls it then lets
        the event loop run: cancelled there, it has queued the message (docs/channels.md)."""
        hub = self.parts.hub
        message_id = new_message_id()  # its trace: the records at both ends name it
        ctx = self.contexts.local(trace_id=message_id)
        data = self.pipeline.judge_message(ctx, event, data, direction=Direction.SEND, peer=peer)
        return await hub.send_notification(
            peer, event, data, content_type=content_type, message_id=message_id
        )

    async def broadcast(self, event: str, data: Any = None) -> dict[str, str]:
        """Notify every peer with a live channel; message id by peer (empty: it
        reached nobody). A peer whose channel is down is not included: ``notify``
        it to queue a message until its channel is back."""
        hub = self.parts.hub
        return {peer: await self.notify(peer, event, data) for peer in hub.connected_peers()}

    def subscribe(
        self,
        event: str | None = None,
        *,
        peer: str | None = None,
        maxsize: int | None = None,
        overflow: Overflow = "close",
    ) -> Subscription:
        """Notifications from peers as an async iterator with a bounded queue;
        ``overflow`` (``"close"``, ``"drop"``, ``"backpressure"``) says what happens
        when it is full (see ``Subscription``)::

        async with node.subscribe("price.changed") as sub:
            async for msg in sub:
                print(msg.peer, msg.data)
        """
        return self.parts.hub.subscribe(event, peer=peer, maxsize=maxsize, overflow=overflow)

    def on_notification(self, event: str | None, handler: NotificationHandler) -> None:
        """Register a transactional notification handler (see
        ``ChannelHub.on_notification``), before or after ``start()``."""
        if self._parts is None:
            self._notification_handlers.append((event, handler))
        else:
            self._parts.hub.on_notification(event, handler)

    # -- peers -----------------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        """A snapshot of every known peer."""
        return self.peer_table.snapshot()

    def peer_events(self, *, maxsize: int = 256) -> PeerEventStream:
        """An async iterator of peer changes (bounded; see ``PeerEventStream``); it
        ends when the node stops.

        Example::

            async for change in node.peer_events():
                print(change.event, change.peer.name, change.peer.state.name)
        """
        stream = PeerEventStream(self.peer_table.on_change, maxsize)
        if self._state in ("DRAINING", "STOPPED"):
            stream.close()
        self._streams.add(stream)
        return stream

    async def connect(
        self,
        address: str,
        *,
        expected_node_id: str = "",
        expected_fingerprint: str = "",
        source: str = "static",
    ) -> PeerInfo:
        """Dial ``address``, verify its card in a handshake, and keep it as a peer
        (see ``PeerConnector.connect``); return once its channel is open, so that
        ``notify``, ``request`` and ``broadcast`` right after reach it (or once the
        peer turned out to serve no channels: requests then go as ``Invoke``).

        Raises:
            Unavailable: ``CHANNEL_NOT_OPEN``, the peer was verified but its channel
                did not open within ``channel_open_timeout_seconds`` (the node keeps
                dialling it; what is sent meanwhile waits in the outbox).
        """
        parts = self.parts
        peer = await parts.connector.connect(
            address,
            expected_node_id=expected_node_id,
            expected_fingerprint=expected_fingerprint,
            source=source,
        )
        timeout = self.config.channel_open_timeout_seconds
        if not await parts.hub.peer(peer.node_id).wait_usable(timeout):
            raise Unavailable(
                f"{peer.node_id} is verified, but its channel did not open within {timeout}s",
                reason="CHANNEL_NOT_OPEN",
                details={"node_id": peer.node_id, "address": address},
            )
        return peer


__all__ = ["Node"]
