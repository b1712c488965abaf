"""The call context every call carries through the pipeline, and the credentials a
door hands in to make it.

A door never fills in who the caller is: it says what it knows (``Credentials``:
the transport peer, a verified envelope signer, a delegation, a TLS certificate, the
headers) and ``aralnode.service.ContextBuilder`` makes the context; the pipeline's
authenticate stage then decides the caller and its scopes from the credentials.

A ``CallContext`` is also what a user's protobuf servicer gets as its ``context``,
on every door. So it speaks grpc.aio's ``ServicerContext`` too, for servicers
written for grpc.aio: ``abort``, ``abort_with_status``, ``set_code``,
``set_details``, ``code``, ``details``, ``invocation_metadata``, ``peer``,
``time_remaining``, ``set_trailing_metadata``, ``trailing_metadata``. Core imports
no grpc: a ``grpc.StatusCode`` is read by its value, ``(number, name)``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from aralnode import _proto as pb
from aralnode.core.errors import (
    AralError,
    StatusCode,
    Unauthenticated,
    error_from_status,
    status_value,
)

ANONYMOUS = "anonymous"
# Our own generator, seeded once from the OS: a program's random.seed() must not make
# every node's trace ids the same sequence. (A process forked after import would
# repeat its parent's ids; the node never forks.)
_random_bits = random.Random().getrandbits  # noqa: S311 - an echo, not a secret
_TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The request headers (gRPC metadata) that carry a caller's credential, on any
# door: a bearer token or an API key (access/bearer.py), the detached JWS of an
# ARAL message (bridge/aral_api.py).
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "x-aral-signature"})


def new_trace_id() -> str:
    """128 random bits as 32 hex digits (a W3C trace id's form).

    From ``random``, not ``secrets``: a trace id is an echo, never a secret (as
    OpenTelemetry's own id generator), and ``os.urandom`` is a system call that
    lets go of the GIL -- on a node whose worker threads verify signatures, the
    event loop then waited for it back, ~26 µs per message measured on a channel
    receiver (profile of ``bench.channel``'s audited run)."""
    return f"{_random_bits(128):032x}"


def clean_trace_id(value: str) -> str:
    """A caller's trace id if it is safe to carry and echo (in headers, logs, other
    nodes' envelopes), else a fresh one."""
    if value.isalnum() and value.isascii() and len(value) <= 128:  # the usual: hex ids
        return value
    return value if value and _TRACE_ID.fullmatch(value) else new_trace_id()


class LazyMetadata(Mapping[str, str]):
    """Request metadata read only if something asks: ``pairs()`` gives (name, value)
    pairs as the transport gave them (gRPC's ``invocation_metadata``, an HTTP
    request's headers), a name given twice twice; as a mapping a repeated name
    keeps its last value, and binary values are left out. Most calls never look
    at their metadata, and reading it costs every call."""

    __slots__ = ("_all", "_dict", "_pairs")

    def __init__(self, pairs: Callable[[], Iterable[tuple[str, Any]] | None]) -> None:
        self._pairs: Callable[[], Iterable[tuple[str, Any]] | None] | None = pairs
        self._dict: dict[str, str] = {}
        self._all: tuple[tuple[str, Any], ...] = ()

    def _read(self) -> dict[str, str]:
        pairs = self._pairs
        if pairs is not None:
            self._all = tuple(pairs() or ())
            self._dict = {k: v for k, v in self._all if isinstance(v, str)}
            self._pairs = None  # read once it worked
        return self._dict

    def pairs(self) -> tuple[tuple[str, Any], ...]:
        """Every (name, value) pair as the transport gave them, binary ones too."""
        self._read()
        return self._all

    def repeated(self, names: frozenset[str]) -> str:
        """The first of ``names`` given more than once ("" none)."""
        if len(self._read()) == len(self._all):
            return ""  # no name twice (names are lower case: gRPC's rule, ASGI's)
        seen = set()
        for name, _ in self._all:
            if name in names:
                if name in seen:
                    return str(name)
                seen.add(name)
        return ""

    def __getitem__(self, key: str) -> str:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return f"LazyMetadata({self._read()!r})"


def refuse_repeated_credentials(metadata: Mapping[str, str]) -> None:
    """Refuse a request that carries a credential header more than once.

    Which copy counts differs between parsers and proxies (the last, the first,
    both joined), so a wrong credential beside a right one would be ignored
    somewhere: the request is refused rather than one copy checked (as a second
    Host header is). Only a ``LazyMetadata`` can hold a name twice: the doors
    hand theirs in as one.

    Raises:
        Unauthenticated: ``CREDENTIALS_AMBIGUOUS``, naming the header.
    """
    if isinstance(metadata, LazyMetadata) and (name := metadata.repeated(CREDENTIAL_HEADERS)):
        raise Unauthenticated(
            f"the request has more than one {name} header", reason="CREDENTIALS_AMBIGUOUS"
        )


class Peer(str):
    """The caller's transport address: a ``str``, and callable as grpc.aio's
    ``ServicerContext.peer()`` is, for a servicer written for grpc.aio."""

    __slots__ = ()

    def __call__(self) -> str:
        return str.__str__(self)


NO_PEER = Peer()
Trailers = tuple[tuple[str, str | bytes], ...]


@dataclass(slots=True)
class Credentials:
    """What a door knows about its caller, before anyone decided who it is.

    Attributes:
        signer: Node id whose signature verified over the exact request bytes ("" if
            the request was not signed).
        signer_verified: The signer's key was verified in a handshake (pinned), so it
            is a peer's key and not any self-made one a message embedded.
        link_peer: Node id an A2A channel session authenticated (its requests come
            from that peer, signed or not).
        on_behalf_of: The principal a signed request says it acts for (PRO-020):
            "anonymous" or a principal id.
        peer_certificate: DER of the TLS client certificate the transport verified.
        local: The in-process API: the node itself, with every scope.
        given: A context the node's own program made: its caller, scopes and
            delegation stand as the program set them (none set: anonymous).
        delegation: The signed statement of delegation the request carried
            (``Header.delegation``), not yet checked: the authenticator checks it.
        link_address: The transport address of the A2A channel ``link_peer``'s
            request came by (its requests count against it when nobody vouches
            for the peer).
    """

    signer: str = ""
    signer_verified: bool = False
    link_peer: str = ""
    on_behalf_of: str = ""
    peer_certificate: bytes = b""
    local: bool = False
    given: bool = False
    delegation: pb.Delegation | None = None
    link_address: str = ""


NO_CREDENTIALS = Credentials()


@dataclass(slots=True)
class CallContext:
    """Who is calling what, through which door, with which deadline.

    Attributes:
        door: "grpc", "channel", "rest", "mcp", "ws" or "local".
        caller: Node id of a verified signer, or an authenticated principal; "" if
            anonymous. Set by the pipeline's authenticate stage.
        peer: Transport address of the caller, as the transport reports it.
        trace_id: Trace id carried across hops (made if the caller sent none).
        message_id: Id of the request message, if it came as one.
        deadline: Monotonic time (``Clock.monotonic``) after which the call is abandoned.
        deadline_enforced: The transport already cancels the call at ``deadline`` (as
            gRPC does), so the pipeline need not arm a timer of its own.
        signed: Whether the request was a verified signed envelope.
        scopes: Scopes granted to the caller (by the authenticate stage).
        on_behalf_of: Set when ``caller`` (a verified node) acts for someone else:
            "anonymous" or a principal id (PRO-020). Such a call gets no more than
            that principal's rights, and counts as anonymous if the principal is.
        kind: What the caller is: "node", "user", "service" or "anonymous" ("" until
            the authenticate stage ran).
        roles: The caller's roles (the authorize stage's role map turns them into
            scopes).
        chain: The delegation chain the call came through, originator first: the
            principals and nodes that handed it on (empty for a direct call).
        metadata: Door-specific request metadata (gRPC metadata, HTTP headers),
            names in lower case.
        credentials: What the door knew about the caller (see ``Credentials``);
            ``None`` only for a context the node's own program made by hand, which
            is trusted as it stands (the in-process door).
        authenticated: The authenticate stage has run on this context.
        clock: The monotonic clock ``deadline`` is read on (``time_remaining``).
        status_code: The status a servicer set (``set_code``, ``abort``), as given.
        status_details: The details a servicer set (``set_details``, ``abort``).
        trailers: The trailing metadata a servicer set.
        rules: The governance rules that matched the call (for its audit record).
        params_digest: SHA-256 (hex) of the call's parameters as received, for its
            audit record (made only when an audit log is installed).
        started: When the call entered the pipeline (``Clock.monotonic``; 0 when
            not timed), for its audit record's duration.
        rate_limit: What the rate limiter said of this admitted call (an
            ``access.buckets.Admission``: the tightest bucket's size, tokens left,
            reset time), for the HTTP door's ``X-RateLimit-*`` headers; None when no
            rate limit applied.
        traceparent: A W3C ``traceparent`` the caller sent where no header carries it
            (an ARAL message's header, MCP ``params._meta``); a door's metadata
            ``traceparent`` is read when this is empty. Malformed: ignored.
        tracestate: Its W3C ``tracestate``.
    """

    door: str
    caller: str = ""
    peer: str = NO_PEER
    trace_id: str = field(default_factory=new_trace_id)
    message_id: str = ""
    deadline: float | None = None
    deadline_enforced: bool = False
    signed: bool = False
    scopes: frozenset[str] = frozenset()
    on_behalf_of: str = ""
    kind: str = ""
    roles: frozenset[str] = frozenset()
    chain: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    capability: str = ""
    decision: str = ""
    flags: list[str] = field(default_factory=list)
    credentials: Credentials | None = None
    authenticated: bool = False
    vouched: bool = False
    clock: Callable[[], float] | None = None
    status_code: object = None
    status_details: str = ""
    trailers: Trailers = ()
    rate_limit: object = None
    traceparent: str = ""
    tracestate: str = ""
    rules: tuple[str, ...] = ()
    params_digest: str = ""
    started: float = 0.0

    @property
    def anonymous(self) -> bool:
        """No authenticated principal stands behind this call: no caller, a key
        nobody verified (named, but of kind "anonymous"), or a delegation for the
        anonymous principal."""
        return not self.caller or ANONYMOUS in (self.kind, self.on_behalf_of)

    @property
    def principal(self) -> str:
        """Who the call is for: the delegating principal, else the caller."""
        return self.on_behalf_of or self.caller or ANONYMOUS

    # -- grpc.aio's ServicerContext, for servicers written for it ---------------------

    def abort(
        self,
        code: object,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
        *,
        reason: str = "",
    ) -> NoReturn:
        """End the call with a canonical status, as ``ServicerContext.abort`` does:
        ``code`` a ``grpc.StatusCode``, our ``StatusCode`` or its number. Details
        and trailing metadata set before stand unless given here. Raises (awaiting
        it, as a grpc.aio servicer does, is the same: it raises first); a servicer
        that catches it still ends with this status.

        Raises:
            AralError: the error for ``code`` (``NotFound`` for NOT_FOUND, ...).
        """
        number = status_value(code)
        if number == StatusCode.OK:  # grpc: "abort() with OK" is UNKNOWN
            number, code = StatusCode.UNKNOWN, StatusCode.UNKNOWN
        self.status_code = code
        if details or not self.status_details:
            self.status_details = details
        if trailing_metadata:
            self.trailers = tuple(trailing_metadata)
        error = self.status_error(reason=reason)
        assert error is not None
        raise error

    def abort_with_status(self, status: Any) -> NoReturn:
        """``abort`` with a ``grpc.Status`` (``code``, ``details``,
        ``trailing_metadata``: a rich status from ``grpc_status.rpc_status``)."""
        self.abort(status.code, status.details or "", status.trailing_metadata or ())

    def set_code(self, code: object) -> None:
        """The status to end with when the servicer returns (grpc's ``set_code``)."""
        status_value(code)  # refuse what is no status now, not when the call ends
        self.status_code = code

    def set_details(self, details: str) -> None:
        self.status_details = details

    def code(self) -> object:
        """The status set so far, as it was given (``None``: none)."""
        return self.status_code

    def details(self) -> str:
        return self.status_details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailers = tuple(trailing_metadata)

    def trailing_metadata(self) -> Trailers:
        return self.trailers

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        """The request's metadata as (name, value) pairs: gRPC's own pairs on the
        gRPC door (binary values too), the HTTP headers on the HTTP doors."""
        metadata = self.metadata
        if isinstance(metadata, LazyMetadata):
            return metadata.pairs()
        return tuple(metadata.items())

    def time_remaining(self) -> float | None:
        """Seconds until the call's deadline (``None``: it has none)."""
        if self.deadline is None or self.clock is None:
            return None
        return max(0.0, self.deadline - self.clock())

    def status_error(self, *, reason: str = "") -> AralError | None:
        """The error a servicer's own status makes (``None``: it set none, or OK)."""
        code = self.status_code
        if code is None:
            return None
        number = status_value(code)
        if number == StatusCode.OK:
            return None
        error = error_from_status(number, self.status_details, reason=reason)
        error.servicer_status = True
        error.trailing_metadata = self.trailers
        return error
