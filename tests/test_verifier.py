"""Signature checks in helper processes (``aralnode.mesh.verifier``): the same
verdicts as in-process, in order, and nothing unchecked or lost when a helper
fails."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from aralnode import Node
from aralnode import _proto as pb
from aralnode.core.channel import encode_batch
from aralnode.core.identity import Identity, KeyAlgorithm, KeyRing, pae
from aralnode.mesh.verifier import Verifier, VerifierGone, checked_keys
from aralnode.mesh.verify_helper import HEAD, NICE, answer, checker, encode, serve
from tests.channel_helpers import linked
from tests.test_channel_bad_input import message, opened, reason_of

MakeNode = Callable[..., Node]


def _items() -> tuple[list[tuple[bytes, bytes, bytes]], list[int]]:
    """Signatures of every kind, and whether each holds."""
    es, ed, other = (
        Identity.generate(),
        Identity.generate(KeyAlgorithm.ED25519),
        Identity.generate(),
    )
    m = b"the exact bytes"
    spki = es.public_key.spki
    items = [
        (spki, es.sign_raw(m), m),  # holds
        (spki, es.sign_raw(m), m + b"!"),  # other bytes
        (spki, other.sign_raw(m), m),  # another key's
        (spki, bytes(64), m),  # right length, no signature
        (spki, es.sign_raw(m)[:63], m),  # wrong length
        (b"not a key", es.sign_raw(m), m),  # not a public key
        (ed.public_key.spki, ed.sign_raw(m), m),  # Ed25519, holds
        (ed.public_key.spki, ed.sign_raw(m + b"?"), m),  # Ed25519, other bytes
    ]
    return items, [1, 0, 0, 0, 0, 0, 1, 0]


def test_the_helper_answers_each_signature_in_order() -> None:
    items, expected = _items()
    requests = encode(items) + encode(items[:1]) + encode(items[::-1])
    out = io.BytesIO()
    serve(io.BytesIO(requests), out)
    reply = out.getvalue()
    n = len(items)
    assert reply == (
        n.to_bytes(4, "little") + bytes(expected)
        + (1).to_bytes(4, "little") + b"\x01"
        + n.to_bytes(4, "little") + bytes(expected[::-1])
    )  # fmt: skip


def test_a_request_out_of_shape_ends_the_helper_unanswered() -> None:
    items, _ = _items()
    good = encode(items[:1])
    body = good[HEAD.size :]
    check = checker()
    with pytest.raises(ValueError, match="more than its items"):
        answer(body + b"x", 1, check)
    with pytest.raises(ValueError, match="runs past"):
        answer(body, 2, check)
    for bad in (HEAD.pack(2, len(body)) + body, HEAD.pack(1, 1 << 30)):
        out = io.BytesIO()
        serve(io.BytesIO(good + bad + good), out)  # nothing after the bad one
        assert out.getvalue() == (1).to_bytes(4, "little") + b"\x01"


def test_the_helper_process_runs_below_its_node_ignores_ctrl_c_and_ends_with_its_input() -> None:
    items, expected = _items()
    with subprocess.Popen(
        [sys.executable, "-m", "aralnode.mesh.verify_helper"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            proc.stdin.write(encode(items))
            proc.stdin.flush()
            head = len(items).to_bytes(4, "little")
            assert proc.stdout.read(4 + len(items)) == head + bytes(expected)
            # It yields to its node's event loop (``NICE`` lower).
            ours = os.getpriority(os.PRIO_PROCESS, 0)
            assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, ours + NICE)
            proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C reaches the group
            proc.stdin.write(encode(items[:1]))
            proc.stdin.flush()
            assert proc.stdout.read(5) == (1).to_bytes(4, "little") + b"\x01"
            proc.stdin.close()
            assert proc.wait(10) == 0
        finally:
            proc.kill()


async def test_verdicts_come_back_in_order_across_helpers() -> None:
    items, expected = _items()
    v = Verifier(2)
    try:
        assert not v.available()  # the first call starts them
        assert await v.started()
        many = items * 40
        assert await v.check(many) == [bool(x) for x in expected * 40]
        assert await v.check(items[:1]) == [True]  # fewer items than helpers
    finally:
        await v.aclose()
    assert not v.available()


@pytest.mark.parametrize(
    "script",
    [
        "import sys; sys.stdin.buffer.read(8)",  # exits without an answer
        "import sys; sys.stdin.buffer.read(8); sys.stdout.buffer.write(b'\\x09\\0\\0\\0');"
        "sys.stdout.flush(); sys.stdin.buffer.read()",  # answers out of turn
    ],
    ids=["exits", "out-of-turn"],
)
async def test_a_helper_that_fails_leaves_its_work_to_the_node(script: str) -> None:
    me = Identity.generate()
    ring = KeyRing()
    ring.pin(me.public_key)
    msgs = [_signed(me, i) for i in range(20)]
    v = Verifier(1, command=[sys.executable, "-c", script])
    try:
        assert await v.started()
        with pytest.raises(VerifierGone):
            await v.check([(me.public_key.spki, b"x" * 64, b"y")])
        # What the receiver does with it: every message left to check in-process.
        assert not v.available()
        assert await checked_keys(v, ring, me.node_id, msgs) == [b""] * 20
    finally:
        await v.aclose()


async def test_a_helper_that_cannot_start_leaves_the_node_checking_itself() -> None:
    v = Verifier(2, command=["/nonexistent/python"])
    assert not await v.started()
    await v.aclose()


def _signed(me: Identity, i: int) -> pb.ARALMessage:
    content = pb.MessageContent(header=pb.Header(sender=me.node_id, message_id=f"m{i}"))
    raw = content.SerializeToString()
    return pb.ARALMessage(content=raw, signature=me.sign(pb.PAYLOAD_MESSAGE, raw))


async def test_checked_keys_name_the_key_only_where_the_signature_holds() -> None:
    me, other = Identity.generate(), Identity.generate()
    ring = KeyRing()
    ring.pin(me.public_key)
    good = _signed(me, 1)
    forged = _signed(me, 2)
    forged.signature.value = bytes(64)
    stranger = _signed(other, 3)  # not the peer's key: refused before any check
    unsigned = pb.ARALMessage(content=good.content)
    wrong_alg = _signed(me, 4)
    wrong_alg.signature.algorithm = "Ed25519"
    v = Verifier(1)
    try:
        assert await v.started()
        keys = await checked_keys(
            v, ring, me.node_id, [good, forged, stranger, unsigned, wrong_alg]
        )
    finally:
        await v.aclose()
    assert keys == [me.public_key.spki, b"", b"", b"", b""]
    assert pae(pb.PAYLOAD_MESSAGE, good.content).endswith(good.content)


@pytest.mark.parametrize("helpers", [0, 2])
async def test_a_large_hostile_batch_gets_the_same_errors_with_helpers_or_without(
    make_node: MakeNode, helpers: int
) -> None:
    node = make_node("target", keepalive_ms=2000, channel_verify_processes=helpers)
    async with node:
        hub = node.channels
        assert hub is not None
        assert await hub.receiver.helpers.started() is bool(helpers)
        me, s = await opened(node, window=128, max_batch=64)
        try:
            sub = node.subscribe()
            batch = [message(me, node, f"e{seq}", seq=seq) for seq in range(1, 41)]
            batch[4].signature.value = bytes(64)  # seq 5: right length, wrong signature
            batch[9] = message(Identity.generate(), node, "stranger", seq=10)
            batch[19].signature.value = batch[19].signature.value[:63]  # seq 20: too short
            batch[29].signature.algorithm = "Ed25519"  # seq 30: not the key's algorithm
            await s.send_sealed(encode_batch(1, [m.SerializeToString() for m in batch]))
            errors = (await s.next_of("errors")).errors.errors
            assert {e.seq: reason_of(e) for e in errors} == {
                5: "SIGNATURE_INVALID",
                10: "KEY_MISMATCH",
                20: "SIGNATURE_INVALID",
                30: "SIGNATURE_INVALID",
            }
            bad = {5, 10, 20, 30}
            events = [(await anext(sub)).event for _ in range(40 - len(bad))]
            assert events == [f"e{seq}" for seq in range(1, 41) if seq not in bad]
            assert node.pipeline.counters["channel.helper_checked"] == (36 if helpers else 0)
        finally:
            await s.aclose()


async def test_messages_keep_flowing_when_the_helpers_die(make_node: MakeNode) -> None:
    a = make_node("alpha", keepalive_ms=2000)
    b = make_node("beta", keepalive_ms=2000)
    got: list[Any] = []
    b.on_notification("n", lambda msg, tx: got.append(msg.data["i"]))
    async with a, b:
        await linked(a, b)
        assert a.channels is not None
        assert b.channels is not None
        helpers = b.channels.receiver.helpers
        assert await helpers.started()
        pids = helpers.pids
        assert len(pids) == 2
        for i in range(300):
            await a.notify(b.node_id, "n", {"i": i})
        assert await a.channels.flush(b.node_id, 30)
        checked = b.pipeline.counters["channel.helper_checked"]
        assert checked > 0
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for i in range(300, 600):
            await a.notify(b.node_id, "n", {"i": i})
        assert await a.channels.flush(b.node_id, 30)
        assert got == list(range(600))  # each once, in order: none lost
        assert not helpers.available()
    for pid in pids:  # reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_the_helpers_end_with_the_node(make_node: MakeNode) -> None:
    node = make_node("target")
    async with node:
        assert node.channels is not None
        helpers = node.channels.receiver.helpers
        assert await helpers.started()
        pids = helpers.pids
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # running
    assert helpers.pids == []
    for pid in pids:  # ended and reaped
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
