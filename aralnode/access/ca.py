"""The mesh CA: a small certificate authority for mTLS between nodes.

``init_ca`` makes an EC P-256 CA key (mode 0600) and a self-signed CA certificate
(basicConstraints CA, keyUsage keyCertSign/cRLSign, optionally name-constrained to
the trust domain). ``issue`` makes a node certificate **for the node's own identity
key**: its URI SAN is ``spiffe://TRUST-DOMAIN/node/NODE_ID`` and it carries the DNS
name ``NODE_ID.TRUST-DOMAIN`` (the name a dialler checks, see
``aralnode.access.tls.server_name``), plus the DNS/IP names asked for (by default
localhost, 127.0.0.1, ::1). So the certificate's key *is* the key that signs the
node's card and envelopes, and the identity binding holds by construction.

Files (``CA_DIR``): ``ca.key`` (0600), ``ca.crt``, ``trust-domain``. A node's:
``DATA_DIR/tls/node.crt`` (its certificate, then the CA's: the chain) and
``DATA_DIR/tls/ca.crt``; the key is ``DATA_DIR/identity.pem`` itself, never copied.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aralnode.core.identity import Identity

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
TRUST_DOMAIN_FILE = "trust-domain"
NODE_CERT = "node.crt"
TLS_DIR = "tls"
DEFAULT_TRUST_DOMAIN = "aral.local"
DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
ED25519_REFUSED = (
    "grpc's TLS does not offer Ed25519 certificates in a handshake between its own "
    "client and server (measured: the handshake fails): make this node's identity "
    "ES256 (`aralnode run --key-algorithm ES256` with a fresh data dir)"
)


def check_trust_domain(domain: str) -> str:
    """``domain`` if it is a DNS-style trust domain (lower case), else ValueError."""
    if len(domain) > 200 or not _DOMAIN.match(domain):
        raise ValueError(f"{domain!r} is not a trust domain (lower-case DNS name, e.g. aral.local)")
    return domain


def spiffe_id(trust_domain: str, node_id: str) -> str:
    """The URI SAN of a node's certificate."""
    return f"spiffe://{trust_domain}/node/{node_id}"


def node_dns_name(trust_domain: str, node_id: str) -> str:
    """The DNS SAN every node certificate has: what a dialler checks (see module doc)."""
    return f"{node_id}.{trust_domain}"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader (the rotation fetcher) never sees half a file


@dataclass(frozen=True, slots=True)
class MeshCA:
    """A loaded CA: its key, its certificate and its trust domain."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    trust_domain: str

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); a node signs its TLS handshakes."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def init_ca(
    ca_dir: Path,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    *,
    days: int = 3650,
    constrain: bool = False,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """Make a CA in ``ca_dir`` (refuses to overwrite one); returns what it wrote.

    ``constrain`` adds a name constraint: the CA signs only names under the trust
    domain (and the loopback names) and SPIFFE URIs of it.
    """
    check_trust_domain(trust_domain)
    if (ca_dir / CA_KEY).exists():
        raise FileExistsError(f"{ca_dir / CA_KEY} exists: a CA is there already")
    ca_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"aralnode mesh CA {trust_domain}")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if constrain:
        builder = builder.add_extension(_constraints(trust_domain), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(ca_dir / CA_KEY, key_pem)
    _write_public(ca_dir / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    _write_public(ca_dir / TRUST_DOMAIN_FILE, trust_domain.encode() + b"\n")
    return {
        "ca_key": str(ca_dir / CA_KEY),
        "ca_cert": str(ca_dir / CA_CERT),
        "trust_domain": trust_domain,
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _constraints(trust_domain: str) -> x509.NameConstraints:
    return x509.NameConstraints(
        permitted_subtrees=[
            x509.DNSName(trust_domain),
            x509.DNSName("localhost"),
            x509.UniformResourceIdentifier(trust_domain),
            x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
            x509.IPAddress(ipaddress.ip_network("::1/128")),
        ],
        excluded_subtrees=None,
    )


def load_ca(ca_dir: Path) -> MeshCA:
    """The CA in ``ca_dir`` (as ``init_ca`` made it)."""
    key = serialization.load_pem_private_key((ca_dir / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / CA_KEY} is not an EC private key")  # noqa: TRY004 - a file
    cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    domain_file = ca_dir / TRUST_DOMAIN_FILE
    domain = domain_file.read_text().strip() if domain_file.exists() else DEFAULT_TRUST_DOMAIN
    return MeshCA(key, cert, check_trust_domain(domain))


def _san(node_id: str, trust_domain: str, names: list[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(trust_domain, node_id)),
        x509.DNSName(node_dns_name(trust_domain, node_id)),
    ]
    for item in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(item)))
        except ValueError:
            general.append(x509.DNSName(item))
    return x509.SubjectAlternativeName(general)


def node_certificate(
    ca: MeshCA,
    public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey,
    node_id: str,
    *,
    names: list[str] | None = None,
    days: int = 90,
    not_before: datetime.datetime | None = None,
) -> x509.Certificate:
    """A node certificate for ``public_key`` naming ``node_id`` (tests use it with a
    key and an id that do not belong together, or a past validity)."""
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
    ski = x509.SubjectKeyIdentifier.from_public_key(ca.key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(node_id, ca.trust_domain, list(names or DEFAULT_NAMES)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def private_key_of(identity: Identity) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    """The identity's private key object (read back from its PEM: ``Identity`` keeps
    its key to itself)."""
    key = serialization.load_pem_private_key(identity.to_pem(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return key


def issue(
    ca_dir: Path,
    identity: Identity,
    key_file: Path,
    *,
    days: int = 90,
    names: list[str] | None = None,
    out_dir: Path | None = None,
) -> dict[str, str]:
    """Issue the node whose identity key is ``identity`` (read from ``key_file``, in
    its data dir) a certificate; write ``node.crt`` (chain) and ``ca.crt`` to
    ``out_dir`` (default: ``tls`` beside ``key_file``).

    Raises:
        ValueError: the identity is Ed25519 (see ``ED25519_REFUSED``).
    """
    ca = load_ca(ca_dir)
    key = private_key_of(identity)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"{key_file}: an Ed25519 key; {ED25519_REFUSED}")  # noqa: TRY004
    cert = node_certificate(ca, key.public_key(), identity.node_id, names=names, days=days)
    out = out_dir or key_file.parent / TLS_DIR
    out.mkdir(parents=True, exist_ok=True)
    _write_public(out / NODE_CERT, cert.public_bytes(serialization.Encoding.PEM) + ca.cert_pem)
    _write_public(out / CA_CERT, ca.cert_pem)
    return {
        "node_id": identity.node_id,
        "uri_san": spiffe_id(ca.trust_domain, identity.node_id),
        "serial": format(cert.serial_number, "x"),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "tls_cert_file": str(out / NODE_CERT),
        "tls_key_file": str(key_file),
        "tls_ca_file": str(out / CA_CERT),
    }


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_TRUST_DOMAIN",
    "ED25519_REFUSED",
    "MeshCA",
    "check_trust_domain",
    "init_ca",
    "issue",
    "load_ca",
    "node_certificate",
    "node_dns_name",
    "private_key_of",
    "spiffe_id",
]
