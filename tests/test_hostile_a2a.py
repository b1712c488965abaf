"""A hostile HTTP client at the A2A door: what it can make the node keep (the task
store holds bytes, not only tasks, within a bound), log (no traceback, no
megabyte line for a request that is not one) and answer (the JSON-RPC codes of
the standard, never ``-32603`` for malformed input); refusals carry the trace id
and are JSON-RPC errors on ``/a2a``; a member given twice is refused as on REST;
a node that lists to authenticated callers only shows no skill on its public card.
On HTTP+JSON the node's refusals are AIP-193 (A2A 1.0 §11.6): the node's error object
(its code, reason, trace id) in the ErrorInfo among its ``details`` (``node_error``)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2 as a2a
from google.protobuf import json_format

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge._a2a_tasks import BoundedTaskStore
from aralnode.bridge.a2a import A2ADoor, _Owner

DONE = a2a.TaskState.TASK_STATE_COMPLETED
V1 = {"A2A-Version": "1.0"}


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("a2a", http_port=0)
    async with n:
        yield n


def http_of(node: Node, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}", timeout=20, **kw)


def door_of(node: Node) -> A2ADoor:
    assert node.parts.http is not None
    door = node.parts.http.a2a
    assert isinstance(door, A2ADoor)
    return door


def node_error(error: dict[str, Any]) -> dict[str, Any]:
    """The node's error object in a refusal: a JSON-RPC error's ``data`` (an A2A
    error's: the ErrorInfo in its array), or an AIP-193 error's ErrorInfo (its
    ``metadata`` holds the code and the trace id)."""
    data = error.get("data", error.get("details"))
    if isinstance(data, dict):
        return data
    assert isinstance(data, list), error
    (info,) = [d for d in data if d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"]
    return {**info["metadata"], "reason": info["reason"]}


def send_message(text: str, message_id: str) -> dict[str, Any]:
    message = {"role": "ROLE_USER", "messageId": message_id, "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": message_id, "method": "SendMessage",
            "params": {"message": message}}  # fmt: skip


# -- 1. the task store holds bytes within a bound ------------------------------------------


def _task(task_id: str, size: int, state: int = DONE) -> a2a.Task:
    task = a2a.Task(id=task_id, context_id="c")
    task.status.state = state  # type: ignore[assignment]
    task.history.add(message_id=f"m-{task_id}").parts.add(text="x" * size)
    return task


async def test_the_task_store_keeps_bytes_within_its_bound() -> None:
    """Past ``max_bytes`` the oldest finished tasks go, though the count is far
    from its bound; a running task stays, and so does the one just saved. One task
    holds no more than its share (its oldest messages go), and one larger than the
    whole store alone (its artifacts) is not kept: nobody is evicted for it."""
    store = BoundedTaskStore(1000, None, _Owner, max_bytes=40_000)  # 5,000 a task
    ctx = ServerCallContext(user=_Owner("someone"))
    await store.save(_task("running", 3000, a2a.TaskState.TASK_STATE_WORKING), ctx)
    for i in range(20):
        await store.save(_task(f"t{i}", 3000), ctx)
    ids = await _kept_ids(store, ctx)
    assert "running" in ids
    assert ids - {"running"} == {f"t{i}" for i in range(20 - len(ids) + 1, 20)}
    assert 10 <= len(ids) < 21
    assert store.bytes <= store.max_bytes
    await store.save(_task("long", 20_000), ctx)  # past its share: its messages go
    long = await store.get("long", ctx)
    assert long is not None
    assert not long.history
    before = await _kept_ids(store, ctx)
    giant = _task("giant", 10)
    giant.artifacts.add(artifact_id="result").parts.add(text="r" * 50_000)
    await store.save(giant, ctx)  # over the whole bound alone: not kept, others stay
    assert await store.get("giant", ctx) is None
    assert await _kept_ids(store, ctx) == before
    await store.delete("long", ctx)
    kept = [await store.get(t, ctx) for t in before - {"long"}]
    assert store.bytes == sum(t.ByteSize() for t in kept if t is not None)


async def _kept_ids(store: BoundedTaskStore, ctx: ServerCallContext) -> set[str]:
    listed = await store.list(a2a.ListTasksRequest(page_size=100), ctx)
    return {t.id for t in listed.tasks}


async def test_a_durable_task_store_counts_the_bytes_it_holds(tmp_path: Path) -> None:
    """Reopened, the SQLite store knows what its tasks weigh: the bound holds."""
    path = tmp_path / "tasks.sqlite3"
    ctx = ServerCallContext(user=_Owner("someone"))
    first = BoundedTaskStore(1000, path, _Owner)
    for i in range(4):
        await first.save(_task(f"t{i}", 5000), ctx)
    again = BoundedTaskStore(1000, path, _Owner, max_bytes=12_000)
    listed = await again.list(a2a.ListTasksRequest(), ctx)
    assert sorted(t.id for t in listed.tasks) == ["t2", "t3"]
    assert 10_000 <= again.bytes <= 12_000


async def test_large_messages_do_not_fill_the_nodes_task_store(node: Node) -> None:
    """Over the wire: many large tasks, the store keeps its byte bound (the
    default is far larger; made small here)."""
    store = door_of(node).request_handler().task_store
    assert isinstance(store, BoundedTaskStore)
    store.max_bytes = 256 * 1024  # 32 KiB a task
    async with http_of(node, headers=V1) as http:
        for i in range(16):
            r = await http.post("/a2a", json=send_message("x" * 24 * 1024, f"big{i}"))
            assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
        listed = await http.post(
            "/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
        )
    kept = listed.json()["result"]["tasks"]
    assert 1 <= len(kept) < 16
    assert all(t["history"] for t in kept)  # (each within its share: its message kept)
    assert store.bytes <= store.max_bytes


async def test_a_task_parked_for_input_leaves_the_sdks_memory(node: Node) -> None:
    """The SDK keeps a task waiting for input in memory (its messages with it) until
    released: released soon, and a follow-up still finds it (from the store)."""
    handler: Any = door_of(node).request_handler()
    registry = handler._active_task_registry
    released = asyncio.Event()
    remove = registry._remove_task

    async def removed(active: Any) -> None:
        await remove(active)
        if not registry._active_tasks:
            released.set()

    registry._remove_task = removed
    async with http_of(node, headers=V1) as http:
        r = await http.post("/a2a", json=send_message("x" * 100_000, "p1"))
        task = r.json()["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
        await asyncio.wait_for(released.wait(), 20)
        follow = send_message("", "p2")
        skill = {"skill": "demo.echo", "parameters": {"text": "on"}}
        follow["params"]["message"].update(
            taskId=task["id"], contextId=task["contextId"], parts=[{"data": skill}]
        )
        done = (await http.post("/a2a", json=follow)).json()["result"]["task"]
    assert done["id"] == task["id"]
    assert done["status"]["state"] == "TASK_STATE_COMPLETED"


# -- 2. malformed JSON-RPC: the standard's codes, no traceback, bounded logs ----------------


def _sdk_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("a2a")]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 3000, -32700),  # nested past the parser's depth
        (b'{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "\xff"}}', -32700),
        (b"{not json", -32700),
        (b"17", -32600),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "GetTask"}]', -32600),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "GetTask"}', -32600),
        (b'{"jsonrpc": "2.0", "id": true, "method": "GetTask"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1}', -32600),
    ],
)
async def test_malformed_json_rpc_gets_the_standards_code(
    node: Node, caplog: pytest.LogCaptureFixture, body: bytes, code: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="a2a")
    async with http_of(node) as http:
        r = await http.post("/a2a", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    answer = r.json()
    assert answer["jsonrpc"] == "2.0"
    assert answer["id"] is None
    assert answer["error"]["code"] == code, answer
    assert answer["error"]["data"]["trace_id"] == r.headers["x-trace-id"]
    assert not [rec for rec in _sdk_records(caplog) if rec.exc_info], "a traceback was logged"


async def test_a_request_with_huge_member_names_is_not_logged_whole(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """The attacker's 1 MB member names: refused as no request object, quoted
    in part; nothing the SDK logs is a traceback or longer than a line."""
    caplog.set_level(logging.DEBUG, logger="a2a")
    big = {"k" * 1_000_000: 1, "j" * 1_000_000: 2}
    bad_params = {"jsonrpc": "2.0", "id": "p", "method": "SendMessage",
                  "params": {"message": {"messageId": "m", "parts": "z" * 1_000_000}}}  # fmt: skip
    async with http_of(node, headers=V1) as http:
        r = await http.post("/a2a", json=big)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == -32600
        assert len(r.content) < 4096
        r = await http.post("/a2a", json=bad_params)  # the SDK reads these params
        assert r.json()["error"]["code"] == -32602
    records = _sdk_records(caplog)
    assert not [rec for rec in records if rec.exc_info], "a traceback was logged"
    assert max((len(rec.getMessage()) for rec in records), default=0) < 4000


async def test_a_refused_body_is_on_record(make_node: Callable[..., Node], tmp_path: Path) -> None:
    """Refused before the SDK reads it, still audited, as the HTTP port's refusals."""
    from tests.test_a2a import _export

    node = make_node("audited", http_port=0, audit=True)
    async with node, http_of(node) as http:
        r = await http.post("/a2a", content=b'{"jsonrpc": "2.0", "id": 1, "id": 2}')
    assert r.status_code == 400
    rows = [json.loads(line) for line in _export(tmp_path / "audited")]
    assert any(row["door"] == "a2a" and row["trace_id"] == r.headers["x-trace-id"]
               and row["outcome"] == "invalid_request" for row in rows), rows  # fmt: skip


# -- 3. refusals carry the trace id; on /a2a they are JSON-RPC errors ----------------------


@pytest.mark.parametrize("path", ["/a2a", "/a2a/rest/message:send"])
async def test_a_refusal_carries_the_trace_id(node: Node, path: str) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    headers = {"x-api-key": "aral_not-a-key", "x-trace-id": trace, **V1}
    async with http_of(node, headers=headers) as http:
        r = await http.post(path, json=send_message("hi", "r1"))
    assert r.status_code == 401
    assert r.headers["x-trace-id"] == trace
    assert r.headers["www-authenticate"].startswith("Bearer")
    error = r.json()["error"]
    assert isinstance(error["code"], int)
    if path == "/a2a":
        assert r.json()["jsonrpc"] == "2.0"
    else:
        assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")  # AIP-193
    error = node_error(error)
    assert error["code"] == "unauthorized"
    assert error["trace_id"] == trace


# -- 4. a member given twice is refused, as on REST -----------------------------------------


_TWICE = b'{"skill": "demo.echo", "parameters": {"text": "A", "text": "B"}}'


@pytest.mark.parametrize("path", ["/a2a", "/a2a/rest/message:send"])
async def test_a_member_given_twice_is_refused(node: Node, path: str) -> None:
    message = b'{"role": "ROLE_USER", "messageId": "d1", "parts": [{"data": %s}]}' % _TWICE
    body = b'{"message": %s}' % message
    if path == "/a2a":
        body = b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": %s}' % body
    async with http_of(node, headers={**V1, "content-type": "application/json"}) as http:
        r = await http.post(path, content=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == (-32602 if path == "/a2a" else 400)
    error = node_error(error)
    # as the REST door refuses it (codec.loads)
    assert (error["code"], error["reason"]) == ("invalid_request", "DUPLICATE_PARAMETER")
    assert error["trace_id"] == r.headers["x-trace-id"]


# -- 5. listing to authenticated callers only: the public card lists no skill --------------


async def test_the_public_card_lists_no_skill_when_listing_requires_auth(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    keys = ApiKeyStore(tmp_path / "keys.json")
    reader, _ = keys.create("reader", scopes=["agent:read", "agent:invoke"], kind="user")
    node = make_node("locked", http_port=0, apikeys_file=tmp_path / "keys.json",
                     listing_requires_auth=True)  # fmt: skip
    async with node:
        assert door_of(node).listing_requires_auth  # the node's wiring passed it
        async with http_of(node, headers=V1) as http:
            card = (await http.get("/.well-known/agent-card.json")).json()
            free = await http.post("/a2a", json=send_message("which skills?", "f1"))
            extended = await http.post(
                "/a2a",
                json={"jsonrpc": "2.0", "id": 2, "method": "GetExtendedAgentCard", "params": {}},
                headers={"x-api-key": reader},
            )
    assert "skills" not in card or card["skills"] == []
    assert card["capabilities"]["extendedAgentCard"] is True
    assert card["signatures"]
    note = free.json()["result"]["task"]["status"]["message"]["parts"][0]["text"]
    assert "demo.echo" not in note
    assert "demo.echo" in [s["id"] for s in extended.json()["result"]["skills"]]


# -- 6. what the door checks before the SDK reads a request, on every binding ----------------


async def _grpc(
    node: Node, method: str, request: Any, response: Any, metadata: Any = ()
) -> tuple[str, str]:
    """Call ``lf.a2a.v1.A2AService/method``; ("OK", "") or the status and ErrorInfo reason."""
    from aralnode.transport.status import from_rpc_error

    async with grpc.aio.insecure_channel(node.address) as channel:
        call = channel.unary_unary(
            f"/lf.a2a.v1.A2AService/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        try:
            await call(request, metadata=metadata, timeout=20)
        except grpc.aio.AioRpcError as err:
            return err.code().name, from_rpc_error(err).reason
    return "OK", ""


def _refusal(r: httpx.Response) -> tuple[int, Any, str]:
    """(HTTP status, JSON-RPC code or None, the node's reason) of a refusal."""
    error = r.json()["error"]
    code = error["code"] if "jsonrpc" in r.json() else None
    if code is None:  # AIP-193 (A2A 1.0 §11.6)
        assert (error["code"], type(error["status"])) == (r.status_code, str), error
    error = node_error(error)
    assert error["trace_id"] == r.headers["x-trace-id"]
    return r.status_code, code, error["reason"]


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [rec for rec in caplog.records if rec.exc_info]


@pytest.mark.parametrize("version", ["1" * 5000, "1.0; DROP", "v1.0", "1." + "0" * 20])
async def test_a_version_that_is_no_version_is_refused(
    node: Node, caplog: pytest.LogCaptureFixture, version: str
) -> None:
    """``A2A-Version`` is digits and dots, checked before the SDK reads it: 5,000
    digits were JSON-RPC -32603 with Python's "Exceeds the limit (4300 digits)", HTTP
    500 on HTTP+JSON, a traceback each time. Now the A2A error for a version
    (-32009, VERSION_NOT_SUPPORTED), 400, UNIMPLEMENTED on gRPC (A2A 1.0 §5.4)."""
    caplog.set_level(logging.INFO)
    headers = {"A2A-Version": version}
    get = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "t"}}
    async with http_of(node, headers=headers) as http:
        jsonrpc = _refusal(await http.post("/a2a", json=get))
        rest = _refusal(await http.get("/a2a/rest/tasks/t"))
    metadata = [("a2a-version", version)]
    over_grpc = await _grpc(node, "GetTask", a2a.GetTaskRequest(id="t"), a2a.Task, metadata)
    assert jsonrpc == (400, -32009, "VERSION_NOT_SUPPORTED")
    assert rest == (400, None, "VERSION_NOT_SUPPORTED")
    assert over_grpc == ("UNIMPLEMENTED", "VERSION_NOT_SUPPORTED")
    assert not _tracebacks(caplog)


async def test_the_versions_a2a_has_are_taken(node: Node) -> None:
    """1.0 and 0.3 still reach the SDK: a task not found, not a refusal (and one
    that says none is 0.3 to the SDK, which does not serve it on 1.0's paths)."""
    async with http_of(node) as http:
        for headers in ({"A2A-Version": "1.0"}, {"A2A-Version": "1"}):
            r = await http.get("/a2a/rest/tasks/t", headers=headers)
            assert r.status_code == 404, (headers, r.text)
            assert r.json()["error"]["status"] == "NOT_FOUND"
        r = await http.get("/a2a/rest/tasks/t")
        assert r.json()["error"]["status"] == "FAILED_PRECONDITION"  # the SDK's own
        legacy = {"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "t"}}
        r = await http.post("/a2a", json=legacy, headers={"A2A-Version": "0.3"})
        assert r.json()["error"]["code"] == -32001, r.text


def _ask(data: bytes, **message: str) -> bytes:
    """A SendMessage request's JSON whose data part is ``data`` (raw JSON text)."""
    fields = {"role": "ROLE_USER", "messageId": "m-1", **message}
    head = json.dumps(fields)[:-1]
    return b'{"message": %s, "parts": [{"data": %s}]}}' % (head.encode(), data)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
async def test_a_number_json_has_not_is_refused_on_every_binding(
    node: Node, caplog: pytest.LogCaptureFixture, number: str
) -> None:
    """NaN, an infinity, 1e999 in a data part: HTTP+JSON answered 500, gRPC UNKNOWN
    "Unexpected SerializeToJsonError" (the SDK took it, its store could not write the
    task), JSON-RPC -32700 MALFORMED_JSON. Now NOT_A_JSON_NUMBER on each (400,
    -32602, INVALID_ARGUMENT), before the SDK: no task is kept, nothing logged."""
    caplog.set_level(logging.INFO)
    params = _ask(b'{"skill": "demo.add", "parameters": {"a": %s, "b": 1}}' % number.encode())
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": %s}' % params
    plain = {**V1, "content-type": "application/json"}
    async with http_of(node, headers=plain) as http:
        rest = _refusal(await http.post("/a2a/rest/message:send", content=params))
        jsonrpc = _refusal(await http.post("/a2a", content=body))
    message = a2a.Message(message_id="m-2", role=a2a.Role.ROLE_USER)
    message.parts.add().data.struct_value.update(
        {"skill": "demo.add", "parameters": {"a": float(number.replace("1e999", "inf")), "b": 1}}
    )
    request = a2a.SendMessageRequest(message=message)
    over_grpc = await _grpc(node, "SendMessage", request, a2a.SendMessageResponse)
    assert rest == (400, None, "NOT_A_JSON_NUMBER")
    assert jsonrpc == (400, -32602, "NOT_A_JSON_NUMBER")
    assert over_grpc == ("INVALID_ARGUMENT", "NOT_A_JSON_NUMBER")
    store = door_of(node).request_handler().task_store
    assert isinstance(store, BoundedTaskStore)
    assert store.bytes == 0
    assert not _tracebacks(caplog)


_LONG = "c" * 129


@pytest.mark.parametrize(
    "message",
    [{"contextId": _LONG}, {"taskId": _LONG}, {"messageId": _LONG}, {"referenceTaskIds": [_LONG]}],
    ids=["contextId", "taskId", "messageId", "referenceTaskIds"],
)
async def test_an_id_past_its_bound_is_refused_before_the_store(
    node: Node, message: dict[str, Any]
) -> None:
    """An id a client names is at most 128 characters, as ARAL's: a 3.5 MB
    contextId was stored and answered twice (7 MB), and ListTasks of three such tasks
    was 21 MB. Refused ID_TOO_LONG on each binding, no task kept."""
    text = {"text": "hi"}
    send = {"message": {"role": "ROLE_USER", "messageId": "m-3", "parts": [text], **message}}
    rpc_body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": send}
    async with http_of(node, headers=V1) as http:
        rest = _refusal(await http.post("/a2a/rest/message:send", json=send))
        jsonrpc = _refusal(await http.post("/a2a", json=rpc_body))
    request = a2a.SendMessageRequest()
    json_format.ParseDict(send, request)
    over_grpc = await _grpc(node, "SendMessage", request, a2a.SendMessageResponse)
    assert rest == (400, None, "ID_TOO_LONG")
    assert jsonrpc == (400, -32602, "ID_TOO_LONG")
    assert over_grpc == ("INVALID_ARGUMENT", "ID_TOO_LONG")
    store = door_of(node).request_handler().task_store
    assert isinstance(store, BoundedTaskStore)
    assert store.bytes == 0


async def test_ids_within_the_bound_are_taken_and_reads_are_bounded_alike(node: Node) -> None:
    """128 characters is the bound, not past it; GetTask's id (path, JSON-RPC, gRPC)
    and ListTasks' contextId are held to it too."""
    at_bound = "b" * 128
    send = {"message": {"role": "ROLE_USER", "messageId": at_bound, "contextId": at_bound,
                        "parts": [{"text": "hi"}]}}  # fmt: skip
    async with http_of(node, headers=V1) as http:
        r = await http.post("/a2a/rest/message:send", json=send)
        assert r.status_code == 200, r.text
        assert r.json()["task"]["contextId"] == at_bound
        path = _refusal(await http.get(f"/a2a/rest/tasks/{_LONG}"))
        query = _refusal(await http.get("/a2a/rest/tasks", params={"contextId": _LONG}))
        get = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": _LONG}}
        jsonrpc = _refusal(await http.post("/a2a", json=get))
    over_grpc = await _grpc(node, "GetTask", a2a.GetTaskRequest(id=_LONG), a2a.Task)
    assert path == query == (400, None, "ID_TOO_LONG")
    assert jsonrpc == (400, -32602, "ID_TOO_LONG")
    assert over_grpc == ("INVALID_ARGUMENT", "ID_TOO_LONG")


async def test_the_checks_refusals_are_on_record(make_node: Callable[..., Node]) -> None:
    """Audited as the door's other refusals: door a2a, the method, the reason."""
    from tests.conftest import recorded

    node = make_node("checked", http_port=0)
    async with node:
        seen = recorded(node)
        async with http_of(node, headers=V1) as http:
            await http.get("/a2a/rest/tasks/t", headers={"A2A-Version": "x" * 50})
            send = {"message": {"role": "ROLE_USER", "messageId": _LONG, "parts": [{"text": "a"}]}}
            await http.post("/a2a/rest/message:send", json=send)
    assert [(r.door, r.action, r.outcome, r.reason) for r in seen] == [
        ("a2a", "lf.a2a.v1.A2AService", "unsupported_version", "VERSION_NOT_SUPPORTED"),
        ("a2a", "lf.a2a.v1.A2AService/SendMessage", "invalid_request", "ID_TOO_LONG"),
    ]


# -- 7. a notification gets no answer; a message not the user's is a bad parameter ---------


async def test_a_json_rpc_notification_gets_no_answer(node: Node) -> None:
    """JSON-RPC 2.0: a request without ``id`` is a notification, and the server does
    not reply to it (the SDK answered it). It still runs, and is on record."""
    from tests.conftest import recorded

    seen = recorded(node)
    async with http_of(node, headers=V1) as http:
        r = await http.post("/a2a", json={"jsonrpc": "2.0", "method": "GetTask",
                                          "params": {"id": "t"}})  # fmt: skip
        asked = await http.post("/a2a", json={"jsonrpc": "2.0", "id": None, "method": "GetTask",
                                              "params": {"id": "t"}})  # fmt: skip
    assert (r.status_code, r.content) == (204, b"")
    assert asked.json()["error"]["code"] == -32001  # (an id of null is no notification)
    assert [(rec.action, rec.outcome) for rec in seen] == [
        ("lf.a2a.v1.A2AService/GetTask", "not_found")
    ] * 2


@pytest.mark.parametrize(
    ("message", "binding"),
    [
        ({"role": "ROLE_AGENT"}, "JSONRPC"),
        ({"role": "ROLE_AGENT"}, "HTTP+JSON"),
        ({"role": "ROLE_AGENT"}, "GRPC"),
        ({"parts": [{"text": ""}]}, "JSONRPC"),
        ({"parts": []}, "JSONRPC"),
    ],
)
async def test_a_message_that_is_not_the_users_is_a_bad_parameter(
    node: Node, caplog: pytest.LogCaptureFixture, message: dict[str, Any], binding: str
) -> None:
    """An agent's message (or one with no content) sent to the node: -32603 "Message
    must be from a user" and a traceback each time. Now invalid parameters
    (INVALID_MESSAGE: -32602, 400, INVALID_ARGUMENT), nothing logged."""
    caplog.set_level(logging.INFO)
    send = {"message": {"role": "ROLE_USER", "messageId": "m-4", "parts": [{"text": "hi"}],
                        **message}}  # fmt: skip
    if binding == "GRPC":
        request = a2a.SendMessageRequest()
        json_format.ParseDict(send, request)
        got: Any = await _grpc(node, "SendMessage", request, a2a.SendMessageResponse)
        assert got == ("INVALID_ARGUMENT", "INVALID_MESSAGE")
    else:
        async with http_of(node, headers=V1) as http:
            if binding == "JSONRPC":
                body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": send}
                got = _refusal(await http.post("/a2a", json=body))
            else:
                got = _refusal(await http.post("/a2a/rest/message:send", json=send))
        assert got == (400, -32602 if binding == "JSONRPC" else None, "INVALID_MESSAGE")
    assert not _tracebacks(caplog)


async def test_an_answer_past_the_nodes_bound_is_refused_on_every_binding(
    make_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    """ListTasks of tasks that hold large messages: HTTP sent the answer whole, past
    max_message_bytes (21 MB in the probe), gRPC failed it in its own layer with
    RESOURCE_EXHAUSTED and an ExecuteBatchError traceback. Refused alike now
    (RESPONSE_TOO_LARGE: 413, RESOURCE_EXHAUSTED); a smaller page is answered."""
    caplog.set_level(logging.INFO)
    node = make_node("bounded", http_port=0, max_message_bytes=64 * 1024)
    listing = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
    async with node, http_of(node, headers=V1) as http:
        for i in range(3):
            r = await http.post("/a2a", json=send_message("x" * 30_000, f"l{i}"))
            assert r.status_code == 200, r.text
        jsonrpc = _refusal(await http.post("/a2a", json=listing))
        rest = _refusal(await http.get("/a2a/rest/tasks"))
        one = await http.get("/a2a/rest/tasks", params={"pageSize": 1})
        over_grpc = await _grpc(node, "ListTasks", a2a.ListTasksRequest(), a2a.ListTasksResponse)
    assert jsonrpc[0] == rest[0] == 413
    assert jsonrpc[2] == rest[2] == "RESPONSE_TOO_LARGE"
    assert over_grpc == ("RESOURCE_EXHAUSTED", "RESPONSE_TOO_LARGE")
    assert (one.status_code, len(one.json()["tasks"])) == (200, 1)
    assert not _tracebacks(caplog)


# -- 8. after the SDK answered: a refusal still goes instead of the answer --------------------


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON", "GRPC"])
async def test_a_task_does_not_leave_without_its_record(
    make_node: Callable[..., Node], binding: str
) -> None:
    """GetTask on a node whose audit store turned read-only after the SDK found the
    task: gRPC failed closed (AUDIT_UNAVAILABLE), HTTP sent the held task with no
    record of it. Refused alike now, no task in the answer."""
    import sqlite3

    from aralnode.service.auditing import DurableLog
    from aralnode.store.audit import AuditLog

    node = make_node("audited", http_port=0, audit=True)
    async with node, http_of(node, headers=V1) as http:
        sent = await http.post("/a2a", json=send_message("hi", "a1"))
        task_id = sent.json()["result"]["task"]["id"]
        # Once a GetTask's record is durable, so are all before it: the store fails
        # at this test's GetTask, after the SDK found the task, not before it runs.
        assert (await http.get(f"/a2a/rest/tasks/{task_id}")).status_code == 200
        installed = node.pipeline.stages.audit.log
        assert isinstance(installed, DurableLog)
        assert isinstance(installed.store, AuditLog)

        def read_only(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA query_only = 1")

        assert installed.store.failed is None
        installed.store.test_hook = read_only
        if binding == "GRPC":
            got: Any = await _grpc(node, "GetTask", a2a.GetTaskRequest(id=task_id), a2a.Task)
            assert got == ("UNAVAILABLE", "AUDIT_UNAVAILABLE")
            return
        if binding == "JSONRPC":
            get = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": task_id}}
            r = await http.post("/a2a", json=get)
        else:
            r = await http.get(f"/a2a/rest/tasks/{task_id}")
    assert task_id not in r.text
    assert _refusal(r)[2] == "AUDIT_UNAVAILABLE"


@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
async def test_a_role_spelt_as_in_0_3_is_refused_in_a_1_0_request(
    node: Node, caplog: pytest.LogCaptureFixture, binding: str
) -> None:
    """``"user"`` is A2A 0.3's role; a 1.0 request's is ROLE_USER. The SDK read
    ``"user"`` in a 1.0 SendMessage as ROLE_UNSPECIFIED and raised a ValueError
    (-32603, a traceback). Now INVALID_MESSAGE, as any message not the user's."""
    caplog.set_level(logging.INFO)
    send = {"message": {"role": "user", "messageId": "m-5", "parts": [{"text": "hi"}]}}
    async with http_of(node, headers=V1) as http:
        if binding == "JSONRPC":
            body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": send}
            got = _refusal(await http.post("/a2a", json=body))
        else:
            got = _refusal(await http.post("/a2a/rest/message:send", json=send))
    assert got == (400, -32602 if binding == "JSONRPC" else None, "INVALID_MESSAGE")
    assert not _tracebacks(caplog)


async def test_a_0_3_message_from_the_user_is_served(node: Node) -> None:
    """A2A 0.3's JSON-RPC ``message/send`` spells the role ``"user"``: still taken."""
    part = {"kind": "data", "data": {"skill": "demo.echo", "parameters": {"text": "hi"}}}
    message = {"role": "user", "messageId": "m-6", "kind": "message", "parts": [part]}
    body = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": message}}
    async with http_of(node, headers={"A2A-Version": "0.3"}) as http:
        r = await http.post("/a2a", json=body)
    assert r.json()["result"]["status"]["state"] == "completed", r.text


async def test_a_0_3_rest_send_whose_parts_are_its_content_is_served(node: Node) -> None:
    """A2A 0.3's REST body is its protobuf's JSON, which names a message's parts
    ``content``: the door's message check read ``parts`` only and refused every 0.3
    REST send as having none (found by the review of the checks)."""
    part = {"data": {"data": {"skill": "demo.echo", "parameters": {"text": "hi"}}}}  # DataPart
    message = {"role": "ROLE_USER", "messageId": "m-9", "content": [part]}
    async with http_of(node, headers={"A2A-Version": "0.3"}) as http:
        r = await http.post("/a2a/rest/v1/message:send", json={"message": message})
        empty = await http.post(
            "/a2a/rest/v1/message:send",
            json={"message": {**message, "messageId": "m-10", "content": []}},
        )
    assert r.status_code == 200, r.text
    assert "completed" in r.text.lower(), r.text
    assert empty.status_code == 400, empty.text
    assert node_error(empty.json()["error"])["reason"] == "INVALID_MESSAGE"


async def test_a_0_3_notification_is_no_request_and_a_refused_one_gets_no_answer(
    node: Node,
) -> None:
    """A2A 0.3's models need an ``id``: a 0.3 ``message/send`` without one got 204,
    was never served and left no record. Now refused INVALID_JSONRPC_REQUEST (-32600,
    id null), on record. A 1.0 notification the node's checks refuse (an id past its
    bound) got a JSON-RPC error body; now 204, as every notification, on record."""
    from tests.conftest import recorded

    seen = recorded(node)
    message = {"role": "user", "messageId": "m-8", "kind": "message",
               "parts": [{"kind": "text", "text": "hi"}]}  # fmt: skip
    legacy = {"jsonrpc": "2.0", "method": "message/send", "params": {"message": message}}
    long_get = {"jsonrpc": "2.0", "method": "GetTask", "params": {"id": _LONG}}
    async with http_of(node) as http:
        r = await http.post("/a2a", json=legacy, headers={"A2A-Version": "0.3"})
        quiet = await http.post("/a2a", json=long_get, headers=V1)
    assert _refusal(r) == (400, -32600, "INVALID_JSONRPC_REQUEST")
    assert r.json()["id"] is None
    assert (quiet.status_code, quiet.content) == (204, b"")
    assert quiet.headers["x-trace-id"]
    assert [(rec.action, rec.reason) for rec in seen] == [
        ("lf.a2a.v1.A2AService/SendMessage", "INVALID_JSONRPC_REQUEST"),
        ("lf.a2a.v1.A2AService/GetTask", "ID_TOO_LONG"),
    ]


async def test_a_rest_call_is_named_by_the_route_that_serves_it(node: Node) -> None:
    """``POST tasks/a:b:cancel`` cancels task ``a:b`` (Starlette's ``{id}:cancel``
    reads to the last colon) but was authorized and audited as no method (agent:read,
    ``lf.a2a.v1.A2AService``); ``POST tasks/tasks/pushNotificationConfigs`` creates
    a push config for task ``tasks`` but was named GetTask. Each is now named as run."""
    from tests.conftest import recorded

    seen = recorded(node)
    async with http_of(node, headers=V1) as http:
        await http.post("/a2a/rest/tasks/a:b:cancel", json={})
        await http.post("/a2a/rest/tasks/tasks/pushNotificationConfigs", json={})
    assert [rec.action for rec in seen] == [
        "lf.a2a.v1.A2AService/CancelTask",
        "lf.a2a.v1.A2AService/CreateTaskPushNotificationConfig",
    ]
    assert seen[0].outcome == "not_found"  # (the SDK looked for task a:b)


async def test_a_refused_read_is_counted_as_a_call_and_a_refused_send_as_an_invocation(
    node: Node,
) -> None:
    """GetTask refused ID_TOO_LONG was counted ``invoke.invalid_request`` while the
    same method over its rate counted ``call.*``: a method other than a send is a
    call of the pipeline, refused or run; a send invokes a skill."""
    counters = node.pipeline.counters
    before = {k: counters[k] for k in ("call.invalid_request", "invoke.invalid_request")}
    send = {"message": {"role": "ROLE_USER", "messageId": _LONG, "parts": [{"text": "a"}]}}
    async with http_of(node, headers=V1) as http:
        await http.get(f"/a2a/rest/tasks/{_LONG}")
        await http.post("/a2a/rest/message:send", json=send)
    await _grpc(node, "GetTask", a2a.GetTaskRequest(id=_LONG), a2a.Task)
    assert counters["call.invalid_request"] - before["call.invalid_request"] == 2
    assert counters["invoke.invalid_request"] - before["invoke.invalid_request"] == 1


@pytest.mark.parametrize("key", ["pushNotificationConfigId", "push_notification_config_id"])
async def test_a_push_config_id_is_bounded_in_either_spelling(node: Node, key: str) -> None:
    """A2A 0.3's models take a member's name as well as its alias: the snake spelling
    of the push config's id was not checked."""
    get = {"jsonrpc": "2.0", "id": 1, "method": "tasks/pushNotificationConfig/get",
           "params": {"id": "t", key: _LONG}}  # fmt: skip
    async with http_of(node, headers={"A2A-Version": "0.3"}) as http:
        got = _refusal(await http.post("/a2a", json=get))
    assert got == (400, -32602, "ID_TOO_LONG")


async def test_a_grpc_request_is_checked_as_the_message_it_is(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks read a gRPC request's fields; it was converted to JSON whole first
    (its data parts and metadata too) on every call. A valid send with a large data
    part is served without that conversion; a NaN deep in it is still refused."""
    converted: list[str] = []
    to_dict = json_format.MessageToDict

    def watched(message: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(message, a2a.SendMessageRequest):
            converted.append(message.message.message_id)
        return to_dict(message, *args, **kw)

    monkeypatch.setattr(json_format, "MessageToDict", watched)
    rows = [{"n": i, "text": "x" * 100} for i in range(2_000)]
    message = a2a.Message(message_id="m-9", role=a2a.Role.ROLE_USER)
    message.parts.add().data.struct_value.update(
        {"skill": "demo.echo", "parameters": {"text": "hi"}, "rows": rows}
    )
    request = a2a.SendMessageRequest(message=message)
    assert await _grpc(node, "SendMessage", request, a2a.SendMessageResponse) == ("OK", "")
    assert converted == []
    rows[-1]["deep"] = [{"n": float("nan")}]  # type: ignore[assignment]
    request.message.parts[0].data.struct_value.update({"rows": rows})
    refused = await _grpc(node, "SendMessage", request, a2a.SendMessageResponse)
    assert refused == ("INVALID_ARGUMENT", "NOT_A_JSON_NUMBER")


async def test_what_no_route_serves_is_the_nodes_refusal_on_record(node: Node) -> None:
    """From an attack: a path no A2A route serves, a verb a path is not served for,
    GET or PATCH on /a2a, and a body that says it is not JSON were answered by the
    SDK (plain text, no trace id, no record) or served (text/plain). They are the
    node's refusals now, as on REST: 404, 405 with Allow, 415, each recorded. The
    SDK's own answers carry the call's X-Trace-Id too."""
    from tests.conftest import recorded

    seen = recorded(node)
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "none"}}
    asks: list[tuple[str, str, dict[str, Any], int, str | None]] = [
        ("GET", "/a2a/rest/nope", {}, 404, None),
        ("DELETE", "/a2a/rest/tasks", {}, 405, "GET"),
        ("GET", "/a2a", {}, 405, "POST"),
        ("PATCH", "/a2a", {"json": rpc}, 405, "POST"),
        ("POST", "/a2a", {"content": json.dumps(rpc), "headers": {"content-type": "text/plain"}},
         415, None),
    ]  # fmt: skip
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        for verb, path, kw, status, allow in asks:
            r = await http.request(verb, path, **kw)
            assert r.status_code == status, (verb, path, r.text)
            assert r.headers.get("allow") == allow
            assert r.headers["content-type"].startswith("application/json")
            assert r.headers["x-trace-id"]
        sdk = await http.post("/a2a", json=rpc, headers={"A2A-Version": "1.0"})
    assert "Task not found" in sdk.text
    assert sdk.headers["x-trace-id"] == seen[-1].trace_id
    assert [(r.outcome, r.point) for r in seen[: len(asks)]] == [
        ("not_found", "pre"),
        *[("method_not_allowed", "pre")] * 3,
        ("unsupported_media_type", "pre"),
    ]
