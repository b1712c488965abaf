"""What a halted principal already has in flight (from an attack): a call of its that
waited for approval still ran when an approver said yes after the halt, and an open
server stream went on delivering items. A halt withdraws the principal's waiting
calls (``HALTED``), a call approved is checked for a halt before it runs, and a
stream checks before each item. An approved call's audit record names its approval
and approver, so the two records can be joined."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from aralnode import Node
from aralnode._assembly import import_spec
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.service.halts import PRINCIPAL
from aralnode.store.audit import read_records
from aralnode.transport.grpc_client import NodeClient
from tests.test_escalate import escalating, grpc_echo

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = import_spec(str(ROOT / "examples" / "library" / "server.py"))


async def test_a_halt_withdraws_the_principals_waiting_calls(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path) as s:
        call = grpc_echo(s.node, s.alice, 9)
        entry = await s.pending()
        async with NodeClient(s.node.address, metadata=[("x-api-key", s.alice)]) as client:
            with pytest.raises(AralError) as halted:
                await client.call("demo.halt", {})
        assert halted.value.reason == "GOVERNANCE_HALT"
        with pytest.raises(AralError) as withdrawn:
            await asyncio.wait_for(call, 20)
        assert (withdrawn.value.reason, withdrawn.value.status.name) == (
            "HALTED", "PERMISSION_DENIED",
        )  # fmt: skip
        assert s.queue.pending() == []
        late = await s.rest_decide(entry.id, "approve", s.ops)  # nothing left to approve
        assert late.status_code == 404


async def test_a_call_approved_for_a_principal_halted_meanwhile_does_not_run(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """The halt table can say so without the queue knowing (a halt loaded, another
    node's file): the approved call is checked again before it runs."""
    async with escalating(make_node, tmp_path) as s:
        call = grpc_echo(s.node, s.alice, 9)
        entry = await s.pending()
        halts = s.node.pipeline.stages.authenticate.halts
        assert halts is not None
        halts.listeners.clear()  # the queue is not told
        halts.halt("alice", PRINCIPAL, "test")
        assert s.queue.pending() == [entry]
        approved = await s.rest_decide(entry.id, "approve", s.ops)
        assert approved.status_code == 200
        with pytest.raises(AralError) as refused:
            await asyncio.wait_for(call, 20)
        assert refused.value.reason == "HALTED"


async def test_an_approved_calls_record_names_its_approval_and_approver(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with escalating(make_node, tmp_path, audit=True) as s:
        call = grpc_echo(s.node, s.alice, 9)
        entry = await s.pending()
        assert (await s.rest_decide(entry.id, "approve", s.ops)).status_code == 200
        assert (await asyncio.wait_for(call, 20))["echo"] == ["hi"] * 9
        directory = s.node.config.resolved_data_dir / "audit"
    records = [r for _, r in read_records(directory) if r.action == "demo.echo"]
    assert len(records) == 1
    assert {"escalation.approved", f"approval:{entry.id}", "approved_by:ops"} <= set(
        records[0].flags
    )


class Gated(LIBRARY.Library):  # type: ignore[name-defined,misc]
    """WatchShelf: one book, then one more each time ``more`` is set."""

    more: asyncio.Event

    async def WatchShelf(self, request: Any, ctx: CallContext) -> AsyncIterator[Any]:
        for n in range(1, 4):
            yield LIBRARY.lib.Book(shelf=request.shelf, id=n, title=f"book {n}")
            await self.more.wait()
            self.more.clear()


async def test_an_open_stream_stops_at_the_halt(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    servicer = Gated()
    servicer.more = asyncio.Event()

    def serve(node: Node) -> None:
        node.add_service(servicer, LIBRARY.lib)

    async with escalating(make_node, tmp_path, serve) as s:
        got = []
        async with grpc.aio.insecure_channel(s.node.address) as channel:
            watch = channel.unary_stream(
                "/library.v1.Library/WatchShelf",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=LIBRARY.lib.Book.FromString,
            )
            stream = watch(
                LIBRARY.lib.WatchShelfRequest(shelf="sci"), metadata=[("x-api-key", s.alice)]
            )
            got.append((await stream.read()).title)
            halts = s.node.pipeline.stages.authenticate.halts
            assert halts is not None
            halts.halt("alice", PRINCIPAL, "stop")
            servicer.more.set()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.read()
        assert ended.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert got == ["book 1"]
