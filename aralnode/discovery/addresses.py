"""Addresses: which hosts a node advertises, and where to dial back a peer that
dialled us."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import unquote

import ifaddr

from aralnode.core.addresses import join_host_port

MAX_DIAL_ADDRESSES = 4
MAX_ADVERTISED = 8
WILDCARDS = ("0.0.0.0", "::")  # noqa: S104 - comparing, not binding


def lan_addresses(*, ipv6: bool = False) -> list[str]:
    """This host's IPv4 addresses (and, with ``ipv6``, its global IPv6 ones),
    loopback and link-local excluded: what a node on a wildcard bind advertises."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if not ip.ip.startswith(("127.", "169.254.")):
                    out.append(ip.ip)
            elif ipv6:
                host = ip.ip[0]
                if host != "::1" and not host.lower().startswith("fe80"):
                    out.append(host)
    return list(dict.fromkeys(out))


def advertised_hosts(bind_host: str, interfaces: Sequence[str] = ()) -> list[str]:
    """The hosts at which peers can reach a node bound to ``bind_host`` (never empty).

    A specific bind host is itself. On a wildcard bind: the ``interfaces`` chosen,
    else every non-loopback interface address (IPv6 too on ``::``), at most
    ``MAX_ADVERTISED``; loopback only if the host has nothing else.
    """
    host = bind_host
    if host not in WILDCARDS:
        return [host]
    hosts = list(interfaces) or lan_addresses(ipv6=host == "::")
    return hosts[:MAX_ADVERTISED] or ["127.0.0.1"]


def transport_host(peer: str) -> str:
    """The IP in a grpc peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``,
    percent-encoded or not); "" for anything else."""
    kind, _, rest = unquote(peer).partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return ""


def origin(transport_peer: str) -> str:
    """Who a connection came from, for per-origin caps: its IPv4 address, or the /64
    of an IPv6 one (a single host commonly holds a whole /64); "" if not an IP."""
    ip = _ip(transport_host(transport_peer))
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip) if ip is not None else ""


def dial_back_addresses(card_addresses: list[str], transport_peer: str) -> list[str]:
    """Where to dial back a peer that dialled us: the IP its connection came from, at
    the ports its card lists (at most ``MAX_DIAL_ADDRESSES``; none without that IP).

    Only the ports are taken from the card. Its hosts are the peer's word, signed by a
    key anyone can make: dialling them would let any caller make this node connect
    to any host it can reach (a blind SSRF into its network). A host that discovery
    or the configuration names is dialled through them, not through a card.
    """
    seen = transport_host(transport_peer)
    seen_ip = _ip(seen)
    if seen_ip is None or seen_ip.is_unspecified:
        return []
    ports: list[int] = []
    for address in card_addresses:
        _, _, port_text = address.rpartition(":")
        if port_text.isdigit() and 0 < int(port_text) < 65536:
            ports.append(int(port_text))
    out = [join_host_port(seen, port) for port in dict.fromkeys(ports)]
    return out[:MAX_DIAL_ADDRESSES]


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


__all__ = [
    "MAX_DIAL_ADDRESSES",
    "advertised_hosts",
    "dial_back_addresses",
    "lan_addresses",
    "origin",
    "transport_host",
]
