"""What outsiders can make the node log, made safe to log.

Peers and clients choose much of what a node logs: capability ids, paths, error
messages, card fields. Unescaped, a newline in such text forges log lines and an
escape sequence drives the reader's terminal; unthrottled, one frame full of bogus
entries writes a hundred thousand lines and stalls the event loop. Every logger of
ours is made by ``get_logger`` and carries one ``SafeLogFilter``:

- the message, once formatted, has its control characters escaped (a newline reads
  ``\\n``, ESC ``\\x1b``) and is cut at ``MAX_CHARS``;
- a traceback keeps its lines, but its control characters are escaped and every
  line after the first is indented, so no line of it can pass for a record;
- records are throttled per logger, level and message template (the text before
  formatting, so one kind of event is one budget whatever it says; for a record a
  library formatted itself, its first line): ``BURST`` at once, then ``RATE`` a
  second; the next one let through says how many similar records were dropped. At
  most ``MAX_KEYS`` templates are tracked (the oldest go). Each logger and level has
  a budget of its own too (``LOGGER_BURST``, ``LOGGER_RATE``), whatever the
  templates: text formatted before logging cannot pass as ever-new templates.

A library does not configure handlers; this filter rides on the loggers themselves,
so it holds whatever handlers the program (or ``aralnode run``) installs.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar

MAX_CHARS = 2000
# A mesh forming logs one "peer ... connected" per peer at once (a hundred nodes on a
# LAN: 99 lines in a second); a frame of bogus entries would log 10**5. The budget
# lets the first through and stops the second.
BURST = 256
RATE = 20.0  # records a second, per template, after the burst
MAX_KEYS = 1024
# And per logger and level, whatever the template: a library that logs text it
# formatted itself (a task's name, a request id in it) makes a new template of each
# record, and would pass every one of them.
LOGGER_BURST = 4 * BURST
LOGGER_RATE = 5 * RATE

# Unicode's invisible format characters that change how a line reads: bidi
# embeddings, overrides, isolates and marks (U+202E shows the rest of a line
# reversed), zero-width spaces and joiners, the BOM, the soft hyphen.
FORMAT_CHARACTERS = "\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
# C0 controls (tab kept), DEL and C1 controls; also Unicode line and paragraph
# separators, which some log viewers break lines on, and the format characters.
_CONTROL = re.compile(f"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029{FORMAT_CHARACTERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def escape(text: str, limit: int = MAX_CHARS) -> str:
    """``text`` with control characters escaped, cut to about ``limit`` characters."""
    if len(text) > limit:
        text = f"{text[:limit]}… [{len(text) - limit} more characters]"
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or _code(m[0]), text)


def _code(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape_traceback(text: str) -> str:
    lines = [escape(line, 4 * MAX_CHARS) for line in text.splitlines()]
    return "\n".join(lines[:1] + ["  " + line for line in lines[1:]])


class SafeLogFilter(logging.Filter):
    """Escapes, truncates and throttles records (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        # template key -> [tokens, last refill time, records dropped since one passed]
        self._budgets: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()
        self._loggers: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if not record.args:  # formatted already: its first line is the template
            template = template.partition("\n")[0]
        key = (record.name, record.levelno, template[:200])
        dropped = self._admit(self._budgets, key, BURST, RATE)
        if dropped is None:
            return False
        wide = self._admit(self._loggers, (record.name, record.levelno, ""), LOGGER_BURST,
                           LOGGER_RATE)  # fmt: skip
        if wide is None:
            return False
        dropped += wide
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} % {record.args!r}"
        message = escape(message)
        if dropped:
            message += f" ({dropped} similar records dropped)"
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _escape_traceback(
                logging.Formatter().formatException(record.exc_info)
            )
        if record.stack_info:
            record.stack_info = _escape_traceback(record.stack_info)
        return True

    def reset(self) -> None:
        """Forget every budget (tests start each from a full one)."""
        self._budgets.clear()
        self._loggers.clear()

    def _admit(
        self,
        table: OrderedDict[tuple[str, int, str], list[float]],
        key: tuple[str, int, str],
        burst: int,
        rate: float,
    ) -> int | None:
        """None to drop the record; else how many were dropped before it."""
        now = self._clock()
        budget = table.get(key)
        if budget is None:
            budget = table[key] = [float(burst), now, 0.0]
            if len(table) > MAX_KEYS:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
            budget[0] = min(float(burst), budget[0] + (now - budget[1]) * rate)
            budget[1] = now
        if budget[0] < 1.0:
            budget[2] += 1
            return None
        budget[0] -= 1.0
        dropped, budget[2] = int(budget[2]), 0.0
        return dropped


_FILTER = SafeLogFilter()

#: The trace id of the call being served ("" outside one): the pipeline sets it for
#: the call's task, so every line logged on a call's behalf can name its trace.
TRACE_ID: ContextVar[str] = ContextVar("aralnode_trace_id", default="")


class TraceIdFilter(logging.Filter):
    """Puts ``TRACE_ID`` on every record as ``trace_id`` (a handler's filter: it
    sees records from every logger, ours and the libraries')."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", ""):
            record.trace_id = TRACE_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (RFC 3339, UTC, ms), ``level``, ``logger``,
    ``message``, ``trace_id`` when the line was logged on a call's behalf, and
    ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "") or TRACE_ID.get()
        if trace_id:
            line["trace_id"] = trace_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def install(level: int, log_format: str = "text") -> logging.Handler:
    """Configure the root logger for a program (``aralnode run`` and the other
    commands): ``text`` for people (with the trace id in brackets on a call's
    lines), ``json`` for machines. Returns the handler it installed."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        return f"{text} [trace {trace_id}]" if trace_id else text


def reset() -> None:
    """Refill every throttle budget of the shared filter."""
    _FILTER.reset()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the shared ``SafeLogFilter`` on it."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


__all__ = [
    "BURST",
    "MAX_CHARS",
    "RATE",
    "TRACE_ID",
    "JsonFormatter",
    "SafeLogFilter",
    "TraceIdFilter",
    "escape",
    "get_logger",
    "install",
    "reset",
]
