"""What a user's install gets: type information, and dependency bounds that hold.

``make test-min`` (a CI step) runs the suite with every runtime dependency at the
lower bound ``pyproject.toml`` declares; this checks the bounds are there to read.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "min_constraints", ROOT / "scripts" / "min_constraints.py"
)
assert _spec is not None
assert _spec.loader is not None
min_constraints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(min_constraints)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_package_ships_its_type_information() -> None:
    assert importlib.resources.files("aralnode").joinpath("py.typed").is_file()
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert "aralnode" in wheel["targets"]["wheel"]["packages"]  # py.typed travels with it


def test_every_runtime_dependency_declares_the_minimum_the_suite_runs_on() -> None:
    bounds = min_constraints.lower_bounds(ROOT / "pyproject.toml")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert len(bounds) == len(declared)
    # The generated code checks these at import: a lower bound under them is a lie.
    assert version(bounds["protobuf"]) >= (7, 35, 1)
    assert version(bounds["grpcio"]) >= (1, 85, 1)
    assert version(bounds["mcp"]) >= (2, 1)
