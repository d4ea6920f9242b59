"""Logging: text for a person or one JSON object a line, no secret and no raw control character in either,
and a throttle so that an outage gives one line, not one per retry."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

# C0 and C1 controls, DEL, line/paragraph separators and bidi overrides: anything that could forge a new
# log line or hide text when job data (a custom job id, a failed reason) reaches a log line. Lone surrogates
# (bytes from Redis that were not UTF-8) too: the stream could not even encode them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)
# Fields that JSON lines carry when a log call gives them as `extra`.
FIELDS = ("event", "job_id", "queue", "idExport", "duration_ms", "outcome", "attempt", "attempts")


def escape_controls(text: str) -> str:
    return _UNSAFE.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


class Redactor:
    """Replaces known secrets and any URL's credentials with ***."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = set()
        for secret in secrets:
            if secret:
                forms.update({secret, json.dumps(secret)[1:-1], escape_controls(secret)})
        self._secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class TextFormatter(logging.Formatter):
    """INFO lines exactly as the Node original printed them; other levels say their level first."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        if record.levelno != logging.INFO:
            message = f"{record.levelname}: {message}"
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        return self.redact(message)


class JsonLineFormatter(JsonFormatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )
        self.redact = redact

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

    def reset(self, key: str) -> None:
        """Forget `key`, so that the next outage is reported at once."""
        self._last.pop(key, None)
        self._held.pop(key, None)
