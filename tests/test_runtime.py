"""``aralnode run`` tunes its own process; the library never touches the host's GC."""

from __future__ import annotations

import subprocess
import sys

from aralnode._runtime import GEN0_THRESHOLD


def test_tune_for_serving_in_a_fresh_process() -> None:
    code = (
        "import gc, aralnode, aralnode.node\n"
        "before = gc.get_threshold()[0]\n"
        "from aralnode._runtime import tune_for_serving\n"
        "tune_for_serving()\n"
        "print(before, gc.get_threshold()[0], gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    before, after, frozen = out.stdout.split()
    assert int(before) != GEN0_THRESHOLD  # importing the library changed nothing
    assert int(after) == GEN0_THRESHOLD
    assert frozen == "True"
