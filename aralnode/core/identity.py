"""Node identity: a key pair, a node id derived from the public key, signatures.

A node id is the base32 form of the first 20 bytes of SHA-256 over the public key's
SubjectPublicKeyInfo (DER), like a libp2p peer id: an announcement cannot claim an
id without holding the key. Signatures cover the DSSE pre-authentication encoding
of (payload type, payload bytes) and are made over the exact bytes that travel.

ES256 signatures are raw ``r || s`` (64 bytes, as in JWS); DER-encoded or
wrong-length signatures are rejected. Ed25519 is the option.
"""

from __future__ import annotations

import base64
import enum
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
)

from aralnode import _proto as pb
from aralnode.core.errors import (
    InvalidKey,
    KeyMismatch,
    RateLimited,
    SignatureInvalid,
    UnknownKey,
    UnsupportedKey,
)
from aralnode.core.raw_signature import ECDSA as _ECDSA
from aralnode.core.raw_signature import holds


class KeyAlgorithm(enum.StrEnum):
    """Signature algorithms a node can hold."""

    ES256 = "ES256"
    ED25519 = "Ed25519"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding of (payload type, payload)."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def fingerprint(spki_der: bytes) -> bytes:
    """SHA-256 over the SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der).digest()


def key_id_for(spki_der: bytes) -> str:
    """The id derived from a public key; a node's id is its identity key's id."""
    return base64.b32encode(fingerprint(spki_der)[:20]).decode().lower()


def fingerprint_text(spki_der: bytes) -> str:
    """Full fingerprint as unpadded lower-case base32 (for mDNS TXT and display)."""
    return base64.b32encode(fingerprint(spki_der)).decode().rstrip("=").lower()


_ACCEPTED = "only P-256 (ES256) and Ed25519 keys are accepted"


class PublicKey:
    """A verified-format public key with its derived id.

    Raises:
        InvalidKey: the bytes are not a SubjectPublicKeyInfo (or its point is not
            on its curve).
        UnsupportedKey: a key of another algorithm or curve, whether or not the
            cryptography library knows it.
    """

    __slots__ = ("_key", "algorithm", "key_id", "spki")

    def __init__(self, spki_der: bytes) -> None:
        try:
            key = serialization.load_der_public_key(spki_der)
        except UnsupportedAlgorithm:
            # A curve or algorithm OpenSSL does not have: the peer's key, not our bug.
            raise UnsupportedKey(f"unsupported public key: {_ACCEPTED}") from None
        except (ValueError, TypeError):
            raise InvalidKey("public key is not a valid SubjectPublicKeyInfo") from None
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            self.algorithm = KeyAlgorithm.ES256
        elif isinstance(key, ed25519.Ed25519PublicKey):
            self.algorithm = KeyAlgorithm.ED25519
        else:
            raise UnsupportedKey(f"unsupported key type {type(key).__name__}: {_ACCEPTED}")
        self._key = key
        self.spki = spki_der
        self.key_id = key_id_for(spki_der)

    @property
    def fingerprint(self) -> str:
        return fingerprint_text(self.spki)

    def verify(self, payload_type: str, payload: bytes, signature: pb.Signature) -> None:
        """Raise ``SignatureInvalid`` unless ``signature`` covers (type, payload)."""
        self.check_form(signature)
        self.verify_raw(pae(payload_type, payload), signature.value)

    def check_form(self, signature: pb.Signature) -> None:
        """Raise ``SignatureInvalid`` unless ``signature`` is of this key's algorithm
        and length (what ``verify`` checks before the cryptography)."""
        if signature.algorithm != self.algorithm:
            raise SignatureInvalid(
                f"signature algorithm {signature.algorithm!r} does not match the "
                f"{self.algorithm} key {self.key_id}"
            )
        value = signature.value
        if len(value) != 64:
            raise SignatureInvalid(
                f"{self.algorithm} signature must be 64 bytes, got {len(value)}",
                details={"length": len(value)},
            )

    def does_not_verify(self) -> SignatureInvalid:
        """The error of a signature this key did not make (``verify_raw``'s)."""
        return SignatureInvalid(f"signature does not verify with key {self.key_id}")

    def verify_raw(self, message: bytes, value: bytes) -> None:
        """Raise ``SignatureInvalid`` unless ``value`` (raw ``r || s`` for ES256) is
        this key's signature over ``message`` itself."""
        if len(value) != 64:
            raise SignatureInvalid(f"{self.algorithm} signature must be 64 bytes")
        if not holds(self._key, value, message, ecdsa=self.algorithm is KeyAlgorithm.ES256):
            raise self.does_not_verify()


class Identity:
    """A node's private key. Signs; its public half is ``public_key``."""

    __slots__ = ("_private", "algorithm", "public_key")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        self._private = private_key
        spki = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = PublicKey(spki)
        self.algorithm = self.public_key.algorithm

    @classmethod
    def generate(cls, algorithm: KeyAlgorithm = KeyAlgorithm.ES256) -> Identity:
        if algorithm is KeyAlgorithm.ED25519:
            return cls(ed25519.Ed25519PrivateKey.generate())
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        key = serialization.load_pem_private_key(data, password=None)
        if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            return cls(key)
        raise ValueError("identity key must be a P-256 or Ed25519 private key")

    def to_pem(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def node_id(self) -> str:
        return self.public_key.key_id

    def sign(self, payload_type: str, payload: bytes, *, embed_key: bool = False) -> pb.Signature:
        """Sign (type, payload); ``embed_key`` adds the public key for first contact."""
        sig = pb.Signature()
        self.sign_into(sig, payload_type, payload, embed_key=embed_key)
        return sig

    def sign_raw(self, message: bytes) -> bytes:
        """The key's signature over ``message`` itself (no DSSE encoding): raw
        ``r || s`` for ES256, as JWS wants it (``aralnode.core.jws``)."""
        if self.algorithm is KeyAlgorithm.ES256:  # not isinstance: see PublicKey.verify
            der = cast(ec.EllipticCurvePrivateKey, self._private).sign(message, _ECDSA)
            r, s = decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return cast(ed25519.Ed25519PrivateKey, self._private).sign(message)

    def sign_into(
        self, out: pb.Signature, payload_type: str, payload: bytes, *, embed_key: bool = False
    ) -> None:
        """``sign``, writing the signature into ``out`` (a field of the message that
        carries it: no copy)."""
        value = self.sign_raw(pae(payload_type, payload))
        out.algorithm = self.algorithm
        out.key_id = self.public_key.key_id
        out.value = value
        if embed_key:
            out.public_key = self.public_key.spki


class KeyRingFull(RateLimited):
    """No room to pin another key: every pinned key still belongs to a live peer."""

    default_reason = "KEYRING_FULL"


class KeyRing:
    """Public keys by key id: pinned ones (from verified handshakes) and a bounded LRU
    of self-certifying keys learnt from messages that carried them.

    Pinned keys are bounded too (``max_pinned``): the node unpins a peer's key when
    it forgets the peer, and when the ring is full a new pin first evicts the oldest
    pinned keys that ``evictable(key_id)`` allows (the node says: keys of peers that
    are GONE or unknown). If none may go, ``pin`` raises ``KeyRingFull``.
    """

    def __init__(self, capacity: int = 4096, max_pinned: int = 2048) -> None:
        self._pinned: OrderedDict[str, PublicKey] = OrderedDict()
        self._learnt: OrderedDict[str, PublicKey] = OrderedDict()
        self._capacity = capacity
        self.max_pinned = max_pinned
        self.evictable: Callable[[str], bool] | None = None

    def pin(self, key: PublicKey) -> None:
        """Pin ``key`` (idempotent).

        Raises:
            KeyRingFull: ``max_pinned`` keys are pinned and none is evictable.
        """
        if key.key_id in self._pinned:
            self._pinned[key.key_id] = key
            self._pinned.move_to_end(key.key_id)
            return
        if len(self._pinned) >= self.max_pinned and not self._evict():
            raise KeyRingFull(
                f"{len(self._pinned)} keys are pinned, all of live peers; not pinning {key.key_id}",
                details={"max_pinned": self.max_pinned},
            )
        self._pinned[key.key_id] = key
        self._learnt.pop(key.key_id, None)

    def _evict(self) -> bool:
        evictable = self.evictable
        if evictable is None:
            return False
        for key_id in list(self._pinned):  # oldest first
            if evictable(key_id):
                del self._pinned[key_id]
                return True
        return False

    def unpin(self, key_id: str) -> None:
        self._pinned.pop(key_id, None)

    def is_pinned(self, key_id: str) -> bool:
        return key_id in self._pinned

    @property
    def pinned(self) -> int:
        """How many keys are pinned."""
        return len(self._pinned)

    def get(self, key_id: str) -> PublicKey | None:
        key = self._pinned.get(key_id)
        if key is None:
            key = self._learnt.get(key_id)
            if key is not None:
                self._learnt.move_to_end(key_id)
        return key

    def resolve(self, signature: pb.Signature) -> PublicKey:
        """The key a signature names; a supplied key must hash to its key id."""
        key = self.get(signature.key_id)
        if key is not None:
            if signature.public_key and signature.public_key != key.spki:
                raise KeyMismatch(f"supplied public key does not belong to {signature.key_id}")
            return key
        if not signature.public_key:
            raise UnknownKey(
                f"no public key known for key id {signature.key_id!r}; "
                "handshake first or embed the key"
            )
        key = PublicKey(signature.public_key)
        if key.key_id != signature.key_id:
            raise KeyMismatch(
                f"public key hashes to {key.key_id}, not to the claimed key id {signature.key_id}"
            )
        self._learnt[key.key_id] = key
        if len(self._learnt) > self._capacity:
            self._learnt.popitem(last=False)
        return key

    def __len__(self) -> int:
        return len(self._pinned) + len(self._learnt)
