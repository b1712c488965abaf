"""How a node is guarded: its TLS files, its callers' authenticators, its role map,
rate limits and circuit breakers, built from ``NodeConfig`` (the access settings of
issue 15), for ``node.py`` and ``_assembly.py`` to wire in.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aralnode._logs import get_logger
from aralnode.access.apikeys import ApiKeyCheck
from aralnode.access.bearer import BearerAuthenticator
from aralnode.access.breaker import Breakers
from aralnode.access.buckets import RateLimiter
from aralnode.access.introspect import Introspector
from aralnode.access.jwks import JwksFile, JwksUrl, KeySource
from aralnode.access.jwt import JwtRules, JwtVerifier
from aralnode.access.roles import RoleMap
from aralnode.access.tls import (
    PLAINTEXT_WARNING,
    CertRules,
    TlsFiles,
    TlsSettings,
    certificate_rule,
)
from aralnode.access.tokens import TokenCache
from aralnode.config import NodeConfig
from aralnode.core.capabilities import CapabilityRegistry
from aralnode.core.clock import Clock
from aralnode.core.governance import Evaluator
from aralnode.core.rates import Rate, parse_overrides
from aralnode.service.auth import Authenticator, Chain, PeerAuthenticator
from aralnode.service.context import ContextBuilder
from aralnode.service.pipeline import Pipeline
from aralnode.service.stages import AuditSink, Authenticate, ResponseCheck, Stages
from aralnode.service.tracing import TracedPipeline
from aralnode.store.keys import KEY_FILE

log = get_logger("aralnode")


def node_pipeline(
    cfg: NodeConfig,
    registry: CapabilityRegistry,
    clock: Clock,
    node_id: Callable[[], str],
    *,
    authenticator: Authenticator | None,
    governance: Evaluator | None,
    checks: Sequence[ResponseCheck],
    audit: Sequence[AuditSink],
) -> tuple[RoleMap, Pipeline]:
    """The node's one pipeline, its stages as ``cfg`` says: the program's
    authenticator (if any) in front of the node's own rule (and, under mTLS, the
    certificate rule), the role map, admission limits; and the role map itself."""
    roles, peer_rule = authorization(cfg, node_id, clock)
    rule: Authenticator = peer_rule
    if cfg.tls_client_auth == "require":  # a verified mesh certificate names its node
        rule = certificate_rule(rule, cfg)
    stages = Stages.default(
        # Always a chain ending with the node's rule: install_access puts the
        # caller-identity authenticator just before it, after the program's own.
        authenticator=Chain(rule) if authenticator is None else Chain(authenticator, rule),
        roles=roles,
        governance=governance,
        allow_anonymous=cfg.allow_unsigned,
        max_concurrent=cfg.max_concurrent,
        max_concurrent_per_caller=cfg.max_concurrent_per_caller,
        limiter=rate_limiter(cfg, clock),
        checks=checks,
        audit=audit,
    )
    pipeline = TracedPipeline(registry, stages, clock)  # spans when tracing is on
    # A JSON result is held to what one message carries, on every door alike.
    pipeline.max_result_bytes = cfg.max_message_bytes
    return roles, pipeline


def authorization(
    cfg: NodeConfig, node_id: Callable[[], str], clock: Clock
) -> tuple[RoleMap, PeerAuthenticator]:
    """The node's role map and its own authentication rule (the authz settings)."""
    roles = RoleMap(cfg.roles, deny_by_default=cfg.deny_by_default, cache_size=cfg.role_cache_size)
    rule = PeerAuthenticator(
        node_id,
        peer_scopes=cfg.peer_scopes,
        peer_grants=cfg.peer_grants,
        anonymous_scopes=roles.anonymous,
        max_delegation_depth=cfg.max_delegation_depth,
        now_ms=clock.now_ms,
        peer_roles=cfg.peer_roles,
    )
    return roles, rule


def access_identity(cfg: NodeConfig) -> BearerAuthenticator:
    """The caller-identity authenticator ``cfg`` asks for: API keys (always: the key
    file may appear later), JWTs when ``jwt_issuer`` is set, introspection when
    ``oauth_introspection_url`` is."""
    cache = TokenCache(cfg.token_cache_size)
    verifier = None
    if cfg.jwt_issuer:
        keys: KeySource = (
            JwksFile(cfg.jwt_jwks_file)
            if cfg.jwt_jwks_file is not None
            else JwksUrl(cfg.jwt_jwks_url, refetch_seconds=cfg.jwt_jwks_refetch_seconds)
        )
        rules = JwtRules(
            issuer=cfg.jwt_issuer,
            audience=cfg.jwt_audience,
            algorithms=tuple(cfg.jwt_algorithms),
            leeway=cfg.jwt_leeway_seconds,
            caller_claim=cfg.jwt_caller_claim,
            roles_claim=cfg.jwt_roles_claim,
            kind_claim=cfg.jwt_kind_claim,
        )
        verifier = JwtVerifier(rules, keys, cache)
    introspector = None
    if cfg.oauth_introspection_url:
        introspector = Introspector(
            cfg.oauth_introspection_url,
            client_id=cfg.oauth_client_id,
            client_secret=cfg.oauth_client_secret,
            cache=cache,
            negative_size=cfg.token_cache_size,
            audience=cfg.oauth_resource or cfg.jwt_audience,
            # An answer that names its issuer names one the node trusts (RFC 7662).
            issuers=tuple(cfg.oauth_authorization_servers)
            or ((cfg.jwt_issuer,) if cfg.jwt_issuer else ()),
            leeway=cfg.jwt_leeway_seconds,
        )
    return BearerAuthenticator(
        apikeys=ApiKeyCheck(cfg.apikeys_path), jwt=verifier, introspector=introspector
    )


def install_access(stage: Authenticate, http: Any, access: BearerAuthenticator) -> None:
    """Put the caller-identity authenticator before the node's own rule (one
    pipeline: every door) -- after the program's authenticator, if it gave one
    (``node_pipeline`` chains that in front: it decides first, and a token it does
    not know falls to ours) -- tell the HTTP port's gate (``None``: no HTTP), and
    start the JWKS URL's first fetch."""
    current = stage.authenticator
    if isinstance(current, Chain):  # node_pipeline's: (program's,) the node's rule
        *program, rule = current.authenticators
        stage.authenticator = Chain(*program, access, rule)
    else:  # a stage someone replaced by hand: ours first
        stage.authenticator = Chain(access, current)
    if http is not None:
        http.gate.access = access
    if access.jwt is not None and isinstance(access.jwt.keys, JwksUrl):
        access.jwt.keys.request_fetch()


@dataclass(slots=True)
class NodeTls:
    """A TLS node's files and, under mTLS, the rule binding a peer's certificate to
    the node its handshake or channel open verified."""

    files: TlsFiles
    bind: Callable[[bytes, str], object] | None


def _loopback(host: str) -> bool:
    """Whether ``host`` (the doors' bind address) is on this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def node_tls(cfg: NodeConfig, contexts: ContextBuilder) -> NodeTls | None:
    """The node's TLS files, checked (a bad set refuses the start, naming the file);
    ``None``, loudly, for a plaintext node."""
    if cfg.tls_cert_file is None:
        # Loudly when the doors face a network; a node on loopback only is local
        # development (the CLI's own, a test's): said, not warned.
        log.log(logging.INFO if _loopback(cfg.bind_host) else logging.WARNING, PLAINTEXT_WARNING)
        return None
    settings = TlsSettings(
        cert_file=cfg.tls_cert_file,
        key_file=cfg.tls_key_file or cfg.resolved_data_dir / KEY_FILE,
        ca_file=cfg.tls_ca_file,
        client_auth=cfg.tls_client_auth,
        trust_domain=cfg.trust_domain,
        deny=cfg.tls_deny,
    )
    files = TlsFiles(settings)
    if not cfg.tls_http and cfg.http_port is not None:
        log.warning("tls_http is off: the HTTP door (REST, MCP, WebSocket) is PLAINTEXT")
    if not settings.mutual:
        return NodeTls(files, None)
    contexts.certificates = True  # the gRPC door hands client certificates in
    return NodeTls(files, CertRules(cfg.trust_domain, cfg.tls_deny).bind)


def breakers(cfg: NodeConfig, clock: Clock, counters: Counter[str]) -> Breakers:
    """The circuit breakers on calls to peers ``cfg``'s ``breaker_*`` fields describe."""
    return Breakers(
        clock,
        failures=cfg.breaker_failures,
        cooldown=cfg.breaker_cooldown_seconds,
        max_cooldown=cfg.breaker_max_cooldown_seconds,
        counters=counters,
    )


def rate_limiter(cfg: NodeConfig, clock: Clock) -> RateLimiter:
    """The token buckets ``cfg``'s ``rate_limit_*`` fields describe."""
    return RateLimiter(
        clock,
        global_rate=Rate.parse(cfg.rate_limit_global),
        per_principal=Rate.parse(cfg.rate_limit_per_principal),
        per_address=Rate.parse(cfg.rate_limit_per_address),
        per_peer=Rate.parse(cfg.rate_limit_per_peer),
        overrides=parse_overrides(cfg.rate_limit_overrides),
        max_buckets=cfg.rate_limit_max_buckets,
    )


__all__ = [
    "NodeTls",
    "access_identity",
    "authorization",
    "breakers",
    "install_access",
    "node_pipeline",
    "node_tls",
    "rate_limiter",
]
