"""The signature helper process: ``python -m aralnode.mesh.verify_helper``.

It checks signatures for a receiver (``aralnode.mesh.verifier`` starts it and
says why): for each (public key, signature, signed bytes) it reads, whether the
signature holds. It holds no secret and decides nothing else. It imports the
standard library and ``cryptography`` only, so it starts in a few tens of
milliseconds, and it ends when its input does (the node stopped or died).

The wire, both ways little-endian: a request is ``count:u32 size:u32`` then
``size`` bytes of ``count`` items, each ``u16`` length + SubjectPublicKeyInfo
(DER), ``u8`` length + raw signature (ES256 ``r || s``, or Ed25519), ``u32``
length + the signed bytes; its answer is ``count:u32`` then one byte per item,
1 if its signature holds. Requests are answered in the order they came.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

HEAD = struct.Struct("<II")
COUNT = struct.Struct("<I")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
#: The largest request a helper reads (a batch's messages, with room to spare).
MAX_REQUEST_BYTES = 64 << 20
#: Public keys a helper keeps loaded (its node's peers; cleared when full).
MAX_KEYS = 4096
#: How much lower than its node a helper runs (``nice``): on a busy machine the
#: event loops go first (12 paired rounds of the channel bench on two shared cores:
#: median 1.06x the signed, audited messages a second of helpers at the node's own).
NICE = 5

Item = tuple[bytes, bytes, bytes]  # (SubjectPublicKeyInfo DER, raw signature, signed bytes)


def encode(items: Sequence[Item]) -> bytes:
    """A request checking ``items``."""
    parts: list[bytes] = []
    for spki, value, message in items:
        parts += (_U16.pack(len(spki)), spki, bytes((len(value),)), value)
        parts += (_U32.pack(len(message)), message)
    body = b"".join(parts)
    return HEAD.pack(len(items), len(body)) + body


def checker() -> Callable[[bytes, bytes, bytes], bool]:
    """``check(spki, value, message)``: whether ``value`` is the key's signature
    over ``message`` (``aralnode.core.raw_signature.holds``, as a node checks it)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: PLC0415 - see the module doc
    from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
        load_der_public_key,
    )

    from aralnode.core.raw_signature import holds  # noqa: PLC0415

    keys: dict[bytes, tuple[Any, bool] | None] = {}  # SPKI -> (key, P-256?); None: unusable

    def load(spki: bytes) -> tuple[Any, bool] | None:
        try:
            key = load_der_public_key(spki)
        except (ValueError, TypeError):
            return None
        if isinstance(key, ec.EllipticCurvePublicKey):  # P-256 only, as a node's keys
            return (key, True) if isinstance(key.curve, ec.SECP256R1) else None
        return (key, False) if isinstance(key, ed25519.Ed25519PublicKey) else None

    def check(spki: bytes, value: bytes, message: bytes) -> bool:
        if spki not in keys:
            if len(keys) >= MAX_KEYS:
                keys.clear()
            keys[spki] = load(spki)
        loaded = keys[spki]
        return loaded is not None and holds(loaded[0], value, message, ecdsa=loaded[1])

    return check


def answer(body: bytes, count: int, check: Callable[[bytes, bytes, bytes], bool]) -> bytes:
    """The answer to a request's ``body`` of ``count`` items.

    Raises:
        ValueError: the body is not ``count`` items.
    """
    out = bytearray(COUNT.pack(count))
    at = 0
    try:
        for _ in range(count):
            (n,) = _U16.unpack_from(body, at)
            spki = body[at + 2 : at + 2 + n]
            at += 2 + n
            n = body[at]
            value = body[at + 1 : at + 1 + n]
            at += 1 + n
            (n,) = _U32.unpack_from(body, at)
            message = body[at + 4 : at + 4 + n]
            at += 4 + n
            if at > len(body):
                raise ValueError("an item runs past the request")
            out.append(1 if check(spki, value, message) else 0)
    except (struct.error, IndexError):
        raise ValueError("an item runs past the request") from None
    if at != len(body):
        raise ValueError("the request holds more than its items")
    return bytes(out)


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Answer requests from ``inp`` on ``out`` until ``inp`` ends (or breaks the wire)."""
    check = checker()
    while True:
        head = inp.read(HEAD.size)
        if len(head) < HEAD.size:
            return
        count, size = HEAD.unpack(head)
        if size > MAX_REQUEST_BYTES:
            return
        body = inp.read(size)
        if len(body) < size:
            return
        try:
            reply = answer(body, count, check)
        except ValueError:
            return  # out of shape: end, and the node checks in-process
        out.write(reply)
        out.flush()


def main() -> None:
    # Ctrl-C reaches the whole process group: the node decides when we end (our
    # input closes), and a traceback here would only clutter its terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Checks of batches read ahead can wait a little; the node's event loop, which
    # serves every door and applies what we checked, should not wait behind them.
    with contextlib.suppress(OSError):
        os.nice(NICE)
    with contextlib.suppress(BrokenPipeError):  # the node went first: nothing to say
        serve(sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
