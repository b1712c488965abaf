"""The order the authenticators decide in, as the node builds it (``node_pipeline``
then ``install_access``): under mTLS a credential that is present but wrong is
refused, not covered by the connection's certificate (from review)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aralnode import NodeConfig
from aralnode._access import access_identity, install_access, node_pipeline
from aralnode.access.apikeys import ApiKeyStore
from aralnode.access.ca import init_ca, load_ca, node_certificate
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import SYSTEM_CLOCK
from aralnode.core.context import CallContext, Credentials, LazyMetadata
from aralnode.core.errors import Unauthenticated
from aralnode.core.identity import key_id_for


def certificate(tmp_path: Path) -> tuple[str, bytes]:
    init_ca(tmp_path / "ca", "aral.local")
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    node_id = key_id_for(spki)
    cert = node_certificate(load_ca(tmp_path / "ca"), key.public_key(), node_id)
    return node_id, cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"authorization": "Bearer not.a.jwt"}, id="garbage-bearer"),
        pytest.param({"authorization": "Basic Zm9vOmJhcg=="}, id="other-scheme"),
        pytest.param("revoked", id="revoked-key"),
    ],
)
def test_under_mtls_a_wrong_credential_is_refused_not_covered_by_the_certificate(
    tmp_path: Path, headers: dict[str, str] | str
) -> None:
    cfg = NodeConfig(
        data_dir=tmp_path / "node",
        tls_cert_file=tmp_path / "node.crt",
        tls_ca_file=tmp_path / "ca.crt",
        tls_client_auth="require",
        apikeys_file=tmp_path / "keys.json",
    )
    _, pipeline = node_pipeline(
        cfg, CapabilityRegistry(), SYSTEM_CLOCK, lambda: "self",
        authenticator=None, governance=None, checks=(), audit=(),
    )  # fmt: skip
    stage = pipeline.stages.authenticate
    install_access(stage, None, access_identity(cfg))
    if headers == "revoked":
        store = ApiKeyStore(tmp_path / "keys.json")
        key, record = store.create("alice", scopes=["x"])
        store.revoke(record.id)
        headers = {"x-api-key": key}
    assert isinstance(headers, dict)
    node_id, pem = certificate(tmp_path)
    ctx = CallContext(door="grpc", metadata=headers, credentials=Credentials(peer_certificate=pem))
    with pytest.raises(Unauthenticated):
        stage(ctx)
    # The same certificate with no credential beside it is its node.
    ctx = CallContext(door="grpc", metadata={}, credentials=Credentials(peer_certificate=pem))
    stage(ctx)
    assert (ctx.caller, ctx.kind) == (node_id, "node")


def test_under_mtls_an_unsigned_claim_to_act_for_someone_gets_no_node_rights(
    tmp_path: Path,
) -> None:
    """A certificate names its node; an unsigned ``on_behalf_of`` beside it is not
    a delegation (only a signed statement is), so the call is not the node's (from
    review)."""
    cfg = NodeConfig(
        data_dir=tmp_path / "node",
        tls_cert_file=tmp_path / "node.crt",
        tls_ca_file=tmp_path / "ca.crt",
        tls_client_auth="require",
        peer_scopes=frozenset({"mesh:x"}),
    )
    _, pipeline = node_pipeline(
        cfg, CapabilityRegistry(), SYSTEM_CLOCK, lambda: "self",
        authenticator=None, governance=None, checks=(), audit=(),
    )  # fmt: skip
    stage = pipeline.stages.authenticate
    node_id, pem = certificate(tmp_path)
    ctx = CallContext(
        door="grpc", credentials=Credentials(peer_certificate=pem, on_behalf_of="alice")
    )
    stage(ctx)
    assert ctx.caller != node_id
    assert "mesh:x" not in ctx.scopes


@pytest.mark.parametrize("name", ["authorization", "x-api-key", "x-aral-signature"])
def test_a_credential_header_given_twice_is_refused_before_any_authenticator(
    tmp_path: Path, name: str
) -> None:
    """Two copies of a credential header (a wrong one beside alice's key, in either
    order) are refused ``CREDENTIALS_AMBIGUOUS`` by the stage every door goes
    through, counted as any authentication refusal; one copy is alice."""
    cfg = NodeConfig(data_dir=tmp_path / "node", apikeys_file=tmp_path / "keys.json")
    _, pipeline = node_pipeline(
        cfg, CapabilityRegistry(), SYSTEM_CLOCK, lambda: "self",
        authenticator=None, governance=None, checks=(), audit=(),
    )  # fmt: skip
    stage = pipeline.stages.authenticate
    install_access(stage, None, access_identity(cfg))
    key, _ = ApiKeyStore(tmp_path / "keys.json").create("alice", scopes=["x"])
    good = f"Bearer {key}" if name == "authorization" else key
    wrong = good[:-4] + "AAAA"
    for pairs in ([(name, wrong), (name, good)], [(name, good), (name, wrong)]):
        metadata = LazyMetadata(lambda p=pairs: p)
        ctx = CallContext(door="grpc", metadata=metadata, credentials=Credentials())
        with pytest.raises(Unauthenticated) as refused:
            stage(ctx)
        assert refused.value.reason == "CREDENTIALS_AMBIGUOUS"
        assert name in refused.value.message
        assert (ctx.caller, ctx.authenticated) == ("", False)
    assert pipeline.counters["auth.refused"] == 2
    if name != "x-aral-signature":  # (read by the ARAL message door, not here)
        metadata = LazyMetadata(lambda: [(name, good)])
        ctx = CallContext(door="grpc", metadata=metadata, credentials=Credentials())
        stage(ctx)
        assert ctx.caller == "alice"
