"""The A2A client side: ``node.request(CARD_URL, skill, params)`` and
``aralnode call --a2a CARD_URL SKILL [JSON]`` reach an A2A agent that is not an
aralnode (one built from the a2a-sdk's server parts alone, here), its card's
signature checked; the send is governed and audited as any send of the node."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from a2a.helpers.proto_helpers import new_data_part, new_task_from_user_message, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import a2a_pb2
from a2a.utils.signing import create_agent_card_signer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.json_format import MessageToDict, MessageToJson
from jwcrypto import jwk
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aralnode import AralError, Node
from aralnode.core.governance import Decision, Direction, Rule, RuleEvaluator
from aralnode.store.audit import read_records

ARALNODE = str(Path(sys.executable).parent / "aralnode")


class Echo(AgentExecutor):
    """Answers with what it was sent: the skill its metadata named and its data."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        assert message is not None
        assert context.task_id
        assert context.context_id
        task = new_task_from_user_message(message)
        task.id, task.context_id = context.task_id, context.context_id
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        skill = MessageToDict(message.metadata).get("skill")
        data = [MessageToDict(p.data) for p in message.parts if p.HasField("data")]
        if skill == "refuse":
            note = new_text_message("not today", context.context_id, context.task_id)
            await updater.reject(note)
            return
        await updater.add_artifact([new_data_part({"skill": skill, "got": data})])
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


class SdkAgent:
    """The SDK's JSON-RPC server on loopback, with a card signed (or not) by a key
    of its own, its JWK set at ``/jwks.json``."""

    def __init__(self, *, signed: bool = True, jku: str = "", tamper: bool = False) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.card_url = f"{self.base}/.well-known/agent-card.json"
        card = a2a_pb2.AgentCard(
            name="sdk-echo",
            description="an A2A agent of the a2a-sdk alone",
            version="1",
            supported_interfaces=[
                a2a_pb2.AgentInterface(
                    url=f"{self.base}/rpc", protocol_binding="JSONRPC", protocol_version="1.0"
                )
            ],
            capabilities=a2a_pb2.AgentCapabilities(streaming=False),
            default_input_modes=["application/json"],
            default_output_modes=["application/json"],
            skills=[a2a_pb2.AgentSkill(id="echo", name="echo", description="echo", tags=["t"])],
        )
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if signed:
            header = {"alg": "ES256", "kid": "k1", "jku": jku or f"{self.base}/jwks.json"}
            create_agent_card_signer(pem, header)(card)  # type: ignore[arg-type]
        if tamper:
            card.name = "mallory"
        public = jwk.JWK.from_pem(pem).export_public(as_dict=True) | {"kid": "k1"}
        handler = DefaultRequestHandler(
            agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card
        )
        card_json = MessageToJson(card, indent=None)

        async def card_route(_: Request) -> Response:
            return Response(card_json, media_type="application/json")

        async def jwks_route(_: Request) -> Response:
            return JSONResponse({"keys": [public]})

        self.app = Starlette(
            routes=[
                Route("/.well-known/agent-card.json", card_route),
                Route("/jwks.json", jwks_route),
                *create_jsonrpc_routes(handler, "/rpc"),
            ]
        )
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))

    async def __aenter__(self) -> SdkAgent:
        # The socket listens already: a client's connection waits in its backlog.
        self.task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        return self

    async def __aexit__(self, *_: object) -> None:
        self.server.should_exit = True
        await self.task


@pytest.fixture
async def agent() -> AsyncIterator[SdkAgent]:
    async with SdkAgent() as a:
        yield a


async def test_a_node_calls_an_a2a_agent_by_its_card(
    make_node: Callable[..., Node], agent: SdkAgent
) -> None:
    node = make_node("caller")
    async with node:
        got = await node.request(agent.card_url, "echo", {"text": "hi", "n": 2})
    assert got == {"skill": "echo", "got": [{"text": "hi", "n": 2.0}]}


async def test_the_send_is_governed_and_audited(
    make_node: Callable[..., Node], agent: SdkAgent
) -> None:
    def outgoing(action: Any) -> bool:
        return bool(action.direction == Direction.SEND)

    policy = RuleEvaluator(
        [Rule("no-echo-out", outgoing, Decision.BLOCK, capabilities=frozenset({"echo"}))]
    )
    node = make_node("governed", governance=policy, audit=True)
    async with node:
        with pytest.raises(AralError) as info:
            await node.request(agent.card_url, "echo", {"text": "hi"})
        data_dir = node.config.resolved_data_dir
    assert info.value.reason == "GOVERNANCE_BLOCK"
    records = [r for _, r in read_records(data_dir / "audit") if r.peer == agent.card_url]
    assert [(r.action, r.direction, r.decision) for r in records] == [("echo", "send", "block")]


async def test_a_rejected_task_is_a_refusal(
    make_node: Callable[..., Node], agent: SdkAgent
) -> None:
    node = make_node("caller")
    async with node:
        with pytest.raises(AralError) as info:
            await node.request(agent.card_url, "refuse", {})
    assert info.value.reason == "A2A_REJECTED"
    assert "not today" in info.value.message
    assert info.value.details["state"] == "TASK_STATE_REJECTED"


@pytest.mark.parametrize(
    "agent_kw",
    [
        pytest.param({"tamper": True}, id="card-changed-after-signing"),
        pytest.param({"jku": "http://127.0.0.2:1/jwks.json"}, id="key-set-on-another-origin"),
    ],
)
async def test_a_card_whose_signature_does_not_verify_is_refused(
    make_node: Callable[..., Node], agent_kw: dict[str, Any]
) -> None:
    node = make_node("caller")
    async with SdkAgent(**agent_kw) as bad, node:
        with pytest.raises(AralError) as info:
            await node.request(bad.card_url, "echo", {})
    assert info.value.reason == "CARD_SIGNATURE_INVALID"


async def test_an_unsigned_card_is_taken(make_node: Callable[..., Node]) -> None:
    node = make_node("caller")
    async with SdkAgent(signed=False) as plain, node:
        got = await node.request(plain.card_url, "echo", "just text")
        # An origin alone names the card's well-known place, as the SDKs' resolvers do.
        by_origin = await node.request(plain.base + "/", "echo", "just text")
    assert got == by_origin == {"skill": "echo", "got": []}


async def test_one_aralnode_calls_another_over_a2a(make_node: Callable[..., Node]) -> None:
    """Through the other's A2A door: the card it signs verifies, the skill is its
    capability, and its refusal comes back with its reason."""
    policy = RuleEvaluator(
        [Rule("no-convert", None, Decision.BLOCK, capabilities=frozenset({"demo.convert"}))]
    )
    server = make_node("a2a-server", http_port=0, governance=policy)
    client = make_node("a2a-client")
    async with server, client:
        url = f"http://127.0.0.1:{server.http_port}/.well-known/agent-card.json"
        got = await client.request(url, "demo.echo", {"text": "x", "times": 2})
        total = await client.request(url, "demo.add", {"a": 2, "b": 40})
        assert (total, type(total)) == (42, int)  # a whole number comes back an int
        with pytest.raises(AralError) as info:
            await client.request(url, "demo.convert", {"value": 1})
    assert got == {"text": "x", "echo": ["x", "x"]}
    assert info.value.reason == "GOVERNANCE_BLOCK"


async def test_the_cli_calls_an_a2a_agent(agent: SdkAgent, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        ARALNODE, "call", "--a2a", agent.card_url, "echo", '{"text": "cli"}', "--json",
        "--data-dir", str(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"result": {"skill": "echo", "got": [{"text": "cli"}]}}
    proc = await asyncio.create_subprocess_exec(
        ARALNODE, "call", "--a2a", agent.card_url, "refuse", "--data-dir", str(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode != 0
    assert b"A2A_REJECTED" in err
