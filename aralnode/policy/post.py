"""Post-execution checks (ACGP-1008 §2.6, §6.2): sensitive data in results, and
results that break their declared output schema.

``SensitiveData`` scans a result (JSON on every door: a protobuf response as its
JSON view) with the detectors -- built-in ones for private keys, cloud and API
tokens, JWTs, bearer tokens, and fields named like secrets, plus the policy's own
patterns -- in one pass per string (one compiled alternation), and by the caller's
tier redacts, escalates (the result, redacted, waits for an approver), blocks, or
lets it pass. With the built-in detectors alone, a string too short for any of them
or holding none of their literals (``BUILTIN_TRIGGERS``) skips the pattern. Scanning
is bounded: at most ``MAX_SCAN`` characters of a string, ``MAX_NODES`` values and
``MAX_DEPTH`` levels of a result; a result beyond that is not passed unscanned -- it
is refused (fail closed).

An error leaves through the same detectors (``SensitiveData.scrub``): its message
(a servicer's status details among them), reason and details are redacted in place
before the pipeline records and raises it, so no door sends, and no audit record
keeps, what a result could not carry. An error cannot wait for an approver: it is
redacted whatever the caller's tier says, unless that is ``ok``. So is the trailing
metadata a user's gRPC servicer sets (``SensitiveData.trailers``, ``scrub_metadata``),
on a status it ends with or beside an answer.

A field is a secret's by its name (``secret_field``): one of ``SECRET_KEYS``, a name
that ends like one (``SECRET_ENDINGS``: ``db_password``, ``secretKey``,
``x-api-key``), or one with a secret's word among its parts and a value's word last
(``aws_secret_access_key``, ``password_hash``). ``tokens_used``, ``token_count``,
``max_tokens``, ``password_hint`` and ``next_page_token`` are not.

``OutputSchema`` validates a result against its capability's declared output
schema (validators compiled once per capability): a mismatch is flagged (the
principal's trust debt rises), or blocked, as the policy says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema_rs

from aralnode.core.context import CallContext
from aralnode.core.errors import (
    MAX_MESSAGE_BYTES,
    AralError,
    InternalError,
    PermissionDenied,
    bounded_details,
    bounded_text,
)
from aralnode.core.governance import Action, Decision, Escalation, Verdict

MAX_SCAN = 64 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 64
POST_ACTIONS = ("redact", "escalate", "block", "ok")

BUILTIN_PATTERNS: Mapping[str, str] = {
    "private_key": r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----[A-Za-z0-9+/=\s]{0,10000}?"
    r"-----END [A-Z ]{0,40}PRIVATE KEY-----",
    "aws_access_key": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,2000}\.[A-Za-z0-9_-]{8,4000}\.[A-Za-z0-9_-]{8,2000}",
    "bearer_token": r"\b[Bb]earer\s+[A-Za-z0-9._~+/=-]{16,2000}",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    "slack_token": r"\bxox[abposr]-[A-Za-z0-9-]{10,255}\b",
    "aralnode_api_key": r"\baral_[A-Za-z0-9]{16}_[A-Za-z0-9_-]{43}\b",
    # An AWS secret access key (40 characters, no mark of its own) next to its name.
    "aws_secret_key": r"(?:[Ss]ecret|SECRET)[_-]?(?:[Aa]ccess|ACCESS)[_-]?(?:[Kk]ey|KEY)"
    r"[\"']?\s{0,4}[:=]\s{0,4}[\"']?[A-Za-z0-9/+]{40}",
}
#: For each built-in detector, literals one of which every text it matches holds. A
#: string with none of them skips the regular expression, whose leading ``\b``s make
#: it try every alternative at every character: about 100 ns a character, against
#: well under one for the literals (``str.__contains__``).
BUILTIN_TRIGGERS: Mapping[str, tuple[str, ...]] = {
    "private_key": ("PRIVATE KEY-----",),
    "aws_access_key": ("AKIA", "ASIA"),
    "jwt": ("eyJ",),
    "bearer_token": ("earer",),
    "github_token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
    "slack_token": ("xox",),
    "aralnode_api_key": ("aral_",),
    "aws_secret_key": ("ecret", "ECRET"),
}
#: The shortest text a built-in detector matches (a Slack token: ``xoxb-`` and ten
#: more): a shorter string -- most keys and many values -- is not scanned at all.
BUILTIN_SHORTEST = 15
#: Field names remembered with what they normalize to (``Scanner``), at most ...
MAX_NAMES = 4096
#: ... and only names this short (a secret's name is a word; a peer's 4 MB key is
#: looked up, not kept).
MAX_NAME_CHARS = 64
#: Secrets' names, each redacted as itself (no two normalise alike: the label would
#: depend on the set's order; ``apikey`` is ``api_key``).
SECRET_KEYS = frozenset({
    "password", "passwd", "secret", "client_secret", "api_key", "token",
    "access_token", "refresh_token", "private_key", "authorization",
})  # fmt: skip
#: A name that ends like one of these (its parts joined in lower case:
#: ``secret_field``) is a secret's, named as the value says (``db_password``,
#: ``dbpassword``, ``secretKey``, ``X-Api-Key``).
#: ``token`` in the singular only: ``max_tokens`` and ``tokens_used`` count tokens.
SECRET_ENDINGS: Mapping[str, str] = {
    "password": "password", "passwd": "passwd", "passphrase": "passphrase",
    "secret": "secret", "secrets": "secret", "token": "token",
    "credential": "credentials", "credentials": "credentials",
    "authorization": "authorization", "apikey": "api_key", "privatekey": "private_key",
    "secretkey": "secret_key", "secretaccesskey": "secret_key", "signingkey": "signing_key",
    "encryptionkey": "encryption_key",
}  # fmt: skip
#: ... unless it ends like one of these: a token that pages through results (the
#: caller needs it to go on), a language model's special tokens (``eos_token``).
NOT_SECRET_ENDINGS = (
    "pagetoken", "nexttoken", "continuationtoken", "synctoken", "resumetoken",
    "eostoken", "bostoken", "padtoken", "unktoken", "septoken", "clstoken", "masktoken",
    "stoptoken",
)  # fmt: skip
#: A name with one of these words among its parts (split at ``_``, ``-``, ``.``,
#: spaces and camelCase humps) ...
SECRET_WORDS = frozenset({"password", "passwd", "passphrase", "secret"})
#: ... and one of these last is a secret's too (``aws_secret_access_key``,
#: ``passwordHash``, ``secret_value``); ``password_hint`` and ``secret_name`` are not.
#: (``token`` is not among the words: ``token_text`` and ``token_bytes`` are a
#: language model's.)
VALUE_WORDS = frozenset({
    "key", "value", "hash", "digest", "b64", "base64", "hex", "pem", "der", "bytes", "raw",
    "plain", "plaintext", "enc", "encrypted", "ciphertext",
})  # fmt: skip


@dataclass(slots=True, frozen=True)
class Detector:
    """A configured detector: a pattern (Python ``re``), or field names whose
    values are redacted whole."""

    name: str
    pattern: str = ""
    keys: frozenset[str] = frozenset()


@dataclass(slots=True, frozen=True)
class PostPolicy:
    """The policy file's ``[post]`` section."""

    sensitive: tuple[tuple[int, int, str], ...] = ((0, 2, "redact"), (3, 5, "escalate"))
    schema_mismatch: str = "flag"  # flag | block | ok
    replacement: str = "[REDACTED:{name}]"
    builtin: bool = True
    detectors: tuple[Detector, ...] = ()
    flag_weight: float = 0.1
    messages: bool = True  # redact channel messages too (the filtering point)

    def action_for(self, tier: int) -> str:
        for low, high, action in self.sensitive:
            if low <= tier <= high:
                return action
        return "ok"


class Scanner:
    """All detectors of a ``PostPolicy``, compiled into one pattern."""

    def __init__(self, policy: PostPolicy) -> None:
        self.policy = policy
        patterns = dict(BUILTIN_PATTERNS) if policy.builtin else {}
        keys: dict[str, str] = {_norm(k): k for k in SECRET_KEYS} if policy.builtin else {}
        for d in policy.detectors:
            if d.pattern:
                patterns[d.name] = d.pattern
            keys.update({_norm(k): d.name for k in d.keys})
        self.names = list(patterns)
        self.pattern = (
            re.compile("|".join(f"(?P<d{i}>{p})" for i, p in enumerate(patterns.values())))
            if patterns
            else None
        )
        self.keys = keys
        # The built-in detectors alone: a string too short for any of them, or holding
        # none of their literals, is not run through the pattern. A configured pattern
        # may match anything: then every string is.
        own = any(d.pattern for d in policy.detectors)
        self.shortest = 0 if own else BUILTIN_SHORTEST
        self.triggers: tuple[str, ...] | None = (
            None if own else tuple(t for ts in BUILTIN_TRIGGERS.values() for t in ts)
        )
        # Field name -> the detector its name is (``None``: no secret's name).
        self._fields: dict[str, str | None] = {}

    def scan(self, value: Any) -> tuple[Any, list[str]]:
        """``value`` with every match replaced, and the detectors that fired (the
        same object back when none did).

        Raises:
            PermissionDenied: the result is beyond the scanning budget.
        """
        if type(value) is dict and len(value) <= _FLAT_MEMBERS:
            # Most channel messages and many results are an object the walk would
            # find nothing in without looking further: every member's name known not
            # to be a secret's and too short for a detector, every value a number, a
            # boolean, null or text too short for one. Given back as it is, neither
            # walked nor copied (the walk builds a new object). A name not yet known
            # goes to the walk, which learns it.
            fields, shortest = self._fields, self.shortest
            for k, v in value.items():
                if (
                    type(k) is not str
                    or len(k) >= shortest
                    or fields.get(k, k) is not None
                    or (type(v) not in _PLAIN and (type(v) is not str or len(v) >= shortest))
                ):
                    break
            else:
                return value, []
        fired: list[str] = []
        budget = [MAX_NODES]
        out = self._walk(value, fired, budget, 0)
        return (out, fired) if fired else (value, fired)

    def _walk(self, value: Any, fired: list[str], budget: list[int], depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise _unchecked()
        if isinstance(value, str):
            return self._text(value, fired)
        if isinstance(value, dict):
            out = {}
            shortest = self.shortest
            for k, v in value.items():
                name = self._field(k)
                # A key is text too (a secret can be a key): scanned like a value.
                key = self._text(k, fired) if isinstance(k, str) and len(k) >= shortest else k
                # (A boolean holds no secret: ``has_password: true`` stays.)
                if name is not None and type(v) is not bool and v not in (None, "", [], {}):
                    fired.append(name)
                    out[key] = self.policy.replacement.format(name=name)
                elif type(v) in _PLAIN:  # (``_walk`` of a number, written out: no call)
                    budget[0] -= 1
                    if budget[0] < 0 or depth >= MAX_DEPTH:
                        raise _unchecked()
                    out[key] = v
                else:
                    out[key] = self._walk(v, fired, budget, depth + 1)
            return out
        if isinstance(value, list):
            return [self._walk(v, fired, budget, depth + 1) for v in value]
        return value

    def _field(self, key: object) -> str | None:
        """The detector a field named ``key`` is (a detector's ``keys``; with the
        built-in detectors, ``SECRET_KEYS`` and ``secret_field``), else ``None``;
        remembered per name (bounded)."""
        if type(key) is not str or len(key) > MAX_NAME_CHARS:
            return self._name_of(str(key))
        fields = self._fields
        if key in fields:
            return fields[key]
        name = fields[key] = self._name_of(key)
        if len(fields) > MAX_NAMES:
            fields.clear()
        return name

    def _name_of(self, key: str) -> str | None:
        name = self.keys.get(_norm(key))
        if name is None and self.policy.builtin:
            # A long name by its end (what a secret's name ends with is there).
            name = secret_field(key[-MAX_NAME_CHARS:])
        return name

    def _text(self, text: str, fired: list[str]) -> str:
        pattern = self.pattern
        if pattern is None or len(text) < self.shortest:
            return text
        head, tail = (text, "") if len(text) <= MAX_SCAN else (text[:MAX_SCAN], text[MAX_SCAN:])
        if tail:  # what is not scanned does not leave
            fired.append("unscanned")
            tail = self.policy.replacement.format(name="unscanned")
        if (triggers := self.triggers) is not None and not _holds_any(head, triggers):
            return head + tail if tail else text

        def replace(match: re.Match[str]) -> str:
            name = self.names[int(str(match.lastgroup)[1:])]
            fired.append(name)
            return self.policy.replacement.format(name=name)

        return pattern.sub(replace, head) + tail


#: Values with nothing to scan in them.
_PLAIN = frozenset({int, float, bool, type(None)})
#: The most members ``Scanner.scan`` looks through before leaving an object to the walk.
_FLAT_MEMBERS = 64


def _unchecked() -> PermissionDenied:
    return PermissionDenied(
        "the result is too large or too deep to be checked for sensitive data",
        reason="RESULT_NOT_CHECKED",
    )


def _holds_any(text: str, literals: tuple[str, ...]) -> bool:
    for literal in literals:  # noqa: SIM110 - a loop: no generator made per string
        if literal in text:
            return True
    return False


#: A name's parts: words in any case and camelCase humps, each with the digits that
#: follow it (``b64``, ``password2``), and numbers (``_``, ``-``, ``.``, spaces and
#: anything else between them dropped).
_PARTS = re.compile(r"[A-Z]+(?![a-z])[0-9]*|[A-Z]?[a-z]+[0-9]*|[0-9]+")
_DIGITS = "0123456789"


def secret_field(key: str) -> str | None:
    """The built-in secret a field named ``key`` holds by its name, else ``None``: it
    ends like one of ``SECRET_ENDINGS`` (not ``NOT_SECRET_ENDINGS``), or has one of
    ``SECRET_WORDS`` among its parts and one of ``VALUE_WORDS`` last (numbers at the
    end aside: ``password2``). Compared in lower case, whatever separates its parts."""
    parts: list[str] = [p.lower() for p in _PARTS.findall(key)]
    joined = "".join(parts).rstrip(_DIGITS)
    if not joined or joined.endswith(NOT_SECRET_ENDINGS):
        return None
    for ending, name in SECRET_ENDINGS.items():
        if joined.endswith(ending):
            return name
    if len(parts) > 1 and (parts[-1] in VALUE_WORDS or parts[-1].rstrip(_DIGITS) in VALUE_WORDS):
        for part in parts[:-1]:
            if (word := part.rstrip(_DIGITS)) in SECRET_WORDS:
                return word
    return None


def _norm(key: str) -> str:
    """A field name as compared: lower case, no ``_`` or ``-`` (``access_token``,
    a protobuf JSON view's ``accessToken`` and ``Access-Token`` are one name)."""
    return key.lower().replace("_", "").replace("-", "")


Metadata = tuple[tuple[str, str | bytes], ...]


def scrub_metadata(scanner: Scanner, pairs: Metadata) -> tuple[Metadata, list[str]]:
    """gRPC metadata (a servicer's trailers) with what the detectors find taken out,
    and the detectors that fired. Each pair is seen as an object of one field, so a
    secret's name (``x-api-key``) is caught as a field's is. A text value is redacted;
    a binary one (``-bin``: a rich status among them) is read as UTF-8 and, if
    anything fires in it, dropped -- a replacement inside would corrupt it -- as is a
    pair whose name holds a match, or a value past the scanning budget (fail closed)."""
    kept: list[tuple[str, str | bytes]] = []
    fired: list[str] = []
    for key, value in pairs:
        text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
        try:
            seen, more = scanner.scan({key: text})
        except AralError:
            seen, more = None, ["unscanned"]
        if not more:
            kept.append((key, value))
            continue
        fired += more
        # (a binary value, a key with a match in it, a value past the budget: dropped)
        if seen is not None and key in seen and isinstance(value, str):
            kept.append((key, seen[key]))
    return tuple(kept), fired


class SensitiveData:
    """A response check (``service.stages.ResponseCheck``): redact, escalate,
    block or pass a result with sensitive data, by the caller's tier."""

    def __init__(
        self, policy: Callable[[], PostPolicy | None], tier_of: Callable[[Action], int]
    ) -> None:
        self._policy = policy
        self._tier_of = tier_of
        self._scanner: Scanner | None = None

    def _scanner_for(self, policy: PostPolicy) -> Scanner:
        scanner = self._scanner
        if scanner is None or scanner.policy is not policy:
            scanner = self._scanner = Scanner(policy)
        return scanner

    def check(self, ctx: CallContext, action: Action, result: Any) -> Any:
        policy = self._policy()
        if policy is None:
            return result
        redacted, fired = self._scanner_for(policy).scan(result)
        if not fired:
            return result
        names = sorted(set(fired))
        what = self._decide(policy, action)
        if what == "ok":
            return result
        if what == "block":
            raise PermissionDenied(
                f"the result of {action.capability} holds sensitive data ({', '.join(names)})",
                reason="SENSITIVE_DATA",
                details={"detectors": names},
            )
        ctx.flags.extend(f"post.redacted:{n}" for n in names)
        if what == "escalate":
            reason = f"sensitive data in the result ({', '.join(names)})"
            raise Escalation(
                Verdict(Decision.ESCALATE, reasons=(reason,), rule_ids=("post.sensitive",)),
                redacted,
            )
        return redacted

    def scrub(self, ctx: CallContext, error: AralError, action: Callable[[], Action]) -> None:
        """Redact ``error`` in place before the pipeline records and raises it (every
        door encodes that one): its message -- a servicer's status details are its
        message --, its details and its reason, by the same detectors as a result.
        An error cannot wait for an approver: redacted whatever the caller's tier
        (``action()``'s, asked only when something fired) says, unless ``ok``. A
        reason holding a secret becomes its class's default (reasons are UPPER_SNAKE);
        flags ``post.redacted:*``."""
        policy = self._policy()
        if policy is None:
            return
        scanner = self._scanner_for(policy)
        message, fired = scanner.scan(error.message)
        in_reason = scanner.scan(error.reason)[1]
        details = error.details
        if details:
            try:
                details, more = scanner.scan(details)
            except AralError:  # past the budget (details are bounded): dropped, not passed
                details, more = {}, ["unscanned"]
            fired += more
        trailers: Metadata | None = None
        if error.trailing_metadata:  # (a servicer's own status: its trailers go with it)
            trailers, more = scrub_metadata(scanner, error.trailing_metadata)
            fired += more
        if not (fired or in_reason) or self._decide(policy, action()) == "ok":
            return
        if trailers is not None:
            error.trailing_metadata = trailers
        error.message = bounded_text(message, MAX_MESSAGE_BYTES)
        error.args = (error.message,)
        error.details = bounded_details(details) if details else {}
        if in_reason:
            error.reason = type(error).default_reason
        ctx.flags.extend(f"post.redacted:{n}" for n in sorted({*fired, *in_reason}))

    def trailers(self, ctx: CallContext, action: Callable[[], Action]) -> None:
        """Redact the trailing metadata a servicer set (``ctx.trailers``) before its
        call ends (``scrub_metadata``): like an error, it cannot wait for an approver,
        so it is redacted whatever the caller's tier says, unless ``ok``."""
        policy = self._policy()
        if policy is None:
            return
        trailers, fired = scrub_metadata(self._scanner_for(policy), ctx.trailers)
        if fired and self._decide(policy, action()) != "ok":
            ctx.trailers = trailers
            ctx.flags.extend(f"post.redacted:{n}" for n in sorted(set(fired)))

    def _decide(self, policy: PostPolicy, action: Action) -> str:
        return policy.action_for(self._tier_of(action))


class MessageFilter:
    """The filtering point: a channel message's data (sent or received) redacted
    by the same detectors. A one-way message in an ordered channel cannot wait for
    an approver, and is redacted whatever the tier. Made for one policy's ``[post]``
    (the node installs a new one when the policy reloads: no look-up a message)."""

    __slots__ = ("scan",)

    def __init__(self, policy: PostPolicy) -> None:
        self.scan = Scanner(policy).scan

    def __call__(self, ctx: CallContext, action: Action, data: Any) -> Any:
        redacted, fired = self.scan(data)
        if fired:
            ctx.flags.extend(f"filter.redacted:{n}" for n in sorted(set(fired)))
        return redacted


class OutputSchema:
    """A response check: a result that breaks its capability's declared output
    schema is flagged (``on_flag``: trust debt) or blocked.

    A result is taken as valid when jsonschema-rs says so, else as ``jsonschema``
    says. Where the two read a schema differently, the one that accepts decides:
    a ``pattern`` is ECMA 262 to jsonschema-rs (as JSON Schema says) and Python's
    ``re`` to ``jsonschema``; a float's ``multipleOf`` is exact to it (``0.3`` is a
    multiple of ``0.1``); a tuple is an array, as it goes on the wire. It runs after
    ``SensitiveData`` (``_governance``), whose scan refuses a result deeper than
    ``MAX_DEPTH`` or larger than ``MAX_NODES``: jsonschema-rs, whose recursion is
    native (a result 50,000 deep under a recursive schema crashes it), never gets
    one."""

    def __init__(
        self,
        policy: Callable[[], PostPolicy | None],
        schema_of: Callable[[str], Mapping[str, Any] | None],
        on_flag: Callable[[Action, float], object],
    ) -> None:
        self._policy = policy
        self._schema_of = schema_of
        self._on_flag = on_flag
        self._validators: dict[str, tuple[Any, Any] | None] = {}

    def check(self, ctx: CallContext, action: Action, result: Any) -> Any:
        policy = self._policy()
        if policy is None or policy.schema_mismatch == "ok":
            return result
        checkers = self._validator(action.capability)
        if checkers is None:
            return result
        fast, full = checkers
        if fast is not None and _fast_valid(fast, result):
            return result
        error = jsonschema.exceptions.best_match(full.iter_errors(result))
        if error is None:
            return result
        if policy.schema_mismatch == "block":
            raise InternalError(
                f"the result of {action.capability} does not match its declared output "
                f"schema: {error.message[:200]}",
                reason="RESULT_SCHEMA_MISMATCH",
            )
        ctx.flags.append("post.schema_mismatch")
        self._on_flag(action, policy.flag_weight)  # (and the peer that named it, if one did)
        return result

    def _validator(self, capability: str) -> tuple[Any, Any] | None:
        """The capability's (fast, full) validators; ``None``: no declared schema."""
        if capability in self._validators:
            return self._validators[capability]
        schema = self._schema_of(capability)
        checkers = None
        if schema:
            cls = jsonschema.validators.validator_for(schema)
            checkers = (_fast_validator(schema), cls(dict(schema)))
        if len(self._validators) >= 4096:
            self._validators.clear()
        self._validators[capability] = checkers
        return checkers


def _offline(uri: str) -> Any:
    raise ValueError(f"{uri!r}: an output schema is checked with what it holds, nothing fetched")


def _fast_validator(schema: Mapping[str, Any]) -> Any:
    """jsonschema-rs's validator of ``schema`` (compiled; a result checked in well
    under a microsecond where ``jsonschema`` takes 4 to 20), or ``None`` if it will
    not build one (a reference to another document, say): then ``jsonschema`` alone
    checks. Formats are not asserted, as ``jsonschema`` does not without a checker;
    nothing is fetched for a ``$ref``."""
    try:
        return jsonschema_rs.validator_for(dict(schema), validate_formats=False, retriever=_offline)
    except Exception:  # any schema it cannot build: the full check decides
        return None


def _fast_valid(fast: Any, result: Any) -> bool:
    """Whether the fast validator finds ``result`` valid. Only its yes is taken: a
    no, or a value it cannot read, goes to ``jsonschema``, which decides and says
    why (the error a block or a flag reports is always ``jsonschema``'s)."""
    try:
        return fast.is_valid(result) is True
    except Exception:  # a value it cannot convert: the full check decides
        return False


__all__ = [
    "BUILTIN_PATTERNS", "Detector", "MessageFilter", "OutputSchema", "PostPolicy", "Scanner",
    "SensitiveData", "secret_field",
]  # fmt: skip
