"""The checks every JSON value passing the pipeline gets, once for every door.

Each door carries parameters and results differently (a Struct of doubles, JSON
text, Python), so a value one of them cannot carry as it is -- NaN, an infinity,
an integer beyond 2**53, nesting deeper than a ``google.protobuf.Value`` holds --
is refused on all, the same way. A result is held to a size too: a small request
can ask for a large answer (a list of one long string a hundred times), and a door
would otherwise build it, megabytes at a time, on the event loop before any bound
saw it.
"""

from __future__ import annotations

from typing import Any

from aralnode.core import codec
from aralnode.core.errors import InvalidParameters, OutOfRange, response_too_large


def json_params(params: Any, target: str, *, parsed: bool = False) -> None:
    """Raises ``InvalidParameters`` for parameters with a number no door carries, or
    nested deeper than a ``Value`` can be -- unless they are ``parsed`` into a
    protobuf request, whose parser bounds their depth (as it does on every door)."""
    try:
        if parsed:
            codec.check_numbers(params)
        else:
            codec.check_json(params)
    except ValueError as exc:
        raise InvalidParameters(
            f"invalid parameters for {target}: {exc}", reason="NOT_A_JSON_NUMBER"
        ) from None
    except RecursionError:
        raise InvalidParameters(
            f"invalid parameters for {target}: nested too deeply", reason="TOO_DEEP"
        ) from None


def only_members(value: dict[str, Any], known: frozenset[str], what: str) -> dict[str, Any]:
    """``value``, refused if it has a member ``known`` has not: a misspelt
    ``parameters`` must not run a capability with none (``what``: the request named
    in the refusal)."""
    unknown = sorted(k for k in value if k not in known)
    if unknown:
        names = ", ".join(repr(k[:64]) for k in unknown[:5])
        raise InvalidParameters(
            f"{what} has member(s) it does not take: {names} (it takes {', '.join(sorted(known))})",
            details={"unknown": [k[:64] for k in unknown[:20]]},
        )
    return value


def json_result(result: Any, target: str, max_bytes: int = 0) -> None:
    """Raises ``OutOfRange`` for a result with a number no door carries (a sum that
    overflowed to infinity, say): the caller's values took the capability out of
    the range its answer can be given in, which is no fault of the node's; and
    ``MessageTooLarge`` (``response_too_large``) for one whose JSON would be past
    ``max_bytes`` (0: no bound). Its depth is a ``Value``'s, a protobuf response's
    too: ``Invoke`` and a peer's channel carry every JSON result as one."""
    try:
        codec.check_json(result)
    except ValueError as exc:
        raise OutOfRange(
            f"the result of {target} has no JSON form: {exc}", reason="RESULT_NOT_JSON"
        ) from None
    except RecursionError:
        raise OutOfRange(
            f"the result of {target} is nested too deeply", reason="RESULT_NOT_JSON"
        ) from None
    if max_bytes and (size := codec.json_size_over(result, max_bytes)):
        raise response_too_large(f"the result of {target} as JSON", size, max_bytes, at_least=True)


__all__ = ["json_params", "json_result", "only_members"]
