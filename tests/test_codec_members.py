"""A channel payload (``codec.decode``) with a member twice in one object is refused,
as the doors refuse such a body (``DUPLICATE_PARAMETER``): the fast parser would keep
the last silently, and another parser of the same signed bytes may keep the first.

``decode`` settles most payloads without a second parse (it counts where members end
in the text); the property test holds it to the json module's own reading, over text
with members repeated, spelled with escapes, spaced around their colons, and strings
that look like a member's end."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode.core import codec
from aralnode.core.errors import InvalidParameters, MalformedMessage

# Names as they are written: "\u0061" is "a" again, '"\":"' holds what a member's end
# looks like, and a few are few enough that they repeat.
NAMES = st.sampled_from(['"a"', '"\\u0061"', '"b"', '""', '"\\":"', '"x y"', '"a\\""'])
SPACES = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])
SCALARS = st.sampled_from(["1", "-2.5", "true", "null", '"s"', '"\\":"', '"t :u"', '" \\" "'])


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    member = st.tuples(NAMES, SPACES, SPACES, children).map(lambda m: f"{m[0]}{m[1]}:{m[2]}{m[3]}")
    return st.one_of(
        st.lists(member, max_size=4).map(lambda ms: "{" + ",".join(ms) + "}"),
        st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    )


JSON_TEXT = st.recursive(SCALARS, _containers, max_leaves=12)


class _Twice(Exception):
    pass


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _Twice
    return dict(pairs)


def _has_a_member_twice(text: str) -> bool:
    try:
        json.loads(text, object_pairs_hook=_once)
    except _Twice:
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(text=JSON_TEXT)
def test_decode_refuses_exactly_the_text_with_a_member_twice(text: str) -> None:
    data = text.encode()
    if _has_a_member_twice(text):
        with pytest.raises(InvalidParameters) as refused:
            codec.decode(data)
        assert refused.value.reason == "DUPLICATE_PARAMETER"
    else:
        assert codec.decode(data) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('{"i":1,"i":2}', "i"),
        ('{"a":{"b":1,"b":2}}', "b"),
        ('[{"ok":1},{"a" :1,"a":2}]', "a"),
        ('{"a":1,"\\u0061":2}', "a"),
        ('{"a" :1,"a":2,"b":"x"}', "a"),  # one spaced name: the counts alone would agree
    ],
)
def test_a_member_twice_is_named(text: str, name: str) -> None:
    with pytest.raises(InvalidParameters) as refused:
        codec.decode(text.encode())
    assert refused.value.reason == "DUPLICATE_PARAMETER"
    assert refused.value.details == {"parameter": name}


def test_strings_that_look_like_members_are_not_refused() -> None:
    text = '{"url":"http://x/\\":y","at":"12:30","n":{"k":"v"}}'
    assert codec.decode(text.encode()) == json.loads(text)


def test_a_msgpack_map_with_a_key_twice_is_refused() -> None:
    twice = b"\x82\xa1a\x01\xa1a\x02"  # {"a": 1, "a": 2}, as MessagePack
    with pytest.raises(InvalidParameters) as refused:
        codec.decode(twice, codec.MSGPACK)
    assert refused.value.reason == "DUPLICATE_PARAMETER"
    int_keys = b"\x82\x01\xa1x\x01\xa1y"  # {1: "x", 1: "y"}
    with pytest.raises(InvalidParameters) as refused:
        codec.decode(int_keys, codec.MSGPACK)
    assert refused.value.details == {"parameter": "1"}
    once = {"a": 1, "b": [1, {"c": 2}]}
    assert codec.decode(msgpack.packb(once), codec.MSGPACK) == once


@pytest.mark.parametrize("text", ["1e400", '{"a":[1e400]}', '{"a":{"b":-1e400}}'])
def test_infinities_are_still_malformed(text: str) -> None:
    with pytest.raises(MalformedMessage):
        codec.decode(text.encode())
