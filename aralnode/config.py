"""Node configuration: one dataclass, embedded defaults, validated on construction."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aralnode import config_checks
from aralnode.config_checks import (
    NAME,
    NODE_ID,
)
from aralnode.core.envelope import DEFAULT_MAX_MESSAGE_BYTES
from aralnode.core.handshake import CardLimits
from aralnode.core.identity import KeyAlgorithm
from aralnode.core.rates import RateSpec

DEFAULT_GRPC_PORT = 50051


def default_data_dir(name: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aralnode" / name


@dataclass(slots=True)
class NodeConfig:
    """Everything a node needs; every field has a working default.

    Attributes:
        name: Human name, also the mDNS instance name (made unique on conflict).
        host: Address to bind. ``None``: 0.0.0.0 with mDNS discovery (peers must reach
            us), 127.0.0.1 otherwise.
        grpc_port: gRPC port; 0 picks a free one.
        http_port: REST/MCP/WebSocket port; 0 picks a free one, ``None`` disables HTTP.
        http_allowed_hosts: Host header values the HTTP port accepts besides loopback
            names and the bound address (``name:*`` for any port). Others get 421:
            the DNS-rebinding guard, which runs on 0.0.0.0 too.
        http_allowed_origins: Browser origins allowed besides loopback ones
            (e.g. ``https://app.example``); others get 403.
        data_dir: Keys and state; defaults to ``$XDG_DATA_HOME/aralnode/<name>``.
        discovery: Backends, comma-separated: "mdns" (the LAN), "etcd" (a registry,
            ``etcd_endpoints``), "static" (only ``peers``), e.g. "mdns,etcd"; or
            "none". What a backend finds is a hint, verified in a handshake.
        peers: Static peers, ``host:port``, dialled at start.
        interfaces: IP addresses of the interfaces mDNS uses (all if empty).
        key_algorithm: Algorithm of a newly made identity key.
        allow_unsigned: Accept plain calls and unsigned envelopes (as anonymous, no scopes).
        peer_scopes: Scopes granted to every caller that signs with a node key a
            handshake verified. Any key can complete a handshake: whoever reaches the
            port gets these. For trust in particular nodes use ``peer_grants``.
        peer_grants: Scopes granted to the node with this id (its key, verified in a
            handshake), on top of ``peer_scopes``; ``aralnode run --grant``.
        max_message_bytes: Largest envelope content accepted.
        replay_window_ms: How old a signed message may be (its id is remembered that
            long, so a replay within it is refused; an older one is stale).
        clock_skew_ms: How far a signed message's clock may be ahead of this node's
            (and behind, on top of ``replay_window_ms``).
        keepalive_ms: gRPC and channel keepalive interval.
        peer_timeout_ms: How long a silent peer stays before it is dropped.
        max_concurrent: Calls running at once before RESOURCE_EXHAUSTED.
        drain_seconds: Grace period for in-flight calls on stop.
        durable: Keep the A2A channel outbox and inbox in SQLite under ``data_dir``
            (``channels.sqlite3``, WAL): unacked messages survive our restart and
            dedupe marks survive it (exactly once at transactional handlers).
        channel_window: Credit per peer: messages it may have in flight to us, unacked.
        outbox_limit: Unacked messages per peer before ``notify``/``request`` wait.
        channel_timeout_ms: Silence tolerated beyond a peer's keepalive before its
            channel counts as dead and is redialled.
        channel_signing: Sign every channel message (turn off only to measure).
        channel_verify_processes: Helper processes that check the signatures of
            a peer's large batches, started on first use (0: threads of this
            process check them; docs/channels.md).
        listing_requires_auth: Listing surfaces (MCP tools/list, /openapi.json, /docs,
            gRPC reflection) answer authenticated callers only.
        grpc_max_connections: Connections the gRPC port holds at once; more are
            closed as they come (keeps file descriptors for the rest of the node).
        grpc_max_streams_per_connection: Calls one connection may have open at once
            (HTTP/2 MAX_CONCURRENT_STREAMS; a client past it gets REFUSED_STREAM).
        grpc_max_concurrent_rpcs: Calls the gRPC port holds at once, streams and
            channels included; more are refused with RESOURCE_EXHAUSTED.
        grpc_handshake_timeout_ms: A connection that has not begun HTTP/2 by then
            is closed.
        grpc_connection_idle_ms: A connection with no call for this long is closed
            (GOAWAY; clients reconnect when they next call).
        grpc_max_streams_per_address: Long-lived streams no pipeline stage shares
            out (Health/Watch, reflection, peers' channels, the A2A service's
            streaming methods) one client address may hold; more are refused with
            RESOURCE_EXHAUSTED (``TOO_MANY_STREAMS``).
        grpc_connection_age_ms: Close every connection after this long, gracefully
            (``drain_seconds``); ``None``: never (A2A channels are long-lived
            streams, and end with their connection).
        grpc_max_connections_per_address: Connections one client address (an IPv4
            host, an IPv6 /64) may hold on the gRPC port: past it its newest are
            shut down, and its new ones wait until it holds fewer (Linux).
        grpc_request_timeout_ms: Time a request stream's message has to arrive whole,
            once its turn to receive comes (DEADLINE_EXCEEDED ``REQUEST_TIMEOUT``
            after); it waits as long for that turn at most (a peer's channel's first
            message, every reflection request; docs/limits.md).
        http_parser: The HTTP/1.1 parser of the HTTP port: "httptools", "h11", or
            "auto" (httptools when installed); both are held to the bounds below.
        http_max_header_bytes: Largest request head (request line and header fields)
            the HTTP port reads; a larger one gets 431 and the connection is closed.
        http_max_headers: Most header fields in one request (431 beyond).
        http_header_timeout_seconds: Time a connection has, from its start or a
            request's first byte, to send a whole request head (408 after, closed).
        http_body_timeout_seconds: Time a request's body may take, from the end of
            its head (408 ``BODY_TIMEOUT`` after, closed).
        http_max_connections: Connections the HTTP port holds at once (a WebSocket
            counts under ``ws_max_connections`` once upgraded); past it a new one is
            let in by closing the idle-longest connection of the address holding the
            most (503 ``TOO_MANY_CONNECTIONS``), and refused so only when its own
            address is one of the heaviest or nothing is idle.
        http_max_connections_per_address: Connections one client address holds on
            the HTTP port; past it, 429 ``TOO_MANY_CONNECTIONS`` and closed.
        max_concurrent_per_caller: Calls one caller may run at once, on every door
            together (None: a quarter of ``max_concurrent``). A caller is its
            verified identity, else its address (see ``service.stages.share_key``).
        forward_timeout_seconds: Deadline of a call forwarded to a peer when its
            caller named none.
        mcp_max_sessions: MCP sessions (streamable HTTP) the node holds at once; past
            it, opening one ends the least recently used session of the client that
            holds the most.
        mcp_max_sessions_per_client: MCP sessions one client (its verified identity,
            else its address) holds; opening one more ends its least recently used.
        ws_max_connections: WebSockets the node holds at once; past it, a new one
            closes the oldest of the client that holds the most (1013).
        ws_max_connections_per_client: WebSockets one client holds; more are refused
            (429 ``TOO_MANY_WEBSOCKETS``) before they are accepted.
        channel_response_bytes: Bytes of responses kept per peer until it acks them
            (its requests beyond that are refused with RESOURCE_EXHAUSTED,
            ``RESPONSE_BACKLOG_FULL``): a peer that never acks cannot pile them up.
        max_inbound_per_address: Peers that dialled us from one address (an IPv4
            address, an IPv6 /64) kept while not yet reached by our own dial; more
            from there are refused (``TOO_MANY_PEERS_FROM_ADDRESS``). Peers named in
            ``peer_grants`` are exempt.
        card_max_bytes: Largest peer card (serialized) taken in a handshake. This
            and the other ``card_*`` bounds hold every card a peer shows, dialled or
            dialling; past any of them the handshake is refused (``CARD_TOO_LARGE``).
        card_max_capabilities: Capabilities a peer's card may list.
        card_max_items: Endpoints and protocol versions of a card, scopes of one of
            its capabilities.
        card_max_text_chars: Each short text of a card (name, software, an endpoint,
            a capability's id, name, gRPC method, each scope).
        card_max_description_chars: A capability's description in a card.
        card_max_schema_bytes: Each JSON schema of a card's capability, serialized.
        card_max_schema_depth: How deep objects and arrays nest in each such schema.
        channel_open_timeout_seconds: How long ``Node.connect`` waits for a verified
            peer's channel to open (``CHANNEL_NOT_OPEN`` past it).

        rate_limit_global: Calls per second the node serves in all (token bucket):
            ``"N/s"``, ``"N/min"``, ``"N/h"``, optionally ``", burst B"`` (the
            bucket's size; default N), or a number per second; None / 0 /
            ``"off"``: no limit. Past it: RESOURCE_EXHAUSTED / 429 with a retry hint
            (see docs/limits.md).
        rate_limit_per_principal: The rate of each caller the node vouches for (an
            authenticated principal, a mesh certificate, a peer key named in
            ``peer_grants`` or ``peer_roles``).
        rate_limit_per_address: The rate of each other caller, by its address (an
            IPv4 host, an IPv6 /64). The default only stops a flood: a node on a
            network sets its own.
        rate_limit_per_peer: The rate of each peer's requests and notifications on
            the A2A channel (each one past it is answered RESOURCE_EXHAUSTED; the
            channel stays).
        rate_limit_overrides: Rates for particular callers, instead of their kind's:
            keys ``principal:NAME``, ``peer:NODE_ID``, ``address:HOST``,
            ``role:NAME``; a value None / ``"off"`` exempts them.
        rate_limit_max_buckets: Buckets each kind's table keeps (least recently used
            out; a dropped bucket that had not refilled starts full again).
        breaker_failures: Failures in a row (UNAVAILABLE, DEADLINE_EXCEEDED, a
            transport error) of calls to one peer that open its circuit breaker:
            calls to it then fail fast (UNAVAILABLE, ``CIRCUIT_OPEN``); 0 turns
            breakers off.
        breaker_cooldown_seconds: How long a breaker stays open before it lets one
            probe call through (half-open).
        breaker_max_cooldown_seconds: The longest it stays open (each failed probe
            doubles the cool-down, up to this).
        tls_cert_file: PEM certificate chain of this node (``aralnode ca issue``
            writes ``DATA_DIR/tls/node.crt``); None: both doors are plaintext (and
            the node says so loudly at start-up). Re-read when it changes.
        tls_key_file: PEM private key of that certificate; None: the node's identity
            key (``DATA_DIR/identity.pem``, which ``aralnode ca issue`` certifies).
        tls_ca_file: PEM trust anchors for peers and clients (the mesh CA).
        tls_client_auth: "none", or "require": mTLS on the gRPC door (the mesh mode;
            every peer's certificate is bound to the key its card is signed with).
        trust_domain: SPIFFE trust domain of the mesh certificates.
        tls_deny: Node ids or certificate serials (hex) refused at the handshake.
        tls_http: Serve the HTTP door over TLS too (TLS 1.3 minimum) when TLS is on.
        jwt_issuer: The ``iss`` a bearer JWT must carry; "" turns JWT bearer tokens off.
        jwt_audience: The ``aud`` a bearer JWT must carry (required with ``jwt_issuer``).
        jwt_algorithms: Signature algorithms accepted (never "none" nor HS*: a node
            holds no shared secret, and HS* with a public key is a known forgery).
        jwt_jwks_file: JWKS file of the issuer's public keys (re-read when it changes).
        jwt_jwks_url: The issuer's JWKS URL (fetched with httpx, kept, refetched on an
            unknown ``kid`` and once stale: the answer's ``Cache-Control: max-age``
            bounded to 1 min .. 1 h, else 5 min).
        jwt_jwks_refetch_seconds: Least time between two fetches of ``jwt_jwks_url``
            (random ``kid`` values cannot make the node hammer the issuer); also the
            floor of the refresh period.
        jwt_leeway_seconds: Clock skew allowed on ``exp`` and ``nbf``.
        jwt_caller_claim: The claim naming the caller (``sub``).
        jwt_roles_claim: The claim listing its roles (``roles``).
        jwt_kind_claim: A claim whose value ``service`` makes the caller a service
            ("": only a ``client_credentials`` grant does).
        token_cache_size: Verified tokens (JWT, introspected) kept until they expire,
            least recently used dropped first.
        oauth_resource: This node's resource identifier in its RFC 9728 metadata
            ("": the URL the request came to).
        oauth_authorization_servers: Issuers a client may get tokens from (RFC 9728).
        oauth_scopes_supported: Scopes the metadata lists.
        oauth_introspection_url: RFC 7662 endpoint for opaque bearer tokens ("": off).
        oauth_client_id / oauth_client_secret: This node's credentials at that endpoint.
        apikeys_file: API keys (``aralnode apikey``); default (None): ``DATA_DIR/apikeys.json``.
        session_ttl_seconds: Lifetime of an MCP session or a WebSocket, bound to the
            principal that opened it.
        roles: Role name -> the scopes it grants (a scope may be ``"*"``; this and
            the next are the authz group's, see docs/authorization.md). Two roles
            are implicit: ``anonymous`` (every caller nobody identified) and
            ``authenticated`` (every identified caller); unless named here they hold
            ``agent:read`` and ``agent:invoke`` (nothing with ``deny_by_default``).
        deny_by_default: The implicit roles hold nothing unless named in ``roles``:
            nothing is allowed unless a role or a grant says so.
        max_delegation_depth: Nodes a delegated call may have passed through (its
            chain after the principal); deeper ones are refused
            (``DELEGATION_TOO_DEEP``).
        role_cache_size: Distinct sets of roles whose union of scopes is kept (LRU).
        peer_roles: Roles of the node with this id (its key, verified in a
            handshake), on top of ``peer_grants``.
        audit: Keep the hash-chained audit log (docs/audit.md); default (None): when
            the node is ``durable``. Every call on every door is recorded, and no
            result leaves before its record is committed.
        audit_dir: Where the audit log's files are (default ``DATA_DIR/audit``).
        audit_sign_every: Sign the chain head with the node key after this many records.
        audit_sign_seconds: ... or after this long with records not yet signed.
        audit_max_pending: Records waiting for the writer at most; beyond, calls are
            refused (fail closed) rather than the queue growing.
        audit_rotate_bytes: Start a new audit file once the current one is this
            large (0: never); the chain goes on across files.
        policy_file: The governance policy (TOML or YAML; docs/governance.md):
            ACL tiers, tool categories, tripwires, trust debt, collusion tripwires.
            Refused at start with its line and reason; re-read when it changes.
        policy_reload_seconds: How often the policy file is checked for changes
            (0: never re-read).
        metrics: Serve Prometheus metrics at ``/metrics`` on the HTTP port (scope
            ``agent:read``, like the node's status; docs/observability.md).
        log_format: ``text`` for people, ``json`` (one object a line, with the
            call's trace id) for machines; ``aralnode run`` installs it.
        tracing: Trace every call on every door: a W3C trace id for the logs and
            the audit, ``traceparent`` carried across gRPC, HTTP, MCP and the
            channels, and an OpenTelemetry span per call (child spans for the
            pipeline's stages) when there is an exporter. Off: nothing of
            OpenTelemetry on the call path.
        tracing_otlp_endpoint: Where spans are exported over OTLP/gRPC (e.g.
            ``http://127.0.0.1:4317``); "" exports nothing: with no provider of the
            program's either, no span is recorded (none could be read), while ids
            and propagation go on (docs/tracing.md).
        tracing_sample_ratio: The share of new traces sampled (parent-based: a
            caller's sampled trace is always followed).
        etcd_endpoints: The etcd cluster's client URLs (``http(s)://HOST:PORT``),
            tried in turn; needed by the "etcd" discovery backend (docs/discovery.md).
        etcd_prefix: The key prefix this mesh registers under (one prefix, one mesh).
        etcd_lease_ttl_seconds: The registration's lease: a node that dies without
            a goodbye is gone from the registry this long after.
        etcd_ca_file / etcd_cert_file / etcd_key_file: TLS to etcd: the CA that
            signed its server certificates, and this node's client certificate.
        etcd_username / etcd_password_file: etcd's own authentication (the password
            is read from the file, never given on the command line).
        etcd_bridge: Re-announce the peers verified on this node's LAN into etcd,
            and etcd's verified peers onto the LAN (one bridge per LAN is enough).
        a2a: Serve the A2A standard (docs/a2a.md): ``lf.a2a.v1.A2AService`` on the
            gRPC port, JSON-RPC and HTTP+JSON on the HTTP port, and the signed Agent
            Card at ``/.well-known/agent-card.json``.
        a2a_max_tasks: A2A tasks kept at most (past it, the owner holding the most
            loses its least recently saved finished or waiting task first).
        a2a_max_task_bytes: Bytes of A2A tasks kept at most (their serialized size;
            the owner holding the most bytes loses one first); one task keeps at
            most an eighth of it (its oldest messages go).
        a2a_default_skill: The capability an A2A message that names no skill goes
            to, its text as the parameter ``text`` (or its one data part as the
            parameters); empty: such a message's task asks for input
            (``INPUT_REQUIRED``: which skill).
        aral_api: Serve the ARAL REST surface (``/api/v1/agents/{agent_id}/...``).
    """

    name: str = "aralnode"
    host: str | None = None
    grpc_port: int = DEFAULT_GRPC_PORT
    http_port: int | None = 8080
    http_allowed_hosts: list[str] = field(default_factory=list)
    http_allowed_origins: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    discovery: str = "mdns"
    peers: list[str] = field(default_factory=list)
    interfaces: list[str] = field(default_factory=list)
    key_algorithm: KeyAlgorithm = KeyAlgorithm.ES256
    allow_unsigned: bool = True
    peer_scopes: frozenset[str] = frozenset()
    peer_grants: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    replay_window_ms: int = 30_000
    clock_skew_ms: int = 5_000
    keepalive_ms: int = 5_000
    peer_timeout_ms: int = 10_000
    max_concurrent: int = 512
    drain_seconds: float = 5.0
    durable: bool = False
    channel_window: int = 1024
    outbox_limit: int = 10_000
    channel_timeout_ms: int = 5_000
    channel_signing: bool = True
    channel_verify_processes: int = 2
    # -- the gRPC port: what one client may hold, and who may list what it serves
    listing_requires_auth: bool = False
    grpc_max_connections: int = 512
    grpc_max_streams_per_connection: int = 100
    grpc_max_concurrent_rpcs: int = 2048
    grpc_handshake_timeout_ms: int = 10_000
    grpc_connection_idle_ms: int = 300_000
    grpc_connection_age_ms: int | None = None
    grpc_max_streams_per_address: int = 128
    grpc_max_connections_per_address: int = 128
    grpc_request_timeout_ms: int = 30_000
    # -- the HTTP port: what one client may hold
    http_parser: str = "auto"
    http_max_header_bytes: int = 64 * 1024
    http_max_headers: int = 100
    http_header_timeout_seconds: float = 10.0
    http_body_timeout_seconds: float = 60.0
    http_max_connections: int = 1024
    http_max_connections_per_address: int = 256
    max_concurrent_per_caller: int | None = None
    forward_timeout_seconds: float = 30.0
    mcp_max_sessions: int = 1024
    mcp_max_sessions_per_client: int = 32
    ws_max_connections: int = 1024
    ws_max_connections_per_client: int = 16
    # -- channels: what one peer may hold
    channel_response_bytes: int = 16 * 1024 * 1024
    max_inbound_per_address: int = 8
    # -- what a peer's card may carry, and how long a channel may take to open
    card_max_bytes: int = 1024 * 1024
    card_max_capabilities: int = 1024
    card_max_items: int = 64
    card_max_text_chars: int = 256
    card_max_description_chars: int = 8192
    card_max_schema_bytes: int = 64 * 1024
    card_max_schema_depth: int = 20
    channel_open_timeout_seconds: float = 10.0
    # -- limits (issue 15): token-bucket rate limits, and circuit breakers on peers
    rate_limit_global: RateSpec = None
    rate_limit_per_principal: RateSpec = None
    rate_limit_per_address: RateSpec = "10000/s, burst 20000"
    rate_limit_per_peer: RateSpec = None
    rate_limit_overrides: Mapping[str, RateSpec] = field(default_factory=dict)
    rate_limit_max_buckets: int = 10_000
    breaker_failures: int = 5
    breaker_cooldown_seconds: float = 5.0
    breaker_max_cooldown_seconds: float = 60.0
    # -- transport security (tls group)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_auth: str = "none"
    trust_domain: str = "aral.local"
    tls_deny: frozenset[str] = frozenset()
    tls_http: bool = True
    # -- caller identity (group ident): bearer JWTs, OAuth metadata, API keys, sessions
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: list[str] = field(default_factory=lambda: ["ES256", "RS256", "EdDSA"])
    jwt_jwks_file: Path | None = None
    jwt_jwks_url: str = ""
    jwt_jwks_refetch_seconds: float = 30.0
    jwt_leeway_seconds: float = 30.0
    jwt_caller_claim: str = "sub"
    jwt_roles_claim: str = "roles"
    jwt_kind_claim: str = ""
    token_cache_size: int = 4096
    oauth_resource: str = ""
    oauth_authorization_servers: list[str] = field(default_factory=list)
    oauth_scopes_supported: list[str] = field(default_factory=list)
    oauth_introspection_url: str = ""
    oauth_client_id: str = ""
    oauth_client_secret: str = field(default="", repr=False)  # never in a log line
    apikeys_file: Path | None = None
    session_ttl_seconds: float = 3600.0
    # -- authz: roles and scopes, deny by default, delegation
    roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    deny_by_default: bool = False
    max_delegation_depth: int = 4
    role_cache_size: int = 1024
    peer_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # -- audit (issue 16): the hash-chained audit log
    audit: bool | None = None
    audit_dir: Path | None = None
    audit_sign_every: int = 1000
    audit_sign_seconds: float = 5.0
    audit_max_pending: int = 65536
    audit_rotate_bytes: int = 256 * 1024 * 1024
    # -- governance (issue 16): the policy file
    policy_file: Path | None = None
    policy_reload_seconds: float = 1.0
    # -- operations (issue 19): metrics, logs, traces
    metrics: bool = True
    log_format: str = "text"
    tracing: bool = False
    tracing_otlp_endpoint: str = ""
    tracing_sample_ratio: float = 1.0
    # -- discovery past the LAN (issue 18): etcd
    etcd_endpoints: list[str] = field(default_factory=list)
    etcd_prefix: str = "/aral/v1/nodes/"
    etcd_lease_ttl_seconds: int = 10
    etcd_ca_file: Path | None = None
    etcd_cert_file: Path | None = None
    etcd_key_file: Path | None = None
    etcd_username: str = ""
    etcd_password_file: Path | None = None
    etcd_bridge: bool = False
    # -- interop (issue 17): the A2A standard and the ARAL REST surface
    a2a: bool = True
    a2a_max_tasks: int = 10_000
    a2a_max_task_bytes: int = 64 * 1024 * 1024
    a2a_default_skill: str = ""
    aral_api: bool = True

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(
                f"invalid node name {self.name!r}: 1..63 letters, digits, '.', '_' or '-'"
            )
        config_checks.check_paths(self)
        self.discovery = config_checks.check_discovery(self)
        for port in (self.grpc_port, self.http_port):
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"port {port} is out of range")
        if self.peers and not self.discovery_backends:
            raise ValueError(
                "static peers need discovery 'static' (or 'mdns'): with 'none' nobody is dialled"
            )
        for peer in self.peers:
            host, sep, peer_port = peer.rpartition(":")
            if not sep or not host or not peer_port.isdigit():
                raise ValueError(f"peer {peer!r} must be HOST:PORT")
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        if self.keepalive_ms < 50 or self.peer_timeout_ms < self.keepalive_ms:
            raise ValueError("keepalive_ms must be >= 50 and peer_timeout_ms >= keepalive_ms")
        config_checks.check_grpc_bounds(self)
        if self.channel_response_bytes < 64 * 1024:
            raise ValueError("channel_response_bytes must be at least 64 KiB")
        if not 0 <= self.channel_verify_processes <= 64:
            raise ValueError("channel_verify_processes must be 0..64")
        if self.max_inbound_per_address < 1:
            raise ValueError("max_inbound_per_address must be at least 1")
        self.key_algorithm = KeyAlgorithm(self.key_algorithm)
        self.peer_scopes = frozenset(self.peer_scopes)
        self.peer_grants = {k: frozenset(v) for k, v in dict(self.peer_grants).items()}
        for node_id, scopes in self.peer_grants.items():
            if not node_id or not scopes:
                raise ValueError(f"a grant names a node id and at least one scope: {node_id!r}")
            if not NODE_ID.match(node_id):
                raise ValueError(
                    f"{node_id!r} is not a node id (32 lower-case base32 characters, as "
                    "'aralnode status' shows them): a grant to it would reach nobody"
                )
        config_checks.check_http(self)
        config_checks.check_card_bounds(self)
        config_checks.check_limits(self)
        config_checks.check_tls(self)
        config_checks.check_ident(self)
        config_checks.check_authz(self)
        config_checks.check_audit(self)
        config_checks.check_operations(self)
        config_checks.check_etcd(self)
        if self.a2a_max_tasks < 1:
            raise ValueError("a2a_max_tasks must be at least 1")
        if self.a2a_max_task_bytes < 1024 * 1024:
            raise ValueError("a2a_max_task_bytes must be at least 1 MiB")

    @property
    def audit_enabled(self) -> bool:
        """Whether the node keeps an audit log: ``audit``, else when it is durable."""
        return self.durable if self.audit is None else self.audit

    @property
    def discovery_backends(self) -> tuple[str, ...]:
        """The backends ``discovery`` names, in order (empty for "none")."""
        return () if self.discovery == "none" else tuple(self.discovery.split(","))

    @property
    def tls_on(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def apikeys_path(self) -> Path:
        """Where the API keys live (``apikeys_file``, else the data dir's)."""
        if self.apikeys_file:  # ("" from Python names no file, as for ``audit_dir``)
            return Path(self.apikeys_file)
        return self.resolved_data_dir / "apikeys.json"

    @property
    def card_limits(self) -> CardLimits:
        """The ``card_*`` bounds, as the handshake takes them."""
        return CardLimits(
            max_bytes=self.card_max_bytes,
            max_capabilities=self.card_max_capabilities,
            max_items=self.card_max_items,
            max_text_chars=self.card_max_text_chars,
            max_description_chars=self.card_max_description_chars,
            max_schema_bytes=self.card_max_schema_bytes,
            max_schema_depth=self.card_max_schema_depth,
        )

    @property
    def bind_host(self) -> str:
        if self.host:
            return self.host
        wide = {"mdns", "etcd"} & set(self.discovery_backends)
        return "0.0.0.0" if wide else "127.0.0.1"  # noqa: S104 - a node others find

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else default_data_dir(self.name)
