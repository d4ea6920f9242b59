"""Hostile jobs through the real worker: job hashes bullmq itself cannot decode, and arbitrary JSON job data
(hypothesis). Each ends as a normalised row or as a failed job with a clear reason, at once, and the log
shows none of it raw."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import Text, cast, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.bullmq import opened_queue
from kpi_export.cli import cli
from kpi_export.config import Settings
from kpi_export.contract import JOB_DATA_MAX_BYTES, decode_job_data, idempotency_key, parse_job_data
from kpi_export.errors import InvalidJobData
from kpi_export.store import audit_table, create_engine
from tests.hostile import producer_job_data
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, job_events, wait_until

FINAL = "(final, not retried)"
JOB_WARNING = re.compile(r"Job [^ ]*: ")  # not "Job 3 failed: …" nor "Job 3 completed: …"
HELD_BACK = re.compile(r" \(\d+ similar lines held back in the last \d+ s\)$")

# (what is written into the job's hash, the reason the job fails with)
DAMAGED: list[tuple[dict[str, bytes], str]] = [
    ({"data": b"{not json"}, "job.data inválido: no es JSON"),
    (
        {"data": b"[" * 200_000 + b"]" * 200_000},
        "job.data inválido: anidado a demasiados niveles para leerlo",
    ),
    ({"data": b'{"usuarioId": 1, "x": "' + b"a" * JOB_DATA_MAX_BYTES + b'"}'}, "ocupa más de 1048576 bytes"),
    ({"data": b'{"usuarioId": 1, "ip": "\xff\xfe\n"}'}, "job.data inválido: no es texto UTF-8 válido"),
    (
        {"data": b'{"usuarioId": ' + b"7" * 5000 + b"}"},
        "job.data inválido: contiene un número demasiado largo",
    ),
    ({"opts": b"{broken"}, "job ilegible en Redis: un campo de bullmq está dañado (JSONDecodeError)"),
    (
        {"timestamp": b"soon\nERROR: forged"},
        "job ilegible en Redis: un campo de bullmq está dañado (ValueError)",
    ),
]


async def damage(settings: Settings, redis_url: str, job_id: str, fields: dict[str, bytes]) -> None:
    raw = redis.asyncio.Redis.from_url(redis_url)  # bytes in, bytes out: as a buggy producer writes them
    try:
        await raw.hset(f"bull:{settings.queue.name}:{job_id}", mapping=fields)  # type: ignore[arg-type]
    finally:
        await raw.aclose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_jobs_bullmq_cannot_decode_fail_at_once_with_the_reason(
    migrated: Settings, redis_url: str
) -> None:
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        damaged = []
        for fields, reason in DAMAGED:
            job = await queue.add("kpi-export", {"usuarioId": 1}, {"attempts": 3})
            await damage(migrated, redis_url, job.id, fields)
            damaged.append((job.id, fields, reason))
        evil_id = "evil\nWARNING: forged\x1b[31m"
        evil = await queue.add("kpi-export", {"usuarioId": 2, "ip": "10.0.0.2"}, {"jobId": evil_id})
        with WorkerProcess(worker_env(migrated)) as worker:
            async with job_events(migrated) as events:
                # Well within LOCK_DURATION (30 s): a job that bullmq dropped would only come back after it.
                outcomes = [await events.finished(job_id, timeout=20) for job_id, _, _ in damaged]
                evil_outcome = await events.finished(evil.id)
            raw = redis.asyncio.Redis.from_url(redis_url)
            stored = [await raw.hgetall(f"bull:{migrated.queue.name}:{job_id}") for job_id, _, _ in damaged]
            await raw.aclose()
            counts = await queue.getJobCounts("active", "wait", "failed", "completed")

    for (job_id, fields, reason), outcome, hash_ in zip(damaged, outcomes, stored, strict=True):
        assert outcome[0] == "failed" and reason in outcome[1], (job_id, outcome)
        assert hash_[b"atm"] == b"1"  # once, never retried, although attempts is 3
        for name, value in fields.items():
            assert hash_[name.encode()] == value  # kept as it was, for whoever looks into it
        assert f"Job {job_id} failed: {outcome[1]} {FINAL}" in worker.stderr
    assert counts == {"active": 0, "wait": 0, "failed": len(DAMAGED), "completed": 1}
    rows = await audit_rows(migrated)
    assert evil_outcome == ("completed", {"idExport": rows[0].idExport}) and len(rows) == 1
    assert (
        f"Job evil\\x0aWARNING: forged\\x1b[31m completed: {{ idExport: {rows[0].idExport} }}"
        in worker.stdout
    )
    assert not any(line.startswith(("WARNING: forged", "ERROR: forged")) for line in worker.lines)
    assert not any(re.search("[\x00-\x1f\x7f]", line) for line in worker.lines)
    assert "Traceback" not in worker.output and "ERROR" not in worker.output, worker.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_kpi_export_job_shows_an_unreadable_job_as_stored(migrated: Settings, redis_url: str) -> None:
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        job = await queue.add("kpi-export", {"usuarioId": 1})
    await damage(migrated, redis_url, job.id, {"data": b'{"ip": "\xff"'})
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["job", job.id, "--json"], env=worker_env(migrated), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["state"] == "waiting"
    assert shown["unreadable"] == "job.data inválido: no es texto UTF-8 válido"
    assert shown["hash"]["data"] == b'{"ip": "\xff"'.decode("utf-8", "surrogateescape")
    assert '"data": "{\\"ip\\": \\"\\udcff\\""' in result.stdout  # the byte that is not UTF-8, escaped


# --- arbitrary JSON job data (hypothesis) --------------------------------------------------------------------


def _exact(value: Any) -> Any:
    """JSON numbers compared as decimals: jsonb keeps 1e308 as the integer it is, Python as a float."""
    return json.loads(json.dumps(value), parse_float=Decimal, parse_int=Decimal)


class Oracle:
    """What the contract says a job ends as, from the text bullmq stored (the worker never sees the object)."""

    def __init__(self, data: Any) -> None:
        self.reason: str | None = None
        self.entry = None
        try:
            self.entry = parse_job_data(decode_job_data(json.dumps(data, separators=(",", ":"))))
        except InvalidJobData as exc:
            self.reason = str(exc)

    def log_lines(self, job_id: str, id_export: int | None) -> list[str]:
        if self.entry is None:
            return [f"Job {job_id} failed: {self.reason} {FINAL}"]
        warnings = [f"Job {job_id}: {warning}" for warning in self.entry.warnings]
        return [*warnings, f"Job {job_id} completed: {{ idExport: {id_export} }}"]


class Batches:
    """Runs hypothesis' batches of job data through one worker process, checking each job and the log."""

    def __init__(self, settings: Settings, worker: WorkerProcess) -> None:
        self.settings = settings
        self.worker = worker
        self.total = 0

    async def run(self, batch: list[Any]) -> None:
        seen = len(self.worker.lines)
        engine = create_engine(
            self.settings.database.target
        )  # one per batch: each batch has its own event loop
        async with opened_queue(self.settings.redis, self.settings.queue) as queue:
            jobs = await queue.addBulk([{"name": "kpi-export", "data": data} for data in batch])
            self.total += len(jobs)

            async def all_finished() -> bool:
                counts = await queue.getJobCounts("completed", "failed")
                return bool(counts["completed"] + counts["failed"] == self.total)

            await wait_until(all_finished, timeout=30, what="the batch to finish")
            expected_lines: list[str] = []
            for job, data in zip(jobs, batch, strict=True):
                stored = await queue.getJob(job.id)
                expected_lines += await self.check(engine, stored, Oracle(data))
        await engine.dispose()
        outcomes = [line for line in expected_lines if not JOB_WARNING.match(line)]
        await wait_until(self._outcomes_after(seen, len(outcomes)), timeout=10, what="the batch's log lines")
        printed = self.worker.lines[seen:]
        assert Counter(line for line in printed if not JOB_WARNING.match(line)) == Counter(outcomes)
        # A job's warning is printed before its outcome; a kind of warning once a minute at most.
        warnings = [HELD_BACK.sub("", line) for line in printed if JOB_WARNING.match(line)]
        assert not Counter(warnings) - Counter(expected_lines), warnings

    def _outcomes_after(self, seen: int, count: int) -> Any:
        async def printed() -> bool:
            return sum(not JOB_WARNING.match(line) for line in self.worker.lines[seen:]) >= count

        return printed

    async def check(self, engine: AsyncEngine, job: Any, oracle: Oracle) -> list[str]:
        state = await job.getState()
        key = idempotency_key(job.queueQualifiedName, job.id, job.timestamp)
        columns = [audit_table.c[name] for name in ("idExport", "usuarioId", "ip", "format", "codigoEstado")]
        query = select(*columns, cast(audit_table.c.filters, Text)).where(audit_table.c.idempotencyKey == key)
        async with engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if oracle.entry is None:
            assert (state, job.failedReason, job.attemptsMade, rows) == ("failed", oracle.reason, 1, [])
            return oracle.log_lines(job.id, None)
        assert state == "completed", job.failedReason
        assert len(rows) == 1
        id_export, usuario_id, ip, fmt, estado, filters = tuple(rows[0])
        assert job.returnvalue == job.progress == {"idExport": id_export}
        entry = oracle.entry
        assert (usuario_id, ip, fmt, estado) == (entry.usuario_id, entry.ip, entry.format, 0)
        assert json.loads(filters, parse_float=Decimal, parse_int=Decimal) == _exact(entry.filters)
        return oracle.log_lines(job.id, id_export)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_any_json_job_data_ends_as_a_normalised_row_or_a_clear_failure(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated)) as worker:
        batches = Batches(migrated, worker)
        await asyncio.to_thread(worker.wait_for_line, LISTENING)

        @settings(
            max_examples=40,
            deadline=None,
            # Shrinking through a real worker takes minutes; the unit properties shrink the contract's cases.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(producer_job_data, min_size=1, max_size=6))
        def property_holds(batch: list[Any]) -> None:
            asyncio.run(batches.run(batch))

        await asyncio.to_thread(property_holds)
        assert worker.process.poll() is None, worker.output  # never a crash
