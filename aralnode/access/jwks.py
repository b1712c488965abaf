"""An issuer's public keys (JWKS), from a file or a URL, looked up by ``kid``.

Rotation without a restart: a file is re-read when it changes (a ``stat`` per
lookup); a URL is fetched when the node starts, again when a token names a ``kid``
we do not hold, and again once what it answered is stale (``Cache-Control: max-age``
bounded to ``MIN_REFRESH_SECONDS``..``MAX_REFRESH_SECONDS``, else ``refresh_seconds``)
-- never twice within ``refetch_seconds``, so that tokens with made-up ``kid`` values
cannot make the node hammer the issuer. Fetches run on the event loop with httpx
(never a blocking call on it); a lookup that misses starts one and answers "unknown"
now. A fetch is bounded: one deadline for all of it (``fetch_seconds``), and at most
``MAX_JWKS_BYTES`` read (a larger ``Content-Length`` is refused unread); a door waits
for it at most ``wait_seconds``.

A key the issuer withdraws stops verifying: the verifier looks each cached token's
key up again on every use (``JwtVerifier``), so a token verified with a key that is no
longer in the set is verified again -- and refused.

Only asymmetric keys are kept (``kty`` RSA, EC, OKP; not ``use: enc``): the node
verifies signatures with public keys, and an ``oct`` key in a JWKS is a mistake we
refuse to act on.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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
FETCH_SECONDS = 10.0  # the whole of one fetch: connect, headers, body
WAIT_SECONDS = 5.0  # the most a door waits for a fetch before it refuses for a retry
REFRESH_SECONDS = 300.0  # an answer without max-age is fetched again after this
MIN_REFRESH_SECONDS = 60.0  # an issuer's max-age=0 must not make us fetch per request
MAX_REFRESH_SECONDS = 3600.0  # nor a max-age of a year keep a withdrawn key for a year
_KINDS = ("RSA", "EC", "OKP")
_DIGITS = re.compile(r"[0-9]{1,12}")
# Failures a fetch (or an introspection) answers with: the keys (the cache) stay as
# they were. RecursionError: a JSON document nested deeper than the parser goes.
FETCH_ERRORS = (httpx.HTTPError, ValueError, TimeoutError, RecursionError)


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


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, refused past ``limit`` bytes: at once
    when its ``Content-Length`` says so, else as soon as that many have come.

    Raises:
        ValueError: The body is larger than ``limit``.
    """
    declared = response.headers.get("content-length", "")
    if _DIGITS.fullmatch(declared) is None and declared:
        raise ValueError("a Content-Length that is no length")
    if declared and int(declared) > limit:
        raise ValueError(f"larger than {limit} bytes (Content-Length)")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            raise ValueError(f"larger than {limit} bytes")
    return bytes(body)


def max_age(cache_control: str | None) -> float | None:
    """The seconds a ``Cache-Control`` header lets an answer be kept (``no-cache`` and
    ``no-store``: 0); ``None`` when it says nothing about it."""
    ages: list[int] = []
    for part in (cache_control or "").split(","):
        name, _, value = part.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-cache", "no-store"):
            ages.append(0)
        elif name == "max-age" and _DIGITS.fullmatch(value := value.strip().strip('"')):
            ages.append(int(value))
    return float(min(ages)) if ages else None


def same_key(one: PyJWK | None, other: PyJWK) -> bool:
    """Whether ``one`` is the key ``other`` is (a re-read set holds new objects)."""
    return one is not None and (one is other or one._jwk_data == other._jwk_data)


def _note_withdrawn(where: object, old: dict[str, PyJWK], new: dict[str, PyJWK]) -> None:
    gone = sorted(kid for kid, key in old.items() if not same_key(new.get(kid), key))
    if gone:
        log.info("JWKS %s: keys withdrawn or replaced: %r", where, gone[:16])


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
        # One stat per lookup (a cached token's key is looked up again on each use,
        # as an API key's file is stat'ed per check): a rotation counts at once.
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
        except (OSError, ValueError, RecursionError) as exc:  # half-written: keep the old keys
            log.warning("JWKS file %s not read: %s (keys kept)", self.path, exc)
            return
        _note_withdrawn(self.path, self._keys, keys)
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
        refresh_seconds: How long an answer without ``max-age`` is used before it is
            fetched again (never sooner than ``refetch_seconds``).
        fetch_seconds: Deadline of one whole fetch.
        wait_seconds: The most ``settled`` waits.
        client: Makes the ``httpx.AsyncClient`` a fetch uses (tests pass transports).
        clock: Monotonic seconds (tests pass one they move).
    """

    __slots__ = (
        "_client",
        "_fetched_at",
        "_fresh_until",
        "_keys",
        "_task",
        "clock",
        "fetch_seconds",
        "fetches",
        "refetch_seconds",
        "refresh_seconds",
        "url",
        "wait_seconds",
    )

    def __init__(
        self,
        url: str,
        *,
        refetch_seconds: float = 30.0,
        refresh_seconds: float = REFRESH_SECONDS,
        fetch_seconds: float = FETCH_SECONDS,
        wait_seconds: float = WAIT_SECONDS,
        client: Callable[[], httpx.AsyncClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refetch_seconds = refetch_seconds
        self.refresh_seconds = refresh_seconds
        self.fetch_seconds = fetch_seconds
        self.wait_seconds = wait_seconds
        self._client = client or (lambda: httpx.AsyncClient(timeout=10.0, follow_redirects=False))
        self.clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None
        self._fresh_until: float | None = None  # when the keys we hold are stale
        self._task: asyncio.Task[None] | None = None
        self.fetches = 0

    def lookup(self, kid: str) -> PyJWK | None:
        self._refresh_if_stale()
        key = self._keys.get(kid)
        if key is None:
            self.request_fetch()
        return key

    def only_key(self) -> PyJWK | None:
        self._refresh_if_stale()
        if not self._keys:
            self.request_fetch()
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    def _refresh_if_stale(self) -> None:
        # The keys we hold keep answering while the new ones are fetched: a withdrawn
        # key stops verifying once the fetch is in (the verifier asks on every use).
        if self._fresh_until is not None and self.clock() >= self._fresh_until:
            self.request_fetch()

    def request_fetch(self) -> bool:
        """Start a fetch unless one runs or the last began under ``refetch_seconds``
        ago; whether one runs now. Needs a running event loop (none: nothing)."""
        if self._task is not None and not self._task.done():
            return True
        now = self.clock()
        if self._fetched_at is not None and now - self._fetched_at < self.refetch_seconds:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self._fetched_at = now
        self._task = loop.create_task(self._fetch())
        return True

    @property
    def fetching(self) -> bool:
        """Whether a fetch is under way."""
        return self._task is not None and not self._task.done()

    async def settled(self) -> None:
        """Wait for the fetch under way, if any, at most ``wait_seconds`` (it goes on
        after that, within its own deadline; a caller then decides with what we hold)."""
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=self.wait_seconds)

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
            async with asyncio.timeout(self.fetch_seconds):
                body, cache_control = await self._download()
            keys = parse_jwks(json.loads(body))
        except FETCH_ERRORS as exc:  # keep the keys we have
            log.warning("JWKS %s not fetched: %s (keys kept)", self.url, _describe(exc))
            return
        _note_withdrawn(self.url, self._keys, keys)
        self._keys = keys
        self._fresh_until = self.clock() + self._period(cache_control)
        self.fetches += 1

    async def _download(self) -> tuple[bytes, str | None]:
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with (
            self._client() as client,
            client.stream("GET", self.url, headers=headers) as response,
        ):
            response.raise_for_status()
            body = await read_capped(response, MAX_JWKS_BYTES)
            return body, response.headers.get("cache-control")

    def _period(self, cache_control: str | None) -> float:
        """How long an answer is used: its ``max-age`` (bounded both ways), else
        ``refresh_seconds``; never under ``refetch_seconds``."""
        age = max_age(cache_control)
        if age is None:
            chosen = self.refresh_seconds
        else:
            chosen = min(MAX_REFRESH_SECONDS, max(MIN_REFRESH_SECONDS, age))
        return max(self.refetch_seconds, chosen)


def _describe(exc: BaseException) -> str:
    """An error for the log (a deadline's TimeoutError says nothing by itself)."""
    if isinstance(exc, TimeoutError):
        return "no answer within the deadline"
    return str(exc) or type(exc).__name__


__all__ = [
    "FETCH_ERRORS",
    "MAX_JWKS_BYTES",
    "JwksFile",
    "JwksUrl",
    "KeySource",
    "max_age",
    "parse_jwks",
    "read_capped",
    "same_key",
]
