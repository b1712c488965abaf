"""The call context every door builds before it runs the shared pipeline."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from aralnode.core.errors import AralError, StatusCode, error_from_status


@dataclass(slots=True)
class CallContext:
    """Who is calling what, through which door, with which deadline.

    Attributes:
        door: "grpc", "channel", "rest", "mcp", "ws" or "local".
        caller: Node id of a verified signer, or an authenticated principal; "" if anonymous.
        peer: Transport address of the caller, as the transport reports it.
        trace_id: Trace id carried across hops (made if the caller sent none).
        message_id: Id of the request message, if it came as one.
        deadline: Monotonic time (``Clock.monotonic``) after which the call is abandoned.
        deadline_enforced: The transport already cancels the call at ``deadline`` (as
            gRPC does), so the pipeline need not arm a timer of its own.
        signed: Whether the request was a verified signed envelope.
        scopes: Scopes granted to the caller.
        metadata: Door-specific request metadata (gRPC metadata, HTTP headers).
    """

    door: str
    caller: str = ""
    peer: str = ""
    trace_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    message_id: str = ""
    deadline: float | None = None
    deadline_enforced: bool = False
    signed: bool = False
    scopes: frozenset[str] = frozenset()
    metadata: dict[str, str] = field(default_factory=dict)
    capability: str = ""
    decision: str = ""
    flags: list[str] = field(default_factory=list)

    def abort(self, status: StatusCode | int, message: str, *, reason: str = "") -> None:
        """Fail the call with a canonical status, like ``ServicerContext.abort``."""
        raise error_from_status(int(status), message, reason=reason)

    def fail(self, error: AralError) -> None:
        raise error
