"""Tripwire conditions: CEL (the Common Expression Language), compiled once.

CEL is made for this: side-effect free, terminating, no access to the host -- a
policy file can never run code the way a Python ``eval`` would. Conditions are
compiled when the policy loads (a syntax error refuses the file with its line);
each knows the variables it reads, so a call builds only those (``params`` only
if a rule looks at the parameters). The ``cel`` package is a maintained binding
of the Rust ``cel`` interpreter: about 1 µs for a simple comparison.
"""

from __future__ import annotations

from typing import Any

import cel

# What a condition may read (docs/governance.md lists their meaning).
VARIABLES = frozenset({
    "capability", "direction", "door", "category", "risk", "params", "principal", "caller",
    "kind", "roles", "tier", "trust_debt", "environment", "delegation_depth", "chain", "peer",
    "rate",
})  # fmt: skip


class Condition:
    """A compiled CEL condition and the variables it reads."""

    __slots__ = ("_program", "execute", "source", "variables")

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


def new_context() -> Any:
    """A CEL context to set one evaluation's variables into, once each (a value
    crosses into the interpreter once per call however many rules read it). Not
    thread-safe: one per evaluator, on the event loop."""
    return cel.Context()


def compile_condition(source: str) -> Condition:
    """Compile ``source`` (``ValueError`` naming the problem if it does not)."""
    return Condition(source)


__all__ = ["VARIABLES", "Condition", "compile_condition", "new_context"]
