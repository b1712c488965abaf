"""Rates as config writes them (``"10/s"``, ``"600/min"``, ``"100/s burst 200"``):
the value type the rate limiter's token buckets use (``access.buckets``), here so
that config can check a spec when it is read."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_PERIODS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
_SPEC = re.compile(
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?:/\s*(?P<per>[a-z]+))?\s*"
    r"(?:,?\s*burst\s*(?P<burst>\d+(?:\.\d+)?))?\s*$"
)
OFF = ("", "0", "none", "off")

RateSpec = str | int | float | None
"""How config writes a rate: ``"10/s"``, ``"600/min"``, ``"100/s burst 200"``, a
number (per second), or ``None`` / ``0`` / ``"off"`` for no limit."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's rate and size.

    Attributes:
        per_second: Tokens gained per second.
        burst: Tokens the bucket holds at most (calls one may make at once); by
            default the number of the spec (``600/min``: 600).
        text: The spec as written, for messages.
    """

    per_second: float
    burst: float
    text: str

    @classmethod
    def parse(cls, spec: RateSpec) -> Rate | None:
        """``spec`` as a ``Rate``; ``None`` for no limit.

        Raises:
            ValueError: a spec that is not a rate (the message says the forms).
        """
        if spec is None or isinstance(spec, bool):
            if spec is True:
                raise ValueError("a rate is a number or 'N/s', 'N/min', 'N/h', not true")
            return None
        if isinstance(spec, int | float):
            if not math.isfinite(spec) or spec < 0:
                raise ValueError(f"rate {spec!r} must be a finite number >= 0")
            return None if spec == 0 else cls(float(spec), max(1.0, float(spec)), f"{spec:g}/s")
        text = str(spec).strip().lower()
        if text in OFF:
            return None
        match = _SPEC.match(text)
        if match is None or (match["per"] or "") not in _PERIODS:
            raise ValueError(
                f"rate {spec!r} is not 'N/s', 'N/min' or 'N/h' (optionally ', burst B'), "
                "a number per second, or 'off'"
            )
        count = float(match["n"])
        if count == 0:
            return None
        period = _PERIODS[match["per"] or ""]
        burst = float(match["burst"]) if match["burst"] else count
        if burst < 1:
            raise ValueError(f"rate {spec!r}: a burst below 1 would refuse every call")
        return cls(count / period, burst, str(spec).strip())


def parse_overrides(specs: Mapping[str, RateSpec]) -> dict[str, Rate | None]:
    """Config's ``rate_limit_overrides`` as rates.

    Raises:
        ValueError: a key that is not ``principal:``, ``peer:``, ``address:`` or
            ``role:`` and a name, or a value that is not a rate.
    """
    out: dict[str, Rate | None] = {}
    for key, spec in specs.items():
        kind, sep, name = key.partition(":")
        if not sep or not name or kind not in ("principal", "peer", "address", "role"):
            raise ValueError(
                f"rate limit override {key!r}: the key is principal:NAME, peer:NODE_ID, "
                "address:HOST or role:NAME"
            )
        out[key] = Rate.parse(spec)
    return out


__all__ = ["OFF", "Rate", "RateSpec", "parse_overrides"]
