"""The node's HTTP port: REST, OpenAPI and docs, MCP (streamable HTTP) and WebSocket
events, behind one Host/Origin guard, served by uvicorn.

::

    /openapi.json  /docs      openapi.py   (generated from the descriptors)
    /mcp                      mcp.py       (the official SDK's session manager)
    /ws                       ws.py        (events; capability calls)
    everything else           rest.py      (google.api.http bindings)

``Node.start`` builds an ``HttpBridge`` when ``NodeConfig.http_port`` is not None.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn

from aralnode.bridge import _http as h
from aralnode.bridge._docs import ProtoDocs
from aralnode.bridge.mcp import LocalTools, McpHttp, build_server, http_context
from aralnode.bridge.openapi import OpenApiBuilder, docs_page
from aralnode.bridge.rest import RestDoor
from aralnode.bridge.routes import Binding, bindings
from aralnode.bridge.targets import NodeHooksLike, NodeSurface, Target, build_targets
from aralnode.bridge.ws import EventHub, WsDoor
from aralnode.core.addresses import join_host_port

log = logging.getLogger("aralnode.http")


class HttpBridge:
    """Every HTTP door of one node.

    Args:
        node: The node (``NodeSurface``): pipeline, registry, peers, status.
        hooks: The gRPC door's hooks (peers, peer capabilities, forwarding).
        services: The users' ``(servicer, ServiceDescriptor)`` pairs the node serves.
        allowed_hosts / allowed_origins: Extra Host and Origin values to accept
            besides loopback (``name:*`` matches any port).
        max_body_bytes: Largest request body, and largest WebSocket frame a client sends.
        forward_peer_tools: List connected peers' capabilities as MCP tools.
        docs: Proto comments already read (the node's), so files are read once.
    """

    def __init__(
        self,
        node: NodeSurface,
        hooks: NodeHooksLike,
        services: list[tuple[object, Any]],
        *,
        allowed_hosts: list[str] | None = None,
        allowed_origins: list[str] | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        forward_peer_tools: bool = True,
        version: str = "",
        docs: ProtoDocs,
    ) -> None:
        self.node = node
        self.docs = docs  # the node's: each .binpb is read once
        self.targets: list[Target] = build_targets(node, hooks, services)
        self.bindings: list[tuple[Binding, Target]] = [
            (b, t) for t in self.targets for b in bindings(t.method)
        ]
        self.max_body_bytes = max_body_bytes
        self.rest = RestDoor(node, self.bindings, max_body_bytes=max_body_bytes)
        title = f"aralnode {node.name}"
        self.openapi = OpenApiBuilder(
            self.bindings,
            self.docs,
            title=title,
            version=version or "0",
            description=f"REST bridge of node {node.node_id}, generated from its protobuf services",
        )
        self._docs_html = docs_page(title)
        self.hub = EventHub(node)
        self.ws = WsDoor(node, self.hub)
        self.tools = LocalTools(
            node, hooks, self.targets, self.docs, forward_peers=forward_peer_tools
        )
        self.mcp_server = build_server(
            self.tools,
            name=f"aralnode-{node.name}",
            version=version or "0",
            context=http_context,
            instructions=f"Tools of aralnode {node.name} ({node.node_id}), from its capabilities.",
        )
        self._extra_hosts = list(allowed_hosts or ())
        self._extra_origins = list(allowed_origins or ())
        self.mcp: McpHttp | None = None
        self.app: h.ASGIApp = self._dispatch
        self._server: uvicorn.Server | None = None
        self._main: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    async def _dispatch(self, scope: h.Scope, receive: h.Receive, send: h.Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "websocket":
            if path == "/ws":
                await self.ws(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        if path == "/mcp" or path.startswith("/mcp/"):
            assert self.mcp is not None
            await self.mcp.app(scope, receive, send)
        elif path == "/openapi.json" and scope["method"] in ("GET", "HEAD"):
            body = h.dumps(self.openapi.document())
            await h.send_body(send, 200, body, h.JSON, gzip_ok=h.accepts_gzip(scope))
        elif path == "/docs" and scope["method"] in ("GET", "HEAD"):
            await h.send_body(
                send,
                200,
                self._docs_html,
                "text/html; charset=utf-8",
                gzip_ok=h.accepts_gzip(scope),
            )
        else:
            await self.rest(scope, receive, send)

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
            now_ms=self.node.clock.now_ms,
        )
        self.mcp = McpHttp(
            self.mcp_server,
            allowed_hosts=hosts,
            allowed_origins=origins,
            max_body_bytes=self.max_body_bytes,
        )
        await self.mcp.start()
        self.hub.attach()
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            server_header=False,
            # No reverse proxy is assumed: X-Forwarded-For from a loopback client must
            # not rewrite the caller's address (which CallContext.peer, governance and
            # the logs see). It also spares a middleware on every request.
            proxy_headers=False,
            timeout_graceful_shutdown=2,
            ws_max_size=self.max_body_bytes,  # a WebSocket frame, as a REST or MCP body
        )
        config.load()
        server = uvicorn.Server(config)
        # Not server.serve(): that installs signal handlers; the node owns those.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        self._main = asyncio.create_task(server.main_loop(), name="http main loop")
        log.info("HTTP (REST, MCP, WebSocket) on %s:%d", host, self.port)
        return self.port

    async def stop(self) -> None:
        """Stop accepting, end MCP sessions and event streams, let in-flight requests finish."""
        server = self._server
        if server is not None:
            server.should_exit = True
            if self._main is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._main
        self.hub.detach()
        self.tools.close()
        if self.mcp is not None:
            await self.mcp.stop()
        if server is not None:
            # uvicorn asks each connection to finish (a WebSocket closes with 1012),
            # once: a second close on a closing WebSocket raises.
            await server.shutdown(sockets=[self._sock] if self._sock else None)
        self._server = None


__all__ = ["HttpBridge"]
