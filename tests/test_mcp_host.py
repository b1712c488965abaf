"""One Host and Origin check for every HTTP door (from the attack probe: ``Host:
127.0.0.1``, ``localhost`` or ``LOCALHOST:<port>`` were served on REST but refused on
/mcp with the SDK's plain-text 421, unaudited). The port's guard decides for /mcp as
for REST: the same answers, in the node's error shape, on the audit log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from aralnode import Node
from aralnode.store.audit import read_records
from tests.test_hostile_mcp import ACCEPT, INIT

# (headers, status, reason); "{port}" is the node's HTTP port.
CASES: list[tuple[dict[str, str], int, str]] = [
    ({"Host": "127.0.0.1"}, 200, ""),
    ({"Host": "localhost"}, 200, ""),
    ({"Host": "LOCALHOST:{port}"}, 200, ""),
    ({"Host": "[::1]"}, 200, ""),
    ({"Host": "127.0.0.1:1"}, 200, ""),
    ({"Origin": "http://localhost"}, 200, ""),
    ({"Origin": "HTTP://LOCALHOST:3000"}, 200, ""),
    ({"Host": "rebind.example"}, 421, "HOST_NOT_ALLOWED"),
    ({"Host": "rebind.example:{port}"}, 421, "HOST_NOT_ALLOWED"),
    ({"Host": "127.0.0.1:80@evil.example"}, 421, "HOST_NOT_ALLOWED"),
    ({"Origin": "https://evil.example"}, 403, "ORIGIN_NOT_ALLOWED"),
    ({"Origin": "http://localhost.evil.example:3000"}, 403, "ORIGIN_NOT_ALLOWED"),
]


def refusal(r: httpx.Response) -> tuple[str, str]:
    """The node's error shape: its reason, and the trace id its headers name too."""
    error: dict[str, Any] = r.json()["error"]
    assert error["trace_id"] == r.headers["x-trace-id"]
    return error["reason"], error["trace_id"]


async def test_rest_and_mcp_take_and_refuse_the_same_hosts(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("one-host-check", http_port=0, audit=True)
    traces: list[tuple[str, str, str]] = []
    async with node:
        port = node.http_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for case, status, reason in CASES:
                headers = {k: v.format(port=port) for k, v in case.items()}
                rest = await http.get("/v1/status", headers=headers)
                mcp = await http.post("/mcp", json=INIT, headers={**ACCEPT, **headers})
                assert (rest.status_code, mcp.status_code) == (status, status), (headers, mcp.text)
                if status == 200:
                    assert mcp.json()["result"]["serverInfo"]["name"].startswith("aralnode-")
                    continue
                (rest_reason, rest_trace), (mcp_reason, mcp_trace) = refusal(rest), refusal(mcp)
                assert (rest_reason, mcp_reason) == (reason, reason), headers
                traces += [("rest", reason, rest_trace), ("mcp", reason, mcp_trace)]
    directory = node.config.resolved_data_dir / "audit"
    records = [r for _, r in read_records(directory) if r.reason.endswith("_NOT_ALLOWED")]
    assert [(r.door, r.action, r.caller) for r in records] == [
        (door, f"aral.http/{door}", "") for door, _, _ in traces
    ]
    assert [(r.door, r.reason, r.trace_id) for r in records] == traces
