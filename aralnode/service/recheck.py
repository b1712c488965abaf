"""Credentials asked again while what they opened stays open.

A call is authenticated once, when it starts; a stream, a socket or a session can
outlive its credentials (a key revoked, a token expired). ``Recheck`` asks the
pipeline's first stage again, at most once every ``RECHECK_SECONDS`` of its clock,
before the next thing is sent: a busy stream costs a token-cache lookup a second,
not one an item. A credential still being checked with its issuer (``Unauthenticated``
with a retry hint: an introspection answer aged out of the cache, a rotated key set
being fetched) is undecided, not refused, for ``UNDECIDED_SECONDS`` in a row; so is
one that could not be asked because its address is held back for others' failed
credentials (``RATE_LIMIT_AUTH_FAILURES``): no verdict on it, and a client behind
the same address should not lose its stream to another's guesses. Past that, the
refusal stands (a caller cannot keep a revoked key's stream open by keeping its own
address held back).

``StreamWatch`` is what ``Pipeline.stream`` runs before each item of every server
stream (REST's SSE and NDJSON, a user's server-streaming or bidi gRPC method on any
door, a governed A2A stream): a halt ends the stream, and so do its caller's
credentials once they no longer hold. The credentials are decided again in a
context holding only what the caller presented (``afresh``): an ``Authenticator``
of a program's own that reads more of the context is asked with less. The doors'
own long-lived streams (a WebSocket, an MCP GET stream, an A2A subscription) hold a
``Recheck`` in their gate (``bridge._approvals_feed``); a governed A2A stream is
held to both (two checks a second: cheap, and each door's refusal its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from aralnode.core.clock import Clock
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.service.stages import Authenticate

# The credentials are authenticated again at most this often (seconds).
RECHECK_SECONDS = 1.0
# How long in a row a credential may stay undecided (being checked with its issuer).
UNDECIDED_SECONDS = 30.0
# Doors whose callers' credentials are not asked again: the program's own calls (as
# a context the program made, ``Credentials.given``), and a channel's (its session's
# peer, verified for the session).
_FIXED_DOORS = frozenset({"local", "channel"})


class Recheck:
    """``authenticate`` (which raises the refusal) asked again, at most once a
    ``RECHECK_SECONDS`` of ``clock``; the first ``failure()`` asks at once, unless
    ``checked`` says when the credentials were last decided."""

    __slots__ = ("_authenticate", "_checked", "_undecided", "clock")

    def __init__(
        self, clock: Clock, authenticate: Callable[[], None], checked: float = -math.inf
    ) -> None:
        self.clock = clock
        self._authenticate = authenticate
        self._checked = checked
        self._undecided: float | None = None  # since when the checks have been undecided

    def failure(self) -> AralError | None:
        """The credentials' refusal, or ``None`` while they hold (or were asked less
        than ``RECHECK_SECONDS`` ago, or are undecided for less than
        ``UNDECIDED_SECONDS``)."""
        now = self.clock.monotonic()
        if now - self._checked < RECHECK_SECONDS:
            return None
        self._checked = now
        try:
            self._authenticate()
        except AralError as exc:
            if exc.retry_after is not None:  # (no verdict: see the module docstring)
                since = self._undecided = now if self._undecided is None else self._undecided
                if now - since < UNDECIDED_SECONDS:
                    return None
            return exc
        self._undecided = None
        return None


def afresh(ctx: CallContext) -> CallContext:
    """A context holding only what ``ctx``'s caller presented (its door, address,
    metadata and credentials), for the first stage to decide again."""
    return CallContext(
        door=ctx.door, peer=ctx.peer, trace_id=ctx.trace_id, metadata=ctx.metadata,
        credentials=ctx.credentials,
    )  # fmt: skip


class StreamWatch:
    """Run before each item of a stream (``Pipeline.stream``): raises the halt that
    now covers its caller, or the refusal of its credentials asked again
    (``Recheck``: not for the program's own calls or a channel's). Made as the
    stream's first stage decides its caller: the first item within the second is
    not asked again (after an approval that took longer, it is)."""

    __slots__ = ("ctx", "recheck", "stage")

    def __init__(self, stage: Authenticate, ctx: CallContext, clock: Clock) -> None:
        self.stage = stage
        self.ctx = ctx
        shown = ctx.credentials
        fixed = ctx.door in _FIXED_DOORS or shown is None or shown.local or shown.given
        self.recheck: Recheck | None = None
        if not fixed:  # (decided as it is made: its first item is not asked again)
            self.recheck = Recheck(clock, lambda: stage(afresh(ctx)), clock.monotonic())

    def __call__(self) -> None:
        if halts := self.stage.halts:  # a halt ends what it finds open
            halts.check(self.ctx)
        if self.recheck is not None and (failure := self.recheck.failure()) is not None:
            raise failure


__all__ = ["RECHECK_SECONDS", "UNDECIDED_SECONDS", "Recheck", "StreamWatch", "afresh"]
