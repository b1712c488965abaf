"""API keys: prefixed random secrets, shown once, stored hashed, checked in constant time.

A key reads ``aral_<id>_<secret>``: ``id`` (16 hex digits) finds its record, the
secret is 32 random bytes (256 bits, base64url). The store keeps only the secret's
SHA-256. A fast hash is enough here: a password hash is slow to make guessing a
low-entropy password costly, but nobody guesses 256 random bits, so a slow hash
would only tax every call. Hashes are compared with ``hmac.compare_digest``.

The keys live in one JSON file (``DATA_DIR/apikeys.json``), written atomically
(a new file renamed over the old one, mode 0600, under a lock file) by
``aralnode apikey``; a running node notices a change with one ``stat`` per lookup
and re-reads the file, so created and revoked keys count at once, without restart.

Refusals are ``Unauthenticated``: ``API_KEY_INVALID`` (malformed, unknown, wrong
secret), ``API_KEY_EXPIRED``, ``API_KEY_REVOKED``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aralnode._logs import get_logger
from aralnode.core.errors import Unauthenticated
from aralnode.service.auth import KINDS, NODE, SERVICE, Authenticated, reserved

log = get_logger("aralnode.access")

PREFIX = "aral_"
_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_FILE_BYTES = 64 * 1024 * 1024  # ~200k keys: far past any real use


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(slots=True)
class ApiKeyRecord:
    """One key's record (never its secret).

    Attributes:
        id: Finds the record (the key's middle part).
        principal: The caller the key names.
        kind: ``service`` or ``user``.
        scopes / roles: What it holds.
        created: Unix seconds.
        expires: Unix seconds, or ``None``: never.
        revoked: Unix seconds it was revoked, or ``None``.
        hash: SHA-256 of the secret, hex.
    """

    id: str
    principal: str
    kind: str = SERVICE
    scopes: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    created: float = 0.0
    expires: float | None = None
    revoked: float | None = None
    hash: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKeyRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def public(self) -> dict[str, Any]:
        """What ``apikey list`` shows: everything but the hash."""
        out = asdict(self)
        del out["hash"]
        return out


def split_key(key: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed key, else ``None``."""
    if not key.startswith(PREFIX):
        return None
    key_id, sep, secret = key[len(PREFIX) :].partition("_")
    if not sep or not _ID.match(key_id) or len(secret) < 43:
        return None
    return key_id, secret


def _read(path: Path) -> dict[str, ApiKeyRecord]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    data = json.loads(path.read_bytes() or b"{}")
    items = data.get("keys", []) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"{path} is no API key file (no 'keys' list)")  # noqa: TRY004 - a file's content, as json's own errors
    records = [ApiKeyRecord.from_dict(d) for d in items if isinstance(d, dict)]
    return {r.id: r for r in records}


class ApiKeyStore:
    """The key file, as ``aralnode apikey`` edits it (see the module docstring)."""

    def __init__(self, path: Path, now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.now = now

    def records(self) -> list[ApiKeyRecord]:
        """Every record, oldest first."""
        if not self.path.exists():
            return []
        return sorted(_read(self.path).values(), key=lambda r: r.created)

    @contextlib.contextmanager
    def _editing(self) -> Iterator[dict[str, ApiKeyRecord]]:
        """The records under the lock; written back atomically when the block ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = _read(self.path) if self.path.exists() else {}
            yield records
            self._write(records)
        finally:
            os.close(fd)

    def _write(self, records: dict[str, ApiKeyRecord]) -> None:
        body = json.dumps({"keys": [asdict(r) for r in records.values()]}, indent=1)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def create(
        self,
        principal: str,
        *,
        scopes: list[str],
        roles: list[str] | None = None,
        kind: str = SERVICE,
        expires: float | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """A new key for ``principal``: ``(key, record)``; the key is not kept."""
        if not principal:
            raise ValueError("an API key names a principal")
        if reserved(principal):
            raise ValueError(f"{principal!r} is a name kept for callers nobody identified")
        if kind not in KINDS or kind == NODE:
            raise ValueError("an API key's kind is 'service' or 'user'")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=key_id,
            principal=principal,
            kind=kind,
            scopes=sorted(set(scopes)),
            roles=sorted(set(roles or ())),
            created=self.now(),
            expires=expires,
            hash=_hash(secret),
        )
        with self._editing() as records:
            records[key_id] = record
        return f"{PREFIX}{key_id}_{secret}", record

    def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke the key ``key_id`` (kept, marked, so ``list`` shows it).

        Raises:
            KeyError: No such key.
        """
        with self._editing() as records:
            record = records.get(key_id)
            if record is None:
                raise KeyError(key_id)
            if record.revoked is None:
                record.revoked = self.now()
        return record


class ApiKeyCheck:
    """Checks presented keys against the file, re-read when it changes."""

    __slots__ = ("_records", "_seen", "checks", "now", "path")

    def __init__(self, path: Path, now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.now = now
        self._records: dict[str, ApiKeyRecord] = {}
        self._seen: tuple[int, int, int] | None = None
        self.checks = 0

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._records, self._seen = {}, None
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        try:
            self._records = _read(self.path)
        except (OSError, ValueError) as exc:
            # Fail closed on what we cannot read: no keys rather than stale ones
            # (a revocation must not be missed).
            log.error(  # noqa: TRY400 - the reason is in the line; no trace needed
                "API key file %s unreadable: %s (no key is accepted)", self.path, exc
            )
            self._records = {}
        self._seen = seen

    def authenticate(self, key: str) -> Authenticated:
        """The principal ``key`` names.

        Raises:
            Unauthenticated: The key is malformed, unknown, wrong, expired or revoked.
        """
        self.checks += 1
        parts = split_key(key)
        if parts is None:
            raise Unauthenticated("malformed API key", reason="API_KEY_INVALID")
        key_id, secret = parts
        self._refresh()
        record = self._records.get(key_id)
        # Hash even for an unknown id, so both answers take the same time.
        ok = hmac.compare_digest(_hash(secret), record.hash if record else "0" * 64)
        if record is None or not ok:
            raise Unauthenticated("unknown or wrong API key", reason="API_KEY_INVALID")
        if record.revoked is not None:
            raise Unauthenticated("this API key was revoked", reason="API_KEY_REVOKED")
        if record.expires is not None and self.now() >= record.expires:
            raise Unauthenticated("this API key has expired", reason="API_KEY_EXPIRED")
        return Authenticated(
            caller=record.principal,
            kind=record.kind,
            roles=frozenset(record.roles),
            scopes=frozenset(record.scopes),
        )


__all__ = ["PREFIX", "ApiKeyCheck", "ApiKeyRecord", "ApiKeyStore", "split_key"]
