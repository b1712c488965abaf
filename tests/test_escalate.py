"""Escalate: a call governance escalates waits in the approval queue until an
approver (scope agent:admin, never the caller itself) approves it -- then it runs --
or denies it, or it times out; on gRPC, MCP (the official client), a peer's channel
request and REST, approved over REST, gRPC and the CLI. A response check that
escalates holds the result until approved. And halt: one halted principal is
refused on every door until an operator clears it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import Node
from aralnode import _proto as pb
from aralnode.access.apikeys import ApiKeyStore
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.core.governance import (
    Action,
    Decision,
    Direction,
    Escalation,
    Rule,
    RuleEvaluator,
    Verdict,
)
from aralnode.service import approvals as approvals_module
from aralnode.service.approvals import PENDING, Approval, ApprovalQueue, approval_id
from aralnode.transport.grpc_client import NodeClient, unwrap
from tests.channel_helpers import FAST, linked

ROOT = Path(__file__).resolve().parent.parent

RULES = RuleEvaluator(
    [
        Rule(
            "big-echo",
            lambda a: bool(isinstance(a.parameters, dict) and a.parameters.get("times", 1) > 5),
            Decision.ESCALATE,
            reason="many echoes need a person's yes",
            capabilities=frozenset({"demo.echo"}),
        ),
        Rule("stop", None, Decision.HALT, reason="no more", capabilities=frozenset({"demo.halt"})),
    ]
)


@dataclass
class Setup:
    node: Node
    alice: str  # agent:invoke
    ops: str  # agent:admin
    events: asyncio.Queue[tuple[str, Approval]]

    @property
    def queue(self) -> ApprovalQueue:
        queue = self.node.pipeline.stages.govern.approvals
        assert queue is not None
        return queue

    async def pending(self) -> Approval:
        while True:
            event, entry = await asyncio.wait_for(self.events.get(), 20)
            if event == PENDING:
                return entry

    async def rest_decide(self, approval_id: str, verb: str, key: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.node.http_port}") as http:
            return await http.post(
                f"/v1/approvals/{approval_id}:{verb}", json={"note": "checked"},
                headers={"x-api-key": key}, timeout=10,
            )  # fmt: skip


@asynccontextmanager
async def escalating(
    make_node: Callable[..., Node],
    tmp_path: Path,
    setup: Callable[[Node], None] | None = None,
    **config: Any,
) -> AsyncIterator[Setup]:
    keys = ApiKeyStore(tmp_path / "keys.json")
    alice, _ = keys.create("alice", scopes=["agent:read", "agent:invoke"], kind="user")
    ops, _ = keys.create("ops", scopes=["agent:read", "agent:invoke", "agent:admin"], kind="user")
    node = make_node(
        "esc", governance=RULES, http_port=0, apikeys_file=tmp_path / "keys.json", **FAST,
        **config,
    )  # fmt: skip
    node.capability(id="demo.halt")(_halt_me)
    if setup is not None:
        setup(node)
    async with node:
        events: asyncio.Queue[tuple[str, Approval]] = asyncio.Queue()
        queue = node.pipeline.stages.govern.approvals
        assert queue is not None
        queue.on_event(lambda event, entry: events.put_nowait((event, entry)))
        yield Setup(node, alice, ops, events)


async def _halt_me() -> str:
    return "never"


def grpc_echo(node: Node, key: str, times: int) -> asyncio.Task[Any]:
    async def call() -> Any:
        async with NodeClient(node.address, metadata=[("x-api-key", key)]) as client:
            return unwrap(await client.call("demo.echo", {"text": "hi", "times": times}))

    return asyncio.ensure_future(call())


async def test_escalate_on_grpc_approve_deny_and_timeout(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        # approve (over REST): the call runs and its caller gets the result
        call = grpc_echo(s.node, s.alice, 9)
        entry = await s.pending()
        assert (entry.principal, entry.door, entry.action) == ("alice", "grpc", "demo.echo")
        assert entry.reasons == ("many echoes need a person's yes",)
        refused = await s.rest_decide(entry.id, "approve", s.alice)  # no agent:admin
        assert refused.status_code == 403
        approved = await s.rest_decide(entry.id, "approve", s.ops)
        assert approved.status_code == 200
        assert approved.json()["state"] == "approved"
        assert (await asyncio.wait_for(call, 20))["echo"] == ["hi"] * 9
        # deny (over gRPC): the caller is refused, with who and why
        call = grpc_echo(s.node, s.alice, 8)
        entry = await s.pending()
        async with NodeClient(s.node.address, metadata=[("x-api-key", s.ops)]) as admin:
            listed = await admin.stub.ListApprovals(pb.ListApprovalsRequest(), timeout=10)
            assert [a.id for a in listed.approvals] == [entry.id]
            await admin.stub.Deny(pb.DecideRequest(id=entry.id, note="too many"), timeout=10)
        with pytest.raises(AralError) as err:
            await asyncio.wait_for(call, 20)
        assert (err.value.reason, err.value.status.name) == (
            "GOVERNANCE_DENIED", "PERMISSION_DENIED",
        )  # fmt: skip
        assert "too many" in err.value.message
        # timeout: nobody decides
        s.queue.timeout = 0.2
        with pytest.raises(AralError) as err:
            await asyncio.wait_for(grpc_echo(s.node, s.alice, 7), 20)
        assert err.value.reason == "GOVERNANCE_ESCALATION_TIMEOUT"
        assert s.queue.pending() == []
        # under the threshold: never escalated
        assert (await asyncio.wait_for(grpc_echo(s.node, s.alice, 2), 20))["echo"] == ["hi"] * 2


def test_an_approval_id_is_never_read_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """An id is a positional argument of ``aralnode approvals approve``: one that
    began with ``-`` (1 in 64 of URL-safe tokens) was read as an option."""
    drawn = iter(["-z3WQJJtUdaj", "--9QJJtUdajx", "z3WQJJtUdaj-"])
    monkeypatch.setattr(approvals_module.secrets, "token_urlsafe", lambda n: next(drawn))
    assert approval_id() == "z3WQJJtUdaj-"


async def test_an_approver_cannot_approve_its_own_call(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        call = grpc_echo(s.node, s.ops, 9)
        entry = await s.pending()
        own = await s.rest_decide(entry.id, "approve", s.ops)
        assert own.status_code == 403
        assert own.json()["error"]["reason"] == "SELF_APPROVAL"
        call.cancel()  # the caller goes away: its entry with it
        event, gone = await asyncio.wait_for(s.events.get(), 20)
        assert (event, gone.id) == ("withdrawn", entry.id)
        assert s.queue.pending() == []


async def test_a_peer_cannot_approve_a_call_it_forwarded_by_naming_another_approver() -> None:
    """From an attack: the self-approval check compared only the approver's principal.
    A peer that forwarded an escalated call (the entry's caller) approved it itself by
    sending Approve on behalf of someone else (``carol@A``)."""
    queue = ApprovalQueue(timeout=30)
    events: asyncio.Queue[tuple[str, Approval]] = asyncio.Queue()
    queue.on_event(lambda event, entry: events.put_nowait((event, entry)))
    call = CallContext(door="channel")
    call.caller, call.on_behalf_of = "NODE_A", "bob@NODE_A"
    verdict = Verdict(Decision.ESCALATE, False, ("bulk",), ("r",))
    waiting = asyncio.ensure_future(
        queue.wait(call, Action(Direction.INVOKE, "db.write", "NODE_A", "channel"), verdict)
    )
    event, entry = await asyncio.wait_for(events.get(), 10)
    assert event == PENDING
    for by, via in (("carol@NODE_A", "NODE_A"), ("NODE_A", ""), ("bob@NODE_A", "NODE_B")):
        with pytest.raises(AralError) as refused:
            queue.approve(entry.id, by, via=via)
        assert refused.value.reason == "SELF_APPROVAL"
    queue.approve(entry.id, "ops", via="NODE_B")  # another node's operator may
    await asyncio.wait_for(waiting, 10)
    assert entry.decided_by == "ops"


async def test_escalate_on_mcp_with_the_official_client(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        url = f"http://127.0.0.1:{s.node.http_port}/mcp"

        async def call(times: int) -> Any:
            async with (
                create_mcp_http_client(headers={"x-api-key": s.alice}) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                return await client.call_tool("demo.echo", {"text": "m", "times": times})

        task = asyncio.ensure_future(call(6))
        entry = await s.pending()
        assert entry.door == "mcp"
        assert (await s.rest_decide(entry.id, "approve", s.ops)).status_code == 200
        result = await asyncio.wait_for(task, 20)
        assert not result.is_error
        assert json.loads(result.content[0].text)["echo"] == ["m"] * 6
        task = asyncio.ensure_future(call(7))
        entry = await s.pending()
        assert (await s.rest_decide(entry.id, "deny", s.ops)).status_code == 200
        result = await asyncio.wait_for(task, 20)
        assert result.is_error
        assert json.loads(result.content[0].text)["error"]["reason"] == "GOVERNANCE_DENIED"


async def test_escalate_on_a_peers_channel_request_approved_with_the_cli(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        peer = make_node("asker", demo=False, **FAST)
        async with peer:
            await linked(peer, s.node)
            task = asyncio.ensure_future(
                peer.request(s.node.node_id, "demo.echo", {"text": "c", "times": 9}, timeout=30)
            )
            entry = await s.pending()
            assert (entry.door, entry.principal) == ("channel", peer.node_id)
            cli = [sys.executable, "-m", "aralnode.cli", "approvals"]
            where = ["--node", s.node.address, "--api-key", s.ops, "--json"]
            listed = await asyncio.to_thread(
                subprocess.run, [*cli, "list", *where], capture_output=True, text=True,
                timeout=60, cwd=ROOT, check=False,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            assert [a["id"] for a in json.loads(listed.stdout)] == [entry.id]
            done = await asyncio.to_thread(
                subprocess.run, [*cli, "approve", entry.id, *where], capture_output=True,
                text=True, timeout=60, cwd=ROOT, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["state"] == "approved"
            assert (await asyncio.wait_for(task, 20))["echo"] == ["c"] * 9


class HoldSecrets:
    """A response check that holds any result naming a secret for approval."""

    def check(self, ctx: CallContext, action: Action, result: Any) -> Any:
        if action.capability == "demo.leak" and "secret" in json.dumps(result):
            redacted = json.loads(json.dumps(result).replace("secret", "[REDACTED]"))
            raise Escalation(Verdict(Decision.ESCALATE, reasons=("a secret",)), redacted)
        return result


async def test_a_post_execution_escalation_releases_the_checked_result(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        s.node.pipeline.stages.post_check.checks.append(HoldSecrets())
        ran: list[int] = []

        @s.node.capability(id="demo.leak")
        async def leak() -> dict[str, str]:
            ran.append(1)
            return {"value": "secret"}

        task = grpc_echo_leak(s.node, s.alice)
        entry = await s.pending()
        assert ran == [1]  # it ran: its result is what waits
        assert (await s.rest_decide(entry.id, "approve", s.ops)).status_code == 200
        assert await asyncio.wait_for(task, 20) == {"value": "[REDACTED]"}


def grpc_echo_leak(node: Node, key: str) -> asyncio.Task[Any]:
    async def call() -> Any:
        async with NodeClient(node.address, metadata=[("x-api-key", key)]) as client:
            return unwrap(await client.call("demo.leak", {}))

    return asyncio.ensure_future(call())


async def _ws_invoke(node: Node, key: str, capability: str) -> dict[str, Any]:
    """The reply to an invoke, or the refusal of the socket itself (its body)."""
    url = f"ws://127.0.0.1:{node.http_port}/ws"
    try:
        async with connect(url, additional_headers={"x-api-key": key}) as ws:
            await ws.send(json.dumps({"type": "invoke", "id": 1, "capability": capability}))
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
    except InvalidStatus as refused:  # a halted caller gets no socket at all
        body = dict(json.loads(refused.response.body))
        body["http_status"] = refused.response.status_code
        return body
    return reply


async def test_a_halt_holds_on_every_door_until_cleared(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        node = s.node
        async with NodeClient(node.address, metadata=[("x-api-key", s.alice)]) as alice:
            with pytest.raises(AralError) as err:
                await alice.call("demo.halt", {})
            assert err.value.reason == "GOVERNANCE_HALT"
            with pytest.raises(AralError) as err:  # any capability, now
                await alice.call("demo.add", {"a": 1, "b": 2})
            assert err.value.reason == "HALTED"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            rest = await http.post(
                "/v1/invoke", json={"call": {"capability": "demo.add", "parameters": {}}},
                headers={"x-api-key": s.alice},
            )  # fmt: skip
            assert (rest.status_code, rest.json()["error"]["reason"]) == (403, "HALTED")
        reply = await _ws_invoke(node, s.alice, "demo.add")
        assert (reply["http_status"], reply["error"]["reason"]) == (403, "HALTED")
        url = f"http://127.0.0.1:{node.http_port}/mcp"
        with pytest.raises((MCPError, BaseExceptionGroup)) as refused:  # not even a session
            async with (
                create_mcp_http_client(headers={"x-api-key": s.alice}) as http2,
                Client(streamable_http_client(url, http_client=http2)) as client,
            ):
                await client.call_tool("demo.add", {"a": 1, "b": 2})
        assert "alice is halted by governance" in repr(refused.value)
        # Others are served; an operator clears the halt (the CLI).
        async with NodeClient(node.address, metadata=[("x-api-key", s.ops)]) as ops:
            assert unwrap(await ops.call("demo.add", {"a": 1, "b": 2})) == 3
            halts = await ops.stub.ListHalts(pb.ListHaltsRequest(), timeout=10)
            assert [(h.subject, h.kind) for h in halts.halts] == [("alice", "principal")]
        cleared = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "aralnode.cli", "halts", "clear", "alice", "--node",
             node.address, "--api-key", s.ops],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
        )  # fmt: skip
        assert cleared.returncode == 0, cleared.stderr
        async with NodeClient(node.address, metadata=[("x-api-key", s.alice)]) as alice:
            assert unwrap(await alice.call("demo.add", {"a": 1, "b": 2})) == 3


async def test_a_halt_survives_a_restart(make_node: Callable[..., Node], tmp_path: Path) -> None:
    async with escalating(make_node, tmp_path) as s:
        with pytest.raises(AralError):
            await s.node.invoke("demo.halt", {}, ctx=_as("alice"))
    node = make_node("esc", governance=RULES, http_port=0, apikeys_file=tmp_path / "keys.json")
    async with node:
        with pytest.raises(AralError) as err:
            await node.invoke("demo.add", {"a": 1, "b": 2}, ctx=_as("alice"))
        assert err.value.reason == "HALTED"
        assert await node.invoke("demo.add", {"a": 1, "b": 2}, ctx=_as("bob")) == 3


def _as(principal: str) -> CallContext:
    return CallContext(door="local", caller=principal)


@pytest.mark.parametrize("limit", ["total", "per-principal"])
async def test_the_queue_is_bounded(limit: str) -> None:
    queue = ApprovalQueue(
        max_pending=2 if limit == "total" else 10,
        max_pending_per_principal=2 if limit == "per-principal" else 10,
    )
    entered: asyncio.Queue[str] = asyncio.Queue()
    queue.on_event(lambda event, entry: entered.put_nowait(event))
    verdict = Verdict(Decision.ESCALATE, reasons=("x",))
    act = Action(Direction.INVOKE, "c", "alice", "grpc")
    alice = CallContext(door="grpc", caller="alice")
    waiting = [asyncio.ensure_future(queue.wait(alice, act, verdict)) for _ in range(2)]
    assert [await entered.get(), await entered.get()] == [PENDING, PENDING]
    with pytest.raises(AralError) as err:
        await queue.wait(alice, act, verdict)
    assert err.value.reason == "APPROVAL_QUEUE_FULL"
    if limit == "per-principal":  # another principal still gets in
        bob = asyncio.ensure_future(
            queue.wait(CallContext(door="grpc", caller="bob"), act, verdict)
        )
        assert await entered.get() == PENDING
        waiting.append(bob)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert queue.pending() == []


class Records:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def write(self, record: Any) -> None:
        self.records.append(record)


async def test_the_connection_point_refuses_a_peer_by_policy_or_halt(
    make_node: Callable[..., Node],
) -> None:
    rules = RuleEvaluator(
        [Rule("members-only", None, Decision.BLOCK, reason="not a member",
              capabilities=frozenset({"connect"}))]
    )  # fmt: skip
    hub = make_node("hub", governance=rules, **FAST)
    stranger = make_node("stranger", demo=False, **FAST)
    seen = Records()
    hub.pipeline.stages.audit.sinks.append(seen)
    async with hub, stranger:
        with pytest.raises(AralError) as err:
            await stranger.connect(hub.address)
        assert err.value.reason == "CONNECTION_REFUSED_BY_POLICY"
        assert stranger.node_id not in {p.node_id for p in hub.peers()}
        connects = [r for r in seen.records if r.point == "connect"]
        assert [(r.caller, r.decision, r.reason) for r in connects] == [
            (stranger.node_id, "block", "CONNECTION_REFUSED_BY_POLICY")
        ]
        # A halted peer is refused likewise, whatever the policy says.
        hub.governance = RuleEvaluator([])
        halts = hub.pipeline.stages.govern.halts
        assert halts is not None
        halts.halt(stranger.node_id, "peer", "operator's call")
        with pytest.raises(AralError) as err:
            await stranger.connect(hub.address)
        assert err.value.reason == "HALTED"
        assert halts.clear(stranger.node_id, "ops")
        await stranger.connect(hub.address)
        assert stranger.node_id in {p.node_id for p in hub.peers()}


async def test_approvers_get_approval_events_over_the_websocket(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        url = f"ws://127.0.0.1:{s.node.http_port}/ws"
        subscribe = {"type": "subscribe", "agent_id": s.node.node_id, "channels": ["events"]}
        async with (
            connect(url, additional_headers={"x-api-key": s.ops}) as ops,
            connect(url, additional_headers={"x-api-key": s.alice}) as alice,
        ):
            for ws in (ops, alice):
                await ws.send(json.dumps(subscribe))
            acks = [await _next(ws, "subscribed") for ws in (ops, alice)]
            assert "approvals" in acks[0]["channels"]
            assert "approvals" not in acks[1]["channels"]  # approvers only
            call = grpc_echo(s.node, s.alice, 9)
            pending = await _next(ops, "approval")
            assert (pending["event"], pending["principal"]) == ("pending", "alice")
            assert pending["url"] == f"/v1/approvals/{pending['id']}"
            assert (await s.rest_decide(pending["id"], "approve", s.ops)).status_code == 200
            decided = await _next(ops, "approval")
            assert (decided["event"], decided["decided_by"]) == ("approved", "ops")
            assert (await asyncio.wait_for(call, 20))["echo"] == ["hi"] * 9


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if message["type"] == kind:
            return message


async def test_a_halted_peer_loses_its_channel_and_the_end_is_audited(
    make_node: Callable[..., Node],
) -> None:
    rules = RuleEvaluator(
        [Rule("no-secrets", None, Decision.HALT, reason="secrets over the wire",
              capabilities=frozenset({"secret"}))]
    )  # fmt: skip
    hub = make_node("hub", governance=rules, **FAST)
    talker = make_node("talker", demo=False, **FAST)
    seen = Records()
    hub.pipeline.stages.audit.sinks.append(seen)
    gone = asyncio.Event()
    async with hub, talker:
        await linked(talker, hub)
        assert hub.channels is not None
        hub.channels.link_listeners.append(lambda peer, up: None if up else gone.set())
        await talker.notify(hub.node_id, "secret", {})
        await asyncio.wait_for(gone.wait(), 20)  # halted: its channel is closed
        halts = hub.pipeline.stages.govern.halts
        assert halts is not None
        assert [(e.subject, e.kind) for e in halts.entries()] == [(talker.node_id, "peer")]
        with pytest.raises(AralError) as err:  # and it is not let back in
            await talker.connect(hub.address)
        assert err.value.reason == "HALTED"
        ends = [r for r in seen.records if r.point == "disconnect"]
        assert [(r.caller, r.outcome, r.reason) for r in ends][:1] == [
            (talker.node_id, "closed", "HALTED")
        ]


def test_the_approvals_table_keeps_each_row_on_its_line() -> None:
    """From an attack: a principal a peer's statement named may hold a newline, which
    forged a row in ``aralnode approvals list`` (``audit tail`` escaped it already)."""
    from aralnode.cli_governance import _rows

    forged = "bob\nzzz  alice  grpc  demo.pay  ok"
    table = _rows([["a1", forged, "grpc", "demo.echo"]], ["ID", "PRINCIPAL", "DOOR", "ACTION"])
    assert table.count("\n") == 1
    assert "bob\\nzzz" in table
