"""QUEUE_PREFIX: a Node producer that sets bullmq's `prefix` and this worker meet on the same keys."""

from __future__ import annotations

import pytest

from kpi_export.bullmq import node_client_name, worker_name
from kpi_export.config import Settings
from tests.interop.node import add, added_while_paused, produce
from tests.support import audit_rows, running_worker

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@on_postgresql
@pytest.mark.parametrize("prefix", ["{kpi}", "exports"])
async def test_a_node_producer_with_a_prefix_and_this_worker_meet_on_its_keys(
    migrated: Settings, prefix: str
) -> None:
    settings = migrated.replace(queue_prefix=prefix)
    async with running_worker(settings):
        produced = await produce(
            settings, added_while_paused(add({"usuarioId": 42, "format": "xlsx"}), add({"usuarioId": "abc"}))
        )
    good, bad = (produced.job(job_id) for job_id in produced.added)
    rows = await audit_rows(settings)
    assert [row.usuarioId for row in rows] == [42]
    assert (good["state"], good["returnvalue"], good["progress"]) == (
        "completed",
        {"idExport": rows[0].idExport},
        {"idExport": rows[0].idExport},
    )
    assert (bad["state"], bad["failedReason"]) == ("failed", "usuarioId inválido en job.data")
    # npm bullmq's getWorkers() finds the worker under the prefix.
    assert produced.workers == [node_client_name(prefix, settings.queue.name, worker_name())]
