"""A complete config file, and its reference, generated from ``NodeConfig``.

``aralnode config show`` prints :func:`default_toml` (every key with its default and
its docstring line, ready to edit); ``docs/configuration.md`` holds
:func:`markdown_reference`, kept in sync by ``tests/test_config_file.py``.
"""

from __future__ import annotations

import enum
import json
import re
import textwrap
from collections import Counter
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, get_args

from aralnode.config_file import FieldSpec, describe, field_specs, is_mapping, union_members

# Prefixes that read badly as a table (``[max] concurrent``): their keys stay flat.
_FLAT_PREFIXES = frozenset({"max"})
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def layout() -> list[tuple[str, list[FieldSpec]]]:
    """The keys grouped as the template writes them: ``("", flat keys)`` first, then
    one table per prefix that two or more fields share."""
    specs = field_specs()
    counts = Counter(name.split("_", 1)[0] for name in specs if "_" in name)

    def table_of(name: str) -> str:
        prefix = name.split("_", 1)[0]
        ok = "_" in name and counts[prefix] >= 2 and prefix not in specs
        return prefix if ok and prefix not in _FLAT_PREFIXES else ""

    tables: dict[str, list[FieldSpec]] = {"": []}
    for spec in specs.values():
        tables.setdefault(table_of(spec.name), []).append(spec)
    return list(tables.items())


def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when it can be, quoted otherwise."""
    return key if _BARE.match(key) else json.dumps(key)


def toml_value(value: Any) -> str:
    """``value`` as a TOML value (strings, numbers, booleans, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return json.dumps(str(value.value))
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | PurePath):
        return json.dumps(str(value))
    if isinstance(value, Mapping):
        inner = ", ".join(f"{toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    items = sorted(value) if isinstance(value, set | frozenset) else list(value)
    return "[" + ", ".join(toml_value(v) for v in items) + "]"


def _comment(text: str) -> list[str]:
    return (
        textwrap.wrap(text, width=86, initial_indent="# ", subsequent_indent="# ") if text else []
    )


def _key_lines(spec: FieldSpec, key: str) -> list[str]:
    lines = _comment(spec.doc)
    if spec.default is None:
        inner = [m for m in union_members(spec.hint) if m is not type(None)]
        kind = describe(inner[0]) if len(inner) == 1 else describe(spec.hint)
        lines.append(f"# {toml_key(key)} = <{kind}>  (default: none)")
    else:
        lines.append(f"{toml_key(key)} = {toml_value(spec.default)}")
    return lines


def _mapping_lines(spec: FieldSpec, header: str) -> list[str]:
    lines = ["", *_comment(spec.doc)]
    if spec.default:
        lines.append(f"[{header}]")
        lines += [f"{toml_key(str(k))} = {toml_value(v)}" for k, v in spec.default.items()]
    else:
        args = get_args(spec.hint)
        kind = describe(args[1]) if len(args) == 2 else "a value"
        lines += [f"# [{header}]", f"# KEY = <{kind}>  (none by default)"]
    return lines


def _key_in(table: str, name: str) -> str:
    return name[len(table) + 1 :] if table else name


def default_toml() -> str:
    """A complete config file: every key, its docstring line, and its default."""
    out = [
        "# aralnode config file: `aralnode run --config node.toml`; flags given override it.",
        "# Every key is shown with its default; delete what you do not change.",
        "# Relative paths are taken from this file's directory; `key = false` unsets an",
        "# optional value (TOML has no null).",
    ]
    for table, specs in layout():
        if table:
            out += ["", f"[{table}]"]
        for spec in (s for s in specs if not is_mapping(s.hint)):
            gap = [] if table else [""]  # a table's keys sit together under its header
            out += [*gap, *_key_lines(spec, _key_in(table, spec.name))]
        for spec in (s for s in specs if is_mapping(s.hint)):
            header = f"{table}.{_key_in(table, spec.name)}" if table else spec.name
            out += _mapping_lines(spec, header)
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_reference() -> str:
    """Every table and key as Markdown tables (the generated part of the docs)."""
    out: list[str] = []
    for table, specs in layout():
        out += ["", f"### `[{table}]`" if table else "### Top-level keys", ""]
        out += ["| key | field | type | default | meaning |", "|---|---|---|---|---|"]
        for spec in specs:
            key = spec.name[len(table) + 1 :] if table else spec.name
            default = "none" if spec.default is None else toml_value(spec.default)
            cells = (f"`{key}`", f"`{spec.name}`", describe(spec.hint), f"`{default}`", spec.doc)
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out).strip() + "\n"
