"""``aralnode ca init`` and ``aralnode ca issue``: the mesh CA and node certificates
(``aralnode.access.ca`` does the work; this is the command line)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aralnode.access.ca import DEFAULT_NAMES, DEFAULT_TRUST_DOMAIN, init_ca, issue
from aralnode.config import NodeConfig
from aralnode.store.keys import KEY_FILE, load_identity


def _show(info: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    width = max(len(k) for k in info)
    print(f"{'FIELD'.ljust(width)}  VALUE")
    print(f"{'-' * width}  -----")
    for key, value in info.items():
        print(f"{key.ljust(width)}  {value}")


def cmd_ca_init(ns: argparse.Namespace) -> int:
    _show(init_ca(Path(ns.dir), ns.trust_domain, constrain=ns.name_constraints), ns.json)
    return 0


def cmd_ca_issue(ns: argparse.Namespace) -> int:
    data_dir = Path(ns.data_dir) if ns.data_dir else NodeConfig(name=ns.name).resolved_data_dir
    identity = load_identity(data_dir)  # made if absent, as `aralnode run` would
    names = [*ns.dns, *ns.ip] or list(DEFAULT_NAMES)
    info = issue(
        Path(ns.ca_dir),
        identity,
        data_dir / KEY_FILE,
        days=ns.days,
        names=names,
        out_dir=Path(ns.out) if ns.out else None,
    )
    _show(info, ns.json)
    return 0


def _days(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 3650:
        raise argparse.ArgumentTypeError(f"{value!r}: days must be 1..3650")
    return int(value)


def add_parser(sub: Any) -> None:
    """Register ``aralnode ca`` on the main parser's subcommands."""
    ca = sub.add_parser("ca", help="the mesh CA for mTLS between nodes")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)
    init = ca_sub.add_parser("init", help="make a CA (EC P-256) in a directory")
    init.add_argument("--dir", required=True, metavar="CA_DIR")
    init.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    init.add_argument(
        "--name-constraints",
        action="store_true",
        help="the CA signs only names of the trust domain (and loopback)",
    )
    init.add_argument("--json", action="store_true")
    init.set_defaults(func=cmd_ca_init)
    iss = ca_sub.add_parser(
        "issue", help="certify a node's identity key (SPIFFE URI SAN with its node id)"
    )
    iss.add_argument("--ca-dir", required=True)
    iss.add_argument("--data-dir", help="the node's data dir (its identity key is made if absent)")
    iss.add_argument("--name", default="aralnode", help="node name, for the default data dir")
    iss.add_argument("--days", type=_days, default=90)
    iss.add_argument("--dns", action="append", default=[], metavar="NAME")
    iss.add_argument("--ip", action="append", default=[], metavar="ADDR")
    iss.add_argument("--out", help="where to write node.crt and ca.crt (default DATA_DIR/tls)")
    iss.add_argument("--json", action="store_true")
    iss.set_defaults(func=cmd_ca_issue)


__all__ = ["add_parser"]
