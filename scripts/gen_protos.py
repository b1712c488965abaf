"""Generate gen/ from protos/ (and the examples' code next to their protos) with
grpcio-tools; ``--check`` fails on drift.

Generated files are committed so that a user installs aralnode without a protobuf
compiler; ``make gen-check`` keeps them honest. Besides ``*_pb2.py``, ``.pyi`` and
``*_pb2_grpc.py``, each proto also gets ``<stem>.binpb``: a ``FileDescriptorSet``
with source info. The ``_pb2`` modules drop comments; the REST, OpenAPI and MCP
bridges read them from this file (``aralnode.core.proto_schema.source_comments``)
to describe routes, fields and tools.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import shutil
import sys
import tempfile
from pathlib import Path

import google.api.annotations_pb2 as annotations
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
EXAMPLES = ROOT / "examples"
INIT = '"""Generated protobuf package. Do not edit: run `make gen`."""\n'
# What protoc writes into an example's directory; everything else there is hand-written.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".binpb")


def _include_dirs() -> list[Path]:
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    googleapis = Path(annotations.__file__).resolve().parent.parent.parent
    return [well_known, googleapis]


def _protoc(root: Path, out: Path) -> int:
    """Generate code and per-file descriptor sets for every proto under ``root``."""
    sources = sorted(str(p.relative_to(root)) for p in root.rglob("*.proto"))
    includes = [f"-I{d}" for d in (root, *_include_dirs())]
    args = ["grpc_tools.protoc", *includes]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed for {root}")
    for source in sources:
        target = out / Path(source).with_suffix(".binpb")
        target.parent.mkdir(parents=True, exist_ok=True)
        desc_args = [
            "grpc_tools.protoc",
            *includes,
            "--include_source_info",
            f"--descriptor_set_out={target}",
            source,
        ]
        if protoc.main(desc_args) != 0:
            raise SystemExit(f"protoc failed for {source}")
    return len(sources)


def generate(out: Path) -> None:
    _protoc(PROTOS, out)
    for package in {p.parent for p in out.rglob("*_pb2.py")}:
        pkg = package
        while pkg != out:
            (pkg / "__init__.py").write_text(INIT)
            pkg = pkg.parent


def _tree(root: Path, *, generated_only: bool = False) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and (not generated_only or p.name.endswith(GENERATED_SUFFIXES))
    }


def _drift(fresh: dict[str, Path], committed: dict[str, Path]) -> list[str]:
    return sorted(
        name
        for name in fresh.keys() | committed.keys()
        if name not in fresh
        or name not in committed
        or not filecmp.cmp(fresh[name], committed[name], shallow=False)
    )


def _example_dirs() -> list[Path]:
    return sorted({p.parent for p in EXAMPLES.rglob("*.proto")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ or examples are stale")
    ns = parser.parse_args()
    stale: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gen"
        out.mkdir()
        generate(out)
        fresh, committed = _tree(out), _tree(GEN)
        if ns.check:
            stale += [f"gen/{name}" for name in _drift(fresh, committed)]
        else:
            shutil.rmtree(GEN, ignore_errors=True)
            shutil.copytree(out, GEN)
            print(f"generated {len(fresh)} files into gen/")
        for example in _example_dirs():
            ex_out = Path(tmp) / "examples" / example.name
            ex_out.mkdir(parents=True)
            _protoc(example, ex_out)
            ex_fresh = _tree(ex_out, generated_only=True)
            ex_committed = _tree(example, generated_only=True)
            rel = example.relative_to(ROOT)
            if ns.check:
                stale += [f"{rel}/{name}" for name in _drift(ex_fresh, ex_committed)]
                continue
            for name, path in ex_committed.items():
                if name not in ex_fresh:
                    path.unlink()
            for name, path in ex_fresh.items():
                shutil.copyfile(path, example / name)
            print(f"generated {len(ex_fresh)} files into {rel}/")
    if ns.check:
        if stale:
            print("generated code is stale; run `make gen`. Differs:", *stale, sep="\n  ")
            return 1
        print("gen/ and examples are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
