"""``aralnode ca init`` and ``aralnode ca issue``: the mesh CA and node certificates
(``aralnode.access.ca`` does the work; this is the command line)."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import warnings
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from aralnode.access.ca import (
    DEFAULT_NAMES,
    DEFAULT_TRUST_DOMAIN,
    init_ca,
    issue,
    node_dns_name,
)
from aralnode.config import DEFAULT_GRPC_PORT, NodeConfig
from aralnode.core.addresses import join_host_port
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
    where = Path(ns.data_dir) if ns.data_dir else NodeConfig(name=ns.name).resolved_data_dir
    identity = load_identity(data_dir(where))  # made if absent, as `aralnode run` would
    names = [*ns.dns, *ns.ip] or list(DEFAULT_NAMES)
    info = issue(
        Path(ns.ca_dir),
        identity,
        where / KEY_FILE,
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


# -- TLS flags of the other commands ---------------------------------------------------


def add_run_flags(run: argparse.ArgumentParser) -> None:
    """``aralnode run``'s TLS flags (the ``tls_*`` fields of ``NodeConfig``)."""
    run.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM): TLS on")
    run.add_argument("--tls-key", metavar="FILE", help="its key (default: the identity key)")
    run.add_argument("--tls-ca", metavar="FILE", help="trust anchors for peers and clients")
    run.add_argument(
        "--tls-client-auth",
        choices=("none", "require"),
        default=None,  # every run flag: None unless given, so a --config file's value stays
        help="require: mTLS on the gRPC door, the mesh mode (default: none)",
    )
    run.add_argument("--trust-domain", default=None, help=f"default: {DEFAULT_TRUST_DOMAIN}")
    run.add_argument(
        "--tls-deny",
        action="append",
        default=None,
        metavar="NODE_ID_OR_SERIAL",
        help="refuse this node id or certificate serial (hex) at the handshake (repeatable)",
    )


def grpcurl_flags(config: NodeConfig) -> str:
    """The grpcurl flags that reach a node with ``config``."""
    if not config.tls_on:
        return "-plaintext"
    flags = f"-cacert {config.tls_ca_file}" if config.tls_ca_file else "-insecure"
    if config.tls_client_auth == "require":
        flags += " -cert YOUR.crt -key YOUR.key"
    return flags


def add_client_flags(parser: argparse.ArgumentParser) -> None:
    """``--cacert/--cert/--key`` for the commands that call a node (as grpcurl's)."""
    parser.add_argument("--cacert", metavar="FILE", help="TLS: the node's CA (PEM)")
    parser.add_argument("--cert", metavar="FILE", help="mTLS: our certificate chain (PEM)")
    parser.add_argument("--key", metavar="FILE", help="mTLS: its private key (PEM)")
    parser.add_argument(
        "--node-id",
        default="",
        dest="tls_node_id",
        help="TLS: check the certificate is this node's (default: the address's host)",
    )
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN, dest="tls_trust_domain")
    who = parser.add_mutually_exclusive_group()
    who.add_argument(
        "--token",
        metavar="TOKEN",
        help="a bearer token (JWT or API key) sent as 'authorization: Bearer …' "
        "(default: $ARALNODE_TOKEN; the environment keeps it out of the process list)",
    )
    who.add_argument(
        "--api-key",
        metavar="KEY",
        help="an API key sent as 'x-api-key' (default: $ARALNODE_API_KEY)",
    )


def _caller_metadata(ns: argparse.Namespace) -> list[tuple[str, str]]:
    """Who the tool calls as: ``--token`` / ``--api-key``, else the environment."""
    token = getattr(ns, "token", None) or os.environ.get("ARALNODE_TOKEN", "")
    api_key = getattr(ns, "api_key", None) or os.environ.get("ARALNODE_API_KEY", "")
    if getattr(ns, "token", None):
        api_key = ""
    if getattr(ns, "api_key", None):
        token = ""
    if token:
        return [("authorization", f"Bearer {token}")]
    return [("x-api-key", api_key)] if api_key else []


def client_args(ns: argparse.Namespace) -> dict[str, Any]:
    """``NodeClient`` keyword arguments for ``add_client_flags``: TLS (none:
    plaintext) and the caller's credentials.

    Raises:
        ValueError: a TLS file that cannot be read, or is not PEM of its kind (one
            line: grpc would log its own lines and then fail the call unhelpfully).
    """
    metadata = _caller_metadata(ns)
    out: dict[str, Any] = {"metadata": metadata} if metadata else {}
    cacert, cert, key = getattr(ns, "cacert", None), getattr(ns, "cert", None), ns.key
    if not (cacert or cert or key):
        return out
    if bool(cert) != bool(key):
        raise ValueError("--cert and --key go together")
    import grpc  # noqa: PLC0415 - only for TLS

    creds = grpc.ssl_channel_credentials(*_tls_files(cacert, cert, key))
    node_id = ns.tls_node_id
    name = node_dns_name(ns.tls_trust_domain, node_id) if node_id else ""
    return {**out, "credentials": creds, "server_name": name}


def _read(flag: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def _certificates(flag: str, path: str) -> tuple[bytes, list[x509.Certificate]]:
    """The PEM of ``path`` and the certificates in it (at least one)."""
    pem = _read(flag, path)
    try:
        with warnings.catch_warnings():  # (a system bundle's odd serials: grpc takes them)
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise ValueError(f"{flag} {path}: not a PEM certificate") from None
    return pem, certs


def _tls_files(
    cacert: str | None, cert: str | None, key: str | None
) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(CA, key, chain) PEM for ``grpc.ssl_channel_credentials``, each checked
    with ``cryptography`` first: a CA bundle and a chain of certificates, a private
    key (unencrypted) that is the chain's first certificate's."""
    ca_pem = _certificates("--cacert", cacert)[0] if cacert else None
    if not (cert and key):
        return ca_pem, None, None
    cert_pem, chain = _certificates("--cert", cert)
    key_pem = _read("--key", key)
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"--key {key}: not an unencrypted PEM private key") from None
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*der) != chain[0].public_key().public_bytes(*der):
        raise ValueError(f"--key {key} is not the key of --cert {cert}")
    return ca_pem, key_pem, cert_pem


def data_dir(path: Path, flag: str = "--data-dir") -> Path:
    """``path``, unless something other than a directory is there: a data dir that
    is a file fails later with ``[Errno 17] File exists``, which says nothing."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is not a directory")
    return path


# -- argument types of the commands that call a node ----------------------------------


def node_address(value: str) -> str:
    """``--node``: HOST:PORT (an IPv6 address in brackets, or bare without a port);
    a host alone means port 50051. A gRPC target URI (``dns:///h:1``,
    ``unix:/path``) is passed to grpc as it is."""
    if ":/" in value and not value.startswith("["):
        return value
    bad = argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    if not value or any(c.isspace() for c in value):
        raise bad
    port = str(DEFAULT_GRPC_PORT)
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] or port
        if not _is_ipv6(host):
            raise bad
    elif value.count(":") > 1:  # a bare IPv6 address, no port
        host = value
        if not _is_ipv6(host):
            raise bad
    else:
        host, sep, given = value.partition(":")
        port = given if sep else port
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) <= 65535:
        raise bad
    return join_host_port(host, int(port))


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).version == 6
    except ValueError:
        return False


def seconds(value: str) -> float:
    """``--timeout``: seconds, 0 or more, finite."""
    try:
        given = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not given >= 0 or given == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r}: seconds must be 0 or more, and finite")
    return given


#: The shortest ``peers --watch --interval``: each poll is a ListPeers call to the node.
MIN_INTERVAL = 0.1


def interval(value: str) -> float:
    """``--interval``: seconds between polls, at least ``MIN_INTERVAL`` and finite."""
    given = seconds(value)
    if given < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(
            f"{value!r}: the interval must be at least {MIN_INTERVAL:g} seconds"
        )
    return given


__all__ = [
    "add_client_flags",
    "add_parser",
    "add_run_flags",
    "client_args",
    "data_dir",
    "grpcurl_flags",
    "interval",
    "node_address",
    "seconds",
]
