"""The A2A door against the A2A 1.0 specification, where the official TCK run found
it (or the a2a-sdk under it) off the text. Each test names the section it holds the
door to (the TCK's snapshot of the spec, v1.0.0):

- §3.4.3: a follow-up that names only its ``taskId`` continues the task, in the
  task's context (the SDK made a new context and failed the task, a2a-python #1206);
  a ``contextId`` that is not the task's is still refused;
- §3.3.2 / §7.4: ``GetExtendedAgentCard`` without credentials is an authentication
  error on every binding (it was a validation error), on record;
- §3.6.2 / §5.4 / §9.5 / §10.6: a version the node does not serve is
  ``VersionNotSupportedError`` on gRPC too (it was served), ``UNIMPLEMENTED`` with
  an ``ErrorInfo`` in domain ``a2a-protocol.org``; on JSON-RPC its ``data`` an array
  of that ``ErrorInfo`` and its ``id`` the request's; the SDK's other
  ``UNIMPLEMENTED`` errors (push notifications, an unsupported operation) so on gRPC;
- §11.6: the node's refusals on HTTP+JSON in AIP-193's form, the node's code and
  trace id kept in the ``ErrorInfo``;
- §5.4: cancelling an ended task over HTTP+JSON is 409;
- §8.6.1: the Agent Card's caching headers (``Cache-Control``, a strong ``ETag``,
  304 on a matching ``If-None-Match``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.types import a2a_pb2 as a2a
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge._a2a_tasks import BoundedTaskStore
from aralnode.bridge.a2a import A2ADoor
from tests.conftest import recorded

V1 = {"A2A-Version": "1.0"}
BINDINGS = ["JSONRPC", "HTTP+JSON", "GRPC"]
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
A2A_DOMAIN = "a2a-protocol.org"
METHOD = "lf.a2a.v1.A2AService/"


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("a2a", http_port=0)  # no default skill: free-form messages wait for input
    async with n:
        yield n


def http_of(node: Node, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}", timeout=20, **kw)


def door_of(node: Node) -> A2ADoor:
    assert node.parts.http is not None
    door = node.parts.http.a2a
    assert isinstance(door, A2ADoor)
    return door


class Grpc:
    """One gRPC call's outcome: its status name, ErrorInfo and answer."""

    def __init__(self, code: str, info: error_details_pb2.ErrorInfo | None, answer: Any) -> None:
        self.code, self.info, self.answer = code, info, answer


async def grpc_call(
    node: Node, method: str, request: Any, response: Any, metadata: Any = (("a2a-version", "1.0"),)
) -> Grpc:
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = channel.unary_unary(
            f"/{METHOD}{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        try:
            answer = await call(request, metadata=metadata, timeout=20)
        except grpc.aio.AioRpcError as err:
            info = None
            for key, value in err.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    for detail in status_pb2.Status.FromString(value).details:
                        found = error_details_pb2.ErrorInfo()
                        if detail.Unpack(found):
                            info = found
            return Grpc(err.code().name, info, None)
    return Grpc("OK", None, answer)


def error_info(error: dict[str, Any]) -> dict[str, Any]:
    """The ErrorInfo among an AIP-193 error's details (or a JSON-RPC error's data)."""
    found = [d for d in error.get("details", error.get("data", [])) if d["@type"] == ERROR_INFO]
    assert len(found) == 1, error
    info: dict[str, Any] = found[0]
    return info


# -- §3.4.3: a follow-up naming only its taskId ------------------------------------------


class Releases:
    """Set each time the SDK lets go of its last parked task (it makes it again from
    the store for a follow-up): the path a2a-python #1206 broke."""

    def __init__(self, node: Node) -> None:
        handler: Any = door_of(node).request_handler()
        registry = handler._active_task_registry
        self.empty = asyncio.Event()
        remove = registry._remove_task

        async def removed(active: Any) -> None:
            await remove(active)
            if not registry._active_tasks:
                self.empty.set()

        registry._remove_task = removed

    async def wait(self) -> None:
        await asyncio.wait_for(self.empty.wait(), 20)
        self.empty.clear()


async def send(node: Node, binding: str, message: dict[str, Any]) -> dict[str, Any]:
    """SendMessage over ``binding``: {"task": ...} or {"error": (status, reason-ish)}."""
    body = {"message": {"role": "ROLE_USER", **message}}
    if binding == "GRPC":
        request = json_format.ParseDict(body, a2a.SendMessageRequest())
        got = await grpc_call(node, "SendMessage", request, a2a.SendMessageResponse)
        if got.answer is None:
            return {"error": got.code}
        return {"task": json_format.MessageToDict(got.answer.task)}
    async with http_of(node, headers=V1) as http:
        if binding == "JSONRPC":
            rpc = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": body}
            answer = (await http.post("/a2a", json=rpc)).json()
            if "error" in answer:
                return {"error": answer["error"]["code"]}
            return {"task": answer["result"]["task"]}
        r = await http.post("/a2a/rest/message:send", json=body)
        return {"error": r.status_code} if r.status_code != 200 else {"task": r.json()["task"]}


def text(words: str, message_id: str, **ids: str) -> dict[str, Any]:
    return {"messageId": message_id, "parts": [{"text": words}], **ids}


def skill(name: str, params: dict[str, Any], message_id: str, **ids: str) -> dict[str, Any]:
    data = {"skill": name, "parameters": params}
    return {"messageId": message_id, "parts": [{"data": data}], **ids}


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_follow_up_naming_only_its_task_continues_it(node: Node, binding: str) -> None:
    """§3.4.3: "Agents MUST infer contextId from the task if only taskId is
    provided". Once the SDK had let go of the parked task, such a follow-up got a
    new context, -32602 "Context in event doesn't match TaskManager", and the task
    was FAILED for good; now it goes on in the task's own context."""
    releases = Releases(node)
    first = (await send(node, binding, text("which skill?", "f1")))["task"]
    assert first["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    task_id, context_id = first["id"], first["contextId"]
    await releases.wait()
    again = await send(node, binding, text("still none", "f2", taskId=task_id))
    assert "task" in again, again
    assert (again["task"]["id"], again["task"]["contextId"]) == (task_id, context_id)
    assert again["task"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
    await releases.wait()
    done = await send(node, binding, skill("demo.echo", {"text": "now"}, "f3", taskId=task_id))
    assert "task" in done, done
    task = done["task"]
    assert (task["id"], task["contextId"]) == (task_id, context_id)
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert {m.get("contextId") for m in task.get("history", [])} <= {context_id}


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_follow_up_in_another_context_is_still_refused(node: Node, binding: str) -> None:
    """§3.4.3: "Agents MUST reject messages containing mismatching contextId and
    taskId"; the task is left as it was."""
    first = (await send(node, binding, text("which skill?", "g1")))["task"]
    wrong = text("hi", "g2", taskId=first["id"], contextId="not-its-context")
    refused = await send(node, binding, wrong)
    assert refused == {"error": {"JSONRPC": -32602, "HTTP+JSON": 400,
                                 "GRPC": "INVALID_ARGUMENT"}[binding]}  # fmt: skip
    async with http_of(node, headers=V1) as http:
        kept = (await http.get(f"/a2a/rest/tasks/{first['id']}")).json()
    assert kept["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"


async def test_a_follow_up_naming_a_task_it_cannot_see_is_task_not_found(node: Node) -> None:
    """The context is looked up as the task is: a task id no task has stays the
    SDK's TaskNotFoundError (-32001)."""
    assert await send(node, "JSONRPC", text("hi", "h1", taskId="no-such-task")) == {"error": -32001}


# -- §3.3.2 / §7.4: the extended card without credentials ---------------------------------


async def test_an_anonymous_extended_card_request_is_an_authentication_error(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Missing credentials are an authentication error: 401 with a challenge on
    HTTP, UNAUTHENTICATED on gRPC, as a wrong key already was (it was -32600,
    400 INVALID_REQUEST, INVALID_ARGUMENT); each on record with the call's trace
    id. A key is served on every binding."""
    keys = ApiKeyStore(tmp_path / "keys.json")
    reader, _ = keys.create("reader", scopes=["agent:read"], kind="user")
    node = make_node("ext", http_port=0, apikeys_file=tmp_path / "keys.json")
    get = {"jsonrpc": "2.0", "id": 5, "method": "GetExtendedAgentCard", "params": {}}
    async with node:
        seen = recorded(node)
        async with http_of(node, headers=V1) as http:
            jsonrpc = await http.post("/a2a", json=get)
            rest = await http.get("/a2a/rest/extendedAgentCard")
            keyed = await http.get("/a2a/rest/extendedAgentCard", headers={"x-api-key": reader})
        request = a2a.GetExtendedAgentCardRequest()
        over_grpc = await grpc_call(node, "GetExtendedAgentCard", request, a2a.AgentCard)
        with_key = await grpc_call(node, "GetExtendedAgentCard", request, a2a.AgentCard,
                                   (("a2a-version", "1.0"), ("x-api-key", reader)))  # fmt: skip
    for r in (jsonrpc, rest):
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
    answer = jsonrpc.json()
    assert answer["id"] == 5
    assert answer["error"]["data"]["code"] == "unauthorized"
    assert answer["error"]["data"]["reason"] == "ANONYMOUS_REFUSED"
    error = rest.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert error_info(error)["reason"] == "ANONYMOUS_REFUSED"
    assert over_grpc.code == "UNAUTHENTICATED"
    assert over_grpc.info is not None
    assert over_grpc.info.reason == "ANONYMOUS_REFUSED"
    assert keyed.status_code == 200
    assert with_key.code == "OK"
    refusals = [r for r in seen if r.outcome != "ok"]
    assert [(r.action, r.outcome, r.reason) for r in refusals] == [
        (METHOD + "GetExtendedAgentCard", "unauthorized", "ANONYMOUS_REFUSED")
    ] * 3
    assert refusals[0].trace_id == jsonrpc.headers["x-trace-id"]
    assert refusals[1].trace_id == rest.headers["x-trace-id"]


# -- §3.6.2 / §5.4 / §9.5 / §10.6: versions and gRPC's codes ---------------------------------


@pytest.mark.parametrize("version", ["99.0", "0.3", "2", "abc"])
async def test_grpc_refuses_a_version_it_does_not_serve(node: Node, version: str) -> None:
    """§3.6.2: "If the version is not supported by the interface, agents MUST return
    a VersionNotSupportedError"; §5.4: gRPC UNIMPLEMENTED; §10.6: an ErrorInfo in
    domain a2a-protocol.org. gRPC served 99.0 (JSON-RPC and HTTP+JSON refused it);
    no task is made, the refusal is on record with its trace id."""
    seen = recorded(node)
    got = await grpc_call(node, "SendMessage", a2a.SendMessageRequest(
        message=a2a.Message(message_id="v1", role=a2a.Role.ROLE_USER, parts=[a2a.Part(text="x")])
    ), a2a.SendMessageResponse, (("a2a-version", version),))  # fmt: skip
    assert got.code == "UNIMPLEMENTED"
    assert got.info is not None
    assert (got.info.reason, got.info.domain) == ("VERSION_NOT_SUPPORTED", A2A_DOMAIN)
    assert [(r.action, r.reason) for r in seen] == [
        (METHOD + "SendMessage", "VERSION_NOT_SUPPORTED")
    ]
    assert got.info.metadata["trace_id"] == seen[0].trace_id
    store = door_of(node).request_handler().task_store
    assert isinstance(store, BoundedTaskStore)
    assert store.bytes == 0


async def test_grpc_refuses_a_version_on_a_stream_too(node: Node) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        call = channel.unary_stream(
            f"/{METHOD}SubscribeToTask",
            request_serializer=a2a.SubscribeToTaskRequest.SerializeToString,
            response_deserializer=a2a.StreamResponse.FromString,
        )
        stream = call(a2a.SubscribeToTaskRequest(id="t"), metadata=[("a2a-version", "9.1")],
                      timeout=20)  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stream.read()
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("metadata", [(("a2a-version", "1.0"),), (("a2a-version", "1"),), ()])
async def test_grpc_serves_the_version_it_serves(node: Node, metadata: Any) -> None:
    """1.0 (or 1: the major is what counts, as the SDK reads it on HTTP), and none
    said: the 1.0 service is the one gRPC serves (0.3's is another service)."""
    request = a2a.SendMessageRequest(message=a2a.Message(
        message_id="v2", role=a2a.Role.ROLE_USER, parts=[a2a.Part(text="x")]
    ))  # fmt: skip
    got = await grpc_call(node, "SendMessage", request, a2a.SendMessageResponse, metadata)
    assert got.code == "OK"


async def test_a_version_not_served_has_the_same_record_on_every_binding(node: Node) -> None:
    """99.0: the SDK refuses it on JSON-RPC and HTTP+JSON, the door on gRPC; each is
    one record, VERSION_NOT_SUPPORTED, whoever refused it (the SDK's were
    failed_precondition, the door's unsupported_version)."""
    seen = recorded(node)
    get = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t"}}
    async with http_of(node, headers={"A2A-Version": "99.0"}) as http:
        jsonrpc = (await http.post("/a2a", json=get)).json()
        rest = await http.get("/a2a/rest/tasks/t")
    request = a2a.GetTaskRequest(id="t")
    over_grpc = await grpc_call(node, "GetTask", request, a2a.Task, (("a2a-version", "99.0"),))
    assert jsonrpc["error"]["code"] == -32009
    assert rest.status_code == 400
    assert over_grpc.code == "UNIMPLEMENTED"
    assert [(r.action, r.outcome, r.reason) for r in seen] == [
        (METHOD + "GetTask", "unsupported_version", "VERSION_NOT_SUPPORTED")
    ] * 3


async def test_the_nodes_version_refusal_is_a2as_on_json_rpc_and_http_json(node: Node) -> None:
    """§9.5: an A2A error's ``data`` is an array holding a google.rpc.ErrorInfo in
    domain a2a-protocol.org; JSON-RPC 2.0 §5: the ``id`` is the request's when it
    could be read (it was null: the version was checked before the body was read).
    §11.6: AIP-193 on HTTP+JSON. The node's code and trace id ride in its metadata."""
    get = {"jsonrpc": "2.0", "id": 7, "method": "GetTask", "params": {"id": "t"}}
    async with http_of(node, headers={"A2A-Version": "abc"}) as http:
        jsonrpc = await http.post("/a2a", json=get)
        rest = await http.get("/a2a/rest/tasks/t")
    answer = jsonrpc.json()
    assert jsonrpc.status_code == 400
    assert answer["id"] == 7
    assert answer["error"]["code"] == -32009
    info = error_info(answer["error"])
    assert isinstance(answer["error"]["data"], list)
    error = rest.json()["error"]
    assert (rest.status_code, error["code"], error["status"]) == (400, 400, "UNIMPLEMENTED")
    for r, found in ((jsonrpc, info), (rest, error_info(error))):
        assert (found["reason"], found["domain"]) == ("VERSION_NOT_SUPPORTED", A2A_DOMAIN)
        assert found["metadata"]["trace_id"] == r.headers["x-trace-id"]
        assert found["metadata"]["code"] == "unsupported_version"


async def test_the_sdks_unimplemented_errors_are_unimplemented_on_grpc(node: Node) -> None:
    """§5.4: PushNotificationNotSupportedError and UnsupportedOperationError are gRPC
    UNIMPLEMENTED (the SDK said FAILED_PRECONDITION); the ErrorInfo is A2A's. A send
    to an ended task (§3.1.1: UnsupportedOperationError) is recorded alike on every
    binding."""
    config = a2a.TaskPushNotificationConfig(task_id="t-1", url="https://example.com/hook")
    push = await grpc_call(node, "CreateTaskPushNotificationConfig", config,
                           a2a.TaskPushNotificationConfig)  # fmt: skip
    assert push.code == "UNIMPLEMENTED"
    assert push.info is not None
    assert (push.info.reason, push.info.domain) == ("PUSH_NOTIFICATION_NOT_SUPPORTED", A2A_DOMAIN)
    done = (await send(node, "GRPC", skill("demo.echo", {"text": "x"}, "u1")))["task"]
    assert done["status"]["state"] == "TASK_STATE_COMPLETED"
    seen = recorded(node)
    late = skill("demo.echo", {"text": "y"}, "u2", taskId=done["id"])
    answers = {b: await send(node, b, {**late, "messageId": f"u-{b}"}) for b in BINDINGS}
    assert answers == {"JSONRPC": {"error": -32004}, "HTTP+JSON": {"error": 400},
                       "GRPC": {"error": "UNIMPLEMENTED"}}  # fmt: skip
    assert [(r.outcome, r.reason) for r in seen] == [
        ("not_implemented", "UNSUPPORTED_OPERATION")
    ] * 3


# -- §11.6: the node's refusals on HTTP+JSON are AIP-193 --------------------------------------


_LONG = "c" * 129
_REFUSALS: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    ("POST", "/a2a/rest/message:send",
     {"content": b'{"message": {}}', "headers": {"content-type": "text/plain"}},
     415, "INVALID_ARGUMENT", "UNSUPPORTED_MEDIA_TYPE"),
    ("DELETE", "/a2a/rest/tasks", {}, 405, "INVALID_ARGUMENT", "METHOD_NOT_ALLOWED"),
    ("GET", "/a2a/rest/nope", {}, 404, "NOT_FOUND", "ROUTE_NOT_FOUND"),
    ("GET", f"/a2a/rest/tasks/{_LONG}", {}, 400, "INVALID_ARGUMENT", "ID_TOO_LONG"),
    ("GET", "/a2a/rest/tasks/t", {"headers": {"x-api-key": "aral_not-a-key"}},
     401, "UNAUTHENTICATED", "API_KEY_INVALID"),
    ("GET", "/a2a/rest/tasks/t", {"headers": {"A2A-Version": "v1"}},
     400, "UNIMPLEMENTED", "VERSION_NOT_SUPPORTED"),
    ("POST", "/a2a/rest/message:send",
     {"content": b'{"message": {"messageId": "a", "messageId": "b"}}',
      "headers": {"content-type": "application/json"}},
     400, "INVALID_ARGUMENT", "DUPLICATE_PARAMETER"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("verb", "path", "kw", "status", "name", "reason"),
    _REFUSALS,
    ids=[r[-1] for r in _REFUSALS],
)
async def test_the_nodes_refusals_on_http_json_are_aip_193(
    node: Node, verb: str, path: str, kw: dict[str, Any], status: int, name: str, reason: str
) -> None:
    """§11.6: "HTTP error responses use the representation specified in AIP-193":
    an integer ``code`` (the HTTP status), ``status``, ``message``, ``details`` with a
    google.rpc.ErrorInfo. The node's refusals there were its own shape (a string
    code, ``details`` an object), which an A2A client cannot read. Its code and
    trace id are in the ErrorInfo's metadata; its headers are as they were."""
    seen = recorded(node)
    async with http_of(node, headers=V1) as http:
        r = await http.request(verb, path, **kw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert (error["code"], error["status"]) == (status, name)
    assert isinstance(error["message"], str)
    assert error["message"]
    info = error_info(error)
    domain = A2A_DOMAIN if reason == "VERSION_NOT_SUPPORTED" else "aral.dev"
    assert (info["reason"], info["domain"]) == (reason, domain)
    assert info["metadata"]["trace_id"] == r.headers["x-trace-id"] == seen[-1].trace_id
    assert info["metadata"]["code"] == seen[-1].outcome
    assert all(isinstance(v, str) for v in info["metadata"].values())
    if status == 405:
        assert r.headers["allow"] == "GET"
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


# -- §5.4: an ended task is not cancelable: 409 on HTTP+JSON ----------------------------------


async def test_cancelling_an_ended_task_is_a_conflict_over_http_json(node: Node) -> None:
    """§5.4: TaskNotCancelableError is HTTP 409 (the SDK said 400), -32002 on
    JSON-RPC and FAILED_PRECONDITION on gRPC; the record is the same on each."""
    done = (await send(node, "HTTP+JSON", skill("demo.echo", {"text": "x"}, "c1")))["task"]
    seen = recorded(node)
    async with http_of(node, headers=V1) as http:
        rest = await http.post(f"/a2a/rest/tasks/{done['id']}:cancel", json={})
        rpc = {"jsonrpc": "2.0", "id": 1, "method": "CancelTask", "params": {"id": done["id"]}}
        jsonrpc = (await http.post("/a2a", json=rpc)).json()
    over_grpc = await grpc_call(node, "CancelTask", a2a.CancelTaskRequest(id=done["id"]), a2a.Task)
    assert rest.status_code == 409, rest.text
    assert int(rest.headers["content-length"]) == len(rest.content)
    error = rest.json()["error"]
    assert (error["code"], error["status"]) == (409, "FAILED_PRECONDITION")
    assert error_info(error)["reason"] == "TASK_NOT_CANCELABLE"
    assert rest.headers["x-trace-id"]
    assert jsonrpc["error"]["code"] == -32002
    assert over_grpc.code == "FAILED_PRECONDITION"
    assert [(r.outcome, r.reason) for r in seen] == [
        ("failed_precondition", "TASK_NOT_CANCELABLE")
    ] * 3


async def test_an_sdk_error_answer_is_given_the_http_status_of_the_spec() -> None:
    """§5.4's HTTP status for A2A's errors where the SDK gives another: its status
    line, its AIP-193 ``code`` and its length change together; the rest is kept. (An
    invalid agent answer, 500 from the SDK, cannot be made to happen from outside.)"""
    import json

    from aralnode.bridge._a2a_calls import SdkAnswer

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    error = {"code": 500, "status": "INTERNAL", "message": "Invalid agent response",
             "details": [{"@type": ERROR_INFO, "reason": "INVALID_AGENT_RESPONSE",
                          "domain": A2A_DOMAIN, "metadata": {}}]}  # fmt: skip
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    answer = SdkAnswer(send, "GetTask", jsonrpc=False, limit=0, trace_id="t" * 32)
    await answer.send({"type": "http.response.start", "status": 500, "headers": headers})
    await answer.send({"type": "http.response.body", "body": body})
    given = answer.error()
    await answer.flush()
    assert given is not None
    assert given.reason == "INVALID_AGENT_RESPONSE"
    start, out = sent
    assert start["status"] == 502
    kept = dict(start["headers"])
    assert kept[b"content-length"] == str(len(out["body"])).encode()
    assert kept[b"x-trace-id"] == b"t" * 32
    assert json.loads(out["body"]) == {"error": {**error, "code": 502}}


# -- §8.6.1: the card's caching headers -------------------------------------------------------


async def test_the_card_says_how_to_cache_it(node: Node) -> None:
    """§8.6.1: Cache-Control with max-age (public: the card is served to anyone), a
    strong ETag from the card's bytes, Last-Modified; a conditional GET of the same
    card is 304 with no body (a weak comparison, RFC 9110 §13.1.2), another 200. A
    card made again (a capability added) has another ETag."""
    card = "/.well-known/agent-card.json"
    async with http_of(node) as http:
        first = await http.get(card)
        etag = first.headers["etag"]
        same = await http.get(card, headers={"if-none-match": etag})
        weak = await http.get(card, headers={"if-none-match": f'"x", W/{etag}'})
        other = await http.get(card, headers={"if-none-match": '"not-it"'})

        @node.capability(id="test.added")
        async def added() -> str:
            return "added"

        changed = await http.get(card, headers={"if-none-match": etag})
        jwks = await http.get("/.well-known/jwks.json")
    assert first.status_code == 200
    control = first.headers["cache-control"]
    assert "max-age=" in control
    assert "public" in control
    assert etag.startswith('"')
    assert etag.endswith('"')
    assert len(etag) > 8
    assert first.headers["last-modified"].endswith("GMT")
    for r in (same, weak):
        assert (r.status_code, r.content) == (304, b"")
        assert r.headers["etag"] == etag
        assert "max-age=" in r.headers["cache-control"]
    assert other.status_code == 200
    assert other.content == first.content
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert "test.added" in changed.text
    assert "max-age=" in jwks.headers["cache-control"]
    assert jwks.headers["etag"]
