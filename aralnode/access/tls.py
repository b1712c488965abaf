"""Transport security, door-neutral: the files, the identity a certificate names, and
the rules every door applies to it (the grpc and uvicorn glue is in the doors).

- ``TlsSettings``: the ``NodeConfig`` fields (``tls_*``, ``trust_domain``).
- ``TlsFiles``: reads the certificate chain, key and trust anchors, refuses a bad
  set at start-up (naming the file), and re-reads them when they change (the gRPC
  door's certificate fetcher calls ``changed()`` on every new connection).
- ``CertIdentity``: what a peer certificate says: the SPIFFE node id of its URI SAN,
  its key's id, its serial.
- ``CertRules``: identity binding (the certificate's node id and key are the node
  id and key its card and envelopes are signed with) and the deny list; a broken
  certificate is refused, never skipped.
- ``CertificateAuthenticator``: a caller with a verified mesh certificate and no
  signature is the node it names.
- ``server_ssl_context``: the HTTP door's context, TLS 1.3 minimum.
"""

from __future__ import annotations

import os
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aralnode._logs import get_logger
from aralnode.core.context import CallContext, Credentials
from aralnode.core.errors import CertDenied, CertIdentityMismatch
from aralnode.core.identity import key_id_for
from aralnode.service.auth import (
    ANONYMOUS,
    NODE,
    Authenticated,
    Authenticator,
    Chain,
    peer_scopes_of,
)

log = get_logger("aralnode.tls")

PLAINTEXT_WARNING = (
    "TLS is off: the gRPC and HTTP doors are PLAINTEXT (anyone on the network can read "
    "and alter calls); set tls_cert_file/tls_key_file/tls_ca_file for anything but "
    "local development"
)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """Where the files are and what is asked of peers (``NodeConfig``'s ``tls_*``)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    client_auth: str = "none"
    trust_domain: str = "aral.local"
    deny: frozenset[str] = field(default_factory=frozenset)

    @property
    def mutual(self) -> bool:
        return self.client_auth == "require"


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One consistent read of the files (PEM bytes)."""

    chain: bytes
    key: bytes
    ca: bytes | None
    leaf: x509.Certificate

    @property
    def serial(self) -> str:
        return format(self.leaf.serial_number, "x")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read it ({exc.strerror or exc})") from None


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_material(settings: TlsSettings) -> TlsMaterial:
    """Read and check the files.

    Raises:
        ValueError: a file is missing or unreadable, is not PEM of its kind, or the
            certificate is not the key's; the message names the file.
    """
    chain = _read(settings.cert_file, "tls_cert_file")
    key_pem = _read(settings.key_file, "tls_key_file")
    ca = _read(settings.ca_file, "tls_ca_file") if settings.ca_file is not None else None
    try:
        leaf = x509.load_pem_x509_certificate(chain)
    except ValueError:
        raise ValueError(f"tls_cert_file {settings.cert_file}: not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"tls_key_file {settings.key_file}: not an unencrypted PEM private key"
        ) from None
    if ca is not None:
        try:
            x509.load_pem_x509_certificates(ca)
        except ValueError:
            raise ValueError(f"tls_ca_file {settings.ca_file}: no PEM certificate in it") from None
    if _spki(leaf.public_key()) != _spki(key.public_key()):
        raise ValueError(
            f"tls_cert_file {settings.cert_file} is not the certificate of the key in "
            f"tls_key_file {settings.key_file}"
        )
    return TlsMaterial(chain, key_pem, ca, leaf)


class TlsFiles:
    """The files, read at start-up (checked) and again whenever one changes."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.material = load_material(settings)
        self._stamp = self._stat()

    def _paths(self) -> list[Path]:
        s = self.settings
        return [s.cert_file, s.key_file, *([s.ca_file] if s.ca_file is not None else [])]

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self._paths():
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
                continue
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def changed(self) -> TlsMaterial | None:
        """The new material if a file changed since the last read and the new set is
        sound; else ``None`` (a broken rotation keeps the old certificate, loudly)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            material = load_material(self.settings)
        except ValueError as exc:
            # The reason is the message (it names the file); no traceback to add.
            log.error("TLS files changed but are not usable; keeping the old ones: %s", exc)  # noqa: TRY400
            return None
        if material == self.material:
            return None
        log.info("TLS certificate reloaded (serial %s)", material.serial)
        self.material = material
        return material

    def current(self) -> TlsMaterial:
        """The material now (re-read first if a file changed)."""
        self.changed()
        return self.material


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """What a (verified) peer certificate says.

    Attributes:
        node_id: The node id of its ``spiffe://DOMAIN/node/ID`` URI SAN ("" if none).
        trust_domain: That URI's trust domain.
        key_id: The id derived from its public key (a node id is its key's id).
        serial: Its serial number, lower-case hex.
    """

    node_id: str
    trust_domain: str
    key_id: str
    serial: str

    @classmethod
    def from_pem(cls, pem: bytes) -> CertIdentity:
        return cls.of(x509.load_pem_x509_certificate(pem))

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertIdentity:
        node_id = domain = ""
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if san else ():
            rest = uri.removeprefix("spiffe://")
            found, _, node = rest.partition("/node/")
            if rest != uri and node and "/" not in node:
                node_id, domain = node, found
                break
        key_id = key_id_for(_spki(cert.public_key()))
        return cls(node_id, domain, key_id, format(cert.serial_number, "x"))


class CertRules:
    """The rules for a peer's certificate: identity binding, trust domain, deny list.

    Parsed identities are kept (LRU, ``cache_size``): grpc hands the same PEM for
    every call of a connection, and a peer cannot fill the cache with certificates
    the transport did not verify against our CA.
    """

    def __init__(
        self, trust_domain: str, deny: frozenset[str] = frozenset(), cache_size: int = 1024
    ) -> None:
        self.trust_domain = trust_domain
        self.deny = frozenset(d.lower() for d in deny)
        self._cache: OrderedDict[bytes, CertIdentity] = OrderedDict()
        self._size = cache_size

    def identity(self, pem: bytes) -> CertIdentity:
        """The identity of a verified certificate, checked against the trust domain
        and the deny list.

        Raises:
            CertIdentityMismatch: no node id of our trust domain, or a certificate
                that does not parse (fail closed).
            CertDenied: its node id or serial is denied.
        """
        found = self._cache.get(pem)
        if found is None:
            try:
                found = CertIdentity.from_pem(pem)
            except ValueError:
                raise CertIdentityMismatch("the peer certificate does not parse") from None
            self._cache[pem] = found
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(pem)
        if not found.node_id or found.trust_domain != self.trust_domain:
            raise CertIdentityMismatch(
                f"the peer certificate names no node of trust domain {self.trust_domain}"
            )
        if found.node_id != found.key_id:  # a node id is its key's id: no other key is it
            raise CertIdentityMismatch(
                f"the peer certificate names node {found.node_id} but holds key {found.key_id}"
            )
        if found.node_id in self.deny or found.serial in self.deny:
            raise CertDenied(f"node {found.node_id} (certificate {found.serial}) is denied")
        return found

    def bind(self, pem: bytes, node_id: str) -> CertIdentity:
        """Check that the certificate ``pem`` is node ``node_id``'s: its URI SAN names
        it and its key is the key the id derives from (the one that signs the
        node's card and envelopes).

        Raises:
            CertIdentityMismatch: it is not (or there is no certificate).
            CertDenied: see ``identity``.
        """
        if not pem:
            raise CertIdentityMismatch("mutual TLS: the peer presented no certificate")
        if node_id in self.deny:
            raise CertDenied(f"node {node_id} is denied")
        found = self.identity(pem)
        if found.node_id != node_id:
            raise CertIdentityMismatch(
                f"the peer certificate is node {found.node_id}'s, not node {node_id}'s"
            )
        return found


class CertificateAuthenticator:
    """A caller with a verified mesh certificate (and no signature or channel
    session, which the node's own rule decides) is the node it names: kind node,
    with the scopes a verified peer gets. A signed call's certificate must be its
    signer's (else ``CERT_IDENTITY_MISMATCH``): one connection, one node."""

    def __init__(
        self,
        rules: CertRules,
        *,
        peer_scopes: frozenset[str] = frozenset(),
        peer_grants: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.rules = rules
        self.peer_scopes = peer_scopes
        self.grants = dict(peer_grants or {})

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        pem = credentials.peer_certificate
        if not pem or credentials.link_peer or credentials.local:
            return ANONYMOUS
        if credentials.signer:  # the node's own rule decides; the certificate must agree
            self.rules.bind(pem, credentials.signer)
            return ANONYMOUS
        if credentials.on_behalf_of or credentials.delegation is not None:
            # An unsigned claim to act for someone: only a signed statement carries
            # one (the node's rule refuses or caps it); never the node's own rights.
            return ANONYMOUS
        who = self.rules.identity(pem).node_id
        scopes = peer_scopes_of(who, self.peer_scopes, self.grants)
        return Authenticated(who, scopes, credentials.on_behalf_of, kind=NODE)


class CertPolicy(Protocol):
    """What ``certificate_rule`` reads of the node's config (``NodeConfig``)."""

    trust_domain: str
    tls_deny: frozenset[str]
    peer_scopes: frozenset[str]
    peer_grants: Mapping[str, frozenset[str]]


def certificate_rule(rule: Authenticator, config: CertPolicy) -> Authenticator:
    """``rule`` with ``CertificateAuthenticator`` in front (the mTLS node's rule)."""
    rules = CertRules(config.trust_domain, config.tls_deny)
    certs = CertificateAuthenticator(
        rules, peer_scopes=config.peer_scopes, peer_grants=config.peer_grants
    )
    return Chain(certs, rule)


def server_ssl_context(material: TlsMaterial, *, mutual: bool) -> ssl.SSLContext:
    """The HTTP door's TLS context: TLS 1.3 minimum (PRO-013), our chain and key,
    and with ``mutual`` the CA's client certificates required."""
    import tempfile  # noqa: PLC0415 - only while loading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # load_cert_chain reads files only: write them to a private temporary directory.
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
        cert.write_bytes(material.chain)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(material.key)
        ctx.load_cert_chain(cert, key)
    if material.ca is not None:
        ctx.load_verify_locations(cadata=material.ca.decode())
    ctx.verify_mode = ssl.CERT_REQUIRED if mutual else ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


__all__ = [
    "PLAINTEXT_WARNING",
    "CertIdentity",
    "CertRules",
    "CertificateAuthenticator",
    "TlsFiles",
    "TlsMaterial",
    "TlsSettings",
    "certificate_rule",
    "load_material",
    "server_ssl_context",
]
