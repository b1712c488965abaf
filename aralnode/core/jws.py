"""Compact JWS (RFC 7515) made with the node key, and RFC 8785 canonical JSON.

What A2A signs with it: the Agent Card (A2A §8.4: a detached JWS over the card's
RFC 8785 canonical form without its ``signatures``), and ARAL messages in JSON (a
JWS over the exact body bytes). The header names the key: ``kid`` is the node id
(the key's hash, ``aralnode.core.identity``), and ``jwk`` may carry the public key
for a first contact; a verifier checks that the key it uses hashes to ``kid``.

Only asymmetric algorithms exist here (``ES256``, and ``EdDSA`` for Ed25519 node
keys): ``alg`` is read from the protected header but must match the key's own
algorithm, so "none" or an HMAC with a public key as secret is never accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import rfc8785

from aralnode.core.errors import SignatureInvalid
from aralnode.core.identity import Identity, KeyAlgorithm, PublicKey

_ALG = {KeyAlgorithm.ES256: "ES256", KeyAlgorithm.ED25519: "EdDSA"}
MAX_HEADER_BYTES = 8192  # a protected header larger than this is refused unparsed


def canonical(value: Any) -> bytes:
    """``value`` as RFC 8785 (JCS) canonical JSON bytes."""
    return rfc8785.dumps(value)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Base64url without padding, strictly (padding or other alphabets refused)."""
    if "=" in text or "+" in text or "/" in text:
        raise SignatureInvalid("JWS segment is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise SignatureInvalid("JWS segment is not base64url") from None


def algorithm_of(identity: Identity) -> str:
    return _ALG[identity.algorithm]


def sign(
    identity: Identity,
    payload: bytes,
    *,
    detached: bool = False,
    header: dict[str, Any] | None = None,
) -> str:
    """A compact JWS over ``payload`` by ``identity`` (``kid``: its node id).

    ``detached``: the payload segment is left empty (``protected..signature``), the
    payload travelling beside it (RFC 7515 appendix F)."""
    protected = {"alg": algorithm_of(identity), "kid": identity.node_id, **(header or {})}
    head = b64url(json.dumps(protected, separators=(",", ":")).encode())
    body = b64url(payload)
    signature = b64url(identity.sign_raw(f"{head}.{body}".encode("ascii")))
    return f"{head}..{signature}" if detached else f"{head}.{body}.{signature}"


def split(token: str) -> tuple[dict[str, Any], str, str, str]:
    """A compact JWS's (protected header, header segment, payload segment, signature
    segment), the header parsed and bounded; nothing is verified."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SignatureInvalid("a compact JWS has three '.'-separated parts")
    head, body, signature = parts
    if len(head) > MAX_HEADER_BYTES:
        raise SignatureInvalid("JWS protected header too large")
    try:
        header = json.loads(unb64url(head))
    except (ValueError, UnicodeDecodeError):
        raise SignatureInvalid("JWS protected header is not JSON") from None
    if not isinstance(header, dict):
        raise SignatureInvalid("JWS protected header is not a JSON object")
    return header, head, body, signature


def verify(token: str, key: PublicKey, payload: bytes | None = None) -> dict[str, Any]:
    """Check ``token`` against ``key``; returns its protected header.

    ``payload``: the detached payload (the token's payload segment must then be
    empty); otherwise the token carries it. Raises ``SignatureInvalid``."""
    header, head, body, signature = split(token)
    if header.get("alg") != _ALG[key.algorithm]:
        raise SignatureInvalid(
            f"JWS alg {header.get('alg')!r} does not match the {key.algorithm} key"
        )
    if "crit" in header:  # RFC 7515 §4.1.11: extensions we do not understand
        raise SignatureInvalid("JWS 'crit' extensions are not supported")
    if payload is not None:
        if body:
            raise SignatureInvalid("JWS carries a payload where a detached one was expected")
        body = b64url(payload)
    key.verify_raw(f"{head}.{body}".encode("ascii"), unb64url(signature))
    return header


def payload_of(token: str) -> bytes:
    """The payload an attached JWS carries (unverified: call ``verify`` first)."""
    return unb64url(split(token)[2])


def public_jwk(key: PublicKey) -> dict[str, str]:
    """``key`` as a public JWK (RFC 7517/8037), ``kid`` its node id."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    loaded = serialization.load_der_public_key(key.spki)
    if isinstance(loaded, ec.EllipticCurvePublicKey):
        numbers = loaded.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(32, "big")),
            "y": b64url(numbers.y.to_bytes(32, "big")),
            "kid": key.key_id,
            "alg": "ES256",
            "use": "sig",
        }
    raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": key.key_id, "alg": "EdDSA"}


def key_from_jwk(jwk: dict[str, Any]) -> PublicKey:
    """The ``PublicKey`` a public JWK describes (P-256 or Ed25519); its ``key_id`` is
    the node id the key hashes to. Raises ``SignatureInvalid`` for anything else."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415

    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            x, y = unb64url(jwk["x"]), unb64url(jwk["y"])
            if len(x) != 32 or len(y) != 32:
                raise SignatureInvalid("P-256 JWK coordinates must be 32 bytes")
            ec_key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
            spki = ec_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        elif jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            ed_key = ed25519.Ed25519PublicKey.from_public_bytes(unb64url(jwk["x"]))
            spki = ed_key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        else:
            raise SignatureInvalid("only P-256 (EC) and Ed25519 (OKP) JWKs are accepted")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SignatureInvalid):
            raise
        raise SignatureInvalid("malformed JWK") from None
    return PublicKey(spki)


__all__ = [
    "b64url",
    "canonical",
    "key_from_jwk",
    "payload_of",
    "public_jwk",
    "sign",
    "split",
    "unb64url",
    "verify",
]
