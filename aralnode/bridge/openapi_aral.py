"""The ARAL REST surface (``bridge/aral_api.py``, PRO-024/025) in the node's OpenAPI
document: its five routes, written out once here (they are the node's own, not a
user's proto), failures in the same error shape as every other operation.

A signed message's route answers a refusal made before its signature verified in
that shape too, and any later one as a signed message whose body holds the error
(``docs/aral-api.md``).
"""

from __future__ import annotations

from typing import Any

from aralnode.bridge.aral_api import MAX_ID_CHARS, MESSAGE_VERSION, PREFIX

TAG = "aral.api"
SCHEMA = "aral.api."
_REF = "#/components/schemas/"
_ERROR = {"$ref": "#/components/responses/Error"}
_VERSION_HEADERS = {
    "X-API-Version": {
        "description": "The API version that answered.",
        "schema": {"type": "string"},
    },
    "X-Supported-Versions": {
        "description": "Every API version this node serves, comma separated.",
        "schema": {"type": "string"},
    },
}

_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}
_OBJECT_OR_NULL = {"type": ["object", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "AgentStatus": {
        "type": "object",
        "description": "This node's status, or what it knows of a peer's.",
        "required": ["agent_id", "name", "status", "capabilities"],
        "properties": {
            "agent_id": {"type": "string"},
            "name": {"type": "string"},
            "status": {"enum": ["healthy", "degraded", "unreachable"]},
            "health_score": {"type": "number"},
            "uptime_seconds": {"type": "integer"},
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "version": {"type": "string"},
            "protocol_versions": {"type": "array", "items": {"type": "string"}},
            "peer_count": {"type": "integer"},
            "state": {"type": "string", "description": "A peer's connection state."},
            "last_seen_unix_ms": {"type": "integer"},
        },
    },
    "Capabilities": {
        "type": "object",
        "required": ["agent_id", "capabilities"],
        "properties": {
            "agent_id": {"type": "string"},
            "capabilities": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "name"],
                    "properties": {
                        "id": {"type": "string"},
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "input_schema": {"type": "object"},
                        "output_schema": {"type": "object"},
                        "permissions": {"type": "array", "items": {"type": "string"}},
                        "risk": {"type": "string"},
                    },
                },
            },
        },
    },
    "InvokeRequest": {
        "type": "object",
        "required": ["capability"],
        "properties": {
            "capability": _ID,
            "parameters": {**_OBJECT_OR_NULL, "description": "The capability's parameters."},
        },
        "additionalProperties": False,
    },
    "CapabilityRequest": {
        "type": "object",
        "properties": {"parameters": _OBJECT_OR_NULL},
        "additionalProperties": False,
    },
    "Result": {
        "type": "object",
        "required": ["success", "result", "agent_id", "trace_id"],
        "properties": {
            "success": {"const": True},
            "result": {"description": "The capability's result (any JSON)."},
            "execution_time_ms": {"type": "number"},
            "agent_id": {"type": "string"},
            "trace_id": {"type": "string"},
        },
    },
    "Message": {
        "type": "object",
        "description": "An ARALMessage (PRO-001) as JSON; its detached JWS travels in "
        "X-ARAL-Signature, over these exact bytes.",
        "required": ["header", "body"],
        "properties": {
            "header": {
                "type": "object",
                "required": ["version", "messageId", "timestamp", "sender", "recipient"],
                "properties": {
                    "version": {"const": MESSAGE_VERSION},
                    "messageId": _ID,
                    "timestamp": {"type": "integer", "description": "Unix milliseconds."},
                    "sender": _ID,
                    "recipient": _ID,
                    "contentType": {"type": "string"},
                    "traceId": {"type": "string"},
                    "correlationId": {"type": "string"},
                },
            },
            "body": {
                "type": "object",
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["request", "response"]},
                    "action": {"type": "string"},
                    "parameters": _OBJECT_OR_NULL,
                    "result": {},
                    "error": {"type": "object"},
                },
            },
        },
    },
}


def _headers(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: {"$ref": f"#/components/headers/{k}"} for k in ("X-Trace-Id", "X-Request-Id")
    }
    return out | _VERSION_HEADERS | extra


def _ok(schema: str, text: str) -> dict[str, Any]:
    return {
        "200": {
            "description": text,
            "headers": _headers(),
            "content": {"application/json": {"schema": {"$ref": _REF + SCHEMA + schema}}},
        },
        "default": _ERROR,
    }


def _body(schema: str, *, required: bool) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": _REF + SCHEMA + schema}}}
    return {"required": required, "content": content}


_AGENT = {
    "name": "agent_id",
    "in": "path",
    "required": True,
    "description": "This node (its id or name), or one of its peers (its id, or a name "
    "no other peer bears; naming a peer needs the agent:read scope).",
    "schema": {"type": "string", "minLength": 1},
}
_API_VERSION = {
    "name": "X-API-Version",
    "in": "header",
    "required": False,
    "description": "The API version asked for; the node serves 1.0.",
    "schema": {"enum": ["1.0", "1", "v1"]},
}
_SIGNATURE = {
    "name": "X-ARAL-Signature",
    "in": "header",
    "required": True,
    "description": "A detached compact JWS (RFC 7515 appendix F) over the exact body "
    "bytes, ES256 or EdDSA, its protected header carrying the sender's `jwk` and "
    "`kid` (the id that key hashes to: the message's header.sender).",
    "schema": {"type": "string", "minLength": 1},
}


_SIGNED_REPLY = {
    "description": "The answer: a message signed by this node (its JWS in X-ARAL-Signature), "
    "the result or the error in its body.",
    "headers": _headers(
        **{
            "X-ARAL-Signature": {
                "description": "This node's detached JWS over the answer's exact bytes.",
                "schema": {"type": "string"},
            }
        }
    ),
    "content": {"application/json": {"schema": {"$ref": _REF + SCHEMA + "Message"}}},
}
_REFUSED = {
    "description": "A refusal: in the error shape when it came before the signature "
    "verified, else as a signed message whose body holds the error.",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [{"$ref": _REF + "aral.RestError"}, {"$ref": _REF + SCHEMA + "Message"}]
            }
        }
    },
}
_CAPABILITY = {
    "name": "capability",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}

# (path under the agent, verb, operation id, summary, responses, extra parameters,
# request body)
_ROUTES: list[tuple[str, str, str, str, dict[str, Any], list[Any], dict[str, Any] | None]] = [
    ("status", "get", "status", "The agent's status", _ok("AgentStatus", "Its status."), [],
     None),
    ("capabilities", "get", "capabilities", "The agent's capabilities, with their JSON Schemas",
     _ok("Capabilities", "What the caller may see of them."), [], None),
    ("invoke", "post", "invoke", "Run a capability of the agent",
     _ok("Result", "The capability's result."), [], _body("InvokeRequest", required=True)),
    ("capabilities/{capability}", "post", "capability", "Run the capability the path names",
     _ok("Result", "The capability's result."), [_CAPABILITY],
     _body("CapabilityRequest", required=False)),
    ("messages", "post", "message",
     "Send the agent a signed ARALMessage (a request); its answer is signed",
     {"200": _SIGNED_REPLY, "default": _REFUSED}, [_SIGNATURE], _body("Message", required=True)),
]  # fmt: skip


def paths(node_id: str = "") -> dict[str, dict[str, Any]]:
    """The ARAL REST routes as OpenAPI path items; ``node_id``, this node's id, is
    the example of ``agent_id`` (what a reader of the document tries first)."""
    base = "/" + PREFIX.strip("/") + "/{agent_id}"
    agent = {**_AGENT, "example": node_id} if node_id else _AGENT
    out: dict[str, dict[str, Any]] = {}
    for tail, verb, name, summary, responses, params, body in _ROUTES:
        op: dict[str, Any] = {
            "operationId": f"{TAG}.{name}",
            "summary": summary,
            "tags": [TAG],
            "parameters": [agent, _API_VERSION, *params],
        }
        if body is not None:
            op["requestBody"] = body
        op["responses"] = responses
        out[f"{base}/{tail}"] = {verb: op}
    return out


def tag() -> dict[str, str]:
    return {
        "name": TAG,
        "description": "The ARAL REST API (PRO-024/025): what other ARAL implementations "
        "call. See docs/aral-api.md.",
    }


def schemas() -> dict[str, dict[str, Any]]:
    """The schemas ``paths`` refers to, by their component names."""
    return {SCHEMA + name: schema for name, schema in SCHEMAS.items()}


__all__ = ["TAG", "paths", "schemas", "tag"]
