"""A hostile or careless policy file: every wrong shape, every absurd number is refused
with its line (``PolicyError``), never another exception; a reload of such a file
keeps the policy in force and the watch goes on; stopping the node always closes the
audit log; a condition may use a list macro's own loop variable."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aralnode import Node
from aralnode import _policy as policy_watch
from aralnode.core.clock import FixedClock
from aralnode.core.errors import AralError
from aralnode.core.governance import Action, Decision, Direction
from aralnode.policy import load as load_mod
from aralnode.policy.engine import Memory, PolicyEvaluator
from aralnode.policy.expr import compile_condition, loop_variables
from aralnode.policy.holder import PolicyHolder
from aralnode.policy.load import PolicyError, parse_policy

ROOT = Path(__file__).resolve().parent.parent

BLOCK_X = 'version = 1\n[[tripwires]]\nid = "a"\ncapabilities = ["x"]\naction = "block"\n'
NUDGE_X = 'version = 1\n[[tripwires]]\nid = "a"\ncapabilities = ["x"]\naction = "nudge"\n'


def act(
    capability: str = "x", *, params: Any = None, roles: frozenset[str] = frozenset()
) -> Action:
    return Action(
        Direction.INVOKE,
        capability,
        "alice",
        "grpc",
        "unspecified",
        params if params is not None else {},
        "",
        principal="alice",
        kind="user",
        roles=roles,
    )


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` and move the file's mtime on, so a reload sees it changed
    whatever the file system's clock granularity (and the size)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


# -- wrong shapes -----------------------------------------------------------------------

# (text, line, words): each value of a shape the loader does not take.
WRONG_SHAPES = [
    pytest.param(
        "version = 1\n[categories]\nbelow_tier = []\n", 3, "below_tier: a decision", id="below"
    ),
    pytest.param(
        'version = 1\n[capabilities]\n"db.*" = ["database"]\n', 3, "unknown category", id="cap"
    ),
    pytest.param(
        'version = 1\n[[tripwires]]\nid = "a"\ndirections = [["invoke"]]\n',
        4,
        "directions: must be a list of",
        id="directions",
    ),
    pytest.param(
        'version = 1\n[[tripwires]]\nid = "a"\naction = {"0-5" = ["block"]}\n',
        4,
        "a decision is one of",
        id="tier-action",
    ),
    pytest.param(
        "version = 1\n[collusion]\nrapid_exchange = { messages = 3, action = [] }\n",
        3,
        "rapid_exchange.action: a decision",
        id="collusion-action-list",
    ),
    pytest.param(
        "version = 1\n[collusion]\nrapid_exchange = { messages = 3, action = {} }\n",
        3,
        "rapid_exchange.action: a decision",
        id="collusion-action-table",
    ),
    pytest.param(
        "version = 1\n[collusion]\ndata_aggregation = { principals = 3, categories = [[1]] }\n",
        3,
        "categories: must be a list of",
        id="collusion-categories",
    ),
    pytest.param(
        'version = 1\n[post]\nsensitive = { "0-5" = ["redact"] }\n', 3, "one of", id="post-action"
    ),
    pytest.param("version = 1\n[post]\nschema_mismatch = {}\n", 3, "one of", id="post-mismatch"),
    pytest.param('version = 1\n[tiers]\ndefault = "ACL-\u00b2"\n', 3, "a tier is", id="tier-digit"),
    pytest.param("version = true\n", 1, "must be 1", id="version-bool"),
]


@pytest.mark.parametrize(("text", "line", "words"), WRONG_SHAPES)
def test_a_value_of_the_wrong_shape_is_refused_with_its_line(
    text: str, line: int, words: str
) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.toml")
    assert str(err.value).startswith(f"p.toml:{line}:"), err.value
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("version: 1\ncategories:\n  below_tier: []\n", 3, id="below"),
        pytest.param("version: 1\ncapabilities:\n  x: !!set {a, b}\n", 3, id="set"),
        pytest.param("version: 1\ntripwires:\n  - id: a\n    directions: [{}]\n", 4, id="dir"),
    ],
)
def test_a_yaml_value_of_the_wrong_shape_is_refused_with_its_line(text: str, line: int) -> None:
    with pytest.raises(PolicyError, match=rf"^p\.yaml:{line}:"):
        parse_policy(text, "p.yaml", yaml_format=True)


def test_whatever_else_goes_wrong_reading_a_file_refuses_it_naming_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deep = "version = 1\nx = " + "[" * 5000 + "]" * 5000 + "\n"  # deeper than the parser goes
    with pytest.raises(PolicyError, match=r"^deep\.toml:\d+: the policy cannot be read"):
        parse_policy(deep, "deep.toml")

    def broken(*_: object) -> None:
        raise TypeError("unhashable type: 'list'")  # a check the loader never foresaw

    monkeypatch.setattr(load_mod, "_capabilities", broken)
    with pytest.raises(PolicyError) as err:
        parse_policy('version = 1\n[capabilities]\n"a" = "database"\n', "p.toml")
    assert str(err.value).startswith("p.toml:")
    assert "TypeError: unhashable type: 'list'" in str(err.value)


@pytest.mark.parametrize(
    "replacement",
    ["{0}", "{other}", "{name:>99999999}", "{name!r}", "{name.upper}", "{", "}"],
)
def test_a_replacement_formats_with_name_only(replacement: str) -> None:
    with pytest.raises(PolicyError, match=r"^p\.toml:3: post\.replacement"):
        parse_policy(f"version = 1\n[post]\nreplacement = {replacement!r}\n", "p.toml")
    post = parse_policy("version = 1\n[post]\nreplacement = '{{{name}}}'\n").post
    assert post is not None
    assert post.replacement.format(name="ssn") == "{ssn}"


def test_the_cli_says_why_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("version = 1\n[categories]\nbelow_tier = []\n")
    run = subprocess.run(
        [sys.executable, "-m", "aralnode.cli", "policy", "check", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"{path}:3: categories.below_tier: a decision is one of" in run.stderr
    assert "Traceback" not in run.stderr


# -- numbers ----------------------------------------------------------------------------

NUMBERS = [
    pytest.param("escalation", "timeout_seconds", id="timeout"),
    pytest.param("trust_debt", "half_life_seconds", id="half-life"),
    pytest.param("trust_debt", "flag_weight", id="flag-weight"),
]


@pytest.mark.parametrize(("table", "key"), NUMBERS)
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "+nan", "1e300", "-1", "true", '"5"'])
def test_a_number_is_finite_and_sane(table: str, key: str, value: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(f"version = 1\n[{table}]\n{key} = {value}\n", "p.toml")
    assert str(err.value).startswith(f"p.toml:3: {table}.{key}: must be a finite number"), err.value


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(
            'version = 1\n[[tripwires]]\nid = "a"\nflag = true\ndebt = inf\n', 5, "finite",
            id="debt",
        ),
        pytest.param(
            "version = 1\n[collusion]\nrapid_exchange = { messages = 3, window_seconds = nan }\n",
            3, "finite", id="window",
        ),
        pytest.param(
            "version = 1\n[escalation]\ntimeout_seconds = 31536001\n", 3, "0..31536000",
            id="over-a-year",
        ),
        pytest.param(
            "version = 1\n[escalation]\nmax_pending = 9223372036854775807\n", 3,
            "1..1000000000", id="count",
        ),
        pytest.param(
            "version = 1\n[trust_debt]\nflag_weight = 1000000.5\n", 3, "0..1000000", id="weight",
        ),
    ],
)  # fmt: skip
def test_absurd_numbers_are_refused_with_their_line(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "p.toml")
    assert str(err.value).startswith(f"p.toml:{line}:"), err.value
    assert words in str(err.value)


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf", "1000000000000000000000000000000"])
def test_yaml_numbers_are_finite_and_sane_too(value: str) -> None:
    with pytest.raises(PolicyError, match=r"^p\.yaml:3: escalation\.timeout_seconds: must be"):
        parse_policy(
            f"version: 1\nescalation:\n  timeout_seconds: {value}\n", "p.yaml", yaml_format=True
        )


def test_the_largest_numbers_taken_keep_trust_debt_finite() -> None:
    policy = parse_policy(
        "version = 1\n[escalation]\ntimeout_seconds = 31536000\n"
        "[trust_debt]\nflag_weight = 1000000\nhalf_life_seconds = 31536000\n"
        '[[tripwires]]\nid = "f"\ncapabilities = ["f"]\nflag = true\n'
        '[[tripwires]]\nid = "owes"\nwhen = "trust_debt > 1.0"\naction = "block"\n'
    )
    assert policy.escalation.timeout_seconds == 31_536_000.0
    clock = FixedClock()
    engine = PolicyEvaluator(policy, Memory(clock.monotonic, policy))
    assert engine.evaluate(act("f")).decision is Decision.OK  # flagged: 1e6 owed
    assert engine.evaluate(act("y")).decision is Decision.BLOCK
    clock.advance(50 * 31_536_000)  # fifty half-lives: 1e6 / 2**50, well under 1
    assert engine.evaluate(act("y")).decision is Decision.OK
    assert 0.0 < engine.memory.ledger.debt("alice") < 1.0


# -- reload -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "words"), WRONG_SHAPES)
def test_a_reload_of_a_wrong_shape_keeps_the_old_policy_and_a_later_good_file_loads(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = tmp_path / "policy.toml"
    rewrite(path, BLOCK_X)
    holder = PolicyHolder(path, FixedClock().monotonic)
    rewrite(path, text)
    assert not holder.check_now()
    assert holder.last_error.startswith(f"{path}:{line}:"), holder.last_error
    assert words in holder.last_error
    assert holder.counters["governance.policy_rejected"] == 1
    assert holder.evaluate(act("x")).decision is Decision.BLOCK  # the old one stays
    rewrite(path, NUDGE_X)
    assert holder.check_now()
    assert holder.last_error == ""
    assert holder.evaluate(act("x")).decision is Decision.NUDGE
    assert holder.counters["governance.policy_reloaded"] == 1


def test_a_reload_that_fails_unforeseen_keeps_the_old_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.toml"
    rewrite(path, BLOCK_X)
    holder = PolicyHolder(path, FixedClock().monotonic)

    def boom(*_: object) -> None:
        raise RuntimeError("the engine could not take it")

    monkeypatch.setattr("aralnode.policy.holder.PolicyEvaluator", boom)
    rewrite(path, NUDGE_X)
    assert not holder.check_now()  # no exception out of the reload
    assert holder.counters["governance.policy_rejected"] == 1
    assert "the engine could not take it" in holder.last_error
    assert holder.evaluate(act("x")).decision is Decision.BLOCK


async def test_the_watch_goes_on_after_a_reload_raises() -> None:
    class Flaky:
        path = Path("flaky.toml")

        def __init__(self) -> None:
            self.calls = 0
            self.again = asyncio.Event()

        def check_now(self) -> bool:
            self.calls += 1
            if self.calls == 1:
                raise TypeError("unhashable type: 'list'")
            self.again.set()
            return False

    flaky = Flaky()
    task = asyncio.ensure_future(policy_watch.watch_policy(flaky, 0))  # type: ignore[arg-type]
    again = asyncio.ensure_future(flaky.again.wait())
    await asyncio.wait({task, again}, return_when=asyncio.FIRST_COMPLETED)
    assert again.done()  # called again after the first call raised ...
    assert not task.done()  # ... and still watching
    await policy_watch.stop_watch(task)
    assert task.cancelled()
    assert flaky.calls >= 2


async def test_stopping_a_watch_that_had_died_does_not_raise() -> None:
    async def died() -> None:
        raise TypeError("unhashable type: 'list'")

    task = asyncio.ensure_future(died())
    await asyncio.wait({task})
    await policy_watch.stop_watch(task)  # logged, not raised
    assert isinstance(task.exception(), TypeError)


async def test_a_node_keeps_its_policy_over_a_bad_file_and_stops_cleanly(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = tmp_path / "policy.toml"
    rewrite(path, 'version = 1\n[[tripwires]]\nid = "no"\ncapabilities = ["demo.echo"]\n'
                  'action = "block"\n')  # fmt: skip
    node = make_node("kept", policy_file=path, audit=True, policy_reload_seconds=0)
    async with node:
        holder = node.governing.policy
        assert holder is not None
        with pytest.raises(AralError) as err:
            await node.invoke("demo.echo", {"text": "x"})
        assert err.value.reason == "GOVERNANCE_BLOCK"
        rewrite(path, "version = 1\n[categories]\nbelow_tier = []\n")
        assert not holder.check_now()
        assert node.pipeline.counters["governance.policy_rejected"] == 1
        with pytest.raises(AralError):
            await node.invoke("demo.echo", {"text": "x"})  # still blocked
        rewrite(path, "version = 1\n")
        assert holder.check_now()
        assert await node.invoke("demo.echo", {"text": "x"}) is not None
    assert node.governing.audit_log is None  # closed
    again = make_node("kept", policy_file=path, audit=True)  # the data dir was released
    async with again:
        assert await again.invoke("demo.echo", {"text": "y"}) is not None


async def test_a_node_whose_watch_died_still_closes_its_audit_log(
    make_node: Callable[..., Node], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def died(*_: object) -> None:
        raise TypeError("unhashable type: 'list'")

    monkeypatch.setattr(policy_watch, "watch_policy", died)
    path = tmp_path / "policy.toml"
    rewrite(path, "version = 1\n")
    node = make_node("dying", policy_file=path, audit=True)
    async with node:
        watch = node.governing._watch
        assert watch is not None
        await asyncio.wait({watch})
        assert isinstance(watch.exception(), TypeError)
    assert node.governing.audit_log is None
    again = make_node("dying", policy_file=path, audit=True)  # the data dir was released
    async with again:
        assert again.governing.audit_log is not None


# -- loop variables ---------------------------------------------------------------------


def test_a_condition_may_use_a_macros_loop_variable() -> None:
    policy = parse_policy(
        'version = 1\n[[tripwires]]\nid = "one"\ncapabilities = ["x"]\n'
        'when = "has(params.items) && params.items.exists(x, x == 1)"\naction = "block"\n'
        '[[tripwires]]\nid = "admin"\ncapabilities = ["y"]\n'
        'when = "roles.exists(r, r == \'admin\')"\naction = "block"\n'
        '[[tripwires]]\nid = "nested"\ncapabilities = ["z"]\n'
        'when = "has(params.a) && params.a.all(i, params.a.exists_one(j, i == j))"\n'
        'action = "block"\n'
    )
    engine = PolicyEvaluator(policy, Memory(FixedClock().monotonic, policy))
    assert engine.evaluate(act("x", params={"items": [2, 1]})).decision is Decision.BLOCK
    assert engine.evaluate(act("x", params={"items": [2]})).decision is Decision.OK
    assert engine.evaluate(act("y", roles=frozenset({"admin"}))).decision is Decision.BLOCK
    assert engine.evaluate(act("y", roles=frozenset({"ops"}))).decision is Decision.OK
    assert engine.evaluate(act("z", params={"a": [1, 2]})).decision is Decision.BLOCK
    assert engine.evaluate(act("z", params={"a": [1, 1]})).decision is Decision.OK
    assert compile_condition("params.items.exists(x, x == 1)").variables == {"params"}
    assert compile_condition("roles.map(r, r.size()).size() > 0").variables == {"roles"}


@pytest.mark.parametrize(
    "when",
    [
        pytest.param("nosuch > 1", id="plain"),
        pytest.param("[1].exists(x, x == 1) || x > 2", id="outside-its-macro"),
        pytest.param("x.exists(x, x == 1)", id="the-macros-receiver"),
        pytest.param("[1].all(x, true) && [2].exists(y, x == y)", id="after-its-macro"),
        pytest.param('"[1].exists(x, " + x == "a"', id="bound-only-in-a-string"),
        pytest.param("[1].exists(x, x == 1) && {x: 1}.size() == 1", id="a-map-key"),
    ],
)
def test_a_name_read_outside_a_binding_is_still_unknown(when: str) -> None:
    with pytest.raises(PolicyError, match=r"^p\.toml:3: tripwires\[0\]\.when: .*unknown variable"):
        parse_policy(f'version = 1\n[[tripwires]]\nwhen = {when!r}\nid = "a"\n', "p.toml")


def test_which_names_are_loop_variables() -> None:
    assert loop_variables("params.ids.all(peer, params.ids.exists_one(d, d == peer))") == {
        "peer",
        "d",
    }
    assert loop_variables("[1].exists(x, x == 1) && params.x > 1") == {"x"}  # a field
    assert loop_variables("[1].exists(x, x == 1) // x\n && true") == {"x"}  # a comment
    assert loop_variables("r'[1].exists(x, \\' + x == 'a'") == set()  # a raw string
    assert loop_variables("peer == 'a' && roles.exists(peer, peer == 'b')") == set()
