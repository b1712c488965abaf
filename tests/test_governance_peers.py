"""Governance against what a peer makes up or sends (attack review atk8).

F3: a principal an untrusted peer names (``name@<peer>``) is free to make up, so
rate, trust debt and the approval queue's per-principal bound also count under the
peer that named it (as halts roll up to it): a new name per call resets nothing.
F8: the rapid-exchange tripwire counts a peer's requests (a channel request, a
peer's signed Invoke) as well as its notifications.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from aralnode import Node
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK, FixedClock
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.core.governance import Action, Decision, Direction, Verdict
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.policy.engine import Memory, PolicyEvaluator
from aralnode.policy.load import parse_policy
from aralnode.policy.parties import exchange_partner, naming_peer
from aralnode.service.approvals import PENDING, Approval, ApprovalQueue
from aralnode.transport.grpc_client import NodeClient
from tests.channel_helpers import FAST, linked

P = "p" * 32  # an untrusted peer's node id
Q = "q" * 32  # another
OK, BLOCK = Decision.OK, Decision.BLOCK

RATE = (
    '[[tripwires]]\nid = "too-fast"\ncapabilities = ["demo.echo"]\nwhen = "rate > 5"\n'
    'action = "block"\n'
)
DEBT = (
    '[[tripwires]]\nid = "many"\ncapabilities = ["demo.echo"]\n'
    'when = "has(params.times) && params.times > 3"\nflag = true\ndebt = 0.3\n'
    '[[tripwires]]\nid = "indebted"\nwhen = "trust_debt > 0.5"\naction = "block"\n'
)
RAPID = '[collusion]\nrapid_exchange = { messages = 5, window_seconds = 60, action = "block" }\n'


def engine(text: str, clock: FixedClock | None = None) -> PolicyEvaluator:
    policy = parse_policy("version = 1\n" + text)
    return PolicyEvaluator(policy, Memory((clock or FixedClock()).monotonic, policy))


def named(
    name: str, peer: str = P, capability: str = "demo.echo", times: int = 1, door: str = "channel"
) -> Action:
    """A call the untrusted ``peer`` makes for a principal it names (auth qualifies it)."""
    return Action(
        Direction.INVOKE, capability, peer, door, "unspecified", {"text": "x", "times": times},
        peer, principal=f"{name}@{peer}", kind="node",
    )  # fmt: skip


def own(principal: str, kind: str = "user", door: str = "grpc", peer: str = "") -> Action:
    return Action(
        Direction.INVOKE, "demo.echo", principal, door, "unspecified", {"text": "x"}, peer,
        principal=principal, kind=kind,
    )  # fmt: skip


# -- F3: rate and trust debt ------------------------------------------------------------


def test_a_peer_naming_a_new_principal_per_call_still_meets_the_rate() -> None:
    e = engine(RATE)
    same = [e.evaluate(named("mallory", Q)).decision for _ in range(8)]
    assert same == [OK] * 5 + [BLOCK] * 3
    rotating = [e.evaluate(named(f"mallory{i}")).decision for i in range(8)]
    assert rotating == [OK] * 5 + [BLOCK] * 3  # was: OK x 8, each name a fresh bucket
    # The peer itself shares the count of the names it made up; others do not.
    assert e.evaluate(own(P, kind="node", door="channel", peer=P)).decision is BLOCK
    assert e.evaluate(own("bob")).decision is OK
    assert e.evaluate(named("mallory0", "r" * 32)).decision is OK


def test_a_peer_naming_a_new_principal_per_flag_still_owes_the_debt() -> None:
    e = engine(DEBT)
    same = [e.evaluate(named("eve", Q, times=5)).decision for _ in range(4)]
    assert same == [OK, OK, BLOCK, BLOCK]
    rotating = [e.evaluate(named(f"eve{i}", times=5)).decision for i in range(4)]
    assert rotating == [OK, OK, BLOCK, BLOCK]  # was: OK x 4
    ledger = e.memory.ledger
    assert ledger.debt(P) == pytest.approx(1.2)  # every flag of every name
    assert ledger.debt(f"eve3@{P}") == pytest.approx(0.3)  # and each name its own
    # A new name of that peer starts indebted; the peer's own calls too.
    assert e.evaluate(named("fresh", capability="demo.add")).rule_ids == ("indebted",)
    assert e.evaluate(own(P, kind="node", door="channel", peer=P)).decision is BLOCK
    assert e.evaluate(own("bob")).decision is OK


def test_a_name_judged_before_its_peer_owed_is_judged_again_after() -> None:
    """Which rules fire is kept per call shape while nobody in it owes debt: once
    the peer that named the principal owes, the kept answer must not hold."""
    clock = FixedClock()
    e = engine(DEBT, clock)
    quiet = named("m0", capability="demo.add")  # only "indebted" applies: kept per shape
    assert e.evaluate(quiet).decision is OK
    assert e.evaluate(quiet).decision is OK  # (answered from what the shape keeps)
    for i in range(2):
        e.evaluate(named(f"other{i}", times=5))  # other names: the peer owes 0.6
    assert e.evaluate(quiet).rule_ids == ("indebted",)
    clock.advance(3 * 3600)  # the debt decays for the peer as for anyone (half-life 1 h)
    assert e.evaluate(quiet).decision is OK


AGGREGATION = (
    "[collusion]\ndata_aggregation = { principals = 3, window_seconds = 300, "
    'action = "block" }\n[capabilities]\n"vault.*" = "financial"\n[tiers]\ndefault = 5\n'
)


def reads(principal: str) -> Action:
    return Action(
        Direction.INVOKE, "vault.read", principal, "grpc", principal=principal, kind="user"
    )


def test_a_peer_naming_many_principals_is_one_asker_for_data_aggregation() -> None:
    """Each name a peer made up counted as a principal of its own: one peer alone
    tripped the rule, and every caller asking for the capability within the window
    was refused with it."""
    e = engine(AGGREGATION)
    rotating = [e.evaluate(named(f"m{i}", capability="vault.read")).decision for i in range(6)]
    assert rotating == [OK] * 6  # one asker: the peer
    assert e.evaluate(reads("alice")).decision is OK
    third = e.evaluate(reads("bob"))  # the peer, alice, bob
    assert (third.decision, third.rule_ids) == (BLOCK, ("collusion.data_aggregation",))
    # Each peer is one asker, whatever names it uses.
    other = engine(AGGREGATION)
    for peer in (P, Q):
        assert other.evaluate(named("m", peer, capability="vault.read")).decision is OK
    assert other.evaluate(named("m", Q, capability="vault.read")).decision is OK
    assert other.evaluate(named("x", "r" * 32, capability="vault.read")).decision is BLOCK


@pytest.mark.parametrize(
    ("principal", "caller", "kind", "peer"),
    [
        pytest.param(f"m@{P}", P, "node", P, id="named-by-the-caller"),
        pytest.param(f"m@{Q}@{P}", P, "node", P, id="forwarded-and-named"),
        pytest.param(f"m@{Q}", P, "node", "", id="named-by-another"),
        pytest.param("alice", P, "node", "", id="a-trusted-peer-names"),
        pytest.param(P, P, "node", "", id="the-peer-itself"),
        pytest.param("a@example.com", "a@example.com", "user", "", id="a-local-user"),
        pytest.param(f"m@{P}", P, "user", "", id="not-a-node"),
        pytest.param(f"m@{P}", "", "node", "", id="no-caller"),
    ],
)
def test_the_peer_that_named_a_principal(principal: str, caller: str, kind: str, peer: str) -> None:
    action = Action(Direction.INVOKE, "x", caller, "grpc", principal=principal, kind=kind)
    assert naming_peer(action) == peer


def test_a_local_principal_with_an_at_sign_is_its_own() -> None:
    """An e-mail-like local principal is no peer's name: its debt and rate stay its own."""
    e = engine(RATE + DEBT.replace("demo.echo", "noisy"))
    for _ in range(2):
        e.evaluate(
            Action(Direction.INVOKE, "noisy", "a@example.com", "rest", parameters={"times": 9},
                   principal="a@example.com", kind="user")
        )  # fmt: skip
    assert e.memory.ledger.debt("example.com") == 0.0
    assert e.evaluate(own("b@example.com")).decision is OK


def test_what_peers_make_up_keeps_the_tables_at_their_size() -> None:
    e = engine(RATE + DEBT + "[trust_debt]\nmax_principals = 50\n[collusion]\nmax_tracked = 50\n")
    for p in range(20):
        for i in range(100):
            e.evaluate(named(f"n{i}", peer=f"{p:032d}", times=9))
    assert len(e.memory.rate) == 50
    assert len(e.memory.ledger) == 50
    assert len(e._known) <= 4096


# -- F3: the approval queue ---------------------------------------------------------------


def _ctx(caller: str, on_behalf_of: str = "", kind: str = "node") -> CallContext:
    return CallContext(door="channel", caller=caller, on_behalf_of=on_behalf_of, kind=kind)


async def test_one_peer_cannot_fill_the_approval_queue_by_naming_principals() -> None:
    queue = ApprovalQueue(max_pending=20, max_pending_per_principal=2)
    verdict = Verdict(Decision.ESCALATE, reasons=("x",))
    act = Action(Direction.INVOKE, "demo.echo", P, "channel")
    waiting: list[asyncio.Task[None]] = []

    async def admitted(ctx: CallContext) -> bool:
        """Whether ``ctx``'s escalated call waits (else it was refused at once)."""
        task = asyncio.ensure_future(queue.wait(ctx, act, verdict))
        pending: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def heard(event: str, _: Approval) -> None:
            if not pending.done():
                pending.set_result(event)

        stop = queue.on_event(heard)
        watched: list[asyncio.Future[Any]] = [task, pending]
        try:
            await asyncio.wait(watched, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop()
        if task.done():
            error = task.exception()
            assert isinstance(error, AralError)
            assert error.reason == "APPROVAL_QUEUE_FULL"
            return False
        assert pending.result() == PENDING
        waiting.append(task)
        return True

    try:
        got = [await admitted(_ctx(P, f"m{i}@{P}")) for i in range(5)]
        assert got == [True, True, False, False, False]  # was: all in, a bucket each
        assert not await admitted(_ctx(P))  # the peer itself shares its names' bound
        assert all([await admitted(_ctx(Q, f"m{i}@{Q}")) for i in range(2)])  # others in
        # A peer the operator trusts names principals as they are: each its own bound.
        assert all([await admitted(_ctx(P + "t", f"u{i}")) for i in range(4)])
        assert await admitted(_ctx("alice", kind="user"))
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
    assert queue.pending() == []


# -- F8: rapid exchange -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "partner"),
    [
        pytest.param(own(P, "node", "channel", P), P, id="channel-request"),
        pytest.param(named("m"), P, id="channel-request-for-a-name"),
        pytest.param(own(P, "anonymous", "channel", P), P, id="channel-unverified-signer"),
        pytest.param(own(P, "node", "grpc", "ipv4:127.0.0.1:5"), P, id="signed-invoke"),
        pytest.param(own(P, "node", "rest", "127.0.0.1"), P, id="peer-on-rest"),
        pytest.param(own("me", "node", "local"), "", id="the-nodes-own-program"),
        pytest.param(own("alice", "user", "grpc", "ipv4:127.0.0.1:5"), "", id="a-user"),
        pytest.param(own("anonymous", "anonymous", "grpc", "x"), "", id="anonymous"),
        pytest.param(Action(Direction.RECEIVE, "evt", P, "channel", peer=P), P, id="receive"),
        pytest.param(Action(Direction.SEND, "evt", "me", "local", peer=Q), Q, id="send"),
        pytest.param(Action(Direction.CONNECT, "connect", P, "grpc", peer=P), "", id="connect"),
    ],
)
def test_what_rapid_exchange_counts_as_an_exchange(action: Action, partner: str) -> None:
    assert exchange_partner(action) == partner


def test_rapid_exchange_counts_a_peers_requests_with_its_notifications() -> None:
    e = engine(RAPID)
    requests = [e.evaluate(own(P, "node", "channel", P)).decision for _ in range(6)]
    assert requests == [OK] * 4 + [BLOCK] * 2  # was: OK x 6
    notice = e.evaluate(Action(Direction.RECEIVE, "evt", P, "channel", peer=P, kind="node"))
    assert notice.rule_ids == ("collusion.rapid_exchange",)  # one count for both
    assert P in notice.reasons[0]
    signed = [e.evaluate(own(Q, "node", "grpc", f"ipv4:127.0.0.1:{i}")) for i in range(5)]
    assert [v.decision for v in signed] == [OK] * 4 + [BLOCK]  # by node, not by address
    # Users and the node's own program exchange with no peer.
    assert all(e.evaluate(own("alice")).decision is OK for _ in range(10))
    assert all(e.evaluate(own("me", "node", "local")).decision is OK for _ in range(10))


# -- through a real channel and a real gRPC door ------------------------------------------


async def _outcomes(calls: list[Callable[[], Awaitable[Any]]]) -> list[str]:
    """Each call's outcome in turn: "ok" or its refusal's reason."""
    found = []
    for call in calls:
        try:
            await call()
            found.append("ok")
        except AralError as exc:
            found.append(exc.reason)
    return found


async def test_over_the_channel_names_share_the_rate_and_requests_are_exchanges(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("version = 1\n[tiers]\npeers = { \"*\" = 2 }\n" + RATE + RAPID.replace(
        "messages = 5", "messages = 12"))  # fmt: skip
    victim = make_node("victim", policy_file=path, peer_scopes=frozenset({"agent:invoke"}), **FAST)
    attacker = make_node(
        "attacker", demo=False, roles={"authenticated": frozenset({"agent:invoke"})}, **FAST
    )
    async with victim, attacker:
        await linked(attacker, victim)

        def echo(who: str) -> Callable[[], Awaitable[Any]]:
            return lambda: attacker.request(
                victim.node_id, "demo.echo", {"text": "x"}, on_behalf_of=who, timeout=20
            )

        rotating = await _outcomes([echo(f"mallory{i}") for i in range(8)])
        # (The peer's own actions count too: its handshakes were judged, "connect".)
        served = rotating.count("ok")
        assert served <= 5  # was: ok x 8, each name a fresh bucket
        assert rotating == ["ok"] * served + ["GOVERNANCE_BLOCK"] * (8 - served)

        def add(i: int) -> Callable[[], Awaitable[Any]]:
            return lambda: attacker.request(victim.node_id, "demo.add", {"a": i, "b": 1})

        # 8 requests so far; the 12th message with this peer trips rapid exchange.
        assert await _outcomes([add(i) for i in range(5)]) == ["ok"] * 3 + [
            "GOVERNANCE_BLOCK"
        ] * 2  # fmt: skip


async def test_a_peers_signed_invokes_over_grpc_are_exchanges(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("version = 1\n" + RAPID)
    node = make_node("target", policy_file=path)
    async with node:
        me = Identity.generate()
        card = build_card(
            me, name="x", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
        )
        async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
            await client.handshake(card)
            found = await _outcomes(
                [lambda: client.request("demo.add", {"a": 1, "b": 2}, timeout=20)] * 6
            )
        assert found == ["ok"] * 4 + ["GOVERNANCE_BLOCK"] * 2  # was: ok x 6
        # A client that is no peer node is not counted.
        async with NodeClient(node.address) as plain:
            for _ in range(6):
                await plain.call("demo.add", {"a": 1, "b": 2})
