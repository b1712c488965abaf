"""Rate-limit fairness: a client far over its quota must not cost another its share.

One node in a child process, with a per-address rate limit (``QUOTA``). Client 2,
from 127.0.0.2, calls ``/v1/invoke`` at half its quota, paced (open loop); first
alone, then while client 1, from 127.0.0.1, calls at ten times its own quota (and
gets 429 for nine calls in ten). Both phases in the same run, in the same process.

``access.ratelimit.fairness`` is client 2's served rate (200s per second) with client
1 hammering, over its served rate alone (target >= 0.90). The figures of client 1
say it was throttled: its served rate stays near the quota whatever it sends.

Run: ``python -m bench.access`` (about 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench._pace import open_loop
from bench._report import Report
from bench.bridge import HttpConn, _post

ROOT = Path(__file__).resolve().parent.parent
QUOTA = 50  # calls/s per address
SECONDS = 10.0  # per phase
POOL = 32  # keep-alive connections per client
BODY = json.dumps({"call": {"capability": "demo.echo", "parameters": {"text": "hi"}}}).encode()


async def _serve() -> None:
    from aralnode import Node, NodeConfig
    from aralnode._runtime import tune_for_serving

    with tempfile.TemporaryDirectory() as tmp:
        node = Node(
            NodeConfig(
                name="bench-access",
                host="127.0.0.1",
                grpc_port=0,
                http_port=0,
                discovery="none",
                data_dir=Path(tmp),
                max_concurrent=4096,
                rate_limit_per_address=f"{QUOTA}/s, burst {QUOTA // 5}",
            )
        )
        node.load(str(ROOT / "examples" / "demo.py"))
        async with node:
            tune_for_serving()
            print(node.http_port, flush=True)
            await node.wait_closed()


@contextlib.contextmanager
def _server() -> Iterator[int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.access", "serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"node did not start: {line!r}")
        yield int(line)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _From(HttpConn):
    """A keep-alive connection from a chosen loopback address."""

    def __init__(self, port: int, source: str) -> None:
        super().__init__(port)
        self.source = source

    async def open(self) -> _From:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", self.port, local_addr=(self.source, 0)
        )
        return self


class _Client:
    """Calls from one address at a fixed rate; counts what was served and refused."""

    def __init__(self, port: int, source: str) -> None:
        self.port, self.source = port, source
        self.pool: asyncio.Queue[_From] = asyncio.Queue()
        self.codes: dict[int, int] = {}
        self.raw = _post(port, "/v1/invoke", BODY)

    async def open(self) -> _Client:
        for _ in range(POOL):
            self.pool.put_nowait(await _From(self.port, self.source).open())
        return self

    def close(self) -> None:
        while not self.pool.empty():
            self.pool.get_nowait().close()

    async def call(self) -> None:
        conn = await self.pool.get()
        try:
            status, _, _ = await conn.request(self.raw)
        finally:
            self.pool.put_nowait(conn)
        self.codes[status] = self.codes.get(status, 0) + 1

    async def paced(self, rate: float, seconds: float) -> tuple[float, float]:
        """(calls sent per second, calls served per second) over ``seconds``."""
        self.codes = {}
        start = time.perf_counter()
        sent_rate, _ = await open_loop(self.call, rate, seconds)
        elapsed = time.perf_counter() - start
        return sent_rate, self.codes.get(200, 0) / elapsed


async def _measure(report: Report, port: int) -> None:
    steady = await _Client(port, "127.0.0.2").open()
    greedy = _Client(port, "127.0.0.1")
    try:
        _, alone = await steady.paced(QUOTA / 2, SECONDS)
        # Opened now: an idle keep-alive connection is closed by the server.
        await greedy.open()
        hammer = asyncio.ensure_future(greedy.paced(QUOTA * 10, SECONDS + 1.0))
        _, shared = await steady.paced(QUOTA / 2, SECONDS)
        greedy_sent, greedy_served = await hammer
        refused = greedy.codes.get(429, 0)
        other = {k: v for k, v in greedy.codes.items() if k not in (200, 429)}
        if other or set(steady.codes) - {200}:
            raise RuntimeError(f"unexpected answers: greedy {other}, steady {steady.codes}")
    finally:
        steady.close()
        greedy.close()
    report.add("access.ratelimit.steady_alone", alone, "calls/s")
    report.add("access.ratelimit.steady_shared", shared, "calls/s", baseline=alone)
    report.add("access.ratelimit.greedy_sent", greedy_sent, "calls/s")
    report.add("access.ratelimit.greedy_served", greedy_served, "calls/s", baseline=QUOTA)
    report.add("access.ratelimit.greedy_refused", refused, "calls")
    report.add("access.ratelimit.fairness", shared / alone, "ratio")
    report.section(
        "Rate-limit fairness",
        [
            f"Per-address limit {QUOTA}/s. Client 2 (127.0.0.2) at {QUOTA // 2}/s: "
            f"{alone:.1f} served/s alone, {shared:.1f} served/s while client 1 (127.0.0.1) "
            f"sent {greedy_sent:.0f}/s and was served {greedy_served:.1f}/s "
            f"({refused} refused with 429). Fairness {shared / alone:.3f} (target >= 0.90).",
        ],
    )


def run(report: Report) -> None:
    """Measure ``access.ratelimit.fairness`` (bounded: about 30 s)."""
    with _server() as port:
        asyncio.run(asyncio.wait_for(_measure(report, port), timeout=40))


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve())
    else:
        run(Report())
