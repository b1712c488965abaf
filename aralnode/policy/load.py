"""Reading a policy file: TOML or YAML, every error with its line.

An invalid file is refused whole with ``PolicyError("FILE:LINE: reason")``: a
syntax error where the parser found it, a semantic one (an unknown key, a tier out
of range, a condition that does not compile) at the line of the key that holds it.
Unknown keys are errors: a typo must not silently switch a rule off.
"""

from __future__ import annotations

import fnmatch
import math
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from aralnode.core.governance import Decision, Direction
from aralnode.policy import expr
from aralnode.policy.model import (
    DEFAULT_CATEGORY_TIERS,
    DEFAULT_DIRECTIONS,
    MAX_TIER,
    Categories,
    CollusionPolicy,
    EscalationPolicy,
    Policy,
    Threshold,
    TierAction,
    Tiers,
    Tripwire,
    TrustDebtPolicy,
)
from aralnode.policy.post import POST_ACTIONS, Detector, PostPolicy

Key = str | int
_DECISIONS = {d.label: d for d in Decision}
_TIER_RANGE = re.compile(r"^(\d)\s*-\s*(\d)$|^(\d)$")
_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
# The largest values the loader takes (docs/governance.md): durations (timeouts,
# windows, half-lives) up to a year, trust debt weights up to a million, counts
# (limits, thresholds, depths) up to a billion. ``inf`` and ``nan`` never.
MAX_SECONDS = 365 * 86_400.0
MAX_WEIGHT = 1_000_000.0
MAX_COUNT = 1_000_000_000


class PolicyError(ValueError):
    """The file is refused: ``FILE:LINE: reason``."""


class _Lines:
    """Finds the line of a key path in the source (for error messages)."""

    def __init__(self, text: str, yaml_node: yaml.Node | None) -> None:
        self.lines = text.splitlines()
        self.node = yaml_node

    def of(self, path: Sequence[Key]) -> int:
        if self.node is not None:
            return self._yaml(path)
        return self._toml(path)

    def _yaml(self, path: Sequence[Key]) -> int:
        node: Any = self.node
        line = 1
        for key in path:
            if isinstance(node, yaml.MappingNode):
                found = next((v for k, v in node.value if k.value == key), None)
                key_node = next((k for k, _ in node.value if k.value == key), None)
                if found is None or key_node is None:
                    break
                line, node = key_node.start_mark.line + 1, found
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
                if key >= len(node.value):
                    break
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def _toml(self, path: Sequence[Key]) -> int:
        lines = self.lines
        if not path:
            return 1
        head, rest = path[0], list(path[1:])
        start, end = 0, len(lines)
        key: Key | None
        if rest and isinstance(rest[0], int):  # an array of tables: its N-th header
            header = re.compile(rf"^\s*\[\[\s*{re.escape(str(head))}\s*\]\]")
            hits = [i for i, line in enumerate(lines) if header.match(line)]
            index = rest.pop(0)
            if not isinstance(index, int) or index >= len(hits):
                return 1
            start = hits[index]
            end = self._section_end(start)
            key = rest[0] if rest else None
        elif rest:  # a table: its header, then the key in it
            header = re.compile(rf"^\s*\[\s*{re.escape(str(head))}\s*\]")
            hit = next((i for i, line in enumerate(lines) if header.match(line)), None)
            if hit is None:
                key = head  # maybe an inline table at the top
                end = self._section_end(-1)
            else:
                start, end, key = hit, self._section_end(hit), rest[0]
        else:
            key, end = head, self._section_end(-1)
        if key is None:
            return start + 1
        pattern = re.compile(rf"^\s*[\"']?{re.escape(str(key))}[\"']?\s*=")
        for i in range(max(start, 0), end):
            if pattern.match(lines[i]):
                return i + 1
        return start + 1

    def _section_end(self, start: int) -> int:
        for i in range(start + 1, len(self.lines)):
            if self.lines[i].lstrip().startswith("["):
                return i
        return len(self.lines)


class _Reader:
    def __init__(self, source: str, lines: _Lines) -> None:
        self.source = source
        self.lines = lines
        self.at: Sequence[Key] = []  # the table being read (for an unforeseen error's line)

    def fail(self, path: Sequence[Key], reason: str) -> PolicyError:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
        return PolicyError(f"{self.source}:{self.lines.of(path)}: {where}: {reason}")

    def table(self, value: Any, path: Sequence[Key], known: set[str]) -> Mapping[str, Any]:
        self.at = path
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a table")
        for key in value:
            if key not in known:
                hint = ", ".join(sorted(known))
                raise self.fail([*path, key], f"unknown key (known: {hint})")
        return value

    def tier(self, value: Any, path: Sequence[Key]) -> int:
        if isinstance(value, str) and value.upper().startswith("ACL-"):
            value = value[4:]
            value = int(value) if value in {str(t) for t in range(MAX_TIER + 1)} else value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIER:
            raise self.fail(path, f"a tier is 0..{MAX_TIER} or 'ACL-0'..'ACL-{MAX_TIER}'")
        return value

    def number(
        self, value: Any, path: Sequence[Key], *, minimum: float, maximum: float, unit: str = ""
    ) -> float:
        """A finite number in ``minimum..maximum`` (an int or a float; not ``inf``/``nan``)."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not minimum <= value <= maximum  # (nan compares false: refused here too)
            or not math.isfinite(value)
        ):
            raise self.fail(path, f"must be a finite number{unit} in {minimum:g}..{maximum:.0f}")
        return float(value)

    def seconds(self, value: Any, path: Sequence[Key], *, minimum: float = 0.0) -> float:
        return self.number(value, path, minimum=minimum, maximum=MAX_SECONDS, unit=" of seconds")

    def weight(self, value: Any, path: Sequence[Key]) -> float:
        return self.number(value, path, minimum=0.0, maximum=MAX_WEIGHT)

    def count(self, value: Any, path: Sequence[Key]) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_COUNT:
            raise self.fail(path, f"must be an integer in 1..{MAX_COUNT}")
        return value

    def decision(self, value: Any, path: Sequence[Key]) -> Decision:
        if not isinstance(value, str) or value not in _DECISIONS:
            raise self.fail(path, f"a decision is one of {', '.join(_DECISIONS)}")
        return _DECISIONS[value]

    def tier_map(self, value: Any, path: Sequence[Key]) -> dict[str, int]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, "must be a table of name = tier")
        return {str(k): self.tier(v, [*path, k]) for k, v in value.items()}


def load_policy(path: Path) -> Policy:
    """Read and check ``path`` (``.yaml``/``.yml`` as YAML, anything else TOML).

    Raises:
        PolicyError: the file cannot be read or is refused (``FILE:LINE: reason``).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}:1: cannot read the policy: {exc}") from None
    return parse_policy(text, str(path), yaml_format=path.suffix in (".yaml", ".yml"))


def parse_policy(text: str, source: str = "<policy>", *, yaml_format: bool = False) -> Policy:
    """A policy from its text (see ``load_policy``).

    Fails closed: whatever goes wrong reading the file -- a value of a shape no check
    foresaw, nesting too deep for the parser -- refuses it with ``PolicyError``
    naming the file (and the table being read), never another exception."""
    r: _Reader | None = None
    try:
        data, node = _syntax(text, source, yaml_format=yaml_format)
        r = _Reader(source, _Lines(text, node))
        return _policy(r, data)
    except PolicyError:
        raise
    except Exception as exc:  # refused whole, with the reason
        line = r.lines.of(r.at) if r is not None else 1
        reason = f"{type(exc).__name__}: {exc}"[:200]
        raise PolicyError(f"{source}:{line}: the policy cannot be read: {reason}") from None


def _syntax(text: str, source: str, *, yaml_format: bool) -> tuple[Any, yaml.Node | None]:
    """The file's data (and its YAML node tree, for the lines); a syntax error at its line."""
    try:
        if yaml_format:
            return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
        return tomllib.loads(text), None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise PolicyError(f"{source}:{match.group(1) if match else 1}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError(f"{source}:{line}: {exc}") from None


def _policy(r: _Reader, data: Any) -> Policy:
    top = r.table(data if data is not None else {}, [], _TOP)
    version = top.get("version")
    # 1 (YAML's 1.0 too, as a file written for an earlier node said); not true
    if isinstance(version, bool) or not isinstance(version, int | float) or version != 1:
        raise r.fail(["version"], "must be 1")
    environment = top.get("environment", "development")
    if not isinstance(environment, str):
        raise r.fail(["environment"], "must be a string")
    filtering = r.table(top.get("filtering"), ["filtering"], {"requests_min_tier"})
    trust_debt = _trust_debt(r, top.get("trust_debt"))
    return Policy(
        source=r.source,
        environment=environment,
        tiers=_tiers(r, top.get("tiers")),
        categories=_categories(r, top.get("categories")),
        capabilities=_capabilities(r, top.get("capabilities")),
        tripwires=_tripwires(r, top.get("tripwires")),
        trust_debt=trust_debt,
        collusion=_collusion(r, top.get("collusion")),
        requests_min_tier=r.tier(
            filtering.get("requests_min_tier", 0), ["filtering", "requests_min_tier"]
        ),
        escalation=_escalation(r, top.get("escalation")),
        post=_post(r, top.get("post"), trust_debt.flag_weight),
    )


def _post(r: _Reader, value: Any, flag_weight: float) -> PostPolicy | None:
    if value is None:
        return None
    path: list[Key] = ["post"]
    known = {"sensitive", "schema_mismatch", "replacement", "builtin", "detectors", "messages"}
    t = r.table(value, path, known)
    sensitive = t.get("sensitive", {"0-2": "redact", "3-5": "escalate"})
    spans: list[tuple[int, int, str]] = []
    if isinstance(sensitive, str):
        sensitive = {"0-5": sensitive}
    if not isinstance(sensitive, Mapping):
        raise r.fail([*path, "sensitive"], "an action, or a table of tier range = action")
    for span, action in sensitive.items():
        low, high = _span(r, str(span), [*path, "sensitive", span])
        if not isinstance(action, str) or action not in POST_ACTIONS:
            raise r.fail([*path, "sensitive", span], f"one of {', '.join(POST_ACTIONS)}")
        spans.append((low, high, action))
    mismatch = t.get("schema_mismatch", "flag")
    if not isinstance(mismatch, str) or mismatch not in ("flag", "block", "ok"):
        raise r.fail([*path, "schema_mismatch"], "one of flag, block, ok")
    replacement = t.get("replacement", "[REDACTED:{name}]")
    if not isinstance(replacement, str) or len(replacement) > 200 or not _template(replacement):
        raise r.fail([*path, "replacement"], "a string (up to 200 characters; {name} allowed)")
    builtin = t.get("builtin", True)
    if not isinstance(builtin, bool):
        raise r.fail([*path, "builtin"], "must be true or false")
    messages = t.get("messages", True)
    if not isinstance(messages, bool):
        raise r.fail([*path, "messages"], "must be true or false")
    return PostPolicy(
        sensitive=tuple(spans),
        schema_mismatch=mismatch,
        replacement=replacement,
        builtin=builtin,
        detectors=_detectors(r, t.get("detectors")),
        flag_weight=flag_weight,
        messages=messages,
    )


def _template(text: str) -> bool:
    """Whether ``text`` formats with ``{name}`` only (no other field, spec or conversion)."""
    try:
        fields = [f[1:] for f in string.Formatter().parse(text) if f[1] is not None]
    except ValueError:  # an unmatched brace
        return False
    return all(f == ("name", "", None) for f in fields)


def _detectors(r: _Reader, value: Any) -> tuple[Detector, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(["post", "detectors"], "an array of tables ([[post.detectors]])")
    out = []
    for i, item in enumerate(value):
        path: list[Key] = ["post", "detectors", i]
        t = r.table(item, path, {"name", "pattern", "keys"})
        name = t.get("name")
        if not isinstance(name, str) or not _ID.match(name):
            raise r.fail([*path, "name"], "every detector needs a name")
        pattern = t.get("pattern", "")
        keys = t.get("keys", [])
        if not isinstance(pattern, str) or not isinstance(keys, list) or not (pattern or keys):
            raise r.fail(path, "a detector has a pattern, or keys (field names), or both")
        if pattern:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise r.fail([*path, "pattern"], f"not a regular expression: {exc}") from None
        out.append(Detector(name, pattern, frozenset(str(k).lower() for k in keys)))
    return tuple(out)


def _span(r: _Reader, span: str, path: list[Key]) -> tuple[int, int]:
    match = _TIER_RANGE.match(span.replace("acl_", "").replace("_", "-"))
    if match is None:
        raise r.fail(path, "a tier range is 'N' or 'N-M' (0..5)")
    low = int(match.group(1) or match.group(3))
    high = int(match.group(2) or match.group(3))
    if not low <= high <= MAX_TIER:
        raise r.fail(path, "a tier range is 'N' or 'N-M' (0..5)")
    return low, high


def _escalation(r: _Reader, value: Any) -> EscalationPolicy:
    path = ["escalation"]
    t = r.table(value, path, {"timeout_seconds", "max_pending", "max_pending_per_principal"})
    return EscalationPolicy(
        timeout_seconds=r.seconds(t.get("timeout_seconds", 60.0), [*path, "timeout_seconds"]),
        max_pending=r.count(t.get("max_pending", 256), [*path, "max_pending"]),
        max_pending_per_principal=r.count(
            t.get("max_pending_per_principal", 16), [*path, "max_pending_per_principal"]
        ),
    )


_TOP = {
    "version", "environment", "tiers", "categories", "capabilities", "tripwires",
    "trust_debt", "collusion", "filtering", "escalation", "post",
}  # fmt: skip


def _tiers(r: _Reader, value: Any) -> Tiers:
    path = ["tiers"]
    t = r.table(value, path, {"default", "anonymous", "local", "principals", "roles", "peers"})
    return Tiers(
        default=r.tier(t.get("default", 1), [*path, "default"]),
        anonymous=r.tier(t.get("anonymous", 0), [*path, "anonymous"]),
        local=r.tier(t.get("local", MAX_TIER), [*path, "local"]),
        principals=r.tier_map(t.get("principals"), [*path, "principals"]),
        roles=r.tier_map(t.get("roles"), [*path, "roles"]),
        peers=r.tier_map(t.get("peers"), [*path, "peers"]),
    )


def _categories(r: _Reader, value: Any) -> Categories:
    path = ["categories"]
    t = r.table(value, path, {*DEFAULT_CATEGORY_TIERS, "below_tier"})
    minimum = dict(DEFAULT_CATEGORY_TIERS)
    for name in DEFAULT_CATEGORY_TIERS:
        if name in t:
            minimum[name] = r.tier(t[name], [*path, name])
    below = r.decision(t.get("below_tier", "block"), [*path, "below_tier"])
    if below not in (Decision.BLOCK, Decision.ESCALATE):
        raise r.fail([*path, "below_tier"], "must be 'block' or 'escalate'")
    return Categories(minimum=minimum, below_tier=below)


def _capabilities(r: _Reader, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise r.fail(["capabilities"], "must be a table of capability (or glob) = category")
    out = {}
    for pattern, category in value.items():
        if not isinstance(category, str) or category not in DEFAULT_CATEGORY_TIERS:
            raise r.fail(
                ["capabilities", pattern],
                f"unknown category {category!r} (one of {', '.join(DEFAULT_CATEGORY_TIERS)})",
            )
        out[str(pattern)] = str(category)
    return out


_TRIPWIRE_KEYS = {
    "id",
    "capabilities",
    "directions",
    "when",
    "action",
    "flag",
    "debt",
    "reason",
    "set",
}


def _tripwires(r: _Reader, value: Any) -> tuple[Tripwire, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(["tripwires"], "must be an array of tables ([[tripwires]])")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(value):
        out.append(_tripwire(r, item, i, seen))
    return tuple(out)


def _tripwire(r: _Reader, item: Any, i: int, seen: set[str]) -> Tripwire:
    path: list[Key] = ["tripwires", i]
    t = r.table(item, path, _TRIPWIRE_KEYS)
    rule_id = t.get("id")
    if not isinstance(rule_id, str) or not _ID.match(rule_id):
        raise r.fail([*path, "id"], "every tripwire needs an id (letters, digits, . _ : -)")
    if rule_id in seen:
        raise r.fail([*path, "id"], f"duplicate tripwire id {rule_id!r}")
    seen.add(rule_id)
    caps = t.get("capabilities", [])
    if not isinstance(caps, list) or not all(isinstance(c, str) and c for c in caps):
        raise r.fail([*path, "capabilities"], "must be a list of capability ids or globs")
    directions = _directions(r, t.get("directions"), [*path, "directions"])
    when = t.get("when", "")
    if not isinstance(when, str):
        raise r.fail([*path, "when"], "must be a CEL expression (a string)")
    if when:
        try:
            expr.compile_condition(when)
        except ValueError as exc:
            raise r.fail([*path, "when"], f"does not compile: {exc}") from None
    flag = t.get("flag", False)
    if not isinstance(flag, bool):
        raise r.fail([*path, "flag"], "must be true or false")
    debt = t.get("debt")
    nudge = t.get("set", {})
    if not isinstance(nudge, Mapping):
        raise r.fail([*path, "set"], "must be a table of parameters to set")
    action = _action(r, t.get("action", "ok"), [*path, "action"])
    if nudge and not any(a.decision == Decision.NUDGE for a in action):
        raise r.fail([*path, "set"], "parameters are set only by a nudge")
    reason = t.get("reason", "")
    if not isinstance(reason, str):
        raise r.fail([*path, "reason"], "must be a string")
    return Tripwire(
        id=rule_id,
        line=r.lines.of(path),
        capabilities=tuple(caps),
        directions=directions,
        when=when,
        action=action,
        flag=flag,
        debt=None if debt is None else r.weight(debt, [*path, "debt"]),
        reason=reason,
        set=dict(nudge),
    )


def _directions(r: _Reader, value: Any, path: list[Key]) -> frozenset[Direction]:
    if value is None:
        return DEFAULT_DIRECTIONS
    names = {d.value: d for d in Direction}
    if not isinstance(value, list) or not value:
        raise r.fail(path, f"must be a list of {', '.join(names)}")
    if not all(isinstance(v, str) and v in names for v in value):
        raise r.fail(path, f"must be a list of {', '.join(names)}")
    return frozenset(names[v] for v in value)


def _action(r: _Reader, value: Any, path: list[Key]) -> tuple[TierAction, ...]:
    if isinstance(value, str):
        return (TierAction(0, MAX_TIER, r.decision(value, path)),)
    if not isinstance(value, Mapping) or not value:
        raise r.fail(path, "a decision, or a table of tier range = decision ('0-2' = 'escalate')")
    out = []
    for span, decision in value.items():
        low, high = _span(r, str(span), [*path, span])
        out.append(TierAction(low, high, r.decision(decision, [*path, span])))
    return tuple(out)


def _trust_debt(r: _Reader, value: Any) -> TrustDebtPolicy:
    path = ["trust_debt"]
    t = r.table(value, path, {"flag_weight", "half_life_seconds", "max_principals"})
    return TrustDebtPolicy(
        flag_weight=r.weight(t.get("flag_weight", 0.1), [*path, "flag_weight"]),
        half_life_seconds=r.seconds(
            t.get("half_life_seconds", 3600), [*path, "half_life_seconds"], minimum=1.0
        ),
        max_principals=r.count(t.get("max_principals", 10_000), [*path, "max_principals"]),
    )


def _threshold(
    r: _Reader, value: Any, path: list[Key], count_key: str, default: str
) -> Threshold | None:
    if value is None:
        return None
    known = {count_key, "window_seconds", "action", "categories"}
    t = r.table(value, path, known)
    categories = t.get("categories", ["database", "financial", "system"])
    if not isinstance(categories, list) or not all(
        isinstance(c, str) and c in DEFAULT_CATEGORY_TIERS for c in categories
    ):
        raise r.fail(
            [*path, "categories"], f"must be a list of {', '.join(DEFAULT_CATEGORY_TIERS)}"
        )
    action = t.get("action", default)
    flag = isinstance(action, str) and action == "flag"  # orthogonal: the call goes on, flagged
    return Threshold(
        count=r.count(t.get(count_key), [*path, count_key]),
        window_seconds=r.seconds(t.get("window_seconds", 60), [*path, "window_seconds"], minimum=1),
        decision=Decision.OK if flag else r.decision(action, [*path, "action"]),
        categories=frozenset(categories),
        flag=flag,
    )


def _collusion(r: _Reader, value: Any) -> CollusionPolicy:
    path: list[Key] = ["collusion"]
    known = {"rapid_exchange", "data_aggregation", "circular_delegation", "max_tracked"}
    t = r.table(value, path, known)
    circular = r.table(
        t.get("circular_delegation"), [*path, "circular_delegation"], {"depth", "action"}
    )
    return CollusionPolicy(
        rapid_exchange=_threshold(
            r, t.get("rapid_exchange"), [*path, "rapid_exchange"], "messages", "flag"
        ),
        data_aggregation=_threshold(
            r, t.get("data_aggregation"), [*path, "data_aggregation"], "principals", "escalate"
        ),
        circular_depth=None if not circular else r.count(
            circular.get("depth", 3), [*path, "circular_delegation", "depth"]
        ),
        circular_decision=r.decision(
            circular.get("action", "halt"), [*path, "circular_delegation", "action"]
        ),
        max_tracked=r.count(t.get("max_tracked", 10_000), [*path, "max_tracked"]),
    )  # fmt: skip


def matches(pattern: str, name: str) -> bool:
    """A capability pattern: an exact id, or an fnmatch glob."""
    return pattern == name or fnmatch.fnmatchcase(name, pattern)


__all__ = ["PolicyError", "load_policy", "matches", "parse_policy"]
