"""Architecture contracts: which layer may import which, what the core may import at
all, that no import cycle exists, one door to generated code, and a public face
that is exactly ``__all__``.

The import graph is read from the source (``ast``), so every import counts: at
module level, inside functions, and under ``if TYPE_CHECKING:`` (a type-only import
still ties two modules together).

Layers, from the bottom (docs/architecture.md draws them)::

    core        sans-IO protocol pieces: no I/O library, no asyncio
    store       SQLite stores, key files, comments read from disk
    service     context builder, staged pipeline, NodeService
    transport   gRPC server and client; doors: gRPC door (transport), HTTP doors (bridge)
    mesh        A2A channels and the peer connector (dials through the transport)
    discovery   backends and the supervisor (verifies through the mesh's connector)
    root        node.py and _assembly.py compose everything; testing, cli on top
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

import aralnode
import aralnode.core

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aralnode"

# Each module's layer: the longest matching prefix wins.
LAYER_OF = {
    "aralnode": "face",
    "aralnode._proto": "proto",
    "aralnode._version": "base",
    "aralnode._runtime": "base",
    "aralnode._logs": "base",
    "aralnode.core": "core",
    "aralnode.config": "config",
    "aralnode.config_checks": "config",
    "aralnode.config_file": "config",
    "aralnode.config_template": "config",
    "aralnode.store": "store",
    "aralnode.service": "service",
    "aralnode.access": "access",
    "aralnode.transport": "transport",
    "aralnode.bridge": "bridge",
    "aralnode.mesh": "mesh",
    "aralnode.discovery": "discovery",
    "aralnode._assembly": "root",
    "aralnode._access": "root",
    "aralnode._audit": "root",
    "aralnode._policy": "root",
    "aralnode._metrics": "root",
    "aralnode._operations": "root",
    "aralnode._governance": "root",
    "aralnode._halts": "root",
    "aralnode.policy": "policy",
    "aralnode.cli_policy": "tools",
    "aralnode.cli_ops": "tools",
    "aralnode.cli_governance": "tools",
    "aralnode.node": "root",
    "aralnode.testing": "tools",
    "aralnode.cli": "tools",
    "aralnode.cli_ca": "tools",
    "aralnode.cli_config": "tools",
    "aralnode.cli_apikey": "tools",  # ident: `aralnode apikey`
    "aralnode.cli_a2a": "tools",  # `aralnode call --a2a CARD_URL`
    "aralnode.cli_audit": "tools",  # audit: `aralnode audit verify|tail|export`
    # trace (issue 19): the node's tracer provider (service/tracing.py is "service")
    "aralnode._tracing": "root",
    "aralnode._interop": "root",  # interop (issue 17): the A2A door's wiring
}
_BELOW_ROOT = {
    "proto", "base", "core", "config", "store", "service", "access", "policy", "transport",
    "bridge", "mesh", "discovery",
}  # fmt: skip
# What each layer may import (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "proto": set(),
    "base": set(),
    "core": {"proto"},
    "config": {"core"},
    "store": {"core", "proto", "base"},
    "service": {"core", "proto", "base"},
    # Who may call (certificates, tokens, keys, limits): below the doors, which
    # use it, and door-neutral (no grpc, no starlette).
    "access": {"core", "service", "proto", "base"},
    # Governance policies (issue 16): door-neutral, below the doors; no I/O but the file.
    "policy": {"core", "service", "base"},
    "transport": {"core", "service", "access", "proto", "base"},
    "bridge": {"core", "service", "access", "proto", "base"},
    "mesh": {"core", "service", "access", "store", "transport", "proto", "base"},
    "discovery": {"core", "service", "access", "transport", "mesh", "proto", "base"},
    "root": _BELOW_ROOT,
    "tools": {*_BELOW_ROOT, "root"},
    "face": {*_BELOW_ROOT, "root"},
}
TRANSPORT_LIBRARIES = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
    "zeroconf",
    "ifaddr",
    "starlette",
    "uvicorn",
    "httpx",
    "httptools",
    "h11",
    "mcp",
    "mcp_types",
    "websockets",
    "anyio",
)
IO_LIBRARIES = (
    "asyncio",
    "sqlite3",
    "socket",
    "ssl",
    "selectors",
    "threading",
    "concurrent",
    "subprocess",
    "multiprocessing",
    "signal",
    "fcntl",
    "os",
    "pathlib",
    "shutil",
    "tempfile",
    "logging",
)
# Outside libraries a layer must not use, whatever its imports of ours.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": TRANSPORT_LIBRARIES + IO_LIBRARIES,
    "config": (*TRANSPORT_LIBRARIES, "asyncio", "sqlite3", "socket"),
    "service": (*TRANSPORT_LIBRARIES, "sqlite3", "socket", "ssl"),
    "store": (*TRANSPORT_LIBRARIES, "asyncio", "socket", "ssl"),
    "access": tuple(lib for lib in TRANSPORT_LIBRARIES if lib != "httpx"),
    "policy": (*TRANSPORT_LIBRARIES, "asyncio", "sqlite3", "socket"),
    "transport": ("starlette", "uvicorn", "httptools", "mcp", "mcp_types", "zeroconf", "sqlite3"),
    "bridge": ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "zeroconf", "sqlite3"),
    "mesh": ("starlette", "uvicorn", "mcp", "mcp_types", "zeroconf", "httpx"),
    "discovery": ("starlette", "uvicorn", "mcp", "mcp_types", "sqlite3", "httpx"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, modules: Iterable[str]) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the file; ours resolved to a module
    of ours (``from aralnode import x`` is module ``aralnode.x`` when there is one)."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((full if full in known else base, node.lineno))
    return out


def layer_of(module: str) -> str:
    best = max((p for p in LAYER_OF if module == p or module.startswith(p + ".")), key=len)
    return LAYER_OF[best]


def graph() -> dict[str, set[str]]:
    """Our modules, each with the modules of ours it imports."""
    modules = our_modules()
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        ours = set()
        for imported, _ in imports_of(name, path, modules):
            module = imported
            while module not in modules and "." in module:
                module = module.rpartition(".")[0]  # a name inside a module
            if module in modules and module != name:
                ours.add(module)
        edges[name] = ours
    return edges


def violations() -> list[str]:
    """Every import a layer may not make, as ``file:line: module -> import (why)``."""
    modules = our_modules()
    found = []
    for name, path in modules.items():
        layer = layer_of(name)
        allowed = MAY_IMPORT[layer] | {layer}
        for imported, line in imports_of(name, path, modules):
            where = f"{path.relative_to(ROOT)}:{line}: {name} -> {imported}"
            top = imported.split(".")[0]
            if top == "aralnode":
                target = layer_of(imported)
                if target not in allowed:
                    found.append(f"{where} ({layer} may not import {target})")
            elif top in FORBIDDEN.get(layer, ()):
                found.append(f"{where} ({layer} may not use {top})")
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    for name in our_modules():
        assert layer_of(name) in MAY_IMPORT, name


def test_each_layer_imports_only_what_it_may() -> None:
    assert violations() == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_contracts_catch_what_they_forbid(tmp_path: Path) -> None:
    """The checks above fail on what they forbid: a core module using asyncio and
    importing the service layer (under TYPE_CHECKING), and two modules that import
    each other."""
    core = {"aralnode.core.x": set(), "aralnode.service.y": {"aralnode.core.x"}}
    assert cycles(core) == []
    core["aralnode.core.x"] = {"aralnode.service.y"}
    assert cycles(core) == [["aralnode.core.x", "aralnode.service.y"]]
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text(
        "from typing import TYPE_CHECKING\nimport asyncio\n"
        "if TYPE_CHECKING:\n    from aralnode.service.pipeline import Pipeline\n"
    )
    found = imports_of("aralnode.core.sneaky", sneaky, our_modules())
    assert ("asyncio", 2) in found
    assert ("aralnode.service.pipeline", 4) in found
    assert "service" not in MAY_IMPORT[layer_of("aralnode.core.sneaky")]
    assert "asyncio" in FORBIDDEN["core"]


CORE_MODULES = sorted(
    f"aralnode.core.{m.name}" for m in pkgutil.iter_modules(aralnode.core.__path__)
)
# What importing a core module may not bring in, through anyone's imports (the
# libraries it uses itself are checked above; threading comes with protobuf).
RUNTIME_FORBIDDEN = (
    *TRANSPORT_LIBRARIES,
    "asyncio",
    "sqlite3",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "logging",
)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_pulls_in_no_io_library(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {RUNTIME_FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"{module} pulls in {out.stdout.strip()}"


def test_the_cli_starts_without_a_node_or_the_cel_repl() -> None:
    """A command that does not run a node does not load one (`run` imports it), nor
    the ``cel`` package (it loads its own REPL: typer, prompt_toolkit, rich) before a
    condition is compiled: about half of every command's start."""
    code = (
        "import sys, aralnode.cli\n"
        "print(','.join(sorted(m for m in sys.modules\n"
        "    if m == 'aralnode.node' or m.split('.')[0] in ('cel', 'prompt_toolkit'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_only_proto_module_imports_generated_code() -> None:
    modules = our_modules()
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for name, path in modules.items()
        if name != "aralnode._proto"
        for imported, line in imports_of(name, path, modules)
        if imported.split(".")[0] == "aral"
    ]
    assert offenders == []


MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
LONG = "# long:"  # a comment right above a def that says why it is longer


def test_modules_and_functions_fit_in_a_head() -> None:
    """Modules under 600 lines, functions under 60; a longer function (a parser, a
    table) says why in a ``# long:`` comment right above it."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        where = path.relative_to(ROOT)
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            said = first >= 2 and lines[first - 2].strip().startswith(LONG)
            if length > MAX_FUNCTION_LINES and not said:
                too_long.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


def test_public_names_match_all() -> None:
    public = {name for name in dir(aralnode) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(aralnode, name)).__name__ == "module"}
    assert public - modules == set(aralnode.__all__) - {"__version__"}
    for name in aralnode.__all__:
        assert hasattr(aralnode, name), name
