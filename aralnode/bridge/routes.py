"""``google.api.http`` rules read from method descriptors, compiled into matchers.

A rule binds an rpc to an HTTP verb and a path template (AIP-127)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

``body`` names the request field the HTTP body fills (``*``: the whole request,
empty: no body); every field bound by neither the path nor the body may come as a
query parameter. ``response_body`` picks one response field as the whole HTTP
response. A method without a rule gets the default binding
``POST /{package.Service}/{Method}`` with ``body: "*"``.

Nothing here knows HTTP servers: this module turns descriptors into ``Binding``
values that the REST door matches and the OpenAPI generator documents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SEGMENT = "[^/]+"
_VERBS = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    """A path template or field path in a ``google.api.http`` rule is invalid."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A ``{field.path=pattern}`` in a template, captured by regex group ``group``."""

    group: str
    field_path: tuple[FieldDescriptor, ...]
    multi_segment: bool
    pattern: str = _SEGMENT

    @property
    def name(self) -> str:
        """The dotted proto field path, e.g. ``call.capability``."""
        return ".".join(f.name for f in self.field_path)

    @property
    def param(self) -> str:
        """The OpenAPI parameter name: the field path with ``_`` for ``.`` (tools
        such as schemathesis do not take dots in path parameter names)."""
        return "_".join(f.name for f in self.field_path)


@dataclass(frozen=True, slots=True)
class Binding:
    """One HTTP binding of one rpc.

    Attributes:
        method: The rpc.
        http_method: Upper-case HTTP verb.
        template: The template as written in the rule.
        openapi_path: The template in OpenAPI form (``/v1/{name}``).
        variables: Path variables, in template order.
        body: ``""`` (no body), ``"*"`` or the name of the request field the body fills.
        body_field: The descriptor of ``body`` when it names a field.
        response_body: ``""`` or the response field that is the whole HTTP response.
        response_field: The descriptor of ``response_body`` when set.
        default: Whether this is the default binding of a method without a rule.
    """

    method: MethodDescriptor
    http_method: str
    template: str
    openapi_path: str
    regex: re.Pattern[str]
    variables: tuple[Variable, ...]
    body: str = ""
    body_field: FieldDescriptor | None = None
    response_body: str = ""
    response_field: FieldDescriptor | None = None
    default: bool = False

    def match(self, path: str, *, decode: bool = True) -> dict[Variable, str] | None:
        """The variable values if ``path`` matches, percent-decoded when ``decode``
        (``path`` is the raw, still encoded path)."""
        m = self.regex.fullmatch(path)
        if m is None:
            return None
        if not decode:
            return {v: m.group(v.group) for v in self.variables}
        return {
            v: _unquote_segments(m.group(v.group)) if v.multi_segment else unquote(m.group(v.group))
            for v in self.variables
        }


_SLASH = re.compile("(%2f)", re.IGNORECASE)


def _unquote_segments(text: str) -> str:
    """A multi-segment variable's value, percent-decoded but for ``%2F`` (http.proto:
    "except %2F and %2f are left unchanged"): an encoded slash inside a segment
    stays one, never a segment boundary of a different resource's name."""
    parts = _SLASH.split(text)  # (the slashes kept, at the odd places, as they came)
    return "".join(part if i % 2 else unquote(part) for i, part in enumerate(parts))


def http_rule(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    """The method's ``google.api.http`` option, if it has one."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def bindings(method: MethodDescriptor) -> list[Binding]:
    """Every binding of ``method``: its rule and additional bindings, or the default one.

    Raises:
        TemplateError: the rule is malformed (bad template, unknown field).
    """
    rule = http_rule(method)
    if rule is None:
        service = method.containing_service.full_name
        return [_compile(method, "POST", f"/{service}/{method.name}", "*", "", default=True)]
    out = [_from_rule(method, rule)]
    out += [_from_rule(method, extra) for extra in rule.additional_bindings]
    return out


def _from_rule(method: MethodDescriptor, rule: http_pb2.HttpRule) -> Binding:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise TemplateError(f"{method.full_name}: http rule has no verb")
    if pattern == "custom":
        verb, template = rule.custom.kind.upper(), rule.custom.path
    else:
        verb, template = pattern.upper(), getattr(rule, pattern)
    return _compile(method, verb, template, rule.body, rule.response_body)


# long: a template parser, one branch per segment kind, kept together to be read whole
def _compile(
    method: MethodDescriptor,
    verb: str,
    template: str,
    body: str,
    response_body: str,
    *,
    default: bool = False,
) -> Binding:
    where = f"{method.full_name} {verb} {template!r}"
    if not template.startswith("/"):
        raise TemplateError(f"{where}: a template starts with '/'")
    path, verb_suffix = _split_verb(template[1:], where)
    regex_parts: list[str] = []
    api_parts: list[str] = []
    variables: list[Variable] = []
    for segment in _split_top(path, where):
        if segment.startswith("{"):
            if not segment.endswith("}"):
                raise TemplateError(f"{where}: unbalanced braces")
            inner = segment[1:-1]
            field_path, _, sub = inner.partition("=")
            fields = field_path_of(method.input_type, field_path, where)
            if fields[-1].type == FieldDescriptor.TYPE_MESSAGE or _repeated(fields[-1]):
                raise TemplateError(
                    f"{where}: path variable {field_path} must be a singular scalar"
                )
            group = f"v{len(variables)}"
            sub_regex = _segments_regex(_split_top(sub, where), where) if sub else _SEGMENT
            variable = Variable(group, fields, bool(sub) and sub != "*", sub_regex)
            variables.append(variable)
            regex_parts.append(f"(?P<{group}>{sub_regex})")
            api_parts.append("{" + variable.param + "}")
        else:
            regex_parts.append(_segments_regex([segment], where))
            api_parts.append(
                segment if segment not in ("*", "**") else "{" + f"_{len(api_parts)}" + "}"
            )
    suffix = f":{verb_suffix}" if verb_suffix else ""
    regex = re.compile(_zero_or_more("/" + "/".join(regex_parts)) + re.escape(suffix))
    openapi_path = "/" + "/".join(api_parts) + suffix
    body_field = None
    if body and body != "*":
        body_field = method.input_type.fields_by_name.get(body)
        if body_field is None:
            raise TemplateError(
                f"{where}: body field {body!r} is not in {method.input_type.full_name}"
            )
    response_field = None
    if response_body:
        response_field = method.output_type.fields_by_name.get(response_body)
        if response_field is None:
            raise TemplateError(
                f"{where}: response_body {response_body!r} is not in {method.output_type.full_name}"
            )
    return Binding(
        method=method,
        http_method=verb,
        template=template,
        openapi_path=openapi_path,
        regex=regex,
        variables=tuple(variables),
        body=body,
        body_field=body_field,
        response_body=response_body,
        response_field=response_field,
        default=default,
    )


def _split_verb(path: str, where: str) -> tuple[str, str]:
    # The verb is a ':' after the last '/' and outside any variable.
    depth = 0
    colon = -1
    for i, ch in enumerate(path):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0 and ch == "/":
            colon = -1
        elif depth == 0 and ch == ":" and colon < 0:
            colon = i
        if depth < 0:
            raise TemplateError(f"{where}: unbalanced braces")
    if depth != 0:
        raise TemplateError(f"{where}: unbalanced braces")
    if colon >= 0:  # reset at every '/', so it is in the last segment
        return path[:colon], path[colon + 1 :]
    return path, ""


def _split_top(path: str, where: str) -> list[str]:
    segments, depth, start = [], 0, 0
    for i, ch in enumerate(path):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "/" and depth == 0:
            segments.append(path[start:i])
            start = i + 1
    segments.append(path[start:])
    if any(not s for s in segments):
        raise TemplateError(f"{where}: empty path segment")
    return segments


def _segments_regex(segments: list[str], where: str) -> str:
    parts = []
    for s in segments:
        if s == "*":
            parts.append(_SEGMENT)
        elif s == "**":
            parts.append(_ANY_SEGMENTS)
        elif "{" in s or "}" in s or "*" in s:
            raise TemplateError(f"{where}: nested variables or partial wildcards in {s!r}")
        else:
            parts.append(re.escape(s))
    return _zero_or_more("/".join(parts))


# ``**``: one or more segments as written; ``_zero_or_more`` lets it match none
# (http.proto: "matches zero or more path segments"), with the '/' before it.
_ANY_SEGMENTS = "[^/]+(?:/[^/]+)*"


def _zero_or_more(regex: str) -> str:
    return regex.replace("/" + _ANY_SEGMENTS, "(?:/[^/]+)*")


def _repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def field_path_of(message: Descriptor, path: str, where: str = "") -> tuple[FieldDescriptor, ...]:
    """Resolve a dotted field path (proto names) against ``message``.

    Raises:
        TemplateError: a part is not a field, or a non-final part is not a singular message.
    """
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for part in path.split("."):
        if not _IDENT.match(part) or current is None:
            raise TemplateError(f"{where}: bad field path {path!r}")
        field = current.fields_by_name.get(part)
        if field is None:
            raise TemplateError(f"{where}: {current.full_name} has no field {part!r}")
        fields.append(field)
        is_msg = field.type == FieldDescriptor.TYPE_MESSAGE and not _repeated(field)
        current = field.message_type if is_msg else None
    return tuple(fields)
