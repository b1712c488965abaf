"""What verified bearer tokens stand for, kept until they expire.

A token is verified once (a signature check, or a round trip to an introspection
endpoint) and then found by the SHA-256 of its text: the cache never holds a token
itself, and it is bounded (least recently used dropped first) because anyone who
can reach a door can make it verify tokens.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from aralnode.service.auth import Authenticated


def token_digest(token: str) -> bytes:
    """The key a token is kept under (its SHA-256: the text is never stored)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenCache:
    """Verified tokens and the principals they stand for, until each one's expiry.

    Args:
        size: Most tokens kept; the least recently used goes first.
    """

    __slots__ = ("_entries", "hits", "size")

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._entries: OrderedDict[bytes, tuple[Authenticated, float]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, now: float) -> Authenticated | None:
        """The principal ``token`` was verified as, if it has not expired by ``now``."""
        key = token_digest(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        who, expires = entry
        if now >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return who

    def put(self, token: str, who: Authenticated, expires: float) -> None:
        """Keep ``who`` for ``token`` until ``expires`` (unix seconds)."""
        key = token_digest(token)
        self._entries[key] = (who, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every token (the keys that verified them changed)."""
        self._entries.clear()


__all__ = ["TokenCache", "token_digest"]
