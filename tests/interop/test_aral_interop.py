"""PRO-026 cross-implementation test: an independent ARAL client (``aral_client``,
JOSE + HTTP, nothing of aralnode imported) against a node run as its users run it,
the ``aralnode`` command in a process of its own."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.interop.aral_client import AralClient, detached, request_message

ROOT = Path(__file__).resolve().parents[2]
ARALNODE = str(Path(sys.executable).parent / "aralnode")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the node's agent id, its HTTP base URL)."""
    data_dir = tmp_path_factory.mktemp("interop-node")
    proc = subprocess.Popen(
        [
            ARALNODE, "run", "--name", "interop", "--host", "127.0.0.1",
            "--grpc-port", "0", "--http-port", "0", "--discovery", "none",
            "--data-dir", str(data_dir), "--load", str(ROOT / "examples" / "demo.py"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    started = re.search(r"aralnode interop \((\w+)\) serving", lines[0])
    rest = re.search(r"REST: (http://\S+)/docs", lines[2])
    failed = (lines, proc.stderr.read() if proc.poll() is not None else "")
    assert started, failed
    assert rest, failed
    try:
        yield started.group(1), rest.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


@pytest.fixture
async def client(node: tuple[str, str]) -> AsyncIterator[AralClient]:
    async with httpx.AsyncClient(base_url=node[1], timeout=10) as http:
        yield AralClient(http)


async def test_a_signed_request_gets_a_signed_answer(
    node: tuple[str, str], client: AralClient
) -> None:
    agent, _ = node
    reply = await client.send(agent, "demo.echo", {"text": "from elsewhere", "times": 2})
    assert reply.status == 200, reply.message
    assert reply.signer == agent  # its JWS verified with the key its kid names
    header, body = reply.message["header"], reply.message["body"]
    assert header["sender"] == agent
    assert header["recipient"] == client.agent_id
    assert header["version"] == "1.0"
    assert header["contentType"] == "application/json"
    assert body == {
        "type": "response",
        "action": "demo.echo",
        "result": {"text": "from elsewhere", "echo": ["from elsewhere", "from elsewhere"]},
    }


async def test_the_answer_correlates_with_the_request(
    node: tuple[str, str], client: AralClient
) -> None:
    agent, _ = node
    message = request_message(client.agent_id, agent, "demo.add", {"a": 2, "b": 40})
    body = json.dumps(message).encode()
    reply = await client.post(agent, body, detached(client.key, body))
    assert reply.status == 200
    assert reply.signer == agent
    assert reply.message["header"]["correlationId"] == message["header"]["messageId"]
    assert reply.message["body"]["result"] == 42  # an integer stays one


async def test_a_tampered_message_is_refused(node: tuple[str, str], client: AralClient) -> None:
    agent, _ = node
    body = json.dumps(request_message(client.agent_id, agent, "demo.echo", {"text": "a"})).encode()
    signature = detached(client.key, body)
    tampered = body.replace(b'"text": "a"', b'"text": "b"')
    assert tampered != body
    reply = await client.post(agent, tampered, signature)
    assert reply.status == 401
    assert reply.message["error"]["code"] == "unauthorized"
    assert reply.message["error"]["reason"] == "SIGNATURE_INVALID"
    # Re-serialized with other whitespace: the signature covers bytes, not meaning.
    reformatted = json.dumps(json.loads(body), indent=1).encode()
    reply = await client.post(agent, reformatted, signature)
    assert reply.status == 401
    assert reply.message["error"]["reason"] == "SIGNATURE_INVALID"


async def test_a_message_signed_by_someone_else_or_not_at_all_is_refused(
    node: tuple[str, str], client: AralClient
) -> None:
    agent, _ = node
    http = client.http
    other = AralClient(http)
    # Signed by another key, but claiming to be this client.
    body = json.dumps(request_message(client.agent_id, agent, "demo.echo", {"text": "x"})).encode()
    reply = await client.post(agent, body, detached(other.key, body))
    # (The signature verified: the refusal is a message signed by the node.)
    assert reply.status == 401
    assert reply.signer == agent
    assert reply.message["body"]["error"]["reason"] == "SENDER_MISMATCH"
    reply = await client.post(agent, body, None)
    assert reply.status == 401
    assert reply.message["error"]["reason"] == "SIGNATURE_MISSING"
    assert reply.signer == ""


async def test_a_replayed_message_is_refused(node: tuple[str, str], client: AralClient) -> None:
    agent, _ = node
    body = json.dumps(request_message(client.agent_id, agent, "demo.echo", {"text": "x"})).encode()
    signature = detached(client.key, body)
    first = await client.post(agent, body, signature)
    assert first.status == 200
    again = await client.post(agent, body, signature)
    assert again.status == 401
    assert again.message["body"]["error"]["reason"] == "REPLAY_DETECTED"


async def test_a_refused_call_is_a_signed_error_message(
    node: tuple[str, str], client: AralClient
) -> None:
    agent, _ = node
    reply = await client.send(agent, "demo.nothing-here", {})
    assert reply.status == 404
    assert reply.signer == agent
    assert reply.message["body"]["error"]["code"] == "not_found"


async def test_the_rest_surface(node: tuple[str, str], client: AralClient) -> None:
    agent, _ = node
    http = client.http
    r = await http.get(
        "/api/v1/agents/interop/status", headers={"X-Trace-Id": "trace-1", "X-API-Version": "1.0"}
    )
    assert r.status_code == 200
    assert r.headers["X-Trace-Id"] == "trace-1"
    assert r.headers["X-API-Version"] == "1.0"
    assert "1.0" in r.headers["X-Supported-Versions"].split(", ")
    status = r.json()
    assert status["agent_id"] == agent
    assert status["status"] == "healthy"
    assert "demo.echo" in status["capabilities"]
    r = await http.get(f"/api/v1/agents/{agent}/capabilities")
    caps = {c["id"]: c for c in r.json()["capabilities"]}
    assert caps["demo.echo"]["input_schema"]["properties"]["text"]["type"] == "string"
    r = await http.post(
        f"/api/v1/agents/{agent}/invoke",
        json={"capability": "demo.echo", "parameters": {"text": "rest"}},
        headers={"X-Request-Id": "req-7"},
    )
    answer = r.json()
    assert r.status_code == 200
    assert r.headers["X-Request-Id"] == "req-7"
    assert answer["success"] is True
    assert answer["result"]["text"] == "rest"
    assert isinstance(answer["execution_time_ms"], float | int)
    r = await http.post(
        f"/api/v1/agents/{agent}/capabilities/demo.echo", json={"parameters": {"text": "cap"}}
    )
    assert r.json()["result"]["echo"] == ["cap"]
    r = await http.get("/api/v1/agents/interop/status", headers={"X-API-Version": "2.0"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_version"
    r = await http.get("/api/v1/agents/somebody-else/status")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
