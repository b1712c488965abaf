"""The checks ``NodeConfig`` runs on construction, by group (``config.py`` keeps
the fields and their documentation). Each raises ``ValueError`` naming the field;
some normalise a field in place (a list to a frozenset, a spec to its parsed form).
``cfg`` is a ``NodeConfig`` (typed ``Any``: this module is below ``config.py``,
which imports it, and the layering test refuses even a type-only cycle).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from aralnode.core.rates import Rate, parse_overrides

DISCOVERY_MODES = ("mdns", "etcd", "static", "none")  # "none" alone; others combine
HTTP_PARSERS = ("auto", "httptools", "h11")
# Asymmetric JWS algorithms only (ident): a verifier holding public keys cannot check
# an HMAC, and accepting HS* with a public key as secret is the classic forgery.
JWT_ALGORITHMS = (
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
TLS_CLIENT_AUTH = ("none", "require")  # tls group: grpcio offers no "request" mode
TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,200}[a-z0-9])?$")
LOG_FORMATS = ("text", "json")
NODE_ID = re.compile(r"^[a-z2-7]{32}$")  # base32 of 20 bytes of the key's hash


def check_paths(cfg: Any) -> None:
    """Every path field as a ``Path`` (a program may give a ``str``: it was taken,
    then failed at start with an AttributeError; "" is none); anything else is
    refused."""
    for f in dataclasses.fields(cfg):
        if f.type not in ("Path | None", "Path"):
            continue
        value = getattr(cfg, f.name)
        if value == "":  # (none, as it always read: Path("") would be ".")
            setattr(cfg, f.name, None)
        elif isinstance(value, str | os.PathLike) and not isinstance(value, Path):
            setattr(cfg, f.name, Path(value))
        elif value is not None and not isinstance(value, Path):
            raise ValueError(f"{f.name} must be a path, not {type(value).__name__}")


def check_audit(cfg: Any) -> None:
    if cfg.audit_sign_every < 1 or cfg.audit_max_pending < 1:
        raise ValueError("audit_sign_every and audit_max_pending must be at least 1")
    if cfg.audit_sign_seconds <= 0:
        raise ValueError("audit_sign_seconds must be positive")
    if cfg.policy_reload_seconds < 0:
        raise ValueError("policy_reload_seconds must be >= 0")
    if cfg.audit_rotate_bytes and cfg.audit_rotate_bytes < 1024 * 1024:
        raise ValueError("audit_rotate_bytes must be at least 1 MiB (or 0: never rotate)")


def check_limits(cfg: Any) -> None:
    for name in (
        "rate_limit_global",
        "rate_limit_per_principal",
        "rate_limit_per_address",
        "rate_limit_per_peer",
    ):
        try:
            Rate.parse(getattr(cfg, name))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    cfg.rate_limit_overrides = dict(cfg.rate_limit_overrides)
    parse_overrides(cfg.rate_limit_overrides)
    if cfg.rate_limit_max_buckets < 16:
        raise ValueError("rate_limit_max_buckets must be at least 16")
    if cfg.breaker_failures < 0:
        raise ValueError("breaker_failures must be at least 0 (0: no breakers)")
    if not 0 < cfg.breaker_cooldown_seconds <= cfg.breaker_max_cooldown_seconds:
        raise ValueError("breaker_cooldown_seconds must be > 0 and <= breaker_max_cooldown_seconds")


def check_tls(cfg: Any) -> None:
    """The tls group's fields: coherent (the files themselves are read at start)."""
    if cfg.tls_client_auth not in TLS_CLIENT_AUTH:
        raise ValueError(f"tls_client_auth must be one of {', '.join(TLS_CLIENT_AUTH)}")
    for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
        value = getattr(cfg, name)
        if value is not None:
            setattr(cfg, name, Path(value))
    if cfg.tls_cert_file is None and (cfg.tls_key_file or cfg.tls_ca_file):
        raise ValueError("tls_key_file and tls_ca_file need tls_cert_file")
    if cfg.tls_client_auth == "require" and cfg.tls_ca_file is None:
        raise ValueError("tls_client_auth 'require' needs tls_ca_file (the mesh CA)")
    if cfg.tls_client_auth == "require" and cfg.tls_cert_file is None:
        raise ValueError("tls_client_auth 'require' needs tls_cert_file")
    if not TRUST_DOMAIN.match(cfg.trust_domain):
        raise ValueError(f"trust_domain {cfg.trust_domain!r} is not a lower-case DNS name")
    cfg.tls_deny = frozenset(d.strip().lower() for d in cfg.tls_deny)
    for item in cfg.tls_deny:
        if not item or not item.isalnum():
            raise ValueError(f"tls_deny {item!r} is not a node id or a hex serial")


def check_authz(cfg: Any) -> None:
    """The authz group's settings: role names, their scopes, the bounds."""
    cfg.roles = {name: frozenset(scopes) for name, scopes in dict(cfg.roles).items()}
    for name, scopes in cfg.roles.items():
        if not NAME.match(name):
            raise ValueError(f"invalid role name {name!r}: 1..63 letters, digits, '.', '_' or '-'")
        for scope in scopes:
            if not isinstance(scope, str) or not 0 < len(scope) <= 256 or scope.strip() != scope:
                raise ValueError(f"role {name!r} has an invalid scope {scope!r}")
    cfg.peer_roles = {k: frozenset(v) for k, v in dict(cfg.peer_roles).items()}
    for node_id, roles in cfg.peer_roles.items():
        if not NODE_ID.match(node_id) or not roles:
            raise ValueError(f"peer_roles names a node id and at least one role: {node_id!r}")
    if not 0 <= cfg.max_delegation_depth <= 64:
        raise ValueError("max_delegation_depth must be in [0, 64]")
    if not 1 <= cfg.role_cache_size <= 1_000_000:
        raise ValueError("role_cache_size must be in [1, 1000000]")


def check_card_bounds(cfg: Any) -> None:
    """The mesh-b group's bounds: at least what this node's own card needs."""
    minimum = {
        "card_max_bytes": 4096,
        "card_max_capabilities": 1,
        "card_max_items": 4,
        "card_max_text_chars": 64,
        "card_max_description_chars": 64,
        "card_max_schema_bytes": 256,
        "card_max_schema_depth": 4,
    }
    for name, least in minimum.items():
        if getattr(cfg, name) < least:
            raise ValueError(f"{name} must be at least {least}")
    if not 0 < cfg.channel_open_timeout_seconds <= 3600:
        raise ValueError("channel_open_timeout_seconds must be in (0, 3600]")


def check_ident(cfg: Any) -> None:
    """The ident group's settings: pinned asymmetric algorithms, a JWT issuer with
    its audience and keys, positive bounds."""
    cfg.jwt_algorithms = list(cfg.jwt_algorithms)
    for alg in cfg.jwt_algorithms:
        if alg not in JWT_ALGORITHMS:
            raise ValueError(
                f"jwt_algorithms: {alg!r} is not one of {', '.join(JWT_ALGORITHMS)} "
                "(never 'none' nor HS*: the node holds public keys only)"
            )
    if not cfg.jwt_algorithms:
        raise ValueError("jwt_algorithms must name at least one algorithm")
    if cfg.jwt_issuer:
        if not cfg.jwt_audience:
            raise ValueError("jwt_issuer needs jwt_audience: a token for another service must fail")
        if not (cfg.jwt_jwks_file or cfg.jwt_jwks_url):
            raise ValueError("jwt_issuer needs jwt_jwks_file or jwt_jwks_url (its keys)")
    if cfg.jwt_jwks_url and not cfg.jwt_jwks_url.startswith(("https://", "http://")):
        raise ValueError("jwt_jwks_url must be an http(s) URL")
    if cfg.oauth_introspection_url and not cfg.oauth_introspection_url.startswith(
        ("https://", "http://")
    ):
        raise ValueError("oauth_introspection_url must be an http(s) URL")
    if cfg.oauth_introspection_url and not (cfg.oauth_resource or cfg.jwt_audience):
        raise ValueError(
            "oauth_introspection_url needs oauth_resource or jwt_audience (the audience "
            "an introspected token must name): a token for another service must fail"
        )
    if not 0 <= cfg.jwt_leeway_seconds <= 300:
        raise ValueError("jwt_leeway_seconds must be in [0, 300]")
    if cfg.jwt_jwks_refetch_seconds < 0:
        raise ValueError("jwt_jwks_refetch_seconds must not be negative")
    if cfg.token_cache_size < 1:
        raise ValueError("token_cache_size must be at least 1")
    if cfg.session_ttl_seconds <= 0:
        raise ValueError("session_ttl_seconds must be positive")
    if not cfg.jwt_caller_claim:
        raise ValueError("jwt_caller_claim must name a claim")


def check_http(cfg: Any) -> None:
    """The HTTP group's bounds."""
    if cfg.http_parser not in HTTP_PARSERS:
        raise ValueError(f"http_parser must be one of {', '.join(HTTP_PARSERS)}")
    if cfg.http_max_header_bytes < 1024:
        raise ValueError("http_max_header_bytes must be at least 1024")
    if cfg.http_max_headers < 8:
        raise ValueError("http_max_headers must be at least 8")
    if not 0 < cfg.http_header_timeout_seconds <= 3600:
        raise ValueError("http_header_timeout_seconds must be in (0, 3600]")
    if not 0 < cfg.http_body_timeout_seconds <= 3600:
        raise ValueError("http_body_timeout_seconds must be in (0, 3600]")
    if not 1 <= cfg.http_max_connections_per_address <= cfg.http_max_connections:
        raise ValueError("need 1 <= http_max_connections_per_address <= http_max_connections")
    if cfg.max_concurrent_per_caller is not None and cfg.max_concurrent_per_caller < 1:
        raise ValueError("max_concurrent_per_caller must be at least 1 (or None)")
    if not 0 < cfg.forward_timeout_seconds <= 86_400:
        raise ValueError("forward_timeout_seconds must be in (0, 86400]")
    if not 1 <= cfg.mcp_max_sessions_per_client <= cfg.mcp_max_sessions:
        raise ValueError("need 1 <= mcp_max_sessions_per_client <= mcp_max_sessions")
    if not 1 <= cfg.ws_max_connections_per_client <= cfg.ws_max_connections:
        raise ValueError("need 1 <= ws_max_connections_per_client <= ws_max_connections")


def check_grpc_bounds(cfg: Any) -> None:
    for name in (
        "grpc_max_connections",
        "grpc_max_streams_per_connection",
        "grpc_max_concurrent_rpcs",
        "grpc_max_streams_per_address",
        "grpc_max_connections_per_address",
    ):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    for name in ("grpc_handshake_timeout_ms", "grpc_connection_idle_ms", "grpc_request_timeout_ms"):
        if getattr(cfg, name) < 100:
            raise ValueError(f"{name} must be at least 100")
    if cfg.grpc_connection_age_ms is not None and cfg.grpc_connection_age_ms < 1000:
        raise ValueError("grpc_connection_age_ms must be at least 1000 (or None)")


def check_operations(cfg: Any) -> None:
    if cfg.log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
    if not 0.0 <= cfg.tracing_sample_ratio <= 1.0:
        raise ValueError("tracing_sample_ratio must be between 0 and 1")
    endpoint = cfg.tracing_otlp_endpoint
    if endpoint and not re.match(r"^https?://[^\s/]+(:\d+)?/?$", endpoint):
        raise ValueError(
            f"tracing_otlp_endpoint {endpoint!r} must be http(s)://HOST:PORT (OTLP/gRPC)"
        )


def check_discovery(cfg: Any) -> str:
    """``discovery`` normalised ("mdns, etcd" -> "mdns,etcd"); each name known,
    none twice, "none" alone."""
    names = [n.strip() for n in str(cfg.discovery).split(",")]
    if any(n not in DISCOVERY_MODES for n in names) or len(set(names)) != len(names):
        raise ValueError(
            f"discovery {cfg.discovery!r} must be 'none' or a comma-separated list of "
            "mdns, etcd, static (each once)"
        )
    if "none" in names and len(names) > 1:
        raise ValueError("discovery 'none' cannot be combined with other backends")
    return ",".join(names)


def check_etcd(cfg: Any) -> None:
    """The etcd group: endpoints are http(s) URLs (a bare HOST:PORT is made one),
    at least one when the backend is on."""
    cfg.etcd_endpoints = [
        e if "://" in e else f"http://{e}" for e in cfg.etcd_endpoints
    ]  # HOST:PORT is taken as http://HOST:PORT
    for endpoint in cfg.etcd_endpoints:
        if not re.match(r"^https?://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+)(:\d{1,5})?/?$", endpoint):
            raise ValueError(f"etcd endpoint {endpoint!r} must be http(s)://HOST:PORT")
    uses_etcd = "etcd" in cfg.discovery.split(",")
    if uses_etcd and not cfg.etcd_endpoints:
        raise ValueError("discovery 'etcd' needs etcd_endpoints (--etcd-endpoint URL)")
    if cfg.etcd_bridge and not (uses_etcd and "mdns" in cfg.discovery.split(",")):
        raise ValueError("etcd_bridge joins the LAN and etcd: it needs discovery 'mdns,etcd'")
    if not cfg.etcd_prefix.startswith("/") or not cfg.etcd_prefix.endswith("/"):
        raise ValueError("etcd_prefix must start and end with '/' (e.g. /aral/v1/nodes/)")
    if not 2 <= cfg.etcd_lease_ttl_seconds <= 3600:
        raise ValueError("etcd_lease_ttl_seconds must be in [2, 3600]")
    if (cfg.etcd_cert_file is None) != (cfg.etcd_key_file is None):
        raise ValueError("etcd_cert_file and etcd_key_file come together")
    if cfg.etcd_password_file is not None and not cfg.etcd_username:
        raise ValueError("etcd_password_file needs etcd_username")
