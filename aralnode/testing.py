"""Helpers for testing code that uses aralnode (the way ``trio.testing`` ships with trio).

- ``FixedClock``: a clock that moves only when told to.
- ``fixed_identity(seed)``: deterministic identity keys, so ids are stable across runs.
- ``node_pair()``: two started nodes on loopback, the first connected to the second.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from aralnode.config import NodeConfig
from aralnode.core.clock import FixedClock
from aralnode.core.identity import Identity, KeyAlgorithm
from aralnode.node import Node

__all__ = ["FixedClock", "fixed_identity", "node_pair"]

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def fixed_identity(seed: int, algorithm: KeyAlgorithm = KeyAlgorithm.ES256) -> Identity:
    """A deterministic identity for ``seed`` (never use outside tests)."""
    digest = hashlib.sha256(f"aralnode-test-key-{seed}".encode()).digest()
    if algorithm is KeyAlgorithm.ED25519:
        return Identity(ed25519.Ed25519PrivateKey.from_private_bytes(digest))
    scalar = int.from_bytes(digest, "big") % (_P256_ORDER - 1) + 1
    return Identity(ec.derive_private_key(scalar, ec.SECP256R1()))


@contextlib.asynccontextmanager
async def node_pair(
    setup: Callable[[Node], None] | None = None, **config: object
) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes on 127.0.0.1 (ports picked by the OS); ``a`` has connected to ``b``.

    ``setup`` runs on ``b`` before it starts (register capabilities there).
    """
    with tempfile.TemporaryDirectory(prefix="aralnode-test-") as tmp:
        base: dict[str, object] = {
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": None,
            "discovery": "none",
        }
        base.update(config)
        a = Node(NodeConfig(name="a", data_dir=Path(tmp) / "a", **base))  # type: ignore[arg-type]
        b = Node(NodeConfig(name="b", data_dir=Path(tmp) / "b", **base))  # type: ignore[arg-type]
        if setup is not None:
            setup(b)
        async with b, a:
            await a.connect(b.address, expected_node_id=b.node_id)
            yield a, b
