"""What outsiders can make the node log: escaped, cut short and throttled."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

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
        ("line\u2028sep", "line\\u2028sep"),
        # From an attack: format characters that change how a line reads.
        ("evil\u202e)txt.exe", "evil\\u202e)txt.exe"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
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


def test_text_a_library_formatted_itself_is_throttled_too() -> None:
    """From review: asyncio's handler logs text it formatted (a task's name in it),
    so each record was a template of its own, with a budget of its own: 2,000 "Task
    was destroyed" records all passed. Such a record's template is its first line;
    and each logger has a budget of its own, whatever its templates."""
    safe = SafeLogFilter(Clock())
    destroyed = [
        record(f"Task was destroyed but it is pending!\ntask: <Task pending name='Task-{i}'>")
        for i in range(2_000)
    ]
    assert sum(safe.filter(r) for r in destroyed) == BURST
    made_up = [record(f"request {i} failed") for i in range(10_000)]
    assert sum(safe.filter(r) for r in made_up) == _logs.LOGGER_BURST - BURST


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


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, given back as it was (``install`` replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_json_lines_name_the_calls_trace(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    _logs.install(logging.INFO, "json")
    logger = _logs.get_logger("aralnode.test_json")
    token = _logs.TRACE_ID.set("4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        logger.warning("peer %s says\nhello", "alpha")
    finally:
        _logs.TRACE_ID.reset(token)
    logger.info("outside a call")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 3  # one object a line: the newline inside is escaped
    first, second, third = lines
    assert first["level"] == "warning"
    assert first["logger"] == "aralnode.test_json"
    assert first["message"] == "peer alpha says\\nhello"
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["time"].endswith("Z")
    assert "trace_id" not in second
    assert "ValueError: boom" in third["exception"]


def test_text_lines_carry_the_trace_in_brackets(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    _logs.install(logging.INFO, "text")
    token = _logs.TRACE_ID.set("abc123")
    try:
        _logs.get_logger("aralnode.test_text").info("inside")
    finally:
        _logs.TRACE_ID.reset(token)
    err = capsys.readouterr().err
    assert err.rstrip().endswith("INFO aralnode.test_text: inside [trace abc123]")


def test_run_logs_json_when_asked(tmp_path: Path) -> None:
    """``aralnode run --log-format json``: the node's own lines are JSON (its TLS
    notice is the first it logs: INFO on loopback, so ``-v``); stopped once one has
    come."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "aralnode.cli", "-v", "run", "--name", "jsonlog",
            "--discovery", "none", "--grpc-port", "0", "--http-port", "-1",
            "--data-dir", str(tmp_path), "--log-format", "json",
        ],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # bounded by the test's timeout
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # and closes the pipe
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["message"].startswith("TLS is off")
    assert entry["logger"].startswith("aralnode")


def test_every_logger_the_node_writes_to_carries_the_filter() -> None:
    """From an attack: ``aralnode.a2a`` (and the etcd modules') loggers were made with
    ``logging.getLogger``, without the filter; and each A2A send to an ended task left
    two abandoned SDK tasks that asyncio logged unthrottled (400 lines for 200
    requests). The package makes its loggers with ``get_logger`` only, and asyncio's
    logger carries the filter once the node is imported."""
    package = Path(__file__).resolve().parent.parent / "aralnode"
    plain = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if re.search(r"^\w+ = logging\.getLogger\(", path.read_text(), re.MULTILINE)
    ]
    assert plain == []
    assert any(isinstance(f, SafeLogFilter) for f in logging.getLogger("asyncio").filters)
    assert any(isinstance(f, SafeLogFilter) for f in logging.getLogger("aralnode.a2a").filters)
