"""The call context every call carries through the pipeline, and the credentials a
door hands in to make it.

A door never fills in who the caller is: it says what it knows (``Credentials``:
the transport peer, a verified envelope signer, a delegation, a TLS certificate, the
headers) and ``aralnode.service.ContextBuilder`` makes the context; the pipeline's
authenticate stage then decides the caller and its scopes from the credentials.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aralnode.core.errors import StatusCode, error_from_status

ANONYMOUS = "anonymous"
_TRACE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_trace_id() -> str:
    """128 random bits as 32 hex digits (a uuid4's randomness, without its object)."""
    return secrets.token_hex(16)


def clean_trace_id(value: str) -> str:
    """A caller's trace id if it is safe to carry and echo (in headers, logs, other
    nodes' envelopes), else a fresh one."""
    if value.isalnum() and value.isascii() and len(value) <= 128:  # the usual: hex ids
        return value
    return value if value and _TRACE_ID.fullmatch(value) else new_trace_id()


class LazyMetadata(Mapping[str, str]):
    """Request metadata read only if something asks: ``pairs()`` gives (name, value)
    pairs (gRPC's ``invocation_metadata``); binary values are left out. Most calls
    never look at their metadata, and reading it costs every call."""

    __slots__ = ("_dict", "_pairs")

    def __init__(self, pairs: Callable[[], Iterable[tuple[str, Any]] | None]) -> None:
        self._pairs: Callable[[], Iterable[tuple[str, Any]] | None] | None = pairs
        self._dict: dict[str, str] = {}

    def _read(self) -> dict[str, str]:
        pairs = self._pairs
        if pairs is not None:
            self._dict = {k: v for k, v in (pairs() or ()) if isinstance(v, str)}
            self._pairs = None  # read once it worked
        return self._dict

    def __getitem__(self, key: str) -> str:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())

    def __repr__(self) -> str:
        return f"LazyMetadata({self._read()!r})"


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
    """

    signer: str = ""
    signer_verified: bool = False
    link_peer: str = ""
    on_behalf_of: str = ""
    peer_certificate: bytes = b""
    local: bool = False
    given: bool = False


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
        metadata: Door-specific request metadata (gRPC metadata, HTTP headers),
            names in lower case.
        credentials: What the door knew about the caller (see ``Credentials``);
            ``None`` only for a context the node's own program made by hand, which
            is trusted as it stands (the in-process door).
        authenticated: The authenticate stage has run on this context.
    """

    door: str
    caller: str = ""
    peer: str = ""
    trace_id: str = field(default_factory=new_trace_id)
    message_id: str = ""
    deadline: float | None = None
    deadline_enforced: bool = False
    signed: bool = False
    scopes: frozenset[str] = frozenset()
    on_behalf_of: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    capability: str = ""
    decision: str = ""
    flags: list[str] = field(default_factory=list)
    credentials: Credentials | None = None
    authenticated: bool = False

    @property
    def anonymous(self) -> bool:
        """No authenticated principal stands behind this call."""
        return not self.caller or self.on_behalf_of == ANONYMOUS

    @property
    def principal(self) -> str:
        """Who the call is for: the delegating principal, else the caller."""
        return self.on_behalf_of or self.caller or ANONYMOUS

    def abort(self, status: StatusCode | int, message: str, *, reason: str = "") -> None:
        """Fail the call with a canonical status, like ``ServicerContext.abort``."""
        raise error_from_status(int(status), message, reason=reason)
