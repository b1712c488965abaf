"""Property tests of the sans-IO envelope, signature and replay pieces (no sockets)."""

from __future__ import annotations

import contextlib
import json
import math
import re

import pytest
from google.protobuf import struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from aralnode import _proto as pb
from aralnode.core import codec, errors
from aralnode.core.codec import from_value
from aralnode.core.context import clean_trace_id
from aralnode.core.envelope import (
    build_content,
    encode_payload,
    error_body,
    open_message,
    remote_error,
    seal,
)
from aralnode.core.errors import (
    AralError,
    InvalidParameters,
    RateLimited,
    ReplayDetected,
    StaleMessage,
)
from aralnode.core.identity import KeyAlgorithm, KeyRing
from aralnode.core.replay import ReplayGuard
from aralnode.testing import FixedClock, fixed_identity

ALICE = fixed_identity(1)
ALICE_ED = fixed_identity(2, KeyAlgorithm.ED25519)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _content(
    clock: FixedClock, params: object = None, content_type: str = codec.JSON
) -> pb.MessageContent:
    payload, compression = encode_payload(params, content_type, compress_above=64)
    return build_content(
        sender=ALICE.node_id,
        recipient="bob",
        body=pb.Body(type=pb.MessageType.MESSAGE_TYPE_REQUEST, action="x.y", parameters=payload),
        clock=clock,
        content_type=content_type,
        compression=compression,
    )


def _open(message: pb.ARALMessage, clock: FixedClock, keyring: KeyRing | None = None) -> object:
    ring = keyring or KeyRing()
    ring.pin(ALICE.public_key)
    ring.pin(ALICE_ED.public_key)
    return open_message(
        message, keyring=ring, replay=ReplayGuard(clock, not_before_ms=0), require_signature=True
    )


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=2048),
    sig=st.binary(max_size=80),
    key_id=st.text(max_size=40),
    pub=st.binary(max_size=120),
)
def test_parsing_any_bytes_raises_only_aral_errors(
    data: bytes, sig: bytes, key_id: str, pub: bytes
) -> None:
    clock = FixedClock()
    message = pb.ARALMessage(content=data)
    message.signature.value = sig
    message.signature.key_id = key_id
    message.signature.algorithm = "ES256"
    if pub:
        message.signature.public_key = pub
    with pytest.raises(AralError):
        _open(message, clock)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2048))
def test_unsigned_random_content_never_escapes_the_error_tree(data: bytes) -> None:
    clock = FixedClock()
    with contextlib.suppress(AralError):
        open_message(
            pb.ARALMessage(content=data),
            keyring=KeyRing(),
            replay=ReplayGuard(clock),
            require_signature=False,
        )


@settings(max_examples=60, deadline=None)
@given(params=json_values, content_type=st.sampled_from(codec.CONTENT_TYPES))
def test_round_trip(params: object, content_type: str) -> None:
    clock = FixedClock()
    content = _content(clock, params, content_type)
    opened = _open(seal(content, ALICE), clock)
    assert opened.header == content.header  # type: ignore[attr-defined]
    assert opened.parameters() == params  # type: ignore[attr-defined]


def _error_over_the_wire(exc: AralError) -> AralError:
    """``exc`` as a peer sends it (``error_body``, serialized) and a caller reads it."""
    body = pb.Body.FromString(error_body(exc, "corr-1").SerializeToString())
    return remote_error(body.error)


def test_error_details_keep_lists_of_objects() -> None:
    errors = [
        {"field": "b", "message": "not a number", "type": "float_parsing", "loc": ["b", 0]},
        {"field": "a", "ok": None, "strict": True, "nested": {"deep": [1.5, "x"]}},
    ]
    exc = InvalidParameters("bad", details={"errors": errors, "tags": ("t1", "t2")})
    back = _error_over_the_wire(exc)
    assert isinstance(back, InvalidParameters)
    assert back.reason == "INVALID_PARAMETERS"
    assert back.details == {"errors": errors, "tags": ["t1", "t2"]}


@settings(max_examples=100, deadline=None)
@given(details=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_json_error_details_round_trip(details: dict[str, object]) -> None:
    details.pop("reason", None)  # both keys carry fields of the error itself
    details.pop("retry_after", None)
    back = _error_over_the_wire(AralError("x", details=details)).details
    if _depth(details) <= errors._MAX_DEPTH and len(json.dumps(details)) <= 900:
        assert back == details  # within the bounds, details travel exactly
    else:  # beyond them, shaped (test_errors.py says how), and still within the budget
        assert len(json.dumps(back, ensure_ascii=False).encode()) <= errors.MAX_DETAILS_BYTES


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def test_error_details_numbers_keep_their_type() -> None:
    details = {"limit": 10, "used": [0, 2.5], "max": {"n": -(2**53) + 1}}
    back = _error_over_the_wire(AralError("x", details=details)).details
    assert json.dumps(back, sort_keys=True) == json.dumps(details, sort_keys=True)  # 10, not 10.0


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (3.0, 3),
        (-7.0, -7),
        (0.0, 0),
        (-0.0, 0),
        (float(2**53 - 1), 2**53 - 1),
        (-float(2**53 - 1), -(2**53) + 1),
        (float(2**53), float(2**53)),  # may have been 2**53 + 1, rounded: not one int's
        (-float(2**53), -float(2**53)),
        (1.5, 1.5),
        (float(2**53 + 2), float(2**53 + 2)),  # whole, but no longer one integer's alone
        (1e300, 1e300),
        (math.inf, math.inf),
        (-math.inf, -math.inf),
    ],
)
def test_a_whole_double_below_2_to_the_53_is_an_int(number: float, expected: float) -> None:
    back = from_value(struct_pb2.Value(number_value=number))
    assert type(back) is type(expected)
    assert back == expected


def test_nan_stays_a_float() -> None:
    back = from_value(struct_pb2.Value(number_value=math.nan))
    assert isinstance(back, float)
    assert math.isnan(back)


@settings(max_examples=100, deadline=None)
@given(value=json_values)
def test_json_values_come_back_from_a_value_with_their_types(value: object) -> None:
    wire = struct_pb2.Value.FromString(codec.to_value(value).SerializeToString())
    assert json.dumps(from_value(wire), sort_keys=True) == json.dumps(
        value, sort_keys=True
    )  # 3 stays 3, not 3.0


json_with_whole_floats = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(value=json_with_whole_floats)
def test_whole_numbers_prints_as_a_struct_does_and_leaves_its_input_alone(value: object) -> None:
    before = json.dumps(value, sort_keys=True)
    out = codec.whole_numbers(value)
    assert json.dumps(value, sort_keys=True) == before  # copied where it changed, never edited
    # As the value travels in a Struct (numbers are doubles) and comes back.
    wire = struct_pb2.Value.FromString(codec.to_value(value).SerializeToString())
    assert json.dumps(out, sort_keys=True) == json.dumps(from_value(wire), sort_keys=True)
    if before == json.dumps(out, sort_keys=True):
        assert out is value  # nothing to change: no copy


@pytest.mark.parametrize(
    ("given_id", "kept"),
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("trace.v1:span-7_x", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        ("tr ace", False),
        ("ünïcode", False),  # letters, but not ones a header may carry
        ("٣٣", False),  # digits, not ASCII ones
        ("x\ny", False),
    ],
)
def test_a_trace_id_is_carried_only_if_safe(given_id: str, kept: bool) -> None:
    out = clean_trace_id(given_id)
    assert (out == given_id) is kept
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", out)


class _Opaque:
    def __str__(self) -> str:
        return "opaque!"


def test_error_details_that_are_not_json_are_stringified() -> None:
    deep: list[object] = []
    for _ in range(200):
        deep = [deep]
    details = {
        "obj": _Opaque(),
        "in_list": [_Opaque(), {"k": _Opaque()}],
        "nan": float("nan"),
        "inf": [float("-inf")],
        "huge": 10**400,
        "deep": deep,
        7: "int key",
    }
    back = _error_over_the_wire(AralError("x", details=details)).details
    assert back["obj"] == "opaque!"
    assert back["in_list"] == ["opaque!", {"k": "opaque!"}]
    assert (back["nan"], back["inf"], back["huge"]) == ("nan", ["-inf"], "(a very large integer)")
    assert back["7"] == "int key"
    level = back["deep"]
    while isinstance(level, list):  # nesting stops (as a string) well before protobuf's limit
        (level,) = level
    assert level == "…"


@settings(max_examples=150, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7), ed=st.booleans())
def test_any_flipped_bit_is_detected(index: int, bit: int, ed: bool) -> None:
    clock = FixedClock()
    identity = ALICE_ED if ed else ALICE
    content = _content(clock, {"k": "v" * 10})
    content.header.sender = identity.node_id
    message = seal(content, identity)
    total = len(message.content) + len(message.signature.value)
    i = index % total
    if i < len(message.content):
        buf = bytearray(message.content)
        buf[i] ^= 1 << bit
        message.content = bytes(buf)
    else:
        buf = bytearray(message.signature.value)
        buf[i - len(message.content)] ^= 1 << bit
        message.signature.value = bytes(buf)
    with pytest.raises(AralError):
        _open(message, clock)


def test_replay_guard_window_and_bounds() -> None:
    clock = FixedClock()
    guard = ReplayGuard(clock, window_ms=1000, skew_ms=100, capacity=3, not_before_ms=0)
    now = clock.now_ms()
    for i in range(3):
        guard.admit("s", f"m{i}", now)
    with pytest.raises(ReplayDetected):
        guard.admit("s", "m0", now)
    with pytest.raises(RateLimited):
        guard.admit("s", "m3", now)  # full of live entries: fail closed
    clock.advance(1.5)
    guard.admit("s", "m3", clock.now_ms())  # old entries expired and were evicted
    assert len(guard) == 1
    with pytest.raises(StaleMessage):
        guard.admit("s", "m4", clock.now_ms() - 1201)
    with pytest.raises(StaleMessage):
        guard.admit("s", "m5", clock.now_ms() + 101)


def test_replay_guard_refuses_messages_from_before_its_start() -> None:
    clock = FixedClock()
    before_restart = clock.now_ms()
    clock.advance(2)
    guard = ReplayGuard(clock, window_ms=30_000, skew_ms=100)
    with pytest.raises(StaleMessage) as info:
        guard.admit("s", "m", before_restart)
    assert "start" in info.value.message
    guard.admit("s", "m", clock.now_ms())


@settings(max_examples=50, deadline=None)
@given(ids=st.lists(st.text(min_size=1, max_size=4), max_size=60))
def test_replay_guard_admits_each_pair_once(ids: list[str]) -> None:
    clock = FixedClock()
    guard = ReplayGuard(clock, not_before_ms=0, capacity=1000)
    seen: set[str] = set()
    for mid in ids:
        if mid in seen:
            with pytest.raises(ReplayDetected):
                guard.admit("s", mid, clock.now_ms())
        else:
            guard.admit("s", mid, clock.now_ms())
            seen.add(mid)
    assert len(guard) == len(seen)


def test_random_draws_are_never_handed_out_twice() -> None:
    """Message ids and nonces come from a pool refilled 4 KiB at a time: threads
    taking from it at once never get the same draw."""
    import threading

    from aralnode.core import envelope

    taken: list[list[bytes]] = [[] for _ in range(4)]

    def take(into: list[bytes]) -> None:
        into.extend(envelope._random_draw() for _ in range(3000))

    threads = [threading.Thread(target=take, args=(t,)) for t in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    draws = [d for t in taken for d in t]
    assert len(draws) == 12000
    assert len(set(draws)) == len(draws)
    assert all(len(d) == envelope._DRAW == 16 for d in draws)
