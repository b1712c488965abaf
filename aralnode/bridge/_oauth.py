"""The HTTP port as an OAuth 2.0 resource server: RFC 9728 metadata, 401s that say
where to get a token, and MCP sessions bound to the principal that opened them.

- ``GET /.well-known/oauth-protected-resource`` (and ``…/mcp`` for the MCP
  endpoint, RFC 9728 §3.1) describes this node as a protected resource: its
  resource URL, the authorization servers that issue its tokens, its scopes.
- A refused credential on MCP answers HTTP 401 with ``WWW-Authenticate: Bearer
  resource_metadata="…", error="invalid_token"`` (the MCP authorization spec,
  2025-06-18): the official client follows it to the metadata. REST's 401 and 403
  carry ``WWW-Authenticate`` too (``error_headers``).
- An MCP session remembers who opened it: a later request on it by anyone else
  (other credentials, or none where the opener had some) is refused, and the
  session ends ``session_ttl_seconds`` after it opened; each such refusal is
  audited and counted as a refused credential is. Each request is authenticated
  again, so an expired token or a revoked key stops the session's use at once
  (the token cache makes that check cheap).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aralnode.access.bearer import BearerAuthenticator
from aralnode.bridge import _jsonrpc as rpc
from aralnode.bridge._http import (
    JSON,
    Scope,
    Send,
    call_context,
    client_peer,
    dumps,
    header,
    request_id,
    send_body,
)
from aralnode.bridge._mcp_requests import SESSION, head_refusal
from aralnode.core.context import CallContext
from aralnode.core.errors import (
    AralError,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from aralnode.service.auth import AGENT_READ
from aralnode.service.node_service import NodeService
from aralnode.service.refusals import refused
from aralnode.service.stages import address_of

WELL_KNOWN = "/.well-known/oauth-protected-resource"
SCOPE_KEY = "aral.principal"  # where the gate leaves the principal in the ASGI scope


@dataclass(slots=True)
class ProtectedResource:
    """This node's RFC 9728 metadata (``NodeConfig.oauth_*``).

    Attributes:
        resource: The resource identifier ("": the URL a request came to).
        authorization_servers: Issuers of tokens for this node.
        scopes_supported: Scopes the node knows.
        session_ttl: Seconds an MCP session (or a WebSocket) lives.
    """

    resource: str = ""
    authorization_servers: list[str] = field(default_factory=list)
    scopes_supported: list[str] = field(default_factory=list)
    session_ttl: float = 3600.0

    def base_url(self, scope: Scope) -> str:
        """The URL of this port as the request addressed it (scheme and Host)."""
        host = header(scope, b"host") or "localhost"
        return f"{scope.get('scheme', 'http')}://{host}"

    def metadata_url(self, scope: Scope, suffix: str = "/mcp") -> str:
        return self.base_url(scope) + WELL_KNOWN + suffix

    def document(self, scope: Scope, suffix: str) -> dict[str, Any]:
        """The metadata for the resource at ``suffix`` ("" or "/mcp")."""
        base = self.resource.rstrip("/") if self.resource else self.base_url(scope)
        doc: dict[str, Any] = {
            "resource": base + suffix,
            "authorization_servers": list(self.authorization_servers),
            "bearer_methods_supported": ["header"],
            "resource_name": "aralnode",
        }
        if self.scopes_supported:
            doc["scopes_supported"] = list(self.scopes_supported)
        return doc


def principal_key(ctx: CallContext) -> str:
    """Who a session is bound to: the caller and its kind ("" for anonymous)."""
    return "" if ctx.anonymous else f"{ctx.kind}:{ctx.caller}"


class SessionOwners:
    """Which principal opened each MCP session, and when; bounded (the oldest
    record goes first, as the session quota ends sessions past its own bound)."""

    __slots__ = ("_owners", "now", "size", "ttl")

    def __init__(
        self, ttl: float, size: int = 4096, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.size = size
        self.now = now
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def opened(self, session: str, principal: str) -> None:
        self._owners[session] = (principal, self.now())
        while len(self._owners) > self.size:
            self._owners.popitem(last=False)

    def check(self, session: str, principal: str) -> AralError | None:
        """Why ``principal`` may not use ``session`` (``None``: it may)."""
        entry = self._owners.get(session)
        if entry is None:
            return None  # not one we saw open: the SDK answers for it (404 if unknown)
        owner, opened = entry
        if self.now() - opened >= self.ttl:
            return NotFound(
                "this MCP session has expired: start a new one", reason="SESSION_EXPIRED"
            )
        if owner == principal:
            return None
        if not principal:
            return Unauthenticated(
                "this MCP session was opened with credentials: show them",
                reason="SESSION_NEEDS_CREDENTIALS",
            )
        return PermissionDenied(
            "this MCP session belongs to another principal", reason="SESSION_PRINCIPAL_MISMATCH"
        )

    def known(self, session: str) -> bool:
        return session in self._owners

    def forget(self, session: str) -> None:
        self._owners.pop(session, None)


_CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


class AuthGate:
    """What the HTTP port checks before a request reaches MCP or a WebSocket is
    accepted (see the module docstring).

    Args:
        service: The node's service (its pipeline authenticates: one rule).
        resource: The RFC 9728 metadata and the session lifetime.
        max_sessions: Bound of the session owners table.
    """

    def __init__(
        self, service: NodeService, resource: ProtectedResource, *, max_sessions: int
    ) -> None:
        self.service = service
        self.resource = resource
        self.access: BearerAuthenticator | None = None  # set by the assembly
        self.owners = SessionOwners(resource.session_ttl, size=max(16, 2 * max_sessions))
        self.on_expired: Callable[[str], Any] | None = None  # ends an MCP session
        self.is_live: Callable[[str], bool] = lambda _session: False  # the SDK holds it

    async def prepare(self, scope: Scope) -> None:
        """Fetch what checking the request's credential needs (introspection, a
        rotated JWKS) while we may still wait: the check itself cannot."""
        access = self.access
        if access is None:
            return
        failures = self.service.pipeline.stages.authenticate.failures
        if failures is not None:  # a client whose credentials keep failing: not asked
            try:
                failures.check_failures(address_of(client_peer(scope)))
            except RateLimited:
                return  # (the call is refused before its credential is checked)
        shown = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in _CREDENTIAL_HEADERS
        }
        if shown:
            await access.prepare(shown)

    async def document(self, scope: Scope, send: Send, suffix: str) -> None:
        """Answer the RFC 9728 metadata for ``suffix`` ("" or "/mcp")."""
        body = dumps(self.resource.document(scope, suffix))
        await send_body(send, 200, body, JSON, [(b"cache-control", b"max-age=300")])

    def _authenticated(self, scope: Scope, door: str) -> tuple[CallContext, AralError | None]:
        ctx = call_context(self.service.contexts, scope, door)
        try:
            self.service.pipeline.authenticate(ctx, f"aral.http/{door}")
        except AralError as exc:
            return ctx, exc
        return ctx, None

    async def mcp(self, scope: Scope, send: Send) -> bool:
        """Whether an MCP request may go on: its credential verifies (else 401 with
        the challenge that points at the metadata), a session it names is its own
        and alive, and the SDK would not refuse its head (``_mcp_requests``). The
        principal is left in the scope for the session quota. Every refusal is
        audited under ``aral.http/mcp``: the credential's by the pipeline, the
        others here."""
        ctx, failure = self._authenticated(scope, "mcp")
        session = header(scope, SESSION)
        principal = principal_key(ctx)
        if failure is None:
            if session is not None:
                failure = await self._session_refusal(session, principal)
            if failure is None:  # what the SDK would refuse, refused here and so on record
                failure = head_refusal(scope, self.is_live)
            if failure is not None:  # counted as the credential's refusal is (a "call")
                refused(self.service.pipeline, ctx, "aral.http/mcp", failure, kind="call")
        if failure is not None:
            await rpc.refuse(
                send,
                scope,
                failure,
                trace_id=ctx.trace_id or request_id(None),
                now_ms=self.service.clock.now_ms(),
                metadata_url=self.resource.metadata_url(scope),
                jsonrpc=True,
            )
            return False
        scope[SCOPE_KEY] = principal
        return True

    async def _session_refusal(self, session: str, principal: str) -> AralError | None:
        """Why ``principal`` may not use ``session`` (``None``: it may); a session
        found expired is ended."""
        failure = self.owners.check(session, principal)
        if failure is None and not self.owners.known(session) and self.is_live(session):
            # Live but no longer in the (bounded) owners table: fail closed,
            # the client opens a new session rather than anyone using this one.
            failure = NotFound("this MCP session must be opened again", reason="SESSION_EXPIRED")
        if failure is not None and failure.reason == "SESSION_EXPIRED":
            self.owners.forget(session)
            if self.on_expired is not None:
                await self.on_expired(session)
        return failure

    def opened(self, session: str, scope: Scope) -> None:
        """An MCP session opened by the request ``scope``: bind it to its principal."""
        self.owners.opened(session, scope.get(SCOPE_KEY, ""))

    def websocket(self, scope: Scope) -> AralError | None:
        """Why a WebSocket upgrade is refused (``None``: it may open), as any door
        refuses a request: a credential that does not verify, an anonymous caller
        where the node serves none (401), a caller that holds no scope at all (403:
        every message would be refused, so a socket would only hold the node's
        memory). Each refusal is audited under ``aral.http/ws``."""
        ctx, failure = self._authenticated(scope, "ws")
        if failure is None and not ctx.scopes:
            failure = refused(
                self.service.pipeline,
                ctx,
                "aral.http/ws",
                PermissionDenied(
                    f"{ctx.caller or 'an anonymous caller'} holds no scope: nothing on "
                    "/ws is open to it",
                    reason="MISSING_SCOPE",
                    details={"missing_scopes": [AGENT_READ]},
                ),
            )
        return failure


__all__ = [
    "SCOPE_KEY",
    "WELL_KNOWN",
    "AuthGate",
    "ProtectedResource",
    "SessionOwners",
    "principal_key",
]
