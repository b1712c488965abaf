"""Tripwire conditions: CEL (the Common Expression Language), compiled once.

CEL is made for this: side-effect free, terminating, no access to the host -- a
policy file can never run code the way a Python ``eval`` would. Conditions are
compiled when the policy loads (a syntax error refuses the file with its line);
each knows the variables it reads, so a call builds only those (``params`` only
if a rule looks at the parameters). The ``cel`` package is a maintained binding
of the Rust ``cel`` interpreter: about 1 µs for a simple comparison.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

# What a condition may read (docs/governance.md lists their meaning).
VARIABLES = frozenset({
    "capability", "direction", "door", "category", "risk", "params", "principal", "caller",
    "kind", "roles", "tier", "trust_debt", "environment", "delegation_depth", "chain", "peer",
    "rate",
})  # fmt: skip


# ``params`` as a word anywhere in a condition's text, and what must follow it for
# the condition to read nothing of the parameters but fields by name.
_PARAMS = re.compile(r"\bparams\b")
_FIELD = re.compile(r"\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


# The macros that bind a loop variable in their other arguments:
# ``list.exists(x, <x here>)``, ``list.map(x, <x>, <x>)``.
_MACROS = frozenset({"all", "exists", "exists_one", "filter", "map"})
_TOKEN = re.compile(
    r"(?P<skip>\s+|//[^\n]*)"  # blanks, a comment
    r"|(?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"|'''|\"|'|`))"  # where a literal starts
    r"|(?P<number>0[xX][0-9a-fA-F]+[uU]?|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?[uU]?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<other>.)",
    re.DOTALL,
)


def _tokens(source: str) -> list[tuple[str, str]]:
    """``source``'s names and punctuation as (kind, text); string literals, numbers
    and comments as one token each, their text left out."""
    out: list[tuple[str, str]] = []
    at = 0
    while at < len(source):
        token = _TOKEN.match(source, at)
        assert token is not None  # (``other`` matches any character)
        kind, at = token.lastgroup or "other", token.end()
        if kind == "string":
            quote = token.group().lstrip("rRbB")
            raw = "r" in token.group().lower()[: -len(quote)]
            while at < len(source) and not source.startswith(quote, at):
                at += 2 if source[at] == "\\" and not raw else 1
            at += len(quote)
            out.append(("literal", ""))
        elif kind == "number":
            out.append(("literal", ""))
        elif kind != "skip":
            out.append((kind, token.group()))
    return out


def loop_variables(source: str) -> frozenset[str]:
    """The names ``source`` uses only as a macro's loop variable, within that macro
    (the ``x`` of ``params.ids.exists(x, x > 1)``): not variables the caller gives.

    A name counts only where the scan sees it bound, and never where it sees the
    name read outside a binding of it (a field after a dot, a function's name are
    neither). Should the scan misread some odd text, a name it wrongly leaves out
    is still unknown to the evaluation: the rule then fails, closed, at run time."""
    tokens = _tokens(source)
    bound: set[str] = set()
    free: set[str] = set()
    scopes: list[tuple[str, int]] = []  # (loop variable, bracket depth inside its macro)
    depth, binding = 0, -1
    for i, (kind, text) in enumerate(tokens):
        if kind == "other" and text in "([{":
            depth += 1
        elif kind == "other" and text in ")]}":
            depth -= 1
            while scopes and scopes[-1][1] > depth:
                scopes.pop()  # the macro's call closed: its variable is out of scope
        if kind != "name" or i == binding:
            continue
        after = tokens[i + 1 : i + 4]
        selected = i > 0 and tokens[i - 1][1] == "."  # a field, a method: not a variable
        if selected and text in _MACROS and [k for k, _ in after] == ["other", "name", "other"]:
            if after[0][1] == "(" and after[2][1] == ",":
                scopes.append((after[1][1], depth + 1))
                bound.add(after[1][1])
                binding = i + 2
        elif not selected and after[:1] != [("other", "(")]:  # (a name called: a function)
            (bound if any(name == text for name, _ in scopes) else free).add(text)
    return frozenset(bound - free)


def params_fields(source: str) -> tuple[str, ...] | None:
    """The parameters' fields ``source`` reads, when it reads them only as
    ``params.<field>`` (``has(params.<field>)`` too); ``None`` when it may read more
    (``params`` alone, ``params[...]``, a method or macro on it, a quoted field).

    Every ``params`` in the text counts, in string literals too: a word there at
    worst adds a field or gives ``None``, and a use the scan skipped could not
    hide. A condition then gets only those fields (a map with fewer entries
    crosses into the interpreter faster, and answers the same)."""
    fields: set[str] = set()
    for use in _PARAMS.finditer(source):
        field = _FIELD.match(source, use.end())
        if field is None:
            return None
        fields.add(field.group(1))
    return tuple(sorted(fields))


def _binding() -> ModuleType:
    """The ``cel`` package, loaded with the first condition: it loads its own
    command line's REPL too (typer, prompt_toolkit, rich: about a quarter of a second
    a process), which the CLI and a node whose policy has no condition need not pay."""
    import cel  # noqa: PLC0415 - see above

    return cel


class Condition:
    """A compiled CEL condition, the variables it reads and, when it reads the
    parameters only by field, which (``params_fields``)."""

    __slots__ = ("_program", "execute", "fields", "source", "variables")

    def __init__(self, source: str) -> None:
        binding = _binding()  # (a missing package is no condition's fault)
        try:
            self._program = binding.compile(source)
        except Exception as exc:  # the binding raises ValueError; be sure
            raise ValueError(str(exc).splitlines()[0]) from None
        self.source = source
        self.execute = self._program.execute  # the raw program: raises, may return non-bool
        self.variables = frozenset(self._program.variables()) - loop_variables(source)
        unknown = self.variables - VARIABLES
        if unknown:
            raise ValueError(
                f"unknown variable(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(VARIABLES))})"
            )
        self.fields = params_fields(source) if "params" in self.variables else None


def new_context() -> Any:
    """A CEL context to set one evaluation's variables into, once each (a value
    crosses into the interpreter once per call however many rules read it). Not
    thread-safe: one per evaluator, on the event loop."""
    return _binding().Context()


def compile_condition(source: str) -> Condition:
    """Compile ``source`` (``ValueError`` naming the problem if it does not)."""
    return Condition(source)


__all__ = [
    "VARIABLES",
    "Condition",
    "compile_condition",
    "loop_variables",
    "new_context",
    "params_fields",
]
