"""Transport security through the real doors: mTLS on the gRPC door and on the
channel between nodes (the refusal matrix), rotation without dropping channels, the
deny list, TLS 1.3 on the HTTP door, the plaintext warning, bad files refused."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aralnode import Node, NodeConfig
from aralnode._access import _loopback
from aralnode.access.ca import (
    MeshCA,
    init_ca,
    issue,
    load_ca,
    node_certificate,
    node_dns_name,
    private_key_of,
)
from aralnode.access.tls import PLAINTEXT_WARNING
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.core.handshake import build_card
from aralnode.core.identity import Identity, KeyAlgorithm
from aralnode.store.keys import KEY_FILE, load_identity
from aralnode.transport.grpc_client import NodeClient, channel_options

CALL_TIMEOUT = 10.0


@dataclass
class Material:
    """A client's TLS files, as PEM."""

    key: bytes
    chain: bytes
    ca: bytes


class Pki:
    """A mesh CA and the nodes' data dirs, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        init_ca(root / "ca")
        self.ca = load_ca(root / "ca")
        init_ca(root / "foreign")
        self.foreign = load_ca(root / "foreign")

    def node_dir(self, name: str) -> Path:
        """A data dir with an identity key and a certificate for it (``ca issue``)."""
        data = self.root / name
        identity = load_identity(data)
        issue(self.root / "ca", identity, data / KEY_FILE)
        return data

    def config(self, name: str, **extra: Any) -> NodeConfig:
        data = self.root / name
        if not (data / "tls").exists():
            self.node_dir(name)
        base: dict[str, Any] = {
            "name": name,
            "data_dir": data,
            "host": "127.0.0.1",
            "grpc_port": 0,
            "http_port": None,
            "discovery": "none",
            "tls_cert_file": data / "tls" / "node.crt",
            "tls_ca_file": data / "tls" / "ca.crt",
            "tls_client_auth": "require",
        }
        base.update(extra)
        return NodeConfig(**base)

    def material(
        self,
        identity: Identity,
        *,
        named: str | None = None,
        ca: MeshCA | None = None,
        not_before: datetime.datetime | None = None,
        days: int = 30,
    ) -> Material:
        """A client certificate for ``identity``'s key, naming ``named`` (default: its
        own node id), from ``ca`` (default: the mesh CA), valid from ``not_before``."""
        issuer = ca or self.ca
        key = private_key_of(identity)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = node_certificate(
            issuer,
            key.public_key(),
            named or identity.node_id,
            days=days,
            not_before=not_before,
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + issuer.cert_pem
        return Material(identity.to_pem(), chain, self.ca.cert_pem)

    def write(self, name: str, material: Material) -> tuple[Path, Path]:
        """Write ``material`` as a node's cert and key files; (cert, key)."""
        folder = self.root / f"files-{name}"
        folder.mkdir(exist_ok=True)
        cert, key = folder / "node.crt", folder / "node.key"
        cert.write_bytes(material.chain)
        key.write_bytes(material.key)
        os.chmod(key, 0o600)
        return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


class Counter:
    """How often a node's ``echo`` handler ran."""

    calls = 0


def with_echo(node: Node) -> Counter:
    counter = Counter()

    @node.capability(id="echo")
    async def echo(value: int = 0) -> dict[str, int]:
        counter.calls += 1
        return {"echo": value}

    return counter


@pytest.fixture
async def server(pki: Pki) -> AsyncIterator[tuple[Node, Counter]]:
    node = Node(pki.config("b"))
    counter = with_echo(node)
    async with node:
        yield node, counter


def secure_channel(node: Node, material: Material | None, ca: bytes) -> grpc.aio.Channel:
    creds = (
        grpc.ssl_channel_credentials(ca)
        if material is None
        else grpc.ssl_channel_credentials(ca, material.key, material.chain)
    )
    name = node_dns_name(node.config.trust_domain, node.node_id)
    return grpc.aio.secure_channel(
        node.address,
        creds,
        options=[*channel_options(), ("grpc.ssl_target_name_override", name)],
    )


def card_of(identity: Identity) -> Any:
    """A signed card of ``identity`` (what a dialling node shows in its hello)."""
    return build_card(
        identity, name="client", endpoints=[], registry=CapabilityRegistry(), clock=SYSTEM_CLOCK
    )


def past() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=40)


# -- the gRPC door --------------------------------------------------------------------


async def test_mtls_grpc_door_serves_a_valid_client_as_its_node(
    pki: Pki, server: tuple[Node, Counter]
) -> None:
    node, counter = server
    me = Identity.generate()
    async with NodeClient(
        node.address, identity=me, channel=secure_channel(node, pki.material(me), pki.ca.cert_pem)
    ) as client:
        await client.handshake(card_of(me), expected_node_id=node.node_id)
        result = await client.call("echo", {"value": 1}, timeout=CALL_TIMEOUT)
        assert result.result.struct_value["echo"] == 1
        signed = await client.request("echo", {"value": 2}, timeout=CALL_TIMEOUT)
        assert signed == {"echo": 2}
    assert counter.calls == 2


async def test_a_certificate_is_its_node_even_unsigned(pki: Pki, tmp_path: Path) -> None:
    """A plain call under mTLS is the node its certificate names (kind node)."""
    seen: list[tuple[str, str]] = []
    node = Node(pki.config("b", allow_unsigned=True))

    @node.capability(id="whoami")
    async def whoami(ctx: CallContext) -> dict[str, str]:
        seen.append((ctx.caller, ctx.kind))
        return {}

    me = Identity.generate()
    async with node:
        channel = secure_channel(node, pki.material(me), pki.ca.cert_pem)
        async with NodeClient(node.address, channel=channel) as client:
            await client.call("whoami", {}, timeout=CALL_TIMEOUT)
            await channel.close()
    assert seen == [(me.node_id, "node")]


REFUSED_AT_TLS = ["no_client_certificate", "foreign_ca", "expired"]
REFUSED_AT_BINDING = ["another_node_id", "id_differs_from_key"]


def client_material(pki: Pki, case: str, me: Identity) -> Material | None:
    other = Identity.generate()
    if case == "no_client_certificate":
        return None
    if case == "foreign_ca":
        return pki.material(me, ca=pki.foreign)
    if case == "expired":
        return pki.material(me, not_before=past(), days=10)
    if case == "another_node_id":  # another node's valid certificate and key
        return pki.material(other)
    assert case == "id_differs_from_key"  # names me, holds another key
    cert_key = pki.material(other, named=me.node_id)
    return Material(other.to_pem(), cert_key.chain, cert_key.ca)


@pytest.mark.parametrize("case", REFUSED_AT_TLS + REFUSED_AT_BINDING)
async def test_mtls_refusals_on_the_grpc_door(
    pki: Pki, server: tuple[Node, Counter], case: str
) -> None:
    node, counter = server
    me = Identity.generate()
    channel = secure_channel(node, client_material(pki, case, me), pki.ca.cert_pem)
    errors: list[AralError] = []
    client_of = NodeClient(node.address, identity=me, channel=channel, node_id=node.node_id)
    async with client_of as client:
        client.keyring.pin(node.identity.public_key)  # as a handshake would have
        calls = [
            lambda: client.request("echo", {}, timeout=CALL_TIMEOUT),  # signed by me
            lambda: client.handshake(card_of(me), timeout=CALL_TIMEOUT),  # my card
        ]
        if case != "another_node_id":  # (its holder is that node: see the test below)
            calls.append(lambda: client.call("echo", {}, timeout=CALL_TIMEOUT))
        for call in calls:
            with pytest.raises(AralError) as exc:
                await call()
            errors.append(exc.value)
        await channel.close()
    for error in errors:
        if case in REFUSED_AT_TLS:  # the connection never came up
            assert error.status.name == "UNAVAILABLE", error
        else:
            assert error.status.name == "UNAUTHENTICATED", error
            assert error.reason == "CERT_IDENTITY_MISMATCH"
    assert counter.calls == 0
    assert not node.keyring.is_pinned(me.public_key.key_id)


async def test_another_nodes_certificate_calls_only_as_that_node(
    pki: Pki, server: tuple[Node, Counter]
) -> None:
    """Its holder is that node (it holds its key): an unsigned call runs as it."""
    node, counter = server
    other = Identity.generate()
    channel = secure_channel(node, pki.material(other), pki.ca.cert_pem)
    async with NodeClient(node.address, channel=channel) as client:
        await client.call("echo", {}, timeout=CALL_TIMEOUT)
        await channel.close()
    assert counter.calls == 1


async def test_deny_list_refuses_a_node_and_a_serial(pki: Pki) -> None:
    me, other = Identity.generate(), Identity.generate()
    theirs = pki.material(other)
    serial = format(x509.load_pem_x509_certificate(theirs.chain).serial_number, "x")
    node = Node(pki.config("b", tls_deny=frozenset({me.node_id, serial})))
    counter = with_echo(node)
    async with node:
        for who, material in ((me, pki.material(me)), (other, theirs)):
            channel = secure_channel(node, material, pki.ca.cert_pem)
            async with NodeClient(node.address, identity=who, channel=channel) as client:
                with pytest.raises(AralError) as exc:
                    await client.handshake(card_of(who), timeout=CALL_TIMEOUT)
                assert exc.value.reason == "CERT_DENIED"
                with pytest.raises(AralError) as exc:
                    await client.call("echo", {}, timeout=CALL_TIMEOUT)
                assert exc.value.status.name == "PERMISSION_DENIED"
                await channel.close()
    assert counter.calls == 0


# -- the channel between nodes --------------------------------------------------------


async def test_two_node_mtls_mesh_exchanges_channel_messages(pki: Pki) -> None:
    b = Node(pki.config("b"))
    counter = with_echo(b)
    a = Node(pki.config("a"))
    async with b, a:
        await a.connect(b.address)  # no id given: the second dial checks the verified one
        for i in range(3):
            answer = await a.request(b.node_id, "echo", {"value": i}, timeout=CALL_TIMEOUT)
            assert answer == {"echo": i}
    assert counter.calls == 3


def _write_bad(pki: Pki, case: str, a_dir: Path) -> dict[str, Any]:
    """Node a's TLS settings for ``case``."""
    me = load_identity(a_dir)
    if case == "no_client_certificate":  # a plaintext node dialling a mTLS one
        return {"tls_cert_file": None, "tls_ca_file": None, "tls_client_auth": "none"}
    material = client_material(pki, case, me)
    assert material is not None
    cert, key = pki.write(case, material)
    return {"tls_cert_file": cert, "tls_key_file": key}


@pytest.mark.parametrize("case", REFUSED_AT_TLS + REFUSED_AT_BINDING)
async def test_mtls_refusals_on_the_channel_between_nodes(pki: Pki, case: str) -> None:
    b = Node(pki.config("b", channel_open_timeout_seconds=3.0))
    counter = with_echo(b)
    a_dir = pki.node_dir("a")
    a = Node(pki.config("a", **_write_bad(pki, case, a_dir)))
    async with b, a:
        with pytest.raises(AralError) as exc:
            await a.connect(b.address, expected_node_id=b.node_id)
        if case in REFUSED_AT_BINDING:
            assert exc.value.reason == "CERT_IDENTITY_MISMATCH", exc.value
        else:
            assert exc.value.status.name == "UNAVAILABLE", exc.value
        assert not b.keyring.is_pinned(a.node_id)
        assert b._parts is not None
        assert not b._parts.hub.connected_peers()
    assert counter.calls == 0


# -- rotation ---------------------------------------------------------------------------


async def served_serial(node: Node, pki: Pki, client: Material) -> int:
    """The serial of the certificate a new TLS connection to ``node`` is shown."""
    ctx = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
    folder = pki.root / "probe"
    folder.mkdir(exist_ok=True)
    (folder / "c.pem").write_bytes(client.chain)
    (folder / "k.pem").write_bytes(client.key)
    ctx.load_cert_chain(folder / "c.pem", folder / "k.pem")
    ctx.set_alpn_protocols(["h2"])
    name = node_dns_name(node.config.trust_domain, node.node_id)
    host, port = node.address.rsplit(":", 1)
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=name), CALL_TIMEOUT
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()


async def test_rotation_serves_the_new_certificate_and_keeps_open_channels(pki: Pki) -> None:
    b = Node(pki.config("b"))
    counter = with_echo(b)
    a = Node(pki.config("a"))
    probe = pki.material(Identity.generate())
    async with b, a:
        await a.connect(b.address, expected_node_id=b.node_id)
        assert await a.request(b.node_id, "echo", {"value": 1}, timeout=CALL_TIMEOUT) == {"echo": 1}
        assert a._parts is not None
        link = a._parts.hub.peers[b.node_id].link
        old = await served_serial(b, pki, probe)
        cert_file = pki.root / "b" / "tls" / "node.crt"
        assert x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number == old
        info = issue(pki.root / "ca", b.identity, pki.root / "b" / KEY_FILE)  # rotate
        new = await served_serial(b, pki, probe)
        assert new != old
        assert format(new, "x") == info["serial"]
        # The channel opened before the rotation still carries messages, unbroken.
        for i in range(3):
            answer = await a.request(b.node_id, "echo", {"value": i}, timeout=CALL_TIMEOUT)
            assert answer == {"echo": i}
        assert a._parts.hub.peers[b.node_id].link is link
    assert counter.calls == 4


# -- start-up ---------------------------------------------------------------------------


async def test_plaintext_is_announced_loudly_when_the_doors_face_a_network(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = Node(
        NodeConfig(
            name="p",
            data_dir=tmp_path / "p",
            host="127.0.0.1",
            grpc_port=0,
            http_port=None,
            discovery="none",
        )
    )
    async with node:
        pass
    # On loopback only: said (INFO), not warned; facing a network: a WARNING.
    assert any(
        r.levelno == logging.INFO and PLAINTEXT_WARNING in r.getMessage() for r in caplog.records
    )
    assert [_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "127.5.0.1")] == [
        True
    ] * 5
    assert not any(_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.7", "node.example"))


async def test_tls_node_does_not_warn(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with Node(pki.config("b")):
        pass
    assert not any(PLAINTEXT_WARNING in r.getMessage() for r in caplog.records)


def bad_files(pki: Pki) -> Iterator[tuple[str, dict[str, Any], str]]:
    data = pki.node_dir("b")
    yield "missing cert", {"tls_cert_file": pki.root / "nope.crt"}, "nope.crt"
    yield "missing key", {"tls_key_file": pki.root / "nope.key"}, "nope.key"
    yield "missing ca", {"tls_ca_file": pki.root / "nope-ca.crt"}, "nope-ca.crt"
    other = pki.material(Identity.generate())
    cert, _ = pki.write("other", other)
    yield "cert of another key", {"tls_cert_file": cert}, str(cert)
    garbage = pki.root / "garbage.crt"
    garbage.write_bytes(b"not a certificate")
    yield "not PEM", {"tls_cert_file": garbage}, "garbage.crt"
    assert data.exists()


async def test_bad_tls_files_refuse_the_start_naming_the_file(pki: Pki) -> None:
    for label, extra, named in bad_files(pki):
        node = Node(pki.config("b", **extra))
        with pytest.raises(ValueError, match=named.replace(".", r"\.")):
            await node.start()
        assert label


def test_config_refuses_incoherent_tls() -> None:
    with pytest.raises(ValueError, match="need tls_cert_file"):
        NodeConfig(tls_key_file=Path("k.pem"))
    with pytest.raises(ValueError, match="needs tls_ca_file"):
        NodeConfig(tls_cert_file=Path("c.pem"), tls_client_auth="require")
    with pytest.raises(ValueError, match="tls_client_auth"):
        NodeConfig(tls_client_auth="request")
    with pytest.raises(ValueError, match="trust_domain"):
        NodeConfig(trust_domain="Not A Domain")
    with pytest.raises(ValueError, match="tls_deny"):
        NodeConfig(tls_deny=frozenset({"not-hex!"}))


def test_ed25519_identity_is_refused_naming_es256(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    identity = load_identity(tmp_path / "n", KeyAlgorithm.ED25519)
    with pytest.raises(ValueError, match="ES256"):
        issue(tmp_path / "ca", identity, tmp_path / "n" / KEY_FILE)


# -- the HTTP door ------------------------------------------------------------------------


async def test_http_door_serves_tls13_and_refuses_tls12(pki: Pki) -> None:
    node = Node(pki.config("b", http_port=0))
    counter = with_echo(node)
    async with node:
        url = f"https://127.0.0.1:{node.http_port}/openapi.json"
        modern = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
        async with httpx.AsyncClient(verify=modern, timeout=CALL_TIMEOUT) as client:
            response = await client.get(url)
            assert response.status_code == 200
            body = {"call": {"capability": "echo", "parameters": {"value": 5}}}
            invoke = url.replace("/openapi.json", "/v1/invoke")
            response = await client.post(invoke, json=body)
            assert response.status_code == 200, response.text
            assert response.json()["result"]["result"] == {"echo": 5}
            assert counter.calls == 1
        old = ssl.create_default_context(cadata=pki.ca.cert_pem.decode())
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        async with httpx.AsyncClient(verify=old, timeout=CALL_TIMEOUT) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)
        async with httpx.AsyncClient(timeout=CALL_TIMEOUT) as client:
            with pytest.raises(httpx.TransportError):  # plaintext: no answer from a TLS door
                await client.get(url.replace("https", "http"))


@pytest.mark.parametrize("case", ["foreign_ca", "expired", *REFUSED_AT_BINDING])
@pytest.mark.parametrize("known_id", [True, False], ids=["id_known", "id_learnt"])
async def test_a_dialler_refuses_a_node_serving_a_bad_certificate(
    pki: Pki, case: str, known_id: bool
) -> None:
    """The other direction: the node dialled shows the bad certificate."""
    b_dir = pki.node_dir("b")
    b = Node(pki.config("b", **_write_bad(pki, case, b_dir)))
    counter = with_echo(b)
    a = Node(pki.config("a"))
    async with b, a:
        with pytest.raises(AralError) as exc:
            await a.connect(b.address, expected_node_id=b.node_id if known_id else "")
        if case == "id_differs_from_key":  # named right: only its key gives it away
            assert exc.value.reason == "CERT_IDENTITY_MISMATCH", exc.value
        else:
            assert exc.value.status.name == "UNAVAILABLE", exc.value
        assert a._parts is not None
        assert not a._parts.hub.connected_peers()
        assert b.node_id not in a._parts.connector.clients
    assert counter.calls == 0


async def test_a_dialler_drops_a_denied_node(pki: Pki) -> None:
    b = Node(pki.config("b"))
    counter = with_echo(b)
    b_id = load_identity(pki.root / "b").node_id
    a = Node(pki.config("a", tls_deny=frozenset({b_id})))
    async with b, a:
        with pytest.raises(AralError) as exc:
            await a.connect(b.address, expected_node_id=b_id)
        assert exc.value.reason == "CERT_DENIED"
        assert a._parts is not None
        assert b_id not in a._parts.connector.clients
    assert counter.calls == 0


async def test_server_only_tls_serves_clients_without_a_certificate(pki: Pki) -> None:
    seen: list[tuple[str, str]] = []
    node = Node(pki.config("b", tls_client_auth="none"))

    @node.capability(id="whoami")
    async def whoami(ctx: CallContext) -> dict[str, str]:
        seen.append((ctx.caller, ctx.kind))
        return {}

    async with node:
        channel = secure_channel(node, None, pki.ca.cert_pem)
        async with NodeClient(node.address, channel=channel) as client:
            await client.call("whoami", {}, timeout=CALL_TIMEOUT)
            await channel.close()
    assert seen == [("", "anonymous")]


async def test_a_broken_rotation_keeps_the_old_certificate(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    b = Node(pki.config("b"))
    probe = pki.material(Identity.generate())
    async with b:
        old = await served_serial(b, pki, probe)
        cert_file = pki.root / "b" / "tls" / "node.crt"
        other = pki.material(Identity.generate())  # a certificate of another key
        tmp = cert_file.with_suffix(".new")
        tmp.write_bytes(other.chain)
        os.replace(tmp, cert_file)
        with caplog.at_level(logging.ERROR):
            assert await served_serial(b, pki, probe) == old
        assert any("keeping the old ones" in r.getMessage() for r in caplog.records)
