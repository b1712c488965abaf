"""Calling an A2A agent by its Agent Card URL (issue 17's client side).

``call`` fetches the card (bounded in size and time, no redirects), checks its
signature when it carries one (A2A §8.4, with the a2a-sdk's own verifier: a JWS over
the card's RFC 8785 form, its key from the ``jku`` JWK set, which must be served
from the card's own origin, so a card cannot name a key of its own choosing
elsewhere), then sends one message with the official a2a-sdk client over the first
interface the card offers that the client speaks (JSON-RPC, HTTP+JSON or gRPC), and
waits for the task to end.

The message names the skill as aralnode's A2A door reads it (``metadata.skill``) and
carries the parameters as its one data part (a text part for a string); a
non-aralnode agent reads what it reads of that. The answer: the artifacts' one data
part as JSON, else their text joined; a task that ends otherwise raises
(``REJECTED``/``AUTH_REQUIRED``/``INPUT_REQUIRED``: ``FailedPrecondition``,
``FAILED``: ``Aborted``, ``CANCELED``: ``Cancelled``), with the agent's reason.

Governance and audit are the caller's (``aralnode._interop.request_a2a`` runs this
as a send of the node's pipeline).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urljoin, urlsplit

import grpc
import httpx
from google.protobuf import json_format

from aralnode.core import codec, jws
from aralnode.core.errors import (
    Aborted,
    AralError,
    Cancelled,
    FailedPrecondition,
    InvalidRequest,
    MessageTooLarge,
    SignatureInvalid,
    Unavailable,
)

MAX_CARD_BYTES = 256 * 1024
MAX_JWKS_BYTES = 64 * 1024
MAX_JKUS = 4  # key sets fetched for one card (one per signature, at most)
ALGORITHMS = ["ES256", "EdDSA", "RS256", "PS256"]
_STOPPED = {
    "TASK_STATE_REJECTED": (FailedPrecondition, "A2A_REJECTED"),
    "TASK_STATE_AUTH_REQUIRED": (FailedPrecondition, "A2A_AUTH_REQUIRED"),
    "TASK_STATE_INPUT_REQUIRED": (FailedPrecondition, "A2A_INPUT_REQUIRED"),
    "TASK_STATE_FAILED": (Aborted, "A2A_FAILED"),
    "TASK_STATE_CANCELED": (Cancelled, "A2A_CANCELED"),
}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


async def _get_json(http: httpx.AsyncClient, url: str, limit: int, what: str) -> Any:
    """GET ``url`` as JSON, at most ``limit`` bytes (``Unavailable``/``InvalidRequest``)."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidRequest(f"{what} URL must be http or https: {url[:200]}")
    try:
        async with http.stream("GET", url, headers={"accept": "application/json"}) as r:
            if r.status_code != 200:
                raise Unavailable(f"{what} at {url[:200]}: HTTP {r.status_code}")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise MessageTooLarge(f"{what} at {url[:200]} is over {limit} bytes")
    except httpx.HTTPError as exc:
        raise Unavailable(f"{what} at {url[:200]}: {type(exc).__name__}: {exc}") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidRequest(f"{what} at {url[:200]} is not JSON") from None


WELL_KNOWN_CARD = "/.well-known/agent-card.json"


def card_location(url: str) -> str:
    """``url``, or the card's well-known place on it when it names an origin only
    (``https://agent.example`` -> ``https://agent.example/.well-known/agent-card.json``,
    as the A2A specification puts it and the SDKs' card resolvers look)."""
    parts = urlsplit(url)
    if parts.path in ("", "/") and not parts.query and not parts.fragment:
        return url.rstrip("/") + WELL_KNOWN_CARD
    return url


async def fetch_card(http: httpx.AsyncClient, url: str) -> Any:
    """The card at ``url`` (``card_location``) as an ``a2a.types.AgentCard``, its
    signature checked when it is signed (``SignatureInvalid`` when none of its
    signatures verifies)."""
    from a2a.types import a2a_pb2  # noqa: PLC0415 - the SDK loads only when used
    from a2a.utils.signing import SignatureVerificationError, create_signature_verifier  # noqa: PLC0415
    from jwt import PyJWK  # noqa: PLC0415
    from jwt.exceptions import PyJWKError  # noqa: PLC0415

    url = card_location(url)
    raw = await _get_json(http, url, MAX_CARD_BYTES, "agent card")
    if not isinstance(raw, dict):
        raise InvalidRequest(f"the agent card at {url[:200]} is not a JSON object")
    card = a2a_pb2.AgentCard()
    try:
        json_format.ParseDict(raw, card, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidRequest(f"the agent card at {url[:200]} is not a card: {exc}") from None
    if not card.signatures:
        return card
    keys: dict[tuple[str, str], Any] = {}
    for jku in _key_sets(card, url):
        jwks = await _get_json(http, jku, MAX_JWKS_BYTES, "JWK set")
        for key in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            if isinstance(key, dict) and isinstance(key.get("kid"), str):
                try:
                    keys[(jku, key["kid"])] = PyJWK(key)
                except PyJWKError:
                    continue

    def key_for(kid: str | None, jku: str | None) -> Any:
        found = keys.get((jku or "", kid or ""))
        if found is None:
            raise PyJWKError(f"no key {kid!r} at {jku!r}")
        return found

    try:
        create_signature_verifier(key_for, ALGORITHMS)(card)
    except SignatureVerificationError as exc:
        raise SignatureInvalid(
            f"the agent card at {url[:200]} is signed, but no signature verifies: {exc}",
            reason="CARD_SIGNATURE_INVALID",
        ) from None
    return card


def _key_sets(card: Any, card_url: str) -> list[str]:
    """The ``jku`` URLs the card's signatures name, resolved against the card's URL
    and kept only when on the card's origin."""
    found: list[str] = []
    for signature in card.signatures[:MAX_JKUS]:
        try:
            header = json.loads(jws.unb64url(signature.protected))
        except (SignatureInvalid, ValueError, UnicodeDecodeError):
            continue
        jku = header.get("jku") if isinstance(header, dict) else None
        if not isinstance(jku, str):
            continue
        jku = urljoin(card_url, jku)
        if _origin(jku) == _origin(card_url) and jku not in found:
            found.append(jku)
    return found


def _secure_channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())


def _message(skill: str, params: Any) -> Any:
    from a2a.helpers.proto_helpers import new_data_part, new_text_part  # noqa: PLC0415
    from a2a.types import a2a_pb2  # noqa: PLC0415

    message = a2a_pb2.Message(message_id=uuid.uuid4().hex, role=a2a_pb2.Role.ROLE_USER)
    if skill:
        message.metadata.update({"skill": skill})
    part = new_text_part(params) if isinstance(params, str) else new_data_part(params or {})
    message.parts.append(part)
    return message


def result_of(parts: Any) -> Any:
    """One data part as JSON, else the text parts joined. (A data part is a
    ``google.protobuf.Value``: its numbers are doubles, and a whole one comes back
    as ``int``, as a node's own results do: ``codec.from_value``.)"""
    data = [p.data for p in parts if p.HasField("data")]
    if len(data) == 1:
        return codec.from_value(data[0])
    if data:
        return [codec.from_value(d) for d in data]
    return "".join(p.text for p in parts if p.HasField("text"))


def _outcome(task: Any) -> Any:
    from a2a.types import a2a_pb2  # noqa: PLC0415

    state = a2a_pb2.TaskState.Name(task.status.state)
    if state == "TASK_STATE_COMPLETED":
        return result_of([p for a in task.artifacts for p in a.parts])
    error, reason = _STOPPED.get(state, (Aborted, "A2A_" + state.removeprefix("TASK_STATE_")))
    said = json_format.MessageToDict(task.status.message.metadata)
    text = result_of(task.status.message.parts) if task.status.message.parts else ""
    raise error(
        f"the A2A agent ended task {task.id} as {state}: {str(text)[:500] or 'no reason given'}",
        reason=str(said.get("reason") or reason)[:64],
        details={"task_id": task.id, "state": state, "code": said.get("code", "")},
    )


async def call(card_url: str, skill: str, params: Any, *, timeout: float | None = 30.0) -> Any:
    """Send ``params`` for ``skill`` to the A2A agent whose card is at ``card_url``;
    its result (see the module docstring)."""
    from a2a.client import ClientConfig, create_client  # noqa: PLC0415
    from a2a.types import a2a_pb2  # noqa: PLC0415

    card_url = card_location(card_url)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        card = await fetch_card(http, card_url)
        secure = urlsplit(card_url).scheme == "https"
        config = ClientConfig(
            streaming=False,
            httpx_client=http,
            supported_protocol_bindings=["JSONRPC", "HTTP+JSON", "GRPC"],
            grpc_channel_factory=_secure_channel if secure else grpc.aio.insecure_channel,
        )
        try:
            client = await create_client(card, config)
        except Exception as exc:  # the SDK's own: no interface it speaks
            raise Unavailable(f"no A2A interface of {card_url[:200]} to speak: {exc}") from None
        last: Any = None
        try:
            request = a2a_pb2.SendMessageRequest(message=_message(skill, params))
            async for event in client.send_message(request):
                last = event
        except AralError:
            raise
        except Exception as exc:
            raise Unavailable(
                f"A2A call to {card_url[:200]} failed: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            await client.close()
    if last is None:
        raise Unavailable(f"the A2A agent at {card_url[:200]} answered nothing")
    if last.HasField("message"):
        return result_of(last.message.parts)
    return _outcome(last.task)


__all__ = ["WELL_KNOWN_CARD", "call", "card_location", "fetch_card", "result_of"]
