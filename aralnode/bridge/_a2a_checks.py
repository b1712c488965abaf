"""What the A2A door checks of a request before the a2a-sdk reads it, the same on
JSON-RPC, HTTP+JSON and gRPC (docs/a2a.md, "Refusals"). Each is refused in the
node's shape and audited, as the door's other refusals before the SDK:

- ``A2A-Version``: a version (digits and dots, ``MAX_VERSION_CHARS`` at most). The
  SDK reads it with ``packaging.version``, whose ``int()`` of 5,000 digits raised a
  ``ValueError``: JSON-RPC ``-32603`` with Python's text, HTTP+JSON 500, a traceback
  each time. Refused as A2A's ``VersionNotSupportedError`` (A2A 1.0 §3.6.2, §5.4:
  JSON-RPC ``-32009``, HTTP 400, gRPC ``UNIMPLEMENTED``; ``VERSION_NOT_SUPPORTED``).
  On gRPC, where the SDK checks no version, one whose major the service does not
  serve (``SERVED_MAJORS``: 1) is refused so too; on HTTP the SDK refuses it itself.
- the caller: ``GetExtendedAgentCard`` is for authenticated callers (§3.1.11); an
  anonymous one is refused as missing credentials are (§3.3.2: 401,
  ``UNAUTHENTICATED``; ``ANONYMOUS_REFUSED``), not as a bad request.
- numbers: NaN, an infinity or a number past a double anywhere in the request (a
  data part holds any JSON): ``NOT_A_JSON_NUMBER``, as the pipeline refuses such
  parameters. The SDK took them and its task store could not write the task (HTTP
  500, gRPC ``UNKNOWN``).
- ids: every task, context, message or tenant id a client names (``ID_KEYS``) is at
  most ``MAX_ID_CHARS`` characters, as ARAL's ids. The store keeps them and every
  answer about a task repeats them: a 3.5 MB ``contextId`` was answered with 7 MB,
  and ``ListTasks`` of three such tasks with 21 MB. Refused ``ID_TOO_LONG``.
- a message sent (``SendMessage``): from the user (``ROLE_USER``; ``"user"`` in A2A
  0.3's JSON-RPC ``message/send``, ``message/stream``), with parts, and
  no empty text part, as the SDK's ``new_task_from_user_message`` requires (it
  raised a ``ValueError``: ``-32603`` and a traceback). Refused ``INVALID_MESSAGE``.

The checks read an HTTP request as JSON, a gRPC request as the message it is
(``check_message_of``: its fields by name, no conversion to JSON, which cost every
call the size of its data parts). A caller's own JSON (a data part, metadata: a
``Struct``, a ``Value``) is not searched for ids; on gRPC it is the only place a
NaN can be.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from aralnode.bridge._jsonrpc import not_a_number
from aralnode.core import codec
from aralnode.core.context import CallContext
from aralnode.core.errors import InvalidParameters, StatusCode, Unauthenticated, UnsupportedVersion

#: The most characters of an id a client chooses (as ARAL's, aral_api.MAX_ID_CHARS).
MAX_ID_CHARS = 128
MAX_VERSION_CHARS = 16
_VERSION = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,4}){0,2}")
# The members that hold an id, in A2A 1.0's JSON and 0.3's: both spellings each (protobuf
# reads a field's JSON name and its name; 0.3's models an alias and its name).
ID_KEYS = frozenset({"id", "taskId", "task_id", "contextId", "context_id", "messageId",
                     "message_id", "referenceTaskIds", "reference_task_ids", "tenant",
                     "pushNotificationConfigId", "push_notification_config_id"})  # fmt: skip
# Members that hold a caller's own JSON (a data part, metadata): no ids of A2A's in them.
_OWN_JSON = frozenset({"data", "metadata"})
SENDS = frozenset({"SendMessage", "SendStreamingMessage"})


#: The A2A major versions the gRPC service (``lf.a2a.v1.A2AService``) serves.
SERVED_MAJORS = frozenset({"1"})


class VersionRefused(UnsupportedVersion):
    """An ``A2A-Version`` that is no version, or one not served: A2A's
    ``VersionNotSupportedError`` (§5.4: -32009, HTTP 400, gRPC UNIMPLEMENTED)."""

    status = StatusCode.UNIMPLEMENTED
    default_reason = "VERSION_NOT_SUPPORTED"
    rpc_code = -32009  # A2A's VersionNotSupportedError


def check_version(values: Iterable[str], *, majors: frozenset[str] | None = None) -> None:
    """Raises ``VersionRefused`` unless each ``A2A-Version`` given is empty (none:
    the SDK reads 0.3) or digits and dots (``1.0``), and, given ``majors``, one of
    those major versions (the minor and patch do not count, as for the SDK)."""
    for value in values:
        if value and (len(value) > MAX_VERSION_CHARS or not _VERSION.fullmatch(value)):
            raise VersionRefused(
                f"A2A-Version must be a version such as 1.0 (digits and dots, at most "
                f"{MAX_VERSION_CHARS} characters), not {value[:20]!r}"
                + (f" ({len(value)} characters)" if len(value) > 20 else "")
            )
        if value and majors is not None and value.split(".")[0].lstrip("0") not in majors:
            served = ", ".join(f"{m}.x" for m in sorted(majors))
            raise VersionRefused(f"A2A version {value!r} is not served here (it serves {served})")


def check_caller(method: str, ctx: CallContext) -> None:
    """Raises ``Unauthenticated`` (``ANONYMOUS_REFUSED``) for an anonymous caller of
    ``GetExtendedAgentCard`` (its context admitted: authenticated already)."""
    if method == "GetExtendedAgentCard" and ctx.anonymous:
        raise Unauthenticated(
            "GetExtendedAgentCard is for authenticated callers: send an API key "
            "(x-api-key) or a bearer token",
            reason="ANONYMOUS_REFUSED",
        )


def body_json(body: bytes) -> Any:
    """An HTTP+JSON body as every door reads JSON (``codec.loads``); ``None`` for one
    that is not JSON at all (the SDK answers that in its own way).

    Raises:
        InvalidParameters: a number JSON has no form for (``NOT_A_JSON_NUMBER``), a
            member given twice (``DUPLICATE_PARAMETER``).
    """
    try:
        return codec.loads(body)
    except codec.NotAJsonNumber as exc:
        raise not_a_number(exc) from None
    except (ValueError, RecursionError):
        return None


def check_request(method: str, params: Any, *, v03: bool = False, parts: str = "parts") -> None:
    """The checks of the module docstring on a request's parameters (``method``: its
    A2A 1.0 name; ``v03``: asked by A2A 0.3's JSON-RPC name, whose models spell the
    role ``"user"``; ``parts``: the member a message's parts are in, ``"content"``
    in A2A 0.3's REST body, whose protobuf names them so).

    Raises:
        InvalidParameters: an id too long (``ID_TOO_LONG``), a message that is not the
            user's or has no content (``INVALID_MESSAGE``).
    """
    check_ids(params)
    if method in SENDS and isinstance(params, dict):
        check_message(params.get("message"), v03=v03, parts=parts)


def check_ids(value: Any) -> None:
    """Raises ``InvalidParameters`` (``ID_TOO_LONG``) for an id past ``MAX_ID_CHARS``
    anywhere in ``value`` but a caller's own JSON (a loop, not a recursion: the
    parser's depth is not this function's)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, member in item.items():
                if key in ID_KEYS:
                    for one in member if isinstance(member, list) else (member,):
                        if isinstance(one, str) and len(one) > MAX_ID_CHARS:
                            raise _too_long(key, one)
                elif key not in _OWN_JSON and isinstance(member, dict | list):
                    stack.append(member)


def check_message_of(method: str, request: Message) -> None:
    """``check_request`` on a gRPC request, read from the message itself: its id
    fields (``ID_KEYS`` by field name, named in a refusal by their JSON name), the
    numbers in its ``Struct``/``Value``/``ListValue`` fields (NOT_A_JSON_NUMBER first,
    as the JSON form could not be made of such a request) and a send's message.

    Raises:
        InvalidParameters: the refusals of ``check_request`` and ``body_json``.
    """
    too_long: InvalidParameters | None = None
    stack = [request]
    while stack:
        message = stack.pop()
        for field, value in message.ListFields():
            values = _values(field, value)
            if field.message_type is None:
                if too_long is None and field.name in ID_KEYS:
                    for one in values:
                        if isinstance(one, str) and len(one) > MAX_ID_CHARS:
                            too_long = _too_long(field.json_name, one)
                            break
                continue
            json_types = [v for v in values if v.DESCRIPTOR.full_name in _JSON_TYPES]
            _check_numbers(json_types)
            if len(json_types) < len(values):
                stack.extend(v for v in values if v.DESCRIPTOR.full_name not in _JSON_TYPES)
    if too_long is not None:
        raise too_long
    if method in SENDS and request.HasField("message"):
        _check_sent(request.message)  # type: ignore[attr-defined]


def _values(field: FieldDescriptor, value: Any) -> list[Any]:
    """A field's values as a list (one; a repeated field's; a map's values, only if
    they are messages: no map of ids in A2A's requests)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return [v for v in value.values() if isinstance(v, Message)]
    return list(value) if field.is_repeated else [value]


_JSON_TYPES = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)


def _check_numbers(values: Iterable[Any]) -> None:
    """Raises NOT_A_JSON_NUMBER for NaN or an infinity in these ``Struct``,
    ``Value`` or ``ListValue`` messages (a loop: their depth is the caller's)."""
    stack = list(values)
    while stack:
        item = stack.pop()
        name = item.DESCRIPTOR.full_name
        if name == "google.protobuf.Struct":
            stack.extend(item.fields.values())
        elif name == "google.protobuf.ListValue":
            stack.extend(item.values)
        else:
            kind = item.WhichOneof("kind")
            if kind == "number_value" and not math.isfinite(item.number_value):
                # (protobuf's words, which say Infinity for either sign)
                said = "NaN" if math.isnan(item.number_value) else "Infinity"
                raise not_a_number(ValueError(
                    f"Fail to serialize {said} for Value.number_value, which would parse "
                    "as string_value."
                ))  # fmt: skip
            if kind == "struct_value":
                stack.append(item.struct_value)
            elif kind == "list_value":
                stack.append(item.list_value)


def _check_sent(message: Any) -> None:
    """``check_message`` on a gRPC send's message (its role as its JSON form names it)."""
    role = message.role
    if role != 1:
        known = message.DESCRIPTOR.fields_by_name["role"].enum_type.values_by_number.get(role)
        said = None if role == 0 else (known.name if known is not None else role)
        raise _bad_message(f"a message sent must be the user's (ROLE_USER), not {said!r}"[:200])
    if not message.parts:
        raise _bad_message("a message sent must have parts")
    for part in message.parts:
        if part.WhichOneof("content") == "text" and part.text == "":
            raise _bad_message("a text part must not be empty")


def _too_long(key: str, value: str) -> InvalidParameters:
    return InvalidParameters(
        f"{key} must be at most {MAX_ID_CHARS} characters, not {len(value)}",
        reason="ID_TOO_LONG",
        details={"parameter": key, "max_chars": MAX_ID_CHARS},
    )


def check_message(message: Any, *, v03: bool = False, parts: str = "parts") -> None:
    """Raises ``InvalidParameters`` (``INVALID_MESSAGE``) unless ``message`` (a
    message to send, as JSON) is the user's, has parts, and no empty text part.

    The user is ``ROLE_USER`` (or 1) in A2A 1.0, ``"user"`` in 0.3's JSON-RPC
    (``v03``): the SDK reads ``"user"`` in a 1.0 request as ``ROLE_UNSPECIFIED``."""
    if not isinstance(message, dict):
        return  # none at all: the SDK says so itself, as a bad parameter
    role = message.get("role")
    if v03:
        if role != "user":
            raise _bad_message(f"a message sent must be the user's (user), not {role!r}"[:200])
    elif role != "ROLE_USER" and not (type(role) is int and role == 1):
        raise _bad_message(f"a message sent must be the user's (ROLE_USER), not {role!r}"[:200])
    given = message.get(parts)
    if not isinstance(given, list) or not given:
        raise _bad_message(f"a message sent must have parts ({parts})")
    for part in given:
        if isinstance(part, dict) and part.get("text") == "":
            raise _bad_message("a text part must not be empty")


def _bad_message(text: str) -> InvalidParameters:
    return InvalidParameters(text, reason="INVALID_MESSAGE")


__all__ = [
    "ID_KEYS",
    "MAX_ID_CHARS",
    "SENDS",
    "SERVED_MAJORS",
    "VersionRefused",
    "body_json",
    "check_caller",
    "check_ids",
    "check_message",
    "check_message_of",
    "check_request",
    "check_version",
]
