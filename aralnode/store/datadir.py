"""A running node holds its data dir: one identity and one outbox per dir."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = "node.lock"


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``data_dir/node.lock`` (``flock``, released when the process ends, even
    killed); its descriptor. Two nodes on one data dir would share one identity and
    one outbox: each would see the other as itself, and their messages would mix.

    Raises:
        OSError: ``EBUSY``, another running node holds the data dir.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise OSError(
            errno.EBUSY,
            f"data dir {data_dir} is in use by another node (pid {holder}): give this "
            "node its own --name or --data-dir",
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_data_dir(fd: int) -> None:
    """Let go of the lock ``lock_data_dir`` took."""
    os.close(fd)
