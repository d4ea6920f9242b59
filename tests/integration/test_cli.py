"""`kpi-export enqueue` and `kpi-export job`, against real Redis and a real worker."""

from __future__ import annotations

import json

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from kpi_export.contract import idempotency_key
from tests.support import audit_rows, invoke, job_events, running_worker


async def test_enqueue_adds_jobs_as_a_node_producer_would(migrated: Settings) -> None:
    result = await invoke(
        migrated,
        "enqueue",
        "--usuario-id",
        "42",
        "--ip",
        "203.0.113.7",
        "--filters",
        '{"area": "ventas"}',
        "--format",
        "xlsx",
        "--attempts",
        "3",
        "--count",
        "2",
    )
    assert result.exit_code == 0, result.output
    ids = result.stdout.split()
    assert len(ids) == 2
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        for job_id in ids:
            job = await queue.getJob(job_id)
            assert job.name == "kpi-export"
            assert job.data == {
                "usuarioId": 42,
                "ip": "203.0.113.7",
                "filters": {"area": "ventas"},
                "format": "xlsx",
            }
            assert job.opts["attempts"] == 3
            assert await job.getState() == "waiting"


async def test_enqueue_from_a_file_of_json_lines_and_bad_json_is_refused(migrated: Settings) -> None:
    lines = '{"usuarioId": 1}\n\n{"usuarioId": "abc", "ip": "x"}\n'
    result = await invoke(migrated, "enqueue", "--from-file", "-", stdin=lines)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.split()) == 2

    bad = await invoke(migrated, "enqueue", "--filters", "{not json")
    assert bad.exit_code == 2
    assert "Invalid value for --filters: not JSON" in bad.output


async def test_job_shows_state_progress_result_and_failure_as_json(migrated: Settings) -> None:
    async with job_events(migrated) as events, running_worker(migrated):
        added = await invoke(migrated, "enqueue", "--usuario-id", "7", "--ip", "10.0.0.7")
        bad = await invoke(migrated, "enqueue", "--usuario-id", "-5", "--attempts", "3")
        good_id, bad_id = added.stdout.strip(), bad.stdout.strip()
        await events.finished(good_id)
        await events.finished(bad_id)

    good = json.loads((await invoke(migrated, "job", good_id, "--json")).stdout)
    row = (await audit_rows(migrated))[0]
    assert good["state"] == "completed"
    assert good["returnvalue"] == good["progress"] == {"idExport": row.idExport}
    assert (good["attemptsMade"], good["failedReason"]) == (1, None)
    assert (
        good["idempotencyKey"]
        == row.idempotencyKey
        == idempotency_key(f"bull:{migrated.queue.name}", good_id, good["timestamp"])
    )

    failed = json.loads((await invoke(migrated, "job", bad_id, "--json")).stdout)
    assert (failed["state"], failed["failedReason"]) == ("failed", "usuarioId inválido en job.data")
    assert (failed["attemptsMade"], failed["attempts"]) == (1, 3)
    assert failed["data"] == {"usuarioId": -5}

    missing = await invoke(migrated, "job", "no-such-job")
    assert missing.exit_code == 1
    assert f"no job no-such-job in queue {migrated.queue.name}" in missing.stderr
