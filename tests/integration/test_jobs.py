"""Jobs through the real worker, real Redis and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.embedded_redis import EmbeddedRedis
from tests.faults import FirstCall, RedisFaultProxy, ScriptCalls, calls_script
from tests.support import audit_rows, invoke, job_events, running_worker, wait_until

FILTERS = {"desde": "2026-01-01", "hasta": "2026-03-31", "area": "ventas", "kpis": ["margen", "ventas"]}


async def test_a_valid_job_gives_one_row_progress_and_result(migrated: Settings) -> None:
    data = {
        "usuarioId": " 42 ",
        "ip": "::ffff:203.0.113.7",
        "filters": json.dumps(FILTERS),
        "format": " XLSX",
    }
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        job = await queue.add("kpi-export", data)
        outcome, result = await events.finished(job.id)
        stored = await queue.getJob(job.id)

    rows = await audit_rows(migrated)
    assert len(rows) == 1
    row = rows[0]
    assert (outcome, result) == ("completed", {"idExport": row.idExport})
    assert type(result["idExport"]) is int
    assert stored.returnvalue == {"idExport": row.idExport}
    assert stored.progress == {"idExport": row.idExport}
    assert (row.usuarioId, row.ip, row.filters, row.format, row.codigoEstado) == (
        42,
        "203.0.113.7",
        FILTERS,
        "xlsx",
        0,
    )
    assert abs(row.createdAt - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)
    assert row.idempotencyKey is not None


async def test_invalid_usuario_id_fails_once_without_retry_and_without_row(migrated: Settings) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        job = await queue.add("kpi-export", {"usuarioId": "0x1A", "ip": "1.2.3.4"}, {"attempts": 3})
        outcome, reason = await events.finished(job.id)
        stored = await queue.getJob(job.id)
        state = await stored.getState()

    assert (outcome, reason) == ("failed", "usuarioId inválido en job.data")
    assert state == "failed"
    assert stored.attemptsMade == 1
    assert stored.failedReason == "usuarioId inválido en job.data"
    assert stored.data == {"usuarioId": "0x1A", "ip": "1.2.3.4"}  # kept in the failed set, nothing lost
    assert await audit_rows(migrated) == []


async def test_a_redelivered_job_keeps_its_row_and_id(migrated: Settings) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        job = await queue.add("kpi-export", {"usuarioId": 7, "ip": "10.0.0.1", "format": "pdf"})
        first = await events.finished(job.id)
        await (await queue.getJob(job.id)).retry("completed")  # back to wait: the same job, a second run

        async def ran_twice() -> bool:
            again = await queue.getJob(job.id)
            return bool(again.attemptsMade >= 2 and await again.getState() == "completed")

        await wait_until(ran_twice, timeout=15, what="the second run")
        second = (await queue.getJob(job.id)).returnvalue

    rows = await audit_rows(migrated)
    assert len(rows) == 1
    assert first == ("completed", {"idExport": rows[0].idExport})
    assert second == {"idExport": rows[0].idExport}


async def test_failed_progress_updates_are_a_warning_a_minute_and_the_jobs_complete(
    migrated: Settings, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with RedisFaultProxy(port) as proxy:
        proxy.refuse = calls_script("updateProgress")
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url))
        with caplog.at_level(logging.WARNING, logger="kpi_export"):
            async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
                async with running_worker(through_proxy):
                    jobs = [
                        await queue.add("kpi-export", {"usuarioId": n, "ip": "10.0.0.9"}) for n in range(1, 6)
                    ]
                    outcomes = [await events.finished(job.id) for job in jobs]
                stored = await queue.getJob(jobs[0].id)

    rows = await audit_rows(migrated)
    assert proxy.refused >= 1
    assert sorted(result["idExport"] for _, result in outcomes) == sorted(row.idExport for row in rows)
    assert {outcome for outcome, _ in outcomes} == {"completed"} and len(rows) == 5
    assert stored.progress == 0  # never published
    warnings = [r.getMessage() for r in caplog.records if "No se pudo actualizar" in r.getMessage()]
    # One line, not one per job (a Redis refusing writes when out of memory): for whichever job came first,
    # in the original's words.
    assert [warning.split(": ", 1)[1] for warning in warnings] == [
        "ResponseError: injected fault: command refused by the test proxy"
    ]
    assert warnings[0].split(":")[0] in {
        f"No se pudo actualizar el progreso del job {job.id}" for job in jobs
    }


async def test_jobs_without_an_ip_give_one_warning_a_minute(
    migrated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kpi_export"):
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(migrated),
        ):
            jobs = [await queue.add("kpi-export", {"usuarioId": n}) for n in range(1, 7)]
            outcomes = [await events.finished(job.id) for job in jobs]
    assert {outcome for outcome, _ in outcomes} == {"completed"}
    assert [row.ip for row in await audit_rows(migrated)] == [None] * 6
    warnings = [r.getMessage() for r in caplog.records if "ip missing" in r.getMessage()]
    assert [warning.split(": ", 1)[1] for warning in warnings] == ["ip missing in job.data; stored as null"]


async def test_progress_goes_out_just_before_the_completion_also_after_redis_lost_its_scripts(
    migrated: Settings, redis_url: str
) -> None:
    """The progress is sent with the completion, in one pipeline of bullmq's two scripts. A Redis restarted
    without persistence has lost the scripts the worker loaded (SCRIPT FLUSH does the same): the worker
    loads them again and the job completes as before."""
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(migrated),
        ):
            first = await queue.add("kpi-export", {"usuarioId": 1})
            assert (await events.finished(first.id))[0] == "completed"
            await client.script_flush()
            second = await queue.add("kpi-export", {"usuarioId": 2})
            outcome, result = await events.finished(second.id)
            stored = await queue.getJob(second.id)
        stream = [
            {str(k): str(v) for k, v in (fields or {}).items()}
            for _, fields in await client.xrange(f"bull:{migrated.queue.name}:events") or []
        ]
    finally:
        await client.aclose()

    rows = await audit_rows(migrated)
    assert (outcome, result) == ("completed", {"idExport": rows[1].idExport})
    assert stored.progress == {"idExport": rows[1].idExport}
    for job, row in zip((first, second), rows, strict=True):
        told = [
            (fields["event"], json.loads(fields.get("data") or fields["returnvalue"]))
            for fields in stream
            if fields.get("jobId") == job.id and fields["event"] in ("progress", "completed")
        ]
        assert told == [("progress", {"idExport": row.idExport}), ("completed", {"idExport": row.idExport})]


async def test_warnings_for_a_bad_ip_and_filters_do_not_fail_the_job(
    migrated: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kpi_export"):
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(migrated),
        ):
            job = await queue.add("kpi-export", {"usuarioId": 3, "ip": "not-an-ip", "filters": 17})
            outcome, _ = await events.finished(job.id)
    row = (await audit_rows(migrated))[0]
    assert outcome == "completed"
    assert (row.ip, row.filters, row.format) == (None, {}, "csv")
    messages = [r.getMessage() for r in caplog.records]
    assert f"Job {job.id}: ip in job.data is not an IP address; stored as null" in messages
    assert f"Job {job.id}: filters in job.data is a number; stored as {{}}" in messages


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_steady_stream_at_high_concurrency_costs_a_few_fetches_per_job(
    migrated: Settings, redis_url: str
) -> None:
    """bullmq alone would run moveToActive once per free slot each time a job arrives (20 here)."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    fetches = ScriptCalls("moveToActive")
    async with RedisFaultProxy(port) as proxy:
        proxy.refuse = fetches
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url), worker_concurrency=20)
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(through_proxy),
        ):
            for n in range(1, 11):  # one at a time, each after the last has finished
                job = await queue.add("kpi-export", {"usuarioId": n})
                assert (await events.finished(job.id))[0] == "completed"
    assert len(await audit_rows(migrated)) == 10
    assert fetches.count <= 3 * 10 + 2, f"{fetches.count} moveToActive calls for 10 jobs"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_on_a_backlog_each_completion_brings_the_next_job(migrated: Settings, redis_url: str) -> None:
    """Node's Worker fetches the next job in the call that completes one (moveToFinished's fetchNext); so
    does this one, instead of a moveToActive call per job."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    fetches = ScriptCalls("moveToActive")
    async with (
        RedisFaultProxy(port) as proxy,
        opened_queue(migrated.redis, migrated.queue) as queue,
        job_events(migrated) as events,
    ):
        proxy.refuse = fetches
        await queue.pause()
        jobs = await queue.addBulk([{"name": "kpi-export", "data": {"usuarioId": n}} for n in range(1, 51)])
        await queue.resume()
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url), worker_concurrency=2)
        async with running_worker(through_proxy):
            outcomes = [await events.finished(job.id) for job in jobs]
    assert [outcome for outcome, _ in outcomes] == ["completed"] * 50
    assert len(await audit_rows(migrated)) == 50
    assert fetches.count <= 10, f"{fetches.count} moveToActive calls for a backlog of 50 jobs"


async def test_a_completion_whose_reply_is_lost_is_found_done_and_the_job_completes_once(
    migrated: Settings, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    first_completion = FirstCall(calls_script("moveToFinished"))
    async with RedisFaultProxy(port) as proxy:
        proxy.cut_after = first_completion
        through_proxy = migrated.replace(redis_url=SecretStr(proxy.url))
        with caplog.at_level(logging.WARNING, logger="kpi_export"):
            async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
                async with running_worker(through_proxy):
                    job = await queue.add("kpi-export", {"usuarioId": 5, "ip": "10.0.0.5"})
                    outcome, result = await events.finished(job.id)
                stored = await queue.getJob(job.id)
    rows = await audit_rows(migrated)
    assert first_completion.matched  # Redis ran the completion, the worker never heard back
    assert (outcome, result) == ("completed", {"idExport": rows[0].idExport})
    assert (len(rows), stored.attemptsMade, stored.returnvalue) == (1, 1, result)
    # The worker tried again, found the job completed, and took that for success: nothing else to say (but that
    # the tests' database role, its owner, could rewrite the audit trail).
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) != "db.excess_rights"]
    assert said == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_redis_over_a_unix_socket(migrated: Settings, tmp_path: Path) -> None:
    """REDIS_URL=unix://… (no TCP keepalive to set on such a socket): the worker and the commands connect."""
    socket = tmp_path / "redis.sock"
    with EmbeddedRedis(tmp_path / "redis", config={"unixsocket": str(socket), "unixsocketperm": "700"}):
        local = migrated.replace(redis_url=SecretStr(f"unix://{socket}"))
        async with (
            job_events(local) as events,
            opened_queue(local.redis, local.queue) as queue,
            running_worker(local),
        ):
            job = await queue.add("kpi-export", {"usuarioId": 3, "ip": "10.0.0.3"})
            outcome = await events.finished(job.id)
        stats = await invoke(local, "stats", "--json")
    rows = await audit_rows(migrated)
    assert outcome == ("completed", {"idExport": rows[0].idExport})
    assert stats.exit_code == 0 and json.loads(stats.stdout)["counts"]["completed"] == 1, stats.output
