"""What a running node shows the people and orchestrators who run it
(docs/observability.md): ``/metrics`` (``_metrics``), and the probes ``/healthz``
(live: the event loop answers) and ``/readyz`` (ready: both doors bound, the node
serving and not draining, discovery started, the audit log writable), beside
``grpc.health.v1`` on the gRPC port."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aralnode._metrics import Node as MetricsNode
from aralnode._metrics import attach_metrics

if TYPE_CHECKING:
    from aralnode import _proto as pb
    from aralnode._assembly import NodeParts


class Node(MetricsNode, Protocol):
    """What the probes read of a node (``aralnode.node.Node``)."""

    grpc_port: int
    http_port: int | None

    def status(self) -> pb.NodeStatus: ...


def readiness(node: Node, parts: NodeParts) -> dict[str, bool]:
    """Each condition of ``/readyz``, by name."""
    store = node.governing.audit_log
    return {
        "serving": node.status().state == "SERVING",
        "grpc": bool(node.grpc_port),
        "http": bool(node.http_port),
        "discovery": parts.discovery.started,
        "audit": store is None or store.failed is None,
    }


def install_operations(node: Node, parts: NodeParts) -> None:
    """Give the HTTP door its ``/metrics`` and probes (nothing without HTTP)."""
    http = parts.http
    if http is None:
        return
    http.metrics = attach_metrics(node)

    def live() -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", "state": node.status().state}

    def ready() -> tuple[int, dict[str, Any]]:
        checks = readiness(node, parts)
        ok = all(checks.values())
        return (200 if ok else 503), {"status": "ready" if ok else "not_ready", "checks": checks}

    http.probes = {"/healthz": live, "/readyz": ready}


__all__ = ["install_operations", "readiness"]
