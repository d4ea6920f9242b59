"""Logging: text for a person or one JSON object a line, no secret and no raw control character in either,
and a throttle so that an outage gives one line, not one per retry."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from kpi_export.redaction import Redactor, escape_controls

# With tracing on (runtime/tracing.py): the current span's trace_id and span_id, for JSON lines.
_trace_ids: Callable[[], dict[str, str]] | None = None


def include_trace_ids(current_ids: Callable[[], dict[str, str]]) -> None:
    """JSON lines written within a job's span carry its `trace_id` and `span_id`."""
    global _trace_ids
    _trace_ids = current_ids


# Fields that JSON lines carry when a log call gives them as `extra`.
FIELDS = ("event", "job_id", "queue", "idExport", "duration_ms", "outcome", "attempt", "attempts")


class TextFormatter(logging.Formatter):
    """A UTC time, then INFO lines' text as the Node original printed it; other levels say their level first."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        if record.levelno != logging.INFO:
            message = f"{record.levelname}: {message}"
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
    def __init__(self, redact: Redactor) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
        self.redact = redact

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.setdefault("event", record.name)  # every line has one; a library's line, its logger's name
        if _trace_ids is not None:
            log_data.update(_trace_ids())

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))  # json.dumps has escaped every control character


def setup_logging(
    level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Configure the root logger once, from the CLI."""
    handler = logging.StreamHandler(stream or sys.stdout)
    redact = Redactor(secrets)
    handler.setFormatter(JsonLineFormatter(redact) if fmt == "json" else TextFormatter(redact))
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
