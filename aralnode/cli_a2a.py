"""``aralnode call --a2a CARD_URL SKILL [JSON]``: call an A2A agent by its Agent Card.

The call is a send of a node started in this process for it (loopback only, no
HTTP port, no discovery), so the node's rules apply as to every send: its policy
(``--policy``) judges it and, with ``--audit``, its audit log in ``--data-dir``
records it (docs/a2a.md). Without ``--data-dir`` the node is a throwaway one.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from aralnode.config import NodeConfig
from aralnode.core import codec


def add_call_flags(call: argparse.ArgumentParser) -> None:
    call.add_argument(
        "--a2a",
        metavar="CARD_URL",
        help="call the A2A agent whose Agent Card is at CARD_URL (its signature checked)",
    )
    call.add_argument(
        "--data-dir", type=Path, help="with --a2a: the calling node's key and audit log"
    )
    call.add_argument("--policy", type=Path, help="with --a2a: the policy the call is judged by")
    call.add_argument(
        "--audit", action="store_true", help="with --a2a: record the call in --data-dir's log"
    )


async def call(ns: argparse.Namespace) -> Any:
    """The A2A agent's answer to ``ns.capability`` (the skill) with ``ns.params``."""
    try:
        params = codec.loads(ns.params) if ns.params else {}
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"JSON_PARAMS is not valid JSON: {exc}") from None
    if ns.audit and ns.data_dir is None:
        raise ValueError("--audit needs --data-dir: the log is kept there")
    from aralnode.node import Node  # noqa: PLC0415 - not for every command (cli.py's run)

    with tempfile.TemporaryDirectory(prefix="aralnode-a2a-") as scratch:
        config = NodeConfig(
            name="aralnode-cli",
            host="127.0.0.1",
            grpc_port=0,
            http_port=None,
            discovery="none",
            data_dir=ns.data_dir or Path(scratch),
            policy_file=ns.policy,
            audit=ns.audit,
            a2a=False,
            aral_api=False,
        )
        async with Node(config) as node:
            return await node.request(ns.a2a, ns.capability, params, timeout=ns.timeout or None)


__all__ = ["add_call_flags", "call"]
