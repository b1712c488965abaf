"""The caller-identity authenticator: bearer tokens and API keys, for every door.

It reads the credentials a caller shows the same way whichever door it came in
by -- gRPC metadata, HTTP headers on REST, MCP (streamable HTTP) and a WebSocket's
upgrade request all land in ``CallContext.metadata`` with lower-case names:

- ``authorization: Bearer T``: ``T`` is an API key (``aral_…``), a JWT (three dot
  separated parts), or an opaque token for introspection;
- ``x-api-key: K``: an API key.

A credential that is present but wrong refuses the call (``Unauthenticated``): it
never falls through to anonymous. A credential header given twice never reaches
this authenticator: the authenticate stage refuses it first, for every door
(``core.context.refuse_repeated_credentials``). No credential: this authenticator names nobody,
and the next in the chain (the node's peer rule) decides.
"""

from __future__ import annotations

from collections.abc import Mapping

from aralnode.access.apikeys import PREFIX, ApiKeyCheck
from aralnode.access.introspect import Introspector
from aralnode.access.jwks import JwksUrl
from aralnode.access.jwt import JwtVerifier, looks_like_jwt
from aralnode.core.context import CallContext, Credentials
from aralnode.core.errors import Unauthenticated
from aralnode.service.auth import ANONYMOUS, Authenticated

MAX_TOKEN_CHARS = 16 * 1024  # a JWT with many claims is a few KiB


def presented(metadata: Mapping[str, str]) -> tuple[str, str] | None:
    """``(how, credential)`` a caller shows: ``("bearer", T)`` or ``("apikey", K)``;
    ``None`` when it shows nothing.

    Raises:
        Unauthenticated: An ``authorization`` it cannot read, or two different
            credentials at once.
    """
    auth = metadata.get("authorization")
    key = metadata.get("x-api-key")
    if auth is None and key is None:
        return None
    if auth is not None:
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "authorization must be 'Bearer <token>'", reason="AUTH_SCHEME_UNSUPPORTED"
            )
        if key is not None and key.strip() != token:
            raise Unauthenticated(
                "two different credentials (authorization and x-api-key)",
                reason="CREDENTIALS_AMBIGUOUS",
            )
        how, credential = "bearer", token
    else:
        how, credential = "apikey", (key or "").strip()
    if not credential or len(credential) > MAX_TOKEN_CHARS:
        raise Unauthenticated("the credential is empty or too long", reason="TOKEN_INVALID")
    return how, credential


class BearerAuthenticator:
    """Names callers by their bearer token or API key (see the module docstring).

    Args:
        apikeys: Checks API keys (``None``: none are accepted).
        jwt: Verifies JWTs (``None``: JWTs are not accepted).
        introspector: Asks about opaque tokens (``None``: none are accepted).
    """

    __slots__ = ("apikeys", "introspector", "jwt")

    def __init__(
        self,
        *,
        apikeys: ApiKeyCheck | None = None,
        jwt: JwtVerifier | None = None,
        introspector: Introspector | None = None,
    ) -> None:
        self.apikeys = apikeys
        self.jwt = jwt
        self.introspector = introspector

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        """The caller ``ctx``'s credentials name (``ANONYMOUS``: none shown)."""
        if credentials.local or credentials.given:
            return ANONYMOUS  # the program's own calls: the node's rule decides
        shown = presented(ctx.metadata)
        if shown is None:
            return ANONYMOUS
        how, credential = shown
        if how == "apikey" or credential.startswith(PREFIX):
            if self.apikeys is None:
                raise Unauthenticated("this node takes no API keys", reason="API_KEY_INVALID")
            return self.apikeys.authenticate(credential)
        if looks_like_jwt(credential) and self.jwt is not None:
            return self.jwt.verify(credential)
        if self.introspector is not None and not looks_like_jwt(credential):
            who = self.introspector.cached(credential)
            if who is not None:
                return who
            self.introspector.ask_later(credential)
            raise Unauthenticated(
                "the token is being checked with its issuer: retry",
                reason="TOKEN_NOT_INTROSPECTED",
                retry_after=0.5,
            )
        raise Unauthenticated("this node does not accept this bearer token", reason="TOKEN_INVALID")

    @property
    def needs_preparing(self) -> bool:
        """Whether ``prepare`` can have work to do (an introspection endpoint, a JWKS
        URL): a door that must pay for calling it on every request asks first."""
        keys = self.jwt.keys if self.jwt is not None else None
        return self.introspector is not None or isinstance(keys, JwksUrl)

    async def prepare(self, metadata: Mapping[str, str]) -> None:
        """What a door that can wait does before it builds the call: fetch what the
        sync check will need (an introspection answer, a rotated JWKS), so that the
        call itself does not have to be refused for a retry."""
        try:
            shown = presented(metadata)
        except Unauthenticated:
            return  # the call itself is refused, in its door's language
        if shown is None or shown[0] != "bearer" or shown[1].startswith(PREFIX):
            return
        token = shown[1]
        if looks_like_jwt(token):
            await self._prepare_jwt(token)
        elif self.introspector is not None:
            await self.introspector.prepare(token)

    async def _prepare_jwt(self, token: str) -> None:
        verifier = self.jwt
        if verifier is None or not isinstance(verifier.keys, JwksUrl):
            return
        if verifier.cached(token) is not None:
            return
        import jwt as pyjwt  # noqa: PLC0415 - only on this path

        try:
            kid = pyjwt.get_unverified_header(token).get("kid")
        except pyjwt.PyJWTError:
            return
        if isinstance(kid, str) and verifier.keys.lookup(kid) is None:
            # The fetch the miss started (if allowed), for a bounded while: past it the
            # call is refused UNKNOWN_KID with a retry hint, the fetch going on.
            await verifier.keys.settled()

    async def start(self) -> None:
        """The JWKS URL's first fetch."""
        if self.jwt is not None and isinstance(self.jwt.keys, JwksUrl):
            await self.jwt.keys.start()

    async def close(self) -> None:
        """Stop fetches and questions under way."""
        if self.jwt is not None and isinstance(self.jwt.keys, JwksUrl):
            await self.jwt.keys.close()
        if self.introspector is not None:
            await self.introspector.close()


__all__ = ["MAX_TOKEN_CHARS", "BearerAuthenticator", "presented"]
