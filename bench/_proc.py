"""Start a benchmark server in a child process and read the port it prints."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Child:
    """A running bench server: its port, and its CPU time so far."""

    port: int
    pid: int

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of all a process's threads (Linux ``/proc``); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(*args: str, timeout: float = 30.0, tree: Path = ROOT) -> Iterator[Child]:
    """``bench._servers`` with ``args``, from ``tree`` (another checkout: its code)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._servers", *args],
        cwd=tree,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"server {args} did not start: {line!r}")
        yield Child(int(line), proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
