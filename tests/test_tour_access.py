"""The README's access tour, as a user runs it: the scoped agent
(``examples/weather.py``) served by ``aralnode run``, an API key made with
``aralnode apikey create``, and the same call with it from grpcurl (``-H``), plain
HTTP and the official MCP client; without the key, every door refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.test_grpcurl import GRPCURL, grpcurl
from tests.test_tls_cli import TIMEOUT, aralnode, start_run, stop_run

ROOT = Path(__file__).resolve().parent.parent
WEATHER = str(ROOT / "examples" / "weather.py")
CALL = {"call": {"capability": "weather.today", "parameters": {"city": "Lyon"}}}
INVOKE = "aral.v1.AgentNode/Invoke"


async def http_port_of(proc: asyncio.subprocess.Process) -> int:
    """The HTTP port ``aralnode run`` prints on its third line (REST: URL/docs …)."""
    assert proc.stdout is not None
    for _ in range(2):
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        if line.startswith("REST: "):
            return int(line.split()[1].rsplit(":", 1)[1].split("/", 1)[0])
    raise AssertionError("aralnode run printed no REST line")


async def mcp_call(port: int, headers: dict[str, str]) -> Any:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=10) as http,
        Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as c,
    ):
        return await c.call_tool("weather.today", {"city": "Lyon"})


@pytest.mark.slow
@pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed")
async def test_the_readme_access_tour(tmp_path: Path) -> None:
    data = tmp_path / "wx"
    rc, key, err = await aralnode(
        "apikey", "create", "--data-dir", str(data), "--principal", "alice",
        "--scopes", "weather:read",
    )  # fmt: skip
    assert rc == 0, err
    key = key.strip()
    assert key.startswith("aral_")
    proc, address = await start_run(
        "--name", "wx", "--data-dir", str(data), "--grpc-port", "0", "--http-port", "0",
        "--discovery", "none", "--load", WEATHER,
    )  # fmt: skip
    try:
        port = await http_port_of(proc)
        body = json.dumps(CALL)
        # grpcurl, the key as a bearer token.
        rc, out, err = await grpcurl(
            "-plaintext", "-H", f"authorization: Bearer {key}", "-d", body, address, INVOKE
        )
        assert rc == 0, err
        result = json.loads(out)["result"]["result"]
        assert result == {"city": "Lyon", "sky": "clear", "asked_by": "alice"}
        # Without it: no weather:read.
        rc, out, err = await grpcurl("-plaintext", "-d", body, address, INVOKE)
        assert rc != 0
        assert "PermissionDenied" in err or "PERMISSION_DENIED" in err, err
        assert "MISSING_SCOPE" in err or "weather:read" in err, err
        # Plain HTTP, the key in X-API-Key (as curl -H sends it).
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            r = await http.post("/v1/invoke", json=CALL, headers={"x-api-key": key})
            assert r.status_code == 200, r.text
            assert r.json()["result"]["result"]["asked_by"] == "alice"
            r = await http.post("/v1/invoke", json=CALL)
            assert r.status_code == 403
            assert r.json()["error"]["reason"] == "MISSING_SCOPE"
        # The official MCP client, with the key as its bearer token.
        result = await mcp_call(port, {"authorization": f"Bearer {key}"})
        assert not result.is_error
        assert result.structured_content == {"city": "Lyon", "sky": "clear", "asked_by": "alice"}
        refused = await mcp_call(port, {})
        assert refused.is_error
        assert "MISSING_SCOPE" in refused.content[0].text  # type: ignore[union-attr]
        # The CLI, as the same caller.
        rc, out, err = await aralnode(
            "call", "--node", address, "--api-key", key, "weather.today", '{"city": "Lyon"}'
        )
        assert rc == 0, err
        assert json.loads(out)["asked_by"] == "alice"
    finally:
        await stop_run(proc)
