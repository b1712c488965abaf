"""What an approver sees of an escalated call's parameters (attack review atk8, F9).

The preview is canonical JSON: members sorted by name (the caller's order does not
matter), each value cut on its own (a long member cannot push another out of
view), strings JSON-escaped and ASCII only (a string cannot pass for other members,
nor reorder the line), a cut marked outside any string, the size bounded."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode.core.context import CallContext
from aralnode.core.governance import Action, Decision, Direction, Verdict
from aralnode.service.approvals import PENDING, PREVIEW_MAX, Approval, ApprovalQueue
from aralnode.service.approvals import _preview as preview_of

# Where a cut value's mark goes: after its closing quote (or its last character
# shown), where a JSON text never has "...".
CUT = re.compile(r"\.\.\.\(\+\d+ chars\)")


def preview(params: Any) -> str:
    return preview_of(Action(Direction.INVOKE, "demo.echo", "alice", "rest", parameters=params))


def test_a_long_member_cannot_push_the_risky_one_out_of_view() -> None:
    """The attack: a first member of 600 spaces that imitates the repr of another."""
    text = "routine status ping', 'times': 1} " + " " * 600
    shown = preview({"text": text, "times": 100})
    # The text is one JSON string, cut, and marked after its closing quote.
    mark = CUT.search(shown)
    assert mark is not None
    assert shown[mark.end() :] == ', "times": 100}'
    head = json.loads(shown[: mark.start()].removeprefix('{"text": '))
    assert head.startswith("routine status ping', 'times': 1}")
    assert text.startswith(head)
    assert mark.group() == f"...(+{len(text) - len(head)} chars)"
    assert len(shown) < 200


def test_the_callers_order_does_not_matter() -> None:
    forward = {"times": 100, "text": "hi", "a": [1, 2]}
    backward = dict(reversed(forward.items()))
    assert preview(forward) == preview(backward) == '{"a": [1, 2], "text": "hi", "times": 100}'


def test_a_string_cannot_imitate_other_members() -> None:
    sly = 'x", "times": 1, "y": "'
    shown = preview({"text": sly, "times": 100})
    assert json.loads(shown) == {"text": sly, "times": 100}  # uncut: the JSON itself
    assert shown.count('"times"') == 1  # the other "times" is inside a string: escaped
    assert '\\"times\\"' in shown


def test_what_could_reorder_or_hide_text_is_escaped() -> None:
    tricky = "pay\u202e001\u200b\u0000\u2028é\U0001f600"
    shown = preview({"note": tricky})
    assert shown.isascii()
    assert shown.isprintable()
    assert json.loads(shown) == {"note": tricky}


def test_every_member_name_shows_up_to_a_bound_then_how_many_more() -> None:
    params = {f"k{i:02d}": "v" * 500 for i in range(20)}
    shown = preview(params)
    for i in range(16):
        assert f'"k{i:02d}": "' in shown
    assert '"k16"' not in shown
    assert shown.endswith(", +4 more}")
    assert len(CUT.findall(shown)) == 16  # each value cut on its own, each marked


def test_nested_values_and_values_that_are_not_json() -> None:
    shown = preview({"b": {"y": {"q": "w" * 500}, "z": list(range(20))}, "c": b"x", "d": 10**5000})
    assert shown.startswith('{"b": {"y": {"q": "www')
    assert '"z": [0, 1, 2, 3, 4, 5, 6, 7, +12 more]' in shown
    assert '"c": <bytes>' in shown
    assert '"d": <int>' in shown  # (too many digits for str(): named, not raised)
    assert preview({"deep": [[[[[1]]]]]}) == '{"deep": [[[+1 more]]]}'
    assert preview([1, "two"]) == '[1, "two"]'
    assert preview(None) == "null"


json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=200)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=12), st.dictionaries(st.text(max_size=60), inner, max_size=12)
    ),
    max_leaves=40,
)


@settings(max_examples=60, deadline=None)
@given(params=st.dictionaries(st.text(max_size=80), json_value, max_size=24))
def test_any_parameters_give_a_bounded_ascii_preview(params: dict[str, Any]) -> None:
    shown = preview(params)
    assert len(shown) <= PREVIEW_MAX
    assert shown.isascii()
    assert shown.isprintable()
    for name in sorted(params)[:16]:  # every member's name (the start of a long one)
        whole = json.dumps(name)
        assert (whole + ": " if len(whole) <= 48 else whole[:8]) in shown
    if len(params) > 16:
        assert shown.endswith(f", +{len(params) - 16} more}}")
    if "+" not in shown and "..." not in shown:  # nothing cut: exactly the JSON
        assert json.loads(shown) == json.loads(json.dumps(params))


def test_the_worst_case_stays_within_the_bound() -> None:
    wide = {"k" * 300 + str(i): {"n" * 300 + str(j): ["\u202e" * 1000] * 20 for j in range(20)}
            for i in range(50)}  # fmt: skip
    assert len(preview(wide)) <= PREVIEW_MAX


async def test_the_queue_shows_the_preview_to_approvers() -> None:
    queue = ApprovalQueue()
    seen: asyncio.Future[Approval] = asyncio.get_running_loop().create_future()

    def heard(event: str, entry: Approval) -> None:
        if event == PENDING and not seen.done():
            seen.set_result(entry)

    queue.on_event(heard)
    action = Action(
        Direction.INVOKE, "demo.echo", "alice", "rest", parameters={"times": 100, "text": "x" * 900}
    )
    verdict = Verdict(Decision.ESCALATE, reasons=("many",))
    task = asyncio.ensure_future(
        queue.wait(CallContext(door="rest", caller="alice"), action, verdict)
    )
    try:
        entry = await asyncio.wait_for(seen, 10)
        assert entry.preview.startswith('{"text": "xxx')
        assert entry.preview.endswith('chars), "times": 100}')
        assert entry.as_dict()["preview"] == entry.preview
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
