"""Generate gen/ from protos/ with grpcio-tools; ``--check`` fails on drift.

Generated files are committed so that a user installs aralnode without a protobuf
compiler; ``make gen-check`` keeps them honest.
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
INIT = '"""Generated protobuf package. Do not edit: run `make gen`."""\n'


def _include_dirs() -> list[Path]:
    well_known = Path(str(importlib.resources.files("grpc_tools") / "_proto"))
    googleapis = Path(annotations.__file__).resolve().parent.parent.parent
    return [PROTOS, well_known, googleapis]


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["grpc_tools.protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for leaf in {p.parent for p in out.rglob("*_pb2.py")}:
        pkg = leaf
        while pkg != out:
            (pkg / "__init__.py").write_text(INIT)
            pkg = pkg.parent


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ is stale")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh, committed = _tree(out), _tree(GEN)
        if ns.check:
            drift = sorted(
                name
                for name in fresh.keys() | committed.keys()
                if name not in fresh
                or name not in committed
                or not filecmp.cmp(fresh[name], committed[name], shallow=False)
            )
            if drift:
                print("gen/ is stale; run `make gen`. Differs:", *drift, sep="\n  ")
                return 1
            print(f"gen/ is up to date ({len(fresh)} files)")
            return 0
        shutil.rmtree(GEN, ignore_errors=True)
        shutil.copytree(out, GEN)
        print(f"generated {len(fresh)} files into gen/")
        return 0


if __name__ == "__main__":
    sys.exit(main())
