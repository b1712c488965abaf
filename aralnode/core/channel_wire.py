"""The A2A channel wire, sans-IO: frame encoding, opens, session keys and frame MACs.

Part of ``aralnode.core.channel`` (which re-exports every public name here); see
its docstring for the protocol. An ``open`` is signed by its sender's node key and
carries a fresh X25519 key; ``frame_keys`` turns the two opens into a ``FrameSeal``
that MACs every later frame.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from aralnode import _proto as pb
from aralnode.core.clock import Clock
from aralnode.core.envelope import MAX_NONCE, MIN_NONCE, new_nonce
from aralnode.core.errors import (
    AralError,
    KeyMismatch,
    MalformedMessage,
    MessageTooLarge,
    Unauthenticated,
    error_from_status,
)
from aralnode.core.identity import Identity, KeyRing
from aralnode.core.outbox import InboundRecord
from aralnode.core.replay import ReplayGuard

DEFAULT_WINDOW = 1024
DEFAULT_MAX_BATCH = 256
MAX_OPEN_BYTES = 16 * 1024
MAX_KEEPALIVE_MS = 3_600_000
MIN_KEEPALIVE_MS = 10
# Sequence numbers stay far below 2**63 (SQLite integers are signed 64-bit).
MAX_SEQ = 2**62
# A standalone ack waits this long for a batch to ride on (like TCP's delayed
# ack), unless a quarter of the window is waiting for it.
ACK_DELAY = 0.01
EPHEMERAL_KEY_BYTES = 32
_KDF_INFO = b"aral/v1 channel frame keys"


# -- wire helpers ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_batch(first_seq: int, sealed: Sequence[bytes], ack: int = 0) -> bytes:
    """``ChannelFrame{batch: MessageBatch{...}}`` from already serialized
    ``ARALMessage``s, by concatenation: the signed bytes are never parsed and
    re-serialized on the way out (and it is several times faster)."""
    parts = [b"\x08", _varint(first_seq)]
    for m in sealed:
        parts += (b"\x12", _varint(len(m)), m)
    if ack:
        parts += (b"\x18", _varint(ack))
    body = b"".join(parts)
    return b"\x12" + _varint(len(body)) + body


def encode_sealed(body: bytes, mac: bytes) -> bytes:
    """``ChannelFrame{sealed: SealedFrame{body, mac}}``, by concatenation."""
    size = len(body)
    head = b"\x0a" + _varint(size)
    tail = b"\x12" + _varint(len(mac)) + mac
    return b"".join((b"\x4a", _varint(len(head) + size + len(tail)), head, body, tail))


def close_frame(error: AralError) -> bytes:
    """A bare ``close``: only to refuse a channel before the opens are exchanged."""
    return pb.ChannelFrame(close=_close(error)).SerializeToString()


def _close(error: AralError) -> pb.ChannelClose:
    return pb.ChannelClose(status=int(error.status), reason=error.reason, message=error.message)


def close_error(close: pb.ChannelClose) -> AralError:
    """The error a peer's ``close`` frame stands for."""
    return error_from_status(close.status, close.message or close.reason, reason=close.reason)


def parse_frame(data: bytes, max_bytes: int) -> pb.ChannelFrame:
    if len(data) > max_bytes:
        raise MessageTooLarge(
            f"channel frame is {len(data)} bytes; the limit is {max_bytes}",
            details={"size": len(data), "limit": max_bytes},
        )
    try:
        return pb.ChannelFrame.FromString(data)
    except (DecodeError, RecursionError):
        raise MalformedMessage("channel frame does not parse as aral.v1.ChannelFrame") from None


# -- session keys --------------------------------------------------------------------------


class FrameSeal:
    """One link's two direction keys and frame counters.

    ``seal`` wraps a serialized frame into ``SealedFrame{body, mac}``; ``open``
    checks the next incoming one. The counters are implicit (both ends count), so
    a frame replayed, dropped or reordered fails the check of the next frame.
    """

    __slots__ = ("_receive", "_received", "_send", "_sent")

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._receive = ChaCha20Poly1305(receive_key)
        self._sent = 0
        self._received = 0

    def seal(self, body: bytes) -> bytes:
        nonce = self._sent.to_bytes(12, "big")
        self._sent += 1
        return encode_sealed(body, self._send.encrypt(nonce, b"", body))

    def open(self, sealed: pb.SealedFrame) -> bytes:
        """The body of the next frame if its MAC verifies.

        Raises:
            Unauthenticated: FRAME_MAC_INVALID.
        """
        nonce = self._received.to_bytes(12, "big")
        try:
            self._receive.decrypt(nonce, sealed.mac, sealed.body)
        except InvalidTag:
            raise Unauthenticated(
                f"channel frame {self._received} failed its MAC check "
                "(forged, replayed, reordered or dropped on the way)",
                reason="FRAME_MAC_INVALID",
            ) from None
        self._received += 1
        return sealed.body


def sealed_close(seal: FrameSeal, error: AralError) -> bytes:
    """A ``close`` after the opens (sealed like every frame from then on)."""
    return seal.seal(pb.ChannelFrame(close=_close(error)).SerializeToString())


def _lp(*parts: bytes) -> bytes:
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def frame_keys(sent: SentOpen, peer: pb.ChannelOpenContent, *, dialler: bool) -> FrameSeal:
    """The link's ``FrameSeal`` from our open (with its ephemeral private key) and
    the peer's verified open.

    IKM = X25519(our ephemeral, theirs); salt = SHA-256 over (dialler id, acceptor
    id, dialler nonce, acceptor nonce, dialler key, acceptor key), each length-
    prefixed; HKDF-SHA256 gives 64 bytes: the dialler->acceptor key, then the
    acceptor->dialler key.

    Raises:
        Unauthenticated: BAD_EPHEMERAL_KEY (not a usable X25519 public key).
    """
    try:
        shared = sent.ephemeral.exchange(X25519PublicKey.from_public_bytes(peer.ephemeral_key))
    except ValueError:
        raise Unauthenticated(
            "the peer's ephemeral key is not a usable X25519 key", reason="BAD_EPHEMERAL_KEY"
        ) from None
    ours = (sent.node_id.encode(), sent.nonce, sent.ephemeral_key)
    theirs = (peer.sender.encode(), peer.nonce, peer.ephemeral_key)
    d, a = (ours, theirs) if dialler else (theirs, ours)
    salt = hashlib.sha256(_lp(d[0], a[0], d[1], a[1], d[2], a[2])).digest()
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=salt, info=_KDF_INFO).derive(shared)
    d2a, a2d = okm[:32], okm[32:]
    return FrameSeal(d2a, a2d) if dialler else FrameSeal(a2d, d2a)


# -- opening -----------------------------------------------------------------------------


@dataclass(slots=True)
class OpenParams:
    """What one side states in its ``open``.

    Attributes:
        epoch: Our outbox epoch (our sequence numbers count in it).
        incarnation: Random per process start.
        resume: What we know of the peer's sequence numbers.
        window: Credit we give beyond what we processed.
        keepalive_ms: We send a frame at least this often.
        max_batch: Most messages per batch we accept.
        first_unacked: Lowest seq of ours the peer has not acked (our outbox head).
    """

    epoch: str
    incarnation: str
    resume: InboundRecord
    window: int = DEFAULT_WINDOW
    keepalive_ms: int = 5_000
    max_batch: int = DEFAULT_MAX_BATCH
    first_unacked: int = 1


@dataclass(slots=True, frozen=True)
class SentOpen:
    """An ``open`` frame we made, with what we need to key the session."""

    frame: bytes
    node_id: str
    nonce: bytes
    ephemeral: X25519PrivateKey
    ephemeral_key: bytes


def make_open(
    identity: Identity,
    *,
    recipient: str,
    clock: Clock,
    params: OpenParams,
    answer_to: bytes = b"",
) -> SentOpen:
    """A signed ``open`` frame with a fresh nonce and ephemeral key."""
    nonce = new_nonce()
    ephemeral = X25519PrivateKey.generate()
    ek = ephemeral.public_key().public_bytes_raw()
    content = pb.ChannelOpenContent(
        sender=identity.node_id,
        recipient=recipient,
        nonce=nonce,
        timestamp_unix_ms=clock.now_ms(),
        resume_after=params.resume.processed_seq,
        resume_epoch=params.resume.epoch,
        window=params.window,
        keepalive_ms=params.keepalive_ms,
        session_epoch=params.epoch,
        answer_to=answer_to,
        incarnation=params.incarnation,
        max_batch=params.max_batch,
        ephemeral_key=ek,
        first_unacked=params.first_unacked,
    )
    raw = content.SerializeToString()
    sig = identity.sign(pb.PAYLOAD_CHANNEL_OPEN, raw)
    frame = pb.ChannelFrame(open=pb.ChannelOpen(content=raw, signature=sig))
    return SentOpen(frame.SerializeToString(), identity.node_id, nonce, ephemeral, ek)


def read_open(data: bytes) -> pb.ChannelOpen:
    """The ``open`` a channel must start with; anything else is refused."""
    frame = parse_frame(data, MAX_OPEN_BYTES + 1024)
    kind = frame.WhichOneof("kind")
    if kind != "open":
        raise Unauthenticated(
            f"a channel starts with an open frame, got {kind or 'an empty frame'}",
            reason="CHANNEL_NOT_OPEN",
        )
    return frame.open


def verify_open(
    opened: pb.ChannelOpen,
    *,
    my_id: str,
    keyring: KeyRing,
    replay: ReplayGuard,
    is_verified: Callable[[str], bool],
    expected_sender: str = "",
    answer_to: bytes = b"",
) -> pb.ChannelOpenContent:
    """Check an ``open``: signed by a peer that completed a handshake (its key is
    pinned), addressed to us, fresh, never seen before, sane parameters.

    A valid open proves only that its sender *made* it, not that the sender is on
    this stream: a captured open can be replayed first. What makes the stream the
    sender's is the session MAC keyed by the open's ephemeral key.

    Raises:
        AralError: a precise reason; the caller closes the stream with it.
    """
    raw, sig = opened.content, opened.signature
    if len(raw) > MAX_OPEN_BYTES:
        raise MessageTooLarge("channel open is too large")
    if not sig.key_id or not sig.value:
        raise Unauthenticated("channel open is not signed", reason="SIGNATURE_MISSING")
    key = keyring.get(sig.key_id)
    if key is None or not is_verified(sig.key_id):
        raise Unauthenticated(
            f"channel opened by {sig.key_id!r}, which has not completed a handshake with this node",
            reason="PEER_NOT_VERIFIED",
        )
    key.verify(pb.PAYLOAD_CHANNEL_OPEN, raw, sig)
    try:
        content = pb.ChannelOpenContent.FromString(raw)
    except (DecodeError, RecursionError):
        raise MalformedMessage("channel open content does not parse") from None
    if content.sender != key.key_id:
        raise KeyMismatch(f"open claims sender {content.sender!r} but is signed by {key.key_id}")
    if content.recipient != my_id:
        raise MalformedMessage(
            f"channel open is addressed to {content.recipient!r}, not to this node",
            reason="WRONG_RECIPIENT",
        )
    if expected_sender and content.sender != expected_sender:
        raise KeyMismatch(
            f"expected node {expected_sender} but {content.sender} answered",
            reason="UNEXPECTED_NODE",
        )
    _check_open_fields(content, answer_to)
    replay.admit(content.sender, "channel-open:" + content.nonce.hex(), content.timestamp_unix_ms)
    return content


def _check_open_fields(content: pb.ChannelOpenContent, answer_to: bytes) -> None:
    """The parameters of a verified open: in range, and answering ours if it must."""
    if not MIN_NONCE <= len(content.nonce) <= MAX_NONCE:
        raise MalformedMessage("channel open nonce must be 8..64 bytes", reason="MISSING_FIELD")
    if answer_to and content.answer_to != answer_to:
        raise KeyMismatch("channel open does not answer our open", reason="NONCE_MISMATCH")
    if not MIN_KEEPALIVE_MS <= content.keepalive_ms <= MAX_KEEPALIVE_MS:
        raise MalformedMessage(
            f"keepalive_ms must be {MIN_KEEPALIVE_MS}..{MAX_KEEPALIVE_MS}", reason="BAD_PARAMETER"
        )
    if not content.session_epoch or len(content.session_epoch) > 64 or content.max_batch < 1:
        raise MalformedMessage(
            "channel open needs session_epoch and max_batch", reason="MISSING_FIELD"
        )
    if len(content.ephemeral_key) != EPHEMERAL_KEY_BYTES:
        raise MalformedMessage(
            "channel open needs a 32-byte X25519 ephemeral_key", reason="MISSING_FIELD"
        )
    if content.resume_after > MAX_SEQ or content.first_unacked > MAX_SEQ:
        raise MalformedMessage("sequence number out of range", reason="SEQ_OUT_OF_RANGE")
