"""Shared fixtures: nodes on loopback, port 0, throwaway data dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aralnode import Evaluator, Node, NodeConfig, _logs
from aralnode.core.audit import AuditRecord
from aralnode.discovery import DiscoveryBackend
from aralnode.service.auth import Authenticator

DEMO = str(Path(__file__).resolve().parent.parent / "examples" / "demo.py")


@pytest.fixture(autouse=True)
def _full_log_budgets() -> None:
    """Each test starts with the log throttle's budgets full (they are per process)."""
    _logs.reset()


@pytest.fixture
def make_node(tmp_path: Path) -> Callable[..., Node]:
    def make(
        name: str = "node",
        *,
        demo: bool = True,
        governance: Evaluator | None = None,
        backends: list[DiscoveryBackend] | None = None,
        tracer_provider: object = None,
        authenticator: Authenticator | None = None,
        **overrides: object,
    ) -> Node:
        cfg: dict[str, object] = {
            "name": name,
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": None,
            "discovery": "none",
            "data_dir": tmp_path / name,
        }
        cfg.update(overrides)
        node = Node(
            NodeConfig(**cfg),  # type: ignore[arg-type]
            governance=governance,
            backends=backends,
            tracer_provider=tracer_provider,
            authenticator=authenticator,
        )
        if demo:
            node.load(DEMO)
        return node

    return make


@pytest.fixture
async def demo_node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    node = make_node("demo")
    async with node:
        yield node


class _Kept:
    """An audit sink that keeps what it is given."""

    def __init__(self, into: list[AuditRecord]) -> None:
        self.write = into.append


def recorded(node: Node) -> list[AuditRecord]:
    """Every audit record ``node`` makes from now on, in order."""
    seen: list[AuditRecord] = []
    node.pipeline.stages.audit.sinks.append(_Kept(seen))
    return seen
