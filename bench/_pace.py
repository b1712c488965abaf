"""An open-loop load schedule with a precise clock.

``open_loop(run, rate, seconds)`` starts ``run()`` at fixed times (``rate`` per
second) whether or not earlier calls finished, and returns each call's latency
counted from its *due* time, so a stall of the server is not hidden by the load
generator waiting for it (no coordinated omission).

The schedule is kept by a thread sleeping with nanosleep, which hands each due
call to the event loop. An ``asyncio.sleep`` schedule would wake up to 1 ms late
(epoll's timeout is in whole milliseconds), and since latency counts from the due
time, the generator's own lateness would be charged to the server: about +0.5 ms
at p50 and +1 ms at p99 on this machine. Late wake-ups also fire calls in bursts.

The thread needs the GIL to hand a call over, so this suits a load generator whose
event loop is not itself the system under load (the HTTP bench client); in a node
process (the channel bench's sender) it would wait behind the node's own work.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable


async def open_loop(
    run: Callable[[], Awaitable[object]], rate: float, seconds: float
) -> tuple[float, list[float]]:
    """Achieved calls/s and the latencies (seconds, from each due time)."""
    loop = asyncio.get_running_loop()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    latencies: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(due: float) -> None:
        await run()
        latencies.append(time.perf_counter() - due)

    def launch(due: float) -> None:
        tasks.append(asyncio.create_task(one(due)))

    def ticker() -> None:
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # the load generator's clock, in its own thread
            loop.call_soon_threadsafe(launch, due)

    # The loop runs callbacks in the order they were scheduled, and the thread's
    # completion is scheduled after its last launch: every task exists here.
    # The generator's own garbage collections would stall every call in flight, and
    # latency counts from the due time: a 20 ms collection in this process showed as
    # the server's p95 (bench/bridge.py's MCP rounds). None while the calls run, as a
    # load generator in C has none; a run's garbage (its tasks and latencies, a few
    # thousand objects) is collected after it.
    collecting = gc.isenabled()
    gc.disable()
    try:
        await asyncio.to_thread(ticker)
        await settle(tasks)
    finally:
        if collecting:
            gc.enable()
    return total / (time.perf_counter() - start), latencies


async def settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``tasks`` and raise the first failure. Only the unfinished ones are
    waited on: ``gather`` over thousands would schedule a callback for every finished
    task at once, stalling the loop for milliseconds while the last calls are still
    in flight (charged to them: it showed as a ~10 ms last call in every round)."""
    pending = [t for t in tasks if not t.done()]
    if pending:
        await asyncio.wait(pending)
    for task in tasks:
        task.result()
