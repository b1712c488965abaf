"""A hostile or careless issuer (atk6 report, sections 4, 6 and 8): keys withdrawn from
the JWKS, ``exp`` values without bound, fetches that stall or never end, oversized
answers, and introspection answers for another issuer or not valid yet.

Every issuer here is a loopback server the test starts. Time is the injectable
clocks' (``JwksUrl.clock``, ``JwtVerifier.now``, ``Introspector.now``); the only real
waits are the deadlines under test, set small, and each test is bounded by an outer
``asyncio.timeout`` -- a fetch that never ended would fail it, not hang it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from aralnode import Node
from aralnode.access.bearer import BearerAuthenticator
from aralnode.access.introspect import Introspector
from aralnode.access.jwks import MAX_JWKS_BYTES, JwksFile, JwksUrl
from aralnode.access.jwt import JwtRules, JwtVerifier
from aralnode.access.tokens import TokenCache
from aralnode.core.errors import Unauthenticated
from tests.test_jwt import (
    AUDIENCE,
    ISSUER,
    Refused,
    Signer,
    access_of,
    bearer,
    call,
    guarded,
    jwt_node,
    write_jwks,
)

BOUND = 30.0  # every wait in a test; a fetch nothing bounds would fail it here


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def url_keys(url: str, **options: Any) -> JwksUrl:
    """A ``JwksUrl`` whose own bounds are the test's, unless ``options`` set them (a
    loaded machine must not fail a test whose subject is not a deadline)."""
    options = {"refetch_seconds": 0, "fetch_seconds": BOUND, "wait_seconds": BOUND} | options
    return JwksUrl(url, **options)


def no_read_timeout() -> httpx.AsyncClient:
    """A client with no per-read timeout: only the code's own deadline can end a fetch."""
    return httpx.AsyncClient(timeout=None, follow_redirects=False)


def verifier_of(keys: Any, now: Callable[[], float] = time.time) -> JwtVerifier:
    return JwtVerifier(JwtRules(issuer=ISSUER, audience=AUDIENCE), keys, TokenCache(64), now=now)


def unknown_kid(verifier: JwtVerifier, token: str) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as refused:
        verifier.verify(token)
    assert refused.value.reason == "UNKNOWN_KID"
    return refused.value


# -- a loopback issuer that answers as the test says ------------------------------------


class Issuer:
    """A raw HTTP/1.1 server on 127.0.0.1: ``mode`` says how it answers.

    - ``ok``: ``body`` with its length (and ``headers``);
    - ``stall``: headers (``head``) and one byte of body, then nothing, ever;
    - ``endless``: a body with no length, ``chunk`` after ``chunk`` up to ``total``.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.body = b'{"keys": []}'
        self.headers: dict[str, str] = {}
        self.head = b""
        self.total = 128 * 1024 * 1024
        self.requests = 0
        self.sent = 0
        self.stalled = asyncio.Event()  # a stalling answer is under way
        self.gone = asyncio.Event()  # an answer ended because the client went away
        self.finished = asyncio.Event()  # an endless answer was sent in full
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    def publish(self, *signers: Signer, **headers: str) -> None:
        self.mode = "ok"
        self.body = json.dumps({"keys": [s.jwk for s in signers]}).encode()
        self.headers = headers

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(writer)
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":")[1]))
            self.requests += 1
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gone.set()
        finally:
            writer.close()
            self._open.discard(writer)
            self._handlers.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "ok":
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(self.body)}\r\n{extra}connection: close\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        elif self.mode == "stall":
            writer.write(self.head + b"{")
            await writer.drain()
            self.stalled.set()
            if await reader.read(1) == b"":  # what the client sends next: only its leaving
                self.gone.set()
        else:  # endless
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            writer.write(b"connection: close\r\n\r\n")
            chunk = b" " * (64 * 1024)
            while self.sent < self.total:
                writer.write(chunk)
                await writer.drain()
                self.sent += len(chunk)
            self.finished.set()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free loopback port: the URL."""
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}/jwks.json"
        finally:
            server.close()
            for writer in list(self._open):  # a stalled answer ends: its client is gone
                writer.close()
            if self._handlers:
                await asyncio.wait(list(self._handlers))
            await server.wait_closed()


STALL_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n"
    b"connection: close\r\n\r\n"
)


# -- 4: a key removed from the key set stops working ----------------------------------------


async def test_a_cached_token_stops_when_its_key_leaves_the_jwks_file(tmp_path: Path) -> None:
    first, second = Signer("k1"), Signer("k2")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, first)
    verifier = verifier_of(JwksFile(jwks))
    old = first.token(sub="mallory", exp=int(time.time()) + 10**8)
    assert verifier.verify(old).caller == "mallory"
    # A rotation that only adds a key keeps what was verified: served from the cache.
    write_jwks(jwks, first, second)
    assert verifier.verify(old).caller == "mallory"
    assert verifier.verified == 1
    # The issuer withdraws k1: the token it verified is refused at its next use.
    write_jwks(jwks, second)
    unknown_kid(verifier, old)
    assert verifier.verify(second.token()).caller == "alice"
    # A key replaced under the same kid is another key: its old tokens do not pass.
    forged = Signer("k2")
    cached = second.token(sub="bob")
    assert verifier.verify(cached).caller == "bob"
    write_jwks(jwks, forged)
    with pytest.raises(Unauthenticated) as replaced:
        verifier.verify(cached)
    assert replaced.value.reason == "TOKEN_INVALID"


async def test_a_withdrawn_key_is_refused_on_the_doors(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """f9, the file half: a token the node verified before its key left the JWKS."""
    first, second = Signer("k1"), Signer("k2")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, first)
    node = jwt_node(make_node, "withdrawn", jwks)
    guarded(node)
    old = first.token(sub="mallory", exp=int(time.time()) + 10**8)
    async with asyncio.timeout(2 * BOUND), node:
        assert (await call("rest", node, "vault.whoami", bearer(old)))["caller"] == "mallory"
        write_jwks(jwks, second)
        for door in ("rest", "grpc"):
            with pytest.raises(Refused) as refused:
                await call(door, node, "vault.whoami", bearer(old))
            assert refused.value.reason == "UNKNOWN_KID", door
        assert (await call("grpc", node, "vault.whoami", bearer(second.token())))[
            "caller"
        ] == "alice"
        verifier = access_of(node).jwt
        assert verifier is not None
        assert verifier.verified == 2


async def test_a_jwks_url_is_refetched_when_stale_and_a_withdrawn_key_stops() -> None:
    """f9, the URL half: known kids never made the node fetch again."""
    first, second = Signer("u1"), Signer("u2")
    issuer = Issuer()
    issuer.publish(first)
    clock = Clock(1000.0)
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        keys = url_keys(url, refetch_seconds=1, refresh_seconds=300, clock=clock)
        verifier = verifier_of(keys)
        try:
            await keys.start()
            cached = first.token(sub="cached")
            assert verifier.verify(cached).caller == "cached"
            issuer.publish(second)  # the issuer withdraws u1
            clock.at += 299  # still fresh: known kids cost no fetch
            assert verifier.verify(first.token(sub="b")).caller == "b"
            assert issuer.requests == 1
            clock.at += 1  # stale: the next lookup starts a fetch, answering with what we hold
            assert verifier.verify(first.token(sub="c")).caller == "c"
            assert keys.fetching
            await keys.settled()
            assert (issuer.requests, keys.fetches) == (2, 2)
            unknown_kid(verifier, first.token(sub="d"))  # brand-new tokens of u1
            unknown_kid(verifier, cached)  # and the ones it verified before
            assert verifier.verify(second.token()).caller == "alice"
        finally:
            await keys.close()


async def test_a_jwks_urls_max_age_sets_its_refresh_bounded_both_ways() -> None:
    from aralnode.access.jwks import MAX_REFRESH_SECONDS, MIN_REFRESH_SECONDS, max_age

    assert max_age("public, max-age=120") == 120
    assert max_age('max-age="90", must-revalidate') == 90
    assert max_age("no-store") == 0
    assert max_age("max-age=-5") is None
    assert max_age("max-age=1e9, private") is None
    assert max_age(None) is None
    signer = Signer("m1")
    issuer = Issuer()
    clock = Clock(0.0)
    cases = (
        ("max-age=120", 120.0),
        ("max-age=0", MIN_REFRESH_SECONDS),  # an issuer cannot make us fetch per request
        ("no-cache", MIN_REFRESH_SECONDS),
        ("max-age=31536000", MAX_REFRESH_SECONDS),  # nor keep a withdrawn key for a year
    )
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        for cache_control, period in cases:
            issuer.publish(signer, **{"cache-control": cache_control})
            keys = url_keys(url, clock=clock)
            try:
                await keys.start()
                asked = issuer.requests
                clock.at += period - 1
                assert keys.lookup("m1") is not None
                assert issuer.requests == asked, cache_control
                clock.at += 1
                keys.lookup("m1")
                await keys.settled()
                assert issuer.requests == asked + 1, cache_control
            finally:
                await keys.close()


async def test_an_unbounded_exp_is_accepted_but_kept_no_longer_than_the_cap(
    tmp_path: Path,
) -> None:
    """RFC 7519 puts no bound on ``exp``: such a token passes, but the cache keeps it
    at most ``max_cache_seconds`` (and 10**400 is a number, not an internal error)."""
    signer = Signer("k1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, signer)
    now = Clock(time.time())
    verifier = verifier_of(JwksFile(jwks), now=now)
    tokens = [signer.token(exp=1e308, sub="float"), signer.token(exp=10**400, sub="int")]
    for token in tokens:
        verifier.verify(token)
    assert verifier.verified == 2
    now.at += verifier.max_cache_seconds - 1
    for token in tokens:
        verifier.verify(token)
    assert verifier.verified == 2  # served from the cache
    now.at += 1
    assert [verifier.verify(t).caller for t in tokens] == ["float", "int"]
    assert verifier.verified == 4  # verified again


# -- 8: a fetch has one deadline and a size cap -------------------------------------------


async def test_a_stalled_jwks_fetch_ends_at_its_deadline_and_the_next_one_runs() -> None:
    """f4: the issuer sends its headers and one byte, then nothing (the client has no
    per-read timeout here: only the fetch's own deadline can end it)."""
    signer = Signer("s1")
    issuer = Issuer()
    issuer.mode, issuer.head = "stall", STALL_HEAD
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        keys = url_keys(url, fetch_seconds=0.5, client=no_read_timeout)
        try:
            assert keys.request_fetch()
            task = keys._task
            assert task is not None
            await asyncio.wait([task])  # ended by its deadline (nothing else can), no keys
            assert keys.fetches == 0
            if issuer.stalled.is_set():  # (a loaded machine may not have got this far)
                await issuer.gone.wait()  # it hung up on the stalled answer
            issuer.publish(signer)  # a later fetch is not blocked by the stalled one
            keys.fetch_seconds = BOUND  # (whatever the machine's load)
            assert keys.request_fetch()
            await keys.settled()
            assert keys.lookup("s1") is not None
        finally:
            await keys.close()


async def test_a_door_waits_for_a_stalled_fetch_a_bounded_while() -> None:
    """A new kid while the issuer stalls: the door's wait ends, the call is refused
    UNKNOWN_KID with a retry hint, and the fetch goes on within its own deadline."""
    issuer = Issuer()
    issuer.mode, issuer.head = "stall", STALL_HEAD
    rotated = Signer("r2")
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        keys = url_keys(url, fetch_seconds=60, wait_seconds=0.05, client=no_read_timeout)
        verifier = verifier_of(keys)
        access = BearerAuthenticator(jwt=verifier)
        try:
            assert keys.request_fetch()
            await issuer.stalled.wait()
            token = rotated.token()
            await access.prepare(bearer(token))  # returns though the fetch stalls
            assert keys.fetching
            assert unknown_kid(verifier, token).retry_after is not None
        finally:
            await keys.close()


async def test_a_huge_content_length_is_refused_unread() -> None:
    """f8: an answer that says it is 300 MiB is refused before its body is read."""
    issuer = Issuer()
    issuer.mode = "stall"
    issuer.head = STALL_HEAD.replace(b"4096", str(300 * 1024 * 1024).encode())
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        keys = url_keys(url, client=no_read_timeout)
        try:
            keys.request_fetch()
            await issuer.gone.wait()  # the node hung up on the headers
            await keys.settled()
            assert keys.fetches == 0
        finally:
            await keys.close()


async def test_an_endless_jwks_body_is_cut_at_the_cap() -> None:
    """A body with no length that goes on: reading stops past ``MAX_JWKS_BYTES``."""
    issuer = Issuer()
    issuer.mode = "endless"
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        keys = url_keys(url, client=no_read_timeout)
        try:
            keys.request_fetch()
            await issuer.gone.wait()
            await keys.settled()
            assert keys.fetches == 0
            assert not issuer.finished.is_set()
            assert issuer.sent < issuer.total // 4  # some MiB in the sockets' buffers, at most
            assert issuer.sent > MAX_JWKS_BYTES  # it read up to the cap
        finally:
            await keys.close()


async def test_an_introspection_question_is_bounded_in_time_and_size() -> None:
    # A stalled answer ends at the deadline; an endless one at the size cap (its
    # deadline is past the test's bound: only the cap can end it).
    for mode, head, deadline in (("stall", STALL_HEAD, 0.5), ("endless", b"", 60.0)):
        issuer = Issuer()
        issuer.mode, issuer.head = mode, head
        async with asyncio.timeout(BOUND), issuer.serving() as url:
            asker = Introspector(
                url, cache=TokenCache(8), ask_seconds=deadline, client=no_read_timeout
            )
            try:
                await asker.prepare("opaque")
                assert asker.cached("opaque") is None  # no answer: nothing kept
                if mode == "endless" or issuer.stalled.is_set():
                    await issuer.gone.wait()  # it hung up
                assert not issuer.finished.is_set()
                assert asker.asked == 1
            finally:
                await asker.close()


# -- 6: introspection checks iss and nbf ------------------------------------------------


def verdict(asker: Introspector, token: str) -> str | None:
    """The caller an introspected token names, its refusal's reason, or ``None``."""
    try:
        who = asker.cached(token)
    except Unauthenticated as refused:
        return refused.reason
    return None if who is None else who.caller


async def test_an_introspection_answer_is_checked_for_iss_and_nbf() -> None:
    now = Clock(1_800_000_000.0)
    answers = {
        "mine": {"iss": ISSUER},
        "no-iss": {},  # iss is optional in an answer (RFC 7662 §2.2)
        "theirs": {"iss": "https://other-issuer.test"},
        "iss-list": {"iss": [ISSUER]},
        "not-yet": {"nbf": now.at + 600},
        "soon": {"nbf": now.at + 40},  # remembered as inactive until it may be valid
        "nbf-skew": {"nbf": now.at + 10},  # within the leeway
        "nbf-text": {"nbf": "soon"},
        "exp-text": {"exp": "later"},
        "exp-huge": {"exp": 10**400},
    }
    issuer = Issuer()
    async with asyncio.timeout(BOUND), issuer.serving() as url:
        for issuers, passing in (
            ([ISSUER], {"mine", "no-iss", "nbf-skew", "exp-huge"}),
            ([], {"mine", "no-iss", "theirs", "iss-list", "nbf-skew", "exp-huge"}),
        ):
            asker = Introspector(
                url, cache=TokenCache(16), now=now, issuers=issuers, ask_seconds=BOUND
            )
            for token, claims in answers.items():
                issuer.body = json.dumps({"active": True, "sub": token, **claims}).encode()
                await asker.prepare(token)
                expected = token if token in passing else "TOKEN_INACTIVE"
                assert verdict(asker, token) == expected, issuers
            await asker.close()
        # A token not valid yet is asked about again as soon as it may be (nbf within
        # the leeway), before the usual negative_seconds.
        now.at += 40 - asker.leeway
        assert now.at < 1_800_000_000.0 + asker.negative_seconds
        assert verdict(asker, "soon") is None  # no longer remembered as inactive
        issuer.body = json.dumps({"active": True, "sub": "soon", "nbf": now.at + 30}).encode()
        await asker.prepare("soon")
        assert verdict(asker, "soon") == "soon"
        await asker.close()


def test_the_node_gives_introspection_its_issuers_and_leeway(tmp_path: Path) -> None:
    from aralnode import NodeConfig
    from aralnode._assembly import access_identity

    cfg = NodeConfig(
        oauth_introspection_url="https://as.test/introspect",
        oauth_resource="https://node.test/",
        oauth_authorization_servers=["https://as.test/"],
        data_dir=tmp_path,
    )
    introspector = access_identity(cfg).introspector
    assert introspector is not None
    assert set(introspector.issuers) == {"https://as.test/"}
    assert introspector.leeway == cfg.jwt_leeway_seconds
