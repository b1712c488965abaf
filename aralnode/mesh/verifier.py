"""Signature checks in helper processes, for a receiver's large batches.

Checking a signature is the receiver's largest cost (ES256: about 65 µs a
message on the bench machine, three times signing one). Worker *threads* can run
checks in parallel, since a check releases the GIL; but each one takes the GIL
back, and those hand-offs cost the event loop's thread CPU of its own: with one
thread checking signatures beside it, a sender's CPU a message went from 47 to
59 µs; with a process checking them instead, it stayed at 45. A helper process
has an interpreter of its own, so there is no hand-off at all (docs/channels.md
has the figures of the channel as a whole).

The helpers are ``python -m aralnode.mesh.verify_helper`` (which says what they
do and their wire), started on first use: a node that never receives a large
batch starts none. They hold no secret and decide nothing but whether a
signature holds. The receiver still resolves the key (the key ring) and checks
the algorithm, and parses and checks every message itself; a signature a helper
refuses is checked again in-process, so its error is the usual one. A helper
that fails (it cannot start, exits, answers out of shape) ends the helpers for
the node's life and what it was given is checked in-process: nothing is lost
and nothing unchecked gets through.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from aralnode import _proto as pb
from aralnode._logs import get_logger
from aralnode.core.errors import AralError
from aralnode.core.identity import KeyRing, pae
from aralnode.mesh.verify_helper import COUNT, Item, encode

log = get_logger("aralnode.channel")
#: How long ``aclose`` waits for a helper to end once its input is closed.
CLOSE_SECONDS = 2.0


class VerifierGone(Exception):
    """A helper process failed; the work given to it must be checked elsewhere."""


class _Helper:
    """One helper process and the requests it has not answered yet (in order)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: collections.deque[tuple[int, asyncio.Future[bytes]]] = collections.deque()
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while True:
                (count,) = COUNT.unpack(await stdout.readexactly(COUNT.size))
                if not self.waiting or self.waiting[0][0] != count:
                    log.warning("a signature helper answered out of turn: it is stopped")
                    return
                answer = await stdout.readexactly(count)
                _, future = self.waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            if self.waiting:
                log.warning("a signature helper ended with work outstanding; checking in-process")
        finally:
            self.stop(kill=True)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done()

    def check(self, items: Sequence[Item]) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            future.set_exception(VerifierGone("the signature helper is gone"))
            return future
        self.waiting.append((len(items), future))
        stdin.write(encode(items))
        return future

    def stop(self, *, kill: bool = False) -> None:
        """Fail what it still owes and close its input (it ends when it reads that);
        ``kill``: end it now (it misbehaved). A signal by pid, not ``Process.kill``,
        which polls the child and would reap it before the event loop's watcher."""
        while self.waiting:
            _, future = self.waiting.popleft()
            if not future.done():
                future.set_exception(VerifierGone("the signature helper ended"))
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if kill and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)


class Verifier:
    """Up to ``processes`` helper processes, started on first use.

    ``available()`` is false until they run (its first call starts them), and for
    good once starting one failed, one died or ``close`` was called: the caller
    then checks in-process. ``check(items)`` splits ``items`` among the helpers and
    answers one flag per item (``True``: the signature holds); it raises
    ``VerifierGone`` if a helper failed meanwhile."""

    def __init__(self, processes: int, command: Sequence[str] = ()) -> None:
        self.processes = processes
        self.command = tuple(command) or (sys.executable, "-m", "aralnode.mesh.verify_helper")
        self._helpers: list[_Helper] = []
        self._starting: asyncio.Task[None] | None = None
        self.broken = processes <= 0

    def available(self) -> bool:
        """Whether the helpers run (the first call starts them)."""
        if self.broken:
            return False
        if self._helpers:
            if all(h.alive for h in self._helpers):
                return True
            self.close()  # one died: in-process from now on
            return False
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return False

    async def _start(self) -> None:
        helpers: list[_Helper] = []
        try:
            for _ in range(self.processes):
                proc = await asyncio.create_subprocess_exec(
                    *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                )
                helpers.append(_Helper(proc))
        except (OSError, ValueError) as exc:
            log.warning("no signature helper process (%s): checking in-process", exc)
            self.broken = True
        if self.broken:  # it failed, or the node closed it meanwhile
            for helper in helpers:
                helper.stop()
            self._helpers = helpers  # for aclose to reap
            return
        self._helpers = helpers

    @property
    def pids(self) -> list[int]:
        """The helpers' process ids (none before they start or after ``aclose``)."""
        return [helper.proc.pid for helper in self._helpers]

    async def started(self) -> bool:
        """``available()``, once the helpers it starts are running (or failed)."""
        if not self.available() and self._starting is not None:
            await asyncio.shield(self._starting)
        return self.available()

    async def check(self, items: Sequence[Item]) -> list[bool]:
        helpers = self._helpers
        size = -(-len(items) // len(helpers))
        parts = [
            helpers[i].check(items[at : at + size])
            for i, at in enumerate(range(0, len(items), size))
        ]
        answers = await asyncio.gather(*parts)
        return [flag == 1 for answer in answers for flag in answer]

    def close(self) -> None:
        self.broken = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        for helper in self._helpers:
            helper.stop()

    async def aclose(self) -> None:
        """``close``, then wait (bounded) for the helpers to end."""
        self.close()
        if self._starting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            try:
                async with asyncio.timeout(CLOSE_SECONDS):
                    await helper.proc.wait()
            except TimeoutError:
                helper.stop(kill=True)
                await helper.proc.wait()
            helper.reader.cancel()


def signed_item(keyring: KeyRing, peer: str, message: pb.ARALMessage) -> Item | None:
    """What a helper checks of ``message``'s signature; ``None`` if there is nothing
    to check there (no signature, or one the receiver refuses before checking it,
    and says why)."""
    if not message.HasField("signature"):
        return None
    signature = message.signature
    if signature.key_id != peer or len(signature.value) != 64:
        return None
    try:
        key = keyring.resolve(signature)
    except AralError:
        return None
    if signature.algorithm != key.algorithm:
        return None
    return key.spki, signature.value, pae(pb.PAYLOAD_MESSAGE, message.content)


async def checked_keys(
    verifier: Verifier, keyring: KeyRing, peer: str, messages: Sequence[pb.ARALMessage]
) -> list[bytes]:
    """For each of ``messages``, the public key (SPKI) a helper found its signature
    to hold for, or ``b""``: check it in-process (``open_message``'s
    ``verified_key``)."""
    keys = [b""] * len(messages)
    items: list[Item] = []
    at: list[int] = []
    for i, message in enumerate(messages):
        item = signed_item(keyring, peer, message)
        if item is not None:
            items.append(item)
            at.append(i)
    if items:
        try:
            held = await verifier.check(items)
        except VerifierGone:
            return keys
        for i, item, ok in zip(at, items, held, strict=True):
            if ok:
                keys[i] = item[0]
    return keys
