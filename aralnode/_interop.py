"""The interop doors' wiring (issue 17): the A2A door on the gRPC and HTTP ports, and
the ARAL REST surface (``/api/v1/agents/…``, bridge/aral_api.py) on the HTTP port.

One ``A2ADoor`` (one task store) serves both ports; its card names the interfaces at
the node's first advertised host and the security schemes the access configuration
accepts (bearer JWTs when an issuer is set, API keys always: ``aralnode apikey``).
"""

from __future__ import annotations

import os
from typing import Any

from aralnode._version import __version__
from aralnode.core.addresses import join_host_port


def install_interop(node: Any, service: Any, grpc: Any, http: Any) -> None:
    """Serve what ``config.a2a`` and ``config.aral_api`` turn on."""
    install_a2a(node, service, grpc, http)
    if http is not None:
        http.openapi.secure(openapi_security(node.config), anonymous=node.config.allow_unsigned)
    if node.config.aral_api and http is not None:
        from aralnode.bridge import openapi_aral  # noqa: PLC0415
        from aralnode.bridge.aral_api import AralApi  # noqa: PLC0415

        http.aral = AralApi(service, name=node.name, max_body_bytes=node.config.max_message_bytes)
        http.openapi.include(
            openapi_aral.paths(node.node_id), openapi_aral.schemas(), openapi_aral.tag()
        )


def openapi_security(cfg: Any) -> dict[str, Any]:
    """The credentials the HTTP port takes, as OpenAPI security schemes (the A2A
    card declares the same): an API key in ``X-API-Key``, and a bearer token in
    ``Authorization`` (an API key too, or a JWT when ``jwt_issuer`` is set)."""
    bearer: dict[str, Any] = {
        "type": "http",
        "scheme": "bearer",
        "description": "an aralnode API key, or a token the node accepts",
    }
    if cfg.jwt_issuer:
        bearer["bearerFormat"] = "JWT"
        bearer["description"] = f"an aralnode API key, or a JWT issued by {cfg.jwt_issuer}"
    api_key = {"type": "apiKey", "in": "header", "name": "X-API-Key",
               "description": "an aralnode API key (`aralnode apikey create`)"}  # fmt: skip
    return {"apiKey": api_key, "bearer": bearer}


def install_a2a(node: Any, service: Any, grpc: Any, http: Any) -> Any:
    """Serve the A2A standard (``config.a2a``); the door, or None when off."""
    cfg = node.config
    if not cfg.a2a:
        return None
    # The node traces each A2A call itself (one span on door a2a, with the pipeline's
    # stages); the SDK's own ~30 spans a call cost a sixth of its CPU and say nothing
    # more. Read when the SDK is first imported; an operator's setting stands.
    os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")
    from a2a.types import a2a_pb2  # noqa: PLC0415 - the SDK loads only when A2A is on

    from aralnode.bridge._a2a_calls import SERVICE  # noqa: PLC0415
    from aralnode.bridge.a2a import A2ADoor  # noqa: PLC0415

    def where() -> tuple[str, str]:
        host = (node.advertised_hosts() or ["127.0.0.1"])[0]
        scheme = "https" if http is not None and http.ssl_context is not None else "http"
        http_base = f"{scheme}://{join_host_port(host, node.http_port or 0)}"
        return http_base, join_host_port(host, node.grpc_port)

    security = {
        "apiKey": a2a_pb2.SecurityScheme(
            api_key_security_scheme=a2a_pb2.APIKeySecurityScheme(
                location="header", name="x-api-key", description="an aralnode API key"
            )
        )
    }
    if cfg.jwt_issuer:
        security["bearer"] = a2a_pb2.SecurityScheme(
            http_auth_security_scheme=a2a_pb2.HTTPAuthSecurityScheme(
                scheme="bearer", bearer_format="JWT", description=f"issued by {cfg.jwt_issuer}"
            )
        )
    door = A2ADoor(
        service,
        node.identity,
        name=node.name,
        version=__version__,
        where=where,
        security=security,
        max_tasks=cfg.a2a_max_tasks,
        max_task_bytes=cfg.a2a_max_task_bytes,
        listing_requires_auth=cfg.listing_requires_auth,
        default_skill=cfg.a2a_default_skill,
        # A durable node's tasks outlive it (the a2a-sdk's SQL store, SQLite).
        task_db=cfg.resolved_data_dir / "a2a-tasks.sqlite3" if cfg.durable else None,
        max_body_bytes=cfg.max_message_bytes,
    )
    from aralnode.transport.admitted import Admitted  # noqa: PLC0415

    grpc.add(Admitted(door.grpc_handler(), door.grpc_gate, grpc.streams), SERVICE)
    if http is not None:
        http.a2a = door
    return door


async def request_a2a(
    node: Any, card_url: str, skill: str, params: Any, *, timeout: float | None, trace_id: str = ""
) -> Any:
    """``node.request`` to an A2A agent by its card URL: a send of the node's own,
    judged and audited by its pipeline (``Direction.SEND``, the card URL as the
    peer), then the a2a-sdk client (``aralnode.transport.a2a_client``)."""
    from aralnode.core.governance import Direction  # noqa: PLC0415
    from aralnode.service.auth import INVOKE_SCOPES  # noqa: PLC0415
    from aralnode.transport import a2a_client  # noqa: PLC0415

    async def send(value: Any) -> Any:
        return await a2a_client.call(card_url, skill, value, timeout=timeout)

    ctx = node.contexts.local(trace_id=trace_id)
    return await node.pipeline.call(
        ctx, skill, params, send, direction=Direction.SEND, risk="unspecified",
        peer=card_url, scopes=INVOKE_SCOPES,
    )  # fmt: skip


__all__ = ["install_a2a", "install_interop", "request_a2a"]
