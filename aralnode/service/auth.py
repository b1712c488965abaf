"""Who is calling: the authenticator hook the pipeline's first stage runs.

An ``Authenticator`` turns a context's ``Credentials`` (what a door knew) into an
``Authenticated`` (who the caller is, which scopes it has, whom it acts for). The
default, ``PeerAuthenticator``, is the node's rule for every door alike:

- the in-process API is the node itself, with every scope; a context the program
  made itself stands as the program set it (no caller: anonymous, with the scopes it
  was given);
- a caller whose signature verified with a key a handshake pinned is that peer: it
  gets ``peer_scopes`` plus its own ``peer_grants`` (and its ``peer_roles``); when
  it forwards a call for someone else, its signed delegation statement is checked
  (``aralnode.core.delegation``) and the call gets no more than the intersection of
  the node's grant and the statement's scopes (``Authenticated.ceiling``); a
  delegation with no statement (``on_behalf_of`` alone) gets no more than an
  anonymous caller; the principal it names is taken as named only from a peer the
  operator trusts to name principals (a ``peer_grants`` or ``peer_roles`` entry),
  and is ``principal@<node id>`` from any other (``_named_by``);
- a signature with a key nobody verified names the signer, who counts as anonymous
  (anyone can make a key);
- a channel peer is its session's authenticated node id (scopes as above when its
  message is signed);
- everyone else is anonymous.

Other authenticators (bearer tokens, API keys, mTLS identities) implement the same
protocol and are chained in front of the default.

Roles become scopes in the authenticate stage (a ``ScopeResolver``: the node's
``aralnode.access.roles.RoleMap``, or ``ImplicitRoles`` by default), so an
authenticator only names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.context import CallContext, Credentials
from aralnode.core.delegation import DEFAULT_MAX_DEPTH, check_statement
from aralnode.core.errors import Unauthenticated

ALL_SCOPES = "*"

# The built-in scopes (``docs/authorization.md``).
AGENT_READ = "agent:read"  # listings and status: ListCapabilities, GetStatus, ListPeers
AGENT_INVOKE = "agent:invoke"  # a capability that names no scope of its own
AGENT_ADMIN = "agent:admin"  # the node's administrative methods
INVOKE_SCOPES = (AGENT_INVOKE,)
READ_SCOPES = (AGENT_READ,)
# What the implicit roles "anonymous" and "authenticated" hold unless configured:
# a development node's behaviour (everyone may list and call what names no scope).
DEVELOPMENT_SCOPES = frozenset({AGENT_READ, AGENT_INVOKE})

# What a principal is (``Authenticated.kind``).
NODE = "node"
USER = "user"
SERVICE = "service"
ANONYMOUS_KIND = "anonymous"
ANONYMOUS_PRINCIPAL = "anonymous"  # core.context.ANONYMOUS: on_behalf_of of nobody in particular
ANONYMOUS_AT = ANONYMOUS_PRINCIPAL + "@"  # an anonymous caller's A2A tasks' owner, from an address
KINDS = (NODE, USER, SERVICE, ANONYMOUS_KIND)
_NO_SCOPES: frozenset[str] = frozenset()
_EVERY_SCOPE = frozenset({ALL_SCOPES})
#: Peers whose answer ``PeerAuthenticator`` keeps (emptied when full).
_KEPT_PEERS = 4096


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
        ceiling: For a delegated call, the most it may get (the scopes the
            forwarding node's statement granted its principal): the stage grants
            the intersection of this and the caller's own rights. ``None``: no
            ceiling.
        vouched: The node vouches for the caller being itself and nobody else: a
            principal an authenticator named, a mesh certificate, a peer key the
            operator trusts. False for a key anyone can make in a second (pinned by
            a handshake or not): it keeps to its address's rate bucket and slots
            (``stages.share_key``), as any number of such keys come from one client.
    """

    caller: str = ""
    scopes: frozenset[str] = _NO_SCOPES
    on_behalf_of: str = ""
    kind: str = ""
    roles: frozenset[str] = _NO_SCOPES
    chain: tuple[str, ...] = ()
    ceiling: frozenset[str] | None = None
    vouched: bool = True


ANONYMOUS = Authenticated(kind=ANONYMOUS_KIND, vouched=False)

Principal = Authenticated  # the name the docs use for the model


def reserved(name: str) -> bool:
    """Whether ``name`` is one the node keeps for callers nobody identified:
    ``anonymous`` (everyone without an identity, whose halt would stop them all) or
    ``anonymous@<address>`` (an A2A task's owner, an anonymous caller from there)."""
    return name == ANONYMOUS_PRINCIPAL or name.startswith(ANONYMOUS_AT)


def own_name(who: Authenticated) -> Authenticated:
    """``who``, unless an identified caller bears a ``reserved`` name: an issuer's
    ``sub``, an API key's name or the program's caller cannot take one.

    Raises:
        Unauthenticated: such a name (``RESERVED_PRINCIPAL``).
    """
    caller, named = who.caller, who.on_behalf_of
    # (A peer may act for "anonymous", nobody in particular: not for one address's.)
    if who.kind != ANONYMOUS_KIND and (reserved(caller) or named.startswith(ANONYMOUS_AT)):
        bearer = caller if reserved(caller) else named
        raise Unauthenticated(
            f"the principal {bearer[:80]!r} bears a name kept for callers nobody identified",
            reason="RESERVED_PRINCIPAL",
        )
    return who


class Authenticator(Protocol):
    """Decides who a caller is. Runs on every call: keep it fast (cache what costs).

    Raises ``Unauthenticated`` for credentials that are present but wrong (a bad
    token): the call is refused, on every door alike.
    """

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated: ...


class ScopeResolver(Protocol):
    """Turns a principal's roles into scopes (the authenticate stage asks it once
    per call: keep it cheap)."""

    def scopes(self, who: Authenticated) -> frozenset[str]:
        """``who.scopes``, plus its roles' and its implicit role's."""
        ...


class ImplicitRoles:
    """The two implicit roles and nothing else: ``anonymous`` (a caller nobody
    identified, or a key nobody verified) and ``authenticated`` (every identified
    caller). ``aralnode.access.roles.RoleMap`` adds the configured roles."""

    __slots__ = ("anonymous", "authenticated")

    def __init__(
        self,
        anonymous: frozenset[str] = DEVELOPMENT_SCOPES,
        authenticated: frozenset[str] = DEVELOPMENT_SCOPES,
    ) -> None:
        self.anonymous = frozenset(anonymous)
        self.authenticated = frozenset(authenticated)

    def implicit(self, who: Authenticated) -> frozenset[str]:
        """The implicit role's scopes for ``who``."""
        if who.kind == ANONYMOUS_KIND or not who.caller:
            return self.anonymous
        return self.authenticated

    def scopes(self, who: Authenticated) -> frozenset[str]:
        implicit = self.implicit(who)
        return who.scopes | implicit if who.scopes else implicit


def peer_scopes_of(
    node_id: str, everyone: frozenset[str], grants: Mapping[str, frozenset[str]]
) -> frozenset[str]:
    """The scopes of the verified node key ``node_id``: what every peer gets, and its
    own grant (``NodeConfig.peer_scopes`` and ``peer_grants``)."""
    grant = grants.get(node_id)
    return everyone | grant if grant else everyone


class PeerAuthenticator:
    """The default rule (see the module docstring)."""

    __slots__ = (
        "_node_id",
        "_peers",
        "_self",
        "anonymous_scopes",
        "grants",
        "max_delegation_depth",
        "now_ms",
        "peer_scopes",
        "roles",
    )

    def __init__(
        self,
        node_id: str | Callable[[], str],
        *,
        peer_scopes: frozenset[str] = _NO_SCOPES,
        peer_grants: Mapping[str, frozenset[str]] | None = None,
        anonymous_scopes: frozenset[str] = DEVELOPMENT_SCOPES,
        max_delegation_depth: int = DEFAULT_MAX_DEPTH,
        now_ms: Callable[[], int] = SYSTEM_CLOCK.now_ms,
        peer_roles: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        """``node_id`` may be given late (a callable), as a node's key is read lazily.

        Args:
            anonymous_scopes: The most a delegation without a statement gets (its
                principal is someone this node knows nothing about).
            max_delegation_depth: Nodes a delegated call may have passed through.
            now_ms: Wall clock, for the statements' validity.
            peer_roles: Roles of the node with this id (a verified key).
        """
        self._node_id = node_id
        self._self: Authenticated | None = None  # the node itself, made once
        # A peer's answer by (node id, signature verified), made once: without a
        # delegation it depends on nothing else, and a channel asks it per message.
        self._peers: dict[tuple[str, bool], Authenticated] = {}
        self.peer_scopes = frozenset(peer_scopes)
        self.grants = dict(peer_grants or {})
        self.anonymous_scopes = frozenset(anonymous_scopes)
        self.max_delegation_depth = max_delegation_depth
        self.now_ms = now_ms
        self.roles = dict(peer_roles or {})

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
        signer = credentials.signer
        verified = bool(signer) and credentials.signer_verified
        if credentials.delegation is not None:
            return self._delegated(credentials, verified)
        delegated = credentials.on_behalf_of
        # Peer rights go to a verified node key (pinned by a handshake), not to any
        # self-made key a message embeds: such a signer is named, as anonymous.
        node = signer if verified else credentials.link_peer if not signer else ""
        if not node:
            if signer:
                # A claim to act for someone, by a key nobody verified, names nobody:
                # it must not let a stranger be halted, indebted or queued as them.
                claimed = ANONYMOUS_PRINCIPAL if delegated else ""
                return Authenticated(
                    signer, _NO_SCOPES, claimed, kind=ANONYMOUS_KIND, vouched=False
                )
            return ANONYMOUS
        peer = self._peers.get((node, verified)) or self._peer(node, verified)
        if not delegated:
            return peer
        # on_behalf_of with no statement: nobody vouches for that principal's rights.
        return Authenticated(
            node, peer.scopes, self._named_by(node, delegated), kind=NODE, roles=peer.roles,
            chain=(delegated, node), ceiling=self.anonymous_scopes, vouched=peer.vouched,
        )  # fmt: skip

    def _peer(self, node: str, verified: bool) -> Authenticated:
        """The peer ``node`` as itself: its scopes and roles if its key verified."""
        scopes = peer_scopes_of(node, self.peer_scopes, self.grants) if verified else _NO_SCOPES
        roles = self.roles.get(node, _NO_SCOPES) if verified else _NO_SCOPES
        peer = Authenticated(node, scopes, kind=NODE, roles=roles, vouched=self.trusts(node))
        if len(self._peers) >= _KEPT_PEERS:
            self._peers.clear()
        self._peers[node, verified] = peer
        return peer

    def trusts(self, node: str) -> bool:
        """Whether the operator named the peer ``node`` (``peer_grants`` or
        ``peer_roles``): a key it trusts, not one a stranger made a minute ago."""
        return node in self.grants or node in self.roles

    def _named_by(self, node: str, principal: str) -> str:
        """The principal the verified peer ``node`` says it acts for, as this node
        knows it. As named when the operator trusts ``node`` to name principals (a
        ``peer_grants`` or ``peer_roles`` entry names it); otherwise qualified with
        it, ``alice@<node id>``. A handshake proves a key, not that its holder may
        speak for this node's users: a name it makes up must never take a local
        principal's governance tier, halt, trust debt or rate bucket."""
        if principal == ANONYMOUS_PRINCIPAL or self.trusts(node):
            return principal
        return f"{principal}@{node}"

    def _delegated(self, credentials: Credentials, verified: bool) -> Authenticated:
        """A call a verified peer forwards with a signed statement (PRO-020)."""
        statement = credentials.delegation
        assert statement is not None
        signer = credentials.signer
        check_statement(
            statement,
            signer=signer,
            on_behalf_of=credentials.on_behalf_of,
            now_ms=self.now_ms(),
            max_depth=self.max_delegation_depth,
        )
        if not verified:
            raise Unauthenticated(
                f"a delegation signed by {signer}, a key no handshake verified",
                reason="DELEGATION_UNVERIFIED",
            )
        return Authenticated(
            signer,
            peer_scopes_of(signer, self.peer_scopes, self.grants),
            self._named_by(signer, statement.principal),
            kind=NODE,
            roles=self.roles.get(signer, _NO_SCOPES),
            chain=tuple(statement.chain),
            ceiling=frozenset(statement.scopes),
            # A statement is the signer's own word: only a key the operator named
            # gets a share and a bucket of its own; any other counts as its address.
            vouched=self.trusts(signer),
        )


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
    "AGENT_ADMIN",
    "AGENT_INVOKE",
    "AGENT_READ",
    "ALL_SCOPES",
    "ANONYMOUS",
    "ANONYMOUS_AT",
    "ANONYMOUS_KIND",
    "DEVELOPMENT_SCOPES",
    "INVOKE_SCOPES",
    "KINDS",
    "NODE",
    "READ_SCOPES",
    "SERVICE",
    "USER",
    "Authenticated",
    "Authenticator",
    "Chain",
    "ImplicitRoles",
    "PeerAuthenticator",
    "Principal",
    "ScopeResolver",
    "own_name",
    "peer_scopes_of",
    "reserved",
]
