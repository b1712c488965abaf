"""``aralnode apikey create|list|revoke``: the API keys of a node's data dir.

``create`` prints the new key, and only the key, on stdout (scripts capture it);
it is not stored, only its hash is, so it cannot be shown again. A running node
sees created and revoked keys at once (it re-reads the file when it changes).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aralnode.access.apikeys import ApiKeyRecord, ApiKeyStore
from aralnode.cli_ca import data_dir as data_dir_of
from aralnode.config import NodeConfig

_SPAN = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, now: float) -> float:
    """``--expires``: a span from now (``30d``, ``12h``, ``90m``, ``45s``, ``2w``) or
    an ISO-8601 time (UTC when it names no zone); unix seconds.

    Raises:
        ValueError: Neither, or a time already past.
    """
    match = _SPAN.match(text.strip())
    if match:
        when = now + int(match.group(1)) * _SECONDS[match.group(2)]
    else:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ValueError(
                f"--expires {text!r}: a span (30d, 12h, 90m) or an ISO-8601 time"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        when = moment.timestamp()
    if when <= now:
        raise ValueError(f"--expires {text!r} is not in the future")
    return when


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _store(ns: argparse.Namespace) -> ApiKeyStore:
    if ns.file:
        return ApiKeyStore(Path(ns.file))
    data_dir = data_dir_of(Path(ns.data_dir)) if ns.data_dir else None
    return ApiKeyStore(NodeConfig(name=ns.name, data_dir=data_dir).apikeys_path)


def _create(ns: argparse.Namespace) -> int:
    store = _store(ns)
    expires = parse_expiry(ns.expires, time.time()) if ns.expires else None
    key, _record = store.create(
        ns.principal,
        scopes=_names(ns.scopes),
        roles=_names(ns.roles),
        kind=ns.kind,
        expires=expires,
    )
    print(key)
    return 0


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(record: ApiKeyRecord, now: float) -> str:
    if record.revoked is not None:
        return "revoked"
    if record.expires is not None and now >= record.expires:
        return "expired"
    return "active"


def _list(ns: argparse.Namespace) -> int:
    records = _store(ns).records()
    now = time.time()
    if ns.json:
        out: list[dict[str, Any]] = [{**r.public(), "state": _state(r, now)} for r in records]
        print(json.dumps(out, indent=2))
        return 0
    rows = [("ID", "PRINCIPAL", "KIND", "SCOPES", "ROLES", "EXPIRES", "STATE")]
    rows += [
        (
            r.id,
            r.principal,
            r.kind,
            ",".join(r.scopes) or "-",
            ",".join(r.roles) or "-",
            _when(r.expires),
            _state(r, now),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(ns: argparse.Namespace) -> int:
    try:
        record = _store(ns).revoke(ns.id)
    except KeyError:
        print(f"error: no API key {ns.id!r}", file=sys.stderr)
        return 1
    print(f"revoked {record.id} ({record.principal})", file=sys.stderr)
    return 0


def add_parser(subparsers: Any) -> None:
    """``apikey`` and its subcommands, on ``aralnode``'s subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", help="the node's data dir (default: that of --name)")
    where.add_argument("--name", default="aralnode", help="node name (default: aralnode)")
    where.add_argument("--file", help="the key file itself (default: DATA_DIR/apikeys.json)")
    apikey = subparsers.add_parser("apikey", help="API keys of a node")
    sub = apikey.add_subparsers(dest="apikey_command", required=True)
    create = sub.add_parser("create", parents=[where], help="make a key; prints it (only)")
    create.add_argument("--principal", required=True, help="the caller the key names")
    create.add_argument("--scopes", default="", help="comma-separated scopes")
    create.add_argument("--roles", default="", help="comma-separated roles")
    create.add_argument("--kind", choices=("service", "user"), default="service")
    create.add_argument("--expires", help="30d, 12h, 90m or an ISO-8601 time (default: never)")
    create.set_defaults(func=_create)
    listing = sub.add_parser("list", parents=[where], help="list keys (never the secrets)")
    listing.add_argument("--json", action="store_true", help="as JSON")
    listing.set_defaults(func=_list)
    revoke = sub.add_parser("revoke", parents=[where], help="revoke a key by its id")
    revoke.add_argument("id", help="the key's id (as `apikey list` shows it)")
    revoke.set_defaults(func=_revoke)


__all__ = ["add_parser", "parse_expiry"]
