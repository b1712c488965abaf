"""Refusals a door makes before the pipeline can run, audited all the same.

A signed message whose signature does not verify, one seen before, one bound to a
channel but posted to ``Invoke``, one whose time to live has passed: the door
refuses it while it still cannot say who sent it or what it asks, so no stage of
the pipeline sees it. It is still something someone tried, and the audit log is
where an operator looks for that. ``refused`` writes its record and counts it, as
the pipeline does for its own refusals:

- at the pre-execution point (``Point.PRE``); a hello that does not verify, at the
  connection point, where ``connections.admit_peer`` records the verified ones;
- under the door's own label as the action (never the unverified message's words);
- with the caller only if the transport verified it;
- with the error's code and reason as the outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aralnode.core.audit import Point
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.core.governance import Direction
from aralnode.service.context import caller_trace
from aralnode.service.pipeline import Pipeline, Target
from aralnode.service.tracing import incoming


def refused(
    pipeline: Pipeline,
    ctx: CallContext,
    action: str,
    error: AralError,
    *,
    direction: Direction = Direction.INVOKE,
    peer: str = "",
    kind: str = "invoke",
    point: Point = Point.PRE,
) -> AralError:
    """Record ``error`` as ``ctx``'s refusal of ``action``; ``error`` (to raise).

    Never raises: an audit log that cannot take the record logs it, and the
    refusal stands (the pipeline's own rule for refusals). A caller that sent a
    W3C ``traceparent`` finds its refusal under that trace, as it would a call's."""
    if not ctx.trace_id:  # (a door that decided it has answered under it already)
        ctx.trace_id = caller_trace(incoming(ctx)[0], "")
    pipeline.ended(ctx, Target(action, direction, peer=peer, kind=kind), error, point.value)
    return error


def refused_as_caller(
    pipeline: Pipeline, ctx: CallContext, action: str, error: AralError
) -> AralError:
    """``refused``, for a door that refuses before the pipeline's first stage ran:
    the caller is authenticated first, so the record names who called, and a
    credential that does not hold (or an anonymous caller where none is served) is
    refused, and recorded, as that instead."""
    pipeline.authenticate(ctx, action)
    return refused(pipeline, ctx, action, error)


@contextlib.contextmanager
def audited(
    pipeline: Pipeline,
    ctx: CallContext,
    action: str,
    *,
    direction: Direction = Direction.INVOKE,
    peer: str = "",
    kind: str = "invoke",
    point: Point = Point.PRE,
) -> Iterator[None]:
    """``refused`` for any ``AralError`` raised within (it goes on up)."""
    try:
        yield
    except AralError as exc:
        refused(pipeline, ctx, action, exc, direction=direction, peer=peer, kind=kind, point=point)
        raise


__all__ = ["audited", "refused", "refused_as_caller"]
