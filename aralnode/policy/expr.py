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
from typing import Any

import cel

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


class Condition:
    """A compiled CEL condition, the variables it reads and, when it reads the
    parameters only by field, which (``params_fields``)."""

    __slots__ = ("_program", "execute", "fields", "source", "variables")

    def __init__(self, source: str) -> None:
        try:
            self._program = cel.compile(source)
        except Exception as exc:  # the binding raises ValueError; be sure
            raise ValueError(str(exc).splitlines()[0]) from None
        self.source = source
        self.execute = self._program.execute  # the raw program: raises, may return non-bool
        self.variables = frozenset(self._program.variables())
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
    return cel.Context()


def compile_condition(source: str) -> Condition:
    """Compile ``source`` (``ValueError`` naming the problem if it does not)."""
    return Condition(source)


__all__ = ["VARIABLES", "Condition", "compile_condition", "new_context", "params_fields"]
