"""The composition root: a ``Node`` builds the core, the doors and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib
import importlib.util
import inspect
import logging
import os
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from aralnode import _proto as pb
from aralnode.bridge._docs import ProtoDocs
from aralnode.channels import ChannelHub, NotificationHandler, Overflow, Subscription, build_hub
from aralnode.config import NodeConfig
from aralnode.core import codec
from aralnode.core.addresses import join_host_port
from aralnode.core.capabilities import (
    Capability,
    CapabilityRegistry,
    function_capability,
    method_capabilities,
)
from aralnode.core.clock import SYSTEM_CLOCK, Clock
from aralnode.core.context import CallContext
from aralnode.core.envelope import SUPPORTED_VERSIONS
from aralnode.core.errors import (
    AralError,
    KeyMismatch,
    PeerNotFound,
    RateLimited,
    Unavailable,
)
from aralnode.core.governance import AllowAll, Direction, Evaluator
from aralnode.core.handshake import SOFTWARE, VerifiedCard, build_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.peers import PeerEvent, PeerInfo, PeerState, PeerTable, PeerTableFull
from aralnode.core.pipeline import ALL_SCOPES, Pipeline
from aralnode.core.replay import ReplayGuard
from aralnode.core.tasks import TaskSet
from aralnode.discovery import Discovery, PeerEventStream, advertised_hosts
from aralnode.transport.grpc_client import NodeClient
from aralnode.transport.grpc_server import (
    AgentNodeService,
    GrpcServer,
    NodeHooks,
    Security,
    service_handler,
)

log = logging.getLogger("aralnode")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Node:
    """One aralnode: capabilities, the gRPC door, peers, and their lifecycle.

    Example::

        node = Node(NodeConfig(name="alpha", grpc_port=0, discovery="none"))

        @node.capability(risk="read_only")
        async def echo(text: str) -> str:
            '''Echo the text back.'''
            return text

        async with node:
            await node.wait_closed()
    """

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        identity: Identity | None = None,
        clock: Clock = SYSTEM_CLOCK,
        governance: Evaluator | None = None,
    ) -> None:
        self.config = config or NodeConfig()
        self.clock = clock
        self._identity = identity
        self.registry = CapabilityRegistry()
        self.pipeline = Pipeline(
            self.registry,
            governance or AllowAll(),
            clock,
            max_concurrent=self.config.max_concurrent,
            allow_anonymous=self.config.allow_unsigned,
        )
        self.keyring = KeyRing()
        self.peer_table = PeerTable(clock)
        self._services: list[tuple[object, ServiceDescriptor]] = []
        self._server: GrpcServer | None = None
        self._clients: dict[str, NodeClient] = {}
        self._tasks = TaskSet()
        self._lock: int | None = None  # the data dir's lock, held while the node runs
        self._stopping: asyncio.Future[None] | None = None
        self._inbound_cards: dict[str, VerifiedCard] = {}  # cards of peers that dialled us
        self.peer_table.on_forget(self._forget_card)
        self._card: pb.SignedNodeCard | None = None
        self._hosts: list[str] | None = None  # advertised hosts, read with the card
        self._closed = asyncio.Event()
        self._state = "NEW"
        self._started_ms = 0
        self.grpc_port = 0
        self.channels: ChannelHub | None = None  # A2A channels, once started
        self.http_port: int | None = None  # bound HTTP port once started; None if disabled
        self._http: Any = None  # aralnode.bridge.http.HttpBridge, imported only when used
        self.registry.on_change(self._capabilities_changed)
        self._proto_docs = ProtoDocs()
        self.discovery = Discovery(self)

    @property
    def governance(self) -> Evaluator:
        """The evaluator every door's calls and every channel message go through."""
        return self.pipeline.governance

    @governance.setter
    def governance(self, evaluator: Evaluator) -> None:
        self.pipeline.governance = evaluator

    # -- identity -----------------------------------------------------------------

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = Identity.load_or_create(
                self.config.resolved_data_dir, self.config.key_algorithm
            )
        return self._identity

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def address(self) -> str:
        """``host:port`` at which this node's gRPC door answers: the bound host, or on
        a wildcard bind the first address it advertises (see ``advertised_hosts``)."""
        return join_host_port(self.advertised_hosts()[0], self.grpc_port)

    def advertised_hosts(self) -> list[str]:
        """Hosts peers can reach this node at (see ``discovery.advertised_hosts``).

        On a wildcard bind this enumerates the interfaces, so it is read once per
        card: again only when the card is rebuilt (capabilities changed).
        """
        if self._hosts is None:
            self._hosts = advertised_hosts(self.config)
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
        self, servicer: object, service: ServiceDescriptor | ModuleType, name: str | None = None
    ) -> list[Capability]:
        """Serve a protobuf service: over gRPC as itself, and each unary method as a
        capability (``package.Service/Method``) on every other door.

        Args:
            servicer: Object with one ``async def Method(request, ctx)`` per rpc.
            service: The service descriptor, or a generated ``*_pb2`` module
                (then ``name`` picks the service; optional if it has one).
        """
        if self._server is not None:
            raise RuntimeError("add services before the node starts")
        descriptor = _service_descriptor(service, name)
        comments = self._proto_docs.for_files([descriptor.file])
        caps = method_capabilities(servicer, descriptor, comments=comments)
        for cap in caps:
            self.registry.add(cap)
        self._services.append((servicer, descriptor))
        return caps

    def load(self, spec: str) -> None:
        """Import a module or ``.py`` file and call its ``setup(node)``.

        Raises:
            ValueError: the module has no ``setup``, or it is not a plain function.
        """
        module = _import(spec)
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
        self._lock = _lock_data_dir(cfg.resolved_data_dir)
        try:
            await self._start(cfg)
        except BaseException:
            # Whatever started is stopped, and the data dir is free again.
            with contextlib.suppress(Exception):
                await self.stop(grace=0)
            raise
        log.info("node %s (%s) serving gRPC on %s", cfg.name, self.node_id, self.address)

    async def _start(self, cfg: NodeConfig) -> None:
        self.replay = ReplayGuard(
            self.clock, window_ms=cfg.replay_window_ms, skew_ms=cfg.clock_skew_ms
        )
        security = Security(
            identity=self.identity,
            keyring=self.keyring,
            replay=self.replay,
            allow_unsigned=cfg.allow_unsigned,
            peer_scopes=cfg.peer_scopes,
            peer_grants=cfg.peer_grants,
            max_message_bytes=cfg.max_message_bytes,
            keepalive_ms=cfg.keepalive_ms,
        )
        self.channels = build_hub(self)
        hooks = NodeHooks(
            card=self.card,
            status=self.status,
            peers=self._peer_protos,
            peer_capabilities=self._peer_capabilities,
            capabilities=self._capabilities,
            on_handshake=self._inbound_handshake,
            forward=self._forward,
            channel=self.channels.serve,
        )
        server = GrpcServer(max_message_bytes=cfg.max_message_bytes, keepalive_ms=cfg.keepalive_ms)
        self.service = AgentNodeService(security, self.pipeline, hooks, self.clock)
        server.add(self.service.handler(), pb.AGENT_NODE_SERVICE_NAME)
        for servicer, descriptor in self._services:
            server.add(
                service_handler(servicer, descriptor, self.pipeline, self.clock),
                descriptor.full_name,
            )
        self.grpc_port = await server.start(cfg.bind_host, cfg.grpc_port)
        self._server = server
        if cfg.http_port is not None:
            await self._start_http(hooks)
        self._started_ms = self.clock.now_ms()
        self._state = "SERVING"
        for address in cfg.peers:
            self._tasks.spawn(self._dial_forever(address), f"dial {address}")
        await self.discovery.start()

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
        elif not self._stopping.done() and self._server is not None:
            await self._server.stop_now()
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float | None) -> None:
        self._state = "DRAINING"
        try:
            if self._server is not None:
                # NOT_SERVING before the mDNS goodbye: peers that re-check a goodbye
                # must find us draining, or they would keep us (see discovery.py).
                await self._server.health.enter_graceful_shutdown()
            await self.discovery.stop()
            if self.channels is not None:
                await self.channels.close()
            await self._tasks.cancel()
            # Both doors drain at once: shutdown takes one grace period, not two.
            draining = []
            if self._server is not None:
                draining.append(
                    self._server.stop(self.config.drain_seconds if grace is None else grace)
                )
            if self._http is not None:
                draining.append(self._http.stop())
            await asyncio.gather(*draining)
            for client in list(self._clients.values()):
                await client.close()
            self._clients.clear()
        finally:
            self._state = "STOPPED"
            if self._lock is not None:
                os.close(self._lock)  # the data dir is free
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

    async def _start_http(self, hooks: NodeHooks) -> None:
        # Imported here: starlette, uvicorn and the MCP SDK load only when HTTP is on.
        from aralnode import __version__  # noqa: PLC0415 - aralnode imports node
        from aralnode.bridge.http import HttpBridge  # noqa: PLC0415 - see above

        cfg = self.config
        self._http = HttpBridge(
            self,
            hooks,
            list(self._services),
            # The addresses we advertise are ours: a Host naming one of them is no rebinding.
            allowed_hosts=[
                *cfg.http_allowed_hosts,
                *(join_host_port(h, "*") for h in self.advertised_hosts()),
            ],
            allowed_origins=list(cfg.http_allowed_origins),
            max_body_bytes=cfg.max_message_bytes,
            version=__version__,
            docs=self._proto_docs,  # comments read once, for capabilities and bridges
        )
        try:
            self.http_port = await self._http.start(cfg.bind_host, cfg.http_port or 0)
        except BaseException:
            self._http = None  # start() stops the rest
            raise
        self._card = None  # the card now lists the HTTP endpoint too

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
                self.identity,
                name=self.name,
                endpoints=self._endpoints(),
                registry=self.registry,
                clock=self.clock,
            )
        return self._card

    def _capabilities_changed(self) -> None:
        self._card = None
        self._hosts = None

    def status(self) -> pb.NodeStatus:
        now = self.clock.now_ms()
        counters = dict(self.pipeline.counters)
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
            peer_count=len(self.peer_table.connected()),
            counters=counters,
            key_algorithm=self.identity.algorithm,
            key_fingerprint=self.identity.public_key.fingerprint,
            discovery=self.config.discovery,
        )

    # -- calling capabilities -------------------------------------------------------------

    async def invoke(
        self, capability: str, params: Any = None, *, ctx: CallContext | None = None
    ) -> Any:
        """Run a local capability through the full pipeline (the in-process door)."""
        ctx = ctx or CallContext(door="local", caller=self.node_id, scopes=frozenset({ALL_SCOPES}))
        return await self.pipeline.invoke(ctx, capability, params)

    def _hub(self) -> ChannelHub:
        if self.channels is None:
            raise Unavailable("the node is not running", reason="NOT_STARTED")
        return self.channels

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
        """Invoke ``capability`` on a verified peer over the A2A channel: a signed,
        governed request; its signed response's result (see docs/channels.md).

        Only a peer that refused channels (answered UNIMPLEMENTED) is called with
        a unary signed ``Invoke`` instead: nodes of the ARAL interop profile may
        serve Invoke alone.

        Args:
            on_behalf_of: The principal this node acts for ("anonymous" for an
                unauthenticated caller), signed into the request so the peer grants
                that principal's rights, not this node's.
        """
        hub = self._hub()
        pc = hub.peers.get(peer)
        client = self._clients.get(peer)
        if pc is not None and pc.unsupported and client is not None:
            return await client.request(
                capability,
                params,
                timeout=timeout,
                content_type=content_type,
                on_behalf_of=on_behalf_of,
                trace_id=trace_id,
            )
        return await hub.request(
            peer,
            capability,
            params,
            timeout=timeout,
            content_type=content_type,
            on_behalf_of=on_behalf_of,
            trace_id=trace_id,
        )

    async def notify(
        self, peer: str, event: str, data: Any = None, *, content_type: str = codec.JSON
    ) -> str:
        """Send a notification over the channel; returns its message id once queued
        (delivered at least once, in order; acked messages are never lost)."""
        return await self._hub().notify(peer, event, data, content_type=content_type)

    async def broadcast(self, event: str, data: Any = None) -> dict[str, str]:
        """Notify every peer with a live channel; message id by peer."""
        return await self._hub().broadcast(event, data)

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
        return self._hub().subscribe(event, peer=peer, maxsize=maxsize, overflow=overflow)

    def on_notification(self, event: str | None, handler: NotificationHandler) -> None:
        """Register a transactional notification handler (see ``ChannelHub.on_notification``)."""
        self._hub().on_notification(event, handler)

    async def _forward(
        self, to: str, capability: str, params: Any, timeout: float | None, ctx: CallContext
    ) -> Any:
        """A caller's call forwarded to peer ``to`` (``aralnode call --to``, REST
        ``call.to``, MCP peer tools): admitted and judged here for that caller, and
        sent as a delegation so the peer grants the caller's rights, not ours."""

        async def send(args: Any) -> Any:
            return await self.request(
                to,
                capability,
                args,
                timeout=timeout,
                on_behalf_of=ctx.principal,
                trace_id=ctx.trace_id,
            )

        return await self.pipeline.call(
            ctx, capability, params, send, direction=Direction.SEND, risk="unspecified", peer=to
        )

    # -- peers -----------------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        """A snapshot of every known peer."""
        return self.peer_table.snapshot()

    def peer_events(self, *, maxsize: int = 256) -> PeerEventStream:
        """An async iterator of peer changes (bounded; see ``PeerEventStream``).

        Example::

            async for change in node.peer_events():
                print(change.event, change.peer.name, change.peer.state.name)
        """
        return self.discovery.events(maxsize)

    async def connect(
        self,
        address: str,
        *,
        expected_node_id: str = "",
        expected_fingerprint: str = "",
        source: str = "static",
    ) -> PeerInfo:
        """Dial ``address``, verify its card in a handshake, and keep it as a peer.

        Until verified the peer is keyed by its address, never by the id a hint
        claims, so a liar's failed handshake cannot touch the real peer's entry.

        Raises:
            KeyMismatch: the card's key is not ``expected_node_id``'s, or does not
                have ``expected_fingerprint`` (e.g. from an mDNS TXT record).
            Unavailable: ``DIAL_IN_PROGRESS``, another dial to ``address`` is under way.
            RateLimited: ``PEER_TABLE_FULL``, no room for another unverified peer.
        """
        key = f"addr:{address}"
        table = self.peer_table
        existing = table.get(key)
        if existing is not None and existing.state is PeerState.HANDSHAKING:
            raise Unavailable(  # another dial owns the entry
                f"a handshake with {address} is already under way", reason="DIAL_IN_PROGRESS"
            )
        try:
            if existing is None or existing.state is PeerState.GONE:
                table.apply(key, PeerEvent.DISCOVERED, address=address, source=source)
            table.apply(key, PeerEvent.HANDSHAKE_STARTED)
        except PeerTableFull as exc:
            raise RateLimited(str(exc), reason="PEER_TABLE_FULL") from None
        client = NodeClient(
            address,
            identity=self.identity,
            keyring=self.keyring,
            clock=self.clock,
            max_message_bytes=self.config.max_message_bytes,  # as its server allows
        )
        try:
            verified = await client.handshake(self.card(), expected_node_id=expected_node_id)
            if expected_fingerprint and verified.key.fingerprint != expected_fingerprint:
                raise KeyMismatch(
                    "the node's key does not have the announced fingerprint",
                    reason="FINGERPRINT_MISMATCH",
                )
            if verified.node_id == self.node_id:
                raise Unavailable("that address is this node itself", reason="SELF")
        except BaseException as exc:  # also on cancel: never leak the channel
            await client.close()
            if isinstance(exc, Unavailable) and exc.reason == "SELF":
                table.remove(key)
            else:
                with contextlib.suppress(ValueError):  # the entry may have expired meanwhile
                    table.apply(key, PeerEvent.FAILED, error=str(exc) or type(exc).__name__)
            raise
        old = self._clients.pop(verified.node_id, None)
        if old is not None:
            await old.close()
        self._clients[verified.node_id] = client
        if self.channels is not None:
            self.channels.dial(verified.node_id, address)
        table.rekey(key, verified.node_id)
        return table.apply(
            verified.node_id,
            PeerEvent.VERIFIED,
            **_card_fields(verified, address, client.version, source),
        )

    async def _dial_forever(self, address: str) -> None:
        delay = 0.2
        last = ""  # the last failure, said as a warning once (then at info level)
        while True:
            try:
                await self.connect(address)
                if last:
                    log.warning("static peer %s reached", address)
                return
            except (AralError, OSError) as exc:
                said = str(exc) or type(exc).__name__
                level = logging.INFO if said == last else logging.WARNING
                log.log(level, "static peer %s: %s; retrying in %.1fs", address, said, delay)
                last = said
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
            delay = min(delay * 2, 10.0)

    def _inbound_handshake(self, verified: VerifiedCard, transport_peer: str, version: str) -> None:
        # Not CONNECTED yet: discovery keeps it unreached (bounded) and dials it back.
        self.discovery.inbound(
            verified, transport_peer, _card_fields(verified, "", version, "inbound")
        )
        # Kept (it is in the table now) until the table forgets it: its capabilities
        # are listed even before our own dial reaches it, as calls to it already go.
        self._inbound_cards[verified.node_id] = verified

    def _peer_protos(self) -> list[pb.Peer]:
        return [
            pb.Peer(
                node_id=p.node_id,
                name=p.name,
                address=p.address,
                state=int(p.state),  # type: ignore[arg-type]  # enum values are ints
                health=p.health,
                capability_ids=list(p.capability_ids),
                last_seen_unix_ms=p.last_seen_ms,
                source=p.source,
                protocol_version=p.protocol_version,
                key_fingerprint=p.key_fingerprint,
            )
            for p in self.peer_table.snapshot()
        ]

    def _capabilities(self, node_id: str = "") -> pb.ListCapabilitiesResponse:
        """This node's capabilities, or a verified peer's as its card listed them."""
        if node_id and node_id != self.node_id:
            caps = self._peer_capabilities(node_id)
            return pb.ListCapabilitiesResponse(node_id=node_id, capabilities=caps)
        own = [c.to_proto() for c in self.registry]
        return pb.ListCapabilitiesResponse(node_id=self.node_id, capabilities=own)

    def _peer_capabilities(self, node_id: str) -> list[pb.Capability]:
        verified = self._peer_card(node_id)
        if verified is None:
            raise PeerNotFound(f"no verified peer {node_id!r}")
        return list(verified.card.capabilities)

    def _forget_card(self, key: str) -> None:
        self._inbound_cards.pop(key, None)

    def _peer_card(self, node_id: str) -> VerifiedCard | None:
        """The card a peer showed in a handshake: ours to it, else its own to us."""
        client = self._clients.get(node_id)
        if client is not None and client.peer is not None:
            return client.peer
        return self._inbound_cards.get(node_id)


def _card_fields(verified: VerifiedCard, address: str, version: str, source: str) -> dict[str, Any]:
    card = verified.card
    return {
        "address": address,
        "node_id": card.node_id,
        "name": card.name,
        "health": "SERVING",
        "capability_ids": tuple(c.id for c in card.capabilities),
        "protocol_version": version,
        "key_fingerprint": verified.key.fingerprint,
        "source": source,
        "error": "",
    }


def _service_descriptor(
    service: ServiceDescriptor | ModuleType, name: str | None
) -> ServiceDescriptor:
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


def _import(spec: str) -> ModuleType:
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


LOCK_FILE = "node.lock"


def _lock_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir/node.lock`` (``flock``, released when the process ends, even
    killed); its descriptor. Two nodes on one data dir would share one identity and
    one outbox: each would see the other as itself, and their messages would mix.

    Raises:
        OSError: ``EBUSY``, another running node holds the data dir.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise OSError(
            errno.EBUSY,
            f"data dir {data_dir} is in use by another node (pid {holder}): give this "
            "node its own --name or --data-dir",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
