"""The capability registry: plain async functions and protobuf service methods.

A function becomes a capability through ``CapabilityRegistry.function`` (the
``@node.capability`` decorator): its type hints give the input JSON Schema and the
validation (pydantic), its return annotation the output schema, its docstring the
description. A parameter annotated ``CallContext`` receives the call context.

A method of a registered protobuf service becomes a capability with id
``package.Service/Method``; its schemas come from the message descriptors.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import pydantic
import pydantic_core
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aralnode import _proto as pb
from aralnode.core import codec
from aralnode.core.context import CallContext
from aralnode.core.errors import (
    AralError,
    CapabilityNotFound,
    InternalError,
    InvalidParameters,
    InvalidRequest,
)
from aralnode.core.proto_json import DuplicateField, InexactInteger, check_json
from aralnode.core.proto_schema import SCHEMA_DIALECT, message_schema

Handler = Callable[[Any, CallContext], Awaitable[Any]]
MessageHandler = Callable[[Message, CallContext], Awaitable[Message]]

RISKS = (
    "unspecified",
    "read_only",
    "limited_write",
    "external_api",
    "database",
    "system",
    "financial",
)


@dataclass(slots=True)
class Capability:
    """A registered capability.

    ``handler(params, ctx)`` takes decoded JSON parameters and returns a JSON-able
    result; validation against ``input_schema`` happens inside it. A capability that
    is a protobuf method also has ``message_handler(request, ctx)``, which takes the
    request message and returns the response message, with no JSON between them. A
    function's ``governed(params)`` is its parameters as its handler will take them
    (validated, in JSON form): what governance judges, whatever form the caller sent.
    """

    id: str
    handler: Handler
    name: str = ""
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] = field(default_factory=dict)
    required_scopes: tuple[str, ...] = ()
    risk: str = "unspecified"
    grpc_method: str = ""
    method: MethodDescriptor | None = None
    message_handler: MessageHandler | None = None
    governed: Callable[[Any], Any] | None = None

    def method_handler(self) -> MessageHandler:
        """The protobuf handler (request message in, response message out).

        Raises:
            InvalidRequest: this capability is a function, not a protobuf method.
        """
        if self.message_handler is None:
            raise InvalidRequest(f"{self.id} is not a protobuf method", reason="NOT_A_METHOD")
        return self.message_handler

    def to_proto(self) -> pb.Capability:
        cap = pb.Capability(
            id=self.id,
            name=self.name or self.id,
            description=self.description,
            required_scopes=list(self.required_scopes),
            risk=RISKS.index(self.risk),  # type: ignore[arg-type]  # enum values are ints
            grpc_method=self.grpc_method,
        )
        if self.input_schema:
            cap.input_schema.update(self.input_schema)
        if self.output_schema:
            cap.output_schema.update(self.output_schema)
        return cap


@dataclass(slots=True, frozen=True)
class ProtoService:
    """A user's protobuf service as a node serves it: the servicer, the service's
    descriptor, and the scopes a caller needs, by method name."""

    servicer: object
    descriptor: ServiceDescriptor
    scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name

    def scopes_of(self, method: str) -> tuple[str, ...]:
        return self.scopes.get(method, ())


def _check_id(cap_id: str) -> str:
    if not cap_id or len(cap_id) > 128 or any(c.isspace() for c in cap_id):
        raise ValueError(f"invalid capability id {cap_id!r}: 1..128 chars, no whitespace")
    return cap_id


def _check_risk(risk: str) -> str:
    if risk not in RISKS:
        raise ValueError(f"unknown risk {risk!r}; one of {', '.join(RISKS)}")
    return risk


def function_capability(
    fn: Callable[..., Awaitable[Any]],
    *,
    id: str | None = None,
    description: str | None = None,
    scopes: tuple[str, ...] = (),
    risk: str = "unspecified",
) -> Capability:
    """Describe an ``async def`` as a capability (schema and validation from hints)."""
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{fn.__qualname__} must be an async function")
    hints = get_type_hints(fn, include_extras=True)
    model, ctx_param = _parameters(fn, hints)
    input_schema = {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}
    input_schema.pop("title", None)
    returns = hints.get("return", Any)
    out_adapter = _result_adapter(returns)
    output_schema: dict[str, Any] = {}
    if returns is not Any and returns is not type(None):
        output_schema = {"$schema": SCHEMA_DIALECT, **out_adapter.json_schema()}
    cap_id = _check_id(id or fn.__name__)
    # Whole numbers leave as ints, as every door that carries results as Struct
    # values prints them; only results that may hold a float need the walk.
    whole = returns is Any or _may_hold_floats(output_schema)
    doc = inspect.getdoc(fn) or ""
    return Capability(
        id=cap_id,
        handler=_function_handler(fn, cap_id, model, ctx_param, out_adapter, whole=whole),
        governed=_governed_view(cap_id, model),
        name=fn.__name__,
        description=description if description is not None else doc.split("\n\n")[0],
        input_schema=input_schema,
        output_schema=output_schema,
        required_scopes=tuple(scopes),
        risk=_check_risk(risk),
    )


def _parameters(
    fn: Callable[..., Any], hints: dict[str, Any]
) -> tuple[type[pydantic.BaseModel], str | None]:
    """A model of ``fn``'s parameters (unknown ones forbidden), and the name of the
    one that takes the ``CallContext``, if any."""
    fields: dict[str, Any] = {}
    ctx_param: str | None = None
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{fn.__qualname__}: *args/**kwargs cannot become a schema")
        annotation = hints.get(name, Any)
        if annotation is CallContext:
            ctx_param = name
            continue
        default = ... if param.default is param.empty else param.default
        fields[name] = (annotation, default)
    model = pydantic.create_model(
        f"{fn.__name__}_params",
        __config__=pydantic.ConfigDict(extra="forbid"),
        **fields,
    )
    return model, ctx_param


def _result_adapter(returns: Any) -> pydantic.TypeAdapter[Any]:
    """What dumps a capability's result to JSON values. pydantic's default turns NaN
    and infinities into ``null``, silently (a sum that overflowed would answer
    ``null``); kept as they are, the pipeline refuses them as it does on every door.
    A model, dataclass or TypedDict result has its own config, which decides."""
    try:
        return pydantic.TypeAdapter(returns, config=_KEEP_INF_NAN)
    except pydantic.PydanticUserError:
        return pydantic.TypeAdapter(returns)


_KEEP_INF_NAN = pydantic.ConfigDict(ser_json_inf_nan="constants")


def _function_handler(
    fn: Callable[..., Awaitable[Any]],
    cap_id: str,
    model: type[pydantic.BaseModel],
    ctx_param: str | None,
    out_adapter: pydantic.TypeAdapter[Any],
    *,
    whole: bool,
) -> Handler:
    validate, fields_only = _validator(model)
    dump = out_adapter.serializer.to_python

    async def handler(params: Any, ctx: CallContext) -> Any:
        parsed = _validated(validate, params, cap_id)
        # Every parameter, defaults filled in: the fields, or a model's __dict__.
        kwargs = parsed[0] if fields_only else parsed.__dict__
        if ctx_param is None:
            result = await fn(**kwargs)
        else:
            result = await fn(**kwargs, **{ctx_param: ctx})
        out = dump(result, mode="json")
        return codec.whole_numbers(out) if whole else out

    return handler


def _validated(validate: Callable[[Any], Any], params: Any, cap_id: str) -> Any:
    """``params`` (None: none) validated, or ``InvalidParameters`` saying why not."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParameters(
            f"parameters of {cap_id} must be a JSON object, got {type(params).__name__}"
        )
    try:
        return validate(params)
    except pydantic.ValidationError as exc:
        raise InvalidParameters(
            f"invalid parameters for {cap_id}: {_summary(exc)}",
            details={"errors": [_err(e) for e in exc.errors()[:10]]},
        ) from None


def _governed_view(cap_id: str, model: type[pydantic.BaseModel]) -> Callable[[Any], Any]:
    """A function's parameters as governance judges them: validated as its handler
    validates them, in JSON form (``"1337"`` for a float is ``1337.0``, a default
    is filled in), so that no form of a value a rule names slips past the rule."""
    validate = model.__pydantic_validator__.validate_python

    def view(params: Any) -> Any:
        checked = _validated(validate, params, cap_id)
        try:
            return codec.whole_numbers(checked.model_dump(mode="json", by_alias=True))
        except pydantic_core.PydanticSerializationError as exc:  # fail closed: none unjudged
            raise InvalidParameters(
                f"parameters of {cap_id} have no JSON form to judge: {exc}"
            ) from None

    return view


def _validator(model: type[pydantic.BaseModel]) -> tuple[Callable[[Any], Any], bool]:
    """What validates a capability's parameters, and whether it gives the fields
    alone (a tuple whose first item is the dict of them). A parameters model that is
    one plain set of fields (the usual case) is validated as that set: the same
    checks and errors, without making a model instance on every call."""
    schema = model.__pydantic_core_schema__
    if schema.get("type") == "model" and schema["schema"].get("type") == "model-fields":
        fields = pydantic_core.SchemaValidator(schema["schema"], schema.get("config"))
        return fields.validate_python, True
    return model.__pydantic_validator__.validate_python, False


def _may_hold_floats(schema: Any) -> bool:
    """Whether a value ``schema`` describes may hold a JSON number that is not an
    integer: a ``number`` anywhere, or any part left open (no type, ``{}``)."""
    if isinstance(schema, dict):
        if schema.get("type") == "number" or "number" in (schema.get("type") or ()):
            return True
        if schema.get("additionalProperties") is True or not schema.keys() - {
            "$schema",
            "title",
            "description",
        }:
            return True
        return any(_may_hold_floats(v) for k, v in schema.items() if k not in ("type", "title"))
    if isinstance(schema, list):
        return any(_may_hold_floats(v) for v in schema)
    return schema is True


def _summary(exc: pydantic.ValidationError) -> str:
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        parts.append(f"{loc}: {e['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def _err(e: Any) -> dict[str, Any]:
    return {"field": ".".join(str(x) for x in e["loc"]), "message": e["msg"], "type": e["type"]}


def method_capabilities(
    servicer: object,
    service: ServiceDescriptor,
    *,
    risk: str = "unspecified",
    comments: Mapping[str, str] | None = None,
    scopes: Mapping[str, Sequence[str]] | None = None,
) -> list[Capability]:
    """One capability per unary-unary method of ``service`` implemented by ``servicer``.

    ``comments`` (proto comments by full name, see ``proto_schema``) give the
    descriptions of the capabilities and of their schemas' fields; ``scopes`` (by
    method name) the scopes a caller needs for each.

    Raises:
        ValueError: ``scopes`` names a method the service does not have.
    """
    scopes = dict(scopes or {})
    unknown = set(scopes) - {m.name for m in service.methods}
    if unknown:
        raise ValueError(f"{service.full_name} has no method {', '.join(sorted(unknown))}")
    for name, needed in scopes.items():
        if isinstance(needed, str):
            raise TypeError(f"scopes of {name} are a sequence of names, not one string: {needed!r}")
    caps = []
    for method in service.methods:
        if method.client_streaming or method.server_streaming:
            continue
        impl = getattr(servicer, method.name, None)
        if impl is None:
            continue
        cap = _method_capability(impl, method, risk, comments or {})
        cap.required_scopes = tuple(scopes.get(method.name, ()))
        caps.append(cap)
    return caps


def request_from(req_cls: type[Message], params: Any, method_id: str = "") -> Message:
    """The message ``params`` (proto3 JSON) describe, with the error every door
    reports for bad input (``InvalidParameters``, naming ``method_id`` if given)."""
    request = req_cls()
    try:
        check_json(request.DESCRIPTOR, params)
        json_format.ParseDict(params if params is not None else {}, request)
    except (
        json_format.ParseError,
        TypeError,
        ValueError,
        AttributeError,
        RecursionError,
        OverflowError,
        SystemError,
    ) as exc:  # OverflowError: an integer too big for any double, in a Struct or a float;
        # SystemError: upb's, for a member name no UTF-8 holds (a lone surrogate)
        name = req_cls.DESCRIPTOR.full_name
        what = f"parameters for {method_id}" if method_id else name
        reason = "DUPLICATE_PARAMETER" if isinstance(exc, DuplicateField) else None
        if isinstance(exc, InexactInteger):
            reason = "NOT_A_JSON_NUMBER"  # as the doors that read JSON numbers say
        said = "a member name is not valid Unicode" if isinstance(exc, SystemError) else exc
        raise InvalidParameters(
            f"invalid {what}: {said}", reason=reason, details={"message": name}
        ) from None
    return request


def servicer_failure(ctx: CallContext, exc: Exception) -> AralError | None:
    """The error a servicer's exception ends its call as, if not itself. An
    ``AralError`` (an ``abort`` among them) stands. Any other, after ``set_code`` to
    a failure, is that status with grpc.aio's own details for it ("Unexpected <class
    ...>: ..."): the servicer said how the call ends. Without one the exception stays
    as it is, for the pipeline to report (``HANDLER_FAILED``, logged)."""
    if isinstance(exc, AralError) or ctx.status_code is None:
        return None
    ctx.status_details = f"Unexpected {type(exc)}: {exc}"
    return ctx.status_error()


async def call_servicer(
    impl: Callable[..., Any], request: Any, ctx: CallContext, *, awaits: bool = False
) -> Any:
    """``impl(request, ctx)`` (awaited if it gives an awaitable; ``awaits``: it is
    known to), ending as its status says: ``set_code`` to a failure, or an ``abort``
    the servicer caught, raises that status's error after it returns."""
    try:
        response = impl(request, ctx)
        if awaits or inspect.isawaitable(response):
            response = await response
    except Exception as exc:
        failure = servicer_failure(ctx, exc)
        if failure is None:
            raise
        raise failure from exc
    _end_as_set(ctx)
    return response


def _end_as_set(ctx: CallContext) -> None:
    """Raises the error of the status the servicer set, if it set a failure."""
    if ctx.status_code is not None:
        error = ctx.status_error()
        if error is not None:
            raise error


def servicer_stream(
    impl: Callable[[Any, CallContext], AsyncIterator[Message]],
) -> Callable[[Any, CallContext], AsyncIterator[Message]]:
    """A streaming servicer method whose status (``set_code``, an ``abort`` it
    caught, an exception after ``set_code``) ends the stream, as on grpc.aio."""

    async def stream(request: Any, ctx: CallContext) -> AsyncIterator[Message]:
        try:
            async for item in impl(request, ctx):
                yield item
        except Exception as exc:
            failure = servicer_failure(ctx, exc)
            if failure is None:
                raise
            raise failure from exc
        _end_as_set(ctx)

    return stream


def _method_capability(
    impl: Callable[..., Any], method: MethodDescriptor, risk: str, comments: Mapping[str, str]
) -> Capability:
    req_cls: type[Message] = GetMessageClass(method.input_type)
    resp_cls: type[Message] = GetMessageClass(method.output_type)
    cap_id = f"{method.containing_service.full_name}/{method.name}"
    wants_awaiting = inspect.iscoroutinefunction(impl)

    async def native(request: Message, ctx: CallContext) -> Message:
        # call_servicer, inlined: one coroutine frame less on the hottest user path.
        try:
            response = impl(request, ctx)
            if wants_awaiting or inspect.isawaitable(response):
                response = await response
        except Exception as exc:
            failure = servicer_failure(ctx, exc)
            if failure is None:
                raise
            raise failure from exc
        if ctx.status_code is not None:  # set_code, or an abort the servicer caught
            error = ctx.status_error()
            if error is not None:
                raise error
        if type(response) is not resp_cls and not isinstance(response, resp_cls):
            raise InternalError(
                f"{cap_id} returned {type(response).__name__}, not {resp_cls.__name__}",
                reason="BAD_RESPONSE_TYPE",
            )
        return response

    async def handler(params: Any, ctx: CallContext) -> Any:
        # The JSON doors' form of the method: proto3 JSON in and out, whole numbers
        # as ints (as every door's Struct results have them).
        return codec.message_json(await native(request_from(req_cls, params, cap_id), ctx))

    return Capability(
        id=cap_id,
        handler=handler,
        name=method.name,
        description=comments.get(method.full_name)
        or f"{method.containing_service.full_name}.{method.name}",
        # The card travels (to peers, to the stdio bridge): its input schema says what
        # the parser accepts, closed, as the HTTP door's tools and OpenAPI do.
        input_schema=message_schema(method.input_type, comments=dict(comments), closed=True),
        output_schema=message_schema(method.output_type, comments=dict(comments)),
        risk=_check_risk(risk),
        grpc_method=f"/{method.containing_service.full_name}/{method.name}",
        method=method,
        message_handler=native,
    )


# A method's kind by (client streams, server streams); a unary one is a capability.
_STREAMING = {
    (True, True): "bidirectional",
    (True, False): "client-streaming",
    (False, True): "server-streaming",
}


class CapabilityRegistry:
    """Capabilities by id, with change listeners (mDNS TXT, events)."""

    def __init__(self, owner: str = "") -> None:
        # The node id a refusal names: "not found" travels to other nodes' callers
        # (a forwarded call), where "this node" would mean the wrong one.
        self.owner = owner
        self._caps: dict[str, Capability] = {}
        self._listeners: list[Callable[[], None]] = []
        self._digest: str | None = None
        # Streaming methods of the node's services (no capability: a call and its
        # answer are one message each), so that asking for one says what it is.
        self.streaming: dict[str, str] = {}

    def note_streams(self, service: ServiceDescriptor) -> None:
        """Remember ``service``'s streaming methods (``get`` names them)."""
        for m in service.methods:
            kind = _STREAMING.get((m.client_streaming, m.server_streaming))
            if kind is not None:
                self.streaming[f"{service.full_name}/{m.name}"] = kind

    def add(self, cap: Capability, *, replace: bool = False) -> Capability:
        if cap.id in self._caps and not replace:
            raise ValueError(f"capability {cap.id!r} is already registered")
        self._caps[cap.id] = cap
        self._changed()
        return cap

    def remove(self, cap_id: str) -> None:
        if self._caps.pop(cap_id, None) is not None:
            self._changed()

    def get(self, cap_id: str) -> Capability:
        cap = self._caps.get(cap_id)
        if cap is None:
            where = f"node {self.owner}" if self.owner else "this node"
            kind = self.streaming.get(cap_id)
            if kind is not None:
                raise CapabilityNotFound(
                    f"{cap_id} on {where} is a {kind} method, not a capability: call it "
                    "as its gRPC method (or, where it has an HTTP rule, over REST)",
                    details={"capability": cap_id, "streaming": kind},
                )
            raise CapabilityNotFound(
                f"no capability {cap_id!r} on {where}", details={"capability": cap_id}
            )
        return cap

    def __contains__(self, cap_id: object) -> bool:
        return cap_id in self._caps

    def __iter__(self) -> Iterator[Capability]:
        return iter(sorted(self._caps.values(), key=lambda c: c.id))

    def __len__(self) -> int:
        return len(self._caps)

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after every change; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    @property
    def digest(self) -> str:
        """First 16 hex chars of SHA-256 over the sorted capability ids."""
        if self._digest is None:
            ids = "\n".join(sorted(self._caps))
            self._digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
        return self._digest

    def _changed(self) -> None:
        self._digest = None
        for listener in list(self._listeners):
            listener()
