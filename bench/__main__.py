"""``make bench``: every benchmark, one run, ratios against bare baselines.

Usage: ``python -m bench [NAME ...]`` with NAME among the modules below (default: all).
"""

from __future__ import annotations

import importlib
import sys

from bench._report import Report

MODULES = (
    "unary", "envelope", "channel", "bridge", "discovery", "tls", "access", "governance",
    "observed", "etcd", "a2a",
)  # fmt: skip


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(MODULES)}",
            file=sys.stderr,
        )
        return 2
    report = Report()
    for name in names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"== {name}: skipped ({exc})", flush=True)
            continue
        print(f"== {name}", flush=True)
        module.run(report)
    report.write()
    print("wrote bench/results.json and docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
