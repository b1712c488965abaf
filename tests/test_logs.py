"""What outsiders can make the node log: escaped, cut short and throttled."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from aralnode import Node, _logs
from aralnode._logs import BURST, MAX_CHARS, RATE, SafeLogFilter, escape


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, name: str = "aralnode.test") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("two\nlines", "two\\nlines"),
        ("carriage\rreturn", "carriage\\rreturn"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00 del\x7f c1\x85", "nul\\x00 del\\x7f c1\\x85"),
        ("line\u2028sep", "line\\x2028sep"),
        ("tab\tkept, ünïcode kept", "tab\tkept, ünïcode kept"),
    ],
)
def test_control_characters_are_escaped(text: str, shown: str) -> None:
    assert escape(text) == shown


def test_a_message_from_outside_stays_one_line_and_bounded() -> None:
    rec = record("refused %s: %s", "/x\n2026-12-04 INFO forged", "y" * 100_000)
    assert SafeLogFilter(Clock()).filter(rec)
    message = rec.getMessage()
    assert "\n" not in message
    assert message.startswith("refused /x\\n2026-12-04 INFO forged: yyy")
    assert len(message) < MAX_CHARS + 100
    assert message.endswith("more characters]")


def test_a_traceback_cannot_forge_a_record() -> None:
    try:
        raise ValueError("bad\n2026-12-04 12:00:00 INFO aralnode: all is well\x1b[0m")
    except ValueError:
        import sys

        rec = logging.LogRecord(
            "aralnode.t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    assert SafeLogFilter(Clock()).filter(rec)
    text = logging.Formatter("%(message)s").format(rec)
    lines = text.splitlines()
    assert lines[0] == "failed"
    assert all(line.startswith("  ") for line in lines[2:])  # under "Traceback ..."
    assert "\x1b" not in text
    assert any("  2026-12-04 12:00:00 INFO aralnode: all is well" in line for line in lines)


def test_one_kind_of_record_is_throttled_and_says_how_many_it_dropped() -> None:
    clock = Clock()
    safe = SafeLogFilter(clock)
    passed = [safe.filter(record("entry %d from %s", i, "peer")) for i in range(10_000)]
    assert sum(passed) == BURST
    other = record("another kind of event")
    assert safe.filter(other)  # its own budget
    clock.now += 1.0
    later = [record("entry %d from %s", i, "peer") for i in range(100)]
    kept = [r for r in later if safe.filter(r)]
    assert len(kept) == int(RATE)
    assert kept[0].getMessage().endswith(f"({10_000 - BURST} similar records dropped)")
    assert not kept[1].getMessage().endswith("dropped)")


def test_the_templates_it_tracks_are_bounded() -> None:
    safe = SafeLogFilter(Clock())
    for i in range(5 * _logs.MAX_KEYS):
        safe.filter(record(f"made up template {i}"))
    assert len(safe._budgets) == _logs.MAX_KEYS


async def test_the_http_guard_logs_a_hostile_path_escaped_and_throttled(
    make_node: Callable[..., Node],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client picks the path the Host/Origin guard logs on refusing it."""
    burst = 20
    monkeypatch.setattr(_logs, "BURST", burst)  # the same budget, smaller: a short test
    monkeypatch.setattr(_logs, "RATE", 0.0)  # and no refill while it runs
    node = make_node("guarded", http_port=0)
    async with node:
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            for _ in range(3 * burst):
                reply = await http.get(
                    "/v1/x%0A2026-12-04%20INFO%20aralnode%3A%20forged%1B%5B2J",
                    headers={"host": "evil.example"},
                )
                assert reply.status_code == 421
    refused = [
        r for r in caplog.records if r.name.startswith("aralnode") and "refused" in r.getMessage()
    ]
    assert refused, "the guard logged nothing"
    assert len(refused) <= burst + 1
    for rec in refused:
        message = rec.getMessage()
        assert "\n" not in message
        assert "\x1b" not in message
        assert "\\n2026-12-04 INFO aralnode: forged\\x1b[2J" in message
