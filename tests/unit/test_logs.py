"""Log lines: the original's wording, no secret, no forged line, one line per outage."""

from __future__ import annotations

import calendar
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator

import pytest

from kpi_export.logs import START_LINE, Throttle, setup_logging
from kpi_export.redaction import escape_controls

# The UTC time that begins a text line with LOG_TIMESTAMPS=1, and the `time` of every JSON line.
UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    logging.getLogger().handlers.clear()


def logged_at(text: str) -> float:
    assert UTC_TIME.match(text), text
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")) + int(text[20:23]) / 1000


def test_text_lines_begin_with_the_utc_time_when_asked(output: io.StringIO) -> None:
    setup_logging("INFO", "text", stream=output, timestamps=True)
    before = time.time()
    logging.getLogger("t").info("Job 1 completed")
    stamp, _, line = output.getvalue().partition(" ")
    assert before - 1 <= logged_at(stamp) <= time.time() + 1
    assert line == "Job 1 completed\n"


def test_lines_are_printed_as_the_original_printed_them(output: io.StringIO) -> None:
    """No time, no level: console.log and console.warn printed neither."""
    setup_logging("INFO", "text", stream=output)
    logging.getLogger("kpi_export.runtime.lifecycle").info(START_LINE, "q", 3)
    logging.getLogger("kpi_export.runtime.lifecycle").warning("careful")
    assert output.getvalue().splitlines() == ['Worker escuchando cola "q" (concurrency=3)', "careful"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_info_on_stdout_warnings_and_errors_on_stderr(
    fmt: str, capsys: pytest.CaptureFixture[str], output: io.StringIO
) -> None:
    """As Node's console.log (stdout) and console.warn/console.error (stderr)."""
    setup_logging("DEBUG", fmt)
    log = logging.getLogger("t")
    log.debug("a debug line")
    log.info("Job 1 completed")
    log.warning("Job 2: ip in job.data is not an IP address")
    log.error("Job 3 failed")
    captured = capsys.readouterr()
    if fmt == "json":
        out = [json.loads(line)["message"] for line in captured.out.splitlines()]
        err = [json.loads(line)["message"] for line in captured.err.splitlines()]
    else:
        out, err = captured.out.splitlines(), captured.err.splitlines()
    assert out == ["a debug line", "Job 1 completed"]
    assert err == ["Job 2: ip in job.data is not an IP address", "Job 3 failed"]


def test_a_worker_process_under_a_supervisor_names_itself(output: io.StringIO) -> None:
    """The original's lines keep their exact text; the others, or every line with its time, say which
    process wrote them."""
    setup_logging("INFO", "text", stream=output, process=2)
    log = logging.getLogger("t")
    log.info(START_LINE, "q", 3, extra={"event": "worker.started"})
    log.info("Job %s completed: %s", "7", "{ idExport: 7 }", extra={"event": "job.completed"})
    log.warning("Redis connection lost", extra={"event": "redis.lost"})
    assert output.getvalue().splitlines() == [
        'Worker escuchando cola "q" (concurrency=3)',
        "Job 7 completed: { idExport: 7 }",
        "[worker 2] Redis connection lost",
    ]
    output.seek(0)
    output.truncate()
    setup_logging("INFO", "text", stream=output, process=2, timestamps=True)
    log.info(START_LINE, "q", 3, extra={"event": "worker.started"})
    stamp, _, line = output.getvalue().partition(" ")
    assert UTC_TIME.match(stamp) and line == '[worker 2] Worker escuchando cola "q" (concurrency=3)\n'
    output.seek(0)
    output.truncate()
    setup_logging("INFO", "json", stream=output, process=2)
    log.info(START_LINE, "q", 3, extra={"event": "worker.started"})
    record = json.loads(output.getvalue())
    assert (record["process_index"], record["pid"]) == (2, os.getpid())


def test_job_data_cannot_forge_a_log_line(output: io.StringIO) -> None:
    setup_logging("INFO", "text", stream=output)
    logging.getLogger("t").info("Job %s completed", "7\nERROR: forged\x1b[31m\u2028")
    assert output.getvalue() == "Job 7\\x0aERROR: forged\\x1b[31m\\u2028 completed\n"


def test_bytes_from_redis_that_were_not_utf8_are_printed_escaped(output: io.StringIO) -> None:
    setup_logging("INFO", "text", stream=output)
    job_id = b"evil\xff".decode("utf-8", "surrogateescape")
    logging.getLogger("t").info("Job %s completed", job_id)
    assert output.getvalue() == "Job evil\\udcff completed\n"


def test_secrets_and_url_credentials_are_redacted_in_text_and_json(output: io.StringIO) -> None:
    for fmt in ("text", "json"):
        output.seek(0)
        output.truncate()
        setup_logging("INFO", fmt, secrets=["hunter2", 'pa"ss:w', "p%40ssword"], stream=output)
        log = logging.getLogger("t")
        log.info("password %s and %s and %s", "hunter2", 'pa"ss:w', "p@ssword")
        log.info("url redis://default:whatever@cache:6379/0")
        try:
            raise RuntimeError("failed with hunter2")
        except RuntimeError:
            log.exception("boom")
        text = output.getvalue()
        assert "hunter2" not in text and 'pa"ss' not in text and 'pa\\"ss' not in text
        assert "p@ssword" not in text
        assert "whatever" not in text
        assert "redis://***@cache:6379/0" in text


def test_json_lines_carry_the_structured_fields(output: io.StringIO) -> None:
    setup_logging("INFO", "json", stream=output)
    logging.getLogger("kpi_export.runtime.lifecycle").info(
        "Job %s completed",
        "9",
        extra={"event": "job.completed", "job_id": "9", "idExport": 3, "duration_ms": 4},
    )
    record = json.loads(output.getvalue())
    assert record["message"] == "Job 9 completed"
    assert (record["event"], record["job_id"], record["idExport"], record["duration_ms"]) == (
        "job.completed",
        "9",
        3,
        4,
    )
    assert record["level"] == "INFO" and record["pid"] == os.getpid()
    assert "process_index" not in record  # a worker on its own
    before = time.time()
    assert before - 1 <= logged_at(record["time"]) <= time.time() + 1  # UTC, milliseconds


def test_a_short_secret_does_not_mangle_the_logs(output: io.StringIO) -> None:
    setup_logging("INFO", "text", secrets=["kpi"], stream=output)
    logging.getLogger("t").info('Worker escuchando cola "kpi-export-queue" (concurrency=1)')
    assert output.getvalue() == 'Worker escuchando cola "kpi-export-queue" (concurrency=1)\n'


def test_a_traceback_cannot_forge_a_line_either(output: io.StringIO) -> None:
    setup_logging("INFO", "text", stream=output)
    try:
        raise ValueError("bad\x1b[2J\nINFO: forged line")
    except ValueError:
        logging.getLogger("t").exception("boom")
    lines = output.getvalue().splitlines()
    assert lines[0] == "boom"
    assert all(line.startswith("  ") for line in lines[1:])
    assert "  INFO: forged line" in lines and "\\x1b[2J" in output.getvalue()


def test_escape_controls_keeps_ordinary_text() -> None:
    assert escape_controls("usuarioId inválido en job.data") == "usuarioId inválido en job.data"


def test_throttle_lets_one_line_a_minute_through_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = Throttle(interval=60, clock=lambda: now[0])
    log = logging.getLogger("throttled")
    with caplog.at_level(logging.ERROR):
        for _ in range(100):
            throttle.log(log, "redis", logging.ERROR, "Redis lost")
            now[0] += 0.5
        throttle.log(log, "other", logging.ERROR, "another kind")
        now[0] += 10
        throttle.log(log, "redis", logging.ERROR, "Redis lost")
    assert [r.getMessage() for r in caplog.records] == [
        "Redis lost",
        "another kind",
        "Redis lost (99 similar lines held back in the last 60 s)",
    ]
