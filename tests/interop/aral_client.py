"""An ARAL client written from the seeds alone (PRO-026): JOSE (jwcrypto) and HTTP.

Nothing of aralnode is imported here, on purpose: this is what another
implementation, in any language, would write from the message format (PRO-001's
``ARALMessage``) and the REST surface (PRO-024/025) with a JOSE library of its own:

- the agent's id is the lower-case base32 (RFC 4648) of the first 20 bytes of the
  SHA-256 of its public key's DER SubjectPublicKeyInfo;
- a message is JSON ``{"header": {...}, "body": {...}}``, POSTed to
  ``/api/v1/agents/{agent_id}/messages``;
- its signature is a compact JWS with a detached payload (RFC 7515 appendix F) in
  ``X-ARAL-Signature``, over the exact bytes of the HTTP body, ES256, the protected
  header naming the key (``kid``, the sender's id) and carrying it (``jwk``).

The answer is a message of the same form, signed the same way by the agent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jws

SIGNATURE = "X-ARAL-Signature"


def agent_id_of(key: jwk.JWK) -> str:
    """The ARAL agent id a public key stands for (see the module docstring)."""
    public = serialization.load_pem_public_key(key.export_to_pem())
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(spki).digest()[:20]).decode().lower()


def detached(key: jwk.JWK, payload: bytes) -> str:
    """A compact JWS over ``payload`` with the payload segment left out."""
    header = {"alg": "ES256", "kid": agent_id_of(key), "jwk": json.loads(key.export_public())}
    token = jws.JWS(payload)
    token.add_signature(key, None, json.dumps(header))
    protected, _, signature = token.serialize(compact=True).split(".")
    return f"{protected}..{signature}"


def verify_detached(token: str, payload: bytes) -> str:
    """The signer's id if ``token`` verifies over ``payload`` with the key it carries
    and that key is the one its ``kid`` names; raises otherwise."""
    protected, empty, signature = token.split(".")
    assert empty == "", "the payload must be detached"
    header = json.loads(base64.urlsafe_b64decode(protected + "=" * (-len(protected) % 4)))
    key = jwk.JWK(**header["jwk"])
    if agent_id_of(key) != header["kid"]:
        raise ValueError("the key in the JWS is not the one its kid names")
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    checker = jws.JWS()
    checker.deserialize(f"{protected}.{body}.{signature}")
    checker.verify(key, alg="ES256")
    return str(header["kid"])


def request_message(
    sender: str, recipient: str, action: str, parameters: dict[str, Any], **header: Any
) -> dict[str, Any]:
    """A request ``ARALMessage`` as the seed defines it."""
    head = {
        "version": "1.0",
        "messageId": str(uuid.uuid4()),
        "timestamp": int(time.time() * 1000),
        "sender": sender,
        "recipient": recipient,
        "contentType": "application/json",
        **header,
    }
    return {"header": head, "body": {"type": "request", "action": action, "parameters": parameters}}


@dataclass
class Reply:
    status: int
    message: dict[str, Any]
    signer: str  # "" when the answer carried no signature (a refusal before verifying)


class AralClient:
    """One agent (its own P-256 key) talking to ARAL agents over HTTP."""

    def __init__(self, http: httpx.AsyncClient, key: jwk.JWK | None = None) -> None:
        self.http = http
        self.key = key or jwk.JWK.generate(kty="EC", crv="P-256")
        self.agent_id = agent_id_of(self.key)

    async def post(self, agent: str, body: bytes, signature: str | None) -> Reply:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers[SIGNATURE] = signature
        r = await self.http.post(f"/api/v1/agents/{agent}/messages", content=body, headers=headers)
        token = r.headers.get(SIGNATURE)
        signer = verify_detached(token, r.content) if token else ""
        return Reply(r.status_code, r.json(), signer)

    async def send(self, agent: str, action: str, parameters: dict[str, Any]) -> Reply:
        """Sign a request to ``agent`` and post it; its reply, signature checked."""
        body = json.dumps(request_message(self.agent_id, agent, action, parameters)).encode()
        return await self.post(agent, body, detached(self.key, body))
