"""What an HTTP request costs the node besides its call: no task waits on each
request for its client to go, no timer runs for a head that came whole (issue 15,
the HTTP doors' regression), and a client that goes still ends its call on both
parsers."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from aralnode import Node
from aralnode.bridge import _http
from tests.test_hostile_http import (
    holding,
    mcp_drop,
    mcp_session,
    raw_post,
    send_and_drop,
    tool_call,
)


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

    entered = asyncio.Event()

    async def call() -> None:
        async with _http.DisconnectWatch(receive):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await asyncio.wait_for(entered.wait(), 5)
    gone.set()
    with pytest.raises(_http.ClientGone):
        async with asyncio.timeout(5):
            await task
    assert watch_tasks == [1]


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """One keep-alive response's body (content-length framed, as the doors send)."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


@pytest.fixture
def no_collector() -> Any:
    """The collector off while a test counts what only it would free."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


async def test_calls_leave_no_reference_cycles(
    make_node: Callable[..., Node], no_collector: None
) -> None:
    """A REST or MCP call leaves nothing only the cycle collector frees. The watcher
    task cancelled at every call's end left about 23 (REST) and 34 (MCP) objects in
    cycles per call (its CancelledError, traceback, frames): a young collection every
    few hundred calls, 7-15 ms each, which was the MCP open loop's p99 (7x the SDK's)."""
    node = make_node("cycles", http_port=0)
    async with node:
        port = node.http_port
        assert port is not None
        session = await mcp_session(port)
        rest = raw_post(port, "/v1/invoke", {"call": {"capability": "demo.echo",
                                                      "parameters": {"text": "x"}}})  # fmt: skip
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in range(240):  # the first 40 warm up (caches, schemas, the session)
                writer.write(rest)
                await _answer(reader)
                writer.write(raw_post(port, "/mcp", tool_call("demo.echo", {"text": "x"}, n + 1),
                                      session))  # fmt: skip
                assert b'"isError":false' in (await _answer(reader)).replace(b" ", b"")
                if n == 39:
                    gc.collect()
            cycles = gc.collect()
        finally:
            writer.close()
    assert cycles < 100, f"{cycles} objects in cycles after 200 REST and 200 MCP calls"
