"""Halt: governance stopped a principal or a peer node, on every door, until an
operator clears it.

A HALT verdict (the govern stage) records who: the call's principal (the
delegating principal of a forwarded call; a peer node calling for itself is a
``peer``). From then on the authenticate stage refuses that subject on every door
(PERMISSION_DENIED, ``HALTED``) before anything else runs, and a halted peer's
handshake is refused.

A principal an untrusted peer names is its own (``alice@<peer id>``,
``service.auth``), and a peer makes such names up for free: past
``named_per_peer`` halted principals one peer named, its next halt halts the peer
itself (kind ``peer``: everything it sends is refused, on every door), so one key
cannot fill the table with names.

Halts survive a restart when the node has a file for them (``halts.json`` in the
data dir): a halt holds in memory at once, and the file is written off the event
loop, atomically (a temporary file, fsynced, then renamed), by one writer thread
that writes the newest table each time -- a burst of halts costs a write or two,
not one each. The table is bounded (``max_halts``): a full table still records a
new halt, evicting an older one -- first the principals of peers halted
themselves, then other peers' named principals, then peers, the node's own
principals last -- and the node says so loudly (``evicted`` counts them).
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aralnode._logs import get_logger
from aralnode.core.context import CallContext
from aralnode.core.errors import PermissionDenied
from aralnode.core.governance import Action, Verdict

log = get_logger("aralnode.governance")

PRINCIPAL, PEER = "principal", "peer"
# Halted principals one untrusted peer may have named before its next halt is its own.
NAMED_PER_PEER = 8
# Eviction order when the table is full (lowest first): a principal a halted peer
# named (the peer's halt refuses it anyway), another peer's named principal, a peer,
# one of the node's own principals.
_SHADOWED, _NAMED, _PEER, _OWN = range(4)


@dataclass(slots=True, frozen=True)
class HaltEntry:
    subject: str
    kind: str
    reason: str
    rules: tuple[str, ...]
    since_ms: int
    trace_id: str
    named_by: str = ""  # the untrusted peer that named this principal (``alice@<it>``)

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "subject": self.subject, "kind": self.kind, "reason": self.reason,
            "rules": list(self.rules), "since_ms": self.since_ms, "trace_id": self.trace_id,
        }  # fmt: skip
        if self.named_by:
            row["named_by"] = self.named_by
        return row


def _write_file(path: Path, entries: list[HaltEntry]) -> None:
    """The table to ``path``, atomically: a temporary file, fsynced, renamed over it."""
    tmp = path.with_suffix(".tmp")
    data = "[\n" + ",\n".join(json.dumps(e.as_row()) for e in entries) + "\n]\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# The writer of each file in this process: a table opened on a file first waits for
# the writes still pending on it (a node restarted in the same process).
_WRITERS: weakref.WeakValueDictionary[Path, _Writer] = weakref.WeakValueDictionary()


class _Writer:
    """Writes a table to its file in one thread at a time, off the event loop:
    ``request`` marks the table changed; the thread writes the table as it is when
    it starts each write, until no change came in meanwhile."""

    def __init__(self, path: Path, snapshot: Callable[[], list[HaltEntry]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._changed = False
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.failures = 0
        previous = _WRITERS.get(path)
        if previous is not None:
            previous.flush()
        _WRITERS[path] = self

    def request(self) -> None:
        with self._lock:
            self._changed = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aral-halts-writer")
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._changed:
                    self._thread = None
                    return
                self._changed = False
            failed: OSError | None = None
            try:
                _write_file(self.path, self._snapshot())
                self.writes += 1
            except OSError as exc:  # the halts hold in memory; the next change retries
                failed = exc
            except Exception:  # a bug: logged, and the writer stays usable
                self.failures += 1
                log.exception("halts file %s not written", self.path)
            if failed is not None:
                self.failures += 1
                log.error("halts file %s not written: %s (the halts hold in memory; the "
                          "next change writes again)", self.path, failed)  # fmt: skip

    def flush(self) -> None:
        """Wait for the pending writes (blocks: not on the event loop)."""
        while (thread := self._thread) is not None and thread is not threading.current_thread():
            thread.join()
            if self._thread is thread:  # (it ended without clearing itself: no loop)
                break


class Halts:
    """Who is halted (see the module docstring)."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        max_halts: int = 10_000,
        named_per_peer: int = NAMED_PER_PEER,
        now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.path = path
        self.max_halts = max_halts
        self.named_per_peer = named_per_peer
        self._now_ms = now_ms
        self._entries: dict[str, HaltEntry] = {}
        self._order: tuple[dict[str, None], ...] = tuple({} for _ in range(4))  # by rank
        self._named: dict[str, dict[str, None]] = {}  # peer -> halted principals it named
        self._lock = threading.Lock()  # the table, against the writer's snapshot
        self.evicted = 0
        self.listeners: list[Callable[[str, HaltEntry], None]] = []
        self._writer = None if path is None else _Writer(path, self._snapshot)
        if path is not None and path.exists():
            self._load(path)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
            for row in rows[: self.max_halts]:
                self._add(HaltEntry(**{**row, "rules": tuple(row.get("rules", ()))}))
        except (OSError, ValueError, TypeError) as exc:
            # Fail closed would halt everyone; fail open forgets the halts: neither.
            # Refuse to start, naming the file.
            raise ValueError(f"{path}: the halts file cannot be read: {exc}") from None

    def _snapshot(self) -> list[HaltEntry]:
        with self._lock:
            return list(self._entries.values())

    def _save(self) -> None:
        if self._writer is not None:
            self._writer.request()

    def flush(self) -> None:
        """Wait until the file holds the table (blocks: call it off the event loop,
        ``asyncio.to_thread(halts.flush)``, as a stopping node does)."""
        if self._writer is not None:
            self._writer.flush()

    @property
    def writes(self) -> int:
        """Times the file was written."""
        return 0 if self._writer is None else self._writer.writes

    # -- the table and its indexes ------------------------------------------------------

    def _rank(self, entry: HaltEntry) -> int:
        if entry.kind == PEER:
            return _PEER
        if entry.named_by:
            peer = self._entries.get(entry.named_by)
            return _SHADOWED if peer is not None and peer.kind == PEER else _NAMED
        return _OWN

    def _add(self, entry: HaltEntry) -> None:
        with self._lock:
            self._entries[entry.subject] = entry
        self._order[self._rank(entry)][entry.subject] = None
        if entry.named_by:
            self._named.setdefault(entry.named_by, {})[entry.subject] = None
        if entry.kind == PEER:
            self._rerank(entry.subject, _NAMED, _SHADOWED)

    def _remove(self, subject: str) -> HaltEntry | None:
        entry = self._entries.get(subject)
        if entry is None:
            return None
        self._order[self._rank(entry)].pop(subject, None)
        with self._lock:
            del self._entries[subject]
        if entry.named_by:
            named = self._named.get(entry.named_by, {})
            named.pop(subject, None)
            if not named:
                self._named.pop(entry.named_by, None)
        if entry.kind == PEER:
            self._rerank(subject, _SHADOWED, _NAMED)
        return entry

    def _rerank(self, peer: str, old: int, new: int) -> None:
        """The principals ``peer`` named, moved from rank ``old`` to ``new`` (the peer
        was halted or cleared)."""
        for subject in self._named.get(peer, ()):
            if subject in self._order[old]:
                del self._order[old][subject]
                self._order[new][subject] = None

    def _make_room(self, subject: str) -> None:
        """Evict the first entry of the lowest rank (the table is full)."""
        order = next(o for o in self._order if o)
        victim = self._remove(next(iter(order)))
        assert victim is not None
        self.evicted += 1
        log.error(
            "halts table full (max_halts %d): the halt of %s %s evicted to record %s",
            self.max_halts, victim.kind, victim.subject, subject,
        )  # fmt: skip

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
        an identity, and a made-up key is free; its call is refused all the same.
        A principal a peer named (``alice@<peer>``) counts against that peer: past
        ``named_per_peer`` of them, the peer itself is halted."""
        if ctx.anonymous:
            log.warning("halt of an anonymous caller (%s): the call is refused", ctx.peer)
            return
        reason = "; ".join(verdict.reasons) or "halted"
        if ctx.kind == "node" and not ctx.on_behalf_of:
            self.halt(ctx.principal, PEER, reason, verdict.rule_ids, ctx.trace_id)
            return
        peer = ctx.caller
        by = peer if ctx.kind == "node" and ctx.principal.endswith("@" + peer) else ""
        named = len(self._named.get(by, ())) if by else 0
        if named >= self.named_per_peer and ctx.principal not in self._entries:
            reason = f"named {named} principals governance halted, then {ctx.principal}: {reason}"
            self.halt(peer, PEER, reason, verdict.rule_ids, ctx.trace_id)
            return
        self.halt(ctx.principal, PRINCIPAL, reason, verdict.rule_ids, ctx.trace_id, named_by=by)

    def halt(
        self,
        subject: str,
        kind: str,
        reason: str,
        rules: tuple[str, ...] = (),
        trace_id: str = "",
        *,
        named_by: str = "",
    ) -> HaltEntry:
        """Halt ``subject`` (a full table evicts an older halt to make room)."""
        if subject in self._entries:
            return self._entries[subject]
        while self._entries and len(self._entries) >= self.max_halts:
            self._make_room(subject)
        entry = HaltEntry(
            subject, kind, reason[:512], rules, self._now_ms(), trace_id,
            named_by if kind == PRINCIPAL else "",
        )  # fmt: skip
        self._add(entry)
        self._save()
        log.warning("%s %s halted by governance: %s", kind, subject, entry.reason)
        self._tell("halted", entry)
        return entry

    # -- operators --------------------------------------------------------------------

    def entries(self) -> list[HaltEntry]:
        return list(self._entries.values())

    def clear(self, subject: str, by: str) -> bool:
        entry = self._remove(subject)
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


__all__ = ["NAMED_PER_PEER", "PEER", "PRINCIPAL", "HaltEntry", "Halts"]
