"""Halts against a hostile peer: a peer that names principal after principal for
governance to halt ends up halted itself, so the table stays bounded; a full table
still records a real halt (it evicts); a halt holds at once while its file is written
off the caller's thread, coalesced, and survives a restart; a principal halted
while its WebSocket is open gets no more approval events."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore
from aralnode.bridge._approvals_feed import subscriber_halted
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.core.governance import (
    Action,
    Decision,
    Direction,
    Rule,
    RuleEvaluator,
    Verdict,
)
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity, KeyRing
from aralnode.service import halts as halts_module
from aralnode.service.auth import Authenticated, own_name
from aralnode.service.halts import NAMED_PER_PEER, PEER, PRINCIPAL, HaltEntry, Halts
from aralnode.transport.grpc_client import NodeClient, unwrap

HALT = Verdict(Decision.HALT, reasons=("abuse",), rule_ids=("stop",))
ACT = Action(Direction.INVOKE, "demo.add", "x", "grpc")
PEER_ID = "p" * 32


def _named(peer: str, name: str) -> CallContext:
    """A call an untrusted peer makes for a principal it names (``name@peer``)."""
    return CallContext(door="grpc", caller=peer, on_behalf_of=f"{name}@{peer}", kind="node")


def _own(principal: str) -> CallContext:
    return CallContext(door="grpc", caller=principal, kind="user")


def _refused(halts: Halts, ctx: CallContext) -> bool:
    try:
        halts.check(ctx)
    except AralError as exc:
        return exc.reason == "HALTED"
    return False


def test_a_peer_naming_many_halted_principals_is_halted_itself() -> None:
    halts = Halts()
    for i in range(NAMED_PER_PEER + 20):
        ctx = _named(PEER_ID, f"p{i}")
        if _refused(halts, ctx):  # (what authenticate does first)
            continue
        halts.halted(ctx, ACT, HALT)
    entries = halts.entries()
    assert len(entries) == NAMED_PER_PEER + 1  # bounded, however many names
    assert entries[-1].subject == PEER_ID
    assert entries[-1].kind == PEER
    assert f"p{NAMED_PER_PEER}@{PEER_ID}" in entries[-1].reason
    assert {e.named_by for e in entries[:-1]} == {PEER_ID}
    # Everything the peer sends is refused now: for itself, for any name.
    assert _refused(halts, CallContext(door="channel", caller=PEER_ID, kind="node"))
    assert _refused(halts, _named(PEER_ID, "somebody-new"))
    # Another peer is not held to the first one's count; the node's own are not counted.
    halts.halted(_named("q" * 32, "p0"), ACT, HALT)
    for i in range(NAMED_PER_PEER + 2):
        halts.halted(_own(f"user{i}@example.com"), ACT, HALT)
    assert not halts.is_halted("q" * 32)
    assert not halts.is_halted("example.com")
    assert halts.is_halted(f"user{NAMED_PER_PEER + 1}@example.com")


def test_a_trusted_peers_principals_do_not_count_against_it() -> None:
    halts = Halts()
    for i in range(NAMED_PER_PEER + 2):  # a trusted peer's names are taken as they stand
        ctx = CallContext(door="grpc", caller=PEER_ID, on_behalf_of=f"u{i}", kind="node")
        halts.halted(ctx, ACT, HALT)
    assert not halts.is_halted(PEER_ID)
    assert {e.kind for e in halts.entries()} == {PRINCIPAL}


def test_a_full_table_still_records_a_real_halt() -> None:
    halts = Halts(max_halts=6, named_per_peer=2)
    for peer in ("a" * 32, "b" * 32):  # each: 2 named principals, then itself
        for i in range(3):
            halts.halted(_named(peer, f"n{i}"), ACT, HALT)
    assert len(halts.entries()) == 6
    halts.halted(_own("alice"), ACT, HALT)
    assert halts.is_halted("alice")
    assert len(halts.entries()) == 6
    assert halts.evicted == 1
    # The first to go: a principal a halted peer named (the peer's halt covers it).
    assert not halts.is_halted(f"n0@{'a' * 32}")
    assert halts.is_halted("a" * 32)
    assert halts.is_halted("b" * 32)
    # A table of the node's own principals only: the oldest makes room.
    own = Halts(max_halts=3)
    for name in ("u1", "u2", "u3", "u4"):
        own.halt(name, PRINCIPAL, "x")
    assert [e.subject for e in own.entries()] == ["u2", "u3", "u4"]
    assert own.evicted == 1


def test_clearing_a_peer_leaves_the_principals_it_named(tmp_path: Path) -> None:
    halts = Halts(named_per_peer=1)
    halts.halted(_named(PEER_ID, "a"), ACT, HALT)
    halts.halted(_named(PEER_ID, "b"), ACT, HALT)
    assert halts.is_halted(PEER_ID)
    assert halts.clear(PEER_ID, "ops")
    assert halts.is_halted(f"a@{PEER_ID}")
    halts.halted(_named(PEER_ID, "c"), ACT, HALT)  # still at its bound: the peer again
    assert halts.is_halted(PEER_ID)
    assert halts.clear(f"a@{PEER_ID}", "ops")


def test_a_halt_holds_at_once_and_the_file_is_written_off_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "halts.json"
    entered, release = threading.Event(), threading.Event()
    written: list[tuple[str, int]] = []
    real_write = halts_module._write_file

    def gated_write(to: Path, entries: list[HaltEntry]) -> None:
        written.append((threading.current_thread().name, len(entries)))
        entered.set()
        assert release.wait(30)
        real_write(to, entries)

    monkeypatch.setattr(halts_module, "_write_file", gated_write)
    halts = Halts(path)
    halts.halted(_own("first"), ACT, HALT)
    assert entered.wait(30)  # the first write has started, and is held
    for i in range(49):
        halts.halted(_own(f"u{i}"), ACT, HALT)
    halts.halted(_named(PEER_ID, "n"), ACT, HALT)
    # Refused at once, while the disk still holds nothing.
    assert _refused(halts, _own("first"))
    assert _refused(halts, _own("u48"))
    assert _refused(halts, _named(PEER_ID, "n"))
    assert not path.exists()
    release.set()
    halts.flush()
    # Two writes for 51 halts: the held one, then one with all that came meanwhile.
    assert [n for _, n in written] == [1, 51]
    assert threading.current_thread().name not in {name for name, _ in written}
    assert halts.writes == 2
    reopened = Halts(path)
    assert [e.subject for e in reopened.entries()] == [e.subject for e in halts.entries()]
    assert reopened.entries()[-1].named_by == PEER_ID
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert rows[0] == {**rows[0], "subject": "first", "kind": PRINCIPAL}


def test_halts_survive_a_restart_without_a_flush(tmp_path: Path) -> None:
    path = tmp_path / "halts.json"
    halts = Halts(path, named_per_peer=2)
    for i in range(3):
        halts.halted(_named(PEER_ID, f"n{i}"), ACT, HALT)
    halts.halt("alice", PRINCIPAL, "x")
    assert halts.clear("alice", "ops")
    reopened = Halts(path, named_per_peer=2)  # waits for the writes still pending
    assert [(e.subject, e.kind) for e in reopened.entries()] == [
        (f"n0@{PEER_ID}", PRINCIPAL),
        (f"n1@{PEER_ID}", PRINCIPAL),
        (PEER_ID, PEER),
    ]
    reopened.halted(_named(PEER_ID, "n9"), ACT, HALT)  # the count was kept
    assert len(reopened.entries()) == 3


def test_a_failed_write_leaves_the_halt_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(to: Path, entries: list[HaltEntry]) -> None:
        raise OSError("disk full")

    halts = Halts(tmp_path / "halts.json")
    monkeypatch.setattr(halts_module, "_write_file", broken)
    halts.halt("alice", PRINCIPAL, "x")
    halts.flush()
    assert halts.is_halted("alice")
    monkeypatch.undo()
    halts.halt("bob", PRINCIPAL, "x")  # the next change writes them all
    halts.flush()
    assert {e.subject for e in Halts(tmp_path / "halts.json").entries()} == {"alice", "bob"}


async def test_an_untrusted_peer_naming_principals_is_halted_over_grpc(
    make_node: Callable[..., Node],
) -> None:
    rules = RuleEvaluator(
        [Rule("big", lambda a: (a.parameters or {}).get("a", 0) > 1000, Decision.HALT,
              reason="abuse", capabilities=frozenset({"demo.add"}))]
    )  # fmt: skip
    node = make_node("target", governance=rules)
    async with node:
        me = Identity.generate()
        card = build_card(
            me, name="x", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
        )
        reasons: list[str] = []
        async with NodeClient(node.address, identity=me, keyring=KeyRing()) as client:
            await client.handshake(card)
            for i in range(NAMED_PER_PEER + 10):
                try:
                    await client.request(
                        "demo.add", {"a": 5000, "b": 1}, timeout=20, on_behalf_of=f"p{i}"
                    )
                except AralError as exc:
                    reasons.append(exc.reason)
        assert reasons[: NAMED_PER_PEER + 1] == ["GOVERNANCE_HALT"] * (NAMED_PER_PEER + 1)
        assert "GOVERNANCE_HALT" not in reasons[NAMED_PER_PEER + 1 :]  # refused before
        halts = node.pipeline.stages.govern.halts
        assert halts is not None
        assert len(halts.entries()) == NAMED_PER_PEER + 1
        assert halts.is_halted(me.node_id)
        async with NodeClient(node.address, identity=me, keyring=KeyRing()) as again:
            with pytest.raises(AralError) as err:  # and it is not let back in
                await again.handshake(card)
            assert err.value.reason == "HALTED"


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if message["type"] == kind:
            return message


async def test_a_halted_subscriber_gets_no_more_approval_events(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    keys = ApiKeyStore(tmp_path / "keys.json")
    alice, _ = keys.create("alice", scopes=["agent:read", "agent:invoke"], kind="user")
    admin = ["agent:read", "agent:invoke", "agent:admin"]
    ops, _ = keys.create("ops", scopes=admin, kind="user")
    ops2, _ = keys.create("ops2", scopes=admin, kind="user")
    rules = RuleEvaluator(
        [Rule("ask", None, Decision.ESCALATE, capabilities=frozenset({"demo.echo"}))]
    )
    node = make_node("esc", governance=rules, http_port=0, apikeys_file=tmp_path / "keys.json")
    async with node:
        url = f"ws://127.0.0.1:{node.http_port}/ws"
        subscribe = {"type": "subscribe", "agent_id": node.node_id, "channels": ["events"]}
        async with (
            connect(url, additional_headers={"x-api-key": ops}) as halted,
            connect(url, additional_headers={"x-api-key": ops2}) as other,
        ):
            for ws in (halted, other):
                await ws.send(json.dumps(subscribe))
                assert "approvals" in (await _next(ws, "subscribed"))["channels"]
            halts = node.pipeline.stages.govern.halts
            assert halts is not None
            halts.halt("ops", PRINCIPAL, "operator halted ops")
            async with NodeClient(node.address, metadata=[("x-api-key", alice)]) as client:
                call = asyncio.ensure_future(client.call("demo.echo", {"text": "secret"}))
                pending = await _next(other, "approval")  # offered to both, at once
                assert pending["principal"] == "alice"
                # Events queued for a socket go out before its next reply: none came.
                await halted.send(json.dumps({"type": "ping", "id": 7}))
                seen: list[dict[str, Any]] = []
                while not seen or seen[-1]["type"] != "pong":
                    seen.append(json.loads(await asyncio.wait_for(halted.recv(), 20)))
                assert [m for m in seen if m["type"] == "approval"] == []
                assert "secret" not in json.dumps(seen)
                call.cancel()
                await asyncio.gather(call, return_exceptions=True)


def test_a_subscriber_is_matched_by_its_caller_principal_or_decision_key() -> None:
    class Sub:
        def __init__(self, **attrs: Any) -> None:
            self.__dict__.update(attrs)

    halts = Halts()
    assert not subscriber_halted(halts, Sub(principal="ops"))  # (no halt at all)
    halts.halt("ops", PRINCIPAL, "x")
    assert subscriber_halted(halts, Sub(caller="ops", principal="ops"))
    assert subscriber_halted(halts, Sub(caller="node1", principal="ops"))
    assert subscriber_halted(halts, Sub(decision_keys=("conn:1.2.3.4:5", "principal:ops")))
    assert not subscriber_halted(halts, Sub(caller="bob", principal="bob"))
    assert not subscriber_halted(halts, Sub())
    assert not subscriber_halted(None, Sub(principal="ops"))


async def test_no_credential_takes_the_name_kept_for_anonymous_callers(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """A key (or an issuer's ``sub``) named "anonymous" was everyone without an
    identity: a halt tripwire it tripped stopped every anonymous caller, on every
    door; one named "anonymous@<address>" owned that address's anonymous A2A tasks.
    Such a credential is refused where every door authenticates (one stage), and no
    key is made with such a name."""
    path = tmp_path / "keys.json"
    keys = ApiKeyStore(path)
    reserved = ("anonymous", "anonymous@127.0.0.1")
    for name in reserved:
        with pytest.raises(ValueError, match="kept for callers nobody identified"):
            keys.create(name, scopes=["agent:invoke"], kind="user")
    # A file written by other means (an editor, an older node) is refused at use.
    made = [keys.create(f"stand-in-{i}", scopes=["agent:invoke"], kind="user") for i in (0, 1)]
    data = json.loads(path.read_text())
    for entry, name in zip(data["keys"], reserved, strict=True):
        entry["principal"] = name
    path.write_text(json.dumps(data))
    halt = RuleEvaluator([Rule("stop", None, Decision.HALT, capabilities=frozenset({"demo.echo"}))])
    node = make_node("reserved", governance=halt, http_port=0, apikeys_file=path)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        for key, _record in made:
            async with NodeClient(node.address, metadata=[("x-api-key", key)]) as client:
                with pytest.raises(AralError) as refused:
                    await client.call("demo.echo", {"text": "stop them all"})
            assert refused.value.reason == "RESERVED_PRINCIPAL"
            r = await http.post(
                "/v1/invoke",
                json={"call": {"capability": "demo.echo", "parameters": {"text": "x"}}},
                headers={"x-api-key": key},
            )
            assert (r.status_code, r.json()["error"]["reason"]) == (401, "RESERVED_PRINCIPAL")
        # Nobody was halted: an anonymous caller is served.
        assert node.pipeline.stages.govern.halts is not None
        assert node.pipeline.stages.govern.halts.entries() == []
        async with NodeClient(node.address) as anonymous:
            assert unwrap(await anonymous.call("demo.add", {"a": 1, "b": 2})) == 3


def test_a_peer_may_act_for_anonymous_but_not_for_one_address_of_it() -> None:
    # "anonymous" is nobody in particular (a peer forwarding an anonymous call);
    # "anonymous@<address>" is one address's anonymous caller, an A2A tasks' owner.
    assert own_name(Authenticated("p" * 32, kind="node", on_behalf_of="anonymous"))
    for who in (
        Authenticated("p" * 32, kind="node", on_behalf_of="anonymous@10.0.0.7"),
        Authenticated("anonymous@10.0.0.7", kind="service"),
        Authenticated("anonymous"),
    ):
        with pytest.raises(AralError) as refused:
            own_name(who)
        assert refused.value.reason == "RESERVED_PRINCIPAL"
    signer = Authenticated("k" * 32, kind="anonymous", on_behalf_of="anonymous", vouched=False)
    assert own_name(signer) is signer  # (a key nobody verified names nobody)
