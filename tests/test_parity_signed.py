"""One scenario over every door that takes a signed message: a forged and a replayed
message, and a well-signed one whose parameters hold a member twice, are refused
alike, and each is in the node's audit log once, though no stage of the pipeline ever
ran for it.

Doors (each driven as a peer or agent would, frame by frame where it must be):

- ``grpc-invoke``: a signed ``ARALMessage`` in ``aral.v1.AgentNode/Invoke``, from a
  key a handshake pinned;
- ``aral-message``: ``POST /api/v1/agents/{id}/messages`` with a detached JWS, by the
  independent client of ``tests/interop`` (jwcrypto);
- ``channel``: a verified peer's open A2A channel, written frame by frame.

Every refusal names the same reason on every door and is audited at the
pre-execution point under the door's own label -- never under the action the
unverified message names, which its sender chose. The log then verifies, and holds
exactly the records the scenario made.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Protocol

import httpx
import pytest

from aralnode import AralError, Node
from aralnode import _proto as pb
from aralnode.core.channel_wire import encode_batch
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.envelope import build_content, seal
from aralnode.core.identity import Identity
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify
from tests.interop.aral_client import AralClient, detached, request_message
from tests.test_channel_bad_input import RawStream, message, opened, reason_of, verified_identity
from tests.test_signed_invoke import request, send

# What the unverified messages ask for: never what their refusals are recorded as.
ASKED = "demo.secret"
# Parameters with a member twice (a parser keeps one of them, silently).
TWICE = b'{"text": "x", "text": "y"}'


def _flipped(signature: bytes) -> bytes:
    value = bytearray(signature)
    value[10] ^= 0x01
    return bytes(value)


class SignedDoor(Protocol):
    name: str
    door: str  # the audit record's door
    label: str  # the audit record's action for a refusal before the pipeline
    good_action: str  # what the good message is recorded as, by the pipeline

    async def forged(self) -> str:
        """Send a message whose signature does not verify; the refusal's reason."""

    async def replayed(self) -> str:
        """Send a good message, then the same message id again; the second's reason."""

    async def twice(self) -> str:
        """Send a well-signed message whose parameters hold a member twice; the reason."""


class GrpcInvoke:
    name, door, label, good_action = "grpc-invoke", "grpc", "aral.v1.AgentNode/Invoke", "demo.add"

    def __init__(self, node: Node, me: Identity) -> None:
        self.node, self.me = node, me

    async def _reason(self, msg: pb.ARALMessage) -> str:
        try:
            await send(self.node, msg)
        except AralError as exc:
            return exc.reason
        return ""

    async def forged(self) -> str:
        msg = request(self.me, self.node.node_id, action=ASKED)
        msg.signature.value = _flipped(msg.signature.value)
        return await self._reason(msg)

    async def replayed(self) -> str:
        msg = request(self.me, self.node.node_id)
        assert await self._reason(msg) == ""
        return await self._reason(msg)

    async def twice(self) -> str:
        content = build_content(
            sender=self.me.node_id,
            recipient=self.node.node_id,
            body=pb.Body(type=pb.MessageType.MESSAGE_TYPE_REQUEST, action=ASKED, parameters=TWICE),
            clock=SYSTEM_CLOCK,
        )
        return await self._reason(seal(content, self.me))


class AralMessage:
    name, door, label, good_action = "aral-message", "rest", "aral.api/message", "demo.echo"

    def __init__(self, node: Node, http: httpx.AsyncClient) -> None:
        self.to, self.client = node.node_id, AralClient(http)

    async def _reason(self, body: bytes, token: str) -> str:
        reply = await self.client.post(self.to, body, token)
        if reply.status == 200:
            return ""
        error = reply.message.get("error") or reply.message["body"]["error"]
        return str(error["reason"])

    def _body(self, action: str) -> bytes:
        message = request_message(self.client.agent_id, self.to, action, {"text": "x"})
        return json.dumps(message).encode()

    async def forged(self) -> str:
        body = self._body(ASKED)
        protected, _, signature = detached(self.client.key, body).split(".")
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        flipped = base64.urlsafe_b64encode(_flipped(raw)).rstrip(b"=").decode()
        return await self._reason(body, f"{protected}..{flipped}")

    async def replayed(self) -> str:
        body = self._body("demo.echo")
        assert await self._reason(body, detached(self.client.key, body)) == ""
        # A new signature over the same message: replay is judged on (sender, id).
        return await self._reason(body, detached(self.client.key, body))

    async def twice(self) -> str:
        body = self._body(ASKED).replace(b'{"text": "x"}', TWICE)
        assert TWICE in body
        return await self._reason(body, detached(self.client.key, body))


class Channel:
    name, door, label, good_action = "channel", "channel", "aral.v1.AgentNode/Channel", "evt"

    def __init__(self, node: Node, me: Identity, stream: RawStream) -> None:
        self.node, self.me, self.stream = node, me, stream
        self.seq = 0

    async def _send(self, msg: pb.ARALMessage) -> None:
        """``msg`` (made for the next seq), alone in a batch."""
        await self.stream.send_sealed(encode_batch(self.seq, [msg.SerializeToString()]))

    async def _refused(self, msg: pb.ARALMessage) -> str:
        """The reason of the error the receiver reports for ``msg``. (An ack of its
        seq may come first: every message is acked, delivered or not.)"""
        await self._send(msg)
        (error,) = (await self.stream.next_of("errors")).errors.errors
        assert error.seq == self.seq
        return reason_of(error)

    async def _accepted(self, msg: pb.ARALMessage) -> None:
        """Send ``msg``; return once it is acked, with no error reported."""
        await self._send(msg)
        async for frame in self.stream.frames():
            assert frame.WhichOneof("kind") != "errors", frame
            if frame.WhichOneof("kind") == "ack" and frame.ack.seq >= self.seq:
                return
        raise AssertionError("the channel closed")

    def _next(
        self, event: str, message_id: str | None = None, parameters: bytes | None = None
    ) -> pb.ARALMessage:
        self.seq += 1
        return message(self.me, self.node, event, message_id, seq=self.seq, parameters=parameters)

    async def forged(self) -> str:
        msg = self._next(ASKED)
        msg.signature.value = _flipped(msg.signature.value)
        return await self._refused(msg)

    async def replayed(self) -> str:
        first = self._next("evt", message_id=str(uuid.uuid4()))
        await self._accepted(first)
        content = pb.MessageContent.FromString(first.content)
        # The same id at the next position, signed anew: a replay all the same.
        return await self._refused(self._next("evt", message_id=content.header.message_id))

    async def twice(self) -> str:
        return await self._refused(self._next(ASKED, parameters=TWICE))


CASES = [
    pytest.param("forged", "SIGNATURE_INVALID", id="forged-signature"),
    pytest.param("replayed", "REPLAY_DETECTED", id="replayed-message"),
    pytest.param("twice", "DUPLICATE_PARAMETER", id="member-twice"),
]


@pytest.mark.parametrize(("case", "reason"), CASES)
async def test_every_signed_door_refuses_and_audits_alike(
    make_node: Callable[..., Node], case: str, reason: str
) -> None:
    node = make_node("signed-parity", http_port=0, audit=True, keepalive_ms=2000)
    answers: dict[str, str] = {}
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        pinned = await verified_identity(node)
        peer, stream = await opened(node)
        try:
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                doors: list[SignedDoor] = [
                    GrpcInvoke(node, pinned),
                    AralMessage(node, http),
                    Channel(node, peer, stream),
                ]
                for door in doors:
                    answers[door.name] = await getattr(door, case)()
        finally:
            await stream.aclose()
        # Every door answered with the same reason.
        assert answers == dict.fromkeys(answers, reason), answers
    directory = node.config.resolved_data_dir / "audit"
    report = verify(directory, node.identity.public_key)
    assert report.problem is None, report.problem
    records = [record for _, record in read_records(directory)]
    refused = [r for r in records if r.point == "pre"]
    # One record a refusal, each under its door's own label, with the same outcome.
    assert [(r.door, r.action, r.reason) for r in refused] == [
        (d.door, d.label, reason) for d in doors
    ]
    assert len({r.outcome for r in refused}) == 1, refused
    assert all(r.trace_id for r in refused)
    assert not any(r.action == ASKED for r in records)
    if case == "replayed":
        # The good message before each replay went through the pipeline, as itself.
        served = [(r.door, r.action) for r in records if r.point != "pre" and r.door != "node"]
        for d in doors:
            assert served.count((d.door, d.good_action)) == 1, (d.name, served)
