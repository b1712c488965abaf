"""Opaque bearer tokens, asked of the issuer (OAuth 2.0 token introspection, RFC 7662).

The authenticator runs inside every call and cannot wait on the network, so the
asking happens before: a door that can wait (the HTTP port, for each request)
calls ``prepare`` with the token, and the answer is cached -- an active token until
its ``exp``, at most ``max_cache_seconds`` (whatever its ``exp``), an inactive one for
``negative_seconds`` -- where the authenticator then finds it. A door that cannot
wait gets ``TOKEN_NOT_INTROSPECTED`` with a retry hint, and the question is asked
in the background, so its retry passes.

An active answer counts only if it is for this node (RFC 7662 §2.2, RFC 8707): its
``aud`` names our resource (when one is configured), its ``iss`` is one of the
issuers we know (when we know some and the answer names one), its ``nbf`` is not
ahead and its ``exp`` not past. Any other answer is a "not active".

Outsiders choose the tokens: answers are cached in bounded LRUs, and at most
``max_in_flight`` questions are asked at once (more are refused, not queued). A
question is bounded too: one deadline for all of it (``ask_seconds``) and at most
``MAX_ANSWER_BYTES`` of answer read.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from aralnode._logs import get_logger
from aralnode.access.jwks import FETCH_ERRORS, read_capped
from aralnode.access.tokens import TokenCache
from aralnode.core.errors import Unauthenticated
from aralnode.service.auth import SERVICE, USER, Authenticated

log = get_logger("aralnode.access")

_INACTIVE = Authenticated()  # the marker of a token the issuer said is not active
MAX_ANSWER_BYTES = 64 * 1024  # an introspection answer is a few hundred bytes
ASK_SECONDS = 5.0  # the whole of one question (a door waits for it): connect, send, answer


def _number(value: Any) -> bool:
    """Whether a claim's value is a number (not ``true``, nor ``NaN`` or ``Infinity``,
    which Python's JSON parser reads)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


def principal_of(answer: dict[str, Any]) -> Authenticated:
    """The principal of an active introspection answer: ``sub`` (else ``username``)
    as a user; a token with only a ``client_id`` (a client credentials grant) as
    that service."""
    caller = answer.get("sub") or answer.get("username")
    kind = USER
    if not caller:
        caller, kind = answer.get("client_id"), SERVICE
    if not isinstance(caller, str) or not caller:
        raise Unauthenticated("the issuer names nobody for this token", reason="TOKEN_INVALID")
    scope = answer.get("scope")
    scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
    roles = answer.get("roles")
    roles_set = (
        frozenset(r for r in roles if isinstance(r, str))
        if isinstance(roles, list)
        else frozenset()
    )
    return Authenticated(caller=caller, kind=kind, scopes=scopes, roles=roles_set)


class Introspector:
    """RFC 7662 client with a bounded cache (see the module docstring).

    Args:
        url: The introspection endpoint.
        client_id / client_secret: This node's credentials there (HTTP Basic).
        cache: Active tokens (shared with JWTs: one bound).
        negative_size: Inactive tokens remembered.
        audience: This node's resource ("": an answer's ``aud`` is not checked).
        issuers: The issuers an answer's ``iss`` may name (none: not checked).
        leeway: Clock skew allowed on ``nbf``.
        ask_seconds: Deadline of one whole question.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str = "",
        client_secret: str = "",
        cache: TokenCache,
        negative_size: int = 1024,
        negative_seconds: float = 30.0,
        max_cache_seconds: float = 300.0,
        max_in_flight: int = 16,
        client: Callable[[], httpx.AsyncClient] | None = None,
        now: Callable[[], float] = time.time,
        audience: str = "",
        issuers: Sequence[str] = (),
        leeway: float = 30.0,
        ask_seconds: float = ASK_SECONDS,
    ) -> None:
        self.url = url
        self.audience = audience  # "": the answer's aud is not checked
        self.issuers = frozenset(issuers)  # empty: the answer's iss is not checked
        self.leeway = leeway
        self.ask_seconds = ask_seconds
        self._auth = httpx.BasicAuth(client_id, client_secret) if client_id else None
        self.cache = cache
        self.negative = TokenCache(negative_size)
        self.negative_seconds = negative_seconds
        self.max_cache_seconds = max_cache_seconds
        self.max_in_flight = max_in_flight
        self._client = client or (lambda: httpx.AsyncClient(timeout=5.0, follow_redirects=False))
        self.now = now
        self._asking: dict[str, asyncio.Task[None]] = {}
        self.asked = 0

    def cached(self, token: str) -> Authenticated | None:
        """The principal ``token`` was found to be; ``None`` if not asked yet.

        Raises:
            Unauthenticated: The issuer said the token is not active.
        """
        now = self.now()
        who = self.cache.get(token, now)
        if who is not None:
            return who
        if self.negative.get(token, now) is not None:
            raise Unauthenticated("the token is not active", reason="TOKEN_INACTIVE")
        return None

    async def prepare(self, token: str) -> None:
        """Ask about ``token`` unless the answer is cached (one question per token
        at a time; none past ``max_in_flight``: the call is then refused)."""
        try:
            if self.cached(token) is not None:
                return
        except Unauthenticated:
            return
        task = self.ask_later(token)
        if task is not None:
            await asyncio.shield(task)

    def ask_later(self, token: str) -> asyncio.Task[None] | None:
        """Start asking about ``token`` in the background (the task, or ``None``
        when too many questions are under way)."""
        task = self._asking.get(token)
        if task is not None:
            return task
        if len(self._asking) >= self.max_in_flight:
            return None
        task = asyncio.get_running_loop().create_task(self._ask(token))
        self._asking[token] = task
        task.add_done_callback(lambda _t: self._asking.pop(token, None))
        return task

    async def _ask(self, token: str) -> None:
        self.asked += 1
        try:
            async with asyncio.timeout(self.ask_seconds):
                body = await self._post(token)
            answer = json.loads(body)
        except FETCH_ERRORS as exc:  # nothing cached: the call is refused
            log.warning("token introspection at %s failed: %s", self.url, type(exc).__name__)
            return
        now = self.now()
        who, until = self.judge(answer, now)
        if who is None:
            self.negative.put(token, _INACTIVE, until)
        else:
            self.cache.put(token, who, until)

    async def _post(self, token: str) -> bytes:
        async with (
            self._client() as client,
            client.stream(
                "POST",
                self.url,
                data={"token": token, "token_type_hint": "access_token"},
                auth=self._auth or httpx.USE_CLIENT_DEFAULT,
                headers={"accept": "application/json", "accept-encoding": "identity"},
            ) as response,
        ):
            response.raise_for_status()
            return await read_capped(response, MAX_ANSWER_BYTES)

    def judge(self, answer: Any, now: float) -> tuple[Authenticated | None, float]:
        """What an introspection ``answer`` means at ``now``: the principal of an
        active token for this node and until when to keep it, or ``None`` and until
        when to remember that it is not (see the module docstring)."""
        refused = None, now + self.negative_seconds
        if not isinstance(answer, dict) or answer.get("active") is not True:
            return refused
        until = now + self.max_cache_seconds
        exp, nbf = answer.get("exp"), answer.get("nbf")
        if exp is not None:
            if not _number(exp) or exp <= now:
                return refused
            until = float(min(until, exp))  # exp may be 10**400: never converted alone
        if nbf is not None:
            if not _number(nbf):
                return refused
            if nbf > now + self.leeway:  # not valid yet: asked again once it may be
                ready = float(min(now + self.negative_seconds + self.leeway, nbf))
                return None, ready - self.leeway
        aud = answer.get("aud")
        if self.audience and self.audience not in (aud if isinstance(aud, list) else [aud]):
            # A token the issuer minted for another resource server (RFC 8707):
            # no passthrough of someone else's token.
            return refused
        iss = answer.get("iss")
        known = isinstance(iss, str) and iss in self.issuers
        if self.issuers and iss is not None and not known:
            return refused  # another issuer's token (iss is optional in an answer)
        try:
            return principal_of(answer), until
        except Unauthenticated:
            return refused

    async def close(self) -> None:
        """Cancel the questions under way."""
        for task in list(self._asking.values()):
            task.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)


__all__ = ["Introspector", "principal_of"]
