"""The node's current policy, swapped whole when its file changes (hot reload).

``PolicyHolder`` is the evaluator the pipeline's govern stage holds: it hands each
action to the current ``PolicyEvaluator``. ``check_now`` (run by the node every
``policy_reload_seconds``, and by tests directly) loads a changed file; a file
that is refused is logged with its line and reason and the old policy stays. The
trust debt and collusion counters carry over a reload.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from aralnode._logs import get_logger
from aralnode.core.governance import Action, Verdict
from aralnode.policy.engine import Memory, PolicyEvaluator
from aralnode.policy.load import PolicyError, load_policy

log = get_logger("aralnode.governance")

Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PolicyHolder:
    """The current policy of ``path`` (loaded at once: ``PolicyError`` if refused)."""

    def __init__(
        self, path: Path, now: Callable[[], float], counters: Counter[str] | None = None
    ) -> None:
        self.path = path
        self.counters = counters if counters is not None else Counter()
        self._stamp = _stamp(path)
        policy = load_policy(path)
        self.memory = Memory(now, policy)
        self.current = PolicyEvaluator(policy, self.memory)
        # The current policy's own ``evaluate``, called straight (the govern stage's
        # per-message path); a reload replaces it with the new policy's.
        self.evaluate: Callable[[Action], Verdict] = self.current.evaluate
        self.last_error = ""
        self.on_reload: Callable[[], None] | None = None

    def tier_of(self, action: Action) -> int:
        return self.current.tier_of(action)

    def check_now(self) -> bool:
        """Load the file if it changed; whether a new policy is in force.

        Never raises for the file: a refused one (``PolicyError``, or anything the
        loader did not foresee) is logged and counted and the policy in force stays."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policy = load_policy(self.path)
            evaluator = PolicyEvaluator(policy, self.memory)  # (before anything changes)
        except Exception as exc:  # fail closed: the policy in force stays
            reason = str(exc) if isinstance(exc, PolicyError) else f"{self.path}: {exc!r}"
            self.last_error = reason
            self.counters["governance.policy_rejected"] += 1
            log.error(  # noqa: TRY400 - a refused file's line and reason say it all
                "policy not reloaded, the one in force stays: %s",
                reason,
                exc_info=not isinstance(exc, PolicyError),  # (the unforeseen: where it broke)
            )
            return False
        self.memory.adopt(policy)
        self.current = evaluator
        self.evaluate = evaluator.evaluate
        self.last_error = ""
        self.counters["governance.policy_reloaded"] += 1
        if self.on_reload is not None:
            self.on_reload()
        log.info("policy %s reloaded: %d tripwire(s)", self.path, len(policy.tripwires))
        return True


__all__ = ["PolicyHolder"]
