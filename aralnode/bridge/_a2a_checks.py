"""What the A2A door checks of a request before the a2a-sdk reads it, the same on
JSON-RPC, HTTP+JSON and gRPC (docs/a2a.md, "Refusals"). Each is refused in the
node's shape and audited, as the door's other refusals before the SDK:

- ``A2A-Version``: a version (digits and dots, ``MAX_VERSION_CHARS`` at most). The
  SDK reads it with ``packaging.version``, whose ``int()`` of 5,000 digits raised a
  ``ValueError``: JSON-RPC ``-32603`` with Python's text, HTTP+JSON 500, a traceback
  each time. Refused ``VERSION_NOT_SUPPORTED`` (JSON-RPC ``-32009``, A2A's
  ``VersionNotSupportedError``; HTTP 400; ``FAILED_PRECONDITION``).
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

The checks read the request as JSON: on gRPC its proto3 JSON form. A caller's own
JSON (a data part, metadata) is not searched for ids.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from aralnode.bridge._jsonrpc import not_a_number
from aralnode.core import codec
from aralnode.core.errors import InvalidParameters, UnsupportedVersion

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


class VersionRefused(UnsupportedVersion):
    """An ``A2A-Version`` that is no version."""

    default_reason = "VERSION_NOT_SUPPORTED"
    rpc_code = -32009  # A2A's VersionNotSupportedError


def check_version(values: Iterable[str]) -> None:
    """Raises ``VersionRefused`` unless each ``A2A-Version`` given is empty (none:
    the SDK reads 0.3) or digits and dots (``1.0``)."""
    for value in values:
        if value and (len(value) > MAX_VERSION_CHARS or not _VERSION.fullmatch(value)):
            raise VersionRefused(
                f"A2A-Version must be a version such as 1.0 (digits and dots, at most "
                f"{MAX_VERSION_CHARS} characters), not {value[:20]!r}"
                + (f" ({len(value)} characters)" if len(value) > 20 else "")
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


def message_json(request: Message) -> Any:
    """A gRPC request as its proto3 JSON form, for the checks.

    Raises:
        InvalidParameters: a ``google.protobuf.Value`` in it holds NaN or an infinity
            (``NOT_A_JSON_NUMBER``).
    """
    try:
        return json_format.MessageToDict(request)
    except (ValueError, json_format.Error) as exc:
        raise not_a_number(ValueError(str(exc).rpartition(": ")[2])) from None


def check_request(method: str, params: Any, *, v03: bool = False) -> None:
    """The checks of the module docstring on a request's parameters (``method``: its
    A2A 1.0 name; ``v03``: asked by A2A 0.3's JSON-RPC name, whose models spell the
    role ``"user"``).

    Raises:
        InvalidParameters: an id too long (``ID_TOO_LONG``), a message that is not the
            user's or has no content (``INVALID_MESSAGE``).
    """
    check_ids(params)
    if method in SENDS and isinstance(params, dict):
        check_message(params.get("message"), v03=v03)


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


def _too_long(key: str, value: str) -> InvalidParameters:
    return InvalidParameters(
        f"{key} must be at most {MAX_ID_CHARS} characters, not {len(value)}",
        reason="ID_TOO_LONG",
        details={"parameter": key, "max_chars": MAX_ID_CHARS},
    )


def check_message(message: Any, *, v03: bool = False) -> None:
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
    parts = message.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _bad_message("a message sent must have parts")
    for part in parts:
        if isinstance(part, dict) and part.get("text") == "":
            raise _bad_message("a text part must not be empty")


def _bad_message(text: str) -> InvalidParameters:
    return InvalidParameters(text, reason="INVALID_MESSAGE")


__all__ = [
    "ID_KEYS",
    "MAX_ID_CHARS",
    "SENDS",
    "VersionRefused",
    "body_json",
    "check_ids",
    "check_message",
    "check_request",
    "check_version",
    "message_json",
]
