"""Halt: governance stopped a principal or a peer node, on every door, until an
operator clears it.

A HALT verdict (the govern stage) records who: the call's principal (the
delegating principal of a forwarded call; a peer node calling for itself is a
``peer``). From then on the authenticate stage refuses that subject on every door
(PERMISSION_DENIED, ``HALTED``) before anything else runs, and a halted peer's
handshake is refused. Halts survive a restart when the node has a file for them
(``halts.json`` in the data dir, written atomically); the table is bounded
(``max_halts``): past it a new halt is not recorded -- the halting call is still
refused -- and the node says so loudly.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from aralnode._logs import get_logger
from aralnode.core.context import CallContext
from aralnode.core.errors import PermissionDenied
from aralnode.core.governance import Action, Verdict

log = get_logger("aralnode.governance")

PRINCIPAL, PEER = "principal", "peer"


@dataclass(slots=True, frozen=True)
class HaltEntry:
    subject: str
    kind: str
    reason: str
    rules: tuple[str, ...]
    since_ms: int
    trace_id: str


class Halts:
    """Who is halted (see the module docstring)."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        max_halts: int = 10_000,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.path = path
        self.max_halts = max_halts
        self._now_ms = now_ms
        self._entries: dict[str, HaltEntry] = {}
        self.listeners: list[Callable[[str, HaltEntry], None]] = []
        if path is not None and path.exists():
            self._load(path)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            for row in rows[: self.max_halts]:
                entry = HaltEntry(**{**row, "rules": tuple(row.get("rules", ()))})
                self._entries[entry.subject] = entry
        except (OSError, ValueError, TypeError) as exc:
            # Fail closed would halt everyone; fail open forgets the halts: neither.
            # Refuse to start, naming the file.
            raise ValueError(f"{path}: the halts file cannot be read: {exc}") from None

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps([asdict(e) for e in self._entries.values()], indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    # -- the pipeline's side ----------------------------------------------------------

    def check(self, ctx: CallContext) -> None:
        """Refuse a halted caller or principal (only called while any halt exists)."""
        entries = self._entries
        entry = entries.get(ctx.caller) or entries.get(ctx.principal)
        if entry is not None:
            raise PermissionDenied(
                f"{entry.subject} is halted by governance: {entry.reason} (cleared only by "
                "an operator: aralnode halts clear)",
                reason="HALTED",
                details={"subject": entry.subject, "since_ms": entry.since_ms},
            )

    def is_halted(self, subject: str) -> bool:
        return subject in self._entries

    def halted(self, ctx: CallContext, action: Action, verdict: Verdict) -> None:
        """A HALT verdict on ``ctx``'s call: record its subject. An anonymous caller
        (or a key nobody verified) is not recorded: "anonymous" is everyone without
        an identity, and a made-up key is free; its call is refused all the same."""
        if ctx.anonymous or ctx.kind == "anonymous":
            log.warning("halt of an anonymous caller (%s): the call is refused", ctx.peer)
            return
        kind = PEER if ctx.kind == "node" and not ctx.on_behalf_of else PRINCIPAL
        reason = "; ".join(verdict.reasons) or "halted"
        self.halt(ctx.principal, kind, reason, verdict.rule_ids, ctx.trace_id)

    def halt(
        self, subject: str, kind: str, reason: str, rules: tuple[str, ...] = (), trace_id: str = ""
    ) -> HaltEntry | None:
        """Halt ``subject``; the entry (``None`` if the table is full)."""
        if subject in self._entries:
            return self._entries[subject]
        if len(self._entries) >= self.max_halts:
            log.error(
                "halt of %s not recorded: %d halts already (max_halts); clear some",
                subject, len(self._entries),
            )  # fmt: skip
            return None
        entry = HaltEntry(subject, kind, reason[:512], rules, self._now_ms(), trace_id)
        self._entries[subject] = entry
        self._save()
        log.warning("%s %s halted by governance: %s", kind, subject, entry.reason)
        self._tell("halted", entry)
        return entry

    # -- operators --------------------------------------------------------------------

    def entries(self) -> list[HaltEntry]:
        return list(self._entries.values())

    def clear(self, subject: str, by: str) -> bool:
        entry = self._entries.pop(subject, None)
        if entry is None:
            return False
        self._save()
        log.info("halt of %s %s cleared by %s", entry.kind, subject, by or "an operator")
        self._tell("cleared", entry)
        return True

    def _tell(self, event: str, entry: HaltEntry) -> None:
        for listener in self.listeners:
            try:
                listener(event, entry)
            except Exception:
                log.exception("halt listener failed")


__all__ = ["PEER", "PRINCIPAL", "HaltEntry", "Halts"]
