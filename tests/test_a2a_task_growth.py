"""Over the wire, with the official a2a-sdk client on each binding: a task waiting
for input that its caller keeps feeding follow-ups stays within its share of the
task store (its oldest messages go, A2A 1.0 §3.7), and neither it nor a flood of
tasks from one caller evicts another caller's tasks (the store evicts from whoever
holds the most). The attacks these stand for: one INPUT_REQUIRED task grew past
``a2a_max_task_bytes`` without end (160 MB, every other caller's task evicted);
18,000 anonymous tasks evicted a caller's tasks before it read them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.types import a2a_pb2 as a2a

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge._a2a_tasks import MAX_HISTORY, BoundedTaskStore
from aralnode.bridge.a2a import A2ADoor
from tests.test_a2a import DONE, TRANSPORTS, ask, base, client_for, events, final_task

WAITING = a2a.TaskState.TASK_STATE_INPUT_REQUIRED
SCOPES = ["agent:read", "agent:invoke"]


def door_of(node: Node) -> A2ADoor:
    assert node.parts.http is not None
    door = node.parts.http.a2a
    assert isinstance(door, A2ADoor)
    return door


def store_of(node: Node) -> BoundedTaskStore:
    store = door_of(node).request_handler().task_store
    assert isinstance(store, BoundedTaskStore)
    return store


def free(text: str, message_id: str, on: a2a.Task | None = None) -> a2a.SendMessageRequest:
    """A message that names no skill (the task asks for one), on task ``on`` if given."""
    message = a2a.Message(message_id=message_id, role=a2a.Role.ROLE_USER)
    message.parts.append(a2a.Part(text=text))
    if on is not None:
        message.task_id, message.context_id = on.id, on.context_id
    return a2a.SendMessageRequest(message=message)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_follow_ups_keep_a_waiting_task_within_its_share(
    make_node: Callable[..., Node], tmp_path: Path, transport: str
) -> None:
    """Fed far more than the whole store holds, one task waiting for input keeps
    its newest messages within its share; another caller's task is still there,
    and the SDK's own copy of the parked task is no larger."""
    keys = ApiKeyStore(tmp_path / "keys.json")
    alice, _ = keys.create("alice", scopes=SCOPES, kind="user")
    node = make_node("grow", http_port=0, apikeys_file=tmp_path / "keys.json")
    async with node, httpx.AsyncClient(headers={"x-api-key": alice}, timeout=20) as http:
        store = store_of(node)
        store.max_bytes = 256 * 1024  # 32 KiB a task; 24 follow-ups of 16 KiB: 384 KiB
        legit = await client_for(node, "JSONRPC", httpx_client=http)
        attacker = await client_for(node, transport)
        try:
            mine = final_task(await events(legit, ask("demo.echo", {"text": "mine"})))
            task = final_task(await events(attacker, free("start", "s0")))
            for i in range(24):
                got = final_task(await events(attacker, free("y" * 16 * 1024, f"f{i}", task)))
                assert got.status.state == WAITING
            held = await attacker.get_task(a2a.GetTaskRequest(id=task.id))
            still = await legit.get_task(a2a.GetTaskRequest(id=mine.id))
        finally:
            await attacker.close()
            await legit.close()
        parked = _parked(node, task.id)
    assert held.ByteSize() <= store.task_max_bytes
    assert len(held.history) <= MAX_HISTORY
    assert held.history[-1].message_id == "f23"  # the newest are kept
    assert still.status.state == DONE
    assert store.bytes <= store.max_bytes
    assert parked is None or parked.ByteSize() <= store.task_max_bytes


def _parked(node: Node, task_id: str) -> a2a.Task | None:
    """The SDK's in-memory copy of a task it still holds (None once released)."""
    handler: Any = door_of(node).request_handler()
    active = handler._active_task_registry._active_tasks.get(task_id)
    return None if active is None else active._task_manager._current_task


async def test_a_flood_of_anonymous_tasks_leaves_a_callers_tasks(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """Past ``a2a_max_tasks``, the flood's own tasks go: the caller still reads its
    finished task and the one waiting for its input."""
    keys = ApiKeyStore(tmp_path / "keys.json")
    alice, _ = keys.create("alice", scopes=SCOPES, kind="user")
    node = make_node("flood", http_port=0, apikeys_file=tmp_path / "keys.json", a2a_max_tasks=10)
    async with node, httpx.AsyncClient(headers={"x-api-key": alice}, timeout=20) as http:
        legit = await client_for(node, "JSONRPC", httpx_client=http)
        try:
            done = final_task(await events(legit, ask("demo.echo", {"text": "mine"})))
            asks = final_task(await events(legit, free("which skill?", "w1")))
            async with httpx.AsyncClient(base_url=base(node), timeout=20) as anonymous:
                for i in range(30):
                    body = {"jsonrpc": "2.0", "id": i, "method": "SendMessage",
                            "params": {"message": {"role": "ROLE_USER", "messageId": f"x{i}",
                                                   "parts": [{"text": "flood"}]}}}  # fmt: skip
                    r = await anonymous.post("/a2a", json=body, headers={"A2A-Version": "1.0"})
                    assert (
                        r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_INPUT_REQUIRED"
                    )
            got = [await legit.get_task(a2a.GetTaskRequest(id=t.id)) for t in (done, asks)]
        finally:
            await legit.close()
    assert [t.status.state for t in got] == [DONE, WAITING]
    assert store_of(node).count == 10
