"""Architecture checks: the core stays sans-IO, generated code has one door, and the
public face is exactly what ``__all__`` says."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import aralnode
import aralnode.core

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "zeroconf",
    "starlette",
    "uvicorn",
    "httpx",
    "h11",
    "mcp",
    "websockets",
)
CORE_MODULES = sorted(
    f"aralnode.core.{m.name}" for m in pkgutil.iter_modules(aralnode.core.__path__)
)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_transport_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_only_proto_module_imports_generated_code() -> None:
    offenders = []
    for path in (ROOT / "aralnode").rglob("*.py"):
        if path.name == "_proto.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] == "aral"
            ):
                offenders.append(str(path.relative_to(ROOT)))
            if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "aral" for a in node.names
            ):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_public_names_match_all() -> None:
    public = {name for name in dir(aralnode) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(aralnode, name)).__name__ == "module"}
    assert public - modules == set(aralnode.__all__) - {"__version__"}
    for name in aralnode.__all__:
        assert hasattr(aralnode, name), name
