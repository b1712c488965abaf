"""Who else an action involves, as the engine's counters key it: the peer it is an
exchange with (rapid exchange, ACGP-1008 §3.5.2) and the peer that named its
principal (rate and trust debt roll up to it, as halts do: ``service.halts``; data
aggregation counts it once, whatever names it made up).

Both depend only on what a call's shape holds (direction, caller, principal, kind,
door, peer): the engine works them out once per shape.
"""

from __future__ import annotations

from aralnode.core.governance import Action, Direction

_MESSAGES = frozenset({Direction.SEND, Direction.RECEIVE})
_LOCAL = "local"  # the node's own program: no peer
_NODE = "node"  # ``service.auth.NODE``


def exchange_partner(action: Action) -> str:
    """The peer ``action`` is an exchange with, "" if none.

    A message's peer (one sent to it, one received from it); for a call, the peer
    node that asked: a channel's peer (door "channel": a peer's request over its
    channel), else a caller that is a peer node (kind "node": a peer's signed
    Invoke, a call it forwards for a principal) on any door but the node's own
    program's."""
    direction = action.direction
    if direction in _MESSAGES:
        return action.peer
    if direction is not Direction.INVOKE:
        return ""
    if action.door == "channel":
        return action.peer or action.caller
    return action.caller if action.kind == _NODE and action.door != _LOCAL else ""


def naming_peer(action: Action) -> str:
    """The untrusted peer that named ``action``'s principal, "" if none.

    ``service.auth`` qualifies a principal a peer names without the operator
    trusting it to name principals with that peer, ``alice@<peer id>``, and the
    peer is the call's caller (kind "node"): the test ``Halts.halted`` makes. A
    trusted peer's names stay as given, and are their own."""
    principal, caller = action.principal, action.caller
    if "@" in principal and action.kind == _NODE and caller and principal != caller:
        return caller if principal.endswith("@" + caller) else ""
    return ""


__all__ = ["exchange_partner", "naming_peer"]
