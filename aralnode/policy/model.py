"""What a policy file says, as frozen data (docs/governance.md is the reference).

The loader (``policy.load``) builds these from TOML or YAML and refuses anything it
does not know; the engine (``policy.engine``) evaluates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aralnode.core.governance import Decision, Direction
from aralnode.policy.post import PostPolicy

# ACGP-1008 §2.4: the minimum ACL tier of each tool category.
DEFAULT_CATEGORY_TIERS: Mapping[str, int] = {
    "unspecified": 0,
    "read_only": 0,
    "limited_write": 1,
    "external_api": 2,
    "database": 3,
    "system": 4,
    "financial": 5,
}
MAX_TIER = 5
DEFAULT_DIRECTIONS = frozenset({Direction.INVOKE, Direction.SEND, Direction.RECEIVE})


@dataclass(slots=True, frozen=True)
class TierAction:
    """A decision for callers whose tier is in ``low..high``."""

    low: int
    high: int
    decision: Decision


@dataclass(slots=True, frozen=True)
class Tripwire:
    """A rule: on the actions it names, when its condition holds, its decision."""

    id: str
    line: int
    capabilities: tuple[str, ...] = ()  # exact ids and fnmatch globs; empty: all
    directions: frozenset[Direction] = DEFAULT_DIRECTIONS
    when: str = ""  # CEL; "" always holds
    action: tuple[TierAction, ...] = (TierAction(0, MAX_TIER, Decision.OK),)
    flag: bool = False
    debt: float | None = None
    reason: str = ""
    set: Mapping[str, Any] = field(default_factory=dict)

    def decision_for(self, tier: int) -> Decision:
        for entry in self.action:
            if entry.low <= tier <= entry.high:
                return entry.decision
        return Decision.OK


@dataclass(slots=True, frozen=True)
class Tiers:
    default: int = 1
    anonymous: int = 0
    local: int = MAX_TIER
    principals: Mapping[str, int] = field(default_factory=dict)
    roles: Mapping[str, int] = field(default_factory=dict)
    peers: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Categories:
    minimum: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_CATEGORY_TIERS))
    below_tier: Decision = Decision.BLOCK


@dataclass(slots=True, frozen=True)
class TrustDebtPolicy:
    flag_weight: float = 0.1
    half_life_seconds: float = 3600.0
    max_principals: int = 10_000


@dataclass(slots=True, frozen=True)
class Threshold:
    """A collusion tripwire: ``count`` events within ``window_seconds`` -> ``decision``."""

    count: int
    window_seconds: float
    decision: Decision
    categories: frozenset[str] = frozenset()
    flag: bool = False


@dataclass(slots=True, frozen=True)
class CollusionPolicy:
    rapid_exchange: Threshold | None = None
    data_aggregation: Threshold | None = None
    circular_depth: int | None = None
    circular_decision: Decision = Decision.HALT
    max_tracked: int = 10_000


@dataclass(slots=True, frozen=True)
class EscalationPolicy:
    """How escalated calls wait (``timeout_seconds`` 0: refused at once)."""

    timeout_seconds: float = 60.0
    max_pending: int = 256
    max_pending_per_principal: int = 16


@dataclass(slots=True, frozen=True)
class Policy:
    """A whole policy file."""

    source: str = "<policy>"
    environment: str = "development"
    tiers: Tiers = field(default_factory=Tiers)
    categories: Categories = field(default_factory=Categories)
    capabilities: Mapping[str, str] = field(default_factory=dict)  # glob -> category
    tripwires: tuple[Tripwire, ...] = ()
    trust_debt: TrustDebtPolicy = field(default_factory=TrustDebtPolicy)
    collusion: CollusionPolicy = field(default_factory=CollusionPolicy)
    requests_min_tier: int = 0
    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)
    post: PostPolicy | None = None  # no [post]: results are not checked


__all__ = [
    "DEFAULT_CATEGORY_TIERS",
    "DEFAULT_DIRECTIONS",
    "MAX_TIER",
    "Categories",
    "CollusionPolicy",
    "EscalationPolicy",
    "Policy",
    "Threshold",
    "TierAction",
    "Tiers",
    "Tripwire",
    "TrustDebtPolicy",
]
