"""``aralnode approvals list|approve|deny`` and ``aralnode halts list|clear``: the
operator's side of escalate and halt, over the node's gRPC port (scope
``agent:admin``: give an API key or token with ``--api-key``/``--token``).

Tables for people, ``--json`` for scripts; exit 0 on success, 1 when the node
refused (the reason on stderr, as the JSON error object under ``--json``), 2 on bad
arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from aralnode import _proto as pb
from aralnode import cli_ca
from aralnode.cli_audit import _shown as shown
from aralnode.transport.grpc_client import NodeClient


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S") if ms else "-"


def _rows(rows: list[list[str]], headers: list[str]) -> str:
    """A table; each cell on one line (a principal a peer named may hold a newline:
    escaped, as ``audit tail`` escapes it, so that no row reads as another)."""
    table = [headers, *([shown(c) for c in r] for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


def _run(ns: argparse.Namespace, call: Callable[[NodeClient], Awaitable[Any]]) -> int:
    async def go() -> Any:
        async with NodeClient(ns.node, **cli_ca.client_args(ns)) as client:
            return await client._rpc(lambda: call(client))

    # A refusal or a node out of reach raises: ``cli.main`` reports it, as it does
    # every command's (one line, or the JSON error object under ``--json``).
    answer = asyncio.run(go())
    ns.show(answer)
    return 0


def _as_json(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _approvals(ns: argparse.Namespace) -> int:
    def show(answer: pb.ListApprovalsResponse) -> None:
        if ns.json:
            print(json.dumps([_as_json(a) for a in answer.approvals]))
            return
        rows = [
            [a.id, a.principal or "-", a.door, a.action, "; ".join(a.reasons), _when(a.expires_ms)]
            for a in answer.approvals
        ]
        print(_rows(rows, ["ID", "PRINCIPAL", "DOOR", "ACTION", "WHY", "EXPIRES"]))

    ns.show = show
    return _run(ns, lambda c: c.stub.ListApprovals(pb.ListApprovalsRequest(), timeout=10))


def _decide(ns: argparse.Namespace) -> int:
    def show(answer: pb.Approval) -> None:
        if ns.json:
            print(json.dumps(_as_json(answer)))
        else:
            print(shown(f"{answer.id} {answer.state}: {answer.action} of {answer.principal}"))

    ns.show = show
    request = pb.DecideRequest(id=ns.id, note=ns.reason or "")
    if ns.approvals_command == "approve":
        return _run(ns, lambda c: c.stub.Approve(request, timeout=10))
    return _run(ns, lambda c: c.stub.Deny(request, timeout=10))


def _halts(ns: argparse.Namespace) -> int:
    def show(answer: pb.ListHaltsResponse) -> None:
        if ns.json:
            print(json.dumps([_as_json(h) for h in answer.halts]))
            return
        rows = [[h.subject, h.kind, h.reason, _when(h.since_ms)] for h in answer.halts]
        print(_rows(rows, ["SUBJECT", "KIND", "WHY", "SINCE"]))

    ns.show = show
    return _run(ns, lambda c: c.stub.ListHalts(pb.ListHaltsRequest(), timeout=10))


def _clear(ns: argparse.Namespace) -> int:
    def show(answer: pb.ClearHaltResponse) -> None:
        cleared = json.dumps({"cleared": answer.cleared})
        print(cleared if ns.json else f"cleared {shown(ns.subject)}")  # (a line break escaped)

    ns.show = show
    request = pb.ClearHaltRequest(subject=ns.subject)
    return _run(ns, lambda c: c.stub.ClearHalt(request, timeout=10))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node",
        required=True,
        metavar="HOST:PORT",
        type=cli_ca.node_address,
        help="the node's gRPC port",
    )
    parser.add_argument("--json", action="store_true", help="as JSON")
    cli_ca.add_client_flags(parser)


def add_parser(subparsers: Any) -> None:
    """``approvals`` and ``halts``, on ``aralnode``'s subparsers."""
    approvals = subparsers.add_parser("approvals", help="escalated calls waiting for approval")
    sub = approvals.add_subparsers(dest="approvals_command", required=True)
    listing = sub.add_parser("list", help="the calls waiting")
    _common(listing)
    listing.set_defaults(func=_approvals)
    for verb, text in (("approve", "let the call run"), ("deny", "refuse the call")):
        decide = sub.add_parser(verb, help=text)
        decide.add_argument("id", help="the approval's id (approvals list)")
        decide.add_argument("--reason", help="why (kept with the decision)")
        _common(decide)
        decide.set_defaults(func=_decide)
    halts = subparsers.add_parser("halts", help="principals and peers governance halted")
    hsub = halts.add_subparsers(dest="halts_command", required=True)
    hlist = hsub.add_parser("list", help="who is halted")
    _common(hlist)
    hlist.set_defaults(func=_halts)
    clear = hsub.add_parser("clear", help="serve a halted principal or peer again")
    clear.add_argument("subject", help="the principal or peer node id")
    _common(clear)
    clear.set_defaults(func=_clear)


__all__ = ["add_parser"]
