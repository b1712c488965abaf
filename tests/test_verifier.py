"""Signature checks in helper processes (``aralnode.mesh.verifier``): the same
verdicts as in-process, in order, and nothing unchecked or lost when a helper
fails."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aralnode import Node
from aralnode import _proto as pb
from aralnode.core.channel import encode_batch
from aralnode.core.envelope import open_message
from aralnode.core.errors import SignatureInvalid
from aralnode.core.identity import Identity, KeyAlgorithm, KeyRing
from aralnode.mesh.verifier import Verifier, VerifierGone, checked
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
    p384 = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
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
        (p384, es.sign_raw(m), m),  # a curve no node key is on
    ]
    return items, [1, 0, 0, 0, 0, 0, 1, 0, 0]


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
    rng = random.Random(7)
    picks = [[rng.randrange(len(items)) for _ in range(n)] for n in (161, 3, 97)]
    v = Verifier(2)
    try:
        assert not v.available()  # the first call starts them
        assert await v.started()
        assert len(v.pids) == 2
        answers = await asyncio.gather(*(v.check([items[i] for i in p]) for p in picks))
        for p, got in zip(picks, answers, strict=True):
            assert got == [bool(expected[i]) for i in p]
        assert await v.check(items[:1]) == [True]  # fewer items than helpers
    finally:
        await v.aclose()
    assert not v.available()
    assert v.pids == []


@pytest.mark.parametrize(
    "script",
    [
        "import sys; sys.stdin.buffer.read(8)",  # exits without an answer
        "import sys; sys.stdin.buffer.read(8); sys.stdout.buffer.write(b'\\x09\\0\\0\\0');"
        "sys.stdout.flush(); sys.stdin.buffer.read()",  # answers out of turn
        "import sys; sys.stdin.buffer.read(8); sys.stdin.buffer.read()",  # hangs
    ],
    ids=["exits", "out-of-turn", "hangs"],
)
async def test_a_helper_that_fails_leaves_its_work_to_the_node(script: str) -> None:
    me = Identity.generate()
    ring = KeyRing()
    ring.pin(me.public_key)
    msgs = [_signed(me, i) for i in range(20)]
    v = Verifier(1, command=[sys.executable, "-c", script], check_seconds=0.5)
    try:
        assert await v.started()
        with pytest.raises(VerifierGone):
            await v.check([(me.public_key.spki, b"x" * 64, b"y")])
        # What the receiver does then: it checks every message itself.
        assert not v.available()
        assert await checked(v, ring, me.node_id, msgs) is None
    finally:
        await v.aclose()


async def test_helpers_that_died_are_started_again_after_the_back_off() -> None:
    """A helper killed (the OOM killer, an operator): the node checks in-process, and
    once the back-off is over (0 here; 30 s by default, doubling) new helpers serve."""
    me = Identity.generate()
    ring = KeyRing()
    ring.pin(me.public_key)
    msgs = [_signed(me, i) for i in range(20)]
    item = (me.public_key.spki, b"x" * 64, b"y")
    v = Verifier(2, retry_seconds=0)
    try:
        assert await v.started()
        first = v.pids
        os.kill(first[0], signal.SIGKILL)
        with pytest.raises(VerifierGone):  # what it owed, or what it is sent, fails
            await v.check([item] * 4)
        assert not v.available()  # ended (and being reaped); new ones start next
        assert await v.started()
        assert v.restarts == 1
        assert set(v.pids).isdisjoint(first)
        spki = me.public_key.spki
        assert await checked(v, ring, me.node_id, msgs) == [(spki, True)] * len(msgs)
    finally:
        await v.aclose()
    for pid in first:  # the first helpers were reaped too
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_helpers_that_cannot_start_again_are_tried_again_later() -> None:
    """Helpers that ran here once and then cannot start (out of processes, of memory)
    are a passing want: the node checks in-process and tries again after the back-off;
    only a first start that fails gives them up."""
    v = Verifier(1, retry_seconds=0)
    try:
        assert await v.started()
        (pid,) = v.pids
        command, v.command = v.command, ("/nonexistent/python",)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(VerifierGone):
            await v.check([(b"k", b"x" * 64, b"y")] * 4)
        assert not await v.started()  # ended; new helpers are on their way ...
        assert not await v.started()  # ... could not start; more are on their way ...
        assert not v.broken  # ... for that is not the end of them
        v.command = command  # the want has passed
        assert await v.started()
        assert v.restarts == 2
    finally:
        await v.aclose()


async def test_helpers_that_keep_failing_wait_longer_each_time() -> None:
    exits = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(8)"]
    v = Verifier(1, command=exits, retry_seconds=100.0)
    try:
        assert await v.started()
        with pytest.raises(VerifierGone):
            await v.check([(b"k", b"x" * 64, b"y")])
        assert not v.available()  # within its back-off: no new helper yet
        assert v.pids == []
        assert v.restarts == 0
        assert v._retry_in == 200.0  # the next failure in a row waits twice as long
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


async def test_checked_names_the_key_and_the_verdict_of_each_signature() -> None:
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
        batch = [good, forged, stranger, unsigned, wrong_alg]
        found = await checked(v, ring, me.node_id, batch)
    finally:
        await v.aclose()
    spki = me.public_key.spki
    assert found == [(spki, True), (spki, False), None, None, None]


def test_a_verdict_counts_only_for_the_key_it_was_made_with() -> None:
    """``open_message(checked=...)``: a helper's verdict for another key is no
    verdict (the signature is checked); a "no" is the usual error; the form of the
    signature is checked whatever the verdict."""
    me, other = Identity.generate(), Identity.generate()
    ring = KeyRing()
    ring.pin(me.public_key)
    forged = _signed(me, 1)
    forged.signature.value = bytes(64)
    opened = functools.partial(open_message, keyring=ring, replay=None, require_signature=True)
    with pytest.raises(SignatureInvalid, match="does not verify"):
        opened(forged, checked=(other.public_key.spki, True))  # checked here: refused
    with pytest.raises(SignatureInvalid, match="does not verify"):
        opened(_signed(me, 2), checked=(me.public_key.spki, False))
    short = _signed(me, 3)
    short.signature.value = short.signature.value[:63]
    with pytest.raises(SignatureInvalid, match="64 bytes"):
        opened(short, checked=(me.public_key.spki, True))


@pytest.mark.parametrize("helpers", ["threads", "processes", "frozen"])
async def test_a_large_hostile_batch_gets_the_same_errors_with_helpers_or_without(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch, helpers: str
) -> None:
    if helpers == "frozen":  # a frozen interpreter starts no helper: threads check
        monkeypatch.setattr(sys, "frozen", True, raising=False)
    processes = 0 if helpers == "threads" else 2
    node = make_node("target", keepalive_ms=2000, channel_verify_processes=processes)
    async with node:
        hub = node.channels
        assert hub is not None
        assert await hub.receiver.helpers.started() is (helpers == "processes")
        me, s = await opened(node, window=128, max_batch=64)
        try:
            sub = node.subscribe()
            batch = [message(me, node, f"e{seq}", seq=seq) for seq in range(1, 41)]
            batch[4].signature.value = bytes(64)  # seq 5: right length, wrong signature
            batch[9] = message(Identity.generate(), node, "stranger", seq=10)
            batch[14].content = message(me, node, "changed", seq=15).content  # seq 15
            batch[19].signature.value = batch[19].signature.value[:63]  # seq 20: too short
            batch[29].signature.algorithm = "Ed25519"  # seq 30: not the key's algorithm
            await s.send_sealed(encode_batch(1, [m.SerializeToString() for m in batch]))
            errors = (await s.next_of("errors")).errors.errors
            assert {e.seq: reason_of(e) for e in errors} == {
                5: "SIGNATURE_INVALID",
                10: "KEY_MISMATCH",
                15: "SIGNATURE_INVALID",
                20: "SIGNATURE_INVALID",
                30: "SIGNATURE_INVALID",
            }
            bad = {5, 10, 15, 20, 30}
            events = [(await anext(sub)).event for _ in range(40 - len(bad))]
            assert events == [f"e{seq}" for seq in range(1, 41) if seq not in bad]
            # The helpers saw all but the three refused before any check.
            expected = 37 if helpers == "processes" else 0
            assert node.pipeline.counters["channel.helper_checked"] == expected
        finally:
            await s.aclose()


def _children() -> set[int]:
    """This process's live children."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out |= {int(pid) for pid in f.read().split()}
    return out


@pytest.mark.parametrize("when", ["at-once", "once-started"])
async def test_closing_the_helpers_while_they_start_leaves_none_behind(when: str) -> None:
    before = _children()
    v = Verifier(2)
    assert not v.available()  # starting
    if when == "once-started":
        assert await v.started()
    await v.aclose()
    assert v.pids == []
    assert _children() <= before


async def test_closing_with_work_outstanding_ends_the_helpers_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hangs = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(8); sys.stdin.buffer.read()"]
    items, _ = _items()
    v = Verifier(2, command=hangs)
    assert await v.started()
    pending = [asyncio.ensure_future(v.check(items)) for _ in range(3)]
    await asyncio.wait(pending, timeout=0)  # (one turn: the requests are written)
    with caplog.at_level(logging.WARNING, logger="aralnode.channel"):
        await v.aclose()
    for task in pending:
        with pytest.raises(VerifierGone):
            await task
    assert not caplog.records  # a shutdown, not a failure
    assert v.pids == []


async def test_a_package_in_the_working_directory_cannot_stand_in_for_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "aralnode" / "mesh"
    fake.mkdir(parents=True)
    (tmp_path / "aralnode" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "verify_helper.py").write_text(
        "import struct, sys\n"
        "while head := sys.stdin.buffer.read(8):\n"
        "    count, size = struct.unpack('<II', head)\n"
        "    sys.stdin.buffer.read(size)\n"
        "    sys.stdout.buffer.write(head[:4] + b'\\x01' * count)\n"
        "    sys.stdout.flush()\n"
    )
    monkeypatch.chdir(tmp_path)
    items, expected = _items()
    v = Verifier(1)
    try:
        assert await v.started()
        assert await v.check(items) == [bool(x) for x in expected]  # the real one
    finally:
        await v.aclose()


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
