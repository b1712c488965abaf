"""Delegation statements a node's own program makes (``Node.request(on_behalf_of=...)``).

A call a door forwards states what the caller was granted here (``Forwarder``); a
program that names a principal of its own has no such caller, so the principal
gets the scopes of its implicit role on this node (``anonymous`` or
``authenticated``): the peer grants no more than those and what it grants us.
"""

from __future__ import annotations

from aralnode import _proto as pb
from aralnode.access.roles import RoleMap
from aralnode.core.context import ANONYMOUS
from aralnode.core.delegation import make_statement
from aralnode.service.auth import ANONYMOUS_KIND, USER


def program_statement(
    roles: RoleMap, principal: str, *, signer: str, now_ms: int, ttl_ms: int
) -> pb.Delegation:
    """The statement for ``principal`` ("anonymous", or a user's id), signed by us."""
    anonymous = principal == ANONYMOUS
    return make_statement(
        principal=principal,
        kind=ANONYMOUS_KIND if anonymous else USER,
        scopes=roles.anonymous if anonymous else roles.authenticated,
        chain=(),
        signer=signer,
        now_ms=now_ms,
        ttl_ms=ttl_ms,
    )


__all__ = ["program_statement"]
