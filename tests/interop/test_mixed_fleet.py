"""A migration in progress: the Node original and this worker consume the same queue and write the same
table at the same time. Every job ends once, and the table holds one row per valid job."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest

from kpi_export.config import Settings
from kpi_export.contract import USUARIO_ID_ERROR
from kpi_export.integrity import SealKey
from kpi_export.integrity.sealer import seal_pending
from kpi_export.integrity.verifier import verify
from kpi_export.store import opened_engine
from tests.interop.node import added_while_paused, original_worker, produce
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, wait_for_workers

VALID_JOBS = 200
INVALID_JOBS = 20


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
async def test_node_and_python_workers_share_a_queue_and_a_table(migrated: Settings) -> None:
    valid = [
        {"usuarioId": n, "ip": f"10.0.{n // 256}.{n % 256}", "filters": {"n": n}, "format": "csv"}
        for n in range(1, VALID_JOBS + 1)
    ]
    invalid = [{"usuarioId": f"x{n}"} for n in range(INVALID_JOBS)]
    bulk = [{"name": "kpi-export", "data": data, "opts": {}} for data in valid + invalid]

    with WorkerProcess(worker_env(migrated)) as python:
        await asyncio.to_thread(python.wait_for_line, LISTENING)
        async with original_worker(migrated):
            await wait_for_workers(migrated, 2)
            produced = await produce(migrated, added_while_paused({"addBulk": bulk}), timeout=120)
        python.process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(python.wait, 30)
    assert status == 0, python.output

    job_ids = produced.added
    assert len(job_ids) == VALID_JOBS + INVALID_JOBS
    valid_ids, invalid_ids = job_ids[:VALID_JOBS], job_ids[VALID_JOBS:]
    rows = {row.idExport: row for row in await audit_rows(migrated)}

    results = {}
    for job_id in valid_ids:
        job = produced.job(job_id)
        events = Counter(produced.event_names(job_id))
        assert (events["active"], events["completed"], events["failed"]) == (1, 1, 0), (job_id, events)
        assert (job["state"], job["attemptsMade"]) == ("completed", 1)
        assert produced.finished[job_id] == {"value": job["returnvalue"]}
        assert job["progress"] == job["returnvalue"]
        results[job_id] = job["returnvalue"]["idExport"]
        assert rows[results[job_id]].usuarioId == job["data"]["usuarioId"]  # its own row
    for job_id in invalid_ids:
        job = produced.job(job_id)
        assert (job["state"], job["attemptsMade"], job["failedReason"]) == ("failed", 1, USUARIO_ID_ERROR)
        assert produced.event_names(job_id).count("failed") == 1

    assert len(rows) == VALID_JOBS
    assert sorted(results.values()) == sorted(rows)
    # Rows of the original carry no idempotency key; both workers took a share of the work.
    by_python = sum(row.idempotencyKey is not None for row in rows.values())
    print(
        f"{migrated.database.target.dialect}: {VALID_JOBS + INVALID_JOBS} jobs -> {len(results)} completed, "
        f"{len(invalid_ids)} failed, {len(rows)} rows ({by_python} by Python, {len(rows) - by_python} by Node)"
    )
    assert 0 < by_python < VALID_JOBS

    # The rows of both writers seal and verify alike (a Node row: no key, createdAt from Prisma).
    async with opened_engine(migrated.database.target) as engine:
        sealed = await seal_pending(
            engine, SealKey("mixed-fleet-seal-key-0123456789abcdef"), min_age=0, actor="t"
        )
        report = await verify(engine, SealKey("mixed-fleet-seal-key-0123456789abcdef"))
    assert sum(entry.row_count for entry in sealed) == VALID_JOBS
    assert report.clean and (report.rows_checked, report.rows_not_sealed) == (VALID_JOBS, 0), report.findings
