"""Which A2A method a request calls, whatever binding or version asked: its A2A
1.0 name (``GetTask``, for ``tasks/get`` and ``GET /a2a/rest/tasks/{id}`` too), the
action the door's refusals name (``lf.a2a.v1.A2AService/<Method>``).
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import parse_qsl

from a2a.types import a2a_pb2

from aralnode.bridge import _http as h
from aralnode.core.context import CallContext
from aralnode.service.node_service import NodeService

SERVICE = "lf.a2a.v1.A2AService"
METHODS = frozenset(m.name for m in a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods)
# A2A 0.3's JSON-RPC names (the SDK's adapter serves them on /a2a).
_V03 = {"message/send": "SendMessage", "message/stream": "SendStreamingMessage",
        "tasks/get": "GetTask", "tasks/cancel": "CancelTask",
        "tasks/resubscribe": "SubscribeToTask",
        "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
        "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
        "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard"}  # fmt: skip
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


def jsonrpc_method(name: str) -> str:
    """The A2A 1.0 name of a JSON-RPC method (1.0's or 0.3's); "" if A2A has none."""
    return name if name in METHODS else _V03.get(name, "")


def rest_method(path: str, verb: str) -> tuple[str, dict[str, str]]:
    """The A2A 1.0 method an HTTP+JSON request calls (by its path after the prefix,
    with or without 0.3's ``v1/`` or a tenant before it) and the ids in its path."""
    parts = path.strip("/").split("/")
    last = parts[-1]
    if last.startswith("message:"):
        return {"message:send": "SendMessage", "message:stream": "SendStreamingMessage"}.get(
            last, ""
        ), {}
    if last in ("card", "extendedAgentCard"):
        return "GetExtendedAgentCard", {}
    if last == "tasks":
        return "ListTasks", {}
    if len(parts) >= 2 and parts[-2] == "tasks":
        task, _, action = last.partition(":")
        named = {"": "GetTask", "cancel": "CancelTask", "subscribe": "SubscribeToTask"}
        return named.get(action, ""), {"id": task}
    if len(parts) >= 3 and _PUSH in parts[-2:]:
        at = parts.index(_PUSH, len(parts) - 2)
        ids = {"id": parts[at - 1]} | ({"pushNotificationConfigId": last} if last != _PUSH else {})
        if last != _PUSH:
            verbs = {"GET": "Get", "HEAD": "Get", "DELETE": "Delete"}
        else:
            verbs = {"POST": "Create", "GET": "List", "HEAD": "List"}
        kind = verbs.get(verb, "")
        noun = "TaskPushNotificationConfigs" if kind == "List" else "TaskPushNotificationConfig"
        return kind and kind + noun, ids
    return "", {}


def query_ids(scope: h.Scope) -> dict[str, str]:
    """An HTTP+JSON request's query (``ListTasks``' ``contextId``...), for the id checks."""
    query = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(query, keep_blank_values=True)) if query else {}


def action(method: str) -> str:
    """The action the audit log and governance name a method by."""
    return f"{SERVICE}/{method}" if method else SERVICE


__all__ = ["METHODS", "SERVICE", "Door", "action", "jsonrpc_method", "query_ids", "rest_method"]
