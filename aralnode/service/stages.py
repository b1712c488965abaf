"""The pipeline's stages, each a small object with one job.

::

    authenticate -> authorize -> rate-limit -> govern (pre) -> handler -> post-check -> audit

A stage refuses by raising an ``AralError``; the pipeline runs them in this order
on every kind of call (capabilities, built-in methods, streams, forwards) and on
every door, so a refusal is the same everywhere. Stages that must hold fail
closed: an authenticator, a policy rule, a response check or an audit write that
breaks refuses the call rather than letting it through.

Each stage is replaceable on its own (``Stages``): issue-sized features plug in at
one place each -- bearer tokens and API keys behind ``Authenticate``, roles behind
``Authorize``, token buckets behind ``RateLimit``, a policy engine behind
``Govern``, response checks behind ``PostCheck``, an audit log behind ``Audit``.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol
from urllib.parse import unquote

from aralnode._logs import get_logger
from aralnode.core.audit import AuditRecord
from aralnode.core.context import CallContext, Credentials, refuse_repeated_credentials
from aralnode.core.delegation import intersect
from aralnode.core.errors import (
    AralError,
    InternalError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
)
from aralnode.core.governance import (
    Action,
    AllowAll,
    Decision,
    Direction,
    Escalation,
    Evaluator,
    Verdict,
    enforce,
)
from aralnode.service.approvals import ApprovalQueue
from aralnode.service.auditing import Audit, AuditLog, AuditSink
from aralnode.service.auth import (
    AGENT_INVOKE,
    ALL_SCOPES,
    ANONYMOUS_KIND,
    USER,
    Authenticated,
    Authenticator,
    ImplicitRoles,
    PeerAuthenticator,
    ScopeResolver,
    own_name,
)
from aralnode.service.halts import Halts

log = get_logger("aralnode.pipeline")

VerdictListener = Callable[[CallContext | None, Action, Verdict], None]


class Authenticate:
    """Decides the caller from the context's credentials (``Authenticator``), turns
    its roles into scopes (``ScopeResolver``: the implicit ``anonymous`` or
    ``authenticated`` role, and the configured roles), caps a delegated call at
    its statement's scopes, and refuses anonymous callers where the node serves
    none. A request that carries a credential header more than once is refused
    before any authenticator reads it (``CREDENTIALS_AMBIGUOUS``)."""

    __slots__ = ("allow_anonymous", "authenticator", "counters", "failures", "halts", "roles")

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        allow_anonymous: bool,
        counters: Counter[str],
        roles: ScopeResolver | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.allow_anonymous = allow_anonymous
        self.counters = counters
        self.roles: ScopeResolver = roles or ImplicitRoles()
        self.halts: Halts | None = None  # governance's halts: refused before all else
        # The rate limiter, when it limits addresses: an address whose credentials
        # keep failing is refused before the next is checked (``check_failures``).
        self.failures: RateLimiter | None = None

    def __call__(self, ctx: CallContext) -> None:
        if not ctx.authenticated:
            credentials = ctx.credentials
            if credentials is None:
                # Every door builds its context with the ContextBuilder, and the
                # program's own contexts pass Node.invoke, which marks them local.
                raise Unauthenticated(
                    "this call's context was not made by the context builder",
                    reason="NO_CREDENTIALS",
                )
            who = self._identify(ctx, credentials)
            scopes = self.roles.scopes(who)
            if who.ceiling is not None:  # a delegation: no more than both parties allow
                scopes = intersect(scopes, who.ceiling)
            ctx.caller, ctx.scopes, ctx.on_behalf_of = who.caller, scopes, who.on_behalf_of
            ctx.kind = who.kind or (USER if who.caller else ANONYMOUS_KIND)
            ctx.vouched = who.vouched
            if who.roles:
                ctx.roles = who.roles
            if who.chain:
                ctx.chain = who.chain
            ctx.authenticated = True
        halts = self.halts
        if halts:  # (only while some halt exists)
            try:
                halts.check(ctx)
            except AralError:
                self.counters["governance.halted_refused"] += 1
                raise
        if not self.allow_anonymous and ctx.anonymous:
            self.counters["auth.anonymous_refused"] += 1
            raise Unauthenticated(
                "this node does not serve anonymous callers", reason="ANONYMOUS_REFUSED"
            )

    def _identify(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        """Who the authenticator says ``ctx``'s caller is. A refusal is counted and,
        where addresses are limited, charged to the client's address (a channel's
        peer is one its session verified: none there)."""
        failures = self.failures
        address = ""
        if failures is not None and ctx.door != "channel" and not _own(credentials):
            address = address_of(ctx.peer)
            failures.check_failures(address)
        try:
            # Before any authenticator reads one: a credential given twice is refused
            # here, once for every door and authenticator; a reserved name after it.
            refuse_repeated_credentials(ctx.metadata)
            return own_name(self.authenticator.authenticate(ctx, credentials))
        except AralError as exc:
            self.counters["auth.refused"] += 1
            if failures is not None and address and exc.retry_after is None:
                failures.failed(address)  # (a retry hint is no failure yet)
            raise
        except Exception as exc:  # fail closed: a broken authenticator admits nobody
            log.exception("authenticator failed (trace %s)", ctx.trace_id)
            raise Unauthenticated(
                f"authentication failed: {type(exc).__name__}", reason="AUTHENTICATOR_FAILED"
            ) from exc

    def spent(self, peer: str) -> bool:
        """Whether ``peer``'s address has used up its failed authentications (where
        addresses are limited): what a door would fetch for its credential before
        the stage (an introspection) is not fetched; the stage refuses it."""
        failures = self.failures
        if failures is None:
            return False
        try:
            failures.check_failures(address_of(peer))
        except RateLimited:
            return True
        return False

    @contextlib.contextmanager
    def charging(self, ctx: CallContext) -> Iterator[None]:
        """A credential a door checks itself (a signed message's signature) held to
        the stage's terms: an address past its failures is refused before it is
        checked, and a refusal is counted and charged to the address."""
        failures = self.failures
        address = address_of(ctx.peer) if failures is not None else ""
        if failures is not None and address:
            failures.check_failures(address)
        try:
            yield
        except AralError as exc:
            self.counters["auth.refused"] += 1
            if failures is not None and address and exc.retry_after is None:
                failures.failed(address)
            raise


class Authorize:
    """Refuses a caller that lacks a scope the target requires."""

    __slots__ = ()

    def __call__(self, ctx: CallContext, required: Sequence[str], target: str) -> None:
        if not required:
            return
        scopes = ctx.scopes
        if ALL_SCOPES in scopes:
            return
        for scope in required:  # every call needs one at least: no list on the way
            if scope not in scopes:
                self._refuse(ctx, [s for s in required if s not in scopes], target)

    @staticmethod
    def _refuse(ctx: CallContext, missing: list[str], target: str) -> NoReturn:
        """Raise the refusal naming ``missing`` (and the delegation, if any)."""
        message = f"{target} requires scope(s) {', '.join(missing)}"
        details: dict[str, object] = {"missing_scopes": missing}
        if ctx.on_behalf_of:
            # A delegation gets no more than both the forwarding node and its
            # principal hold: say so, or a granted peer's refusal makes no sense.
            message += (
                f"; {ctx.caller} calls on behalf of {ctx.on_behalf_of} (delegation "
                f"{' -> '.join(ctx.chain) or ctx.on_behalf_of}), and the intersection "
                "of their rights lacks them"
            )
            details["on_behalf_of"] = ctx.on_behalf_of
            details["delegation_chain"] = list(ctx.chain)
        raise PermissionDenied(message, reason="MISSING_SCOPE", details=details)


_INVOKE_ONLY = (AGENT_INVOKE,)


def reaches(scopes: frozenset[str], required: Sequence[str]) -> bool:
    """Whether a caller holding ``scopes`` may call a capability that requires
    ``required`` (none: ``agent:invoke``): what a listing shows it (a listing is a
    call, and lists only what the caller could call)."""
    if ALL_SCOPES in scopes:
        return True
    return all(s in scopes for s in required or _INVOKE_ONLY)


def share_key(ctx: CallContext) -> str:
    """Whose share of the slots a call counts against ("" for the node's own
    program, which has no share to keep to).

    A caller whose identity the node vouches for counts as itself: a principal an
    authenticator named, a mesh certificate, a peer key the operator trusts
    (``Authenticated.vouched``). Anyone else -- anonymous, or signing with a key
    it made up, pinned by a handshake or not (any number of which are free) --
    counts as its network address: the host, or for IPv6 the /64 a single client
    typically holds (for a channel's peer, the address its link runs at).
    """
    credentials = ctx.credentials
    if _own(credentials):
        return ""
    if ctx.caller and ctx.vouched:
        return "caller:" + ctx.caller
    if credentials is not None and credentials.link_address:  # (a channel's request)
        return "addr:" + address_of(credentials.link_address)
    return "addr:" + address_of(ctx.peer)


def _own(credentials: Credentials | None) -> bool:
    """Whether a call is the node's own program's (no share, no bucket)."""
    return credentials is None or credentials.local or credentials.given


def address_of(peer: str) -> str:
    """The client part of a transport address: ``127.0.0.1`` of ``127.0.0.1:5000``,
    gRPC's ``ipv4:127.0.0.1:5000`` or a dual-stack socket's ``[::ffff:127.0.0.1]:5000``
    (so one client is one key on every door); ``2001:db8::/64`` of an IPv6 address
    (a link-local one is itself, scope included); the text itself when it has no
    port (a node id, a unix socket)."""
    text = unquote(peer[5:]) if peer.startswith(("ipv4:", "ipv6:")) else peer
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return peer
    host = host.strip("[]")
    if ":" not in host:
        return host
    try:
        ip = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket: itself
        return str(ip.ipv4_mapped)
    if ip.is_link_local:  # every link-local host is in fe80::/64: the whole address
        return host
    return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))


class RateLimiter(Protocol):
    """Token buckets (``aralnode.access.buckets.RateLimiter``): ``admit`` takes a
    token for caller ``name`` of ``kind`` (``principal``, ``address``, ``peer``)
    or raises ``RateLimited``."""

    @property
    def active(self) -> bool: ...

    def admit(
        self, kind: str, name: str, roles: Iterable[str] = (), also: tuple[str, str] | None = None
    ) -> object: ...

    def check_failures(self, address: str) -> None: ...

    def failed(self, address: str) -> None: ...


class RateLimit:
    """Admission: at most ``max_concurrent`` calls run at once, and at most
    ``per_caller`` of them for any one caller (``share_key``), so that no caller
    can hold every slot; and, with a ``limiter``, no more calls per second than
    the token buckets allow (``access.buckets``: global, per principal, per
    address, per channel peer). The excess is refused at once (RESOURCE_EXHAUSTED,
    with a retry hint) rather than queued."""

    __slots__ = ("_held", "counters", "in_flight", "limiter", "max_concurrent", "per_caller")

    def __init__(
        self,
        max_concurrent: int,
        counters: Counter[str],
        per_caller: int | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.per_caller = per_caller if per_caller is not None else max(1, max_concurrent // 4)
        self.counters = counters
        self.in_flight = 0
        self._held: dict[str, int] = {}  # slots per share key, while held
        self.limiter = limiter if limiter is not None and limiter.active else None

    def enter(self, ctx: CallContext) -> str:
        """Take a slot for ``ctx``; the key it counts under, which ``leave`` takes
        to give it back (worked out once: a handler may change ``ctx``)."""
        if self.in_flight >= self.max_concurrent:
            self.counters["invoke.rejected"] += 1
            raise RateLimited(
                f"node is at its limit of {self.max_concurrent} concurrent calls",
                reason="CONCURRENCY_LIMIT",
                retry_after=0.05,
            )
        key = share_key(ctx)
        if key:
            held = self._held.get(key, 0)
            if held >= self.per_caller:
                self.counters["invoke.rejected_caller"] += 1
                raise RateLimited(
                    f"this caller already runs {held} calls, its limit on this node",
                    reason="CALLER_CONCURRENCY_LIMIT",
                    retry_after=0.05,
                    details={"limit": self.per_caller},
                )
            if self.limiter is not None:
                self._admit(ctx, key)
            self._held[key] = held + 1
        self.in_flight += 1
        return key

    def admit(self, ctx: CallContext) -> None:
        """A token for ``ctx``, no slot (a peer's notification); never for the program.

        Raises:
            RateLimited: a bucket is empty (reason ``RATE_LIMIT_<KIND>``).
        """
        if self.limiter is None or _own(ctx.credentials):
            return
        # (a channel's bucket is its peer's, not its share key's: none is worked out)
        self._admit(ctx, "" if ctx.door == "channel" else share_key(ctx))

    def _admit(self, ctx: CallContext, key: str) -> None:
        assert self.limiter is not None
        also = None
        if ctx.door == "channel":  # a channel's caller is the peer the session verified
            kind, name = "peer", str(ctx.peer)
            if key.startswith("addr:") and key != "addr:" + name:
                # A request from a peer nobody vouches for (its key is free) is a
                # call like its Invoke would be: its link's address pays for it too.
                also = ("address", key[5:])
        elif key.startswith("caller:"):
            kind, name = "principal", key[7:]
        else:
            kind, name = "address", key[5:]
        try:
            ctx.rate_limit = self.limiter.admit(kind, name, ctx.roles, also)
        except RateLimited:
            self.counters[f"ratelimit.refused_{kind}"] += 1
            raise

    def leave(self, key: str) -> None:
        """Give back a slot ``enter`` took under ``key``."""
        self.in_flight -= 1
        if key:
            held = self._held.pop(key, 1) - 1
            if held > 0:
                self._held[key] = held

    def held(self, ctx: CallContext) -> int:
        """Slots ``ctx``'s caller holds now."""
        return self._held.get(share_key(ctx), 0)


class Govern:
    """Judges an action with the node's ``Evaluator``, tells the listeners (the
    WebSocket decision feed), and enforces the verdict: block, halt and an
    escalation nobody can approve refuse; a nudge may replace the parameters.

    Listeners only watch: one that fails is logged and the call goes on. The
    evaluator decides: one that fails refuses the call (fail closed).
    """

    __slots__ = ("approvals", "counters", "evaluator", "halts", "listeners")

    def __init__(self, evaluator: Evaluator, counters: Counter[str]) -> None:
        self.evaluator = evaluator
        self.counters = counters
        self.listeners: list[VerdictListener] = []
        self.approvals: ApprovalQueue | None = None  # where escalated calls wait
        self.halts: Halts | None = None  # who a halt stopped

    @property
    def active(self) -> bool:
        """Whether judging can say anything but ok, or anyone watches the verdicts
        (otherwise the pipeline need not even describe the action)."""
        return bool(self.listeners) or type(self.evaluator) is not AllowAll

    def judge(self, action: Action, ctx: CallContext | None = None) -> Verdict:
        """The verdict on ``action``, told to the listeners; not enforced."""
        try:
            verdict = self.evaluator.evaluate(action)
        except AralError:  # the evaluator's own refusal (a rule that failed, named)
            self.counters["governance.failed"] += 1
            raise
        except Exception as exc:
            self.counters["governance.failed"] += 1
            log.exception("governance failed on %s", action.capability)
            raise InternalError(
                f"governance could not judge {action.capability!r}: {type(exc).__name__}",
                reason="GOVERNANCE_FAILED",
            ) from exc
        if verdict.flagged:
            self.counters["governance.flagged"] += 1
        if self.listeners:
            for listener in self.listeners:
                try:
                    listener(ctx, action, verdict)
                except Exception:  # a listener watches; it never decides a call's fate
                    log.exception("governance verdict listener failed")
        return verdict

    def __call__(
        self, ctx: CallContext | None, action: Action, *, can_wait: bool = False
    ) -> Verdict:
        """Judge and enforce; the verdict (a nudge's parameters in
        ``verdict.parameters``). An escalation returns for the caller to wait in
        ``approvals`` when it can wait and a queue is installed; otherwise it is
        refused (fail closed)."""
        verdict = self.judge(action, ctx)
        decision = verdict.decision
        if ctx is not None:
            ctx.decision = decision.label
            ctx.rules = verdict.rule_ids
            if verdict.flagged:
                ctx.flags.extend(verdict.rule_ids)
        if decision > Decision.NUDGE:
            if decision is Decision.ESCALATE and can_wait and self.approvals is not None:
                return verdict
            if decision is Decision.HALT and ctx is not None and self.halts is not None:
                self.halts.halted(ctx, action, verdict)
            enforce(verdict, action)
        return verdict


class ResponseCheck(Protocol):
    """Looks at a result before it leaves: returns it (or a redacted one), or raises
    to refuse it. The result is JSON on every door (a protobuf method's response as
    its proto3 JSON view; a changed view goes back into the message)."""

    def check(self, ctx: CallContext, action: Action, result: Any) -> Any: ...


class PostCheck:
    """Runs the response checks in order; a check that fails refuses the result.
    ``filter`` (the filtering injection point) sees a channel message's data the
    way the checks see a result; it may redact, or raise to refuse the message.
    ``scrub`` hands an error about to leave to the checks that redact errors."""

    __slots__ = ("checks", "filter")

    def __init__(self, checks: Sequence[ResponseCheck] = ()) -> None:
        self.checks = list(checks)
        self.filter: Callable[[CallContext, Action, Any], Any] | None = None

    def __call__(self, ctx: CallContext, action: Action, result: Any) -> Any:
        for check in self.checks:
            try:
                result = check.check(ctx, action, result)
            except (AralError, Escalation):  # a refusal, or a result held for approval
                raise
            except Exception as exc:  # fail closed: an unchecked result does not leave
                log.exception("response check failed on %s", action.capability)
                raise InternalError(
                    f"the result of {action.capability!r} could not be checked",
                    reason="POST_CHECK_FAILED",
                ) from exc
        return result

    def scrub(
        self, ctx: CallContext, error: AralError | None, direction: Direction, action_id: str,
        peer: str,
    ) -> None:  # fmt: skip
        """Let each check with a ``scrub(ctx, error, action)`` method (``policy.post.
        SensitiveData``) redact ``error`` in place: the pipeline calls it on every
        error it records and raises, whatever the door (which encodes that one);
        with no error, ``trailers(ctx, action)``: a servicer's trailing metadata, as a
        call that succeeded ends. ``action()`` makes the call's ``Action`` for a check
        that needs the caller's tier. A check that breaks leaves the error without its
        message and details, the call without trailers (fail closed: what could not be
        checked does not leave)."""
        if not self.checks:
            return

        def action() -> Action:
            return Action(
                direction, action_id, ctx.caller, ctx.door, "unspecified", None, peer,
                chain=ctx.chain, principal=ctx.principal, kind=ctx.kind, roles=ctx.roles,
            )  # fmt: skip

        for check in self.checks:
            name = "trailers" if error is None else "scrub"
            if (scrub := getattr(check, name, None)) is None:
                continue
            try:
                scrub(ctx, action) if error is None else scrub(ctx, error, action)
            except Exception:
                log.exception("the error or trailers of %.200r could not be checked", action_id)
                ctx.trailers = ()
                if error is not None:
                    error.message = "the error could not be checked for sensitive data"
                    error.args, error.details = (error.message,), {}
                    error.reason, error.trailing_metadata = type(error).default_reason, ()


@dataclass(slots=True)
class Stages:
    """The pipeline's stages, in order (see the module docstring)."""

    authenticate: Authenticate
    authorize: Authorize
    rate_limit: RateLimit
    govern: Govern
    post_check: PostCheck
    audit: Audit
    counters: Counter[str] = field(default_factory=Counter)

    @classmethod
    def default(
        cls,
        *,
        node_id: str = "",
        authenticator: Authenticator | None = None,
        roles: ScopeResolver | None = None,
        governance: Evaluator | None = None,
        allow_anonymous: bool = True,
        max_concurrent: int = 512,
        max_concurrent_per_caller: int | None = None,
        limiter: RateLimiter | None = None,
        checks: Sequence[ResponseCheck] = (),
        audit: Sequence[AuditSink] = (),
        audit_log: AuditLog | None = None,
    ) -> Stages:
        counters: Counter[str] = Counter()
        authenticate = Authenticate(
            authenticator or PeerAuthenticator(node_id),
            allow_anonymous=allow_anonymous,
            counters=counters,
            roles=roles,
        )
        if limiter is not None and limiter.active:
            authenticate.failures = limiter
        return cls(
            authenticate=authenticate,
            authorize=Authorize(),
            rate_limit=RateLimit(max_concurrent, counters, max_concurrent_per_caller, limiter),
            govern=Govern(governance or AllowAll(), counters),
            post_check=PostCheck(checks),
            audit=Audit(audit, counters, audit_log),
            counters=counters,
        )


__all__ = [
    "Audit",
    "AuditLog",
    "AuditRecord",
    "AuditSink",
    "Authenticate",
    "Authorize",
    "Govern",
    "PostCheck",
    "RateLimit",
    "RateLimiter",
    "ResponseCheck",
    "Stages",
    "VerdictListener",
    "address_of",
    "share_key",
]
