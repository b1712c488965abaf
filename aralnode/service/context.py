"""The one place a ``CallContext`` is made.

Every door hands in what it knows, in its own terms made plain: the transport peer,
the metadata or headers, how long the caller will wait, and the caller's
``Credentials`` (a verified envelope signer, a channel peer, a delegation, a TLS
certificate). The builder makes the context: trace id (the caller's, if it is safe
to carry), deadline (whichever is sooner: the transport's or the message's own), and
the credentials the pipeline's authenticate stage will read. No door fills in a
caller or scopes itself, so an authenticator added to the pipeline applies to all.
"""

from __future__ import annotations

from collections.abc import Mapping

from aralnode import _proto as pb
from aralnode.core.clock import Clock
from aralnode.core.context import NO_CREDENTIALS, CallContext, Credentials, Peer, clean_trace_id
from aralnode.service.tracing import TRACEPARENT, repeated_traceparent, trace_id_of

LOCAL = Credentials(local=True)
GIVEN = Credentials(given=True)
TRACE_HEADER = "x-trace-id"


def caller_trace(traceparent: str, trace_header: str) -> str:
    """The trace a request comes under, decided once for its answer, its refusal
    and its audit record alike: its W3C ``traceparent``'s trace id (the pipeline
    carries that trace on), else its ``X-Trace-Id`` when that is safe to echo, else
    a new one."""
    return (traceparent and trace_id_of(traceparent)) or clean_trace_id(trace_header)


class ContextBuilder:
    """Makes every door's ``CallContext`` (see the module docstring)."""

    __slots__ = ("certificates", "clock", "monotonic")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.monotonic = clock.monotonic  # bound once: every context carries it
        # The transport verifies client certificates (mTLS): doors hand them in.
        self.certificates = False

    def build(
        self,
        door: str,
        *,
        peer: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout: float | None = None,
        timeout_enforced: bool = False,
        trace_id: str | None = None,
        message_id: str = "",
        credentials: Credentials = NO_CREDENTIALS,
    ) -> CallContext:
        """The context of one call on ``door``.

        Args:
            peer: The caller's transport address.
            metadata: gRPC metadata or HTTP headers, names in lower case (kept as
                given: a ``LazyMetadata`` is read only if someone asks).
            timeout: Seconds the caller will wait (``None``: no deadline).
            timeout_enforced: The transport itself cancels the call then (gRPC does).
            trace_id: The call's trace id; ``None`` takes the caller's (``caller_trace``);
                "" leaves it to the door, which sets it before the pipeline runs
                (an ``Invoke`` carries its own, in its call or its message).
            credentials: What the door verified about the caller.
        """
        md: Mapping[str, str] = {} if metadata is None else metadata
        if trace_id is None:
            # (a traceparent given twice is none: W3C Trace Context)
            parent = "" if repeated_traceparent(md) else md.get(TRACEPARENT, "")
            trace_id = caller_trace(parent, md.get(TRACE_HEADER, ""))
        elif trace_id:
            trace_id = clean_trace_id(trace_id)
        return CallContext(
            door=door,
            peer=Peer(peer),  # callable too: a grpc.aio servicer calls context.peer()
            trace_id=trace_id,
            message_id=message_id,
            deadline=None if timeout is None else self.monotonic() + timeout,
            deadline_enforced=timeout is not None and timeout_enforced,
            metadata=md,
            credentials=credentials,
            clock=self.monotonic,
        )

    def signed(
        self,
        ctx: CallContext,
        header: pb.Header,
        *,
        signed: bool,
        signer_verified: bool,
        link_peer: str = "",
        queued: bool = False,
        link_address: str = "",
    ) -> CallContext:
        """``ctx`` for a request that came as an opened ARAL message: its signer (if
        its signature verified), its delegation (and statement), ids, and its own time to live when
        that ends sooner than the transport's deadline (which we then enforce).

        A ``queued`` message (one that may have waited in a channel's outbox) lives
        from its timestamp; one that came straight over a call, from now, so that
        clock skew between the nodes does not eat into it."""
        sender, message_id, on_behalf_of = header.sender, header.message_id, header.on_behalf_of
        # The transport's certificate stays: an unsigned call under mTLS is its node;
        # a delegation statement is handed on as it came: the authenticator checks it.
        cert = ctx.credentials.peer_certificate if ctx.credentials is not None else b""
        delegation = header.delegation if header.HasField("delegation") else None
        if signed or link_peer or on_behalf_of or cert or delegation is not None:
            ctx.credentials = Credentials(
                sender if signed else "",
                signed and signer_verified,
                link_peer,
                on_behalf_of,
                peer_certificate=cert,
                delegation=delegation,
                link_address=link_address,
            )
        else:  # nothing to show (most unsigned calls): the shared empty credentials
            ctx.credentials = NO_CREDENTIALS
        ctx.signed = signed
        ctx.message_id = message_id
        ctx.trace_id = clean_trace_id(header.trace_id or message_id)
        if header.traceparent:  # the sender's span: a call across nodes is one trace
            ctx.traceparent, ctx.tracestate = header.traceparent, header.tracestate
        ttl_ms = header.ttl_ms
        if ttl_ms > 0:
            left = ttl_ms / 1000
            if queued:
                left = (header.timestamp_unix_ms + ttl_ms - self.clock.now_ms()) / 1000
            deadline = self.clock.monotonic() + left
            if ctx.deadline is None or deadline < ctx.deadline:
                ctx.deadline, ctx.deadline_enforced = deadline, False
        return ctx

    def channel(
        self, peer_id: str, header: pb.Header, *, signed: bool, address: str = ""
    ) -> CallContext:
        """The context of a request a peer sent over an A2A channel (the session
        authenticated ``peer_id``, its link runs at ``address``; a signature on the
        message makes it its signer)."""
        # (no trace id drawn here: ``signed`` gives it the message's)
        ctx = CallContext(door="channel", peer=Peer(peer_id), clock=self.monotonic, trace_id="")
        return self.signed(
            ctx, header, signed=signed, signer_verified=True, link_peer=peer_id, queued=True,
            link_address=address,
        )  # fmt: skip

    def local(self, ctx: CallContext | None = None, *, trace_id: str | None = None) -> CallContext:
        """A context for the in-process API: the node itself (every scope), or one
        the program made, which keeps the caller, scopes and delegation it set (no
        caller: anonymous, as a door's caller with nothing to show would be).

        ``trace_id``: the trace to carry; ``None`` makes a fresh one, "" none (a
        message the program sends gets its own message id as trace)."""
        if ctx is None:
            if trace_id is None:
                return CallContext(door="local", credentials=LOCAL, clock=self.monotonic)
            return CallContext(
                door="local", trace_id=trace_id, credentials=LOCAL, clock=self.monotonic
            )
        if ctx.credentials is None:
            ctx.credentials = GIVEN
        if ctx.clock is None:
            ctx.clock = self.monotonic
        if type(ctx.peer) is not Peer:  # the program's own context, made with a str
            ctx.peer = Peer(ctx.peer)
        return ctx

    def deadline_in(self, ctx: CallContext, timeout: float) -> None:
        """Bring ``ctx``'s deadline to ``timeout`` seconds from now if that is sooner
        (a deadline a request names itself, as ``Call.timeout_ms``)."""
        deadline = self.clock.monotonic() + timeout
        if ctx.deadline is None or deadline < ctx.deadline:
            ctx.deadline, ctx.deadline_enforced = deadline, False


__all__ = ["GIVEN", "LOCAL", "ContextBuilder"]
