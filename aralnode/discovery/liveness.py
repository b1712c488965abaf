"""Following verified peers' health: ``grpc.health.v1`` Watch plus a Check every
keepalive.

A draining peer says NOT_SERVING on its Watch at once (a goodbye better
authenticated than mDNS's); a silent one fails its Check. What a follower learns it
reports (``report(node_id, status, reason)``); the supervisor decides what it means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aralnode.core.peers import PeerState, PeerTable
from aralnode.transport.grpc_client import NodeClient

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
UNREACHABLE = "UNREACHABLE"

Report = Callable[[str, str, str], None]


async def check(client: NodeClient, *, timeout: float) -> tuple[str, str]:
    """One health Check: (status, reason)."""
    stub = health_pb2_grpc.HealthStub(client.channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    except grpc.aio.AioRpcError as err:
        return UNREACHABLE, err.code().name
    return status_name(response.status), ""


def status_name(status: int) -> str:
    """SERVING, NOT_SERVING (a draining aralnode: a goodbye), or the other status's
    own name (UNKNOWN, SERVICE_UNKNOWN: unhealthy, not gone)."""
    if status == health_pb2.HealthCheckResponse.SERVING:
        return SERVING
    if status == health_pb2.HealthCheckResponse.NOT_SERVING:
        return NOT_SERVING
    name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return name


class HealthFollowers:
    """One follower task per verified peer.

    Args:
        owns: Whether ``client`` is still the peer's current client (a follower of a
            replaced or released client stops by itself).
    """

    def __init__(
        self,
        *,
        keepalive: float,
        table: PeerTable,
        owns: Callable[[str, NodeClient], bool],
        report: Report,
    ) -> None:
        self.keepalive = keepalive
        self.table = table
        self.owns = owns
        self.report = report
        self._followers: dict[str, tuple[NodeClient, asyncio.Task[None]]] = {}

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._followers

    def follow(self, node_id: str, client: NodeClient) -> None:
        current = self._followers.get(node_id)
        if current is not None:
            if current[0] is client:
                return
            current[1].cancel()
        task = asyncio.ensure_future(self._follower(node_id, client))
        self._followers[node_id] = (client, task)
        task.add_done_callback(lambda t: self._forget(node_id, t))

    def _forget(self, node_id: str, task: asyncio.Task[None]) -> None:
        current = self._followers.get(node_id)
        if current is not None and current[1] is task:
            del self._followers[node_id]

    def cancel(self, node_id: str) -> None:
        follower = self._followers.pop(node_id, None)
        if follower is not None:
            follower[1].cancel()

    async def stop(self) -> None:
        tasks = [task for _, task in self._followers.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._followers.clear()

    async def _follower(self, node_id: str, client: NodeClient) -> None:
        watch: asyncio.Task[None] | None = None
        try:
            while self.owns(node_id, client):
                peer = self.table.get(node_id)
                if (
                    (watch is None or watch.done())
                    and peer is not None
                    and peer.state is PeerState.CONNECTED
                ):
                    watch = asyncio.ensure_future(self._watch(node_id, client))
                await asyncio.sleep(self.keepalive)
                status, reason = await check(client, timeout=self.keepalive)
                if not self.owns(node_id, client):
                    return
                self.report(node_id, status, reason)
        finally:
            if watch is not None:
                watch.cancel()

    async def _watch(self, node_id: str, client: NodeClient) -> None:
        stub = health_pb2_grpc.HealthStub(client.channel)
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        try:
            async for response in call:
                if not self.owns(node_id, client):
                    return
                status = status_name(response.status)
                self.report(node_id, status, "")
                if status != SERVING:
                    # It is draining: stop holding a stream open on it.
                    return
        except grpc.aio.AioRpcError as err:
            if self.owns(node_id, client) and err.code() is not grpc.StatusCode.CANCELLED:
                self.report(node_id, UNREACHABLE, err.code().name)
        finally:
            call.cancel()


__all__ = ["NOT_SERVING", "SERVING", "UNREACHABLE", "HealthFollowers", "check", "status_name"]
