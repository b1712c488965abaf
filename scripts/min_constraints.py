"""Print pip constraints that pin every runtime dependency at its declared lower bound.

``make test-min`` installs the project with these constraints into its own venv and
runs the suite there: a bound in ``pyproject.toml`` that the code has outgrown fails
CI instead of a user's install. Every runtime dependency must carry a ``>=`` bound.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    """Package name -> its declared minimum version, for ``[project].dependencies``."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    bounds: dict[str, str] = {}
    for spec in dependencies:
        match = _REQUIREMENT.match(spec.split(";")[0])
        if match is None:
            raise SystemExit(f"cannot read the requirement {spec!r}")
        name, _, versions = match.groups()
        minimum = [v.strip()[2:].strip() for v in versions.split(",") if v.strip().startswith(">=")]
        if len(minimum) != 1:
            raise SystemExit(f"{name}: declare one lower bound (>=) in pyproject.toml")
        bounds[name] = minimum[0]
    return bounds


def main() -> int:
    for name, version in lower_bounds(ROOT / "pyproject.toml").items():
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
