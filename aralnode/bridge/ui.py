"""The live mesh page at ``/ui``: static files shipped in the package, served with a
strict Content-Security-Policy, and the one thing a browser needs to follow the
WebSocket door with a credential.

The page itself holds no data: it calls the node's REST API (``/v1/status``,
``/v1/peers``, ``/v1/capabilities``, ``/v1/invoke``) and its WebSocket door (``/ws``)
with the credential the user typed in, so it sees exactly what that caller may see.

A browser cannot put an ``Authorization`` header on a WebSocket upgrade. It can
offer subprotocols, so the page offers ``aral.v1`` and ``aral.bearer.<token as
base64url>`` (the way Kubernetes carries a bearer token to its WebSocket API); the
door turns the second into the ``Authorization: Bearer`` header the authenticate
stage reads, before anything looks at the request, and answers with ``aral.v1``
(a browser drops a socket whose server picks none of the protocols it offered).
The token is never echoed back.
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
from collections.abc import Mapping

from aralnode.bridge._http import Scope, Send, header, send_body

# The subprotocol the page speaks, and the prefix of the one that carries its token.
SUBPROTOCOL = "aral.v1"
BEARER_PREFIX = "aral.bearer."

_FILES: Mapping[str, tuple[str, str]] = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}

# No inline script or style, nothing from elsewhere: the page's own files, and its
# own origin for fetch and the WebSocket ('self' covers ws: and wss: of the same
# host in CSP Level 3; connect-src names them anyway for older engines).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-cache"),
)


def is_ui_path(path: str) -> bool:
    """Whether ``path`` is one of the page's files."""
    return path in _FILES


class UiPage:
    """The page's files, read once from the package."""

    def __init__(self) -> None:
        root = importlib.resources.files("aralnode.bridge").joinpath("ui")
        self._bodies = {
            path: (root.joinpath(name).read_bytes(), content_type)
            for path, (name, content_type) in _FILES.items()
        }

    async def serve(self, scope: Scope, send: Send) -> None:
        """Answer a GET or HEAD of one of the page's files (``is_ui_path``)."""
        body, content_type = self._bodies[scope["path"]]
        if scope["method"] == "HEAD":  # the GET's head, its length included
            length = (b"content-length", str(len(body)).encode())
            headers = [(b"content-type", content_type.encode()), *HEADERS, length]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send_body(send, 200, body, content_type, HEADERS)


def _offered(scope: Scope) -> list[str]:
    """The subprotocols an upgrade offers, from every ``Sec-WebSocket-Protocol``
    header (RFC 6455 §11.3.4: several are one list)."""
    return [
        p.strip()
        for key, value in scope["headers"]
        if key == b"sec-websocket-protocol"
        for p in value.decode("latin-1").split(",")
        if p.strip()
    ]


def bearer_from_subprotocol(scope: Scope) -> None:
    """Give a WebSocket upgrade that carries its token as an ``aral.bearer.…``
    subprotocol the ``Authorization`` header it stands for (in ``scope``).

    An upgrade that already has ``Authorization`` keeps it, and the subprotocol
    is ignored; a token that is not base64url of printable ASCII is passed on as
    it is written, so the authenticate stage refuses it as any bad token. Each
    token offered becomes a header: two are two ``Authorization`` headers, which
    the authenticate stage refuses as any credential given twice (none is
    dropped unseen).
    """
    if scope.get("type") != "websocket" or header(scope, b"authorization") is not None:
        return
    given = [
        (b"authorization", b"Bearer " + _decode(proto[len(BEARER_PREFIX) :]))
        for proto in _offered(scope)
        if proto.startswith(BEARER_PREFIX)
    ]
    if given:
        scope["headers"] = [*scope["headers"], *given]


def _decode(text: str) -> bytes:
    raw = text.encode("latin-1", "replace")
    try:
        # validate: no character is skipped, so what is checked is what was sent.
        token = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return raw
    if not token or not all(0x21 <= b < 0x7F for b in token):
        return raw  # not a token a header can carry: refused as written
    return token


def chosen_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to answer the upgrade with: ``aral.v1`` if offered."""
    return SUBPROTOCOL if SUBPROTOCOL in _offered(scope) else None


__all__ = [
    "BEARER_PREFIX",
    "CSP",
    "SUBPROTOCOL",
    "UiPage",
    "bearer_from_subprotocol",
    "chosen_subprotocol",
    "is_ui_path",
]
