"""The A2A door, driven by the official a2a-sdk client over each of its three
transports (JSON-RPC, gRPC, HTTP+JSON, found from the node's signed card): send,
stream, get, list and cancel tasks; refusals as REJECTED tasks; a governance
escalation as AUTH_REQUIRED until approved; the card's signature checked with
independent JOSE (jwcrypto) and RFC 8785 (jcs) implementations."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import jcs
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.client import Client
from a2a.helpers.proto_helpers import new_data_part
from a2a.types import a2a_pb2 as a2a
from a2a.utils.errors import TaskNotFoundError
from a2a.utils.signing import create_signature_verifier
from google.protobuf.json_format import MessageToDict
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws
from jwt.api_jwk import PyJWK

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from tests.test_escalate import RULES
from tests.test_grpcurl import GRPCURL, grpcurl

TRANSPORTS = ["JSONRPC", "GRPC", "HTTP+JSON"]
DONE = a2a.TaskState.TASK_STATE_COMPLETED


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("a2a", http_port=0)
    gate = asyncio.Event()

    @n.capability(id="test.wait", description="waits until released")
    async def wait() -> str:
        await gate.wait()
        return "released"

    async with n:
        yield n
    gate.set()


def base(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}"


async def client_for(node: Node, transport: str, *, streaming: bool = False, **kw: Any) -> Client:
    kw.setdefault("grpc_channel_factory", grpc.aio.insecure_channel)
    config = ClientConfig(streaming=streaming, supported_protocol_bindings=[transport], **kw)
    return await create_client(base(node), client_config=config)


def ask(skill: str, params: dict[str, Any], *, message_id: str = "m1") -> a2a.SendMessageRequest:
    message = a2a.Message(message_id=message_id, role=a2a.Role.ROLE_USER)
    message.parts.append(new_data_part({"skill": skill, "parameters": params}))
    return a2a.SendMessageRequest(message=message)


async def events(client: Client, request: a2a.SendMessageRequest) -> list[a2a.StreamResponse]:
    return [e async for e in client.send_message(request)]


def final_task(got: list[a2a.StreamResponse]) -> a2a.Task:
    tasks = [e.task for e in got if e.HasField("task")]
    assert tasks, got
    return tasks[-1]


def result_of(task: a2a.Task) -> Any:
    (artifact,) = task.artifacts
    return MessageToDict(artifact.parts[0].data)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_get_and_list_over_each_transport(node: Node, transport: str) -> None:
    client = await client_for(node, transport)
    try:
        task = final_task(await events(client, ask("demo.echo", {"text": "hi", "times": 2})))
        assert task.status.state == DONE
        assert result_of(task)["echo"] == ["hi", "hi"]
        got = await client.get_task(a2a.GetTaskRequest(id=task.id))
        assert got.status.state == DONE
        listed = await client.list_tasks(a2a.ListTasksRequest())
        assert task.id in [t.id for t in listed.tasks]
    finally:
        await client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_streamed_task_reports_working_then_completed(node: Node, transport: str) -> None:
    client = await client_for(node, transport, streaming=True)
    try:
        got = await events(client, ask("demo.echo", {"text": "s"}, message_id="m2"))
        states = [e.status_update.status.state for e in got if e.HasField("status_update")]
        assert a2a.TaskState.TASK_STATE_WORKING in states
        assert states[-1] == DONE
        artifacts = [e.artifact_update for e in got if e.HasField("artifact_update")]
        assert MessageToDict(artifacts[0].artifact.parts[0].data)["echo"] == ["s"]
    finally:
        await client.close()


async def test_a_running_task_is_cancelled(node: Node) -> None:
    client = await client_for(node, "JSONRPC", polling=True)  # returns at once
    try:
        task = final_task(await events(client, ask("test.wait", {}, message_id="m3")))
        assert task.status.state in (a2a.TaskState.TASK_STATE_SUBMITTED,
                                     a2a.TaskState.TASK_STATE_WORKING)  # fmt: skip
        cancelled = await client.cancel_task(a2a.CancelTaskRequest(id=task.id))
        assert cancelled.status.state == a2a.TaskState.TASK_STATE_CANCELED
    finally:
        await client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_unknown_skill_is_rejected_with_the_nodes_code(node: Node, transport: str) -> None:
    client = await client_for(node, transport)
    try:
        task = final_task(await events(client, ask("no.such", {}, message_id="m4")))
        assert task.status.state == a2a.TaskState.TASK_STATE_REJECTED
        note = task.status.message
        assert MessageToDict(note.metadata)["code"] == "not_found"
        # The refusal's message belongs to its task, in the fields that say so.
        assert (note.task_id, note.context_id) == (task.id, task.context_id)
        assert note.parts[0].media_type in ("", "text/plain"), note
    finally:
        await client.close()


async def test_a_missing_scope_is_rejected_and_audited_on_the_a2a_door(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("strict", http_port=0, deny_by_default=True, audit=True)
    async with node:
        client = await client_for(node, "JSONRPC")
        try:
            task = final_task(await events(client, ask("demo.echo", {"text": "x"})))
        finally:
            await client.close()
        assert task.status.state == a2a.TaskState.TASK_STATE_REJECTED
        assert MessageToDict(task.status.message.metadata)["code"] == "forbidden"
    rows = [json.loads(line) for line in _export(tmp_path / "strict")]
    assert any(r["door"] == "a2a" and r["outcome"] == "forbidden" for r in rows)


async def until(state: Callable[[], Any], wanted: int) -> a2a.Task:
    """Poll a task (GetTask, as an A2A client does) until it is in ``wanted``."""
    async with asyncio.timeout(20):
        while True:
            task: a2a.Task = await state()
            if task.status.state == wanted:
                return task
            await asyncio.sleep(0.02)  # a poll interval of a bounded wait (noqa: sleep-ok)


def _export(data_dir: Path) -> list[str]:
    import subprocess
    import sys

    out = subprocess.run(
        [str(Path(sys.executable).parent / "aralnode"), "audit", "export",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if line.strip()]


async def test_an_escalation_shows_auth_required_until_approved(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    keys = ApiKeyStore(tmp_path / "keys.json")
    alice, _ = keys.create("alice", scopes=["agent:read", "agent:invoke"], kind="user")
    ops, _ = keys.create("ops", scopes=["agent:admin"], kind="user")
    node = make_node("esc", governance=RULES, http_port=0, apikeys_file=tmp_path / "keys.json")
    async with node:
        http = httpx.AsyncClient(headers={"x-api-key": alice}, timeout=20)
        client = await client_for(node, "JSONRPC", polling=True, httpx_client=http)
        try:
            task = final_task(await events(client, ask("demo.echo", {"text": "e", "times": 9})))

            async def state() -> a2a.Task:
                return await client.get_task(a2a.GetTaskRequest(id=task.id))

            t = await until(state, a2a.TaskState.TASK_STATE_AUTH_REQUIRED)
            approval = MessageToDict(t.status.message.metadata)["approval"]
            async with httpx.AsyncClient(base_url=base(node)) as admin:
                r = await admin.post(f"/v1/approvals/{approval}:approve", json={},
                                     headers={"x-api-key": ops})  # fmt: skip
                assert r.status_code == 200
            t = await until(state, DONE)
            assert result_of(t)["echo"] == ["e"] * 9
        finally:
            await client.close()
            await http.aclose()


async def test_the_card_is_signed_and_verifies_with_independent_implementations(
    node: Node,
) -> None:
    async with httpx.AsyncClient(base_url=base(node)) as http:
        card = (await http.get("/.well-known/agent-card.json")).json()
        keys = (await http.get("/.well-known/jwks.json")).json()["keys"]
    bindings = {i["protocolBinding"] for i in card["supportedInterfaces"]}
    assert bindings == {"JSONRPC", "GRPC", "HTTP+JSON"}
    assert {s["id"] for s in card["skills"]} >= {"demo.echo", "test.wait"}
    (signature,) = card.pop("signatures")
    header = json.loads(jc_jws.base64url_decode(signature["protected"]))
    assert header["kid"] == node.node_id
    assert header["jku"].endswith(f":{node.http_port}/.well-known/jwks.json")
    (key,) = [k for k in keys if k["kid"] == header["kid"]]
    payload = jcs.canonicalize(card)  # an RFC 8785 implementation not the node's
    token = jc_jws.JWS()
    token.deserialize(f"{signature['protected']}.{jc_jws.base64url_encode(payload)}."
                      f"{signature['signature']}")  # fmt: skip
    token.verify(jc_jwk.JWK(**key))  # raises if the signature does not cover the card
    # the a2a-sdk's own verifier accepts it too
    parsed = a2a.AgentCard()
    from google.protobuf.json_format import ParseDict

    ParseDict({**card, "signatures": [signature]}, parsed)
    create_signature_verifier(lambda kid, jku: PyJWK(key), ["ES256"])(parsed)
    # a changed card no longer verifies
    card["name"] = "mallory"
    forged = jc_jws.JWS()
    forged.deserialize(f"{signature['protected']}.{jc_jws.base64url_encode(jcs.canonicalize(card))}."
                       f"{signature['signature']}")  # fmt: skip
    with pytest.raises(jc_jws.InvalidJWSSignature):
        forged.verify(jc_jwk.JWK(**key))


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed")
async def test_grpcurl_lists_the_a2a_service_by_reflection(node: Node) -> None:
    code, out, err = await grpcurl("-plaintext", node.address, "list")
    assert code == 0, err
    assert "lf.a2a.v1.A2AService" in out.split()


async def test_a_callers_tasks_are_its_own(make_node: Callable[..., Node], tmp_path: Path) -> None:
    keys = ApiKeyStore(tmp_path / "keys.json")
    alice, _ = keys.create("alice", scopes=["agent:read", "agent:invoke"], kind="user")
    bob, _ = keys.create("bob", scopes=["agent:read", "agent:invoke"], kind="user")
    node = make_node("owners", http_port=0, apikeys_file=tmp_path / "keys.json")
    async with node:
        clients = {}
        for who, key in (("alice", alice), ("bob", bob)):
            http = httpx.AsyncClient(headers={"x-api-key": key}, timeout=20)
            clients[who] = (await client_for(node, "JSONRPC", httpx_client=http), http)
        try:
            a, _ = clients["alice"]
            b, _ = clients["bob"]
            task = final_task(await events(a, ask("demo.echo", {"text": "mine"})))
            assert task.status.state == DONE
            mine = await a.list_tasks(a2a.ListTasksRequest())
            assert [t.id for t in mine.tasks] == [task.id]
            theirs = await b.list_tasks(a2a.ListTasksRequest())
            assert task.id not in [t.id for t in theirs.tasks]
            with pytest.raises(TaskNotFoundError):
                await b.get_task(a2a.GetTaskRequest(id=task.id))
        finally:
            for client, http in clients.values():
                await client.close()
                await http.aclose()


async def test_finished_tasks_beyond_the_limit_are_dropped_oldest_first(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("few", http_port=0, a2a_max_tasks=3)
    async with node:
        client = await client_for(node, "JSONRPC")
        try:
            ids = []
            for i in range(5):
                got = await events(client, ask("demo.echo", {"text": str(i)}, message_id=f"m{i}"))
                ids.append(final_task(got).id)
            listed = await client.list_tasks(a2a.ListTasksRequest())
            assert sorted(t.id for t in listed.tasks) == sorted(ids[-3:])
        finally:
            await client.close()


async def test_a_body_over_the_limit_is_refused_before_the_sdk_reads_it(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("small", http_port=0, max_message_bytes=4096)
    async with node, httpx.AsyncClient(base_url=base(node), timeout=20) as http:
        big = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"x": "y" * 8192}}
        r = await http.post("/a2a", json=big)
        assert r.status_code == 413
        error = r.json()["error"]  # a JSON-RPC error, the node's error as its data
        assert error["data"]["code"] == "payload_too_large"
        assert error["data"]["trace_id"] == r.headers["x-trace-id"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read and cut off
            for _ in range(16):
                yield b" " * 1024

        r = await http.post("/a2a/rest/message:send", content=chunks())
        assert r.status_code == 413
        # a request within the limit still works
        client = await client_for(node, "JSONRPC")
        try:
            task = final_task(await events(client, ask("demo.echo", {"text": "ok"})))
        finally:
            await client.close()
        assert task.status.state == DONE


async def test_the_card_url_is_in_the_mdns_txt_record(node: Node) -> None:
    """What a LAN peer reads (the TXT bytes) leads to the card: the http port and
    the card's path."""
    from aralnode._assembly import announcement
    from aralnode.discovery.txt import parse_txt, to_txt

    heard = parse_txt(to_txt(announcement(node)))
    assert heard.a2a_card == "/.well-known/agent-card.json"
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://127.0.0.1:{heard.http_port}{heard.a2a_card}")
    assert r.json()["name"] == "a2a"


async def test_a_durable_node_keeps_its_tasks_across_a_restart(
    make_node: Callable[..., Node],
) -> None:
    """In SQLite (the SDK's SQL store): a finished task is there after a restart;
    one the stop cut off is not left WORKING."""
    gate = asyncio.Event()

    def durable() -> Node:
        n = make_node("durable-a2a", http_port=0, durable=True, drain_seconds=0.2)

        @n.capability(id="test.wait")
        async def wait() -> str:
            await gate.wait()
            return "released"

        return n

    first = durable()
    async with first:
        client = await client_for(first, "JSONRPC")
        waiting = await client_for(first, "JSONRPC", polling=True)  # returns at once
        try:
            done = final_task(await events(client, ask("demo.echo", {"text": "kept"})))
            cut = final_task(await events(waiting, ask("test.wait", {}, message_id="m9")))
        finally:
            await client.close()
            await waiting.close()
    assert done.status.state == DONE
    assert cut.status.state in (a2a.TaskState.TASK_STATE_SUBMITTED,
                                a2a.TaskState.TASK_STATE_WORKING)  # fmt: skip
    assert (first.config.resolved_data_dir / "a2a-tasks.sqlite3").exists()
    again = durable()
    async with again:
        client = await client_for(again, "JSONRPC")
        try:
            kept = await client.get_task(a2a.GetTaskRequest(id=done.id))
            ended = await client.get_task(a2a.GetTaskRequest(id=cut.id))
            listed = await client.list_tasks(a2a.ListTasksRequest())
        finally:
            await client.close()
    gate.set()
    assert kept.status.state == DONE
    assert MessageToDict(kept.artifacts[0].parts[0].data)["echo"] == ["kept"]
    assert ended.status.state == a2a.TaskState.TASK_STATE_FAILED
    assert ended.status.message.parts[0].text == "the node restarted while it ran"
    assert {t.id for t in listed.tasks} == {done.id, cut.id}


async def test_a_message_naming_no_skill_asks_for_one_then_runs_it(node: Node) -> None:
    """No default skill: INPUT_REQUIRED, the skills listed; a reply on the same task
    that names one runs it."""
    client = await client_for(node, "JSONRPC")
    try:
        free = a2a.Message(message_id="f1", role=a2a.Role.ROLE_USER)
        free.parts.append(a2a.Part(text="hello there"))
        task = final_task(await events(client, a2a.SendMessageRequest(message=free)))
        assert task.status.state == a2a.TaskState.TASK_STATE_INPUT_REQUIRED
        assert "demo.echo" in task.status.message.parts[0].text
        assert MessageToDict(task.status.message.metadata)["reason"] == "NO_SKILL"
        reply = ask("demo.echo", {"text": "now"}, message_id="f2")
        reply.message.task_id, reply.message.context_id = task.id, task.context_id
        done = final_task(await events(client, reply))
    finally:
        await client.close()
    assert done.id == task.id
    assert done.status.state == DONE
    assert MessageToDict(done.artifacts[0].parts[0].data)["echo"] == ["now"]


async def test_a_default_skill_takes_free_form_messages(make_node: Callable[..., Node]) -> None:
    node = make_node("chatty", http_port=0, a2a_default_skill="demo.echo")
    async with node:
        client = await client_for(node, "JSONRPC")
        try:
            free = a2a.Message(message_id="f3", role=a2a.Role.ROLE_USER)
            free.parts.append(a2a.Part(text="just talk"))
            task = final_task(await events(client, a2a.SendMessageRequest(message=free)))
        finally:
            await client.close()
    assert task.status.state == DONE
    assert MessageToDict(task.artifacts[0].parts[0].data)["echo"] == ["just talk"]


async def test_tasks_waiting_for_input_are_bounded_too() -> None:
    """An outsider can open any number of INPUT_REQUIRED tasks: they count against
    the bound and go first with the finished ones."""
    from a2a.server.context import ServerCallContext

    from aralnode.bridge._a2a_tasks import BoundedTaskStore
    from aralnode.bridge.a2a import _Owner

    store = BoundedTaskStore(3, None, _Owner)
    ctx = ServerCallContext(user=_Owner("someone"))
    for i in range(10):
        task = a2a.Task(id=f"t{i}", context_id="c")
        task.status.state = a2a.TaskState.TASK_STATE_INPUT_REQUIRED
        await store.save(task, ctx)
    listed = await store.list(a2a.ListTasksRequest(), ctx)
    assert sorted(t.id for t in listed.tasks) == ["t7", "t8", "t9"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_wrong_credential_is_refused_on_every_method(node: Node, transport: str) -> None:
    """Not only SendMessage: reading, listing or cancelling tasks with a key that
    is shown and wrong is refused before the SDK sees the request."""
    from a2a.client.errors import A2AClientError

    headers = {"x-api-key": "aral_not-a-key"}
    http = httpx.AsyncClient(headers=headers)
    if transport == "GRPC":

        def channel(target: str) -> grpc.aio.Channel:
            interceptor = _HeaderInterceptor(headers)
            return grpc.aio.insecure_channel(target, interceptors=[interceptor])

        client = await client_for(node, transport, grpc_channel_factory=channel)
    else:
        client = await client_for(node, transport, httpx_client=http)
    try:
        for call in (
            client.get_task(a2a.GetTaskRequest(id="t-none")),
            client.list_tasks(a2a.ListTasksRequest()),
            client.cancel_task(a2a.CancelTaskRequest(id="t-none")),
        ):
            with pytest.raises((A2AClientError, grpc.aio.AioRpcError, httpx.HTTPError)) as info:
                await call
            text = str(info.value)
            assert "401" in text or "UNAUTHENTICATED" in text or "nauthorized" in text, text
    finally:
        await client.close()
        await http.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_credential_given_twice_is_refused_on_every_binding(
    node: Node, transport: str
) -> None:
    """A wrong key beside a good one (the good one last: the copy a mapping keeps)
    is refused before the SDK sees the request, on each binding, gRPC's included,
    and audited as ``CREDENTIALS_AMBIGUOUS``; the good key alone is served."""
    from a2a.client.errors import A2AClientError

    good, _ = ApiKeyStore(node.config.apikeys_path).create("a2a-bot", scopes=[])
    refused: list[tuple[str, str]] = []
    node.pipeline.stages.audit.sinks.append(_Refusals(refused))
    wrong = "aral_0000000000000000_" + "x" * 43
    for headers, ok in (
        ([("x-api-key", wrong), ("x-api-key", good)], False),
        ([("x-api-key", good)], True),
    ):
        http = httpx.AsyncClient(headers=headers, timeout=20)
        if transport == "GRPC":

            def channel(target: str, headers: list[tuple[str, str]] = headers) -> grpc.aio.Channel:
                interceptor = _HeaderInterceptor(headers)
                return grpc.aio.insecure_channel(target, interceptors=[interceptor])

            client = await client_for(node, transport, grpc_channel_factory=channel)
        else:
            client = await client_for(node, transport, httpx_client=http)
        try:
            if ok:
                task = final_task(await events(client, ask("demo.echo", {"text": "x"})))
                assert task.status.state == DONE
                continue
            with pytest.raises((A2AClientError, grpc.aio.AioRpcError, httpx.HTTPError)) as info:
                await events(client, ask("demo.echo", {"text": "x"}))
            text = str(info.value)
            assert "401" in text or "UNAUTHENTICATED" in text or "nauthorized" in text, text
        finally:
            await client.close()
            await http.aclose()
    assert ("a2a", "CREDENTIALS_AMBIGUOUS") in refused, refused


class _Refusals:
    """An audit sink that notes each refusal's door and reason."""

    def __init__(self, refused: list[tuple[str, str]]) -> None:
        self.refused = refused

    def write(self, record: Any) -> None:
        if record.outcome != "ok":
            self.refused.append((record.door, record.reason))


class _HeaderInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, headers: dict[str, str] | list[tuple[str, str]]) -> None:
        self.headers = list(headers.items()) if isinstance(headers, dict) else headers

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), *self.headers]
        return await continuation(details._replace(metadata=metadata), request)


async def test_the_extended_card_is_for_authenticated_callers(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """It lists the skills the caller's scopes reach, each tagged with its scopes,
    signed like the public card; an anonymous caller is refused as unauthenticated
    (401, A2A 1.0 §3.3.2), before the pipeline's authorize stage (which refused it
    403 on this deny-by-default node: it has no agent:read)."""
    from a2a.client.errors import A2AClientError

    keys = ApiKeyStore(tmp_path / "keys.json")
    reader, _ = keys.create("reader", scopes=["agent:read"], kind="user")
    node = make_node("ext", http_port=0, apikeys_file=tmp_path / "keys.json",
                     deny_by_default=True)  # fmt: skip

    @node.capability(id="test.open", scopes=["agent:read"])
    async def open_() -> str:
        return "open"

    async with node:
        http = httpx.AsyncClient(headers={"x-api-key": reader}, timeout=20)
        client = await client_for(node, "JSONRPC", httpx_client=http)
        anonymous = await client_for(node, "JSONRPC")
        try:
            card = await client.get_extended_agent_card(a2a.GetExtendedAgentCardRequest())
            with pytest.raises(A2AClientError, match="401"):
                await anonymous.get_extended_agent_card(a2a.GetExtendedAgentCardRequest())
        finally:
            await client.close()
            await anonymous.close()
            await http.aclose()
    assert [s.id for s in card.skills] == ["test.open"]
    assert "scope:agent:read" in card.skills[0].tags
    assert card.signatures


class _Counting:
    """An authenticator that counts its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def authenticate(self, ctx: Any, credentials: Any) -> Any:
        self.calls += 1
        return self.inner.authenticate(ctx, credentials)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_request_is_authenticated_once(node: Node, transport: str) -> None:
    """The door admits the caller, and the task's owner, the executor and the
    pipeline all use the context it admitted (they once authenticated it thrice)."""
    stage = node.pipeline.stages.authenticate
    counting = _Counting(stage.authenticator)
    stage.authenticator = counting
    client = await client_for(node, transport)
    try:
        before = counting.calls
        task = final_task(await events(client, ask("demo.echo", {"text": "once"})))
        assert task.status.state == DONE
        assert counting.calls - before == 1
    finally:
        await client.close()


async def test_a2a_streams_keep_to_their_address_share(make_node: Callable[..., Node]) -> None:
    """``SubscribeToTask`` streams count against ``grpc_max_streams_per_address`` as
    Health's ``Watch`` does: one address cannot hold the port with them (600 were
    held, and 2,400 refused every other caller)."""
    node = make_node("a2a-share", grpc_max_streams_per_address=3)
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        send = channel.unary_unary(
            "/lf.a2a.v1.A2AService/SendMessage",
            request_serializer=a2a.SendMessageRequest.SerializeToString,
            response_deserializer=a2a.SendMessageResponse.FromString,
        )
        message = a2a.Message(message_id="share", role=a2a.Role.ROLE_USER)
        message.parts.add(text="which skill?")  # none named: the task waits for input
        task = (await send(a2a.SendMessageRequest(message=message), timeout=10)).task
        assert task.status.state == a2a.TaskState.TASK_STATE_INPUT_REQUIRED
        subscribe = channel.unary_stream(
            "/lf.a2a.v1.A2AService/SubscribeToTask",
            request_serializer=a2a.SubscribeToTaskRequest.SerializeToString,
            response_deserializer=a2a.StreamResponse.FromString,
        )
        calls = [subscribe(a2a.SubscribeToTaskRequest(id=task.id), timeout=10) for _ in range(5)]
        outcomes: dict[str, int] = {}
        for call in calls:
            try:
                await call.read()
                outcome = "open"
            except grpc.aio.AioRpcError as err:
                outcome = err.code().name
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert outcomes == {"open": 3, "RESOURCE_EXHAUSTED": 2}, outcomes
        for call in calls:
            call.cancel()


# -- every method is a call of the pipeline ----------------------------------------------

METHOD = "lf.a2a.v1.A2AService/"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_every_method_leaves_an_audit_record(node: Node, transport: str) -> None:
    """GetTask, ListTasks, CancelTask and GetExtendedAgentCard run through the
    pipeline, as REST's GetStatus does: each leaves a record on door a2a naming the
    method, with its outcome (the SDK's own TaskNotFoundError too). They were only
    authenticated, and left none."""
    from a2a.utils.errors import A2AError

    from tests.conftest import recorded

    client = await client_for(node, transport)
    try:
        task = final_task(await events(client, ask("demo.echo", {"text": "r"})))
        seen = recorded(node)
        await client.get_task(a2a.GetTaskRequest(id=task.id))
        await client.list_tasks(a2a.ListTasksRequest())
        with pytest.raises(TaskNotFoundError):
            await client.get_task(a2a.GetTaskRequest(id="no-such-task"))
        with pytest.raises(A2AError):  # finished: not cancelable
            await client.cancel_task(a2a.CancelTaskRequest(id=task.id))
        with pytest.raises(A2AError, match=r"401|UNAUTHENTICATED|authenticated"):  # anonymous
            await client.get_extended_agent_card(a2a.GetExtendedAgentCardRequest())
    finally:
        await client.close()
    assert [(r.door, r.action, r.outcome) for r in seen] == [
        ("a2a", METHOD + "GetTask", "ok"),
        ("a2a", METHOD + "ListTasks", "ok"),
        ("a2a", METHOD + "GetTask", "not_found"),
        ("a2a", METHOD + "CancelTask", "failed_precondition"),
        ("a2a", METHOD + "GetExtendedAgentCard", "unauthorized"),
    ]
    assert seen[2].reason == "TASK_NOT_FOUND"
    assert {r.principal for r in seen} == {"anonymous"}


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_send_the_sdk_refuses_is_on_record_too(
    node: Node, transport: str, streaming: bool
) -> None:
    """From an attack: a send the SDK refused before any executor ran (to a task it
    does not hold, to one that has ended) left no record, where the same refusal of
    a GetTask is recorded. The executor's own refusals are tasks, on record as the
    skill's call; these are the SDK's errors, each now on record once (an ended
    task's: UnsupportedOperationError, A2A 1.0 §3.1.1, UNIMPLEMENTED by §5.4)."""
    from a2a.utils.errors import A2AError

    from tests.conftest import recorded

    client = await client_for(node, transport, streaming=streaming)
    try:
        task = final_task(await events(client, ask("demo.echo", {"text": "r"})))
        seen = recorded(node)
        for task_id in ("no-such-task", task.id):
            request = ask("demo.echo", {"text": "again"}, message_id=f"m-{task_id}")
            request.message.task_id = task_id
            with pytest.raises(A2AError):
                await events(client, request)
    finally:
        await client.close()
    method = METHOD + ("SendStreamingMessage" if streaming else "SendMessage")
    assert [(r.door, r.action, r.outcome, r.point) for r in seen] == [
        ("a2a", method, "not_found", "pre"),
        ("a2a", method, "not_implemented", "pre"),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_reads_are_rate_limited_as_any_call(
    make_node: Callable[..., Node], tmp_path: Path, transport: str
) -> None:
    """A caller past its rate is refused GetTask as it would be any call: 429 (a
    JSON-RPC error on /a2a) or RESOURCE_EXHAUSTED, RATE_LIMIT_PRINCIPAL, on record.
    30 quick GetTask calls were all answered on a node with a 5/s limit."""
    from a2a.client.errors import A2AClientError

    from tests.conftest import recorded

    keys = ApiKeyStore(tmp_path / "keys.json")
    key, _ = keys.create("reader", scopes=["agent:read", "agent:invoke"], kind="user")
    node = make_node("limited", http_port=0, apikeys_file=tmp_path / "keys.json",
                     rate_limit_per_principal="3/h")  # fmt: skip
    headers = {"x-api-key": key}
    async with node, httpx.AsyncClient(headers=headers, timeout=20) as http:
        if transport == "GRPC":

            def channel(target: str) -> grpc.aio.Channel:
                interceptor = _HeaderInterceptor(headers)
                return grpc.aio.insecure_channel(target, interceptors=[interceptor])

            client = await client_for(node, transport, grpc_channel_factory=channel)
        else:
            client = await client_for(node, transport, httpx_client=http)
        seen = recorded(node)
        try:
            for _ in range(3):  # 3 tokens: the 4th is refused
                with pytest.raises(TaskNotFoundError):
                    await client.get_task(a2a.GetTaskRequest(id="t-none"))
            with pytest.raises((A2AClientError, grpc.aio.AioRpcError)) as info:
                await client.get_task(a2a.GetTaskRequest(id="t-none"))
        finally:
            await client.close()
    text = str(info.value)
    assert "429" in text or "RESOURCE_EXHAUSTED" in text, text
    assert [r.outcome for r in seen] == ["not_found"] * 3 + ["rate_limit_exceeded"]
    assert seen[-1].reason == "RATE_LIMIT_PRINCIPAL"
    assert seen[-1].action == METHOD + "GetTask"


async def test_reading_tasks_needs_the_read_scope(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The pipeline's authorize stage: GetTask and ListTasks need agent:read (as the
    node's other listings), CancelTask agent:invoke; refused 403 / forbidden (on a
    deny-by-default node: every authenticated caller holds both otherwise)."""
    keys = ApiKeyStore(tmp_path / "keys.json")
    invoker, _ = keys.create("invoker", scopes=["agent:invoke"], kind="user")
    reader, _ = keys.create("reader", scopes=["agent:read"], kind="user")
    node = make_node("scoped", http_port=0, apikeys_file=tmp_path / "keys.json",
                     deny_by_default=True)  # fmt: skip
    rpc = {"jsonrpc": "2.0", "id": 1, "params": {"id": "t-none"}}
    async with node, httpx.AsyncClient(base_url=base(node), timeout=20) as http:
        v1 = {"A2A-Version": "1.0"}
        got = {
            (method, who): (await http.post(
                "/a2a", json={**rpc, "method": method}, headers={**v1, "x-api-key": key}
            )).status_code
            for method in ("GetTask", "CancelTask")
            for who, key in (("invoker", invoker), ("reader", reader))
        }  # fmt: skip
        rest = await http.get("/a2a/rest/tasks", headers={**v1, "x-api-key": invoker})
    assert got == {("GetTask", "invoker"): 403, ("GetTask", "reader"): 200,
                   ("CancelTask", "invoker"): 200, ("CancelTask", "reader"): 403}  # fmt: skip
    error = rest.json()["error"]  # AIP-193 (A2A 1.0 §11.6)
    assert (rest.status_code, error["code"], error["status"]) == (403, 403, "PERMISSION_DENIED")
    assert error["details"][0]["metadata"]["code"] == "forbidden"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_subscription_is_a_stream_of_the_pipeline(
    make_node: Callable[..., Node], transport: str
) -> None:
    """SubscribeToTask runs as a stream of the pipeline: its events go to the caller
    as they come (server-sent events, a gRPC stream), and its record is written when
    it ends."""
    from tests.conftest import recorded

    node = make_node("subscribed", http_port=0)
    gate = asyncio.Event()

    @node.capability(id="test.wait", description="waits until released")
    async def wait() -> str:
        await gate.wait()
        return "released"

    async with node:
        polling = await client_for(node, "JSONRPC", polling=True)
        client = await client_for(node, transport, streaming=True)
        try:
            task = final_task(await events(polling, ask("test.wait", {}, message_id="s1")))
            seen = recorded(node)
            stream = client.subscribe(a2a.SubscribeToTaskRequest(id=task.id))
            first = await anext(stream)  # the task as it is: waiting
            gate.set()
            rest = [event async for event in stream]
        finally:
            gate.set()
            await polling.close()
            await client.close()
    assert first.HasField("task")
    states = [e.status_update.status.state for e in rest if e.HasField("status_update")]
    assert states[-1] == DONE
    assert [(r.action, r.outcome) for r in seen if r.action.startswith(METHOD)] == [
        (METHOD + "SubscribeToTask", "ok")
    ]


def test_each_binding_names_the_method_its_record_names(node: Node) -> None:
    """HTTP+JSON paths (1.0's, 0.3's under v1/, a tenant's) and JSON-RPC names (1.0's,
    0.3's) are each A2A 1.0's method, the action the pipeline runs: on HTTP+JSON the
    method of the route the SDK's router serves the request with."""
    from aralnode.bridge._a2a_calls import METHODS, jsonrpc_method, rest_method

    assert node.parts.http is not None
    routes = node.parts.http.a2a.app.routes
    push = "pushNotificationConfigs"
    named = {
        ("/message:send", "POST"): ("SendMessage", {}),
        ("/v1/message:stream", "POST"): ("SendStreamingMessage", {}),
        ("/tasks", "GET"): ("ListTasks", {}),
        ("/tasks/t1", "GET"): ("GetTask", {"id": "t1"}),
        ("/tasks/t1", "HEAD"): ("GetTask", {"id": "t1"}),
        ("/v1/tasks/t1:cancel", "POST"): ("CancelTask", {"id": "t1"}),
        ("/tasks/t1:subscribe", "GET"): ("SubscribeToTask", {"id": "t1"}),
        (f"/tasks/t1/{push}", "POST"): ("CreateTaskPushNotificationConfig", {"id": "t1"}),
        (f"/tasks/t1/{push}", "GET"): ("ListTaskPushNotificationConfigs", {"id": "t1"}),
        (f"/tasks/t1/{push}/p", "DELETE"): (
            "DeleteTaskPushNotificationConfig", {"id": "t1", "pushNotificationConfigId": "p"}
        ),
        ("/extendedAgentCard", "GET"): ("GetExtendedAgentCard", {}),
        ("/v1/card", "GET"): ("GetExtendedAgentCard", {}),
        ("/elsewhere", "GET"): ("", {}),
        ("/tasks/t1", "PUT"): ("", {}),  # (no route serves it: 405)
        # As Starlette reads the path: the id runs to the last colon ...
        ("/tasks/a:b:cancel", "POST"): ("CancelTask", {"id": "a:b"}),
        # ... and a task may be called "tasks".
        (f"/tasks/tasks/{push}", "POST"): ("CreateTaskPushNotificationConfig", {"id": "tasks"}),
    }  # fmt: skip

    def scope(path: str, verb: str) -> dict[str, Any]:
        return {"type": "http", "path": "/a2a/rest" + path, "method": verb, "root_path": ""}

    assert {key: rest_method(routes, scope(*key)) for key in named} == named
    # A tenant's paths: the SDK mounts them before the prefix, so the door (/a2a/...)
    # sees only the tenant "a2a"; its id is checked too.
    tenant = {"type": "http", "path": "/a2a/a2a/rest/tasks/t1", "method": "GET"}
    assert rest_method(routes, tenant) == ("GetTask", {"id": "t1", "tenant": "a2a"})
    assert {m for m, _ in named.values()} - {""} <= METHODS
    assert jsonrpc_method("tasks/get") == jsonrpc_method("GetTask") == "GetTask"
    assert jsonrpc_method("agent/getAuthenticatedExtendedCard") == "GetExtendedAgentCard"
    assert jsonrpc_method("tasks/nothing") == ""
