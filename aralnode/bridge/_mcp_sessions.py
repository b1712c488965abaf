"""MCP sessions held to a share per client and a total, with fair eviction.

The SDK's session manager keeps every session a client opens until the client ends
it or it idles out (30 min), up to ``max_sessions`` (10,000) in all, after which it
refuses *every* new session with 503: one client that opens the maximum (~35 KiB
each) locks every other MCP client out. ``SessionQuota`` sits in front of it and
decides, before a session is opened, whose session makes room:

- a client (its verified identity, else its address, as the rate limit counts
  callers: ``service.stages.share_key``) holds at most ``per_client`` sessions:
  opening one more ends its own least recently used one;
- the node holds at most ``total``: opening one more ends the least recently used
  session of the client that holds the most, so a light user is never the one
  evicted while someone holds more.

Sessions are opened and ended by the SDK; this only keeps count (the response
that opens a session carries its id) and asks the manager to end a victim.

A session's GET stream (its server-sent events) is held to its opener's
credentials as a WebSocket is (``_approvals_feed.SessionGate``): before its events
they are authenticated again by the port's ``AuthGate`` (the pipeline's
authenticate stage, at most once a second of ``clock``) and the session checked
still its opener's and alive; a refusal, or the end of the credential's lifetime
(a JWT's ``exp``, idle or not), ends the stream (``GatedStream``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.streamable_http import MCP_SESSION_ID_HEADER
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from aralnode._logs import get_logger
from aralnode.bridge._approvals_feed import GatedStream, SessionGate, credential_lifetime
from aralnode.bridge._http import Message, Receive, Scope, Send, call_context, header
from aralnode.bridge._oauth import SCOPE_KEY, AuthGate
from aralnode.core.clock import Clock
from aralnode.core.errors import AralError, RateLimited
from aralnode.service.refusals import refused

log = get_logger("aralnode.mcp")

_SESSION = MCP_SESSION_ID_HEADER.lower().encode("latin-1")
_ACTION = "aral.http/mcp"  # (the gate's: a stream's refusal is on record as its requests')


class TooManySessionsOpening(RateLimited):
    """A client is opening more sessions at once than it may hold."""

    default_reason = "MCP_SESSIONS_OPENING"


class SessionQuota:
    """ASGI front of the SDK's session manager that bounds who holds its sessions.

    Args:
        manager: The SDK's manager (its ``max_sessions`` should be ``total``: the
            SDK's own refusal stays as a backstop).
        per_client: Sessions one client may hold.
        total: Sessions the node holds.
        client_of: A request's client: who its sessions count against.
        refuse: Answers a refusal (and has it audited).
        on_open: Told of each session opened, and by which request.
    """

    def __init__(
        self,
        manager: StreamableHTTPSessionManager,
        *,
        per_client: int,
        total: int,
        client_of: Callable[[Scope], str],
        refuse: Callable[[Scope, Send, AralError], Awaitable[None]],
        on_open: Callable[[str, Scope], None] | None = None,
    ) -> None:
        self.manager = manager
        self.refuse = refuse  # answers a refusal as the door does, on record
        self.on_open = on_open  # binds a new session to its opener (bridge._oauth)
        self.per_client = per_client
        self.total = total
        self.client_of = client_of
        # Each client's sessions, least recently used first; and whose each one is.
        self._held: dict[str, OrderedDict[str, None]] = {}
        self._owner: dict[str, str] = {}
        self._opening: Counter[str] = Counter()  # sessions being opened, per client
        self.evicted = 0
        # What authenticates a GET stream's credentials again (the port's ``AuthGate``,
        # set by the HTTP bridge; ``None``: nothing does).
        self.auth: AuthGate | None = None
        self.clock: Clock | None = None  # the streams' (``None``: the node's)

    @property
    def count(self) -> int:
        """Sessions held and being opened."""
        return len(self._owner) + self._opening.total()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = header(scope, _SESSION)
        if session is not None or scope["method"] != "POST":
            if session is not None:
                self._used(session)
            if scope["method"] == "GET" and (gate := self.stream_gate(scope)) is not None:
                gated = GatedStream(gate, receive, send)  # (an event stream's: module docstring)
                receive, send = gated.receive, gated.send
            await self.manager.handle_request(scope, receive, send)
            return
        # A POST without a session: the request that opens one (an initialize).
        client = self.client_of(scope)
        if self._opening[client] >= self.per_client:
            await self._refuse(scope, send, client)
            return
        self._opening[client] += 1
        try:
            await self._make_room(client)
            await self.manager.handle_request(scope, receive, self._recording(client, send, scope))
        finally:
            self._opening[client] -= 1
            if not self._opening[client]:
                del self._opening[client]

    def stream_gate(self, scope: Scope) -> SessionGate | None:
        """The gate of the GET stream ``scope`` opens (its credentials passed the
        port's ``AuthGate``): they are authenticated again, and the session they name
        checked, as ``AuthGate.mcp`` does for each request, each refusal on record."""
        auth = self.auth
        if auth is None:
            return None
        service, session = auth.service, header(scope, _SESSION)
        principal = scope.get(SCOPE_KEY, "")
        clock = self.clock or service.clock

        def authenticate() -> None:
            ctx = call_context(service.contexts, scope, "mcp")
            service.pipeline.authenticate(ctx, _ACTION)
            if session is not None and (failure := auth.owners.check(session, principal)):
                raise refused(service.pipeline, ctx, _ACTION, failure, kind="call")

        metadata = call_context(service.contexts, scope, "mcp").metadata
        return SessionGate(
            clock, credential_lifetime(metadata, clock), authenticate, expiry="TOKEN_EXPIRED"
        )

    def _recording(self, client: str, send: Send, scope: Scope) -> Send:
        """``send``, noting the session that the response opens as ``client``'s."""

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                for key, value in message.get("headers", ()):
                    if key.lower() == _SESSION:
                        session = value.decode("latin-1")
                        self._add(client, session)
                        if self.on_open is not None:
                            self.on_open(session, scope)
            await send(message)

        return recording

    def _add(self, client: str, session: str) -> None:
        self._owner[session] = client
        self._held.setdefault(client, OrderedDict())[session] = None

    def _used(self, session: str) -> None:
        client = self._owner.get(session)
        if client is not None:
            self._held[client].move_to_end(session)

    def _forget(self, session: str) -> None:
        client = self._owner.pop(session)
        held = self._held[client]
        del held[session]
        if not held:
            del self._held[client]

    def _prune(self, sessions: list[str]) -> None:
        """Forget those of ``sessions`` the SDK has ended (a DELETE, idle, a crash)."""
        live = self._live()
        for session in sessions:
            if session not in live:
                self._forget(session)

    def _live(self) -> dict[str, Any]:
        # The SDK keeps its sessions here (mcp 2.x); it has no public view of them.
        return self.manager._server_instances

    async def _make_room(self, client: str) -> None:
        """End sessions so that ``client`` may open one: its own oldest past its
        share; past the total, the oldest of whoever holds the most."""
        victims: list[str] = []
        held = self._held.get(client)
        if held is not None:
            self._prune(list(held))
            held = self._held.get(client)
        while held and len(held) + self._opening[client] > self.per_client:
            victims.append(next(iter(held)))
            self._forget(victims[-1])
        if self.count > self.total:
            self._prune(list(self._owner))
        while self.count > self.total and self._owner:
            heaviest = max(self._held.values(), key=len)
            victims.append(next(iter(heaviest)))
            self._forget(victims[-1])
        for session in victims:
            await self._end(session)

    def live(self, session: str) -> bool:
        """Whether the SDK serves ``session`` now: it holds it, and has not begun to
        end it (a DELETE on it, or its idle time run out: the SDK answers 404)."""
        transport = self._live().get(session)
        if transport is None or transport.is_terminated:
            return False
        idle = transport.idle_scope
        return idle is None or not idle.cancel_called

    async def end(self, session: str) -> None:
        """End ``session`` now (it expired): forgotten, its transport terminated."""
        if session in self._owner:
            self._forget(session)
        transport = self._live().get(session)
        if transport is not None:
            await self.manager._discard_session(session, transport)

    async def _end(self, session: str) -> None:
        transport = self._live().get(session)
        if transport is None:
            return
        self.evicted += 1
        log.info("MCP session %s ended to make room for a new one", session[:16])
        # The SDK's own way to end a session: forgotten first (its id answers 404
        # at once), then its transport terminated, shielded.
        await self.manager._discard_session(session, transport)

    async def _refuse(self, scope: Scope, send: Send, client: str) -> None:
        failure = TooManySessionsOpening(
            f"this client is already opening {self.per_client} MCP sessions",
            retry_after=1.0,
        )
        log.warning("refused an MCP session to %s: %s", client, failure.message)
        await self.refuse(scope, send, failure)


__all__ = ["SessionQuota", "TooManySessionsOpening"]
