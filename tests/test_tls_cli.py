"""The mesh CA from the command line, and the real grpcurl and ``aralnode call``
against an mTLS node with ``-cacert/-cert/-key``."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from aralnode import Node, NodeConfig
from tests.conftest import DEMO
from tests.test_grpcurl import GRPCURL, grpcurl

ARALNODE = str(Path(sys.executable).parent / "aralnode")
TIMEOUT = 30.0
INVOKE = "aral.v1.AgentNode/Invoke"


async def aralnode(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        ARALNODE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def ca_issue(ca: Path, data: Path) -> dict[str, str]:
    rc, out, err = await aralnode(
        "ca", "issue", "--ca-dir", str(ca), "--data-dir", str(data), "--json"
    )
    assert rc == 0, err
    issued: dict[str, str] = json.loads(out)
    return issued


def tls_config(name: str, issued: dict[str, str], data: Path) -> NodeConfig:
    return NodeConfig(
        name=name,
        data_dir=data,
        host="127.0.0.1",
        grpc_port=0,
        http_port=None,
        discovery="none",
        tls_cert_file=Path(issued["tls_cert_file"]),
        tls_key_file=Path(issued["tls_key_file"]),
        tls_ca_file=Path(issued["tls_ca_file"]),
        tls_client_auth="require",
    )


class Mesh:
    """A CA and node certificates, all made with ``aralnode ca``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = root / "ca"
        self.issued: dict[str, dict[str, str]] = {}

    async def make(self, *names: str) -> None:
        rc, out, err = await aralnode("ca", "init", "--dir", str(self.ca))
        assert rc == 0, err
        assert "ca_cert" in out  # the table names what it wrote
        for name in names:
            self.issued[name] = await ca_issue(self.ca, self.root / name)

    def node(self, name: str) -> Node:
        return Node(tls_config(name, self.issued[name], self.root / name))


@pytest.fixture
async def mesh(tmp_path: Path) -> Mesh:
    made = Mesh(tmp_path)
    await made.make("a", "b", "tool")
    return made


def serve_echo(node: Node) -> list[int]:
    seen: list[int] = []

    @node.capability(id="echo")
    async def echo(value: int = 0) -> dict[str, int]:
        seen.append(value)
        return {"echo": value}

    return seen


@pytest.mark.slow
async def test_ca_cli_writes_the_files_and_a_private_ca_key(mesh: Mesh) -> None:
    assert stat.S_IMODE(os.stat(mesh.ca / "ca.key").st_mode) == 0o600
    issued = mesh.issued["a"]
    assert issued["uri_san"] == f"spiffe://aral.local/node/{issued['node_id']}"
    assert Path(issued["tls_cert_file"]) == mesh.root / "a" / "tls" / "node.crt"
    assert Path(issued["tls_key_file"]) == mesh.root / "a" / "identity.pem"
    rc, _, err = await aralnode("ca", "init", "--dir", str(mesh.ca))
    assert rc == 1
    assert "exists" in err  # a CA is never overwritten


@pytest.mark.slow
async def test_two_node_mesh_made_with_the_cli_exchanges_channel_messages(mesh: Mesh) -> None:
    a, b = mesh.node("a"), mesh.node("b")
    seen = serve_echo(b)
    async with b, a:
        await a.connect(b.address, expected_node_id=b.node_id)
        for i in range(5):
            assert await a.request(b.node_id, "echo", {"value": i}, timeout=TIMEOUT) == {"echo": i}
    assert seen == list(range(5))


@pytest.mark.slow
@pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed")
async def test_grpcurl_with_a_client_certificate_lists_and_calls(mesh: Mesh) -> None:
    b = mesh.node("b")
    seen = serve_echo(b)
    tool = mesh.issued["tool"]
    tls = [
        "-cacert",
        tool["tls_ca_file"],
        "-cert",
        tool["tls_cert_file"],
        "-key",
        tool["tls_key_file"],
    ]
    async with b:
        rc, out, err = await grpcurl(*tls, b.address, "list")
        assert rc == 0, err
        assert "aral.v1.AgentNode" in out.split()
        body = json.dumps({"call": {"capability": "echo", "parameters": {"value": 7}}})
        rc, out, err = await grpcurl(*tls, "-d", body, b.address, INVOKE)
        assert rc == 0, err
        assert json.loads(out)["result"]["result"] == {"echo": 7}
        # Without a client certificate: refused at the handshake, nothing runs.
        quick = ["-connect-timeout", "3"]
        rc, out, err = await grpcurl(
            *quick,
            "-cacert",
            tool["tls_ca_file"],
            "-d",
            body,
            b.address,
            "aral.v1.AgentNode/Invoke",
        )
        assert rc != 0
        rc, out, err = await grpcurl(*quick, "-plaintext", b.address, "list")
        assert rc != 0
    assert seen == [7]


@pytest.mark.slow
async def test_aralnode_call_with_cacert_cert_key(mesh: Mesh) -> None:
    b = mesh.node("b")
    seen = serve_echo(b)
    tool = mesh.issued["tool"]
    async with b:
        tls = ["--cacert", tool["tls_ca_file"], "--cert", tool["tls_cert_file"]]
        tls += ["--key", tool["tls_key_file"], "--node-id", b.node_id]
        rc, out, err = await aralnode(
            "call", "--node", b.address, *tls, "--json", "echo", '{"value": 4}'
        )
        assert rc == 0, err
        assert json.loads(out)["result"] == {"echo": 4}
        rc, _, err = await aralnode("call", "--node", b.address, "--timeout", "5", "echo", "{}")
        assert rc == 1  # plaintext to an mTLS node
    assert seen == [4]


async def start_run(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    """``aralnode run ARGS``; (the process, the gRPC address its first line names)."""
    proc = await asyncio.create_subprocess_exec(
        ARALNODE, "run", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
    if "serving gRPC on " not in line:
        proc.kill()
        _, err = await proc.communicate()
        raise AssertionError(f"node did not start: {line!r} {err.decode()}")
    return proc, line.split("serving gRPC on ", 1)[1].split()[0]


async def stop_run(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), TIMEOUT)


@pytest.mark.slow
async def test_two_aralnode_run_processes_form_an_mtls_mesh(mesh: Mesh) -> None:
    def flags(name: str) -> list[str]:
        issued = mesh.issued[name]
        return [
            "--name", name, "--data-dir", str(mesh.root / name), "--grpc-port", "0",
            "--http-port", "-1", "--load", DEMO, "--tls-cert", issued["tls_cert_file"],
            "--tls-ca", issued["tls_ca_file"], "--tls-client-auth", "require",
        ]  # fmt: skip

    tool = mesh.issued["tool"]
    tls = ["--cacert", tool["tls_ca_file"], "--cert", tool["tls_cert_file"]]
    tls += ["--key", tool["tls_key_file"]]
    b, b_at = await start_run(*flags("b"), "--discovery", "none")
    procs = [b]
    try:
        a, a_at = await start_run(*flags("a"), "--discovery", "static", "--peer", b_at)
        procs.append(a)
        b_id = mesh.issued["b"]["node_id"]
        # Another process's state that nothing announces: polled, bounded (20 s).
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            rc, out, err = await aralnode("peers", "--node", a_at, *tls, "--json")
            assert rc == 0, err
            peers = json.loads(out)
            if any(p["node_id"] == b_id and p["state"].endswith("CONNECTED") for p in peers):
                break
            assert asyncio.get_running_loop().time() < deadline, f"b never connected: {out}"
            await asyncio.sleep(0.2)  # noqa: sleep-ok - polls another process's peer table, bounded (20 s)
        rc, out, err = await aralnode("call", "--node", b_at, *tls, "demo.add", '{"a": 2, "b": 3}')
        assert rc == 0, err
        assert out.strip() == "5"
        # Through a, over its channel to b.
        args = ["--node", a_at, *tls, "--to", b_id, "demo.add", '{"a": 4, "b": 5}']
        rc, out, err = await aralnode("call", *args)
        assert rc == 0, err
        assert out.strip() == "9"
    finally:
        for proc in procs:
            await stop_run(proc)
