"""Logging: the Node original's lines on its streams, or one JSON object a line; no secret and no raw control
character in either, and a throttle so that an outage gives one line, not one per retry."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from kpi_export.redaction import Redactor, escape_controls

# The original's start line, byte for byte: log parsers and readiness scripts match it whole.
START_LINE = 'Worker escuchando cola "%s" (concurrency=%d)'
# What the original printed when a signal came (console.log), before it closed everything.
CLOSING_LINE = "Cerrando worker..."
# The events whose text lines are the original's own: under a supervisor they keep their exact text, and
# every other line says which worker process wrote it.
ORIGINAL_EVENTS = frozenset(
    {"worker.started", "worker.closing", "job.completed", "job.failed", "job.progress_failed", "worker.error"}
)

# With tracing on (runtime/tracing.py): the current span's trace_id and span_id, for JSON lines.
_trace_ids: Callable[[], dict[str, str]] | None = None


def include_trace_ids(current_ids: Callable[[], dict[str, str]]) -> None:
    """JSON lines written within a job's span carry its `trace_id` and `span_id`."""
    global _trace_ids
    _trace_ids = current_ids


class TextFormatter(logging.Formatter):
    """Each line as the Node original printed it: no level, no time. `timestamps` (LOG_TIMESTAMPS=1) puts the
    UTC time first; `process` (a worker process under a supervisor) names the process on the lines that are
    not the original's, or on every line when it has a time anyway."""

    def __init__(self, redact: Redactor, *, timestamps: bool = False, process: int | None = None) -> None:
        super().__init__()
        self.redact = redact
        self.timestamps = timestamps
        self.process_tag = f"[worker {process}] " if process is not None else ""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        if self.process_tag and (self.timestamps or getattr(record, "event", None) not in ORIGINAL_EVENTS):
            message = self.process_tag + message
        if self.timestamps:
            message = f"{utc_time(record.created)} {message}"
        if record.exc_info:
            # The traceback keeps its lines, indented, so that none can pass for a log line of its own.
            trace = escape_controls(self.formatException(record.exc_info), keep_newlines=True)
            message += "\n" + "\n".join(f"  {line}" for line in trace.splitlines())
        return self.redact(message)


def utc_time(epoch: float) -> str:
    """2026-03-31T10:00:00.123Z"""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


class JsonLineFormatter(JsonFormatter):
    """One JSON object a line: `time` (UTC, milliseconds), `level`, `logger`, `message`, `event`, `pid`, the
    fields a call gives as `extra`, and `process_index` for a worker process under a supervisor."""

    def __init__(self, redact: Redactor, *, process: int | None = None) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
        self.redact = redact
        self.process = process

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_time(record.created)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.setdefault("event", record.name)  # every line has one; a library's line, its logger's name
        log_data["pid"] = record.process
        if self.process is not None:
            log_data["process_index"] = self.process
        if _trace_ids is not None:
            log_data.update(_trace_ids())

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))  # json.dumps has escaped every control character


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines on the streams where Node's console put them: INFO and DEBUG on stdout (console.log), warnings
    and errors on stderr (console.warn, console.error), each flushed as it is written."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)
        self.errors = sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.stream if record.levelno < logging.WARNING else self.errors
            stream.write(self.format(record) + "\n")
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    secrets: Iterable[str] = (),
    *,
    stream: TextIO | None = None,
    timestamps: bool = False,
    process: int | None = None,
) -> None:
    """Configure the root logger once, from the CLI: every line on `stream`, or, without one, on the console's
    two streams as the original wrote them (ConsoleHandler)."""
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else ConsoleHandler()
    redact = Redactor(secrets)
    formatter: logging.Formatter = (
        JsonLineFormatter(redact, process=process)
        if fmt == "json"
        else TextFormatter(redact, timestamps=timestamps, process=process)
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries speak only when something is wrong.
    for name in ("asyncio", "sqlalchemy", "alembic", "aiosqlite", "bullmq"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class Throttle:
    """At most one line per key per `interval` seconds; the next line that passes says how many were held."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        return True

    def held(self, key: str) -> int:
        """How many lines were held back since the last one that passed; resets the count."""
        return self._held.pop(key, 0)

    def log(self, logger: logging.Logger, key: str, level: int, msg: str, *args: Any, **kwargs: Any) -> None:
        if not self.allow(key):
            return
        held = self.held(key)
        if held:
            msg = f"{msg} ({held} similar lines held back in the last {self.interval:.0f} s)"
        logger.log(level, msg, *args, **kwargs)
