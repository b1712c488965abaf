"""The ARAL REST surface (PRO-024…026): ``/api/v1/agents/{agent_id}/…``.

What other ARAL implementations call, on the node's HTTP port::

    GET  /api/v1/agents/{agent_id}/status
    GET  /api/v1/agents/{agent_id}/capabilities
    POST /api/v1/agents/{agent_id}/invoke                     {"capability", "parameters"}
    POST /api/v1/agents/{agent_id}/capabilities/{capability}  {"parameters"}
    POST /api/v1/agents/{agent_id}/messages                   a signed ARALMessage (JSON)

``agent_id`` is this node (its id or its name) or one of its peers (id, or a name no
other peer bears): a call to a peer is forwarded over the A2A channel as any
forward is, judged here first. Every request is a call of the node's pipeline on
the REST door (authentication, rate limits, governance, audit), with ``X-Trace-Id``
and ``X-Request-Id`` read and echoed, ``X-API-Version`` negotiated (``1.0``; every
answer says ``X-Supported-Versions``), failures in the seed's error shape and codes.

A message is signed as any JOSE library can: a detached compact JWS (RFC 7515
appendix F) in ``X-ARAL-Signature`` over the exact body bytes, ES256 (or EdDSA),
its protected header carrying the sender's public ``jwk`` and ``kid``, the id that
key hashes to (``aralnode.core.identity.key_id_for``), which must be the message's
``header.sender``. A sender whose key a handshake pinned (a peer) gets its peer
rights; any other signer is named but holds no more than an anonymous caller. The
answer is a message too, signed by this node the same way. See docs/aral-api.md.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.bridge import _http as h
from aralnode.core import codec, jws
from aralnode.core.context import (
    CallContext,
    clean_trace_id,
    new_trace_id,
    refuse_repeated_credentials,
)
from aralnode.core.errors import (
    AralError,
    InternalError,
    InvalidParameters,
    InvalidRequest,
    MalformedMessage,
    NotFound,
    PermissionDenied,
    SignatureInvalid,
    Unauthenticated,
    UnsupportedVersion,
)
from aralnode.service.auth import READ_SCOPES
from aralnode.service.node_service import NodeService
from aralnode.service.refusals import audited, refused
from aralnode.service.stages import reaches
from aralnode.service.values import only_members

log = get_logger("aralnode.aral_api")

PREFIX = "/api/v1/agents/"
VERSION = "1.0"
SUPPORTED = (VERSION,)
_VERSIONS = {"1": VERSION, "1.0": VERSION, "v1": VERSION}
SIGNATURE_HEADER = "x-aral-signature"
MESSAGE_VERSION = "1.0"
MAX_ID_CHARS = 128
# The action a signed message is audited under until the pipeline knows its own.
_MESSAGE_ACTION = "aral.api/message"
# (HTTP status, body, extra headers) of one request's answer.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
_VERSION_HEADERS = [
    (b"x-api-version", VERSION.encode()),
    (b"x-supported-versions", ", ".join(SUPPORTED).encode()),
]
# (path tail, method) -> handler name; a capability id may hold '/', so
# ``capabilities/…`` is matched by its first segment.
_ROUTES = {
    ("status", "GET"): "_status",
    ("capabilities", "GET"): "_capabilities",
    ("invoke", "POST"): "_invoke",
    ("capabilities/", "POST"): "_capability",
    ("messages", "POST"): "_message",
}


def _route(tail: str, method: str) -> str:
    key = "capabilities/" if tail.startswith("capabilities/") else tail
    method = "GET" if method == "HEAD" else method
    handler = _ROUTES.get((key, method))
    if handler is not None:
        return handler
    allowed = sorted(m for (t, m) in _ROUTES if t == key)
    if allowed:
        if "GET" in allowed:
            allowed.append("HEAD")
        raise h.MethodNotAllowed(f"{method} is not allowed here", details={"allow": allowed})
    raise NotFound(f"no ARAL API route {tail!r}", reason="ROUTE_NOT_FOUND")


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidParameters(f"{what} must be a JSON object", details={"field": what})
    return value


def _unserved(asked: str | None) -> AralError | None:
    """The refusal of an ``X-API-Version`` this node does not speak (None: none asked,
    or one it does)."""
    if asked is None or asked.strip().lower() in _VERSIONS:
        return None
    return UnsupportedVersion(
        f"API version {asked[:16]!r} is not served; this node speaks " + ", ".join(SUPPORTED),
        details={"supported": list(SUPPORTED)},
    )


def _parameters(request: dict[str, Any]) -> dict[str, Any]:
    """A request's ``parameters``: an object, or none (absent or null: ``{}``); not
    ``false`` or ``""`` read as none."""
    value = request.get("parameters")
    return {} if value is None else _object(value, "parameters")


_INVOKE_MEMBERS = frozenset({"capability", "parameters"})
_CALL_MEMBERS = frozenset({"parameters"})


def _members(request: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """``request``, refused if it has a member the route does not take."""
    return only_members(request, known, "the request body")


def _text(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise MalformedMessage(
            f"{where}.{key} must be a string of 1 to {MAX_ID_CHARS} characters",
            details={"field": f"{where}.{key}"},
        )
    return value


class AralApi:
    """The ASGI handler of ``/api/v1/agents/…`` (see the module docstring)."""

    def __init__(self, service: NodeService, *, name: str, max_body_bytes: int) -> None:
        self.service = service
        self.name = name
        self.max_body_bytes = max_body_bytes
        self._jwk = jws.public_jwk(service.envelopes.identity.public_key)

    @staticmethod
    def serves(path: str) -> bool:
        return path.startswith(PREFIX)

    async def __call__(self, scope: h.Scope, receive: h.Receive, send: h.Send) -> None:
        service = self.service
        ctx = h.call_context(service.contexts, scope, "rest")
        req_id = ctx.message_id = h.request_id(ctx.metadata.get("x-request-id"))
        try:
            raw = scope.get("raw_path") or scope["path"].encode()
            raw_path = raw.decode("latin-1").split("?", 1)[0]
            agent_raw, _, tail = raw_path[len(PREFIX) :].partition("/")
            try:
                handler = _route(tail, scope["method"])
            except AralError as exc:  # a refused caller learns no route (and each is audited)
                service.pipeline.authenticate(ctx, "aral.api/route")
                raise refused(service.pipeline, ctx, "aral.api/route", exc) from None
            if (unserved := _unserved(ctx.metadata.get("x-api-version"))) is not None:
                if handler != "_message":  # (a message's credential is its signature)
                    service.pipeline.authenticate(ctx, "aral.api/version")
                raise refused(service.pipeline, ctx, "aral.api/version", unserved)
            agent_id = unquote(agent_raw)
            if handler == "_message":  # its signature is the caller's credential
                with audited(service.pipeline, ctx, _MESSAGE_ACTION):  # (413: on record)
                    body = await h.read_body(scope, receive, self.max_body_bytes)
                status, payload, extra = await self._message(ctx, agent_id, body)
            else:
                # Who calls, before anything of the request is read or any agent named.
                action = f"aral.api/{handler[1:]}"
                service.pipeline.authenticate(ctx, action)
                with audited(service.pipeline, ctx, action):  # (a refusal here too)
                    peer = self._agent(agent_id, ctx)
                    body = b""
                    if scope["method"] == "POST":
                        body = await h.read_body(scope, receive, self.max_body_bytes)
                status, payload, extra = await getattr(self, handler)(ctx, peer, tail, body)
        except h.ClientGone:
            return
        except AralError as exc:
            status, payload, extra = exc.http_status, self._error(exc, ctx), h.error_headers(exc)
        except Exception as exc:
            # The caller's path, bounded and quoted (%r): it cannot forge a log line.
            path = str(scope.get("path", ""))[:200]
            log.exception("ARAL API %r failed (trace %s)", path, ctx.trace_id)
            err = InternalError(f"internal error: {type(exc).__name__}")
            status, payload, extra = 500, self._error(err, ctx), []
        headers = [*h.id_headers(ctx.trace_id, req_id), *_VERSION_HEADERS, *extra]
        if status == 200:
            headers += h.rate_limit_headers(ctx)
        await h.send_body(send, status, payload, h.JSON, headers)

    def _error(self, exc: AralError, ctx: CallContext) -> bytes:
        ctx.trace_id = clean_trace_id(ctx.trace_id)
        return h.dumps(h.error_body(exc, ctx.trace_id, self.service.clock.now_ms()))

    def _agent(self, agent_id: str, ctx: CallContext) -> str:
        """ "" for this node, else the node id of the peer ``agent_id`` names (which a
        caller without ``agent:read`` is not told, whether or not there is one)."""
        service = self.service
        if agent_id in (service.node_id, self.name):
            return ""
        if not reaches(ctx.scopes, READ_SCOPES):
            raise PermissionDenied(
                f"naming another agent than this node requires scope(s) {', '.join(READ_SCOPES)}",
                reason="MISSING_SCOPE",
                details={"missing_scopes": sorted(set(READ_SCOPES) - ctx.scopes)},
            )
        peers = service.info.peer_protos()
        for p in peers:
            if p.node_id == agent_id:
                return p.node_id
        named = [p.node_id for p in peers if p.name == agent_id]
        if len(named) == 1:
            return named[0]
        if named:
            raise InvalidRequest(
                f"{len(named)} peers are named {agent_id[:64]!r}: name one by its node id",
                reason="AGENT_AMBIGUOUS",
                details={"candidates": sorted(named)},
            )
        raise NotFound(
            f"agent {agent_id[:64]!r} is neither this node nor one of its peers",
            reason="AGENT_NOT_FOUND",
        )

    # -- reads -------------------------------------------------------------------------

    async def _status(self, ctx: CallContext, peer: str, *_: Any) -> Answer:
        service = self.service
        if not peer:
            st = await service.get_status(pb.GetStatusRequest(), ctx)
            listed = service.info.capabilities_of("").capabilities
            answer: dict[str, Any] = {
                "agent_id": st.node_id,
                "name": st.name,
                "status": "healthy" if st.state == "SERVING" else "degraded",
                "health_score": 1.0 if st.state == "SERVING" else 0.5,
                "uptime_seconds": st.uptime_ms // 1000,
                "capabilities": [c.id for c in listed if reaches(ctx.scopes, c.required_scopes)],
                "version": st.software,
                "protocol_versions": list(st.protocol_versions),
                "peer_count": st.peer_count,
            }
            return 200, h.dumps(answer), []
        peers = await service.list_peers(pb.ListPeersRequest(), ctx)
        found = next((p for p in peers.peers if p.node_id == peer), None)
        if found is None:  # gone between the lookup and the listing
            raise NotFound(f"agent {peer!r} is no longer a peer", reason="AGENT_NOT_FOUND")
        state = pb.PeerState.Name(found.state).removeprefix("PEER_STATE_").lower()
        serving = state == "connected" and found.health != "NOT_SERVING"
        answer = {
            "agent_id": found.node_id,
            "name": found.name,
            "status": "healthy"
            if serving
            else "unreachable"
            if state != "connected"
            else "degraded",
            "state": state,
            "capabilities": list(found.capability_ids),
            "version": found.protocol_version,
            "last_seen_unix_ms": found.last_seen_unix_ms,
        }
        return 200, h.dumps(answer), []

    async def _capabilities(self, ctx: CallContext, peer: str, *_: Any) -> Answer:
        listed = await self.service.list_capabilities(pb.ListCapabilitiesRequest(node_id=peer), ctx)
        caps = [
            {
                "id": c.id,
                "name": c.name or c.id,
                "description": c.description,
                "input_schema": json_format.MessageToDict(c.input_schema),
                "output_schema": json_format.MessageToDict(c.output_schema),
                "permissions": list(c.required_scopes),
                "risk": pb.RiskCategory.Name(c.risk).removeprefix("RISK_").lower(),
            }
            for c in listed.capabilities
        ]
        answer = {"agent_id": listed.node_id or peer or self.service.node_id, "capabilities": caps}
        return 200, h.dumps(answer), []

    # -- calls -------------------------------------------------------------------------

    async def _run(self, ctx: CallContext, peer: str, capability: str, params: Any) -> Any:
        """The capability's result, here or on ``peer`` (forwarded, judged here)."""
        service = self.service
        if peer:
            timeout = None if ctx.deadline is None else ctx.deadline - service.clock.monotonic()
            return await service.forward(peer, capability, params, timeout, ctx)
        return await service.pipeline.invoke(ctx, capability, params)

    async def _invoke(self, ctx: CallContext, peer: str, _tail: str, body: bytes) -> Answer:
        with audited(self.service.pipeline, ctx, "aral.api/invoke"):  # (before the pipeline)
            request = _members(_object(_json(body), "the request body"), _INVOKE_MEMBERS)
            capability = _text(request, "capability", "body")
            params = _parameters(request)
        return await self._answer(ctx, peer, capability, params)

    async def _capability(self, ctx: CallContext, peer: str, tail: str, body: bytes) -> Answer:
        with audited(self.service.pipeline, ctx, "aral.api/capability"):  # (as _invoke's)
            capability = unquote(tail.partition("/")[2])
            if not capability:
                raise NotFound("no capability named in the path", reason="ROUTE_NOT_FOUND")
            request = _object(_json(body), "the request body") if body else {}
            params = _parameters(_members(request, _CALL_MEMBERS))
        return await self._answer(ctx, peer, capability, params)

    async def _answer(
        self, ctx: CallContext, peer: str, capability: str, params: dict[str, Any]
    ) -> Answer:
        started = time.perf_counter()
        result = await self._run(ctx, peer, capability, params)
        answer = {
            "success": True,
            "result": result,
            "execution_time_ms": round((time.perf_counter() - started) * 1000, 3),
            "agent_id": peer or self.service.node_id,
            "trace_id": clean_trace_id(ctx.trace_id),
        }
        return 200, h.dumps(answer), []

    # -- signed messages ---------------------------------------------------------------

    async def _message(self, ctx: CallContext, agent_id: str, body: bytes) -> Answer:
        """A signed ARALMessage: verified, run, answered by a signed message."""
        env = self.service.envelopes
        pipeline = self.service.pipeline
        with audited(pipeline, ctx, _MESSAGE_ACTION), pipeline.stages.authenticate.charging(ctx):
            # Its signature is its credential: two of them are refused as the
            # authenticate stage refuses any credential given twice, but before
            # either is verified or the message id is taken; a refusal is charged to
            # the client's address, which is refused once past its failures.
            refuse_repeated_credentials(ctx.metadata)
            sender = self._verify(ctx.metadata.get(SIGNATURE_HEADER), body)
        message_id = ""
        try:
            with audited(pipeline, ctx, _MESSAGE_ACTION):
                parsed = _json(body)
            if isinstance(parsed, dict) and isinstance(parsed.get("header"), dict):
                message_id = str(parsed["header"].get("messageId", ""))[:MAX_ID_CHARS]
            reply = await self._request(ctx, agent_id, sender, parsed)
            status = 200
        except AralError as exc:
            status, reply = exc.http_status, {"type": "response", "error": codec.error_dict(exc)}
        answer = {
            "header": {
                "version": MESSAGE_VERSION,
                "messageId": new_trace_id(),
                "timestamp": self.service.clock.now_ms(),
                "sender": self.service.node_id,
                "recipient": sender,
                "contentType": codec.JSON,
                "correlationId": message_id,
                "traceId": clean_trace_id(ctx.trace_id),
            },
            "body": reply,
        }
        payload = h.dumps(answer)
        token = jws.sign(env.identity, payload, detached=True, header={"jwk": self._jwk})
        return status, payload, [(SIGNATURE_HEADER.encode(), token.encode())]

    async def _request(
        self, ctx: CallContext, agent_id: str, sender: str, message: Any
    ) -> dict[str, Any]:
        """The response body for a verified request from ``sender``. A refusal
        before the pipeline runs the call is audited here (``refusals``)."""
        pipeline = self.service.pipeline
        with audited(pipeline, ctx, _MESSAGE_ACTION):
            self._identify(ctx, sender, message)
        pipeline.authenticate(ctx, _MESSAGE_ACTION)  # (audits its own refusal)
        with audited(pipeline, ctx, _MESSAGE_ACTION):
            peer, action, params = self._read(ctx, agent_id, message)
        result = await self._run(ctx, peer, action, params)
        return {"type": "response", "action": action, "result": result}

    def _identify(self, ctx: CallContext, sender: str, message: Any) -> None:
        """Check ``message``'s header (version, sender, a fresh id) and make ``ctx``
        its verified sender's."""
        env = self.service.envelopes
        message = _object(message, "the message")
        header = _object(message.get("header"), "header")
        _object(message.get("body"), "body")
        if header.get("version") != MESSAGE_VERSION:
            raise UnsupportedVersion(
                f"message version {str(header.get('version'))[:16]!r}; this node reads "
                f"{MESSAGE_VERSION}",
                details={"supported": [MESSAGE_VERSION]},
            )
        if _text(header, "sender", "header") != sender:
            raise Unauthenticated(
                "header.sender is not the id of the key that signed the message",
                reason="SENDER_MISMATCH",
            )
        _text(header, "recipient", "header")
        message_id = _text(header, "messageId", "header")
        stamp = header.get("timestamp")
        if isinstance(stamp, bool) or not isinstance(stamp, int):
            raise MalformedMessage("header.timestamp is Unix milliseconds, an integer")
        trace = _text(header, "traceId", "header", required=False) or ctx.trace_id
        # Fresh and never seen: a captured message posted again is refused.
        env.replay.admit(sender, message_id, stamp)
        self.service.contexts.signed(
            ctx,
            pb.Header(sender=sender, message_id=message_id, trace_id=trace),
            signed=True,
            signer_verified=env.keyring.is_pinned(sender),
        )

    def _read(
        self, ctx: CallContext, agent_id: str, message: dict[str, Any]
    ) -> tuple[str, str, Any]:
        """The (peer, action, parameters) of an authenticated ``message``."""
        header, content = message["header"], message["body"]
        recipient = header["recipient"]
        peer = self._agent(agent_id, ctx)
        if recipient != (peer or self.service.node_id):
            raise InvalidRequest(
                "header.recipient is not the agent this message was posted to",
                reason="WRONG_RECIPIENT",
                details={"recipient": recipient[:64], "agent_id": peer or self.service.node_id},
            )
        kind = header.get("contentType", codec.JSON)
        if kind != codec.JSON:
            raise MalformedMessage(
                f"header.contentType {str(kind)[:64]!r}: this door reads {codec.JSON}"
            )
        if content.get("type") != "request":
            raise MalformedMessage('body.type must be "request"', reason="NOT_A_REQUEST")
        action = _text(content, "action", "body")
        return peer, action, _object(content.get("parameters") or {}, "body.parameters")

    def _verify(self, token: str | None, body: bytes) -> str:
        """The sender id of the key whose JWS in ``token`` covers ``body``."""
        if not token:
            raise Unauthenticated(
                f"a message must be signed: a detached JWS in {SIGNATURE_HEADER}",
                reason="SIGNATURE_MISSING",
            )
        try:
            protected, *_ = jws.split(token.strip())
            jwk = protected.get("jwk")
            kid = protected.get("kid")
            if not isinstance(jwk, dict) or not isinstance(kid, str):
                raise SignatureInvalid("the JWS header needs the sender's 'jwk' and 'kid'")
            key = jws.key_from_jwk(jwk)
            if key.key_id != kid:
                raise SignatureInvalid(f"the jwk's id is {key.key_id}, not the kid {kid[:64]!r}")
            jws.verify(token.strip(), key, payload=body)
        except SignatureInvalid as exc:
            raise Unauthenticated(str(exc), reason="SIGNATURE_INVALID") from None
        return kid


def _json(body: bytes) -> Any:
    if not body:
        raise InvalidParameters("a JSON body is required", reason="MISSING_BODY")
    try:
        return codec.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedMessage(f"the request body is not JSON: {exc}") from None


__all__ = ["PREFIX", "SIGNATURE_HEADER", "AralApi"]
