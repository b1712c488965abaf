"""The node's policy file (issue 16), from ``NodeConfig.policy_file``: loaded when
the node starts (a refused file stops the start, naming file:line), installed as
the govern stage's evaluator, and re-read every ``policy_reload_seconds`` while
the node runs."""

from __future__ import annotations

import asyncio
import contextlib

from aralnode.config import NodeConfig
from aralnode.core.clock import Clock
from aralnode.policy.holder import PolicyHolder
from aralnode.service.pipeline import Pipeline


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
    """Re-read the file when it changes, until cancelled."""
    while True:
        await asyncio.sleep(every)
        holder.check_now()


def start_watch(holder: PolicyHolder | None, cfg: NodeConfig) -> asyncio.Task[None] | None:
    if holder is None or cfg.policy_reload_seconds <= 0:
        return None
    return asyncio.ensure_future(watch_policy(holder, cfg.policy_reload_seconds))


async def stop_watch(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["install_policy", "start_watch", "stop_watch", "watch_policy"]
