"""An issuer's public keys (JWKS), from a file or a URL, looked up by ``kid``.

Rotation without a restart: a file is re-read when it changes (a ``stat`` per
lookup; lookups happen only for tokens not verified yet); a URL is fetched
when the node starts and again when a token names a ``kid`` we do not hold -- at
most once per ``refetch_seconds``, so that tokens with made-up ``kid`` values cannot
make the node hammer the issuer. Fetches run on the event loop with httpx (never a
blocking call on it); a lookup that misses starts one and answers "unknown" now.

Only asymmetric keys are kept (``kty`` RSA, EC, OKP; not ``use: enc``): the node
verifies signatures with public keys, and an ``oct`` key in a JWKS is a mistake we
refuse to act on.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from aralnode._logs import get_logger

log = get_logger("aralnode.access")

MAX_JWKS_BYTES = 1024 * 1024  # a JWKS is a few KiB; more is not one
_KINDS = ("RSA", "EC", "OKP")


def parse_jwks(document: Any) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by ``kid`` ("" for a key without one).

    Raises:
        ValueError: The document is no JWKS.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWKS is an object with a 'keys' list")  # noqa: TRY004 - bad content, not a caller's type error
    keys: dict[str, PyJWK] = {}
    for item in document["keys"]:
        if not isinstance(item, dict) or item.get("kty") not in _KINDS:
            continue
        if item.get("use", "sig") != "sig":
            continue
        try:
            key = PyJWK(item)
        except PyJWKError as exc:
            log.warning("JWKS key %r skipped: %s", item.get("kid"), exc)
            continue
        kid = item.get("kid", "")
        keys[kid if isinstance(kid, str) else str(kid)] = key
    return keys


class KeySource(Protocol):
    """Where a verifier finds an issuer's key by ``kid``."""

    def lookup(self, kid: str) -> PyJWK | None: ...

    def only_key(self) -> PyJWK | None: ...


class JwksFile:
    """Keys from a JWKS file, re-read when it changes (see the module docstring)."""

    __slots__ = ("_keys", "_seen", "path", "reloads")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._keys: dict[str, PyJWK] = {}
        self._seen: tuple[int, int, int] | None = None
        self.reloads = 0
        self._reload(force=True)

    def _reload(self, *, force: bool = False) -> None:
        # One stat per lookup, and lookups happen only for tokens not yet verified
        # (the verified ones are cached): cheap, and a rotation counts at once.
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._seen is not None or force:  # once, not per lookup
                log.warning("JWKS file %s unreadable: %s (keys kept)", self.path, exc)
            self._seen = None
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        try:
            if st.st_size > MAX_JWKS_BYTES:
                raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
            keys = parse_jwks(json.loads(self.path.read_bytes()))
        except (OSError, ValueError) as exc:  # half-written: keep the old keys
            log.warning("JWKS file %s not read: %s (keys kept)", self.path, exc)
            return
        self._keys, self._seen = keys, seen
        self.reloads += 1

    def lookup(self, kid: str) -> PyJWK | None:
        self._reload()
        return self._keys.get(kid)

    def only_key(self) -> PyJWK | None:
        self._reload()
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None


class JwksUrl:
    """Keys from an issuer's JWKS URL (see the module docstring).

    Args:
        url: The JWKS URL.
        refetch_seconds: Least time between two fetches.
        client: Makes the ``httpx.AsyncClient`` a fetch uses (tests pass transports).
    """

    __slots__ = ("_client", "_fetched_at", "_keys", "_task", "fetches", "refetch_seconds", "url")

    def __init__(
        self,
        url: str,
        *,
        refetch_seconds: float = 30.0,
        client: Callable[[], httpx.AsyncClient] | None = None,
    ) -> None:
        self.url = url
        self.refetch_seconds = refetch_seconds
        self._client = client or (lambda: httpx.AsyncClient(timeout=10.0, follow_redirects=False))
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    def lookup(self, kid: str) -> PyJWK | None:
        key = self._keys.get(kid)
        if key is None:
            self.request_fetch()
        return key

    def only_key(self) -> PyJWK | None:
        if not self._keys:
            self.request_fetch()
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def request_fetch(self) -> bool:
        """Start a fetch unless one runs or the last began under ``refetch_seconds``
        ago; whether one runs now. Needs a running event loop (none: nothing)."""
        if self._task is not None and not self._task.done():
            return True
        now = time.monotonic()
        if self._fetched_at is not None and now - self._fetched_at < self.refetch_seconds:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._fetched_at = now
        self._task = loop.create_task(self._fetch())
        return True

    async def settled(self) -> None:
        """Wait for the fetch under way, if any."""
        task = self._task
        if task is not None:
            await asyncio.shield(task)

    async def start(self) -> None:
        """The first fetch (a node calls this as it starts)."""
        self.request_fetch()
        await self.settled()

    async def close(self) -> None:
        """Cancel a fetch under way."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if (current := asyncio.current_task()) is not None and current.cancelling():
                    raise

    async def _fetch(self) -> None:
        try:
            async with self._client() as client:
                response = await client.get(self.url, headers={"accept": "application/json"})
                response.raise_for_status()
                if len(response.content) > MAX_JWKS_BYTES:
                    raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
                keys = parse_jwks(response.json())
        except (httpx.HTTPError, ValueError) as exc:  # keep the keys we have
            log.warning("JWKS %s not fetched: %s (keys kept)", self.url, exc)
            return
        self._keys = keys
        self.fetches += 1


__all__ = ["MAX_JWKS_BYTES", "JwksFile", "JwksUrl", "KeySource", "parse_jwks"]
