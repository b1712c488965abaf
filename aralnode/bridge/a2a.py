"""The A2A door: the A2A 1.0 standard (``lf.a2a.v1.A2AService``) over gRPC, JSON-RPC
and HTTP+JSON, with the official ``a2a-sdk`` (docs/a2a.md).

The SDK's request handler serves the protocol (tasks, streams, the three
transports' adapters); this module gives it an ``AgentExecutor`` that runs every
message through the node's one pipeline, as every door does: the context comes
from the ``ContextBuilder`` (door ``a2a``, the request's headers or gRPC metadata),
so authentication, authorization, rate limits, governance, post-checks and the
audit log apply unchanged.

**Skills.** Each capability is an ``AgentSkill`` (its id the capability id). A
message selects one by a data part ``{"skill": ID, "parameters": {...}}``, or by
``metadata.skill`` with the parameters as the message's (only) data part. A
free-form message (no skill named) goes to the node's ``a2a_default_skill``, its
text as ``{"text": ...}``; without one, its task asks which skill
(``INPUT_REQUIRED``, the skills listed), and a reply on the task that names one
runs it. The result is the task's artifact ``result`` (a data part; a text part
for a string).

**States.** ``WORKING`` while the call runs; ``COMPLETED`` with the artifact;
``REJECTED`` when the node refuses the call (unauthenticated, missing scope,
governance, bad parameters, no such skill); ``FAILED`` when it was accepted and
failed; ``AUTH_REQUIRED`` while a governance escalation waits for an approver
(the status message names the approval), then ``COMPLETED`` or ``REJECTED``.

**The card** (``/.well-known/agent-card.json``): the skills, the three
interfaces, the security schemes the node accepts, signed (A2A §8.4) with the node
key by the SDK's own signer: ES256 over the RFC 8785 form of the card without its
signatures, protected header ``kid`` = the node id, ``jku`` = the node's
``/.well-known/jwks.json`` (served here), ``typ`` JOSE. With ``listing_requires_auth``
it lists no skill: an authenticated caller reads them from the extended card
(``GetExtendedAgentCard``, as far as its scopes reach).

**Refusals** before the SDK reads a request (its credentials, its ``A2A-Version``,
its body's size, a JSON-RPC body that is no request object, a member given twice,
what ``_a2a_checks`` holds it to) are the node's, as on every door: the seed's error
object with the call's ``trace_id``, the ``X-Trace-Id`` header, in each binding's
form (``_a2a_errors``): on ``/a2a`` inside a JSON-RPC error (bridge/_jsonrpc.py), on
``/a2a/rest`` AIP-193 (A2A 1.0 §11.6), on gRPC a status with ``ErrorInfo``
(``_a2a_http``, ``_a2a_grpc``).

**The SDK's parts** are used as they are but for two workarounds (``_a2a_sdk``): a
follow-up naming only its task continues it in the task's context (§3.4.3), and
A2A's errors have §5.4's gRPC status. The card is sent with HTTP's caching headers
(§8.6.1, ``_a2a_http.send_cached``).

**Every method is a call of the pipeline**: a send runs its skill through it (the
executor); every other method runs inside ``Pipeline.call`` (``_a2a_calls``).

**Streams** (``SendStreamingMessage``, ``SubscribeToTask``; server-sent events, gRPC
streams) are held to their caller's credentials as a WebSocket is
(``stream_gate``): authenticated again by the pipeline's first stage before their
events (at most once a second of ``clock``), a refusal ends the stream (the SSE
response ends, gRPC's with ``UNAUTHENTICATED``), on record as its outcome; so does
the end of the credential's lifetime (a JWT's ``exp``), whether events come or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from a2a.auth.user import User
from a2a.helpers.proto_helpers import (
    new_data_part,
    new_task_from_user_message,
    new_text_message,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers.grpc_handler import DefaultGrpcServerCallContextBuilder
from a2a.server.routes import (
    DefaultServerCallContextBuilder,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import TaskUpdater
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.errors import InvalidRequestError as A2AInvalidRequest
from a2a.utils.signing import create_agent_card_signer
from google.protobuf.json_format import MessageToDict, MessageToJson
from starlette.requests import Request
from starlette.routing import Router

from aralnode._logs import get_logger
from aralnode.bridge import _a2a_calls as calls
from aralnode.bridge import _a2a_http
from aralnode.bridge import _http as h
from aralnode.bridge import _jsonrpc as rpc
from aralnode.bridge._a2a_calls import SERVICE
from aralnode.bridge._a2a_grpc import GrpcGate
from aralnode.bridge._a2a_http import ADMITTED, DOOR, JSONRPC_PATH, REST_PREFIX, send_cached
from aralnode.bridge._a2a_sdk import RequestHandler, Servicer
from aralnode.bridge._a2a_tasks import DEFAULT_MAX_BYTES, BoundedTaskStore
from aralnode.bridge._approvals_feed import SessionGate, credential_lifetime
from aralnode.core import jws
from aralnode.core.clock import Clock
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError, InvalidRequest
from aralnode.core.identity import Identity
from aralnode.service.approvals import Approval
from aralnode.service.auth import ANONYMOUS_AT, INVOKE_SCOPES
from aralnode.service.node_service import NodeService
from aralnode.service.refusals import refused
from aralnode.service.stages import address_of, reaches

log = get_logger("aralnode.a2a")

CARD_PATH = "/.well-known/agent-card.json"
JWKS_PATH = "/.well-known/jwks.json"
PROTOCOL_VERSION = "1.0"
# Refusals (the node would not run the call) as opposed to failures of a call it ran.
_REJECTED = frozenset({"invalid_request", "unsupported_version", "payload_too_large",
                       "unauthorized", "forbidden", "governance_blocked", "not_found",
                       "rate_limit_exceeded"})  # fmt: skip
# A task waiting for its caller's input stays parked in the SDK's memory until
# released; a follow-up makes it again from the store. Released soon, so that what an
# outsider parks is what it sends in about a second, not all it ever sent. (Its
# history is the store's: trimmed where the store trims it, ``_a2a_tasks``.)
PARKED_SECONDS = 1.0


class NoSkill(InvalidRequest):
    """A message that names no skill, on a node with no default skill."""

    default_reason = "NO_SKILL"


def selection(message: a2a_pb2.Message, default: str = "") -> tuple[str, Any]:
    """The skill a message selects and its parameters (the module docstring's rule).

    Raises:
        InvalidRequest: parameters that are not an object.
        NoSkill: no skill named, and no ``default``.
    """
    data = [MessageToDict(p.data) if p.HasField("data") else None for p in message.parts]
    data = [d for d in data if d is not None]
    for d in data:
        if isinstance(d, dict) and isinstance(d.get("skill"), str):
            params = d.get("parameters", {})
            if not isinstance(params, dict):
                raise InvalidRequest("'parameters' must be an object", reason="BAD_PARAMETERS")
            return d["skill"], params
    meta = MessageToDict(message.metadata) if message.HasField("metadata") else {}
    skill = meta.get("skill")
    if isinstance(skill, str) and skill:
        params = data[0] if len(data) == 1 else {}
        if not isinstance(params, dict):
            raise InvalidRequest("the parameters part must be an object", reason="BAD_PARAMETERS")
        return skill, params
    if default:
        text = "".join(p.text for p in message.parts if p.HasField("text"))
        if not text and len(data) == 1 and isinstance(data[0], dict):
            return default, data[0]
        return default, {"text": text}
    raise NoSkill('name a skill: a data part {"skill": ID, "parameters": {...}}, or metadata.skill')


def _result_part(result: Any) -> a2a_pb2.Part:
    if isinstance(result, str):
        return new_text_part(result)
    return new_data_part(json.loads(json.dumps(result, default=str)))


class NodeExecutor(AgentExecutor):
    """Runs each A2A message as a call of the node's pipeline (module docstring)."""

    def __init__(self, door: A2ADoor) -> None:
        self.door = door
        self._notes: set[asyncio.Future[None]] = set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        assert message is not None
        assert context.task_id
        assert context.context_id
        if context.current_task is None:
            task = new_task_from_user_message(message)
            task.id, task.context_id = context.task_id, context.context_id
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        ctx = self.door.call_context(context.call_context)
        pipeline = self.door.service.pipeline
        stop_watch = self._watch_approvals(ctx, updater)
        try:
            try:
                skill, params = selection(message, self.door.default_skill)
            except NoSkill as exc:  # a call of the pipeline too: authorized, limited, audited
                note = self._which_skill(exc, context, ctx)
                await calls.run(pipeline, ctx, "SendMessage", lambda: updater.requires_input(note))
                return
            except AralError as exc:  # parameters that are no object: on record
                raise refused(pipeline, ctx, calls.action("SendMessage"), exc) from None
            await updater.start_work()
            result = await pipeline.invoke(ctx, skill, params)
        except AralError as exc:
            reply = new_text_message(
                f"{exc.code}: {exc.message}", context_id=context.context_id, task_id=context.task_id
            )
            reply.metadata.update({"code": exc.code, "reason": exc.reason,
                                   "trace_id": ctx.trace_id})  # fmt: skip
            if exc.code in _REJECTED:
                await updater.reject(reply)
            else:
                await updater.failed(reply)
            return
        finally:
            stop_watch()
        await updater.add_artifact([_result_part(result)], name="result")
        await updater.complete()

    def _which_skill(
        self, exc: NoSkill, context: RequestContext, ctx: CallContext
    ) -> a2a_pb2.Message:
        skills = self.door._skills()
        listed = ", ".join(skills[:20]) + (", …" if len(skills) > 20 else "")
        if self.door.listing_requires_auth and ctx.anonymous:  # as on the public card
            listed = "listed to authenticated callers (GetExtendedAgentCard)"
        note = new_text_message(f"{exc.message}; skills: {listed}",
                                context_id=context.context_id, task_id=context.task_id)  # fmt: skip
        note.metadata.update({"code": exc.code, "reason": exc.reason})
        return note

    def _watch_approvals(self, ctx: CallContext, updater: TaskUpdater) -> Callable[[], None]:
        """While the call waits for an approver, the task says AUTH_REQUIRED."""
        queue = self.door.service.pipeline.stages.govern.approvals
        if queue is None:
            return lambda: None

        def on_event(event: str, entry: Approval) -> None:
            mine = entry.trace_id == ctx.trace_id and entry.principal == ctx.principal
            if event == "pending" and mine and entry.door == DOOR:
                note = new_text_message(
                    f"waiting for approval {entry.id}: {'; '.join(entry.reasons)}",
                    context_id=updater.context_id, task_id=updater.task_id,
                )  # fmt: skip
                note.metadata.update({"approval": entry.id})
                task = asyncio.ensure_future(updater.requires_auth(note))
                self._notes.add(task)
                task.add_done_callback(self._notes.discard)

        return queue.on_event(on_event)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        if context.task_id and context.context_id:
            await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


class _Owner(User):
    """The task owner the SDK's store keys tasks by (``A2ADoor.owner``)."""

    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:
        return self._name


class _Contexts(DefaultServerCallContextBuilder):
    """Keeps the request's ASGI scope for the executor's ``CallContext``, and names
    the tasks' owner."""

    def __init__(self, door: A2ADoor) -> None:
        self.door = door

    def build(self, request: Request) -> ServerCallContext:
        built = super().build(request)
        built.state["scope"] = request.scope
        built.user = _Owner(self.door.owner(built))
        return built


class _GrpcContexts(DefaultGrpcServerCallContextBuilder):
    """The SDK's gRPC context (it keeps the servicer context), with the owner."""

    def __init__(self, door: A2ADoor) -> None:
        self.door = door

    def build(self, context: Any) -> ServerCallContext:
        built = super().build(context)
        built.user = _Owner(self.door.owner(built))
        return built


class _Lazy:
    """The request handler, made when first used (its card needs the bound ports)."""

    def __init__(self, door: A2ADoor) -> None:
        self._door = door

    def __getattr__(self, name: str) -> Any:
        return getattr(self._door.request_handler(), name)


class _Capture:
    """Takes the generic handler the generated ``add_…_to_server`` makes."""

    handler: Any = None

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.handler = handlers[0]

    def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
        """The generic handler serves them too."""


class A2ADoor:
    """The SDK's handler over the node, with its HTTP routes and gRPC servicer.

    Args:
        where: Returns (HTTP base URL, gRPC ``host:port``) once the doors are bound.
    """

    def __init__(
        self,
        service: NodeService,
        identity: Identity,
        *,
        name: str,
        version: str,
        where: Callable[[], tuple[str, str]],
        security: dict[str, a2a_pb2.SecurityScheme] | None = None,
        max_tasks: int = 10_000,
        max_task_bytes: int = DEFAULT_MAX_BYTES,
        task_db: Path | None = None,
        default_skill: str = "",
        max_body_bytes: int = 4 * 1024 * 1024,
        listing_requires_auth: bool = False,
    ) -> None:
        self.service = service
        self.identity = identity
        self.name, self.version = name, version
        self.where = where
        self.security = security or {}
        self.max_tasks, self.task_db = max_tasks, task_db
        self.max_task_bytes = max_task_bytes
        # The public card lists no skill: an authenticated caller reads them from
        # the extended card (``GetExtendedAgentCard``), as far as its scopes reach.
        self.listing_requires_auth = listing_requires_auth
        self.default_skill = default_skill
        self.max_body_bytes = max_body_bytes
        self.clock: Clock = service.clock  # the streams' (``stream_gate``)
        self._card: a2a_pb2.AgentCard | None = None
        self._card_json = b""
        self._card_made_ms = 0  # (its Last-Modified)
        self._card_skills: tuple[str, ...] = ()
        self._handler: RequestHandler | None = None
        rpc.bound_library_logs("a2a")  # (its loggers log what callers sent)
        lazy: Any = _Lazy(self)  # the SDK's handler, made with the first card
        self.handler = lazy
        self.grpc_gate = GrpcGate(self)  # around each gRPC call (transport/admitted.py)
        contexts = _Contexts(self)
        self.app = Router(
            routes=[
                # A2A 1.0, and 0.3 on the same paths for the clients that still speak it.
                *create_jsonrpc_routes(lazy, JSONRPC_PATH, context_builder=contexts,
                                       enable_v0_3_compat=True),
                *create_rest_routes(lazy, context_builder=contexts,
                                    path_prefix=REST_PREFIX, enable_v0_3_compat=True),
            ]
        )  # fmt: skip

    # -- the card ----------------------------------------------------------------------

    def _skills(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.service.pipeline.registry)

    def card(self) -> a2a_pb2.AgentCard:
        """The signed card (built once: the ports do not change while serving)."""
        # A capability added or removed changes the card: made again (no listener on
        # the registry, which would outlive a stopped door).
        if self._card is not None and self._card_skills == self._skills():
            return self._card
        self._card_skills = self._skills()
        http_base, grpc_target = self.where()
        card = a2a_pb2.AgentCard(
            name=self.name,
            description=f"aralnode {self.name} ({self.identity.node_id})",
            version=self.version or "0",
            supported_interfaces=[
                a2a_pb2.AgentInterface(url=http_base + JSONRPC_PATH, protocol_binding="JSONRPC",
                                       protocol_version=PROTOCOL_VERSION),
                a2a_pb2.AgentInterface(url=grpc_target, protocol_binding="GRPC",
                                       protocol_version=PROTOCOL_VERSION),
                a2a_pb2.AgentInterface(url=http_base + REST_PREFIX, protocol_binding="HTTP+JSON",
                                       protocol_version=PROTOCOL_VERSION),
            ],
            capabilities=a2a_pb2.AgentCapabilities(streaming=True, push_notifications=False,
                                                   extended_agent_card=True),
            default_input_modes=["application/json", "text/plain"],
            default_output_modes=["application/json", "text/plain"],
        )  # fmt: skip
        card.skills.extend(_skill(c) for c in self.service.pipeline.registry)
        for scheme_name, scheme in self.security.items():
            card.security_schemes[scheme_name].CopyFrom(scheme)
        public = card
        if self.listing_requires_auth:  # the extended card lists them (``_extended``)
            public = a2a_pb2.AgentCard()
            public.CopyFrom(card)
            del public.skills[:]
        self._sign(public)
        self._card, self._card_json = public, MessageToJson(public, indent=None).encode()
        self._card_made_ms = self.service.clock.now_ms()
        if self._handler is None:  # (the SDK checks its cards have skills; it serves neither)
            self._handler = RequestHandler(
                agent_executor=NodeExecutor(self),
                task_store=BoundedTaskStore(
                    self.max_tasks, self.task_db, _Owner, self.max_task_bytes, share_of
                ),
                agent_card=card,
                extended_agent_card=card,
                extended_card_modifier=self._extended,
                interrupted_task_timeout=PARKED_SECONDS,
            )
        return public

    def _sign(self, card: a2a_pb2.AgentCard) -> None:
        """Sign ``card`` (A2A §8.4) with the node key, its JWKS on the HTTP port."""
        del card.signatures[:]
        header = {"alg": jws.algorithm_of(self.identity), "kid": self.identity.node_id,
                  "jku": self.where()[0] + JWKS_PATH, "typ": "JOSE"}  # fmt: skip
        create_agent_card_signer(self.identity.to_pem(), header)(card)  # type: ignore[arg-type]

    async def _extended(self, _: a2a_pb2.AgentCard, server: ServerCallContext) -> a2a_pb2.AgentCard:
        """``GetExtendedAgentCard``: for an authenticated caller, the skills its scopes
        reach, each tagged with the scopes it needs (``scope:…``), signed."""
        ctx = self.call_context(server)
        self.service.pipeline.stages.authenticate(ctx)
        if ctx.anonymous:  # (not reached: the door refuses it first, as 401; ``check_caller``)
            raise A2AInvalidRequest(message="GetExtendedAgentCard is for authenticated callers")
        card = a2a_pb2.AgentCard()
        card.CopyFrom(self.card())
        del card.skills[:]
        for capability in self.service.pipeline.registry:
            scopes = capability.required_scopes or INVOKE_SCOPES
            if reaches(ctx.scopes, scopes):
                card.skills.append(_skill(capability, [f"scope:{s}" for s in scopes]))
        self._sign(card)
        return card

    def request_handler(self) -> RequestHandler:
        """The SDK's request handler (made with the card: the ports must be bound)."""
        if self._handler is None:
            self.card()
        assert self._handler is not None
        return self._handler

    def grpc_handler(self) -> Any:
        """The generic gRPC handler of ``lf.a2a.v1.A2AService`` (the SDK's servicer)."""
        capture = _Capture()
        servicer = Servicer(self.handler, context_builder=_GrpcContexts(self))
        a2a_pb2_grpc.add_A2AServiceServicer_to_server(servicer, capture)  # type: ignore[no-untyped-call]
        return capture.handler  # (behind ``grpc_gate``: transport/admitted.py)

    # -- what the executor needs ---------------------------------------------------------

    def owner(self, server: ServerCallContext) -> str:
        """Whose tasks a request sees: its authenticated principal, else anonymous
        callers by their address (the context the request was admitted with; any
        other is authenticated here, a refusal only meaning no principal)."""
        ctx = self.call_context(server)
        with contextlib.suppress(AralError):
            self.service.pipeline.stages.authenticate(ctx)  # (admitted: nothing to do)
        if not ctx.anonymous:
            return ctx.principal
        host = str(ctx.peer).removeprefix("ipv4:").removeprefix("ipv6:").rpartition(":")[0]
        return f"{ANONYMOUS_AT}{host}"

    def call_context(self, server: ServerCallContext) -> CallContext:
        """The ``CallContext`` of the request behind ``server`` (HTTP or gRPC): the
        one it was admitted with, already authenticated (its owner, its executor
        and the pipeline use it as it is: one authentication a request)."""
        scope = server.state.get("scope")
        if scope is not None:
            admitted = scope.get(ADMITTED)
            if isinstance(admitted, CallContext):
                return admitted
            return h.call_context(self.service.contexts, scope, DOOR)
        return self.grpc_gate.context(server.state.get("grpc_context"))

    def admit(self, ctx: CallContext) -> None:
        """Who calls, before the SDK reads the request (every method: a task is
        read, listed or cancelled only by a caller the node accepts; a credential
        that is shown and wrong is refused, as on every door). Counted and
        audited as any refusal of the first stage."""
        self.service.pipeline.authenticate(ctx, SERVICE)

    def stream_gate(self, ctx: CallContext, again: Callable[[], CallContext]) -> SessionGate:
        """The gate of a stream admitted as ``ctx``: ``again()`` (its credentials, in a
        new context) authenticated by the pipeline's first stage, the refusal raised
        for the stream's own record; its lifetime the credential's."""
        stage = self.service.pipeline.stages.authenticate
        lifetime = credential_lifetime(ctx.metadata, self.clock)
        return SessionGate(self.clock, lifetime, lambda: stage(again()), expiry="TOKEN_EXPIRED")

    # -- HTTP ----------------------------------------------------------------------------

    @staticmethod
    def serves(path: str) -> bool:
        """Whether ``path`` is this door's (the card, the JWKS, JSON-RPC, HTTP+JSON)."""
        return path in (CARD_PATH, JWKS_PATH, JSONRPC_PATH) or path.startswith("/a2a/")

    async def __call__(self, scope: h.Scope, receive: h.Receive, send: h.Send) -> None:
        path = scope.get("path", "")
        if path == CARD_PATH:  # (with A2A §8.6.1's caching headers)
            self.card()
            await send_cached(scope, send, self._card_json, h.JSON, made_ms=self._card_made_ms)
        elif path == JWKS_PATH:
            body = json.dumps({"keys": [jws.public_jwk(self.identity.public_key)]}).encode()
            await send_cached(scope, send, body, "application/jwk-set+json")
        else:
            await _a2a_http.serve(self, scope, receive, send)


def share_of(owner: str) -> str:
    """Whose share of the task store an owner's tasks count against (the store evicts
    from the share that holds the most): a principal's are its own; anonymous
    callers' their address as the rate limit counts it (``stages.address_of``: an
    IPv6 client's /64, of which it has as many addresses as it likes)."""
    if not owner.startswith(ANONYMOUS_AT):
        return owner
    host = unquote(owner.removeprefix(ANONYMOUS_AT)).strip("[]")
    return ANONYMOUS_AT + address_of(f"[{host}]:0")  # (a port: how ``address_of`` reads one)


def _skill(capability: Any, tags: list[str] | None = None) -> a2a_pb2.AgentSkill:
    """A capability as the card's skill (the extended card adds its scopes' tags)."""
    risk = ["risk:" + capability.risk] if capability.risk else []
    return a2a_pb2.AgentSkill(
        id=capability.id,
        name=capability.id,
        description=capability.description or capability.id,
        tags=["aralnode", *risk, *(tags or [])],
    )


__all__ = ["A2ADoor", "NodeExecutor", "selection", "share_of"]
