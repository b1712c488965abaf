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
the algorithm and length, and parses and checks every message itself; a
signature a helper refuses gets the error an in-process check gives. When a helper
fails (it exits, answers out of turn or not within ``CHECK_SECONDS``) the helpers
are ended, and their work, like a request too large for the wire, is checked on
worker threads: nothing is lost and nothing unchecked gets through. New helpers
start ``RETRY_SECONDS`` later (twice as long after each failure in a row, at most
``RETRY_MAX_SECONDS``), and so do they when they cannot start again; helpers that
could never start here are not tried again.

The helper is started with ``-P`` (the working directory is not on its import
path, so a package there cannot stand in for it) in a session of its own (a
terminal's Ctrl-C is for the node, which ends it), and not at all from a frozen
or embedded interpreter, whose ``sys.executable`` is not a plain Python.
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
from aralnode.mesh.verify_helper import COUNT, MAX_REQUEST_BYTES, Item, encode

log = get_logger("aralnode.channel")
#: How long ``aclose`` waits for a helper to end once it was told to.
CLOSE_SECONDS = 2.0
#: A request answered later than this plus ``CHECK_ITEM_SECONDS`` an item means a
#: helper that hangs (stopped, starved, wedged): it is ended (see the module doc).
CHECK_SECONDS = 10.0
CHECK_ITEM_SECONDS = 0.002
#: After helpers failed, new ones start this long later (the node checks
#: in-process meanwhile), twice as long after each failure in a row ...
RETRY_SECONDS = 30.0
#: ... up to this.
RETRY_MAX_SECONDS = 600.0


class VerifierGone(Exception):
    """The helpers cannot check this request (one failed, or it is too large); the
    work must be checked elsewhere."""


class _Helper:
    """One helper process and the requests it has not answered yet (in order)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.waiting: collections.deque[tuple[int, asyncio.Future[bytes]]] = collections.deque()
        self.closing = False
        # A process handle that cannot be mistaken for a later process of the same
        # pid (once this one is reaped); plain ``os.kill`` where there is none.
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(proc.pid)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            while True:
                (count,) = COUNT.unpack(await stdout.readexactly(COUNT.size))
                if not self.waiting or self.waiting[0][0] != count:
                    if not self.closing:
                        log.warning("a signature helper answered out of turn: it is stopped")
                        self.signal(signal.SIGKILL)
                    return
                answer = await stdout.readexactly(count)
                _, future = self.waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            if self.waiting and not self.closing:
                log.warning("a signature helper ended with work outstanding")
        finally:
            self.stop()

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done() and not self.closing

    def check(self, request: bytes, count: int) -> asyncio.Future[bytes]:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing() or not self.alive:
            future.set_exception(VerifierGone("the signature helper is gone"))
            return future
        self.waiting.append((count, future))
        stdin.write(request)
        return future

    async def drain(self) -> None:
        """Wait while the pipe to the helper is full (its buffer stays bounded)."""
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            with contextlib.suppress(ConnectionError):
                await stdin.drain()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self.proc.returncode is None:
                os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """Fail what it still owes; tell it to end (its work is no longer wanted)."""
        self.closing = True
        while self.waiting:
            _, future = self.waiting.popleft()
            if not future.done():
                future.set_exception(VerifierGone("the signature helper ended"))
        if self.proc.returncode is None:
            self.signal(signal.SIGTERM)
        if self.proc.stdin is not None:
            self.proc.stdin.close()

    def release(self) -> None:
        self.reader.cancel()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Verifier:
    """Up to ``processes`` helper processes, started on first use.

    ``available()`` is false until they run (its first call starts them); false
    for good once the first start failed or ``close`` was called; and false for a
    while once one died or hung, or new ones could not start (``RETRY_SECONDS``,
    doubling): the caller then checks in-process, and the first call after that
    starts new helpers.
    ``check(items)`` splits ``items`` among the helpers and answers one flag per
    item (``True``: the signature holds); it raises ``VerifierGone`` when they
    cannot answer it."""

    def __init__(
        self,
        processes: int,
        command: Sequence[str] = (),
        *,
        check_seconds: float = CHECK_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self.processes = processes
        self.command = tuple(command) or (
            sys.executable, "-P", "-m", "aralnode.mesh.verify_helper",
        )  # fmt: skip
        self.check_seconds = check_seconds
        self.retry_seconds = retry_seconds
        self._retry_in = retry_seconds
        self._retry_at: float | None = None  # (the loop's clock) when helpers failed
        self.restarts = 0  # sets of helpers started after one failed
        self._helpers: list[_Helper] = []
        self._ending: set[asyncio.Task[None]] = set()  # failed helpers being reaped
        self._starting: asyncio.Task[None] | None = None
        self.broken = processes <= 0 or (not command and _not_plain_python())

    @property
    def pids(self) -> list[int]:
        """The helpers' process ids (none before they start or after ``aclose``)."""
        return [helper.proc.pid for helper in self._helpers]

    def available(self) -> bool:
        """Whether the helpers run (the first call starts them)."""
        if self.broken:
            return False
        if self._helpers:
            if all(h.alive for h in self._helpers):
                return True
            self._failed("a signature helper ended")
            return False
        if self._retry_at is not None:
            if asyncio.get_running_loop().time() < self._retry_at:
                return False
            self._retry_at, self._starting = None, None
            self.restarts += 1
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return False

    def _failed(self, why: str) -> None:
        """The helpers are ended (their work goes back to the caller) and reaped;
        new ones start after the back-off, which doubles until they serve."""
        helpers, self._helpers = self._helpers, []
        for helper in helpers:
            helper.stop()
            task = asyncio.ensure_future(_reap(helper))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
        delay = self._retry_in
        self._retry_in = min(delay * 2, max(RETRY_MAX_SECONDS, self.retry_seconds))
        self._retry_at = asyncio.get_running_loop().time() + delay
        log.warning("%s: checking signatures in-process, new helpers in %.0f s", why, delay)

    async def _start(self) -> None:
        started: list[_Helper] = []
        again: Exception | None = None
        try:
            for _ in range(self.processes):
                proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    start_new_session=True,
                )
                started.append(_Helper(proc))
        except Exception as exc:
            if self.restarts:  # they ran here before: a passing want (processes, memory)
                again = exc
            else:  # no helper here (no executable, no child watcher…)
                log.warning("no signature helper process (%r): checking in-process", exc)
                self.broken = True
        finally:  # also when cancelled (closed meanwhile): aclose reaps them
            self._helpers = started
            if self.broken:
                for helper in started:
                    helper.stop()
        if again is not None:
            self._failed(f"new signature helpers could not start ({again!r})")

    async def started(self) -> bool:
        """``available()``, once the helpers it starts are running (or failed)."""
        if not self.available() and self._starting is not None:
            await asyncio.wait({self._starting})
        return self.available()

    async def check(self, items: Sequence[Item]) -> list[bool]:
        helpers = self._helpers
        if not helpers or self.broken:
            raise VerifierGone("no signature helper runs")
        size = -(-len(items) // len(helpers))
        parts = [items[at : at + size] for at in range(0, len(items), size)]
        requests = [encode(part) for part in parts]
        if any(len(r) > MAX_REQUEST_BYTES for r in requests):
            raise VerifierGone("the batch is too large for a signature helper")
        futures = [
            helpers[i].check(request, len(part))
            for i, (request, part) in enumerate(zip(requests, parts, strict=True))
        ]
        try:
            async with asyncio.timeout(self.check_seconds + CHECK_ITEM_SECONDS * len(items)):
                for helper in helpers[: len(futures)]:
                    await helper.drain()
                answers = await asyncio.gather(*futures)
        except TimeoutError:
            self._failed("a signature helper did not answer in time")
            raise VerifierGone("a signature helper did not answer in time") from None
        self._retry_in = self.retry_seconds  # they serve: a later failure waits the least
        return [flag == 1 for answer in answers for flag in answer]

    def close(self) -> None:
        """From now on the node checks in-process; the helpers are told to end."""
        self.broken = True
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        for helper in self._helpers:
            helper.stop()

    async def aclose(self) -> None:
        """``close``, then wait (bounded) for the helpers to end."""
        self.close()
        if self._starting is not None:
            await asyncio.wait({self._starting})
        helpers, self._helpers = self._helpers, []
        await asyncio.gather(*(_reap(helper) for helper in helpers), *self._ending)


async def _reap(helper: _Helper) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await helper.proc.wait()
    except TimeoutError:
        helper.signal(signal.SIGKILL)
        await helper.proc.wait()
    helper.release()


def _not_plain_python() -> bool:
    """A frozen or embedded interpreter: ``sys.executable`` is not a Python to run."""
    return bool(getattr(sys, "frozen", False)) or not sys.executable


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


Checked = tuple[bytes, bool] | None


async def checked(
    verifier: Verifier, keyring: KeyRing, peer: str, messages: Sequence[pb.ARALMessage]
) -> list[Checked] | None:
    """For each of ``messages``, the key (SPKI) a helper checked its signature
    against and whether it held, or ``None`` (nothing a helper could check:
    ``open_message`` sees to it); ``None`` for all if the helpers could not
    answer (the caller checks them itself)."""
    out: list[Checked] = [None] * len(messages)
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
            return None
        for i, item, ok in zip(at, items, held, strict=True):
            out[i] = (item[0], ok)
    return out
