"""The node's HTTP port: REST, OpenAPI and docs, MCP (streamable HTTP) and WebSocket
events, behind one Host/Origin guard, served by uvicorn.

::

    /openapi.json  /docs      openapi.py   (generated from the descriptors)
    /mcp                      mcp.py       (the official SDK's session manager)
    /ws                       ws.py        (events; capability calls)
    /ui                       ui.py        (the live mesh page, static files)
    everything else           rest.py      (google.api.http bindings)

``Node.start`` builds an ``HttpBridge`` when ``NodeConfig.http_port`` is not None.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from aralnode._logs import get_logger
from aralnode.bridge import _http as h
from aralnode.bridge._oauth import WELL_KNOWN, AuthGate, ProtectedResource
from aralnode.bridge._server import (
    BoundedWebSocket,
    ConnectionTable,
    HeadLimits,
    protocol_class,
)
from aralnode.bridge._sockets import SocketQuota, refuse
from aralnode.bridge._ws_budget import MessageBudget
from aralnode.bridge.mcp import McpHttp, build_server, http_context
from aralnode.bridge.mcp_local import LocalTools
from aralnode.bridge.openapi import OpenApiBuilder, docs_page
from aralnode.bridge.rest import RestDoor
from aralnode.bridge.routes import Binding, bindings
from aralnode.bridge.targets import Target, build_targets
from aralnode.bridge.ui import UiPage, bearer_from_subprotocol, is_ui_path
from aralnode.bridge.ws import EventHub, WsDoor
from aralnode.core.addresses import join_host_port
from aralnode.core.capabilities import ProtoService
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, Unauthenticated
from aralnode.core.peers import PeerTable
from aralnode.core.proto_schema import ProtoComments
from aralnode.service.auth import READ_SCOPES
from aralnode.service.node_service import NodeService
from aralnode.service.refusals import audited, refused
from aralnode.service.stages import share_key

log = get_logger("aralnode.http")

Route = Callable[[], tuple[bytes, str]]
Probe = Callable[[], tuple[int, dict[str, Any]]]  # HTTP status, JSON body


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What the HTTP port grants any one client (``NodeConfig``'s "http" group).

    Attributes:
        parser: "httptools", "h11" or "auto".
        max_header_bytes / max_headers / header_timeout: Bounds on a request head.
        body_timeout: Seconds a body may take after its head.
        max_connections / max_connections_per_address: Connections held in all,
            and from one address (``ConnectionTable``).
        mcp_sessions / mcp_sessions_per_client: MCP sessions held in all, and by
            one client (``SessionQuota``).
        ws_sockets / ws_sockets_per_client: WebSockets held in all, and by one
            client (``SocketQuota``).
        listing_requires_auth: ``/openapi.json``, ``/docs`` and MCP ``tools/list``
            answer authenticated callers only.
    """

    parser: str = "auto"
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1024
    max_connections_per_address: int = 256
    mcp_sessions: int = 1024
    mcp_sessions_per_client: int = 32
    ws_sockets: int = 1024
    ws_sockets_per_client: int = 16
    listing_requires_auth: bool = False


class HttpBridge:
    """Every HTTP door of one node.

    Args:
        service: The node's ``NodeService`` (and through it the pipeline, the
            context builder, the forwarder and what the node tells of itself).
        peer_table: Followed for the event feed and the MCP peer tools.
        services: The users' protobuf services the node serves.
        name: The node's name (titles, the WebSocket agent name).
        allowed_hosts / allowed_origins: Extra Host and Origin values to accept
            besides loopback (``name:*`` matches any port).
        max_body_bytes: Largest request body, and largest WebSocket frame a client sends.
        forward_peer_tools: List connected peers' capabilities as MCP tools.
        docs: Proto comments already read (the node's), so files are read once.
        limits: What any one client may make the port hold, and see (``HttpLimits``).
        ssl_context: Serve HTTPS with it (``aralnode.access.tls.server_ssl_context``:
            TLS 1.3 minimum); None: plaintext.
        oauth: Its RFC 9728 metadata and session lifetime (``ProtectedResource``).
    """

    a2a: Any = None  # the A2A door, set by the node when it serves A2A (``_interop``)
    aral: Any = None  # the ARAL REST surface /api/v1/agents/… (``_interop``)

    def __init__(
        self,
        service: NodeService,
        peer_table: PeerTable,
        services: list[ProtoService],
        *,
        name: str,
        allowed_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        forward_peer_tools: bool = True,
        version: str = "",
        docs: ProtoComments,
        limits: HttpLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        oauth: ProtectedResource | None = None,
    ) -> None:
        self.service = service
        self.ssl_context = ssl_context
        limits = self.limits = limits or HttpLimits()
        oauth = oauth or ProtectedResource()
        self.gate = AuthGate(service, oauth, max_sessions=limits.mcp_sessions)
        self.clock = service.clock
        self.docs = docs  # the node's: each .binpb is read once
        self.targets: list[Target] = build_targets(service, services)
        self.bindings: list[tuple[Binding, Target]] = [
            (b, t) for t in self.targets for b in bindings(t.method)
        ]
        self.max_body_bytes = max_body_bytes
        self.rest = RestDoor(
            service.pipeline, service.contexts, self.bindings, max_body_bytes=max_body_bytes
        )
        node_id = service.node_id
        self.openapi = self._openapi_builder(f"aralnode {name}", version)
        self._docs_html = docs_page(f"aralnode {name}")
        self.ui = UiPage()
        self.inflight = h.InFlight()  # MCP tool calls and WebSocket invokes running
        self.hub = EventHub(service, peer_table)
        self.ws = self._ws_door(name)
        self.tools = LocalTools(
            service,
            peer_table,
            self.targets,
            self.docs,
            forward_peers=forward_peer_tools,
            listing_requires_auth=self.limits.listing_requires_auth,
        )
        self.mcp_server = self._mcp_server(name, version, node_id)
        self._routes: dict[str, Route] = {"/openapi.json": self._openapi, "/docs": self._docs}
        # Set by the node (``_operations``): /metrics (read scope) and open probes.
        self.metrics: Route | None = None
        self.probes: dict[str, Probe] = {}
        self._extra_hosts = list(allowed_hosts or ())
        self._extra_origins = list(allowed_origins or ())
        self.mcp: McpHttp | None = None
        self.app: h.ASGIApp = self._dispatch
        self._server: uvicorn.Server | None = None
        self._main: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    def _mcp_server(self, name: str, version: str, node_id: str) -> Any:
        return build_server(
            self.tools,
            name=f"aralnode-{name}",
            version=version or "0",
            context=http_context(self.service.contexts),
            instructions=f"Tools of aralnode {name} ({node_id}), from its capabilities.",
        )

    def _ws_door(self, name: str) -> WsDoor:
        limits = self.limits
        sockets: SocketQuota[Any] = SocketQuota(
            per_client=limits.ws_sockets_per_client,
            total=limits.ws_sockets,
            client_of=self._client_of,
        )
        door = WsDoor(self.service, self.hub, name=name, inflight=self.inflight, quota=sockets)
        door.session_ttl = self.gate.resource.session_ttl
        return door

    def _openapi_builder(self, title: str, version: str) -> OpenApiBuilder:
        return OpenApiBuilder(
            self.bindings,
            self.docs,
            title=title,
            version=version or "0",
            description=f"REST bridge of node {self.service.node_id}, generated from its "
            "protobuf services",
        )

    async def _dispatch(self, scope: h.Scope, receive: h.Receive, send: h.Send) -> None:
        """Route by path: WebSocket ``/ws``; MCP under ``/mcp``; the documents
        (``_routes``, GET and HEAD); everything else is the REST door's."""
        path = scope.get("path", "")
        bearer_from_subprotocol(scope)  # the page's WebSocket credential (ui.py)
        await self.gate.prepare(scope)
        if scope["type"] == "websocket":
            if path == "/ws":
                if (refusal := self.gate.websocket(scope)) is not None:
                    await refuse(send, refusal, self.clock.now_ms())
                    return
                await self.ws(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        if path == "/mcp" or path.startswith("/mcp/"):
            assert self.mcp is not None
            if not await self.gate.mcp(scope, send):
                return
            if scope["method"] == "POST":
                # A request (a tool call, say) until its answer is sent: a stopping
                # node waits for it before it ends the MCP sessions.
                with self.inflight.call():
                    await self.mcp.app(scope, receive, send)
            else:  # a session's event stream: open until the session ends
                await self.mcp.app(scope, receive, send)
            return
        if path in (WELL_KNOWN, WELL_KNOWN + "/mcp") and scope["method"] in ("GET", "HEAD"):
            await self.gate.document(scope, send, path[len(WELL_KNOWN) :])
            return
        if scope["method"] in ("GET", "HEAD") and await self._operations(scope, send, path):
            return
        if self.aral is not None and self.aral.serves(path):
            await self.aral(scope, receive, send)  # ARAL implementations' API (bridge/aral_api.py)
            return
        if self.a2a is not None and self.a2a.serves(path):
            await self.a2a(scope, receive, send)  # the A2A standard (bridge/a2a.py)
            return
        if is_ui_path(path) and scope["method"] in ("GET", "HEAD"):
            await self.ui.serve(scope, send)  # public: the data it fetches is not
            return
        document = self._routes.get(path)
        if document is not None and scope["method"] in ("GET", "HEAD"):
            if self.limits.listing_requires_auth and not await self._may_list(scope, send):
                return
            body, content_type = document()
            await h.send_body(send, 200, body, content_type, gzip_ok=h.accepts_gzip(scope))
            return
        await self.rest(scope, receive, send)

    async def _operations(self, scope: h.Scope, send: h.Send, path: str) -> bool:
        """``/healthz``, ``/readyz`` and ``/metrics``; whether ``path`` was one."""
        probe = self.probes.get(path)
        if probe is not None:
            status, answer = probe()
            no_store = [(b"cache-control", b"no-store")]
            await h.send_body(send, status, h.dumps(answer), h.JSON, no_store)
            return True
        if path != "/metrics" or self.metrics is None:
            return False
        # Read access, as the node's status; a scrape costs (every family rendered),
        # so it takes a token from the caller's rate limit like any call.
        if await self._may_list(scope, send, scrape=True):
            body, content_type = self.metrics()
            await h.send_body(send, 200, body, content_type, gzip_ok=h.accepts_gzip(scope))
        return True

    async def _may_list(self, scope: h.Scope, send: h.Send, *, scrape: bool = False) -> bool:
        """Whether the caller may read the node's documents or metrics: the read
        scope, and with ``listing_requires_auth`` an identity, as the pipeline's
        stages say (a ``scrape`` also takes a rate-limit token); a refusal is
        answered."""
        ctx = h.call_context(self.service.contexts, scope, "rest")
        pipeline = self.service.pipeline
        try:
            action = f"aral.http/GET {scope.get('path', '')}"  # one of a few fixed paths
            pipeline.authenticate(ctx, action)  # (audits its own refusal)
            with audited(pipeline, ctx, action):
                if ctx.anonymous and self.limits.listing_requires_auth:
                    raise Unauthenticated(
                        "this node shows its API documents and metrics to authenticated "
                        "callers only",
                        reason="ANONYMOUS_REFUSED",
                    )
                pipeline.stages.authorize(ctx, READ_SCOPES, action)  # agent:read
                if scrape:
                    pipeline.stages.rate_limit.admit(ctx)
        except AralError as exc:
            body = h.dumps(h.error_body(exc, ctx.trace_id, self.clock.now_ms()))
            headers = h.id_headers(ctx.trace_id, h.request_id(h.header(scope, b"x-request-id")))
            await h.send_body(send, exc.http_status, body, h.JSON, headers)
            return False
        return True

    def _wire_refused(self, exc: AralError, peer: str) -> None:
        """Audit what the port refused before a request reached any door (its
        connections, a head or body too slow or too large)."""
        ctx = self.service.contexts.build("rest", peer=peer)
        refused(self.service.pipeline, ctx, "aral.http/connection", exc)

    def _guard_refused(self, scope: h.Scope, exc: AralError, trace_id: str) -> None:
        """Audit a request the port's guard refused (its Host, its Origin, its head)
        under the door it was for: no caller is verified yet, so none is recorded."""
        path = scope.get("path", "")
        if scope["type"] == "websocket":
            door = "ws"
        elif path == "/mcp" or path.startswith("/mcp/"):
            door = "mcp"
        else:
            door = "rest"
        self._refused_on(door, scope, exc, trace_id)

    def _refused_on(self, door: str, scope: h.Scope, exc: AralError, trace_id: str) -> None:
        """Audit a refusal ``door`` made before the pipeline ran, under its label."""
        ctx = h.call_context(self.service.contexts, scope, door, trace_id=trace_id)
        refused(self.service.pipeline, ctx, f"aral.http/{door}", exc)

    def _mcp_refused(self, scope: h.Scope, exc: AralError, trace_id: str) -> None:
        """Audit what ``/mcp`` refused after the gate let the request in (its body,
        a session it needs, the client's share of sessions): with the caller the
        gate verified, counted as the gate's own refusals are (a "call")."""
        ctx = self._verified(scope, "mcp", trace_id)
        refused(self.service.pipeline, ctx, "aral.http/mcp", exc, kind="call")

    def _client_of(self, scope: h.Scope) -> str:
        """Whose share a request counts against, as the rate limit counts callers:
        its verified identity if its credentials prove one, else its address."""
        return share_key(self._verified(scope, "ws" if scope["type"] == "websocket" else "mcp"))

    def _verified(self, scope: h.Scope, door: str, trace_id: str | None = None) -> CallContext:
        """The request's context, with its caller if its credentials prove one."""
        ctx = h.call_context(self.service.contexts, scope, door, trace_id=trace_id)
        with contextlib.suppress(AralError):  # refused: nobody (it counts as its address)
            self.service.pipeline.stages.authenticate(ctx)
        return ctx

    def _openapi(self) -> tuple[bytes, str]:
        return h.dumps(self.openapi.document()), h.JSON

    def _docs(self) -> tuple[bytes, str]:
        return self._docs_html, "text/html; charset=utf-8"

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: any free port), start serving, return the bound port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say
        # so, and without it a response sent as head + body waits out the client's
        # delayed ACK (40 ms a request).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            where = join_host_port(host, port)
            raise OSError(
                exc.errno, f"cannot bind the HTTP door to {where}: {exc.strerror}"
            ) from None
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        hosts, origins = h.default_allowed(host, self._extra_hosts, self._extra_origins)
        self.app = h.HostGuard(
            self._dispatch,
            allowed_hosts=hosts,
            allowed_origins=origins,
            now_ms=self.clock.now_ms,
            max_headers=self.limits.max_headers,
            max_header_bytes=self.limits.max_header_bytes,
            on_refused=self._guard_refused,
        )
        self.mcp = McpHttp(
            self.mcp_server,
            max_body_bytes=self.max_body_bytes,
            max_sessions=self.limits.mcp_sessions,
            max_sessions_per_client=self.limits.mcp_sessions_per_client,
            client_of=self._client_of,
            now_ms=self.clock.now_ms,
            on_open=self.gate.opened,
        )
        self.mcp.on_refused = self._mcp_refused
        self.gate.on_expired = self.mcp.sessions.end
        self.gate.is_live = self.mcp.sessions.live
        self.mcp.sessions.auth = self.gate  # its GET streams authenticated again
        await self.mcp.start()
        self.hub.attach()
        config = self._uvicorn_config()
        config.load()
        server = uvicorn.Server(config)
        # Not server.serve(): that installs signal handlers; the node owns those.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._main = asyncio.create_task(server.main_loop(), name="http main loop")
        log.info("HTTP (REST, MCP, WebSocket) on %s:%d", host, self.port)
        return self.port

    def _uvicorn_config(self) -> uvicorn.Config:
        limits = self.limits
        table: ConnectionTable[Any] = ConnectionTable(
            limits.max_connections, limits.max_connections_per_address
        )
        head = HeadLimits(
            max_bytes=limits.max_header_bytes,
            max_count=limits.max_headers,
            timeout=limits.header_timeout,
            now_ms=self.clock.now_ms,
            body_timeout=limits.body_timeout,
            on_refused=self._wire_refused,
            connections=table,
            # A WebSocket's messages count against the same budget as bodies.
            on_upgrade=functools.partial(MessageBudget, table=table, on_refused=self._wire_refused),
        )
        return uvicorn.Config(
            self.app,
            # Either parser, held to the node's bounds on a request head (_server.py).
            http=protocol_class(limits.parser, head),
            h11_max_incomplete_event_size=limits.max_header_bytes,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            # No reverse proxy is assumed: X-Forwarded-For from a loopback client must
            # not rewrite the caller's address (which CallContext.peer, governance and
            # the logs see). It also spares a middleware on every request.
            proxy_headers=False,
            timeout_graceful_shutdown=2,  # set to the node's drain when it stops
            # A WebSocket message is held to a REST or MCP body's limit (one call's
            # parameters fit every door). The protocol reads one message at a time
            # (it pauses reading until the application takes it), and what it writes
            # unasked (pongs) under flow control too (``BoundedWebSocket``), and the
            # message it is receiving counts against the body budget (``MessageBudget``).
            ws=BoundedWebSocket,
            ws_max_size=self.max_body_bytes,
            # uvicorn's own hook: our context (TLS 1.3 minimum) instead of the one it
            # would build from file names, which has no minimum version setting.
            ssl_context_factory=self._ssl_factory if self.ssl_context is not None else None,
        )

    def _ssl_factory(
        self, _config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]
    ) -> ssl.SSLContext:
        assert self.ssl_context is not None
        return self.ssl_context

    async def stop(self, grace: float = 2.0) -> None:
        """Drain, then stop: calls in flight get up to ``grace`` seconds in all. MCP
        tool calls and WebSocket invokes are waited for first (ending the MCP sessions
        or closing a WebSocket would cut them off), then REST requests finish as
        uvicorn shuts down; event streams end."""
        loop = asyncio.get_running_loop()
        until = loop.time() + grace
        server = self._server
        if server is not None:
            server.should_exit = True
            if self._main is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._main
        if not await self.inflight.wait_idle(until - loop.time()):
            log.warning(
                "stopping with %d MCP or WebSocket calls still running", self.inflight.count
            )
        self.hub.detach()
        self.tools.close()
        if self.mcp is not None:
            await self.mcp.stop()
        if server is not None:
            # In-flight REST requests get what is left of the drain. uvicorn asks each
            # connection to finish (a WebSocket closes with 1012), once: a second close
            # on a closing WebSocket raises.
            left = max(0.0, until - loop.time())
            server.config.timeout_graceful_shutdown = left  # type: ignore[assignment]  # any number works
            await server.shutdown(sockets=[self._sock] if self._sock else None)
        self._server = None

    def stop_now(self) -> None:
        """Cut a draining ``stop`` short: calls still running are cancelled."""
        self.inflight.cut()
        server = self._server
        if server is not None:
            server.force_exit = True
            for task in list(server.server_state.tasks):
                task.cancel()


__all__ = ["HttpBridge", "HttpLimits"]
