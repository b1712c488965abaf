"""Post-execution checks: sensitive data redacted (on every door), escalated or
blocked by the caller's tier; the scanning budget; results that break their
declared output schema flagged or blocked."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode import Node
from aralnode.core.context import CallContext
from aralnode.core.errors import AralError
from aralnode.core.governance import Action
from aralnode.policy.post import (
    BUILTIN_PATTERNS,
    BUILTIN_SHORTEST,
    BUILTIN_TRIGGERS,
    MAX_DEPTH,
    MAX_NAME_CHARS,
    MAX_NAMES,
    MAX_NODES,
    MAX_SCAN,
    Detector,
    OutputSchema,
    PostPolicy,
    Scanner,
    secret_field,
)
from tests.channel_helpers import FAST, linked
from tests.test_parity import open_doors

AWS = "AKIAIOSFODNN7EXAMPLE"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIBVQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"


def test_the_builtin_detectors_and_configured_ones() -> None:
    scanner = Scanner(
        PostPolicy(detectors=(Detector("customer", r"CUST-\d{8}", frozenset({"ssn"})),))
    )
    value = {
        "note": f"key {AWS} and {JWT}",
        "pem": PEM,
        "password": "hunter2",
        "nested": [{"Authorization": "Bearer abcdefghijklmnopqrstuvwxyz"}, "id CUST-12345678"],
        "ssn": "078-05-1120",
        "fine": "nothing here",
        "n": 3,
    }
    out, fired = scanner.scan(value)
    assert set(fired) == {
        "aws_access_key", "jwt", "private_key", "password", "authorization", "customer",
    }  # fmt: skip
    assert out["note"] == "key [REDACTED:aws_access_key] and [REDACTED:jwt]"
    assert out["pem"] == "[REDACTED:private_key]"
    assert out["password"] == "[REDACTED:password]"
    assert out["nested"] == [
        {"Authorization": "[REDACTED:authorization]"},
        "id [REDACTED:customer]",
    ]
    assert out["ssn"] == "[REDACTED:customer]"
    assert (out["fine"], out["n"]) == ("nothing here", 3)
    # A protobuf result's JSON view names fields in camelCase; a secret may be a key.
    camel, fired = scanner.scan({"accessToken": "abc", "clientSecret": "x", AWS: 1})
    assert camel == {
        "accessToken": "[REDACTED:access_token]",
        "clientSecret": "[REDACTED:client_secret]",
        "[REDACTED:aws_access_key]": 1,
    }
    clean = {"a": ["b", {"c": 1}]}
    assert scanner.scan(clean) == (clean, [])  # the same object: nothing to redact


# A field is a secret's by the parts of its name (docs/governance.md, post-execution
# checks), not only when it is exactly one of SECRET_KEYS.
SECRET_NAMES = {
    # The attack report's three (F5), then common forms.
    "db_password": "password", "secretKey": "secret_key", "aws_secret_access_key": "secret_key",
    "AWS_SECRET_ACCESS_KEY": "secret_key", "SecretAccessKey": "secret_key",
    "dbPassword": "password", "DB-PASSWORD": "password", "user.password": "password",
    "password2": "password", "adminpasswd": "passwd", "ssh_passphrase": "passphrase",
    "client_secret": "client_secret", "webhookSecret": "secret", "app_secrets": "secret",
    "github_token": "token", "idToken": "token", "csrf-token": "token",
    "X-Api-Key": "api_key", "openai_api_key": "api_key", "API Key": "api_key",
    "sshPrivateKey": "private_key", "jwt_signing_key": "signing_key",
    "gcp_credentials": "credentials", "Proxy-Authorization": "authorization",
    "password_hash": "password", "secretValue": "secret", "db_password_b64": "password",
}  # fmt: skip
NOT_SECRET_NAMES = [
    "tokens_used", "token_count", "max_tokens", "input_tokens", "token_type", "token_text",
    "eos_token", "next_page_token", "nextPageToken", "NextToken", "password_hint",
    "password_min_length", "secret_name", "secretary", "secret_key_id", "key", "keys",
    "public_key", "author", "token_note", "passport", "credential_count", "",
]  # fmt: skip


@pytest.mark.parametrize(("name", "detector"), SECRET_NAMES.items())
def test_a_secret_is_known_by_the_parts_of_its_name(name: str, detector: str) -> None:
    scanner = Scanner(PostPolicy())
    assert scanner.scan({name: "s3cr3t-value"}) == (
        {name: f"[REDACTED:{detector}]"},
        [detector],
    )


@pytest.mark.parametrize("name", NOT_SECRET_NAMES)
def test_a_name_that_only_mentions_a_secret_is_none(name: str) -> None:
    value = {name: "plain value", "n": 3}
    assert secret_field(name) is None
    assert Scanner(PostPolicy()).scan(value) == (value, [])


def test_a_boolean_under_a_secrets_name_stays() -> None:
    value = {"has_password": True, "api_key_set": False, "password": True}
    assert Scanner(PostPolicy()).scan(value) == (value, [])


def test_the_rule_is_the_built_in_detectors() -> None:
    """Without them only the configured names count, exactly as written."""
    own = Scanner(PostPolicy(builtin=False, detectors=(Detector("k", keys=frozenset({"pin"})),)))
    value = {"db_password": "x", "pin": "1234", "PIN": "5678", "pin_code": "9"}
    assert own.scan(value) == (
        {"db_password": "x", "pin": "[REDACTED:k]", "PIN": "[REDACTED:k]", "pin_code": "9"},
        ["k", "k"],
    )


def test_an_aws_secret_key_in_text_goes_with_its_name() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    scanner = Scanner(PostPolicy())
    for text in (
        f"aws_secret_access_key = {secret}",
        f'{{"SecretAccessKey": "{secret}"}}',
        f"export AWS_SECRET_ACCESS_KEY={secret}",
    ):
        out, fired = scanner.scan(text)
        assert secret not in out, text
        assert fired == ["aws_secret_key"], text


def test_scanning_is_bounded() -> None:
    scanner = Scanner(PostPolicy())
    huge = "x" * (MAX_SCAN + 10) + AWS  # past the budget: not passed unscanned
    out, fired = scanner.scan(huge)
    assert AWS not in out
    assert fired == ["unscanned"]
    with pytest.raises(AralError) as err:
        scanner.scan(list(range(MAX_NODES + 1)))
    assert err.value.reason == "RESULT_NOT_CHECKED"


def test_the_shortcuts_hold_for_every_builtin_detector() -> None:
    """A string shorter than ``BUILTIN_SHORTEST``, or holding none of the triggers, is
    not run through the pattern: no built-in detector can match it."""
    assert set(BUILTIN_TRIGGERS) == set(BUILTIN_PATTERNS)
    parser = pytest.importorskip("re._parser")
    widths = [parser.parse(p).getwidth()[0] for p in BUILTIN_PATTERNS.values()]
    assert min(widths) == BUILTIN_SHORTEST


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_builtin_match_holds_a_trigger(data: st.DataObject) -> None:
    for name, pattern in BUILTIN_PATTERNS.items():
        text = data.draw(st.from_regex(re.compile(pattern), fullmatch=True), label=name)
        assert len(text) >= BUILTIN_SHORTEST
        assert any(t in text for t in BUILTIN_TRIGGERS[name]), (name, text)


# Pieces of secrets and of their triggers, to build strings around the shortcuts' edges.
_PIECES = [
    AWS, JWT, PEM, "Bearer ", "bearer", "abcdefghijklmnopqrstuvwxyz012345", "ghp_", "gho_",
    "xoxb-", "aral_", "eyJ", "AKIA", "ASIA", "PRIVATE KEY-----", "-----BEGIN ", "-----END ",
    " ", "\n", ".", "_", "-", "x" * 14,
]  # fmt: skip
_TEXT = st.lists(st.sampled_from(_PIECES) | st.text(max_size=12), max_size=8).map("".join)
_VALUES = st.recursive(
    st.none() | st.integers() | st.booleans() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(value=_VALUES)
def test_the_shortcuts_change_no_answer(value: Any) -> None:
    """The scanner answers as one that runs the pattern over every string."""
    fast = Scanner(PostPolicy())
    every = Scanner(PostPolicy())
    every.triggers, every.shortest = None, 0
    answer = every.scan(value)
    assert fast.scan(value) == answer
    assert fast.scan(value) == answer  # again, every member name now known


def test_a_flat_object_with_nothing_to_find_comes_back_as_it_is() -> None:
    """Names known not to be secrets, numbers and short text: the same object back
    (neither copied nor walked); anything else still goes through the walk."""
    scanner = Scanner(PostPolicy())
    message = {"i": 7, "ok": True, "note": "short text", "none": None, "x": 1.5}
    assert scanner.scan(message) == (message, [])  # the names learnt
    again, fired = scanner.scan(message)
    assert again is message
    assert fired == []
    for other in (
        {"i": 7, "password": "hunter2"},  # a secret's name
        {"i": 7, "note": f"got {AWS}"},  # text long enough for a detector
        {"i": 7, "nested": {"password": "hunter2"}},
        {"i": 7, "unknown_name_here": JWT},
    ):
        assert scanner.scan(other) == scanner.scan(dict(other))
        assert scanner.scan(other)[1], other
    assert scanner.scan({"i": [1, 2]}) == ({"i": [1, 2]}, [])


def test_a_configured_pattern_scans_every_string() -> None:
    scanner = Scanner(PostPolicy(detectors=(Detector("pin", r"\b\d{4}\b"),)))
    assert scanner.scan({"p": "pin 1234"}) == ({"p": "pin [REDACTED:pin]"}, ["pin"])
    assert scanner.scan("1234") == ("[REDACTED:pin]", ["pin"])


def test_field_names_are_remembered_within_a_bound() -> None:
    scanner = Scanner(PostPolicy())
    many = {f"field{i}": i for i in range(MAX_NAMES + 10)}
    assert scanner.scan(many) == (many, [])
    assert len(scanner._fields) <= MAX_NAMES + 1
    long_name = "password" + "x" * MAX_NAME_CHARS  # looked up, never kept
    assert scanner.scan({long_name: "v"}) == ({long_name: "v"}, [])
    assert long_name not in scanner._fields
    assert scanner.scan({"password": "x", "Access-Token": "y"}) == (
        {"password": "[REDACTED:password]", "Access-Token": "[REDACTED:access_token]"},
        ["password", "access_token"],
    )


def test_the_depth_bound_holds_for_a_number_as_for_any_value() -> None:
    scanner = Scanner(PostPolicy())

    def nested(depth: int, leaf: Any) -> Any:
        value = leaf
        for _ in range(depth):
            value = {"k": value}
        return value

    for leaf in (1, "text"):
        assert scanner.scan(nested(MAX_DEPTH, leaf))[1] == []  # the leaf at MAX_DEPTH
        with pytest.raises(AralError) as err:
            scanner.scan(nested(MAX_DEPTH + 1, leaf))
        assert err.value.reason == "RESULT_NOT_CHECKED"
    # The budget counts a number in a mapping as one value, as it counts one in a list.
    assert scanner.scan({str(i): i for i in range(MAX_NODES - 1)})[1] == []
    with pytest.raises(AralError) as err:
        scanner.scan({str(i): i for i in range(MAX_NODES)})
    assert err.value.reason == "RESULT_NOT_CHECKED"


def policy(tmp_path: Path, post: str, extra: str = "") -> Path:
    path = tmp_path / "post.toml"
    path.write_text(f"version = 1\n{extra}\n[post]\n{post}\n")
    return path


async def leak() -> dict[str, Any]:
    return {"user": "alice", "key": AWS, "password": "hunter2", "token_note": f"got {JWT}"}


async def test_redaction_applies_on_every_door(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = policy(tmp_path, 'sensitive = "redact"')
    async with open_doors(make_node, policy_file=path) as doors:
        doors.node.capability(id="vault.peek")(leak)
        answers = {d.name: await d.call("vault.peek", {}) for d in doors.all()
                   if d.can_call("vault.peek")}  # fmt: skip
    every = {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a", "local"}
    assert set(answers) == every | {"aral-invoke", "aral-message"}
    expected = {
        "user": "alice",
        "key": "[REDACTED:aws_access_key]",
        "password": "[REDACTED:password]",
        "token_note": "got [REDACTED:jwt]",
    }
    for name, outcome in answers.items():
        assert outcome.ok, (name, outcome)
        assert outcome.value == expected, name


async def test_by_tier_escalate_or_block_and_never_echo_the_secret(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = policy(
        tmp_path,
        'sensitive = { "0-1" = "block", "2-5" = "escalate" }',
        "[escalation]\ntimeout_seconds = 0\n[tiers]\ndefault = 1\nanonymous = 1\n"
        "principals = { trusted = 3 }",
    )
    node = make_node("tiered", policy_file=path)
    node.capability(id="vault.peek")(leak)
    async with node:
        with pytest.raises(AralError) as err:
            await node.invoke("vault.peek", {}, ctx=_ctx("someone"))
        assert (err.value.reason, err.value.status.name) == ("SENSITIVE_DATA", "PERMISSION_DENIED")
        assert AWS not in str(err.value)
        assert AWS not in json.dumps(err.value.details)
        # Tier 3 escalates; this node has no approval queue: refused at once.
        with pytest.raises(AralError) as err:
            await node.invoke("vault.peek", {}, ctx=_ctx("trusted"))
        assert err.value.reason == "GOVERNANCE_ESCALATE"


def _ctx(caller: str) -> CallContext:
    return CallContext(door="local", caller=caller)


async def wrong() -> dict[str, Any]:
    return {"a": "not a number"}


@pytest.mark.parametrize("mismatch", ["flag", "block"])
async def test_a_result_that_breaks_its_schema(
    make_node: Callable[..., Node], tmp_path: Path, mismatch: str
) -> None:
    path = policy(tmp_path, f'schema_mismatch = "{mismatch}"')
    node = make_node("schema", policy_file=path)
    node.capability(id="demo.wrong")(wrong)
    # Its declared result (as a card or a hand-written schema would say) needs a total.
    node.registry.get("demo.wrong").output_schema.update(
        {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
    )
    async with node:
        holder = node.governing.policy
        assert holder is not None
        if mismatch == "block":
            with pytest.raises(AralError) as err:
                await node.invoke("demo.wrong", {}, ctx=_ctx("alice"))
            assert err.value.reason == "RESULT_SCHEMA_MISMATCH"
            return
        ctx = _ctx("alice")
        assert await node.invoke("demo.wrong", {}, ctx=ctx) == {"a": "not a number"}
        assert "post.schema_mismatch" in ctx.flags
        assert holder.memory.ledger.debt("alice") > 0
        assert await node.invoke("demo.add", {"a": 1, "b": 2}, ctx=_ctx("bob")) == 3
        assert holder.memory.ledger.debt("bob") == 0


async def test_the_filter_point_redacts_channel_notifications(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    hub = make_node("filtering", policy_file=policy(tmp_path, 'sensitive = "redact"'), **FAST)
    talker = make_node("talker", demo=False, **FAST)
    async with hub, talker:
        await linked(talker, hub)
        async with hub.subscribe() as sub:
            await talker.notify(hub.node_id, "note", {"text": f"the key is {AWS}", "n": 1})
            message = await asyncio.wait_for(anext(sub), 20)
    assert message.data == {"text": "the key is [REDACTED:aws_access_key]", "n": 1}


async def test_the_filter_point_follows_the_policy_as_it_is_reloaded(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = tmp_path / "reloaded.toml"
    path.write_text("version = 1\n")  # no [post]: messages pass as they are
    hub = make_node("filtering", policy_file=path, **FAST)
    talker = make_node("talker", demo=False, **FAST)
    text = f"the key is {AWS}"
    seen = []
    async with hub, talker:
        await linked(talker, hub)
        holder = hub.governing.policy
        assert holder is not None
        async with hub.subscribe() as sub:
            for post in (
                "",
                '[post]\nsensitive = "redact"\n',
                # A configured pattern: every string is scanned from now on.
                '[post]\n[[post.detectors]]\nname = "pin"\npattern = "\\\\b\\\\d{4}\\\\b"\n',
                "[post]\nmessages = false\n",
            ):
                if post:
                    path.write_text(f"version = 1\n{post}")
                    assert holder.check_now()
                await talker.notify(hub.node_id, "note", {"text": text, "pin": "1234"})
                data = (await asyncio.wait_for(anext(sub), 20)).data
                seen.append((data["text"], data["pin"]))
    redacted = "the key is [REDACTED:aws_access_key]"
    assert seen == [
        (text, "1234"),
        (redacted, "1234"),
        (redacted, "[REDACTED:pin]"),
        (text, "1234"),
    ]


TOTAL = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}


def _schema_check(schema: dict[str, Any], mismatch: str = "flag") -> tuple[OutputSchema, list[str]]:
    flagged: list[str] = []
    check = OutputSchema(
        lambda: PostPolicy(schema_mismatch=mismatch),
        lambda capability: schema,
        lambda action, weight: flagged.append(action.capability),
    )
    return check, flagged


def _action() -> Action:
    return Action("invoke", "demo.sum", "alice", "local")


def test_a_valid_result_is_passed_by_the_compiled_check_alone() -> None:
    check, flagged = _schema_check(TOTAL)
    checkers = check._validator("demo.sum")
    assert checkers is not None
    assert checkers[0] is not None
    # jsonschema is asked only when the compiled check does not say yes.
    check._validators["demo.sum"] = (checkers[0], None)
    ctx = _ctx("alice")
    assert check.check(ctx, _action(), {"total": 3.5}) == {"total": 3.5}
    assert (ctx.flags, flagged) == ([], [])


@pytest.mark.parametrize(
    "result",
    [{"total": "3"}, {"sum": 1}, {"total": 10**30, "x": object()}, {"total": float("nan")}],
    ids=["wrong-type", "missing", "unreadable", "nan"],
)
def test_what_the_compiled_check_refuses_or_cannot_read_jsonschema_decides(result: Any) -> None:
    check, flagged = _schema_check(TOTAL)
    ctx = _ctx("alice")
    check.check(ctx, _action(), result)
    valid = jsonschema_valid(TOTAL, result)
    assert ("post.schema_mismatch" in ctx.flags) is not valid
    assert flagged == ([] if valid else ["demo.sum"])


def jsonschema_valid(schema: dict[str, Any], value: Any) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_an_output_schema_that_names_another_document_fetches_nothing() -> None:
    """A peer's declared schema could point anywhere: neither validator fetches it. The
    compiled one is not built; jsonschema cannot resolve it and the check fails closed."""
    check, _ = _schema_check({"$ref": "http://127.0.0.1:9/elsewhere.json"})
    checkers = check._validator("demo.sum")
    assert checkers is not None
    assert checkers[0] is None
    with pytest.raises(Exception, match="elsewhere"):
        check.check(_ctx("alice"), _action(), {"total": 1})


def test_a_format_is_not_asserted_by_either_check() -> None:
    check, flagged = _schema_check({"type": "string", "format": "email"})
    ctx = _ctx("alice")
    assert check.check(ctx, _action(), "not an address") == "not an address"
    assert (ctx.flags, flagged) == ([], [])


@pytest.mark.parametrize("mismatch", ["flag", "block"])
def test_the_error_a_mismatch_reports_is_jsonschemas(mismatch: str) -> None:
    check, flagged = _schema_check(TOTAL, mismatch)
    ctx = _ctx("alice")
    if mismatch == "block":
        with pytest.raises(AralError, match="'total' is a required property") as err:
            check.check(ctx, _action(), {"sum": 1})
        assert err.value.reason == "RESULT_SCHEMA_MISMATCH"
    else:
        assert check.check(ctx, _action(), {"sum": 1}) == {"sum": 1}
        assert (ctx.flags, flagged) == (["post.schema_mismatch"], ["demo.sum"])


async def deep() -> list[Any]:
    nested: list[Any] = []
    for _ in range(MAX_DEPTH + 8):
        nested = [nested]
    return nested


async def test_a_result_too_deep_to_scan_never_reaches_the_compiled_schema_check(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jsonschema-rs recurses natively (a result 50,000 deep under a recursive schema
    crashes the process): the sensitive-data scan, which runs first, refuses a result
    deeper than it checks, so the compiled check never gets one."""
    node = make_node("deep", policy_file=policy(tmp_path, 'schema_mismatch = "flag"'))
    node.capability(id="demo.deep")(deep)
    recursive = {
        "$ref": "#/$defs/n",
        "$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
    }
    node.registry.get("demo.deep").output_schema.clear()
    node.registry.get("demo.deep").output_schema.update(recursive)
    checked: list[Any] = []
    real = OutputSchema.check

    def spy(self: OutputSchema, ctx: CallContext, action: Action, result: Any) -> Any:
        checked.append(result)
        return real(self, ctx, action, result)

    monkeypatch.setattr(OutputSchema, "check", spy)
    async with node:
        with pytest.raises(AralError) as err:
            await node.invoke("demo.deep", {}, ctx=_ctx("alice"))
    assert err.value.reason == "RESULT_NOT_CHECKED"
    assert checked == []
