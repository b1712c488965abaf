"""Whether a raw signature holds: the one rule a node's keys
(``aralnode.core.identity.PublicKey.verify_raw``) and the signature helper process
(``aralnode.mesh.verify_helper``) both apply.

ES256 signatures are raw ``r || s`` (64 bytes, as in JWS) over SHA-256; Ed25519's
are its own 64 bytes. Standard library and ``cryptography`` only: the helper
process imports this and nothing else of aralnode, so it starts quickly.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

ECDSA = ec.ECDSA(hashes.SHA256())
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def holds(key: VerifyingKey, value: bytes, message: bytes, *, ecdsa: bool) -> bool:
    """Whether ``value`` is ``key``'s signature over ``message`` itself; ``ecdsa``:
    the key is P-256 (said by the caller, who knows: an ABC ``isinstance`` costs
    about a microsecond on every message)."""
    if len(value) != 64:
        return False
    try:
        if ecdsa:
            r, s = int.from_bytes(value[:32], "big"), int.from_bytes(value[32:], "big")
            key.verify(encode_dss_signature(r, s), message, ECDSA)  # type: ignore[call-arg]
        else:
            key.verify(value, message)  # type: ignore[call-arg]
    except InvalidSignature:
        return False
    return True
