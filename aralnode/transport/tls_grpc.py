"""grpc's side of transport security: server and channel credentials from the node's
TLS files, and the peer certificate of a call.

The server uses grpc's *dynamic* SSL server credentials: grpc asks the fetcher for a
certificate configuration on every new connection, the fetcher answers a new one
only when the files changed (``TlsFiles.changed``), and connections already open
keep the configuration they were made with. So a rotated certificate serves new
connections while open channels stay up.

The dialler checks the name ``NODE_ID.TRUST_DOMAIN`` (``grpc.ssl_target_name_override``),
which only a certificate our CA issued for that node id carries, instead of the
host name of an address an mDNS hint or a static peer gave: the node reached is
the node expected, whatever address it was reached at. A dial that does not yet
know the node id checks the address (as any TLS client would) and is replaced,
once the handshake named the node, by one that checks the id
(``PeerConnector.connect``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import grpc

from aralnode.access.ca import node_dns_name
from aralnode.access.tls import CertRules, TlsFiles, TlsMaterial
from aralnode.core.errors import Unavailable


def _configuration(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.chain)], root_certificates=material.ca
    )


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Dynamic server credentials that follow the files (see the module docstring).

    With ``require`` client auth grpc asks every client for a certificate our CA
    signed and refuses the connection without one, before any handler."""
    mutual = files.settings.mutual

    def fetch() -> Any:
        # Called by grpc core on each new connection: a stat of each file unless
        # one changed. None keeps the current configuration.
        material = files.changed()
        return None if material is None else _configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(files.material), fetch, require_client_authentication=mutual
    )


class ClientTls:
    """What a TLS node's outbound channels present and check."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.trust_domain = files.settings.trust_domain

    def credentials(self) -> grpc.ChannelCredentials:
        m = self.files.current()  # a rotated certificate for new channels too
        return grpc.ssl_channel_credentials(m.ca, m.key, m.chain)

    async def check_server(self, address: str, node_id: str, timeout: float = 10.0) -> None:
        """Check that the certificate the node at ``address`` serves is ``node_id``'s
        own: names it *and* holds the key the id derives from (grpc's Python API
        does not show a channel's server certificate, so this asks on a connection
        of its own, as mTLS: our certificate, the CA, the node id's name).

        Raises:
            CertIdentityMismatch: it is not.
            Unavailable: no TLS connection could be made.
        """
        s = self.files.settings
        ctx = ssl.create_default_context(cadata=(self.files.current().ca or b"").decode() or None)
        ctx.load_cert_chain(s.cert_file, s.key_file)
        ctx.set_alpn_protocols(["h2"])
        host, _, port = address.rpartition(":")
        name = node_dns_name(self.trust_domain, node_id)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port), ssl=ctx, server_hostname=name),
                timeout,
            )
        except (OSError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"no TLS connection to {address}: {exc}") from None
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
        pem = ssl.DER_cert_to_PEM_cert(der).encode()
        CertRules(self.trust_domain, s.deny).bind(pem, node_id)

    def name_options(self, node_id: str) -> list[tuple[str, Any]]:
        """Check the peer certificate names ``node_id`` ("" : the address)."""
        if not node_id:
            return []
        return [("grpc.ssl_target_name_override", node_dns_name(self.trust_domain, node_id))]


def open_channel(
    address: str,
    options: list[tuple[str, Any]],
    tls: ClientTls | None,
    node_id: str = "",
    interceptors: Sequence[Any] | None = None,
) -> grpc.aio.Channel:
    """A channel to ``address``: plaintext without ``tls``, else TLS checking that the
    peer is ``node_id`` (see the module docstring)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        address,
        tls.credentials(),
        options=options + tls.name_options(node_id),
        interceptors=interceptors,
    )


def peer_certificate(context: Any) -> bytes:
    """The PEM of the certificate a client presented on this call's connection (grpc
    verified it against our CA), or b"" (plaintext, or TLS without a client one)."""
    auth = context.auth_context()
    certs = auth.get("x509_pem_cert")
    return bytes(certs[0]) if certs else b""


__all__ = ["ClientTls", "open_channel", "peer_certificate", "server_credentials"]
