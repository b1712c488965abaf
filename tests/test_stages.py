"""The pipeline's stages, one at a time, and the order the pipeline runs them in."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from google.protobuf import struct_pb2

from aralnode.core import codec
from aralnode.core.capabilities import CapabilityRegistry, function_capability
from aralnode.core.clock import FixedClock
from aralnode.core.context import CallContext, Credentials
from aralnode.core.errors import (
    AralError,
    GovernanceBlocked,
    InternalError,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from aralnode.core.governance import (
    Action,
    AllowAll,
    Decision,
    Direction,
    Rule,
    RuleEvaluator,
    Verdict,
)
from aralnode.service import auth as auth_module
from aralnode.service.auth import ALL_SCOPES, Authenticated, ImplicitRoles, PeerAuthenticator
from aralnode.service.context import ContextBuilder
from aralnode.service.pipeline import Pipeline
from aralnode.service.stages import (
    Audit,
    AuditRecord,
    Authenticate,
    Authorize,
    Govern,
    PostCheck,
    RateLimit,
    Stages,
    share_key,
)

NODE = "n" * 32
PEER = "p" * 32
BUILDER = ContextBuilder(FixedClock())


def ctx_with(**credentials: Any) -> CallContext:
    return BUILDER.build("grpc", credentials=Credentials(**credentials))


# -- authenticate --------------------------------------------------------------------


def authenticate(allow_anonymous: bool = True, **kw: Any) -> Authenticate:
    authenticator = PeerAuthenticator(
        NODE, peer_scopes=frozenset({"peer"}), peer_grants={PEER: frozenset({"granted"})}, **kw
    )
    # The implicit roles hold nothing here (deny by default): what is left is the
    # authenticator's own rule (tests/test_authz.py tests the roles).
    none = ImplicitRoles(frozenset(), frozenset())
    return Authenticate(
        authenticator, allow_anonymous=allow_anonymous, counters=Counter(), roles=none
    )


@pytest.mark.parametrize(
    ("credentials", "caller", "scopes", "on_behalf_of"),
    [
        ({}, "", set(), ""),
        ({"local": True}, NODE, {ALL_SCOPES}, ""),
        # A context the program made stands as it was made: no caller is nobody.
        ({"given": True}, "", set(), ""),
        ({"signer": PEER, "signer_verified": True}, PEER, {"peer", "granted"}, ""),
        ({"signer": "x" * 32, "signer_verified": True}, "x" * 32, {"peer"}, ""),
        # A key nobody verified proves who signed, not that it is a peer.
        ({"signer": PEER, "signer_verified": False}, PEER, set(), ""),
        # A delegation gets its principal's rights, never the signer's.
        ({"signer": PEER, "signer_verified": True, "on_behalf_of": "carol"}, PEER, set(), "carol"),
        ({"link_peer": PEER}, PEER, set(), ""),
    ],
)
def test_the_default_rule(
    credentials: dict[str, Any], caller: str, scopes: set[str], on_behalf_of: str
) -> None:
    ctx = ctx_with(**credentials)
    authenticate()(ctx)
    assert (ctx.caller, set(ctx.scopes), ctx.on_behalf_of) == (caller, scopes, on_behalf_of)
    assert ctx.authenticated


def test_a_peers_kept_answer_is_what_a_fresh_rule_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rule keeps a peer's answer by (node, verified): asked again in another
    way (unverified, over a channel, delegating), it still answers as a fresh one
    would, and what it keeps is bounded."""
    asked = [
        {"signer": PEER, "signer_verified": True},
        {"signer": PEER, "signer_verified": False},
        {"link_peer": PEER},
        {"signer": PEER, "signer_verified": True, "on_behalf_of": "carol"},
        {"link_peer": PEER, "on_behalf_of": "carol"},
        {"signer": PEER, "signer_verified": True},
    ]
    kept = authenticate()
    for credentials in asked * 2:
        again, fresh = ctx_with(**credentials), ctx_with(**credentials)
        kept(again)
        authenticate()(fresh)
        assert (again.caller, again.scopes, again.on_behalf_of, again.chain, again.vouched) == (
            fresh.caller, fresh.scopes, fresh.on_behalf_of, fresh.chain, fresh.vouched,
        ), credentials  # fmt: skip
    monkeypatch.setattr(auth_module, "_KEPT_PEERS", 3)
    rule = PeerAuthenticator(NODE)
    for i in range(10):
        rule.authenticate(ctx_with(), Credentials(link_peer=f"node-{i}"))
        assert len(rule._peers) <= 3


def test_a_context_not_made_by_the_builder_is_refused() -> None:
    with pytest.raises(Unauthenticated) as info:
        authenticate()(CallContext(door="rest", caller="someone", scopes=frozenset({"*"})))
    assert info.value.reason == "NO_CREDENTIALS"


def test_anonymous_callers_are_refused_where_the_node_serves_none() -> None:
    stage = authenticate(allow_anonymous=False)
    with pytest.raises(Unauthenticated) as info:
        stage(ctx_with())
    assert info.value.reason == "ANONYMOUS_REFUSED"
    delegated = ctx_with(signer=PEER, signer_verified=True, on_behalf_of="anonymous")
    with pytest.raises(Unauthenticated):
        stage(delegated)  # a node forwarding for nobody is nobody
    stage(ctx_with(signer=PEER, signer_verified=True))


class Broken:
    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        raise KeyError("oops")


class Refusing:
    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        raise Unauthenticated("bad token", reason="BAD_TOKEN")


def test_an_authenticator_that_breaks_admits_nobody() -> None:
    counters: Counter[str] = Counter()
    with pytest.raises(Unauthenticated) as info:
        Authenticate(Broken(), allow_anonymous=True, counters=counters)(ctx_with())
    assert info.value.reason == "AUTHENTICATOR_FAILED"
    with pytest.raises(Unauthenticated) as refused:
        Authenticate(Refusing(), allow_anonymous=True, counters=counters)(ctx_with())
    assert refused.value.reason == "BAD_TOKEN"
    assert counters["auth.refused"] == 1


def test_a_context_is_authenticated_once() -> None:
    ctx = ctx_with(local=True)
    authenticate()(ctx)
    Authenticate(Refusing(), allow_anonymous=True, counters=Counter())(ctx)  # not asked again
    assert ctx.caller == NODE


# -- authorize, rate-limit ---------------------------------------------------------------


def test_authorize_names_the_missing_scopes() -> None:
    ctx = ctx_with()
    ctx.scopes = frozenset({"a"})
    Authorize()(ctx, (), "t")
    Authorize()(ctx, ("a",), "t")
    with pytest.raises(PermissionDenied) as info:
        Authorize()(ctx, ("a", "b", "c"), "t")
    assert info.value.reason == "MISSING_SCOPE"
    assert info.value.details == {"missing_scopes": ["b", "c"]}
    ctx.scopes = frozenset({ALL_SCOPES})
    Authorize()(ctx, ("b",), "t")


def test_rate_limit_refuses_the_excess_with_a_retry_hint() -> None:
    counters: Counter[str] = Counter()
    stage = RateLimit(2, counters, per_caller=2)  # one caller may take every slot here
    ctx = ctx_with()
    slot = stage.enter(ctx)
    stage.enter(ctx)
    with pytest.raises(RateLimited) as info:
        stage.enter(ctx)
    assert info.value.reason == "CONCURRENCY_LIMIT"
    assert info.value.retry_after is not None
    stage.leave(slot)
    stage.enter(ctx)
    assert (stage.in_flight, counters["invoke.rejected"]) == (2, 1)


def at(peer: str, caller: str = "", *, vouched: bool = False, **credentials: Any) -> CallContext:
    """A context from transport address ``peer``, as authenticate left it."""
    ctx = BUILDER.build("rest", peer=peer, credentials=Credentials(**credentials))
    ctx.caller, ctx.vouched = caller, vouched
    return ctx


def test_one_caller_gets_its_share_of_the_slots_and_no_more() -> None:
    """The share is per caller, whichever door or connection it calls from: a
    second connection (another port) is the same caller, another address is not."""
    counters: Counter[str] = Counter()
    stage = RateLimit(8, counters)  # a quarter each: 2
    first, second = at("127.0.0.2:4000"), at("ipv4:127.0.0.2:4001")
    slots = [stage.enter(first), stage.enter(second)]
    with pytest.raises(RateLimited) as info:
        stage.enter(at("127.0.0.2:4002"))
    assert info.value.reason == "CALLER_CONCURRENCY_LIMIT"
    assert info.value.retry_after is not None
    slots.append(stage.enter(at("127.0.0.3:4000")))  # someone else
    slots.append(stage.enter(ctx_with(local=True)))  # the node's own program keeps to no share
    stage.leave(slots.pop(0))
    slots.append(stage.enter(at("127.0.0.2:4003")))
    assert (stage.in_flight, stage.held(first), counters["invoke.rejected_caller"]) == (4, 2, 1)
    for slot in slots:
        stage.leave(slot)
    assert (stage.in_flight, stage.held(first)) == (0, 0)


@pytest.mark.parametrize(
    ("ctx", "key"),
    [
        (ctx_with(local=True), ""),
        (ctx_with(given=True), ""),
        (at("127.0.0.1:5000"), "addr:127.0.0.1"),
        (at("ipv4:10.0.0.1:5000"), "addr:10.0.0.1"),
        (at("ipv6:%5B2001:db8::1%5D:5000"), "addr:2001:db8::/64"),
        (at("[2001:db8::2:1]:5000"), "addr:2001:db8::/64"),
        # an IPv4 client of a dual-stack HTTP socket is the same key as on gRPC
        (at("[::ffff:127.0.0.9]:5000"), "addr:127.0.0.9"),
        (at("ipv6:%5B::ffff:10.1.2.3%5D:5000"), "addr:10.1.2.3"),
        # link-local hosts all share fe80::/64: each is itself
        (at("[fe80::1%eth0]:5000"), "addr:fe80::1%eth0"),
        (at("[fe80::2%eth0]:5000"), "addr:fe80::2%eth0"),
        (at("unix:/tmp/node.sock"), "addr:unix:/tmp/node.sock"),
        # a peer key the operator trusts, an authenticator's principal
        (
            at("127.0.0.1:1", PEER, signer=PEER, signer_verified=True, vouched=True),
            f"caller:{PEER}",
        ),
        (at("127.0.0.1:1", "alice", vouched=True), "caller:alice"),
        # a key anyone can make up counts as its address, pinned by a handshake or not
        (at("127.0.0.1:1", PEER, signer=PEER, signer_verified=True), "addr:127.0.0.1"),
        (at("127.0.0.1:1", PEER, signer=PEER), "addr:127.0.0.1"),
        # a channel's peer is where its messages come from
        (at(PEER, PEER, link_peer=PEER), f"addr:{PEER}"),
    ],
)
def test_a_caller_is_its_verified_identity_else_its_address(ctx: CallContext, key: str) -> None:
    assert share_key(ctx) == key


def test_a_slot_is_given_back_under_the_key_it_was_taken_with() -> None:
    """A handler may change its context (a servicer holds it): the slot still goes
    back to the caller that took it."""
    stage = RateLimit(8, Counter(), per_caller=1)
    ctx = at("127.0.0.2:4000")
    slot = stage.enter(ctx)
    ctx.caller = "someone-else"
    stage.leave(slot)
    assert stage.held(at("127.0.0.2:1")) == 0
    stage.leave(stage.enter(at("127.0.0.2:4001")))  # not locked out


# -- govern --------------------------------------------------------------------------


def action(capability: str = "cap", parameters: Any = None) -> Action:
    return Action(Direction.INVOKE, capability, "c", "grpc", parameters=parameters)


def test_govern_enforces_and_records_the_decision() -> None:
    counters: Counter[str] = Counter()
    rules = RuleEvaluator(
        [
            Rule("watch", None, Decision.OK, flag=True, capabilities=frozenset({"cap"})),
            Rule("stop", None, Decision.BLOCK, capabilities=frozenset({"bad"})),
        ]
    )
    stage = Govern(rules, counters)
    seen: list[str] = []
    stage.listeners.append(lambda ctx, act, verdict: seen.append(verdict.decision.label))
    ctx = ctx_with()
    assert stage(ctx, action()).parameters is None  # not nudged: the request as is
    assert (ctx.decision, ctx.flags, counters["governance.flagged"]) == ("ok", ["watch"], 1)
    with pytest.raises(GovernanceBlocked):
        stage(ctx, action("bad"))
    assert seen == ["ok", "block"]


def test_a_nudge_replaces_the_parameters() -> None:
    class Nudge:
        def evaluate(self, act: Action) -> Verdict:
            return Verdict(Decision.NUDGE, parameters={"text": "tamed"})

    assert Govern(Nudge(), Counter())(ctx_with(), action()).parameters == {"text": "tamed"}


def test_a_listener_watches_but_an_evaluator_decides() -> None:
    counters: Counter[str] = Counter()
    stage = Govern(AllowAll(), counters)

    def broken_listener(*_: Any) -> None:
        raise RuntimeError("a watcher's bug")

    stage.listeners.append(broken_listener)
    stage(ctx_with(), action())  # the call goes on

    class BrokenRules:
        def evaluate(self, act: Action) -> Verdict:
            raise ZeroDivisionError("a rule's bug")

    stage.evaluator = BrokenRules()
    with pytest.raises(InternalError) as info:
        stage(ctx_with(), action())
    assert info.value.reason == "GOVERNANCE_FAILED"
    assert counters["governance.failed"] == 1


def test_a_messages_json_view_is_made_only_when_a_rule_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Any] = []
    real = codec.message_json

    def counting(message: Any) -> Any:
        made.append(message)
        return real(message)

    monkeypatch.setattr(codec, "message_json", counting)
    message = struct_pb2.Struct()
    message.update({"n": 7})
    quiet = Action(Direction.INVOKE, "c", "", "", message=message)
    Govern(AllowAll(), Counter())(ctx_with(), quiet)
    assert made == []
    reads = RuleEvaluator([Rule("n", lambda act: act.parameters["n"] == 7, Decision.BLOCK)])
    act = Action(Direction.INVOKE, "c", "", "", message=message)
    with pytest.raises(GovernanceBlocked):
        Govern(reads, Counter())(ctx_with(), act)
    assert act.parameters == {"n": 7}  # an int, as the caller sent it
    assert len(made) == 1  # built once, however often it is read


# -- post-check, audit ---------------------------------------------------------------


def test_post_checks_may_redact_or_refuse() -> None:
    class Redact:
        def check(self, ctx: CallContext, act: Action, result: Any) -> Any:
            return {**result, "secret": "***"}

    class Refuse:
        def check(self, ctx: CallContext, act: Action, result: Any) -> Any:
            raise PermissionDenied("not for you", reason="RESPONSE_REFUSED")

    class Broken:
        def check(self, ctx: CallContext, act: Action, result: Any) -> Any:
            raise ValueError("bug")

    ctx, act = ctx_with(), action()
    assert PostCheck([Redact()])(ctx, act, {"secret": "x"}) == {"secret": "***"}
    with pytest.raises(PermissionDenied):
        PostCheck([Redact(), Refuse()])(ctx, act, {})
    with pytest.raises(InternalError) as info:
        PostCheck([Broken()])(ctx, act, {})
    assert info.value.reason == "POST_CHECK_FAILED"


class Sink:
    def __init__(self, broken: bool = False) -> None:
        self.records: list[AuditRecord] = []
        self.broken = broken

    def write(self, record: AuditRecord) -> None:
        if self.broken:
            raise OSError("disk full")
        self.records.append(record)


def test_audit_writes_a_record_or_fails_the_call() -> None:
    counters: Counter[str] = Counter()
    sink = Sink()
    ctx = ctx_with(signer=PEER, signer_verified=True)
    authenticate()(ctx)
    Audit([sink], counters)(ctx, "cap", "invoke", "", None)
    Audit([sink], counters)(ctx, "cap", "invoke", "", RateLimited("busy"))
    assert [(r.caller, r.action, r.outcome) for r in sink.records] == [
        (PEER, "cap", "ok"),
        (PEER, "cap", "rate_limit_exceeded"),
    ]
    with pytest.raises(InternalError) as info:
        Audit([Sink(broken=True)], counters)(ctx, "cap", "invoke", "", None)
    assert info.value.reason == "AUDIT_FAILED"
    assert counters["audit.failed"] == 1


class RefusingLog:
    """A log that cannot keep records (full, read-only): ``append`` refuses."""

    failed = None

    def __init__(self) -> None:
        self.tickets = 0

    def append(self, record: AuditRecord) -> int:
        raise Unavailable("the audit log is full", reason="AUDIT_UNAVAILABLE")

    async def durable(self, ticket: int) -> None:
        return None


class CountingLog(RefusingLog):
    def append(self, record: AuditRecord) -> int:
        self.tickets += 1
        return self.tickets


@pytest.mark.parametrize("sinks", [0, 1], ids=["log alone", "log and a sink"])
def test_audit_hands_the_record_to_the_log_and_counts_its_refusal(sinks: int) -> None:
    """The log alone (the node's usual stage) and with sinks: the log's ticket comes
    back, and a log that refuses raises its error and counts ``audit.refused``."""
    counters: Counter[str] = Counter()
    ctx = ctx_with(signer=PEER, signer_verified=True)
    authenticate()(ctx)
    sink_list = [Sink() for _ in range(sinks)]
    keeping = CountingLog()
    audit = Audit(sink_list, counters, keeping)
    assert [audit(ctx, "cap", "invoke", "", None) for _ in range(2)] == [1, 2]
    assert all(len(s.records) == 2 for s in sink_list)
    with pytest.raises(Unavailable) as info:
        Audit(sink_list, counters, RefusingLog())(ctx, "cap", "invoke", "", None)
    assert info.value.reason == "AUDIT_UNAVAILABLE"
    assert counters["audit.refused"] == 1
    assert all(len(s.records) == 2 for s in sink_list)  # a refused record reaches no sink


# -- the pipeline runs them in order -------------------------------------------------------


def pipeline(**stages: Any) -> tuple[Pipeline, list[str]]:
    registry = CapabilityRegistry()
    ran: list[str] = []

    async def echo(text: str) -> str:
        ran.append(text)
        return text

    registry.add(function_capability(echo, scopes=("talk",)))
    built = Stages.default(node_id=NODE, **stages)
    return Pipeline(registry, built, FixedClock()), ran


async def test_refusals_stop_at_their_stage_and_are_audited() -> None:
    sink = Sink()
    pipe, ran = pipeline(audit=[sink], max_concurrent=1)
    with pytest.raises(PermissionDenied):  # anonymous: authenticated, lacks the scope
        await pipe.invoke(ctx_with(), "echo", {"text": "a"})
    with pytest.raises(Unauthenticated):
        await pipe.invoke(CallContext(door="rest"), "echo", {"text": "b"})
    assert await pipe.invoke(ctx_with(local=True), "echo", {"text": "c"}) == "c"
    assert ran == ["c"]
    assert [r.outcome for r in sink.records] == ["forbidden", "unauthorized", "ok"]
    assert pipe.in_flight == 0
    assert (pipe.counters["invoke.forbidden"], pipe.counters["invoke.ok"]) == (1, 1)


async def test_scopes_hold_on_every_kind_of_call() -> None:
    pipe, _ = pipeline()

    async def run(_: Any) -> str:
        return "ran"

    async def items(_: Any) -> Any:
        yield "item"

    with pytest.raises(PermissionDenied):
        await pipe.call(ctx_with(), "aral.test/Built", None, run, scopes=("admin",))
    admin = ctx_with(local=True)
    assert await pipe.call(admin, "aral.test/Built", None, run, scopes=("admin",)) == "ran"
    assert [i async for i in pipe.stream(ctx_with(), "aral.test/Stream", None, items)] == ["item"]


async def test_an_audit_that_fails_fails_the_call_after_it_ran() -> None:
    pipe, ran = pipeline(audit=[Sink(broken=True)])
    with pytest.raises(InternalError) as info:
        await pipe.invoke(ctx_with(local=True), "echo", {"text": "x"})
    assert info.value.reason == "AUDIT_FAILED"
    assert ran == ["x"]  # no answer without a record, though the work was done
    assert pipe.in_flight == 0


async def test_a_refusal_is_what_the_caller_gets_when_its_audit_fails_too() -> None:
    pipe, _ = pipeline(audit=[Sink(broken=True)])
    with pytest.raises(AralError) as info:
        await pipe.invoke(ctx_with(), "echo", {"text": "x"})
    assert isinstance(info.value, PermissionDenied)


async def test_a_stream_whose_servicer_breaks_is_recorded() -> None:
    """A servicer's own exception in a stream is INTERNAL to the caller, audited and
    counted, its slot given back (as on a unary call)."""
    sink = Sink()
    pipe, _ = pipeline(audit=[sink])

    async def items(_: Any) -> Any:
        yield 1
        raise ValueError("a bug in the servicer")

    got: list[Any] = []

    async def consume() -> None:
        async for item in pipe.stream(ctx_with(), "svc/Stream", None, items):
            got.append(item)  # noqa: PERF401 - the items that came before the failure

    with pytest.raises(InternalError) as info:
        await consume()
    assert got == [1]
    assert info.value.reason == "HANDLER_FAILED"
    assert [r.outcome for r in sink.records] == ["internal_error"]
    assert pipe.in_flight == 0
