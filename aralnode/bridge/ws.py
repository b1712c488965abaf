"""The WebSocket door at ``/ws``: live node events, and capability calls.

A client subscribes with the seed's message and receives events in the seed's shape::

    -> {"type": "subscribe", "agent_id": "<node id or name, or *>", "channels": ["events"]}
    <- {"type": "subscribed", "agent_id": "<node id>", "channels": ["capabilities", ...]}
    <- {"type": "event", "timestamp": "...Z", "agent_id": "<node id>",
        "event": "peer_joined", "data": {...}}

Channels: ``peers`` (peer_joined, peer_left, peer_changed), ``capabilities``
(capabilities_changed), ``decisions`` (decision_made, for every governance
verdict), ``status`` (a status snapshot on subscribe and on request),
``approvals`` (``{"type": "approval", "event": "pending|approved|denied|expired|
withdrawn", ...}`` for each call in the approval queue, to ``agent:admin`` callers
only: others are not given the channel); ``events`` means all of them.
``{"type": "invoke", "id": 1, "capability": ..., "parameters": {...}}``
runs a capability through the pipeline (``door="ws"``) and answers ``result`` or
``error`` with the same id; ``{"type": "ping"}`` answers ``pong``.

A slow subscriber never slows the node: each has a bounded queue of events; what
does not fit is dropped and counted in an ``events_dropped`` event. Replies (to
``invoke``, ``ping``, ``subscribe``..., and errors) never go through that queue
and are never dropped: they are written straight to the socket, under the same
lock as events, so frames never interleave.

A socket is a session bound to its upgrade's credentials: each message is
authenticated again, and so are they before events are sent (``SessionGate``: at
most once a second); a refusal closes a socket that only listens (1008, the
refusal's reason, on record). Past the session's lifetime the socket is closed
(1008, ``session expired``) at its next message, event, or the end of its wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.bridge._approvals_feed import (
    POLICY_VIOLATION,
    QUEUE_SIZE,
    SESSION_EXPIRED,
    FeedSocket,
    SessionGate,
    Subscriber,
    follow_approvals,
    subscriber_halted,
)
from aralnode.bridge._http import InFlight, Receive, Scope, Send, call_context, client_peer, iso_ms
from aralnode.bridge._sockets import (
    CHANNELS,
    SocketQuota,
    channel_names,
    invocation,
    message_id,
    plain_id,
    refuse,
    ws_error,
)
from aralnode.bridge._ws_budget import WS_BUDGET, MessageBudget, wire_size
from aralnode.bridge.targets import node_json
from aralnode.bridge.ui import chosen_subprotocol
from aralnode.core import codec
from aralnode.core.context import CallContext, clean_trace_id, new_trace_id
from aralnode.core.errors import AralError, InternalError, InvalidRequest, RateLimited
from aralnode.core.governance import Action, Verdict
from aralnode.core.peers import PRESENT, PeerChange, PeerTable
from aralnode.service.auth import AGENT_ADMIN, AGENT_INVOKE, ALL_SCOPES, READ_SCOPES
from aralnode.service.node_service import NodeService
from aralnode.service.refusals import refused, refused_as_caller
from aralnode.service.stages import address_of, reaches

log = get_logger("aralnode.ws")
_INVOKE_ACTION = "aral.ws/invoke"  # an invoke frame refused before the pipeline, on record

# The governance action id of the WebSocket door's own operation (a status request
# is the built-in GetStatus, as on every door).
SUBSCRIBE_ACTION = "aral.ws/Subscribe"
LIST_ACTION = f"{pb.AGENT_NODE_SERVICE_NAME}/ListCapabilities"
# Holding it shows a subscriber every caller's governance decisions; without it, a
# subscriber sees those of its own socket's calls and of calls by its principal.
DECISIONS_SCOPE = "aral:decisions"
# Invokes a socket may have waiting behind the one that runs (a socket runs one at a
# time); more are refused, so that a client cannot queue unbounded work.
PENDING_INVOKES = 16


def _decision_keys(ctx: CallContext) -> list[str]:
    """Who may see a decision about the call ``ctx``: the socket it came by, and its
    principal when that is someone (an anonymous caller is nobody in particular)."""
    keys = ["conn:" + ctx.peer] if ctx.door == "ws" else []
    if not ctx.anonymous:
        keys.append("principal:" + ctx.principal)
    return keys


class EventHub:
    """Turns node changes into events and fans them out to subscribers.

    Subscribers are indexed by channel, and decision subscribers by whose decisions
    they are entitled to: a call's decision reaches the socket it came by, the
    subscribers authenticated as its principal, and those holding
    ``DECISIONS_SCOPE`` (or every scope); finding them costs the call a lookup or
    two, however many sockets are subscribed. The verdict listener is on the
    pipeline only while someone follows decisions at all.
    """

    def __init__(self, service: NodeService, peer_table: PeerTable) -> None:
        self.service = service
        self.node_id = service.node_id
        self.clock = service.clock
        self.peer_table = peer_table
        self.registry = service.pipeline.registry
        self.subscribers: set[Subscriber] = set()
        self._channel: dict[str, set[Subscriber]] = {c: set() for c in CHANNELS}
        self._decisions: dict[str, set[Subscriber]] = {}  # entitlement key -> subscribers
        self._all_decisions: set[Subscriber] = set()
        self._attached = self._following = False
        self._undo: list[Callable[[], None]] = []

    def attach(self) -> None:
        self._undo.append(self.peer_table.on_change(self._peer_changed))
        self._undo.append(self.registry.on_change(self._capabilities_changed))
        self._undo.append(follow_approvals(self, self._channel["approvals"]))
        self._attached = True
        self._follow_verdicts()

    def detach(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._attached = False
        for sub in list(self.subscribers):
            self.remove(sub)

    def subscribe(self, sub: Subscriber, channels: set[str], ctx: CallContext) -> None:
        """Add ``channels`` to ``sub``; ``ctx`` (authenticated) says whose decisions
        it is entitled to."""
        for channel in channels - sub.channels:
            self._channel[channel].add(sub)
        sub.channels |= channels
        self.subscribers.add(sub)
        if not ctx.anonymous:
            sub.caller, sub.principal = ctx.caller, ctx.principal
        if "capabilities" in channels:
            sub.scopes = ctx.scopes
        if "decisions" in channels:
            self._index_decisions(sub, add=False)
            sub.decision_keys = tuple(_decision_keys(ctx))
            sub.sees_all = bool({ALL_SCOPES, DECISIONS_SCOPE} & ctx.scopes)
            self._index_decisions(sub, add=True)
        self._follow_verdicts()

    def unsubscribe(self, sub: Subscriber, channels: set[str]) -> None:
        for channel in channels & sub.channels:
            self._channel[channel].discard(sub)
        if "decisions" in channels & sub.channels:
            self._index_decisions(sub, add=False)
        sub.channels -= channels
        if not sub.channels:
            self.subscribers.discard(sub)
        self._follow_verdicts()

    def remove(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its socket closed)."""
        self.unsubscribe(sub, set(sub.channels))

    def _index_decisions(self, sub: Subscriber, *, add: bool) -> None:
        groups = [self._decisions.setdefault(k, set()) for k in sub.decision_keys]
        if sub.sees_all:
            groups.append(self._all_decisions)
        for group in groups:
            if add:
                group.add(sub)
            else:
                group.discard(sub)
        if not add:
            for key in sub.decision_keys:
                if not self._decisions.get(key):
                    self._decisions.pop(key, None)

    def _follow_verdicts(self) -> None:
        """The verdict listener on the pipeline while someone follows decisions (a
        listener makes every call describe its action for it)."""
        wanted = self._attached and bool(self._decisions or self._all_decisions)
        if wanted == self._following:
            return
        listeners = self.service.pipeline.verdict_listeners
        if wanted:
            listeners.append(self._verdict)
        elif self._verdict in listeners:
            listeners.remove(self._verdict)
        self._following = wanted

    def event(self, channel: str, event: str, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "event",
            "timestamp": iso_ms(self.clock.now_ms()),
            "agent_id": self.node_id,
            "channel": channel,
            "event": event,
            "data": data,
        }

    def publish(self, channel: str, event: str, data: Callable[[], dict[str, Any]]) -> None:
        self._offer(self._channel.get(channel, ()), channel, event, data)

    def _offer(
        self,
        targets: Iterable[Subscriber],
        channel: str,
        event: str,
        data: Callable[[], dict[str, Any]],
    ) -> None:
        message = None
        halts = self.service.pipeline.stages.govern.halts  # (a halted subscriber: nothing)
        for sub in targets:
            if halts and subscriber_halted(halts, sub):
                continue
            if message is None:  # somebody listens: build it, once
                message = self.event(channel, event, data())
            sub.offer(message)

    def _peer_changed(self, change: PeerChange) -> None:
        """``peer_joined``/``peer_left`` as a peer enters or leaves the verified
        peers ``status`` counts (``PRESENT``), else ``peer_changed``; the data is the
        peer as ``/v1/peers`` lists it (proto3 JSON) and the state it left."""
        peer, before = change.peer, change.before
        if peer.state in PRESENT and before not in PRESENT:
            name = "peer_joined"
        elif before in PRESENT and peer.state not in PRESENT:
            name = "peer_left"
        else:
            name = "peer_changed"

        def data() -> dict[str, Any]:
            out = node_json(self.service.info.peer_as_proto(peer))
            out["previousState"] = None if before is None else pb.PeerState.Name(int(before))
            return out

        self.publish("peers", name, data)

    def _capabilities_changed(self) -> None:
        """A listing, so each subscriber gets the ids its scopes reach: one event
        per set of scopes that makes a difference, however many subscribers."""
        subscribers = self._channel["capabilities"]
        if not subscribers:
            return
        caps = list(self.registry)
        # A capability that names no scope needs agent:invoke (``reaches``).
        needed = frozenset(s for c in caps for s in c.required_scopes) | {AGENT_INVOKE}
        groups: dict[frozenset[str] | None, list[Subscriber]] = {}
        for sub in subscribers:
            key = None if ALL_SCOPES in sub.scopes else sub.scopes & needed
            groups.setdefault(key, []).append(sub)
        digest = self.registry.digest
        for group in groups.values():
            scopes = group[0].scopes
            ids = [c.id for c in caps if reaches(scopes, c.required_scopes)]
            data: dict[str, Any] = {"count": len(ids), "digest": digest, "ids": ids}
            self._offer(group, "capabilities", "capabilities_changed", data.copy)

    def _verdict(self, ctx: CallContext | None, action: Action, verdict: Verdict) -> None:
        targets = set(self._all_decisions)
        if ctx is not None:
            for key in _decision_keys(ctx):
                targets.update(self._decisions.get(key, ()))
        self._offer(
            targets,
            "decisions",
            "decision_made",
            lambda: {
                "decisionId": uuid.uuid4().hex,
                "action": action.capability,
                "direction": str(action.direction),
                "door": action.door,
                "caller": action.caller,
                "decision": verdict.decision.label,
                "flagged": verdict.flagged,
                "rules": list(verdict.rule_ids),
                "reasons": list(verdict.reasons),
            },
        )

    def status_event(self, status: pb.NodeStatus | None = None) -> dict[str, Any]:
        """A status event (as /v1/status gives the status)."""
        status = status if status is not None else self.service.info.status()
        return self.event("status", "status", node_json(status))


class WsDoor:
    """The ``/ws`` endpoint."""

    def __init__(
        self,
        service: NodeService,
        hub: EventHub,
        *,
        name: str,
        inflight: InFlight | None = None,
        quota: SocketQuota[_Connection] | None = None,
    ) -> None:
        self.service = service
        self.name = name
        self.inflight = inflight or InFlight()
        self.node_id = service.node_id
        self.clock = service.clock
        self.hub = hub
        self.quota: SocketQuota[_Connection] = quota or SocketQuota(
            per_client=16, total=1024, client_of=lambda scope: address_of(client_peer(scope))
        )
        # A socket is a session bound to the credentials of its upgrade: each
        # message is authenticated again, as they are before events (``SessionGate``),
        # and the socket ends after this long.
        self.session_ttl: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self.quota.client_of(scope)
        try:
            self.quota.check(client)  # before accepting: a refusal is a plain 429
        except AralError as exc:
            log.warning("refused a WebSocket to %s: %s", client, exc.message)
            ctx = call_context(self.service.contexts, scope, "ws")
            refused(self.service.pipeline, ctx, "aral.http/ws", exc)  # on record too
            await refuse(send, exc, self.clock.now_ms())
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept(subprotocol=chosen_subprotocol(scope))
        conn = _Connection(
            ws,
            lambda lost: self.hub.event("events", "events_dropped", {"count": lost}),
            SessionGate(self.clock, self.session_ttl, lambda: self._reauthenticate(ws)),
        )
        victim = self.quota.add(client, conn)
        if victim is not None:  # the node holds its total: the victim makes room
            self.quota.close_later(victim.end, victim.lock)
        sender = asyncio.create_task(conn.pump())
        invoker = asyncio.create_task(self._invoker(conn))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if conn.closed:  # its feed's gate closed it: nothing more is read
                    break
                if conn.gate.expired():  # policy: open a new one
                    await conn.close(POLICY_VIOLATION, SESSION_EXPIRED)
                    break
                text = message.get("text")
                # A message counts as in flight until its reply is sent: a stopping
                # node waits for it before it closes the socket.
                with self.inflight.call():
                    if text is None:
                        reply: dict[str, Any] | None = ws_error(
                            InvalidRequest("messages are JSON text frames, not binary"),
                            None,
                            self.clock.now_ms(),
                        )
                    else:
                        reply = await self._handle(text, conn)
                    if reply is not None:
                        await conn.reply(reply)
        except WebSocketDisconnect:
            pass
        finally:
            self.quota.remove(client, conn)
            self.hub.remove(conn.sub)
            # The client is gone: so are its calls (the one running is cancelled,
            # and gives its slot back; those waiting never run).
            for task in (invoker, sender):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            while not conn.invokes.empty():
                conn.release(conn.invokes.get_nowait()[2])
                self.inflight.end()

    async def _invoker(self, conn: _Connection) -> None:
        """Runs the socket's invokes one after the other, while the socket keeps
        being read (so that a client that goes away is noticed at once)."""
        while True:
            msg, ctx, size = await conn.invokes.get()
            try:
                try:
                    reply = await self._invoke(msg, ctx)
                except AralError as exc:
                    reply = ws_error(exc, msg.get("id"), self.clock.now_ms(), ctx.trace_id)
                await conn.reply(reply)
            finally:
                conn.release(size)
                self.inflight.end()

    def _reauthenticate(self, ws: WebSocket) -> None:
        """The socket's upgrade credentials authenticated again, as a message's are
        (``_context``); a refusal is counted and on record as the subscription's."""
        self.service.pipeline.authenticate(self._context({}, ws), SUBSCRIBE_ACTION)

    async def _handle(self, text: str, conn: _Connection) -> dict[str, Any] | None:
        msg_id: Any = None
        ctx: CallContext | None = None
        try:
            try:
                msg = codec.loads(text)
            except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
                raise InvalidRequest(f"messages are JSON objects: {exc}") from None
            if not isinstance(msg, dict):
                raise InvalidRequest("messages are JSON objects")
            msg_id = message_id(msg)
            kind = msg.get("type")
            if kind in ("subscribe", "status", "invoke"):  # a call: a context of its own
                ctx = self._context(msg, conn.ws)
            if kind == "subscribe":
                assert ctx is not None
                await self._subscribe(msg, conn, ctx)
                return None
            if kind == "unsubscribe":
                self.hub.unsubscribe(conn.sub, set(channel_names(msg.get("channels", CHANNELS))))
                return {"type": "unsubscribed", "channels": sorted(conn.sub.channels)}
            if kind == "ping":
                return {"type": "pong", "id": msg_id}
            if kind == "status":
                assert ctx is not None
                return await self._status(ctx)
            if kind == "invoke":
                assert ctx is not None
                conn.enqueue(msg, ctx, wire_size(text))
                self.inflight.begin()  # until its reply is sent (``_invoker``)
                return None
            raise InvalidRequest(f"unknown message type {kind!r}", reason="UNKNOWN_TYPE")
        except AralError as exc:
            trace = ctx.trace_id if ctx is not None else None
            return ws_error(exc, msg_id, self.clock.now_ms(), trace)
        except Exception as exc:  # a bug guard: answer, keep the socket open
            log.exception("ws message failed")
            err = InternalError(f"internal error: {type(exc).__name__}")
            return ws_error(err, plain_id({"id": msg_id}), self.clock.now_ms())

    def _context(self, msg: dict[str, Any], ws: WebSocket) -> CallContext:
        """One message's context: the socket's caller and headers, the message's own
        trace id (or a fresh one per message; the socket's header is not a trace)."""
        trace = msg.get("trace_id")
        trace_id = clean_trace_id(trace) if isinstance(trace, str) else new_trace_id()
        return call_context(self.service.contexts, ws.scope, "ws", trace_id=trace_id)

    async def _status(self, ctx: CallContext) -> dict[str, Any]:
        # The built-in GetStatus, as on every other door.
        status = await self.service.get_status(pb.GetStatusRequest(), ctx)
        return self.hub.status_event(status)

    async def _subscribe(self, msg: dict[str, Any], conn: _Connection, ctx: CallContext) -> None:
        """Subscribing is an action like any other: the feed shows peers, capabilities
        and other callers' governance decisions, so anonymity rules and governance
        decide who may follow it. It is judged as ``aral.ws/Subscribe`` with the
        channels asked for (the status channel included: rules on GetStatus cover
        the one-off status request, not the feed), and runs with the channels
        governance let through."""
        wanted = channel_names(msg.get("channels", ["events"]))

        async def run(params: Any) -> None:
            # What governance let through: a nudge may narrow the channels, and
            # parameters it left without a channel list grant none (not the
            # client's BAD_CHANNELS: the client asked well).
            granted = params.get("channels", []) if isinstance(params, dict) else []
            channels = set(channel_names(granted))
            if "capabilities" in channels and not await self._may_list(ctx):
                channels.discard("capabilities")
            if not {AGENT_ADMIN, ALL_SCOPES} & ctx.scopes:  # approvers' channel only
                channels.discard("approvals")
            await self._subscribed(msg, conn, channels, ctx)

        await self.service.pipeline.call(
            ctx, SUBSCRIBE_ACTION, {"channels": wanted}, run, scopes=READ_SCOPES
        )

    async def _may_list(self, ctx: CallContext) -> bool:
        """The capabilities channel is a listing: governed as ``ListCapabilities``
        (a refusal withholds the channel, the others stay)."""

        async def run(_: Any) -> None:
            return None

        try:
            await self.service.pipeline.call(ctx, LIST_ACTION, None, run, scopes=READ_SCOPES)
        except AralError as exc:
            log.info("WebSocket: capabilities channel withheld: %s", exc.message)
            return False
        return True

    async def _subscribed(
        self, msg: dict[str, Any], conn: _Connection, wanted: set[str], ctx: CallContext
    ) -> None:
        agent = msg.get("agent_id") or "*"
        if agent not in ("*", self.node_id, self.name):
            raise InvalidRequest(
                f"this is agent {self.node_id} ({self.name}), not {agent!r}",
                reason="UNKNOWN_AGENT",
            )
        sub = conn.sub
        # Under the lock: no event reaches the client before the ack and the
        # snapshot it promises.
        async with conn.lock:
            self.hub.subscribe(sub, wanted, ctx)
            ack = {
                "type": "subscribed",
                "agent_id": self.node_id,
                "channels": sorted(sub.channels),
            }
            await conn.send_locked(ack)
            if "status" in wanted:
                await conn.send_locked(self.hub.status_event())

    async def _invoke(self, msg: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        pipeline = self.service.pipeline
        try:
            capability, params = invocation(msg)
        except AralError as exc:  # refused before the pipeline: on record, its caller known
            raise refused_as_caller(pipeline, ctx, _INVOKE_ACTION, exc) from None
        try:
            value = await pipeline.invoke(ctx, capability, params)
        except AralError:
            raise
        except Exception as exc:  # the pipeline maps handler failures; this is a bug guard
            log.exception("ws invoke %s failed", capability)
            raise InternalError(f"internal error: {type(exc).__name__}") from exc
        return {
            "type": "result",
            "id": msg.get("id"),
            "result": value,
            "trace_id": ctx.trace_id,
            "decision": ctx.decision,
        }


class _Connection(FeedSocket):
    """One client: its feed (``FeedSocket``), and the invokes waiting their turn."""

    __slots__ = ("budget", "invokes")

    def __init__(
        self, ws: WebSocket, dropped_event: Callable[[int], dict[str, Any]], gate: SessionGate
    ) -> None:
        super().__init__(ws, dropped_event, gate)
        self.invokes: asyncio.Queue[tuple[dict[str, Any], CallContext, int]] = asyncio.Queue(
            PENDING_INVOKES
        )
        # The port's budget of body bytes, as the socket's address's (``_ws_budget``):
        # an invoke's message counts against it until its reply is sent.
        self.budget: MessageBudget | None = ws.scope.get(WS_BUDGET)

    def enqueue(self, msg: dict[str, Any], ctx: CallContext, size: int) -> None:
        """Queue an invoke (its message ``size`` bytes) for the socket's invoker.

        Raises:
            RateLimited: ``PENDING_INVOKES`` already wait, or its address's budget of
                body bytes has no room for it (``TOO_MANY_BODY_BYTES``).
        """
        if self.budget is not None and (refusal := self.budget.hold(size)) is not None:
            raise refusal
        try:
            self.invokes.put_nowait((msg, ctx, size))
        except asyncio.QueueFull:
            self.release(size)
            raise RateLimited(
                f"{PENDING_INVOKES} invokes already wait on this socket",
                reason="TOO_MANY_PENDING",
                retry_after=0.05,
            ) from None

    def release(self, size: int) -> None:
        if self.budget is not None:
            self.budget.release(size)


__all__ = [
    "CHANNELS",
    "DECISIONS_SCOPE",
    "LIST_ACTION",
    "QUEUE_SIZE",
    "SUBSCRIBE_ACTION",
    "EventHub",
    "Subscriber",
    "WsDoor",
]
