"""What the HTTP port refuses before a call reaches the pipeline is audited all the
same (from review: a made-up route, a body that does not parse, a foreign Host or
Origin, a scrape of /metrics without the read scope left no record), and a caller
the node refuses learns nothing of which paths exist."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import Node
from aralnode import _proto as pb
from aralnode.access.apikeys import ApiKeyStore
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify
from aralnode.transport.grpc_client import NodeClient


async def test_refusals_before_the_pipeline_are_audited_and_leak_no_route(
    make_node: Callable[..., Node],
) -> None:
    node = make_node(
        "locked-http", http_port=0, audit=True, allow_unsigned=False, deny_by_default=True
    )
    async with node:
        key, _ = ApiKeyStore(node.config.apikeys_path).create(
            "carol", scopes=["agent:invoke"], kind="user"
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            # Anonymous: a route that exists and one that does not answer alike.
            for path in ("/v1/status", "/v1/no-such-route"):
                r = await http.get(path)
                assert (r.status_code, r.json()["error"]["reason"]) == (401, "ANONYMOUS_REFUSED")
            me = {"x-api-key": key}
            asked = [
                (await http.get("/v1/no-such-route", headers=me), 404),
                (await http.post("/v1/invoke", content=b"{", headers=me), 400),
                # From an attack probe: an Invoke that names no call, or a call that
                # names no capability, was refused with no record.
                (await http.post("/v1/invoke", json={}, headers=me), 400),
                (await http.post("/v1/invoke", json={"call": {}}, headers=me), 400),
                (await http.get("/metrics", headers=me), 403),  # no agent:read
                (await http.get("/v1/status", headers={"host": "evil.example"}), 421),
                (await http.get("/v1/status", headers={"origin": "https://evil.example"}), 403),
            ]
            assert [r.status_code for r, _ in asked] == [status for _, status in asked]
            traces = [r.headers["x-trace-id"] for r, _ in asked]
        # gRPC's Invoke: refused before the pipeline, on record under its caller (an
        # anonymous one, which this node does not serve, as that).
        for metadata in ([("x-api-key", key)], []):
            async with NodeClient(node.address, metadata=metadata) as client:
                with pytest.raises(grpc.aio.AioRpcError):
                    await client.stub.Invoke(pb.InvokeRequest(), timeout=10)
    directory = node.config.resolved_data_dir / "audit"
    assert verify(directory, node.identity.public_key).problem is None
    records = [r for _, r in read_records(directory) if r.door == "rest"]
    refused = [(r.action, r.reason, r.caller) for r in records]
    assert refused == [
        ("aral.v1.AgentNode/GetStatus", "ANONYMOUS_REFUSED", ""),  # (the caller was not told)
        ("aral.http/rest", "ANONYMOUS_REFUSED", ""),
        ("aral.http/rest", "ROUTE_NOT_FOUND", "carol"),
        ("aral.v1.AgentNode/Invoke", "MALFORMED_MESSAGE", "carol"),
        ("aral.v1.AgentNode/Invoke", "MISSING_FIELD", "carol"),
        ("aral.v1.AgentNode/Invoke", "MISSING_FIELD", "carol"),
        ("aral.http/GET /metrics", "MISSING_SCOPE", "carol"),
        ("aral.http/rest", "HOST_NOT_ALLOWED", ""),
        ("aral.http/rest", "ORIGIN_NOT_ALLOWED", ""),
    ], refused
    everything = [r for _, r in read_records(directory)]
    on_grpc = [(r.action, r.reason, r.caller) for r in everything if r.door == "grpc"]
    assert on_grpc == [
        ("aral.v1.AgentNode/Invoke", "MISSING_FIELD", "carol"),
        ("aral.v1.AgentNode/Invoke", "ANONYMOUS_REFUSED", ""),
    ]
    # Each record carries the trace id its answer named.
    assert [r.trace_id for r in records[2:]] == traces


async def test_mcp_and_websocket_refusals_before_the_pipeline_are_on_record(
    make_node: Callable[..., Node],
) -> None:
    """From review: an MCP body with a member twice, and a WebSocket past the client's
    share, were refused with no record."""
    from tests.conftest import recorded

    node = make_node("mcp-ws-refusals", http_port=0, ws_max_connections_per_client=1)
    seen = recorded(node)
    async with node:
        base = f"127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=f"http://{base}") as http:
            r = await http.post(
                "/mcp",
                content=b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "id": 2}',
                headers={"content-type": "application/json",
                         "accept": "application/json, text/event-stream"},
            )  # fmt: skip
        assert r.json()["error"]["data"]["reason"] == "DUPLICATE_PARAMETER"
        async with connect(f"ws://{base}/ws"):
            with pytest.raises(InvalidStatus) as second:
                async with connect(f"ws://{base}/ws"):
                    pass
        assert second.value.response.status_code == 429
    refusals = [(r.door, r.action, r.reason) for r in seen if r.reason]
    assert refusals == [
        ("mcp", "aral.http/mcp", "DUPLICATE_PARAMETER"),
        ("ws", "aral.http/ws", "TOO_MANY_WEBSOCKETS"),
    ], refusals
    assert [r.trace_id for r in seen if r.door == "mcp"] == [r.headers["x-trace-id"]]
