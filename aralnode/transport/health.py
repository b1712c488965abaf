"""``grpc.health.v1.Health`` (Check, Watch, List) on the stock proto and stubs.

Unlike grpcio-health-checking's servicer, a Watch stream here *ends* (with OK) once
graceful shutdown has been announced and NOT_SERVING written: peers that follow our
health learn we are draining, and their open Watch streams do not hold the server's
drain for the whole grace period.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# HealthCheckResponse.ServingStatus values (grpcio-health-checking ships no type hints).
ServingStatus = int
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped base
    """Serving status per service name ("" is the whole server)."""

    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": SERVING}
        self._changed = asyncio.Event()
        self.shutting_down = False

    def status(self, service: str = "") -> ServingStatus | None:
        return self._status.get(service)

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set a service's status; ignored once shutdown has been announced."""
        if not self.shutting_down:
            self._update(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good; Watch streams end after saying so."""
        if self.shutting_down:
            return
        self.shutting_down = True
        for service in list(self._status):
            self._status[service] = NOT_SERVING
        self._notify()

    def _update(self, service: str, status: ServingStatus) -> None:
        if self._status.get(service) != status:
            self._status[service] = status
            self._notify()

    def _notify(self) -> None:
        # Wake every watcher, then arm a fresh event for the next change.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service, status in self._status.items():
            response.statuses[service].status = status
        return response

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last: ServingStatus | None = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self.shutting_down:
                return
            await changed.wait()
