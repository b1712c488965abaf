"""The ``WWW-Authenticate`` challenge of a refusal (RFC 6750 §3, RFC 9728 §5.1).

Door-neutral text: the HTTP doors send it with their 401s and 403s.
"""

from __future__ import annotations

from aralnode.core.errors import AralError, PermissionDenied, Unauthenticated

# Refusals of a caller that showed no credential: RFC 6750 gives them no error code.
_NOTHING_SHOWN = frozenset({"ANONYMOUS_REFUSED", "NO_CREDENTIALS", "SESSION_NEEDS_CREDENTIALS"})


def quoted(text: str) -> str:
    """``text`` as an RFC 9110 quoted-string (quotes, backslashes and control
    characters dropped: a message must not end the header or open a new one)."""
    clean = "".join(c for c in text if c.isprintable() and c not in '"\\')
    return f'"{clean[:200]}"'


def www_authenticate(exc: AralError, *, metadata_url: str = "", scope: str = "") -> str | None:
    """The challenge for ``exc`` (``None`` unless it is a 401 or a missing scope):
    no ``error`` when the caller showed nothing, ``invalid_token`` for a bad
    credential, ``insufficient_scope`` with the scopes needed for a 403."""
    params: list[str] = []
    if metadata_url:
        params.append(f"resource_metadata={quoted(metadata_url)}")
    if isinstance(exc, PermissionDenied):
        missing = exc.details.get("missing_scopes")
        if exc.reason != "MISSING_SCOPE" or not isinstance(missing, list):
            return None
        params.append('error="insufficient_scope"')
        scope = " ".join(str(s) for s in missing)
    elif isinstance(exc, Unauthenticated):
        if exc.reason not in _NOTHING_SHOWN:
            params.append('error="invalid_token"')
            params.append(f"error_description={quoted(exc.message)}")
    else:
        return None
    if scope:
        params.append(f"scope={quoted(scope)}")
    return "Bearer " + ", ".join(params) if params else "Bearer"


__all__ = ["quoted", "www_authenticate"]
