"""OpenAPI 3.1 from the same bindings the REST door serves, and a self-contained docs page.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect) from the message
descriptors (``aralnode.core.proto_schema.SchemaSet``), under
``#/components/schemas/<full name>``; descriptions come from the proto comments
when the node has them (a ``ProtoComments``).
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from aralnode.bridge.rest_params import query_fields
from aralnode.bridge.routes import Binding
from aralnode.bridge.targets import Target
from aralnode.core.proto_schema import SCHEMA_DIALECT, ProtoComments, SchemaSet, nullable

REF = "#/components/schemas/"
ERROR_SCHEMA = "aral.RestError"
_WILDCARD = re.compile(r"\{(_\d+)\}")
_TEMPLATED = re.compile(r"\{[^}]*\}")

_ERROR = {
    "type": "object",
    "description": "The error shape every door answers with (seed PRO-021).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "trace_id", "timestamp"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Stable error code, e.g. invalid_request.",
                },
                "message": {"type": "string"},
                "reason": {
                    "type": "string",
                    "description": "UPPER_SNAKE reason (google.rpc.ErrorInfo).",
                },
                "details": {"type": "object"},
                "trace_id": {"type": "string"},
                "timestamp": {"type": "string", "format": "date-time"},
            },
        }
    },
}

_ID_HEADERS = {
    "X-Trace-Id": {
        "description": "Trace id of the call (the caller's, or a new one).",
        "schema": {"type": "string"},
    },
    "X-Request-Id": {
        "description": "Id of this request (the caller's, or a new one).",
        "schema": {"type": "string"},
    },
}


def _summary(text: str) -> str:
    first = text.split(". ", 1)[0].strip().rstrip(".")
    return first[:120]


class OpenApiBuilder:
    """Builds the document once per set of bindings (the bindings are fixed at start)."""

    def __init__(
        self,
        bindings: list[tuple[Binding, Target]],
        docs: ProtoComments,
        *,
        title: str,
        version: str,
        description: str = "",
    ) -> None:
        self.bindings = bindings
        self.docs = docs
        self.title = title
        self.version = version
        self.description = description
        self._doc: dict[str, Any] | None = None
        self._surfaces: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
        # How a caller authenticates (``secure``): none named, the document says none.
        self._schemes: dict[str, Any] = {}
        self._anonymous = True

    def secure(self, schemes: dict[str, Any], *, anonymous: bool) -> None:
        """Declare the node's credentials (``components.securitySchemes``) and that
        every operation takes any one of them, or none where ``anonymous`` callers
        are served (a refused call still says 401 or 403 in its own answer)."""
        self._schemes, self._anonymous = dict(schemes), anonymous
        self._doc = None

    def include(self, paths: dict[str, Any], schemas: dict[str, Any], tag: dict[str, Any]) -> None:
        """Document a surface written out elsewhere (the ARAL REST API,
        ``openapi_aral``): its path items, the schemas they refer to, its tag."""
        self._surfaces.append((paths, schemas, tag))
        self._doc = None

    def document(self) -> dict[str, Any]:
        if self._doc is None:
            self._doc = self._build()
        return self._doc

    def _build(self) -> dict[str, Any]:
        files = {t.method.containing_service.file for _, t in self.bindings}
        comments = self.docs.for_files(files)
        schemas = SchemaSet(REF, comments=comments, closed=True)
        paths: dict[str, dict[str, Any]] = {}
        tags: dict[str, dict[str, Any]] = {}
        op_ids: set[str] = set()
        # OpenAPI: "templated paths with the same hierarchy but different templated
        # names MUST NOT exist" (they are one path). Two rules such as
        # /v1/shelves/{shelf}/books/{book_id} and /v1/shelves/{book.shelf}/books/{book.id}
        # share the first one's path and parameter names, so that a path lists every
        # method the node answers on it (as its 405's Allow does).
        shapes: dict[str, str] = {}
        for binding, target in self.bindings:
            service = target.method.containing_service
            tag = tags.setdefault(service.full_name, {"name": service.full_name})
            if comments.get(service.full_name):
                tag["description"] = comments[service.full_name]
            path = shapes.setdefault(
                _TEMPLATED.sub("{}", binding.openapi_path), binding.openapi_path
            )
            item = paths.setdefault(path, {})
            verb = binding.http_method.lower()
            if verb in item:
                continue  # two rules on one path and verb: the first one wins, as in the router
            op_id = _unique(target.method.full_name, op_ids)
            item[verb] = self._operation(
                binding=binding,
                target=target,
                schemas=schemas,
                comments=comments,
                op_id=op_id,
                tag=service.full_name,
                names=_TEMPLATED.findall(path),
            )
        schemas_out = dict(sorted(schemas.definitions.items()))
        schemas_out[ERROR_SCHEMA] = _ERROR
        self._add_surfaces(paths, schemas_out, tags)
        info: dict[str, Any] = {"title": self.title, "version": self.version}
        if self.description:
            info["description"] = self.description
        doc: dict[str, Any] = {
            "openapi": "3.1.0",
            "jsonSchemaDialect": SCHEMA_DIALECT,
            "info": info,
            "tags": list(tags.values()),
            "paths": paths,
            "components": {
                "schemas": schemas_out,
                "headers": _ID_HEADERS,
                "responses": {
                    "Error": {
                        "description": "Any failure, in the seed's error shape.",
                        "headers": {k: {"$ref": f"#/components/headers/{k}"} for k in _ID_HEADERS},
                        "content": {"application/json": {"schema": {"$ref": REF + ERROR_SCHEMA}}},
                    }
                },
            },
        }
        return self._secured(doc)

    def _secured(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` with the node's credentials (``secure``), if it named any."""
        if self._schemes:
            doc["components"]["securitySchemes"] = self._schemes
            doc["security"] = [{name: []} for name in self._schemes] + (
                [{}] if self._anonymous else []
            )
        return doc

    def _add_surfaces(
        self, paths: dict[str, Any], schemas: dict[str, Any], tags: dict[str, Any]
    ) -> None:
        for more_paths, more_schemas, tag in self._surfaces:
            paths.update(more_paths)
            schemas.update(more_schemas)
            tags[tag["name"]] = tag

    def _operation(
        self,
        *,
        binding: Binding,
        target: Target,
        schemas: SchemaSet,
        comments: dict[str, str],
        op_id: str,
        tag: str,
        names: list[str],
    ) -> dict[str, Any]:
        method = target.method
        text = comments.get(method.full_name, "")
        notes = [text] if text else []
        if target.capability_id:
            notes.append(f"Runs the capability `{target.capability_id}`.")
        if binding.default:
            notes.append("Default binding (the rpc has no google.api.http rule).")
        if _protobuf_answer(binding):
            notes.append("Also answers `application/protobuf` when asked with Accept.")
        op: dict[str, Any] = {
            "operationId": op_id,
            "summary": _summary(text)
            if text
            else f"{method.containing_service.name}.{method.name}",
            "description": "\n\n".join(notes),
            "tags": [tag],
        }
        params = _parameters(binding, schemas, comments, [n[1:-1] for n in names])
        if params:
            op["parameters"] = params
        if binding.body:
            if binding.body == "*":
                body_schema = schemas.message(method.input_type)
            else:
                assert binding.body_field is not None
                # The body is that field's value: null is its default, as for any field.
                body_schema = nullable(schemas.field(binding.body_field))
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": body_schema}},
            }
        op["responses"] = _responses(binding, schemas)
        return op


def _protobuf_answer(binding: Binding) -> bool:
    """Whether the REST door answers ``application/protobuf`` too: for a unary method
    whose answer (or its ``response_body`` field) is a message (``rest.Route``)."""
    if binding.method.server_streaming:
        return False
    field = binding.response_field
    return field is None or (field.message_type is not None and not field.is_repeated)


# A multi-segment path variable's segments go as they are: http.proto keeps an encoded
# slash inside one segment (docs/rest.md).
_SEGMENTS = "Its segments are joined with `/`, sent as it is: an encoded `%2F` stays inside one."


def _in_oneof(field: FieldDescriptor) -> bool:
    """A member of a real oneof (not the one proto3 ``optional`` makes for itself)."""
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) > 1


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... whichever is not ``taken`` yet (then it is)."""
    out, n = name, 2
    while out in taken:
        out, n = f"{name}_{n}", n + 1
    taken.add(out)
    return out


def _parameters(
    binding: Binding, schemas: SchemaSet, comments: dict[str, str], names: list[str]
) -> list[dict[str, Any]]:
    """The path variables, path wildcards and query parameters of a binding; the path
    ones named ``names`` (the path's, in order: a binding sharing another's path
    takes its names)."""
    params = []
    own = [n[1:-1] for n in _TEMPLATED.findall(binding.openapi_path)]
    renamed = dict(zip(own, names, strict=True))
    for var in binding.variables:
        schema = dict(schemas.field(var.field_path[-1]))
        if var.multi_segment and schema.get("type") == "string":
            schema["pattern"] = f"^{var.pattern}$"
        elif schema.get("type") == "string":
            schema["minLength"] = 1
        name = renamed[var.param]
        param = {"name": name, "in": "path", "required": True, "schema": schema}
        doc = comments.get(var.field_path[-1].full_name, "")
        if name != var.name:
            doc = f"Field `{var.name}`. {doc}".strip()
        if var.multi_segment:  # (OpenAPI cannot say it; clients encode '/' otherwise)
            doc = f"{doc} {_SEGMENTS}".strip()
        if doc:
            param["description"] = doc
        params.append(param)
    params += [
        {"name": renamed[wildcard], "in": "path", "required": True, "schema": {"type": "string"}}
        for wildcard in _WILDCARD.findall(binding.openapi_path)
    ]
    for name, path in query_fields(binding):
        param = {
            "name": name,
            "in": "query",
            "required": False,
            "schema": schemas.field(path[-1]),
        }
        if path[-1].is_repeated:
            param["style"], param["explode"] = "form", True
        doc = comments.get(path[-1].full_name, "")
        at = next((i for i, f in enumerate(path) if _in_oneof(f)), None)
        oneof = path[at].containing_oneof if at is not None else None
        if at is not None and oneof is not None:  # (OpenAPI cannot say it either)
            prefix = "".join(f"{f.name}." for f in path[:at])  # (as the parameters are named)
            others = ", ".join(f"`{prefix}{f.name}`" for f in oneof.fields if f is not path[at])
            doc = f"{doc} In the oneof `{oneof.name}`: not with {others}.".strip()
        if doc:
            param["description"] = doc
        params.append(param)
    return params


def _responses(binding: Binding, schemas: SchemaSet) -> dict[str, Any]:
    """200 with the response (or its ``response_body`` field, or a stream of it),
    and every failure in the seed's error shape."""
    method = binding.method
    if binding.response_field is not None:
        out_schema = schemas.field(binding.response_field)
    else:
        out_schema = schemas.message(method.output_type)
    if method.server_streaming:
        content = {
            "application/x-ndjson": {"schema": out_schema},
            "text/event-stream": {"schema": {"type": "string"}},
        }
        ok_doc = "A stream of messages (NDJSON; SSE with Accept: text/event-stream)."
    else:
        content = {"application/json": {"schema": out_schema}}
        ok_doc = "The response message."
    headers = {k: {"$ref": f"#/components/headers/{k}"} for k in _ID_HEADERS}
    return {
        "200": {"description": ok_doc, "headers": headers, "content": content},
        "default": {"$ref": "#/components/responses/Error"},
    }


def docs_page(title: str) -> bytes:
    """The docs page: plain HTML and script reading ``openapi.json``; nothing from a CDN."""
    template = (resources.files("aralnode.bridge") / "docs.html").read_text(encoding="utf-8")
    return template.replace("__TITLE__", title.replace("&", "&amp;").replace("<", "&lt;")).encode()
