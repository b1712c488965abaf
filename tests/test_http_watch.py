"""What an HTTP request costs the node besides its call: no task waits on each
request for its client to go, no timer runs for a head that came whole (issue 15,
the HTTP doors' regression), and a client that goes still ends its call on both
parsers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from aralnode import Node
from aralnode.bridge import _http
from tests.test_hostile_http import holding, mcp_drop, raw_post, send_and_drop


@pytest.fixture
def watch_tasks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts DisconnectWatch's fallback tasks (one per request, before)."""
    started: list[int] = []
    fallback = _http.DisconnectWatch._watch

    def counted(self: Any) -> Coroutine[Any, Any, None]:
        started.append(1)  # counted when made, whether or not the task ever runs
        return fallback(self)

    monkeypatch.setattr(_http.DisconnectWatch, "_watch", counted)
    return started


@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_rest_and_mcp_calls_start_no_watcher_task(
    make_node: Callable[..., Node], watch_tasks: list[int], parser: str
) -> None:
    node = make_node("watch", http_port=0, http_parser=parser)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(5):
                body = {"call": {"capability": "demo.echo", "parameters": {"text": "x"}}}
                response = await client.post("/v1/invoke", json=body)
                assert response.status_code == 200, response.text
        from mcp import Client  # the official client, over streamable HTTP

        async with Client(f"{base}/mcp") as mcp:
            result = await mcp.call_tool("demo.echo", {"text": "x"})
            assert not result.is_error
    assert watch_tasks == []


@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_a_call_ends_when_its_client_goes_on_either_parser(
    make_node: Callable[..., Node], watch_tasks: list[int], parser: str
) -> None:
    node = make_node("gone", http_port=0, http_parser=parser)
    started, cancelled = holding(node)
    async with node:
        port = node.http_port
        assert port is not None
        call = {"call": {"capability": "hold.forever"}}
        drops = {
            "rest": lambda: send_and_drop(port, raw_post(port, "/v1/invoke", call), started),
            "mcp": lambda: mcp_drop(port, started),
        }
        for door, drop in drops.items():
            started.clear()
            cancelled.clear()
            await drop()
            async with asyncio.timeout(10):
                await cancelled.wait()
            assert node.pipeline.in_flight == 0, door
    assert watch_tasks == []  # ended by the connection's own report


async def test_other_servers_get_the_watcher_task(watch_tasks: list[int]) -> None:
    """A receive that is no uvicorn cycle of ours (another ASGI server): the task."""
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def call() -> None:
        async with _http.DisconnectWatch(receive):
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await asyncio.sleep(0)  # let it enter the block
    gone.set()
    with pytest.raises(_http.ClientGone):
        async with asyncio.timeout(5):
            await task
    assert watch_tasks == [1]
