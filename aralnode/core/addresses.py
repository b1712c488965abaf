"""Network address text: one way to write ``host:port`` (IPv6 hosts in brackets)."""

from __future__ import annotations


def join_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 ``host`` in brackets (``[::1]:50051``).

    ``port`` may be text, e.g. ``"*"`` for a pattern matching any port.
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
