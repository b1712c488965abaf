"""What an audit record says: one call's, message's or connection's outcome.

The pipeline's audit stage makes one ``AuditRecord`` per call on every door (and per
message, connection and disconnection), and hands it to the audit sinks: the node's
hash-chained log (``aralnode.store.audit``) and any the program adds. Sans-IO: the
record is plain data, so the store can keep it and ``aralnode audit verify`` can read
it back without the service layer.
"""

from __future__ import annotations

import enum
import hashlib
import json
from typing import Any, NamedTuple

from google.protobuf.message import Message


class Point(enum.StrEnum):
    """Where on a call's way the record was made (ACGP-1008 §6 injection points)."""

    CONNECT = "connect"  # a peer's handshake: admitted or refused
    PRE = "pre"  # before the handler: authenticate .. govern (a refusal there)
    POST = "post"  # after the handler: the call's outcome, post-checked
    FILTER = "filter"  # a message filtered (redacted, dropped) on its way
    DISCONNECT = "disconnect"  # a peer's channel ended


class AuditRecord(NamedTuple):
    """One call's outcome, as an audit sink receives it (immutable; a named tuple:
    one is made for every call and every channel message, so it must be cheap).

    Attributes:
        door: "grpc", "rest", "mcp", "ws", "channel", "local".
        caller: The verified caller ("" for anonymous).
        principal: Who the call is for (the delegating principal, else the caller).
        action: The capability, built-in method, event or "connect"/"disconnect".
        direction: ``Direction`` value ("invoke", "send", "receive", ...).
        peer: The peer node involved, else the caller's transport address.
        trace_id: The call's trace id.
        decision: Governance's decision label ("ok", "nudge", "escalate", "block",
            "halt"; "" when governance did not judge the call).
        outcome: "ok", or the refusal's or failure's error code (``AralError.code``).
        reason: The error's reason ("" when ok).
        chain: The delegation chain the call came through, originator first
            (empty for a direct call).
        point: The injection point (``Point``) that made the record.
        flags: Rules that flagged the call (orthogonal to the decision).
        rules: Rules that matched (every decision's, not only flags).
        params_digest: SHA-256 (hex) of the parameters as received ("" if none).
        duration_ms: From the call's start to its outcome (0 when not timed).
        time_ms: Wall-clock time of the outcome, Unix milliseconds (0: the sink
            stamps it).
    """

    door: str
    caller: str
    principal: str
    action: str
    direction: str
    peer: str
    trace_id: str
    decision: str
    outcome: str
    reason: str = ""
    chain: tuple[str, ...] = ()
    point: str = Point.POST.value
    flags: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    params_digest: str = ""
    duration_ms: float = 0.0
    time_ms: int = 0


_canonical_json = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
).encode


def params_digest(params: Any, message: Message | None = None) -> str:
    """SHA-256 (hex) of a call's parameters: a protobuf request's deterministic
    serialization, else the canonical JSON of its JSON parameters ("" for none)."""
    if message is not None:
        return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    if params is None:
        return ""
    try:
        data = _canonical_json(params).encode()
    except (TypeError, ValueError, RecursionError):
        data = repr(params).encode()
    return hashlib.sha256(data).hexdigest()


__all__ = ["AuditRecord", "Point", "params_digest"]
