"""A node in a child process, for attacks on it: its memory and open files, measured
from outside, and a probe that shows it still serves someone else.

A resource test runs the attack (bounded in count and time), then asserts that the
node's RSS and fd count stayed under a bound and that ``probe`` is answered: other
clients are still served. The probe waits with a timeout (liveness), never asserts
how fast. Used by the hostile tests; also a script: ``python tests/hostile.py
'{"max_concurrent": 8}'`` starts such a node and prints one JSON line with its
ports, pid and node id, then serves until stdin closes or it is signalled.

Usage::

    async with NodeProcess.running(tmp_path, max_concurrent=8) as node:
        before = node.rss()
        ...  # the attack
        assert node.rss() - before < 64 * MIB
        await node.probe()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
DEMO = str(ROOT / "examples" / "demo.py")
MIB = 1024 * 1024


class NodeProcess:
    """A running node process (``python tests/hostile.py CONFIG``)."""

    def __init__(self, proc: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.proc = proc
        self.info = info

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.info['grpc_port']}"

    @property
    def http_url(self) -> str:
        if self.info.get("http_port") is None:
            raise AssertionError("this node has no HTTP door (start it with http_port=0)")
        return f"http://127.0.0.1:{self.info['http_port']}"

    @property
    def node_id(self) -> str:
        return str(self.info["node_id"])

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, data_dir: Path, *, load: tuple[str, ...] = (DEMO,), **config: Any
    ) -> AsyncIterator[NodeProcess]:
        """Start a node with ``config`` (``NodeConfig`` fields; loopback, any ports,
        no discovery unless given) and stop it when done, killing it if it hangs."""
        settings = {
            "name": "target",
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": 0,
            "discovery": "none",
            "data_dir": str(data_dir),
            **config,
        }
        # The child imports this tree's package (a worktree's, not an installed one).
        path = os.pathsep.join(
            p for p in (str(ROOT), str(ROOT / "gen"), os.environ.get("PYTHONPATH")) if p
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE),
            json.dumps({"config": settings, "load": list(load)}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        node = cls(proc, {})
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise AssertionError(f"node process exited before serving ({await proc.wait()})")
            node.info = json.loads(line)
            yield node
        finally:
            await node.stop()

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not ended within 30 s; its exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode or 0

    def alive(self) -> bool:
        return self.proc.returncode is None

    def rss(self) -> int:
        """Resident memory now, in bytes (``/proc/PID/status`` VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for pid {self.pid}")

    def fds(self) -> int:
        """Open file descriptors now (sockets included)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    async def probe(self, *, timeout: float = 20.0) -> None:
        """An ordinary client is served: a gRPC Invoke of ``demo.echo``, and the same
        over REST when the node has an HTTP door. Raises if either is not answered
        within ``timeout`` (liveness, not speed) or answers wrongly."""
        from aralnode.core.identity import KeyRing
        from aralnode.transport.grpc_client import NodeClient

        async with NodeClient(self.grpc_address, keyring=KeyRing()) as client:
            got = await asyncio.wait_for(
                client.request("demo.echo", {"text": "probe"}, timeout=timeout, sign=False), timeout
            )
        assert got == {"text": "probe", "echo": ["probe"]}, got
        if self.info.get("http_port") is None:
            return
        import httpx

        async with httpx.AsyncClient(base_url=self.http_url, timeout=timeout) as http:
            reply = await http.post(
                "/v1/invoke",
                json={"call": {"capability": "demo.echo", "parameters": {"text": "probe"}}},
            )
        assert reply.status_code == 200, reply.text
        assert reply.json()["result"]["result"] == {"text": "probe", "echo": ["probe"]}, reply.text


async def _serve(spec: dict[str, Any]) -> None:
    from aralnode import Node, NodeConfig

    config = dict(spec["config"])
    config["data_dir"] = Path(config["data_dir"])
    node = Node(NodeConfig(**config))
    for module in spec.get("load", ()):
        node.load(module)
    async with node:
        print(
            json.dumps(
                {
                    "grpc_port": node.grpc_port,
                    "http_port": node.http_port,
                    "node_id": node.node_id,
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)
        # Also end when the test that started us goes away (stdin closes).
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        eof = asyncio.ensure_future(reader.read())
        waiter = asyncio.ensure_future(done.wait())
        await asyncio.wait({eof, waiter}, return_when=asyncio.FIRST_COMPLETED)
        eof.cancel()
        waiter.cancel()


if __name__ == "__main__":
    asyncio.run(_serve(json.loads(sys.argv[1])))
