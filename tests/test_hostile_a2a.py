"""A hostile HTTP client at the A2A door: what it can make the node keep (the task
store holds bytes, not only tasks, within a bound), log (no traceback, no
megabyte line for a request that is not one) and answer (the JSON-RPC codes of
the standard, never ``-32603`` for malformed input); refusals carry the trace id
and are JSON-RPC errors on ``/a2a``; a member given twice is refused as on REST;
a node that lists to authenticated callers only shows no skill on its public card."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.server.context import ServerCallContext
from a2a.types import a2a_pb2 as a2a

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
    from its bound; a running task stays, and so does the one just saved."""
    store = BoundedTaskStore(1000, None, _Owner, max_bytes=10_000)
    ctx = ServerCallContext(user=_Owner("someone"))
    await store.save(_task("running", 3000, a2a.TaskState.TASK_STATE_WORKING), ctx)
    for i in range(10):
        await store.save(_task(f"t{i}", 3000), ctx)
    listed = await store.list(a2a.ListTasksRequest(), ctx)
    assert sorted(t.id for t in listed.tasks) == ["running", "t8", "t9"]
    assert store.bytes <= 10_000
    await store.save(_task("huge", 20_000), ctx)  # over the bound alone: kept, for now
    assert await store.get("huge", ctx) is not None
    await store.save(_task("next", 100), ctx)
    assert await store.get("huge", ctx) is None
    await store.delete("next", ctx)
    assert store.bytes == _task("running", 3000, a2a.TaskState.TASK_STATE_WORKING).ByteSize()


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
    store.max_bytes = 256 * 1024
    async with http_of(node, headers=V1) as http:
        for i in range(8):
            r = await http.post("/a2a", json=send_message("x" * 64 * 1024, f"big{i}"))
            assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
        listed = await http.post(
            "/a2a", json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
        )
    kept = listed.json()["result"]["tasks"]
    assert 1 <= len(kept) < 8
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
    if path == "/a2a":
        assert r.json()["jsonrpc"] == "2.0"
        assert isinstance(error["code"], int)
        error = error["data"]
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
    if path == "/a2a":
        assert error["code"] == -32602
        error = error["data"]
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
