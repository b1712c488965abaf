"""Small ASGI pieces shared by the HTTP doors: the seed's error body, ids, gzip,
content negotiation, and the Host/Origin guard against DNS rebinding."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import math
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from datetime import UTC, datetime
from typing import Any

from aralnode._logs import get_logger
from aralnode.access.buckets import Admission
from aralnode.access.challenge import www_authenticate

# A call ends with its client (_disconnect.py); the doors take these from here.
from aralnode.bridge._disconnect import CONNECTION as CONNECTION
from aralnode.bridge._disconnect import ClientGone as ClientGone
from aralnode.bridge._disconnect import DisconnectWatch as DisconnectWatch
from aralnode.core import codec
from aralnode.core.addresses import join_host_port
from aralnode.core.context import CallContext, LazyMetadata, clean_trace_id, new_trace_id
from aralnode.core.errors import (
    AralError,
    InvalidRequest,
    MessageTooLarge,
    PermissionDenied,
    RateLimited,
)
from aralnode.service.context import ContextBuilder, caller_trace

log = get_logger("aralnode.bridge")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = "application/json"
PROTOBUF = "application/protobuf"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
PROTOBUF_TYPES = frozenset({"application/protobuf", "application/x-protobuf"})
GZIP_MIN_BYTES = 860  # below one packet's worth, compressing costs more than it saves
# The scope key under which the port's connection (``_server``) gives a request its
# body's claim on the budgets of bytes in flight (``_sockets.BodyClaim``).
BODY = "aral.body"


class MethodNotAllowed(InvalidRequest):
    """The path exists, but not for this HTTP method (the REST door only)."""

    http_status = 405
    code = "method_not_allowed"
    default_reason = "METHOD_NOT_ALLOWED"


class NotAcceptable(InvalidRequest):
    http_status = 406
    code = "not_acceptable"
    default_reason = "NOT_ACCEPTABLE"


class UnsupportedMediaType(InvalidRequest):
    http_status = 415
    code = "unsupported_media_type"
    default_reason = "UNSUPPORTED_MEDIA_TYPE"


class MisdirectedRequest(InvalidRequest):
    """Host header not served here: what DNS rebinding looks like (421)."""

    http_status = 421
    code = "misdirected_request"
    default_reason = "HOST_NOT_ALLOWED"


class HeadersTooLarge(MessageTooLarge):
    """A request head over the node's size or field-count limit (431)."""

    http_status = 431
    default_reason = "HEADERS_TOO_LARGE"


class ForbiddenOrigin(PermissionDenied):
    """The Origin header names a page this node does not serve (403, PERMISSION_DENIED)."""

    default_reason = "ORIGIN_NOT_ALLOWED"


def iso_ms(unix_ms: int) -> str:
    """``2026-01-15T12:00:00.000Z``."""
    stamp = datetime.fromtimestamp(unix_ms / 1000, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def client_peer(scope: Scope) -> str:
    """The caller's transport address (``host:port``, IPv6 in brackets); "" if unknown."""
    client = scope.get("client")
    return join_host_port(client[0], client[1]) if client else ""


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (``name`` lower-case), latin-1 decoded as ASGI mandates."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def trace_of(scope: Scope) -> str:
    """The trace a request comes under (``caller_trace``), for what a door answers
    before it makes a context."""
    parents = [v for k, v in scope["headers"] if k == b"traceparent"]
    parent = parents[0].decode("latin-1") if len(parents) == 1 else ""  # (twice: none, W3C)
    return caller_trace(parent, header(scope, b"x-trace-id") or "")


def request_id(value: str | None) -> str:
    """The caller's id if it is sane (it ends up in logs and headers), else a new one.

    The same rule as every door's trace ids (``clean_trace_id``): anything echoed
    into a response header passes it, so no caller can break a response with it.
    """
    return clean_trace_id(value) if value else new_trace_id()


def call_context(
    contexts: ContextBuilder, scope: Scope, door: str, *, trace_id: str | None = None
) -> CallContext:
    """What an HTTP door knows about a request, made a ``CallContext`` by the builder:
    the caller's address, the headers as metadata (latin-1, as ASGI mandates; every
    pair kept, so that the authenticate stage sees a credential given twice; read
    as a mapping, a repeated header keeps its last value), the trace id
    (``X-Trace-Id`` unless given)."""
    headers = scope.get("headers", ())
    metadata = LazyMetadata(
        lambda: [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
    )
    return contexts.build(door, peer=client_peer(scope), metadata=metadata, trace_id=trace_id)


def id_headers(trace_id: str, req_id: str) -> list[tuple[bytes, bytes]]:
    """``X-Trace-Id`` and ``X-Request-Id``, each cleaned again: a trace id may have been
    replaced since the request came in (a ``Call`` body carries its own)."""
    return [
        (b"x-trace-id", clean_trace_id(trace_id).encode()),
        (b"x-request-id", clean_trace_id(req_id).encode()),
    ]


def error_body(exc: AralError, trace_id: str, now_ms: int) -> dict[str, Any]:
    """The seed's error shape: ``{"error": {code, message, details, trace_id, timestamp}}``."""
    return {"error": {**codec.error_dict(exc), "trace_id": trace_id, "timestamp": iso_ms(now_ms)}}


def rate_limit_headers(ctx: CallContext) -> list[tuple[bytes, bytes]]:
    """``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (Unix seconds) of an
    admitted call, as the tightest token bucket left them; none without a limit."""
    admission = ctx.rate_limit
    if not isinstance(admission, Admission):
        return []
    return [
        (b"x-ratelimit-limit", str(admission.limit).encode()),
        (b"x-ratelimit-remaining", str(admission.remaining).encode()),
        (b"x-ratelimit-reset", str(-(-admission.reset_ms // 1000)).encode()),
    ]


def error_headers(exc: AralError, *, metadata_url: str = "") -> list[tuple[bytes, bytes]]:
    """The headers a refusal carries: ``Retry-After``, ``X-RateLimit-*``, ``Allow``,
    ``WWW-Authenticate`` (pointing at the RFC 9728 ``metadata_url``, if given)."""
    out = []
    if (seconds := codec.retry_delay(exc.retry_after)) is not None:
        out.append((b"retry-after", str(max(1, math.ceil(seconds))).encode()))
    if isinstance(exc, RateLimited) and exc.reason.startswith("RATE_LIMIT_"):
        # A token bucket's refusal (access.buckets): the seed's X-RateLimit-* headers.
        details = exc.details
        out.extend(
            (b"x-ratelimit-" + name.encode(), str(details[name]).encode())
            for name in ("limit", "remaining", "reset")
            if type(details.get(name)) is int
        )
    if isinstance(exc, MethodNotAllowed) and exc.details.get("allow"):
        out.append((b"allow", ", ".join(exc.details["allow"]).encode()))
    if (
        exc.http_status in (401, 403)
        and (challenge := www_authenticate(exc, metadata_url=metadata_url)) is not None
    ):
        out.append((b"www-authenticate", challenge.encode("latin-1", "replace")))
    return out


def dumps(value: Any) -> bytes:
    """``value`` as a JSON body (``codec.dumps``: never a non-JSON number)."""
    return codec.dumps(value).encode()


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    *,
    gzip_ok: bool = False,
) -> None:
    hdrs = [(b"content-type", content_type.encode()), *headers]
    if gzip_ok and len(body) >= GZIP_MIN_BYTES:
        body = gzip.compress(body, compresslevel=5)
        hdrs += [(b"content-encoding", b"gzip"), (b"vary", b"accept-encoding")]
    hdrs.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


def accepts_gzip(scope: Scope) -> bool:
    value = header(scope, b"accept-encoding")
    return value is not None and "gzip" in value.lower()


def media_ranges(value: str | None) -> list[tuple[str, float]]:
    """``Accept`` parsed into (media type, q), best first; absent means ``*/*``."""
    if not value:
        return [("*/*", 1.0)]
    ranges = []
    for part in value.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0 and math.isfinite(q):
            ranges.append((media.lower(), q))
    return sorted(ranges, key=lambda r: -r[1])


def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The first of ``offered`` that the best ``Accept`` range admits.

    Raises:
        NotAcceptable: nothing offered is acceptable.
    """
    for media, _q in media_ranges(accept):
        for kind in offered:
            if media in ("*/*", kind) or (media.endswith("/*") and kind.startswith(media[:-1])):
                return kind
            if kind == PROTOBUF and media in PROTOBUF_TYPES:
                return kind
    raise NotAcceptable(f"can answer with {', '.join(offered)}; the request accepts none of them")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, inflated if gzip, never more than ``limit`` bytes. On
    the node's port its bytes count, as the connection takes them, against the
    port's budgets of body bytes in flight (``_sockets.BodyClaim``, under ``BODY``
    in the scope): a body past them is refused here (429, or 503 for the port's),
    a ``Content-Length`` that cannot fit before any of it is read."""
    length = header(scope, b"content-length")
    expected = int(length) if length is not None and length.isdigit() else 0
    if expected > limit:
        raise MessageTooLarge(
            f"request body is {length} bytes; the limit is {limit}", details={"limit": limit}
        )
    claim = scope.get(BODY)
    if claim is not None and expected and not claim.check(expected):
        raise claim.refused()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if claim is not None and claim.refusal is not None:
            raise claim.refused()  # (its connection kept none of the rest)
        if message["type"] == "http.disconnect":
            # Not the end of the body: a cut-off body may still parse, and the call
            # must not run with part of its request.
            raise InvalidRequest(
                "client disconnected before the request body ended", reason="CLIENT_DISCONNECTED"
            )
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise MessageTooLarge(
                f"request body is over the limit of {limit} bytes", details={"limit": limit}
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    encoding = (header(scope, b"content-encoding") or "identity").lower().strip()
    if encoding == "identity" or not body:
        return body
    if encoding != "gzip":
        raise UnsupportedMediaType(f"content-encoding {encoding!r} is not supported; use gzip")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"gzip body does not inflate: {exc}", reason="BAD_ENCODING") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise MessageTooLarge(
            f"inflated body is over the limit of {limit} bytes", details={"limit": limit}
        )
    if not inflater.eof:
        raise InvalidRequest("gzip body is truncated", reason="BAD_ENCODING")
    if inflater.unused_data:
        # A second gzip member (or trailing bytes): one member is one body here.
        raise InvalidRequest("gzip body has data after its end", reason="BAD_ENCODING")
    return out


# -- draining ------------------------------------------------------------------------------


class InFlight:
    """Calls running on the HTTP port's long-lived connections (MCP tool calls, WebSocket
    invokes), so that a stopping node lets them finish within its drain before it
    closes those connections."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cut = False

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()

    def begin(self) -> None:
        """One more call (``end`` when it answered)."""
        self.count += 1
        self._idle.clear()

    def end(self) -> None:
        self.count -= 1
        if not self.count:
            self._idle.set()

    def cut(self) -> None:
        """Stop waiting for the calls (the node stops now)."""
        self._cut = True
        self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call runs; False if ``timeout`` passed first (or the wait
        was cut short)."""
        if self._cut:
            return not self.count
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await self._idle.wait()
        except TimeoutError:
            return False
        return not self.count


# -- Host / Origin guard ---------------------------------------------------------------

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_PORT = -1
# A reg-name (RFC 3986 3.2.2), lower case: no '@' (userinfo), '/', '?', '#' or ':'.
_REG_NAME = re.compile(r"[a-z0-9._~!$&'()*+,;=%-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")

Authority = tuple[str, int | None]  # host (lower case, IPv6 in brackets), port or None


def parse_authority(text: str) -> Authority | None:
    """``host[:port]`` as a Host header carries it (RFC 9110 7.2): lower-cased, the
    port a number; None if it is anything else (userinfo, a path, two ports, an
    unbracketed IPv6 address...). Parsed, never prefix-matched: ``127.0.0.1:80@evil``
    names no loopback host."""
    text = text.lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[: end + 1], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    else:
        host, sep, port = text.partition(":")
        if not _REG_NAME.fullmatch(host):
            return None
        rest = sep + port
    if not rest:
        return host, None
    if rest[0] != ":" or not _PORT.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
        return None
    return host, int(rest[1:])


def parse_origin(text: str) -> tuple[str, Authority] | None:
    """An Origin header (RFC 6454 7): ``scheme://host[:port]`` and nothing more;
    None for anything else ("null" included)."""
    scheme, sep, rest = text.lower().partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return None
    authority = parse_authority(rest)
    return None if authority is None else (scheme, authority)


def _pattern(text: str) -> Authority | None:
    """An allowed host: ``name``, ``name:port`` or ``name:*`` (any port, or none)."""
    if text.endswith(":*"):
        parsed = parse_authority(text[:-2])
        return None if parsed is None or parsed[1] is not None else (parsed[0], ANY_PORT)
    return parse_authority(text)


def _admits(patterns: frozenset[Authority], authority: Authority) -> bool:
    return authority in patterns or (authority[0], ANY_PORT) in patterns


class AllowedAuthorities:
    """The hosts (and origins) a node serves, parsed once; a value is admitted only
    if it parses and names one of them exactly."""

    def __init__(self, hosts: Iterable[str], origins: Iterable[str]) -> None:
        self.hosts = frozenset(p for p in map(_pattern, hosts) if p is not None)
        # The Host values these admit as written (``127.0.0.1:8080``), which parse to
        # a pattern exactly: most requests' Host is one of them, found without a parse.
        self._exact = frozenset(
            host if port is None else f"{host}:{port}"
            for host, port in self.hosts
            if port != ANY_PORT
        )
        by_scheme: dict[str, set[Authority]] = {}
        for origin in origins:
            scheme, sep, rest = origin.lower().rstrip("/").partition("://")
            pattern = _pattern(rest) if sep else None
            if pattern is None:
                log.warning("ignoring allowed origin %r: not scheme://host[:port]", origin)
                continue
            by_scheme.setdefault(scheme, set()).add(pattern)
        self.origins = {k: frozenset(v) for k, v in by_scheme.items()}

    def host(self, value: str) -> bool:
        if value in self._exact:
            return True
        authority = parse_authority(value)
        return authority is not None and _admits(self.hosts, authority)

    def origin(self, value: str) -> bool:
        parsed = parse_origin(value)
        if parsed is None:
            return False
        patterns = self.origins.get(parsed[0])
        return patterns is not None and _admits(patterns, parsed[1])


class HostGuard:
    """Refuses requests whose Host (421) or Origin (403) this node does not serve, or
    that carry more header fields than it takes (431), before any door sees them.

    A browser page from elsewhere can point its own DNS name at 127.0.0.1 (DNS
    rebinding) and then talk to a local node; the Host header still names the
    attacker's domain, and the Origin the attacker's page. Binding to 0.0.0.0
    changes nothing about that, so the check always runs. Requests without an
    Origin (curl, SDKs, other nodes) pass the Origin check.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str],
        allowed_origins: Iterable[str],
        now_ms: Callable[[], int],
        max_headers: int = 100,
        max_header_bytes: int = 64 * 1024,
        on_refused: Callable[[Scope, AralError, str], None] | None = None,
    ) -> None:
        self.app = app
        self.allowed = AllowedAuthorities(allowed_hosts, allowed_origins)
        self.now_ms = now_ms
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        # Told of each refusal (the scope, the error, its trace id): the audit.
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = origin = None
        repeated = ""
        headers = scope["headers"]
        size = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        for key, value in headers:  # one pass: this runs on every request
            size += len(key) + len(value)
            if key == b"host":
                repeated = "Host" if host is not None else repeated
                host = value.decode("latin-1")
            elif key == b"origin":
                repeated = "Origin" if origin is not None else repeated
                origin = value.decode("latin-1")
        failure = self.repeated(repeated) or self.check(host, origin)
        failure = failure or self.check_head(len(headers), size)
        if failure is None:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        # (The path bounded: a refused request must not write a 64 KiB log line.)
        log.warning("refused %s %.200r: %s", scope["type"], path, failure.message)
        trace = trace_of(scope)
        if self.on_refused is not None:
            self.on_refused(scope, failure, trace)
        if scope["type"] == "websocket":
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": failure.http_status,
                    "headers": [],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b""})
            return
        body = dumps(error_body(failure, trace, self.now_ms()))
        headers = id_headers(trace, request_id(header(scope, b"x-request-id")))
        if isinstance(failure, HeadersTooLarge):
            headers.append((b"connection", b"close"))  # as the protocol's own refusal
        await send_body(send, failure.http_status, body, JSON, headers)

    def check_head(self, count: int, size: int) -> AralError | None:
        """The head's bounds once more, as the application sees it: the protocol
        stops an endless head while it arrives (``_server.py``), but h11 takes a
        whole head over its limit that came in one read, and counts no fields."""
        if count > self.max_headers:
            return HeadersTooLarge(
                f"the request has more than {self.max_headers} header fields",
                reason="TOO_MANY_HEADERS",
                details={"limit": self.max_headers},
            )
        if size > self.max_header_bytes:
            return HeadersTooLarge(
                f"the request head is over the limit of {self.max_header_bytes} bytes",
                details={"limit": self.max_header_bytes},
            )
        return None

    @staticmethod
    def repeated(name: str) -> AralError | None:
        """A second Host (or Origin): which one counts differs between parsers, so
        the request is refused (RFC 9112 §3.2: 400) rather than one of them checked
        and another one used."""
        if not name:
            return None
        message = f"the request has more than one {name} header"
        return InvalidRequest(message, reason="REPEATED_HEADER")

    def check(self, host: str | None, origin: str | None) -> AralError | None:
        if not host or not self.allowed.host(host):
            return MisdirectedRequest(f"this node does not serve host {host!r}")
        if origin and not self.allowed.origin(origin):
            return ForbiddenOrigin(f"requests from origin {origin!r} are not allowed")
        return None


def default_allowed(
    bind_host: str, extra_hosts: Iterable[str], extra_origins: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Loopback names on any port, the bound address if specific, plus the configured extras."""
    names = list(LOOPBACK_HOSTS)
    if bind_host not in ("0.0.0.0", "::", "", "localhost", "127.0.0.1", "::1"):  # noqa: S104 - comparing
        names.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    hosts = [f"{n}:*" for n in names] + [h.lower() for h in extra_hosts]
    origins = [f"http://{n}:*" for n in names] + [f"https://{n}:*" for n in names]
    origins += [o.lower().rstrip("/") for o in extra_origins]
    return hosts, origins
