"""Who is calling: the authenticator hook the pipeline's first stage runs.

An ``Authenticator`` turns a context's ``Credentials`` (what a door knew) into an
``Authenticated`` (who the caller is, which scopes it has, whom it acts for). The
default, ``PeerAuthenticator``, is the node's rule for every door alike:

- the in-process API is the node itself, with every scope; a context the program
  made itself stands as the program set it (no caller: anonymous, with the scopes it
  was given);
- a caller whose signature verified with a key a handshake pinned is that peer: it
  gets ``peer_scopes`` plus its own ``peer_grants``, unless it acts for someone else
  (a delegation gets that principal's rights, never the forwarding node's);
- a signature with a key nobody verified names the signer, with no scopes;
- a channel peer is its session's authenticated node id (scopes as above when its
  message is signed);
- everyone else is anonymous.

Other authenticators (bearer tokens, API keys, mTLS identities) implement the same
protocol and are chained in front of the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aralnode.core.context import CallContext, Credentials

ALL_SCOPES = "*"

# What a principal is (``Authenticated.kind``).
NODE = "node"
USER = "user"
SERVICE = "service"
ANONYMOUS_KIND = "anonymous"
KINDS = (NODE, USER, SERVICE, ANONYMOUS_KIND)
_NO_SCOPES: frozenset[str] = frozenset()
_EVERY_SCOPE = frozenset({ALL_SCOPES})


@dataclass(slots=True)
class Authenticated:
    """The principal model: what an authenticator decided about a caller, the same
    for every door (the authenticate stage copies it onto the ``CallContext``).

    Attributes:
        caller: The caller's id ("" for anonymous).
        scopes: The scopes it holds (``"*"``: all of them), besides its roles'.
        on_behalf_of: The principal it acts for, if it delegates.
        kind: ``NODE``, ``USER``, ``SERVICE`` or ``ANONYMOUS_KIND``; "" lets the
            stage decide (a node for a verified key, anonymous without a caller,
            else a user).
        roles: Its roles (``NodeConfig.roles`` maps them to scopes).
        chain: The delegation chain it acts through, originator first.
    """

    caller: str = ""
    scopes: frozenset[str] = _NO_SCOPES
    on_behalf_of: str = ""
    kind: str = ""
    roles: frozenset[str] = _NO_SCOPES
    chain: tuple[str, ...] = ()


ANONYMOUS = Authenticated(kind=ANONYMOUS_KIND)

Principal = Authenticated  # the name the docs use for the model


class Authenticator(Protocol):
    """Decides who a caller is. Runs on every call: keep it fast (cache what costs).

    Raises ``Unauthenticated`` for credentials that are present but wrong (a bad
    token): the call is refused, on every door alike.
    """

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated: ...


def peer_scopes_of(
    node_id: str, everyone: frozenset[str], grants: Mapping[str, frozenset[str]]
) -> frozenset[str]:
    """The scopes of the verified node key ``node_id``: what every peer gets, and its
    own grant (``NodeConfig.peer_scopes`` and ``peer_grants``)."""
    grant = grants.get(node_id)
    return everyone | grant if grant else everyone


class PeerAuthenticator:
    """The default rule (see the module docstring)."""

    __slots__ = ("_node_id", "_self", "grants", "peer_scopes")

    def __init__(
        self,
        node_id: str | Callable[[], str],
        *,
        peer_scopes: frozenset[str] = _NO_SCOPES,
        peer_grants: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """``node_id`` may be given late (a callable), as a node's key is read lazily."""
        self._node_id = node_id
        self._self: Authenticated | None = None  # the node itself, made once
        self.peer_scopes = frozenset(peer_scopes)
        self.grants = dict(peer_grants or {})

    @property
    def node_id(self) -> str:
        node_id = self._node_id
        return node_id if isinstance(node_id, str) else node_id()

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        if credentials.given:  # the program said who (it owns the node), or nobody
            return Authenticated(
                ctx.caller, ctx.scopes if ctx.caller else _NO_SCOPES, ctx.on_behalf_of
            )
        if credentials.local:
            if self._self is None:
                self._self = Authenticated(self.node_id, _EVERY_SCOPE, kind=NODE)
            return self._self
        delegated = credentials.on_behalf_of
        signer = credentials.signer
        if signer:
            # Peer rights go to a verified node key (pinned by a handshake), not to
            # any self-made key a message embeds; a delegated call gets its
            # principal's rights, not the signer's.
            trusted = credentials.signer_verified and not delegated
            scopes = (
                peer_scopes_of(signer, self.peer_scopes, self.grants) if trusted else _NO_SCOPES
            )
            return Authenticated(signer, scopes, delegated, kind=NODE)
        if credentials.link_peer:
            return Authenticated(credentials.link_peer, _NO_SCOPES, delegated, kind=NODE)
        return ANONYMOUS


class Chain:
    """Several authenticators in order: the first that names a caller decides; if
    none does, the call is anonymous. One that raises refuses the call (a token
    that is present but wrong is not a reason to try the next)."""

    __slots__ = ("authenticators",)

    def __init__(self, *authenticators: Authenticator) -> None:
        self.authenticators = authenticators

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        for authenticator in self.authenticators:
            who = authenticator.authenticate(ctx, credentials)
            if who.caller:
                return who
        return ANONYMOUS


__all__ = [
    "ALL_SCOPES",
    "ANONYMOUS",
    "ANONYMOUS_KIND",
    "KINDS",
    "NODE",
    "SERVICE",
    "USER",
    "Authenticated",
    "Authenticator",
    "Chain",
    "PeerAuthenticator",
    "Principal",
    "peer_scopes_of",
]
