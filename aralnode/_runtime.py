"""Process-level settings for a serving node; applied by ``aralnode run``, never by the
library (a program that embeds a ``Node`` owns its own process).

Garbage collection: a node allocates several short-lived objects per call, so the
default gen-0 threshold (700 allocations) triggers a collection every few dozen
calls, and each one walks the young objects of a large live heap (descriptors,
schemas, grpc state). Freezing what start-up built and raising the gen-0 threshold
cuts that work; measured by ``make bench`` (unary Invoke, see docs/benchmarks.md).
Reference cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 20_000


def tune_for_serving() -> None:
    """Call once the node has started: start-up objects move to the permanent
    generation and young collections run every ``GEN0_THRESHOLD`` allocations."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
