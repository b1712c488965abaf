"""Bearer JWTs: verified with PyJWT against an issuer's keys, cached until expiry.

What a token must be to name a caller:

- signed with an algorithm pinned in config (asymmetric only: never ``none`` nor
  HS*), by the key its ``kid`` names, whose type fits that algorithm (an RSA key
  never verifies an HS256 token: the classic forgery where a public key is used as
  an HMAC secret);
- for this node: ``iss`` and ``aud`` as configured, with ``exp`` present and not
  past, ``nbf`` honoured (both with a small leeway).

The principal: the caller claim (``sub``), kind ``user`` (``service`` when the
kind claim says so or the token came from a ``client_credentials`` grant), roles
from the roles claim, scopes from ``scope`` (space-separated) or ``scp``. Roles are
left as roles: the authorize stage maps them to scopes.

A verified token is cached until its ``exp`` (plus the leeway), at most
``max_cache_seconds`` (RFC 7519 puts no bound on ``exp``: an ``exp`` of 1e308 is
a token, not a reason to keep it forever), and only while the key that verified it
is still the issuer's: each use looks the key up again (a ``stat`` of a JWKS file, a
dict look for a URL), so a key withdrawn from the set stops the tokens it verified.

Refusals are ``Unauthenticated`` with a stable reason: ``TOKEN_INVALID``,
``TOKEN_EXPIRED``, ``TOKEN_NOT_YET_VALID``, ``TOKEN_CLAIMS_INVALID``,
``TOKEN_ALG_NOT_ALLOWED``, ``UNKNOWN_KID``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt import PyJWK

from aralnode.access.jwks import KeySource, same_key
from aralnode.access.tokens import TokenCache
from aralnode.core.errors import Unauthenticated
from aralnode.service.auth import SERVICE, USER, Authenticated

# The key type each algorithm family needs (the JWK's kty).
_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
MAX_CACHE_SECONDS = 3600.0  # a cached token is verified again at least this often


def key_fits(key: PyJWK, alg: str) -> bool:
    """Whether ``key`` may verify a token signed with ``alg``: its type is the one
    the algorithm needs, and a key that names its own algorithm names this one."""
    if _KTY.get(alg[:2]) != key.key_type:
        return False
    declared = key._jwk_data.get("alg")
    return declared is None or declared == alg


def _words(value: Any) -> frozenset[str]:
    """A claim that lists names: a space-separated string or a list of strings."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str) and v)
    return frozenset()


@dataclass(slots=True)
class JwtRules:
    """What a token must be, and where its principal is (``NodeConfig.jwt_*``)."""

    issuer: str
    audience: str
    algorithms: Sequence[str] = ("ES256", "RS256", "EdDSA")
    leeway: float = 30.0
    caller_claim: str = "sub"
    roles_claim: str = "roles"
    kind_claim: str = ""
    extra_required: list[str] = field(default_factory=list)


def principal_of(claims: dict[str, Any], rules: JwtRules) -> Authenticated:
    """The principal verified ``claims`` name (see the module docstring)."""
    caller = claims.get(rules.caller_claim)
    if not isinstance(caller, str) or not caller:
        raise Unauthenticated(
            f"the token has no {rules.caller_claim!r} claim naming its caller",
            reason="TOKEN_CLAIMS_INVALID",
        )
    said = bool(rules.kind_claim) and claims.get(rules.kind_claim) == SERVICE
    granted = claims.get("gty") == "client-credentials" or (
        claims.get("grant_type") == "client_credentials"
    )
    kind = SERVICE if said or granted else USER
    scopes = _words(claims.get("scope")) | _words(claims.get("scp"))
    return Authenticated(
        caller=caller, kind=kind, roles=_words(claims.get(rules.roles_claim)), scopes=scopes
    )


@dataclass(frozen=True, slots=True)
class _VerifiedBy:
    """The tag of a cached token: the key that verified it, and how it was named."""

    kid: str | None  # None: the token named none (a JWKS of one key)
    key: PyJWK


class JwtVerifier:
    """Verifies bearer JWTs (see the module docstring), each once until it expires.

    Args:
        rules: What a token must be.
        keys: The issuer's keys.
        cache: Verified tokens (shared with introspection: one bound for both).
        now: Unix time (tests pass a fixed clock).
        max_cache_seconds: The longest a verified token is kept, whatever its ``exp``.
    """

    __slots__ = ("cache", "keys", "max_cache_seconds", "now", "rules", "verified")

    def __init__(
        self,
        rules: JwtRules,
        keys: KeySource,
        cache: TokenCache,
        now: Callable[[], float] = time.time,
        max_cache_seconds: float = MAX_CACHE_SECONDS,
    ) -> None:
        self.rules = rules
        self.keys = keys
        self.cache = cache
        self.now = now
        self.max_cache_seconds = max_cache_seconds
        self.verified = 0  # signature checks done (the cache spares the rest)

    def verify(self, token: str) -> Authenticated:
        """The principal ``token`` names.

        Raises:
            Unauthenticated: The token is not one this node accepts.
        """
        now = self.now()
        who = self.cached(token, now)
        if who is not None:
            return who
        key, alg, kid = self._key(token)
        claims = self._claims(token, (key, alg))
        who = principal_of(claims, self.rules)
        self.verified += 1
        self.cache.put(token, who, self._keep_until(claims["exp"], now), _VerifiedBy(kid, key))
        return who

    def cached(self, token: str, now: float | None = None) -> Authenticated | None:
        """The principal ``token`` was verified as, if it is cached, unexpired, and
        the key that verified it is still the issuer's."""
        return self.cache.get(token, self.now() if now is None else now, valid=self._key_held)

    def _key_held(self, tag: object) -> bool:
        if not isinstance(tag, _VerifiedBy):
            return False  # not verified here (an introspected token)
        held = self.keys.lookup(tag.kid) if tag.kid is not None else self.keys.only_key()
        return same_key(held, tag.key)

    def _keep_until(self, exp: float, now: float) -> float:
        # exp may be any JSON number (10**400 too): compared, never converted, until
        # it is known to be a small one.
        cap = now + self.max_cache_seconds
        return cap if exp >= cap - self.rules.leeway else float(exp) + self.rules.leeway

    def _key(self, token: str) -> tuple[PyJWK, str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("the bearer token is no JWT", reason="TOKEN_INVALID") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.rules.algorithms:
            raise Unauthenticated(
                f"token algorithm {alg!r} is not accepted here", reason="TOKEN_ALG_NOT_ALLOWED"
            )
        kid = header.get("kid")
        key: PyJWK | None = None  # a kid that is no string names no key
        if kid is None:
            key = self.keys.only_key()  # a JWKS of one key may leave kid out
        elif isinstance(kid, str):
            key = self.keys.lookup(kid)
        if key is None:
            raise Unauthenticated(
                "the token's signing key (kid) is not one of the issuer's keys",
                reason="UNKNOWN_KID",
                retry_after=1.0,  # a rotation may be under way: the keys are being fetched
            )
        if not key_fits(key, alg):
            raise Unauthenticated(
                f"the key named by the token's kid does not verify {alg}", reason="TOKEN_INVALID"
            )
        return key, alg, kid

    def _claims(self, token: str, key_alg: tuple[PyJWK, str]) -> dict[str, Any]:
        key, alg = key_alg
        rules = self.rules
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=rules.leeway,
                options={"require": ["exp", "iss", "aud", *rules.extra_required]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated(
                "the token is not valid yet", reason="TOKEN_NOT_YET_VALID"
            ) from exc
        except (
            jwt.InvalidAudienceError,
            jwt.InvalidIssuerError,
            jwt.MissingRequiredClaimError,
        ) as exc:
            raise Unauthenticated(
                f"the token is not for this node: {exc}", reason="TOKEN_CLAIMS_INVALID"
            ) from exc
        except jwt.PyJWTError as exc:  # bad signature, bad encoding, bad claims' types
            raise Unauthenticated(
                f"the token does not verify: {type(exc).__name__}", reason="TOKEN_INVALID"
            ) from exc
        now = self.now()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp <= now - rules.leeway:
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        return claims


def looks_like_jwt(token: str) -> bool:
    """A compact JWS: three base64url parts (opaque tokens go to introspection)."""
    return token.count(".") == 2


__all__ = ["JwtRules", "JwtVerifier", "key_fits", "looks_like_jwt", "principal_of"]
