"""The operator commands (`check`, `stats`, `jobs`, `retry`, `audit`, `db`) against real Redis and databases."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue, worker_name
from kpi_export.config import Settings
from kpi_export.contract import parse_job_data
from kpi_export.store import AuditStore, create_engine
from tests.embedded_redis import free_port
from tests.support import audit_rows, invoke, job_events, running_worker, wait_until

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def json_of(settings: Settings, *args: str) -> object:
    result = await invoke(settings, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def create_empty_sqlite_file(settings: Settings) -> None:
    """What a database server has before `db upgrade`: a database without the table (the read-only commands
    create no SQLite file)."""
    if settings.database.target.dialect == "sqlite":
        sqlite3.connect(str(settings.database.target.url.database)).close()


async def test_check_exits_0_when_ready_and_1_naming_what_is_not(settings: Settings) -> None:
    create_empty_sqlite_file(settings)
    missing = await invoke(settings, "check", "--json")
    assert missing.exit_code == 1
    body = json.loads(missing.stdout)
    assert body["status"] == "not ready"
    assert (body["checks"]["redis"], body["checks"]["database"]) == ("ok", "ok")
    assert body["checks"]["audit_table"].startswith("the table kpi_auditoria_export does not exist")

    assert (await invoke(settings, "db", "upgrade")).exit_code == 0
    ready = await invoke(settings, "check")
    assert ready.exit_code == 0, ready.output
    assert ready.stdout.splitlines()[-1] == "ready"

    no_redis = settings.replace(redis_url=SecretStr(f"redis://127.0.0.1:{free_port()}"))
    down = await invoke(no_redis, "check")
    assert down.exit_code == 1
    assert down.stdout.splitlines()[-1] == "not ready: redis"


@sqlite_only
async def test_db_current_and_upgrade_as_json(settings: Settings) -> None:
    create_empty_sqlite_file(settings)
    behind = await invoke(settings, "db", "current", "--json")
    assert behind.exit_code == 1
    assert json.loads(behind.stdout)["up_to_date"] is False
    upgraded = await json_of(settings, "db", "upgrade")
    assert upgraded == {"database": settings.database.target.display, "before": None, "after": "0003"}
    current = await json_of(settings, "db", "current")
    assert current == {
        "database": settings.database.target.display,
        "current": "0003",
        "head": "0003",
        "up_to_date": True,
    }


@sqlite_only
async def test_stats_counts_jobs_by_state_workers_and_the_oldest_waiting_job(migrated: Settings) -> None:
    an_hour_ago = int(time.time() * 1000) - 3600_000
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        waiting = [
            await queue.add("kpi-export", {"usuarioId": 1}, {"timestamp": an_hour_ago}),
            await queue.add("kpi-export", {"usuarioId": 2}),
            await queue.add("kpi-export", {"usuarioId": 3}),
        ]
        await queue.add("kpi-export", {"usuarioId": 4}, {"delay": 600_000})

    found = await json_of(migrated, "stats")
    assert isinstance(found, dict)
    assert found["counts"] == {
        "waiting": 3,
        "prioritized": 0,
        "active": 0,
        "delayed": 1,
        "waiting-children": 0,
        "paused": 0,
        "completed": 0,
        "failed": 0,
    }
    assert found["workers"] == []
    assert 3600 <= found["oldest_waiting_age_s"] < 3700

    table = await invoke(migrated, "stats")
    assert table.exit_code == 0
    assert "workers connected: 0" in table.stdout
    assert "oldest waiting job: 1 h 0 min ago" in table.stdout

    async with job_events(migrated) as events, running_worker(migrated):
        async with opened_queue(migrated.redis, migrated.queue) as queue:
            waiting.append(await queue.add("kpi-export", {"usuarioId": 5}))
        for job in waiting:
            await events.finished(job.id)
        during = await json_of(migrated, "stats")
    assert isinstance(during, dict)
    assert [worker["name"] for worker in during["workers"]] == [worker_name()]
    assert (during["counts"]["waiting"], during["counts"]["completed"]) == (0, 4)
    assert during["oldest_waiting_age_s"] is None


@sqlite_only
async def test_jobs_lists_failed_and_completed_jobs(migrated: Settings) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        bad = await queue.add("kpi-export", {"usuarioId": "abc"})
        worse = await queue.add("kpi-export", {"usuarioId": -1}, {"attempts": 3})
        good = await queue.add("kpi-export", {"usuarioId": 8})
        for job in (bad, worse, good):
            await events.finished(job.id)

    failed = await json_of(migrated, "jobs")
    assert isinstance(failed, list)
    assert [(j["id"], j["attemptsMade"], j["attempts"], j["failedReason"]) for j in failed] == [
        (worse.id, 1, 3, "usuarioId inválido en job.data"),
        (bad.id, 1, 1, "usuarioId inválido en job.data"),
    ]
    assert failed[0]["data"] == {"usuarioId": -1}
    row = (await audit_rows(migrated))[0]
    completed = await json_of(migrated, "jobs", "--state", "completed")
    assert isinstance(completed, list)
    assert [(j["id"], j["returnvalue"]) for j in completed] == [(good.id, {"idExport": row.idExport})]

    table = await invoke(migrated, "jobs", "--limit", "1")
    assert table.exit_code == 0
    assert "usuarioId inválido en job.data" in table.stdout
    assert "1/3" in table.stdout and "1/1" not in table.stdout
    assert table.stdout.splitlines()[-1] == "1 job (--limit 1)"

    wrong = await invoke(migrated, "jobs", "--state", "lost")
    assert wrong.exit_code == 2


@sqlite_only
async def test_attempts_of_a_job_retried_by_hand_are_not_shown_as_more_than_allowed(
    migrated: Settings,
) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        job = await queue.add("kpi-export", {"usuarioId": "abc"})  # fails for good at its one attempt
        await events.finished(job.id)
        assert (await invoke(migrated, "retry", job.id)).exit_code == 0

        async def failed_again() -> bool:
            again = await queue.getJob(job.id)
            return bool(again.attemptsMade == 2 and await again.getState() == "failed")

        await wait_until(failed_again, what="the retried job to fail again")

    listed = await invoke(migrated, "jobs", env={"COLUMNS": "160"})
    assert re.search(rf"│ {job.id} +│ [0-9 :-]+ │ 2 \(of 1, retried by hand\) +│", listed.stdout), (
        listed.stdout
    )
    shown = await invoke(migrated, "job", job.id)
    assert re.search(r"│ attempts +│ 2 \(of 1, retried by hand\) +│", shown.stdout), shown.stdout
    assert "2/1" not in listed.stdout + shown.stdout and "attemptsMade" not in shown.stdout
    as_json = await json_of(migrated, "job", job.id)
    assert isinstance(as_json, dict) and (as_json["attemptsMade"], as_json["attempts"]) == (2, 1)


REFUSE_USER_13 = """
CREATE TRIGGER refuse_user_13 BEFORE INSERT ON kpi_auditoria_export
WHEN NEW.usuarioId = 13 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END
"""


@sqlite_only
async def test_retry_puts_failed_jobs_back_and_they_complete_once_the_fault_is_fixed(
    migrated: Settings,
) -> None:
    path = migrated.database.target.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        conn.execute(REFUSE_USER_13)
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        jobs = [await queue.add("kpi-export", {"usuarioId": 13, "ip": f"10.0.0.{n}"}) for n in range(5)]
        done = await queue.add("kpi-export", {"usuarioId": 1})
        for job in [*jobs, done]:
            await events.finished(job.id)
        assert await queue.getJobState(jobs[0].id) == "failed"

        with sqlite3.connect(path) as conn:  # the operator fixes the database
            conn.execute("DROP TRIGGER refuse_user_13")

        one = await invoke(migrated, "retry", jobs[0].id, "--json")
        assert one.exit_code == 0, one.output
        assert json.loads(one.stdout) == {jobs[0].id: "retried"}

        async def completed(job_id: str) -> bool:
            return bool(await queue.getJobState(job_id) == "completed")

        await wait_until(lambda: completed(jobs[0].id), timeout=15, what="the retried job to complete")

        mixed = await invoke(migrated, "retry", done.id, "no-such-job")
        assert mixed.exit_code == 1
        assert "not failed (completed)" in mixed.stdout and "not found" in mixed.stdout

        everything = await invoke(migrated, "retry", "--all-failed", "--json")
        assert everything.exit_code == 0, everything.output
        assert json.loads(everything.stdout) == {"retried": 4}

        async def all_completed() -> bool:
            return all([await completed(job.id) for job in jobs])

        await wait_until(all_completed, timeout=20, what="every retried job to complete")

    rows = await audit_rows(migrated)
    assert sorted(row.ip for row in rows if row.usuarioId == 13) == [f"10.0.0.{n}" for n in range(5)]
    assert len(rows) == 6

    usage = await invoke(migrated, "retry")
    assert usage.exit_code == 2
    assert "give job ids or --all-failed" in usage.output


ROWS = [  # usuarioId, format, createdAt (UTC)
    (1, "xlsx", datetime(2026, 1, 10, 10, 0)),
    (1, "csv", datetime(2026, 1, 31, 23, 59, 59)),
    (2, "xlsx", datetime(2026, 2, 1, 0, 0)),
    (2, "pdf", datetime(2026, 2, 15, 8, 30)),
]


async def test_audit_list_filters_show_and_csv(migrated: Settings, tmp_path: Path) -> None:
    engine = create_engine(migrated.database.target)
    try:
        store = AuditStore(engine)
        ids = [
            await store.record(
                parse_job_data({"usuarioId": user, "format": fmt, "ip": "203.0.113.9", "filters": {"n": n}}),
                f"key-{n}",
                created,
            )
            for n, (user, fmt, created) in enumerate(ROWS)
        ]
    finally:
        await engine.dispose()

    async def listed(*args: str) -> list[int]:
        rows = await json_of(migrated, "audit", "list", *args)
        assert isinstance(rows, list)
        return [row["idExport"] for row in rows]

    newest_first = ids[::-1]
    assert await listed() == newest_first
    assert await listed("--usuario-id", "1") == [ids[1], ids[0]]
    assert await listed("--since", "2026-01-31", "--until", "2026-02-01") == [ids[2], ids[1]]
    assert await listed("--since", "2026-02-01T00:00:00+01:00") == [ids[3], ids[2], ids[1]]
    assert await listed("--until", "2026-02-01T00:00Z") == [ids[1], ids[0]]
    assert await listed("--format", "XLSX") == [ids[2], ids[0]]
    assert await listed("--limit", "1") == [ids[3]]

    shown = await json_of(migrated, "audit", "show", str(ids[1]))
    assert shown == {
        "idExport": ids[1],
        "usuarioId": 1,
        "ip": "203.0.113.9",
        "filters": {"n": 1},
        "format": "csv",
        "codigoEstado": 0,
        "createdAt": "2026-01-31T23:59:59.000Z",
        "idempotencyKey": "key-1",
    }
    missing = await invoke(migrated, "audit", "show", "999999")
    assert missing.exit_code == 1
    assert "no audit row with idExport 999999" in missing.stderr

    table = await invoke(migrated, "audit", "list", "--usuario-id", "2")
    assert table.exit_code == 0
    assert "2026-02-15 08:30:00" in table.stdout and "pdf" in table.stdout
    assert table.stdout.splitlines()[-1] == "2 rows"

    target = tmp_path / "export.csv"
    written = await invoke(migrated, "audit", "list", "--usuario-id", "2", "--csv", str(target))
    assert written.exit_code == 0, written.output
    assert written.stdout.strip() == f"2 rows written to {target}"
    with target.open(newline="", encoding="utf-8") as file:
        records = list(csv.DictReader(file))
    assert [(int(r["idExport"]), r["format"], json.loads(r["filters"])) for r in records] == [
        (ids[3], "pdf", {"n": 3}),
        (ids[2], "xlsx", {"n": 2}),
    ]
    assert records[0]["createdAt"] == "2026-02-15T08:30:00.000Z"

    bad = await invoke(migrated, "audit", "list", "--since", "yesterday")
    assert bad.exit_code == 2
    assert "'yesterday' is not a date" in bad.output
