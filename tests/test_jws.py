"""``aralnode.core.jws``: what the node signs verifies with another JOSE library
(jwcrypto), and what it verifies is refused when tampered with or mislabelled."""

from __future__ import annotations

import json

import pytest
from jwcrypto import jwk as jc_jwk
from jwcrypto import jws as jc_jws

from aralnode.config import NodeConfig
from aralnode.core import jws
from aralnode.core.errors import SignatureInvalid
from aralnode.core.identity import Identity, KeyAlgorithm

ALGORITHMS = [KeyAlgorithm.ES256, KeyAlgorithm.ED25519]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_token_verifies_with_jwcrypto_and_the_jwk_names_the_node(
    algorithm: KeyAlgorithm,
) -> None:
    identity = Identity.generate(algorithm)
    body = b'{"hello": "world"}'
    token = jws.sign(identity, body)
    key = jc_jwk.JWK(**jws.public_jwk(identity.public_key))
    checked = jc_jws.JWS()
    checked.deserialize(token, key)
    assert checked.payload == body
    assert json.loads(checked.objects["protected"])["kid"] == identity.node_id
    assert jws.key_from_jwk(jws.public_jwk(identity.public_key)).key_id == identity.node_id


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_detached_signature_covers_exactly_its_payload(algorithm: KeyAlgorithm) -> None:
    identity = Identity.generate(algorithm)
    token = jws.sign(identity, b"exact bytes", detached=True)
    assert token.split(".")[1] == ""
    assert jws.verify(token, identity.public_key, b"exact bytes")["alg"] == jws.algorithm_of(
        identity
    )
    with pytest.raises(SignatureInvalid):
        jws.verify(token, identity.public_key, b"exact bytes ")
    with pytest.raises(SignatureInvalid):  # another key
        jws.verify(token, Identity.generate(algorithm).public_key, b"exact bytes")


def test_a_header_that_lies_about_its_algorithm_or_asks_for_extensions_is_refused() -> None:
    identity = Identity.generate()
    for header in ({"alg": "none"}, {"alg": "HS256"}, {"crit": ["b64"], "b64": False}):
        token = jws.sign(identity, b"x", header=header)
        with pytest.raises(SignatureInvalid):
            jws.verify(token, identity.public_key)


@pytest.mark.parametrize(
    "token",
    ["", "a.b", "a.b.c.d", "!!!.e30.e30", "e30=.e30.e30", "W10.e30.e30", "x" * 9000 + ".e30.e30"],
)
def test_malformed_tokens_are_refused_with_signature_invalid(token: str) -> None:
    with pytest.raises(SignatureInvalid):
        jws.verify(token, Identity.generate().public_key)


def test_the_canonical_form_is_rfc_8785() -> None:
    assert jws.canonical({"b": 1, "a": [True, None, "é"], "c": 1.0}) == (
        '{"a":[true,null,"é"],"b":1,"c":1}'.encode()
    )


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ({"discovery": "etcd"}, "needs etcd_endpoints"),
        ({"discovery": "none,mdns"}, "cannot be combined"),
        ({"discovery": "mdns,mdns"}, "each once"),
        ({"discovery": "consul"}, "comma-separated"),
        ({"discovery": "etcd", "etcd_endpoints": ["ftp://x:1"]}, "http(s)://HOST:PORT"),
        ({"etcd_bridge": True}, "mdns,etcd"),
        ({"etcd_prefix": "aral"}, "start and end with '/'"),
        ({"etcd_lease_ttl_seconds": 1}, "etcd_lease_ttl_seconds"),
    ],
)
def test_discovery_settings_are_checked(given: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        NodeConfig(**given)  # type: ignore[arg-type]


def test_backends_combine_and_a_bare_endpoint_is_taken_as_http() -> None:
    config = NodeConfig(discovery="mdns, etcd", etcd_endpoints=["127.0.0.1:2379"])
    assert config.discovery_backends == ("mdns", "etcd")
    assert config.etcd_endpoints == ["http://127.0.0.1:2379"]
    assert NodeConfig(discovery="none").discovery_backends == ()
