"""What verified bearer tokens stand for, kept until they expire.

A token is verified once (a signature check, or a round trip to an introspection
endpoint) and then found by the SHA-256 of its text: the cache never holds a token
itself, and it is bounded (least recently used dropped first) because anyone who
can reach a door can make it verify tokens.

An entry may carry a tag -- what verified it (a JWT's key) -- that its user checks
on every use (``get(..., valid=...)``): an entry whose key was withdrawn is dropped
then, and the token verified again, while a rotation that only adds keys keeps the
other entries.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

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
        self._entries: OrderedDict[bytes, tuple[Authenticated, float, object]] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, token: str, now: float, *, valid: Callable[[object], bool] | None = None
    ) -> Authenticated | None:
        """The principal ``token`` was verified as, if it has not expired by ``now``
        and, when ``valid`` is given, ``valid(tag)`` holds for the tag it was put
        with (else the entry is dropped)."""
        key = token_digest(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        who, expires, tag = entry
        if now >= expires or (valid is not None and not valid(tag)):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return who

    def put(self, token: str, who: Authenticated, expires: float, tag: object = None) -> None:
        """Keep ``who`` for ``token`` until ``expires`` (unix seconds), with ``tag``
        (what verified it; see ``get``)."""
        key = token_digest(token)
        self._entries[key] = (who, expires, tag)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every token."""
        self._entries.clear()


__all__ = ["TokenCache", "token_digest"]
