"""Each A2A method a call of the node's pipeline, as every door's calls are.

A message sent (``SendMessage``, ``SendStreamingMessage``) runs the skill it names:
``NodeExecutor`` invokes it through the pipeline. Every other method (``GetTask``,
``ListTasks``, ``CancelTask``, ``SubscribeToTask``, ``GetExtendedAgentCard``, the
push-notification configs, and a method the SDK does not know) is run by the SDK
inside ``Pipeline.call`` under the action ``lf.a2a.v1.A2AService/<Method>`` (A2A
1.0's name, whichever binding or version asked): authorized (``agent:read`` to read,
``agent:invoke`` to change a task), rate limited, governed and audited like a REST
``GetStatus``. A refusal by a stage is the node's (HTTP 429 / ``RESOURCE_EXHAUSTED``
for the rate...); the SDK's own answer (``TaskNotFoundError``...) goes to the caller
as the SDK gave it, and its status is the call's outcome in the audit log.

An HTTP answer is held until the call's record is written (a server-sent stream
goes as it comes); gRPC's is returned after it as every method's is. One larger than
the node's results may be (``max_message_bytes``: ``ListTasks`` of large tasks) is
refused ``RESPONSE_TOO_LARGE`` instead, as any door refuses such a result (gRPC
failed it in its own layer, with a traceback; HTTP sent it whole).

The SDK's errors are read by A2A 1.0 §5.4's table where the SDK's own mapping
differs (``_a2a_errors``): on HTTP+JSON an ended task's ``CancelTask`` is answered
409, not 400; and the status a call's record gives an A2A error is §5.4's gRPC
status on every binding (``UNIMPLEMENTED`` for ``UNSUPPORTED_OPERATION``…), the one
gRPC's caller gets.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

from a2a.types import a2a_pb2
from a2a.utils.errors import A2A_ERROR_MAPPING, JSON_RPC_ERROR_CODE_MAP
from starlette.routing import BaseRoute, Match, Mount, Route

from aralnode.bridge import _http as h
from aralnode.bridge._a2a_checks import SENDS, VersionRefused
from aralnode.bridge._a2a_errors import SPEC_GRPC, SPEC_HTTP
from aralnode.bridge._approvals_feed import SessionGate
from aralnode.core.context import CallContext
from aralnode.core.errors import (
    AralError,
    NotFound,
    StatusCode,
    error_from_status,
    response_too_large,
)
from aralnode.service.auth import INVOKE_SCOPES, READ_SCOPES
from aralnode.service.node_service import NodeService
from aralnode.service.pipeline import Pipeline

SERVICE = "lf.a2a.v1.A2AService"
REST_PREFIX = "/a2a/rest"
METHODS = frozenset(m.name for m in a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods)
# The methods that answer with a stream: held to their caller's credentials (``a2a``).
STREAMS = frozenset({"SendStreamingMessage", "SubscribeToTask"})
# Read (agent:read) as opposed to change a task (agent:invoke); "": a method A2A has not.
_READS = frozenset({"GetTask", "ListTasks", "SubscribeToTask", "GetExtendedAgentCard", "",
                    "GetTaskPushNotificationConfig",
                    "ListTaskPushNotificationConfigs"})  # fmt: skip
# A2A 0.3's JSON-RPC names (the SDK's adapter serves them on /a2a).
_V03 = {"message/send": "SendMessage", "message/stream": "SendStreamingMessage",
        "tasks/get": "GetTask", "tasks/cancel": "CancelTask",
        "tasks/resubscribe": "SubscribeToTask",
        "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
        "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
        "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard"}  # fmt: skip
_BY_RPC_CODE = {code: A2A_ERROR_MAPPING.get(cls) for cls, code in JSON_RPC_ERROR_CODE_MAP.items()}
_PUSH = "pushNotificationConfigs"


class Door(Protocol):
    """What the door's HTTP and gRPC halves need of ``A2ADoor``."""

    @property
    def service(self) -> NodeService: ...

    @property
    def max_body_bytes(self) -> int: ...

    @property
    def app(self) -> Any:
        """The SDK's routes (an ASGI app)."""

    def admit(self, ctx: CallContext) -> None:
        """Authenticate the caller (raises its refusal, on record)."""

    def stream_gate(self, ctx: CallContext, again: Callable[[], CallContext]) -> SessionGate:
        """What a stream admitted as ``ctx`` is held to before each event."""


def jsonrpc_method(name: str) -> str:
    """The A2A 1.0 name of a JSON-RPC method (1.0's or 0.3's); "" if A2A has none."""
    return name if name in METHODS else _V03.get(name, "")


def jsonrpc_v03(name: str) -> bool:
    """Whether a JSON-RPC method is named as in A2A 0.3 (the SDK's 0.3 models read it)."""
    return name in _V03


# The A2A 1.0 method of each HTTP+JSON route of the SDK's (its path after the prefix
# and 0.3's ``/v1``, the HTTP method; HEAD as GET, as Starlette serves it).
_ROUTES = {
    ("/message:send", "POST"): "SendMessage",
    ("/message:stream", "POST"): "SendStreamingMessage",
    ("/tasks/{id}:cancel", "POST"): "CancelTask",
    ("/tasks/{id}:subscribe", "GET"): "SubscribeToTask",
    ("/tasks/{id}:subscribe", "POST"): "SubscribeToTask",
    ("/tasks/{id}", "GET"): "GetTask",
    ("/tasks", "GET"): "ListTasks",
    (f"/tasks/{{id}}/{_PUSH}", "POST"): "CreateTaskPushNotificationConfig",
    (f"/tasks/{{id}}/{_PUSH}", "GET"): "ListTaskPushNotificationConfigs",
    (f"/tasks/{{id}}/{_PUSH}/{{push_id}}", "GET"): "GetTaskPushNotificationConfig",
    (f"/tasks/{{id}}/{_PUSH}/{{push_id}}", "DELETE"): "DeleteTaskPushNotificationConfig",
    ("/extendedAgentCard", "GET"): "GetExtendedAgentCard",
    ("/card", "GET"): "GetExtendedAgentCard",
}
# A route's path parameters, by the names the id checks give them.
_PATH_IDS = {"id": "id", "push_id": "pushNotificationConfigId", "tenant": "tenant"}


def rest_method(routes: Sequence[BaseRoute], scope: h.Scope) -> tuple[str, dict[str, str]]:
    """The A2A 1.0 method an HTTP+JSON request calls and the ids in its path, from
    the SDK's route (``routes``) Starlette will serve it with: found as its router
    finds it, so the method named and checked is the one run (``tasks/a:b:cancel``
    cancels ``a:b``). "" for none (the SDK answers 404 or 405)."""
    found = _route(routes, scope)
    if found is None:
        return "", {}
    template, params = found
    path = template.removeprefix(REST_PREFIX).removeprefix("/v1")
    verb = str(scope.get("method"))
    method = _ROUTES.get((path, "GET" if verb == "HEAD" else verb), "")
    ids = {_PATH_IDS[k]: str(v) for k, v in params.items() if k in _PATH_IDS}
    return method, ids


def unrouted(routes: Sequence[BaseRoute], scope: h.Scope) -> AralError | None:
    """The node's refusal of an HTTP+JSON request no route of the SDK's serves (the
    SDK answered it in plain text, with no trace id): 405 with ``Allow`` when the
    path is served for other HTTP methods, else 404. None when a route serves it."""
    if _route(routes, scope) is not None:
        return None
    allow = [v for v in ("GET", "POST", "DELETE") if _route(routes, {**scope, "method": v})]
    if allow:
        verb = str(scope.get("method"))[:16]
        return h.MethodNotAllowed(f"{verb} is not allowed here", details={"allow": allow})
    return NotFound("no A2A route at this path", reason="ROUTE_NOT_FOUND")


def json_media(content_type: str | None) -> None:
    """Refuse a body that does not say it is JSON (none said: JSON), as REST does.

    Raises:
        UnsupportedMediaType: another media type.
    """
    media = (content_type or h.JSON).split(";")[0].strip().lower()
    if media != h.JSON and not media.endswith("+json"):
        raise h.UnsupportedMediaType(f"content-type {media[:64]!r} is not supported; use {h.JSON}")


def _route(routes: Sequence[BaseRoute], scope: h.Scope) -> tuple[str, dict[str, Any]] | None:
    """The path template and parameters of the route Starlette's ``Router`` serves
    ``scope`` with (into a ``Mount``: its tenant), or None (none, or one for another
    HTTP method only)."""
    for route in routes:
        match, child = route.matches(scope)
        if match is not Match.FULL:
            continue
        if isinstance(route, Mount):
            return _route(route.routes, {**scope, **child})
        if isinstance(route, Route):
            return route.path, dict(child.get("path_params", {}))
    return None


def query_ids(scope: h.Scope) -> dict[str, str]:
    """An HTTP+JSON request's query (``ListTasks``' ``contextId``...), for the id checks."""
    query = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(query, keep_blank_values=True)) if query else {}


def action(method: str) -> str:
    """The action the audit log and governance name a method by."""
    return f"{SERVICE}/{method}" if method else SERVICE


def scopes_of(method: str) -> tuple[str, ...]:
    return READ_SCOPES if method in _READS else INVOKE_SCOPES


def risk_of(method: str) -> str:
    return "read_only" if method in _READS else "unspecified"


def too_large(method: str, size: int, limit: int) -> AralError | None:
    """The refusal of an answer of ``size`` bytes past ``limit`` (0: none), else None."""
    if not limit or size <= limit:
        return None
    what = f"the answer to {method or SERVICE} (ask for less: pageSize, historyLength)"
    return response_too_large(what, size, limit)


def governed(method: str) -> bool:
    """Whether the door runs ``method`` in ``Pipeline.call`` (not a send: its skill's
    call is the one in the pipeline)."""
    return method not in SENDS


def kind_of(method: str) -> str:
    """How the counters name ``method``'s calls: a send invokes a skill ("invoke"),
    every other method is a call of the pipeline ("call"), refused or run."""
    return "call" if governed(method) else "invoke"


async def run(
    pipeline: Pipeline, ctx: CallContext, method: str, serve: Callable[[], Awaitable[Any]]
) -> Any:
    """``serve()`` (the SDK serving ``method``) as a call of the pipeline."""

    async def served(_: Any) -> Any:
        return await serve()

    return await pipeline.call(
        ctx, action(method), None, served, scopes=scopes_of(method), risk=risk_of(method)
    )


def stream(
    pipeline: Pipeline, ctx: CallContext, method: str, start: Callable[[], AsyncIterator[Any]]
) -> AsyncIterator[Any]:
    """``start()`` (the SDK's stream of ``method``) as a stream of the pipeline."""
    return pipeline.stream(
        ctx, action(method), None, lambda _: start(), risk=risk_of(method),
        scopes=scopes_of(method),
    )  # fmt: skip


class SdkAnswer:
    """The SDK's answer to one HTTP request, held (``flush``) until the call's audit
    record is written; a server-sent stream goes as it comes. ``error`` reads the
    outcome from it: an HTTP error status, or a JSON-RPC error object."""

    def __init__(
        self, send: h.Send, method: str, *, jsonrpc: bool, limit: int, trace_id: str = ""
    ) -> None:
        self._send, self.method, self.jsonrpc, self.limit = send, method, jsonrpc, limit
        self.trace_id = trace_id.encode("latin-1", "replace")  # (X-Trace-Id, as every answer)
        self.held: list[h.Message] = []
        self.status = 0
        self.streaming = False
        self.dropped = False  # (too large: the node's refusal goes instead)
        self.given: AralError | None = None  # (its error answer, as ``error`` read it)

    async def send(self, message: h.Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            headers = list(message.get("headers") or ())
            kind = dict(headers).get(b"content-type", b"")
            self.streaming = kind.startswith(b"text/event-stream")
            if self.trace_id and not any(k.lower() == b"x-trace-id" for k, _ in headers):
                message = {**message, "headers": [*headers, (b"x-trace-id", self.trace_id)]}
        if self.streaming:
            await self._send(message)
        else:
            self.held.append(message)

    def gave(self, exc: AralError) -> bool:
        """Whether ``exc``, ending the call, is the SDK's own error answer (which the
        caller gets as the SDK gave it), not a refusal after it (a stage's, the audit
        log's): then the held answer is dropped and the refusal goes instead."""
        return exc is self.given and not self.dropped

    async def flush(self) -> None:
        held, self.held = self.held, []
        for message in held:
            await self._send(message)

    def error(self) -> AralError | None:
        """The SDK's error answer as the node's error (its status and reason), or None."""
        self.given = self._error()
        return self.given

    def _error(self) -> AralError | None:
        if self.streaming or not self.status:
            return None
        body = b"".join(m.get("body", b"") for m in self.held if m["type"] == "http.response.body")
        if (over := too_large(self.method, len(body), self.limit)) is not None:
            self.held, self.dropped = [], True
            return over
        if self.status < 400 and not (self.jsonrpc and not body.startswith(b'{"result"')):
            return None  # (the SDK's JSON-RPC results begin so: no parse of a long list)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict):
            if self.status < 400:
                return None
            return error_from_status(_status_of_http(self.status), f"HTTP {self.status}")
        given = sdk_error(error)
        if not self.jsonrpc:
            self._spec_status(answer, error, given.reason)
        return given

    def _spec_status(self, answer: dict[str, Any], error: dict[str, Any], reason: str) -> None:
        """An HTTP+JSON error answer held with A2A 1.0 §5.4's HTTP status where the
        SDK gives another (``SPEC_HTTP``: 409 for TASK_NOT_CANCELABLE…), in its
        status line and its AIP-193 ``code`` alike."""
        wanted = SPEC_HTTP.get(reason)
        if wanted is None or wanted == self.status or not self.held:
            return
        error["code"] = wanted
        body = json.dumps(answer, separators=(",", ":")).encode()
        start = self.held[0]
        headers = [(k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                   for k, v in start.get("headers") or ()]  # fmt: skip
        self.held = [{**start, "status": wanted, "headers": headers},
                     {"type": "http.response.body", "body": body}]  # fmt: skip
        self.status = wanted


def sdk_error(error: dict[str, Any]) -> AralError:
    """A JSON-RPC or HTTP+JSON error object of the SDK's as the node's error."""
    code = error.get("code")
    status = error.get("status")
    reason = ""
    for detail in error.get("details") or error.get("data") or ():
        if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
            reason = detail["reason"][:64]
            break
    mapped = _BY_RPC_CODE.get(code) if isinstance(code, int) else None
    if not isinstance(status, str) and mapped is not None:
        status, reason = mapped.grpc_status, reason or mapped.reason
    number = StatusCode.UNKNOWN
    if isinstance(status, str):
        number = StatusCode.__members__.get(status, StatusCode.UNKNOWN)
    message = str(error.get("message", ""))[:200]
    if reason == VersionRefused.default_reason:  # (recorded as the door's own, on gRPC)
        return VersionRefused(message)
    number = SPEC_GRPC.get(reason, number)  # (§5.4's, as gRPC's caller gets it)
    return error_from_status(int(number), message, reason=reason)


def _status_of_http(status: int) -> int:
    known = {400: StatusCode.INVALID_ARGUMENT, 401: StatusCode.UNAUTHENTICATED,
             403: StatusCode.PERMISSION_DENIED, 404: StatusCode.NOT_FOUND,
             405: StatusCode.UNIMPLEMENTED, 409: StatusCode.ABORTED,
             429: StatusCode.RESOURCE_EXHAUSTED}  # fmt: skip
    return int(known.get(status, StatusCode.INTERNAL if status >= 500 else StatusCode.UNKNOWN))


__all__ = [
    "METHODS",
    "SERVICE",
    "Door",
    "SdkAnswer",
    "action",
    "governed",
    "json_media",
    "jsonrpc_method",
    "jsonrpc_v03",
    "kind_of",
    "query_ids",
    "rest_method",
    "run",
    "sdk_error",
    "stream",
    "too_large",
    "unrouted",
]
