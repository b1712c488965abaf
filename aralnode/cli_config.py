"""``aralnode config check|show``, and the config ``aralnode run`` gets from its
``--config`` file and flags."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

from aralnode.config_file import Effective, field_specs, load_config
from aralnode.config_template import default_toml, markdown_reference
from aralnode.core import codec

# Run flags whose dest is not the field's name.
_FIELD_OF_DEST = {
    "peer": "peers",
    "interface": "interfaces",
    "grant": "peer_grants",
    "policy": "policy_file",
    "tls_cert": "tls_cert_file",
    "tls_key": "tls_key_file",
    "tls_ca": "tls_ca_file",
    "etcd_endpoint": "etcd_endpoints",
}


def run_overrides(ns: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    """The fields the run flags given set: name -> (value, flag). A flag left out is
    ``None`` (its default) and sets nothing, so the config file's value stays."""
    specs = field_specs()
    out: dict[str, tuple[Any, str]] = {}
    for dest, value in vars(ns).items():
        name = _FIELD_OF_DEST.get(dest, dest)
        if value is None or name not in specs:
            continue
        if dest == "http_port" and value < 0:
            given: Any = None  # -1 disables HTTP
        else:
            given = _grants(value) if dest == "grant" else value
        out[name] = (given, "--" + dest.replace("_", "-"))
    return out


def _grants(pairs: list[tuple[str, frozenset[str]]]) -> dict[str, frozenset[str]]:
    grants: dict[str, frozenset[str]] = {}
    for node_id, scopes in pairs:  # a node named twice gets both grants
        grants[node_id] = grants.get(node_id, frozenset()) | scopes
    return grants


def effective_config(ns: argparse.Namespace) -> Effective:
    """The config of ``--config`` (if given) with the flags given on top.

    Raises:
        ConfigFileError: the file is refused (exit code 2).
        ValueError: a flag's value is refused.
    """
    path = Path(ns.config) if getattr(ns, "config", None) else None
    return load_config(path, run_overrides(ns))


def _plain(value: Any) -> Any:
    """``value`` for JSON and tables: enums by value, paths and sets as strings/lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _masked(value: Any) -> str:
    return "(set)" if value else ""


def cmd_check(ns: argparse.Namespace) -> int:
    effective = effective_config(ns)
    values = {
        # A field kept out of repr (a secret) is shown as set or not, never its value.
        f.name: _masked(getattr(effective.config, f.name))
        if not f.repr
        else getattr(effective.config, f.name)
        for f in dataclasses.fields(effective.config)
    }
    values["load"] = effective.load
    if ns.json:
        fields = {
            name: {"value": _plain(value), "source": effective.sources[name]}
            for name, value in values.items()
        }
        print(codec.dumps({"ok": True, "fields": fields}, pretty=True))
        return 0
    rows = [
        (name, "none" if value is None else codec.dumps(_plain(value)), effective.sources[name])
        for name, value in values.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    print(f"{'FIELD':{widths[0]}}  {'VALUE':{widths[1]}}  SOURCE")
    print(f"{'-' * widths[0]}  {'-' * widths[1]}  ------")
    for name, value, source in rows:
        print(f"{name:{widths[0]}}  {value:{widths[1]}}  {source}")
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    print(markdown_reference() if ns.markdown else default_toml(), end="")
    return 0


def add_parser(
    subparsers: Any, parents: Sequence[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    """Add ``aralnode config`` to the command table.

    Args:
        subparsers: ``build_parser``'s subcommand table.
        parents: ``-v`` and the run flags (``check`` takes them all, as ``run`` does).
    """
    verbose = list(parents[:1])
    config = subparsers.add_parser("config", parents=verbose, help="check or write a config file")
    sub = config.add_subparsers(dest="config_command", required=True)
    check = sub.add_parser(
        "check",
        parents=list(parents),
        help="validate --config FILE (and flags) and print the effective config",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=cmd_check)
    show = sub.add_parser(
        "show", parents=verbose, help="print a complete config file with every default"
    )
    show.add_argument(
        "--markdown", action="store_true", help="the key reference of docs/configuration.md"
    )
    show.set_defaults(func=cmd_show)
    parser: argparse.ArgumentParser = config
    return parser


class LoadFailed(ValueError):
    """A ``--load`` module that failed to import or set up: the message says which,
    and shows the traceback from the module's own code down (not the node's frames
    above it), so that the author finds their line."""

    def __init__(self, spec: str, exc: BaseException) -> None:
        tb = exc.__traceback__
        while tb is not None and _ours(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        text = f"loading {spec} failed: {type(exc).__name__}: {exc}"
        if tb is not None:  # the module's frames: where to look
            shown = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
            text = f"{text}\n{shown}"
        super().__init__(text)


def _ours(filename: str) -> bool:
    """A frame of the node or of the import machinery, above the module's own."""
    return filename.startswith((*_PACKAGE, "<frozen importlib"))


# (This module is in the package; a frame may name it by either path.)
_PACKAGE = (str(Path(__file__).parent), str(Path(__file__).resolve().parent))


def load_into(node: Any, specs: Sequence[str]) -> None:
    """``node.load`` each spec (``--load``).

    Raises:
        LoadFailed: one of them failed (its own traceback in the message).
    """
    for spec in specs:
        try:
            node.load(spec)
        except Exception as exc:
            raise LoadFailed(spec, exc) from exc
