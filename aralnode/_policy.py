"""The node's policy file (issue 16), from ``NodeConfig.policy_file``: loaded when
the node starts (a refused file stops the start, naming file:line), installed as
the govern stage's evaluator, and re-read every ``policy_reload_seconds`` while
the node runs."""

from __future__ import annotations

import asyncio

from aralnode._logs import get_logger
from aralnode.config import NodeConfig
from aralnode.core.clock import Clock
from aralnode.policy.holder import PolicyHolder
from aralnode.service.pipeline import Pipeline

log = get_logger("aralnode.governance")


def install_policy(cfg: NodeConfig, pipeline: Pipeline, clock: Clock) -> PolicyHolder | None:
    """Load the policy file and make it the govern stage's evaluator.

    Raises:
        PolicyError: the file is refused.
    """
    if cfg.policy_file is None:
        return None
    holder = PolicyHolder(cfg.policy_file, clock.monotonic, pipeline.counters)
    pipeline.governance = holder
    return holder


async def watch_policy(holder: PolicyHolder, every: float) -> None:
    """Re-read the file when it changes, until cancelled: whatever one reload
    raises is logged and the watch goes on (a refused file is already counted and
    logged by ``check_now``, its policy in force kept)."""
    while True:
        await asyncio.sleep(every)
        try:
            holder.check_now()
        except Exception:
            log.exception("policy reload of %s failed; still watching it", holder.path)


def start_watch(holder: PolicyHolder | None, cfg: NodeConfig) -> asyncio.Task[None] | None:
    if holder is None or cfg.policy_reload_seconds <= 0:
        return None
    return asyncio.ensure_future(watch_policy(holder, cfg.policy_reload_seconds))


async def stop_watch(task: asyncio.Task[None] | None) -> None:
    """Cancel the watch and wait for it; a watch that had died is logged, never
    raised (stopping the node goes on)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the stop itself is cancelled, not (only) the watch
    except Exception:
        log.exception("the policy watch had failed")


__all__ = ["install_policy", "start_watch", "stop_watch", "watch_policy"]
