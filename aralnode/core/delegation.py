"""Delegation statements (PRO-020): whom a forwarded call acts for, signed.

A node that forwards a caller's call to a peer does not pass the caller's token on
(no token passthrough). It states, in the signed ``Header.delegation``, the
principal it acts for, the scopes it granted that principal, and the chain of
principals and nodes the call passed through (originator first, the signing node
last). The receiving node checks the statement (``check_statement``) and grants
the call the intersection (``intersect``) of what it grants the signing node and
the scopes stated: a delegated call never gets more than both parties' rights.

Sans-IO: times are given, nothing is read from a clock here.
"""

from __future__ import annotations

from collections.abc import Iterable

from aralnode import _proto as pb
from aralnode.core.errors import PermissionDenied, Unauthenticated

ALL = "*"
ANONYMOUS_PRINCIPAL = "anonymous"
DEFAULT_MAX_DEPTH = 4
MAX_SCOPES = 256  # scopes one statement may carry
MAX_TEXT = 256  # characters of one scope or chain entry
SKEW_MS = 5_000  # an issue time this far ahead of ours is still taken
# A statement covers one forwarded call: valid at most as long as the longest
# forward (``forward_timeout_seconds``, a day at most), never for months.
MAX_LIFETIME_MS = 24 * 3600 * 1000


def intersect(granted: frozenset[str], stated: frozenset[str]) -> frozenset[str]:
    """What both sides allow: ``"*"`` on one side means "whatever the other says"."""
    if ALL in granted:
        return stated
    if ALL in stated:
        return granted
    return granted & stated


def depth(chain: Iterable[str]) -> int:
    """Nodes a call passed through: the chain's entries after its principal."""
    return max(0, len(tuple(chain)) - 1)


def make_statement(
    *,
    principal: str,
    kind: str,
    scopes: Iterable[str],
    chain: Iterable[str],
    signer: str,
    now_ms: int,
    ttl_ms: int,
) -> pb.Delegation:
    """The statement a node (``signer``) puts in a call it forwards for ``principal``.

    Args:
        scopes: What this node granted the principal (the caller's scopes here).
        chain: The chain the call came here through (empty for a direct caller: the
            principal starts it); ``signer`` is appended.
    """
    came = list(chain) or [principal]
    return pb.Delegation(
        principal=principal,
        kind=kind,
        scopes=sorted(scopes),
        chain=[*came, signer],
        issued_unix_ms=now_ms,
        expires_unix_ms=now_ms + min(ttl_ms, MAX_LIFETIME_MS),
    )


def check_statement(
    statement: pb.Delegation,
    *,
    signer: str,
    on_behalf_of: str,
    now_ms: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> None:
    """Refuse a statement this node must not act on.

    Args:
        signer: The node whose signature over the header verified ("" if none).
        on_behalf_of: ``Header.on_behalf_of`` (must name the same principal if set).

    Raises:
        Unauthenticated: unsigned (``DELEGATION_UNSIGNED``), malformed or not ending
            with its signer (``DELEGATION_FORGED``), expired or not yet valid
            (``DELEGATION_EXPIRED``), or valid longer than ``MAX_LIFETIME_MS``
            (``DELEGATION_TOO_LONG``).
        PermissionDenied: a chain through more than ``max_depth`` nodes
            (``DELEGATION_TOO_DEEP``).
    """
    if not signer:
        raise Unauthenticated(
            "a delegation must be signed by the node that makes it", reason="DELEGATION_UNSIGNED"
        )
    chain = statement.chain
    if len(chain) - 1 > max_depth:
        raise PermissionDenied(
            f"the delegation passed through {len(chain) - 1} nodes; this node takes at most "
            f"{max_depth}",
            reason="DELEGATION_TOO_DEEP",
            details={"depth": len(chain) - 1, "limit": max_depth},
        )
    _check_form(statement, signer, on_behalf_of)
    if not statement.issued_unix_ms - SKEW_MS <= now_ms <= statement.expires_unix_ms + SKEW_MS:
        raise Unauthenticated(
            "the delegation is expired or not yet valid", reason="DELEGATION_EXPIRED"
        )
    if statement.expires_unix_ms - statement.issued_unix_ms > MAX_LIFETIME_MS:
        raise Unauthenticated(
            "the delegation is valid for longer than a day; a statement covers one call",
            reason="DELEGATION_TOO_LONG",
            details={"max_lifetime_ms": MAX_LIFETIME_MS},
        )


def _check_form(statement: pb.Delegation, signer: str, on_behalf_of: str) -> None:
    """The statement's shape: a chain from its principal to its signer, bounded text."""
    chain, scopes = statement.chain, statement.scopes
    forged = (
        len(chain) < 2
        or chain[-1] != signer
        or chain[0] != statement.principal
        or (on_behalf_of and on_behalf_of != statement.principal)
    )
    if forged:
        raise Unauthenticated(
            f"the delegation's chain does not run from its principal to its signer {signer}",
            reason="DELEGATION_FORGED",
        )
    if (
        len(scopes) > MAX_SCOPES
        or any(not 0 < len(s) <= MAX_TEXT for s in scopes)
        or any(not 0 < len(c) <= MAX_TEXT for c in chain)
        or len(statement.kind) > MAX_TEXT
    ):
        raise Unauthenticated("the delegation is malformed", reason="DELEGATION_FORGED")


__all__ = [
    "ANONYMOUS_PRINCIPAL",
    "DEFAULT_MAX_DEPTH",
    "check_statement",
    "depth",
    "intersect",
    "make_statement",
]
