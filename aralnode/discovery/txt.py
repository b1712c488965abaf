"""The TXT record of an ``_aral._tcp`` instance (version 1), kept under ``MAX_TXT_BYTES``::

    txtvers=1  id=<node id>  fp=<key fingerprint>  pv=<versions, comma separated>
    grpc=<port>  http=<port, optional>  cd=<capability digest>
    via=<node id of the bridge that re-announced it, optional>
    a2a=<path of its A2A Agent Card on the http port, optional>

What is read here is a hint: ``parse_txt`` checks shape and ranges only, and the
node id is verified by the handshake. Parsing any bytes never raises anything but
``BadAnnouncement``.
"""

from __future__ import annotations

import re

from aralnode.discovery.backend import Announcement

TXT_VERSION = "1"
# What we announce stays under this; what we accept may be a little larger, so
# that a later version adding a key still reaches older nodes.
MAX_TXT_BYTES = 200
MAX_ACCEPTED_TXT_BYTES = 255
_BASE32 = re.compile(r"^[a-z2-7]+$")
_VERSION = re.compile(r"^[A-Za-z0-9._/-]{1,16}$")
_HEX = re.compile(r"^[0-9a-f]{16}$")
_CARD_PATH = re.compile(r"^/[A-Za-z0-9._~/-]{0,63}$")
NODE_ID_CHARS = 32  # base32 of 20 bytes
FINGERPRINT_CHARS = 52  # base32 of 32 bytes, unpadded


class BadAnnouncement(ValueError):
    """A TXT record that does not describe a usable aralnode (it is ignored)."""


def to_txt(announcement: Announcement) -> bytes:
    """The TXT record as DNS-SD wire bytes (length-prefixed ``key=value`` strings)."""
    a = announcement
    pairs = [
        ("txtvers", TXT_VERSION),
        ("id", a.node_id),
        ("fp", a.fingerprint),
        ("pv", ",".join(a.protocol_versions)),
        ("grpc", str(a.grpc_port)),
    ]
    if a.http_port is not None:
        pairs.append(("http", str(a.http_port)))
    pairs.append(("cd", a.capability_digest))
    if a.via:
        pairs.append(("via", a.via))
    if a.a2a_card and a.http_port is not None:
        pairs.append(("a2a", a.a2a_card))
    raw = b"".join(_txt_string(f"{k}={v}".encode()) for k, v in pairs)
    if len(raw) > MAX_TXT_BYTES:
        raise ValueError(f"TXT record is {len(raw)} bytes; the limit is {MAX_TXT_BYTES}")
    return raw


def _txt_string(data: bytes) -> bytes:
    if len(data) > 255:
        raise ValueError("a TXT string holds at most 255 bytes")
    return bytes([len(data)]) + data


def txt_pairs(raw: bytes) -> dict[str, str]:
    """Split DNS-SD TXT bytes into keys (lower-cased) and values.

    RFC 6763 §6.4: keys are case-insensitive and the first occurrence wins.

    Raises:
        BadAnnouncement: oversized, truncated, or not ASCII.
    """
    if len(raw) > MAX_ACCEPTED_TXT_BYTES:
        raise BadAnnouncement(f"TXT record is {len(raw)} bytes (limit {MAX_ACCEPTED_TXT_BYTES})")
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(raw):
        end = pos + 1 + raw[pos]
        if end > len(raw):
            raise BadAnnouncement("TXT string runs past the end of the record")
        chunk = raw[pos + 1 : end]
        pos = end
        try:
            text = chunk.decode("ascii")
        except UnicodeDecodeError:
            raise BadAnnouncement("TXT string is not ASCII") from None
        key, _, value = text.partition("=")
        key = key.lower()
        if key and key not in pairs:
            pairs[key] = value
    return pairs


def _port(value: str | None, what: str, *, allow_zero: bool = False) -> int:
    if value is None or not value.isdigit() or len(value) > 5:
        raise BadAnnouncement(f"{what} port {value!r} is not a number")
    port = int(value)
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise BadAnnouncement(f"{what} port {port} is out of range")
    return port


def parse_txt(raw: bytes) -> Announcement:
    """Read an ``Announcement`` out of TXT bytes; anything off is ``BadAnnouncement``.

    Checks only what can be checked without the key: shape, ranges, and that the
    node id is the fingerprint's prefix (both are the same SHA-256 of the key, so a
    TXT where they disagree was made up).
    """
    pairs = txt_pairs(raw)
    if pairs.get("txtvers") != TXT_VERSION:
        raise BadAnnouncement(f"unknown txtvers {pairs.get('txtvers')!r}")
    node_id, fp = pairs.get("id", ""), pairs.get("fp", "")
    if len(node_id) != NODE_ID_CHARS or not _BASE32.match(node_id):
        raise BadAnnouncement("id is not a node id")
    if len(fp) != FINGERPRINT_CHARS or not _BASE32.match(fp):
        raise BadAnnouncement("fp is not a key fingerprint")
    if not fp.startswith(node_id):
        raise BadAnnouncement("id is not derived from fp")
    versions = tuple(v for v in pairs.get("pv", "").split(",") if v)
    if not versions or len(versions) > 8 or not all(_VERSION.match(v) for v in versions):
        raise BadAnnouncement("pv is not a list of protocol versions")
    digest = pairs.get("cd", "")
    if not _HEX.match(digest):
        raise BadAnnouncement("cd is not a capability digest")
    http = pairs.get("http")
    via = pairs.get("via", "")
    if via and (len(via) != NODE_ID_CHARS or not _BASE32.match(via)):
        raise BadAnnouncement("via is not a node id")
    card = pairs.get("a2a", "")
    if card and (http is None or not _CARD_PATH.match(card)):
        raise BadAnnouncement("a2a is not an Agent Card path on the http port")
    return Announcement(
        node_id=node_id,
        fingerprint=fp,
        protocol_versions=versions,
        grpc_port=_port(pairs.get("grpc"), "grpc"),
        capability_digest=digest,
        http_port=None if http is None else _port(http, "http", allow_zero=True),
        via=via,
        a2a_card=card,
    )


__all__ = ["MAX_TXT_BYTES", "BadAnnouncement", "parse_txt", "to_txt", "txt_pairs"]
