"""Sealing and opening ARAL messages.

``seal`` serializes the header and body once and signs those bytes; ``open_message``
verifies the signature over the bytes as received, and only then parses them
(never verify over a re-serialized message). Every failure is an ``AralError``
with a precise reason; no input makes these functions raise anything else.
"""

from __future__ import annotations

import collections
import secrets
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.clock import Clock
from aralnode.core.errors import (
    ERROR_TYPES,
    AralError,
    KeyMismatch,
    MalformedMessage,
    MessageTooLarge,
    Unauthenticated,
    UnsupportedVersion,
    error_from_status,
    response_too_large,
)
from aralnode.core.identity import Identity, KeyRing, PublicKey
from aralnode.core.replay import ReplayGuard

PROTOCOL_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MIN_NONCE, MAX_NONCE = 8, 64
NONCE_BYTES = 12  # what this node puts in its messages
MAX_ID_LENGTH = 128
# A message's time to live: none (0) or up to a week. Negative is no duration, and
# beyond a week is no deadline any hop could keep (grpc refuses some as overflow).
MAX_TTL_MS = 7 * 24 * 3600 * 1000


# Message types looked up once: enum attribute access through the generated
# wrapper costs about a microsecond each on the hot path.
REQUEST = pb.MessageType.MESSAGE_TYPE_REQUEST
RESPONSE = pb.MessageType.MESSAGE_TYPE_RESPONSE
NOTIFICATION = pb.MessageType.MESSAGE_TYPE_NOTIFICATION


_DRAW = 16  # bytes a draw holds: a 128-bit message id, or a nonce
_DRAWS_PER_CALL = 256
_draws: collections.deque[bytes] = collections.deque()


def new_message_id() -> str:
    """A fresh message id: 128 random bits from the OS's generator, hex (as a uuid4
    would be). ``build_content`` makes one when it is given none; a sender that
    must know the id before the message is built (its audit record) takes it here."""
    return _random_draw().hex()


def _random_draw() -> bytes:
    """16 bytes from the OS's generator, taken from a pool refilled 4 KiB at a time.

    One ``os.urandom`` per 128 messages (an id and a nonce each) instead of one
    each: a system call lets go of the GIL, and on a node whose worker threads
    verify signatures the event loop then waits for it back (tens of microseconds a
    message, measured). ``popleft`` is atomic, so no two callers, threads included,
    ever get the same draw."""
    try:
        return _draws.popleft()
    except IndexError:
        fresh = secrets.token_bytes(_DRAW * _DRAWS_PER_CALL)
        _draws.extend(fresh[i : i + _DRAW] for i in range(_DRAW, len(fresh), _DRAW))
        return fresh[:_DRAW]


def new_nonce() -> bytes:
    return _random_draw()[:NONCE_BYTES]


@dataclass(slots=True)
class OpenedMessage:
    """A message whose bytes verified (if signed), parsed and passed replay checks."""

    header: pb.Header
    body: pb.Body
    raw: bytes
    signer: PublicKey | None

    @property
    def signed(self) -> bool:
        return self.signer is not None

    def parameters(self, limit: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
        header = self.header
        data = self.body.parameters
        if header.compression:
            data = codec.decompress(data, header.compression, limit)
        return codec.decode(data, header.content_type)

    def result(self, limit: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
        data = codec.decompress(self.body.result, self.header.compression, limit)
        return codec.decode(data, self.header.content_type)


def build_content(
    *,
    sender: str,
    recipient: str,
    body: pb.Body,
    clock: Clock,
    message_id: str | None = None,
    trace_id: str = "",
    content_type: str = codec.JSON,
    compression: str = "",
    ttl_ms: int = 0,
    on_behalf_of: str = "",
    delegation: pb.Delegation | None = None,
) -> pb.MessageContent:
    """A request's, response's or notification's content, ready to ``seal``.

    ``delegation``: the signed statement of whom a forwarded call acts for (in the
    header, so the signature covers it); its principal is also put in
    ``on_behalf_of`` for nodes that read only that.
    """
    content = pb.MessageContent()
    content.body.CopyFrom(body)
    header = content.header
    # Fields are set in place and only when not empty: building a Header by keyword
    # and copying it into the content costs about three times as much.
    header.version = PROTOCOL_VERSION
    header.message_id = message_id or new_message_id()
    header.nonce = _random_draw()[:NONCE_BYTES]
    header.timestamp_unix_ms = clock.now_ms()
    header.sender = sender
    if recipient:
        header.recipient = recipient
    if content_type:
        header.content_type = content_type
    if compression:
        header.compression = compression
    if trace_id:
        header.trace_id = trace_id
    if ttl_ms:
        header.ttl_ms = min(ttl_ms, MAX_TTL_MS)  # (a longer timeout: a week is as good)
    if delegation is not None:
        header.delegation.CopyFrom(delegation)
        on_behalf_of = on_behalf_of or delegation.principal
    if on_behalf_of:
        header.on_behalf_of = on_behalf_of
    return content


def seal(
    content: pb.MessageContent, identity: Identity | None, *, embed_key: bool = False
) -> pb.ARALMessage:
    """Serialize ``content`` once and sign exactly those bytes (unsigned if no identity)."""
    raw = content.SerializeToString()
    if identity is None:
        return pb.ARALMessage(content=raw)
    return pb.ARALMessage(
        content=raw, signature=identity.sign(pb.PAYLOAD_MESSAGE, raw, embed_key=embed_key)
    )


def seal_into(
    out: pb.ARALMessage,
    content: pb.MessageContent,
    identity: Identity | None,
    *,
    embed_key: bool = False,
) -> None:
    """Like :func:`seal`, writing into ``out`` (a field of an enclosing message),
    which spares a copy of the envelope into its container."""
    raw = content.SerializeToString()
    out.content = raw
    if identity is not None:
        identity.sign_into(out.signature, pb.PAYLOAD_MESSAGE, raw, embed_key=embed_key)


def encode_payload(
    value: Any, content_type: str = codec.JSON, *, compress_above: int = 8192, limit: int = 0
) -> tuple[bytes, str]:
    """Encode a value and gzip it when larger than ``compress_above`` bytes.

    Raises:
        MessageTooLarge: encoded, it is past ``limit`` bytes (0: no limit), which its
            reader refuses however well it compresses (``RESPONSE_TOO_LARGE``).
    """
    data = codec.encode(value, content_type)
    if limit and len(data) > limit:
        raise response_too_large("the encoded result", len(data), limit)
    if compress_above and len(data) > compress_above:
        return codec.compress(data, codec.GZIP), codec.GZIP
    return data, ""


def open_message(
    message: pb.ARALMessage,
    *,
    keyring: KeyRing,
    replay: ReplayGuard | None,
    require_signature: bool,
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    expected_recipient: str = "",
    checked: tuple[bytes, bool] | None = None,
) -> OpenedMessage:
    """Verify, parse and replay-check one message. ``expected_recipient``: the
    node that reads it (us); a signed message must name it in ``header.recipient``,
    an unsigned one may name no one. ``checked``: the public key
    (SPKI) the signature was already checked against, elsewhere, over exactly this
    content (``aralnode.mesh.verifier``), and whether it held; it stands only when
    the key the signature names is that key (otherwise it is checked here).

    Raises:
        MessageTooLarge, MalformedMessage, UnsupportedVersion: bad input.
        Unauthenticated (and subclasses): missing or bad signature, wrong key,
            replayed (signed messages) or stale message.
    """
    raw = message.content
    if len(raw) > max_bytes:
        raise MessageTooLarge(
            f"message content is {len(raw)} bytes; the limit is {max_bytes}",
            details={"size": len(raw), "limit": max_bytes},
        )
    signer = _signer(message, keyring, require_signature, checked)
    content = pb.MessageContent()
    try:
        content.ParseFromString(raw)
    except (DecodeError, RecursionError):
        raise MalformedMessage("message content does not parse as aral.v1.MessageContent") from None
    header, body = content.header, content.body
    check_header(header)
    if signer is not None and header.sender != signer.key_id:
        raise KeyMismatch(
            f"message claims sender {header.sender!r} but is signed by {signer.key_id}",
            details={"sender": header.sender, "key_id": signer.key_id},
        )
    recipient = header.recipient
    if expected_recipient and recipient != expected_recipient and (recipient or signer is not None):
        # A signed message for no one in particular could be relayed to any node
        # and run there as its signer: it must name us. (An unsigned one proves
        # nothing of its sender anyway.)
        raise MalformedMessage(
            f"message is addressed to {recipient or 'no node'}, not to this node",
            reason="WRONG_RECIPIENT",
        )
    if replay is not None:
        if signer is not None:
            replay.admit(header.sender, header.message_id, header.timestamp_unix_ms)
        else:
            # Anyone can mint a fresh unsigned message, so remembering them protects
            # nothing; it would only let anonymous traffic fill the cache that
            # signed peers depend on (it fails closed when full).
            replay.check_fresh(header.timestamp_unix_ms)
    return OpenedMessage(header=header, body=body, raw=raw, signer=signer)


def _signer(
    message: pb.ARALMessage,
    keyring: KeyRing,
    require_signature: bool,
    checked: tuple[bytes, bool] | None,
) -> PublicKey | None:
    """The key whose signature ``message`` carries, checked (``None``: unsigned)."""
    if not message.HasField("signature"):
        if require_signature:
            raise Unauthenticated("message is not signed", reason="SIGNATURE_MISSING")
        return None
    signature = message.signature
    signer = keyring.resolve(signature)
    if checked is None or checked[0] != signer.spki:
        signer.verify(pb.PAYLOAD_MESSAGE, message.content, signature)
    else:  # checked by a helper process, with this very key, over these bytes
        signer.check_form(signature)
        if not checked[1]:
            raise signer.does_not_verify()
    return signer


def check_header(header: pb.Header) -> None:
    """Field-level checks that need no keys or state."""
    if header.version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"protocol version {header.version!r} is not supported",
            details={"supported": list(SUPPORTED_VERSIONS)},
        )
    if not header.message_id or len(header.message_id) > MAX_ID_LENGTH:
        raise MalformedMessage("header.message_id is missing or too long", reason="MISSING_FIELD")
    if not header.sender or len(header.sender) > MAX_ID_LENGTH:
        raise MalformedMessage("header.sender is missing or too long", reason="MISSING_FIELD")
    if not header.timestamp_unix_ms:
        raise MalformedMessage("header.timestamp_unix_ms is missing", reason="MISSING_FIELD")
    if not MIN_NONCE <= len(header.nonce) <= MAX_NONCE:
        raise MalformedMessage(
            f"header.nonce must be {MIN_NONCE}..{MAX_NONCE} bytes, got {len(header.nonce)}",
            reason="MISSING_FIELD",
        )
    if not 0 <= header.ttl_ms <= MAX_TTL_MS:
        raise MalformedMessage(
            f"header.ttl_ms is milliseconds from 0 (none) to {MAX_TTL_MS} (a week), "
            f"got {header.ttl_ms}",
            reason="BAD_TTL",
            details={"ttl_ms": header.ttl_ms, "max": MAX_TTL_MS},
        )
    if header.content_type and header.content_type not in codec.CONTENT_TYPES:
        raise MalformedMessage(
            f"unsupported content type {header.content_type!r}", reason="UNSUPPORTED_CONTENT_TYPE"
        )
    if header.compression not in codec.COMPRESSIONS:
        raise MalformedMessage(
            f"unsupported compression {header.compression!r}", reason="UNSUPPORTED_COMPRESSION"
        )


def error_body(exc: AralError, correlation_id: str) -> pb.Body:
    """A response body carrying ``exc`` in the seed's error shape."""
    err = pb.Error(code=exc.code, message=exc.message, status=int(exc.status))
    details = dict(exc.details)
    details["reason"] = exc.reason
    if (seconds := codec.retry_delay(exc.retry_after)) is not None:
        details["retry_after"] = seconds
    err.details.update(codec.jsonable(details))
    return pb.Body(type=RESPONSE, error=err, correlation_id=correlation_id)


def remote_error(err: pb.Error) -> AralError:
    """Rebuild a peer's error (``Error`` in a response or ``MessageErrors``; what
    ``error_body`` wrote) as the
    most specific ``AralError``: by reason, else by status, then refined by the
    stable ``code`` (a reason such as GOVERNANCE_BLOCK names no class by itself)."""
    details = codec.from_struct(err.details) if err.HasField("details") else {}
    reason = str(details.pop("reason", ""))
    retry = details.pop("retry_after", None)
    # Details are re-sent by every door as JSON: a peer's NaN becomes "nan" here,
    # as ours become on the way out, not invalid JSON (or a 500) at a door.
    details = codec.jsonable(details)
    exc = error_from_status(
        err.status,
        err.message,
        reason=reason,
        details=details,
        retry_after=codec.retry_delay(retry),
    )
    if exc.code != err.code:
        for cls in ERROR_TYPES:
            if cls.code == err.code and issubclass(cls, type(exc)):
                return cls(
                    err.message, reason=reason or None, details=details, retry_after=exc.retry_after
                )
    return exc
