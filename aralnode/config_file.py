"""One config file: a TOML file sets any ``NodeConfig`` field; flags override it.

Driven by ``NodeConfig``'s fields, type hints and docstring, so a field added there
is settable from the file, shown by ``aralnode config show`` and listed in
``docs/configuration.md`` without a change here. Keys are field names, flat or
grouped in tables by prefix: ``[grpc] max_connections = 512`` is
``grpc_max_connections`` (dotted keys ``grpc.max_connections = 512`` too). A mapping
field is a table of its own (``[peer_grants]`` or ``[peer.grants]``).

Every problem is reported with the file, the line, the key and the reason
(``node.toml:12: grpc.max_connections: expected an integer, got "lots"``): TOML
syntax, unknown keys (with a guess), wrong types, and ``NodeConfig``'s own checks,
traced back to the line that set the failing field.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import inspect
import json
import re
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from aralnode.config import NodeConfig

# Keys of ``aralnode run`` that are no NodeConfig field: name -> (type, doc line).
RUN_KEYS: dict[str, tuple[Any, str]] = {
    "load": (list[str], "Modules or .py files whose setup(node) runs at start (--load)."),
}
_NONE_WORD = "false"  # TOML has no null: ``key = false`` unsets an optional field


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One settable key: a ``NodeConfig`` field or a run key."""

    name: str
    hint: Any
    default: Any
    doc: str


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file."""

    line: int | None
    key: str
    reason: str


class ConfigFileError(ValueError):
    """A config file that cannot be used: every problem, each with its line and key."""

    def __init__(self, path: Path, problems: list[Problem]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        out = []
        for p in self.problems:
            where = f"{self.path}:{p.line}" if p.line else str(self.path)
            out.append(f"{where}: {p.key}: {p.reason}" if p.key else f"{where}: {p.reason}")
        return "\n".join(out)


@dataclass(slots=True)
class Effective:
    """The configuration a run uses, and where each value came from."""

    config: NodeConfig
    sources: dict[str, str]
    load: list[str]


class _Mismatch(Exception):
    """A value of the wrong type (``expected ..., got ...``), ``at`` keys inside a table."""

    def __init__(self, reason: str, at: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.reason, self.at = reason, at


# -- what the fields are ------------------------------------------------------------


def _hints() -> dict[str, Any]:
    try:
        return typing.get_type_hints(NodeConfig)
    except Exception:
        spaces = vars(sys.modules[NodeConfig.__module__])
        out: dict[str, Any] = {}
        for f in dataclasses.fields(NodeConfig):
            try:
                out[f.name] = eval(str(f.type), spaces)  # noqa: S307 - our own annotations
            except Exception:
                out[f.name] = Any
        return out


def field_docs() -> dict[str, str]:
    """Each field's docstring line(s) from ``NodeConfig``'s ``Attributes:`` section."""
    docs: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for line in inspect.cleandoc(NodeConfig.__doc__ or "").splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            inside = line.strip() == "Attributes:"
            continue
        entry = re.match(r"^ {4}([\w /]+?): (.*)$", line)
        if inside and entry:
            names = [n.strip() for n in entry.group(1).split("/")]
            for n in names:
                docs[n] = entry.group(2).strip()
        elif inside and names:
            for n in names:
                docs[n] += " " + line.strip()
    return docs


@functools.cache
def field_specs() -> dict[str, FieldSpec]:
    """Every key a config file may set: ``NodeConfig``'s fields, then the run keys."""
    hints, docs, defaults = _hints(), field_docs(), NodeConfig()
    specs = {
        f.name: FieldSpec(f.name, hints[f.name], getattr(defaults, f.name), docs.get(f.name, ""))
        for f in dataclasses.fields(NodeConfig)
    }
    for name, (hint, doc) in RUN_KEYS.items():
        specs[name] = FieldSpec(name, hint, [], doc)
    return specs


# -- types -----------------------------------------------------------------------------


def union_members(hint: Any) -> tuple[Any, ...]:
    return (
        typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    )


def is_mapping(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if union_members(hint):
        return any(is_mapping(m) for m in union_members(hint))
    return origin is not None and isinstance(origin, type) and issubclass(origin, Mapping)


_PLURAL = {str: "strings", int: "integers", float: "numbers", bool: "booleans"}


def describe(hint: Any) -> str:
    """What a value of ``hint`` is, in TOML words (``an integer``)."""
    if members := union_members(hint):
        inner = [describe(m) for m in members if m is not type(None)]
        extra = f" (or {_NONE_WORD} for none)" if type(None) in members else ""
        return " or ".join(inner) + extra
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_mapping(hint):
        return f"a table of {describe(args[1]) if len(args) == 2 else 'values'}"
    if origin in (list, tuple, set, frozenset) or (origin and not isinstance(origin, type)):
        return f"an array of {_PLURAL.get(args[0], 'values') if args else 'values'}"
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(json.dumps(str(m.value)) for m in hint)
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a path (a string)"
    return f"a {getattr(hint, '__name__', hint)}"


def _show(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def coerce(value: Any, hint: Any, base: Path) -> Any:
    """``value`` (as TOML or a flag gives it) as a value of ``hint``.

    Args:
        value: The parsed value.
        hint: The field's type.
        base: Directory relative paths are taken from (the config file's).

    Raises:
        _Mismatch: the value is not of that type.
    """
    if hint is Any:
        return value
    if members := union_members(hint):
        if value is None or (value is False and type(None) in members and bool not in members):
            return None
        for m in (m for m in members if m is not type(None)):
            try:
                return coerce(value, m, base)
            except _Mismatch:
                continue
        raise _Mismatch(f"expected {describe(hint)}, got {_show(value)}")
    converted = _coerce_one(value, hint, base)
    if converted is _NO:
        raise _Mismatch(f"expected {describe(hint)}, got {_show(value)}")
    return converted


_NO = object()


def _coerce_one(value: Any, hint: Any, base: Path) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if is_mapping(hint):
        if not isinstance(value, Mapping):
            return _NO
        inner = args[1] if len(args) == 2 else Any
        out = {}
        for k, v in value.items():
            try:
                out[str(k)] = coerce(v, inner, base)
            except _Mismatch as exc:  # the line of the entry, not of the table
                raise _Mismatch(exc.reason, (str(k), *exc.at)) from None
        return out
    if origin is typing.Literal:
        return value if value in args else _NO
    if origin is not None and isinstance(origin, type) and origin is not type:
        if not isinstance(value, list | tuple | set | frozenset):
            return _NO
        inner = args[0] if args else Any
        items = [coerce(v, inner, base) for v in value]
        if issubclass(origin, set | frozenset):
            return frozenset(items)
        return list(items) if origin is list else tuple(items)
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _NO
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if value in (member.value, member.name, str(member.value)):
                return member
        return _NO
    if isinstance(hint, type) and issubclass(hint, PurePath):
        if not isinstance(value, str | PurePath) or not str(value):
            return _NO
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if isinstance(hint, type):
        return value if isinstance(value, hint) else _NO
    return value


# -- where a key is --------------------------------------------------------------------


def _skip_string(text: str, i: int) -> int:
    """Index after the TOML string starting at ``i``."""
    for quote in ('"""', "'''"):
        if text.startswith(quote, i):
            end = text.find(quote, i + 3)
            while end != -1 and quote == '"""' and _escaped(text, end):
                end = text.find(quote, end + 1)
            return len(text) if end == -1 else end + 3
    quote, j = text[i], i + 1
    while j < len(text) and text[j] not in (quote, "\n"):
        j += 2 if quote == '"' and text[j] == "\\" else 1
    return j + 1


def _escaped(text: str, i: int) -> bool:
    backslashes = len(text[:i]) - len(text[:i].rstrip("\\"))
    return backslashes % 2 == 1


def _until(text: str, i: int, stop: str) -> int:
    """Index of ``stop`` (or the end of the line) from ``i``, strings skipped."""
    while i < len(text) and text[i] not in (stop, "\n"):
        i = _skip_string(text, i) if text[i] in "\"'" else i + 1
    return i


def _split_key(raw: str) -> tuple[str, ...]:
    """``a."b.c".d`` -> ``("a", "b.c", "d")``."""
    parts, i = [], 0
    raw = raw.strip()
    while i < len(raw):
        if raw[i] in "\"'":
            end = _skip_string(raw, i)
            parts.append(raw[i + 1 : end - 1])
            i = _until(raw, end, ".") + 1
        else:
            end = _until(raw, i, ".")
            parts.append(raw[i:end].strip())
            i = end + 1
    return tuple(parts)


def _skip_value(text: str, i: int) -> int:
    """Index of the newline that ends the value starting at ``i`` (arrays and inline
    tables may span lines; strings and comments may hold anything)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _skip_string(text, i)
            continue
        if c == "#":
            i = _until(text, i, "\n")
            continue
        if c == "\n" and depth == 0:
            return i
        depth += (c in "[{") - (c in "]}")
        i += 1
    return i


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """The line of each table header and ``key =`` in a TOML text, by its full key path."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "#":
            i = _until(text, i, "\n")
        elif c == "[":
            start = i + (2 if text.startswith("[[", i) else 1)
            end = _until(text, start, "]")
            table = _split_key(text[start:end])
            lines.setdefault(table, text.count("\n", 0, i) + 1)
            i = _until(text, end, "\n")
        else:
            eq = _until(text, i, "=")
            lines.setdefault(table + _split_key(text[i:eq]), text.count("\n", 0, i) + 1)
            i = _skip_value(text, eq + 1)
    return lines


def _line_of(lines: Mapping[tuple[str, ...], int], path: tuple[str, ...]) -> int | None:
    for k in range(len(path), 0, -1):  # an inline table's keys: the line of its key
        if path[:k] in lines:
            return lines[path[:k]]
    return None


# -- reading ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Reading:
    """What a file sets: name -> (value, key path as written), and its problems."""

    path: Path
    lines: dict[tuple[str, ...], int]
    values: dict[str, tuple[Any, tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    problems: list[Problem] = dataclasses.field(default_factory=list)

    def problem(self, key: tuple[str, ...], reason: str) -> None:
        self.problems.append(Problem(_line_of(self.lines, key), ".".join(key), reason))


def _suggest(name: str, prefix: str, specs: Mapping[str, FieldSpec], table: bool) -> str:
    if table:  # an unknown table: the table names there are
        parts = [n.split("_") for n in specs]
        tables = {"_".join(p[:k]) for p in parts for k in range(1, len(p))}
        guess = difflib.get_close_matches(name, sorted(tables), n=1, cutoff=0.6)
        return f"; did you mean [{guess[0].replace('_', '.')}]?" if guess else ""
    guess = difflib.get_close_matches(name, list(specs), n=1, cutoff=0.6)
    if not guess:
        return ""
    found = guess[0]
    if prefix and found.startswith(prefix + "_"):
        found = prefix.replace("_", ".") + "." + found[len(prefix) + 1 :]
    return f"; did you mean {found}?"


def _walk(table: Mapping[str, Any], at: tuple[str, ...], reading: _Reading) -> None:
    """Take every key of ``table`` (whose keys sit under ``at``) as a field or a prefix."""
    specs = field_specs()
    prefix = "_".join(at)
    for key, value in table.items():
        name = f"{prefix}_{key}" if prefix else key
        path = (*at, key)
        spec = specs.get(name)
        if spec is not None and (is_mapping(spec.hint) or not isinstance(value, dict)):
            if name in reading.values:
                first = ".".join(reading.values[name][1])
                reading.problem(path, f"set twice (also as {first})")
            else:
                reading.values[name] = (value, path)
        elif isinstance(value, dict) and any(n.startswith(name + "_") for n in specs):
            _walk(value, path, reading)
        else:
            reading.problem(
                path, "unknown key" + _suggest(name, prefix, specs, isinstance(value, dict))
            )


def read_file(path: Path) -> _Reading:
    """Parse ``path`` and sort its keys into fields; problems collected, not raised."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigFileError(path, [Problem(None, "", f"cannot read it: {reason}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line 3, column 7)": the line goes in front, as for the rest.
        found = re.search(r"\(at line (\d+), column \d+\)$", str(exc))
        line = int(found.group(1)) if found else None
        reason = str(exc)[: found.start()].strip() if found else str(exc)
        raise ConfigFileError(path, [Problem(line, "", f"not valid TOML: {reason}")]) from None
    reading = _Reading(path, key_lines(text))
    _walk(data, (), reading)
    return reading


def _typed(reading: _Reading) -> dict[str, Any]:
    specs = field_specs()
    base = reading.path.parent
    out: dict[str, Any] = {}
    for name, (value, key) in reading.values.items():
        try:
            out[name] = coerce(value, specs[name].hint, base)
        except _Mismatch as exc:
            reading.problem((*key, *exc.at), exc.reason)
    return out


def _blame(message: str, fields: Mapping[str, Any], candidates: list[str]) -> str | None:
    """The field (of ``candidates``) a ``NodeConfig`` error is about: one it names, else
    one whose value it quotes."""
    for name in sorted(candidates, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name)}\b", message):
            return name
    for name in candidates:
        shown = str(getattr(fields[name], "value", fields[name]))
        if len(shown) > 1 and re.search(rf"(?<![\w.]){re.escape(shown)}(?![\w.])", message):
            return name
    return None


def load_config(
    path: Path | None, overrides: Mapping[str, tuple[Any, str]] | None = None
) -> Effective:
    """The configuration of ``path`` (if any) with ``overrides`` on top.

    Args:
        path: A TOML config file, or ``None`` for defaults and overrides only.
        overrides: Field name -> (value, the flag that gave it), e.g. from the
            command line; they win over the file.

    Returns:
        The validated config, each field's source, and the run's ``load`` list.

    Raises:
        ConfigFileError: the file is unreadable, not TOML, has unknown keys or
            values of the wrong type, or sets a value ``NodeConfig`` refuses.
        ValueError: an override ``NodeConfig`` refuses.
    """
    specs = field_specs()
    fields: dict[str, Any] = {}
    sources = dict.fromkeys(specs, "default")
    if path is not None:
        reading = read_file(path)
        fields = _typed(reading)
        if reading.problems:
            problems = sorted(reading.problems, key=lambda p: p.line or 0)
            raise ConfigFileError(path, problems)
        for name, (_, key) in reading.values.items():
            sources[name] = f"file {path}:{_line_of(reading.lines, key) or '?'}"
    for name, (value, flag) in (overrides or {}).items():
        try:
            fields[name] = coerce(value, specs[name].hint, Path.cwd())
        except _Mismatch as exc:
            raise ValueError(f"{flag}: {exc.reason}") from None
        sources[name] = f"flag {flag}"
    load = [str(s) for s in fields.pop("load", [])]
    if path is not None and sources["load"].startswith("file"):
        load = [_from_file(spec, path.parent) for spec in load]
    try:
        config = NodeConfig(**fields)
    except (ValueError, TypeError) as exc:
        if path is None:
            raise
        raise _traced(exc, path, reading, fields, sources) from None
    return Effective(config, sources, load)


def _from_file(spec: str, base: Path) -> str:
    """A ``load`` entry of the file: a relative ``.py`` path is the file's neighbour."""
    return str(base / spec) if spec.endswith(".py") and not Path(spec).is_absolute() else spec


def _traced(
    exc: Exception, path: Path, reading: _Reading, fields: dict[str, Any], sources: dict[str, str]
) -> Exception:
    """``NodeConfig``'s refusal, at the line of the file that set the field it is about
    (a refusal about a flag's value stays the flag's)."""
    message = str(exc)
    name = _blame(message, fields, list(fields))
    if name is not None and sources[name].startswith("flag"):
        return exc
    from_file = [n for n in fields if sources[n].startswith("file")]
    name = name if name in from_file else _blame(message, fields, from_file)
    if name is None:
        return ConfigFileError(path, [Problem(None, "", message)])
    key = reading.values[name][1]
    return ConfigFileError(path, [Problem(_line_of(reading.lines, key), ".".join(key), message)])
