"""The composition root: a ``Node`` builds the core, the doors and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from aralnode import _proto as pb
from aralnode.config import NodeConfig
from aralnode.core.capabilities import (
    Capability,
    CapabilityRegistry,
    function_capability,
    method_capabilities,
)
from aralnode.core.clock import SYSTEM_CLOCK, Clock
from aralnode.core.context import CallContext
from aralnode.core.envelope import SUPPORTED_VERSIONS
from aralnode.core.errors import AralError, PeerNotFound, Unavailable
from aralnode.core.governance import AllowAll, Evaluator
from aralnode.core.handshake import SOFTWARE, VerifiedCard, build_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.peers import PeerEvent, PeerInfo, PeerState, PeerTable
from aralnode.core.pipeline import ALL_SCOPES, Outcome, Pipeline
from aralnode.core.replay import ReplayGuard
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
        self.governance: Evaluator = governance or AllowAll()
        self.pipeline = Pipeline(
            self.registry, self.governance, clock, max_concurrent=self.config.max_concurrent
        )
        self.keyring = KeyRing()
        self.peer_table = PeerTable(clock)
        self._services: list[tuple[object, ServiceDescriptor]] = []
        self._server: GrpcServer | None = None
        self._clients: dict[str, NodeClient] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._card: pb.SignedNodeCard | None = None
        self._closed = asyncio.Event()
        self._state = "NEW"
        self._started_ms = 0
        self.grpc_port = 0
        self.registry.on_change(self._capabilities_changed)

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
        """``host:port`` at which this node's gRPC door answers."""
        host = self.config.bind_host
        if host in ("0.0.0.0", "::"):  # noqa: S104 - reporting, not binding
            host = "127.0.0.1"
        return f"{host}:{self.grpc_port}"

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
        caps = method_capabilities(servicer, descriptor)
        for cap in caps:
            self.registry.add(cap)
        self._services.append((servicer, descriptor))
        return caps

    def load(self, spec: str) -> None:
        """Import a module or ``.py`` file and call its ``setup(node)``."""
        module = _import(spec)
        setup = getattr(module, "setup", None)
        if setup is None:
            raise ValueError(f"{spec} has no setup(node) function")
        result = setup(self)
        if inspect.isawaitable(result):
            raise TypeError(f"{spec}: setup(node) must be a plain function")

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._state != "NEW":
            raise RuntimeError(f"node is {self._state}")
        cfg = self.config
        self._state = "STARTING"
        self.replay = ReplayGuard(
            self.clock, window_ms=cfg.replay_window_ms, skew_ms=cfg.clock_skew_ms
        )
        security = Security(
            identity=self.identity,
            keyring=self.keyring,
            replay=self.replay,
            allow_unsigned=cfg.allow_unsigned,
            peer_scopes=cfg.peer_scopes,
            max_message_bytes=cfg.max_message_bytes,
            keepalive_ms=cfg.keepalive_ms,
        )
        hooks = NodeHooks(
            card=self.card,
            status=self.status,
            peers=self._peer_protos,
            peer_capabilities=self._peer_capabilities,
            on_handshake=self._inbound_handshake,
            forward=self._forward,
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
        self._started_ms = self.clock.now_ms()
        self._state = "SERVING"
        for address in cfg.peers:
            self._spawn(self._dial_forever(address), f"dial {address}")
        log.info("node %s (%s) serving gRPC on %s", cfg.name, self.node_id, self.address)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, drain in-flight calls for ``grace`` seconds, stop."""
        if self._state in ("STOPPED", "NEW"):
            self._state = "STOPPED"
            self._closed.set()
            return
        self._state = "DRAINING"
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(self.config.drain_seconds if grace is None else grace)
        for client in list(self._clients.values()):
            await client.close()
        self._clients.clear()
        self._state = "STOPPED"
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- card and status -------------------------------------------------------------

    def card(self) -> pb.SignedNodeCard:
        if self._card is None:
            self._card = build_card(
                self.identity,
                name=self.name,
                endpoints=[("grpc", self.address)],
                registry=self.registry,
                clock=self.clock,
            )
        return self._card

    def _capabilities_changed(self) -> None:
        self._card = None

    def status(self) -> pb.NodeStatus:
        now = self.clock.now_ms()
        counters = dict(self.pipeline.counters)
        return pb.NodeStatus(
            node_id=self.node_id,
            name=self.name,
            software=SOFTWARE,
            protocol_versions=list(SUPPORTED_VERSIONS),
            endpoints=[pb.Endpoint(protocol="grpc", address=self.address)],
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
        outcome: Outcome = await self.pipeline.invoke(ctx, capability, params)
        return outcome.value

    async def request(
        self, peer: str, capability: str, params: Any = None, *, timeout: float | None = 30.0
    ) -> Any:
        """Invoke ``capability`` on a connected peer with a signed request."""
        client = self._clients.get(peer)
        if client is None:
            raise PeerNotFound(f"no connected peer {peer!r}", details={"node_id": peer})
        return await client.request(capability, params, timeout=timeout)

    async def _forward(
        self, to: str, capability: str, params: Any, timeout: float | None, ctx: CallContext
    ) -> Any:
        return await self.request(to, capability, params, timeout=timeout)

    # -- peers -----------------------------------------------------------------------------

    def peers(self) -> list[PeerInfo]:
        """A snapshot of every known peer."""
        return self.peer_table.snapshot()

    async def connect(
        self, address: str, *, expected_node_id: str = "", source: str = "static"
    ) -> PeerInfo:
        """Dial ``address``, verify its card in a handshake, and keep it as a peer."""
        key = expected_node_id or f"addr:{address}"
        table = self.peer_table
        existing = table.get(key)
        if existing is None or existing.state is PeerState.GONE:
            table.apply(key, PeerEvent.DISCOVERED, address=address, source=source)
        table.apply(key, PeerEvent.HANDSHAKE_STARTED)
        client = NodeClient(address, identity=self.identity, keyring=self.keyring, clock=self.clock)
        try:
            verified = await client.handshake(self.card(), expected_node_id=expected_node_id)
        except (AralError, OSError) as exc:
            await client.close()
            table.apply(key, PeerEvent.FAILED, error=str(exc))
            raise
        if verified.node_id == self.node_id:
            await client.close()
            table.remove(key)
            raise Unavailable("that address is this node itself", reason="SELF")
        old = self._clients.pop(verified.node_id, None)
        if old is not None:
            await old.close()
        self._clients[verified.node_id] = client
        table.rekey(key, verified.node_id)
        return table.apply(
            verified.node_id,
            PeerEvent.VERIFIED,
            **_card_fields(verified, address, client.version, source),
        )

    async def _dial_forever(self, address: str) -> None:
        delay = 0.2
        while True:
            try:
                await self.connect(address)
                return
            except (AralError, OSError) as exc:
                log.info("static peer %s: %s; retrying in %.1fs", address, exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter
            delay = min(delay * 2, 10.0)

    def _inbound_handshake(self, verified: VerifiedCard, transport_peer: str, version: str) -> None:
        address = next(
            (e.address for e in verified.card.endpoints if e.protocol == "grpc"), transport_peer
        )
        with contextlib.suppress(ValueError):
            current = self.peer_table.get(verified.node_id)
            if current is None or current.state is not PeerState.CONNECTED:
                self.peer_table.apply(
                    verified.node_id,
                    PeerEvent.VERIFIED,
                    **_card_fields(verified, address, version, "inbound"),
                )

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

    def _peer_capabilities(self, node_id: str) -> list[pb.Capability]:
        verified = self._peer_cards.get(node_id)
        if verified is None:
            raise PeerNotFound(f"no verified peer {node_id!r}")
        return list(verified.card.capabilities)

    @property
    def _peer_cards(self) -> dict[str, VerifiedCard]:
        return {nid: c.peer for nid, c in self._clients.items() if c.peer is not None}


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
