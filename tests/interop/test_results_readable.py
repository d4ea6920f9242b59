"""A Node web application that polls `Job.fromId(id)` for the `idExport` after an export still finds it long
after the job completed, however fast jobs complete: by default finished jobs are removed by age only
(KEEP_COMPLETED_AGE, a day), not by count (a count trims the jobs other workers of a mixed fleet completed
too, and at 3,000 jobs/s a count of 1,000 keeps a result for a third of a second)."""

from __future__ import annotations

import asyncio

import pytest

from kpi_export.config import Settings
from tests.interop.node import JOB_NAME, add, produce
from tests.support import running_worker

on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
JOBS = 3000
# How long after the burst the web application reads the results back; the jobs completed meanwhile trim by
# age and by count as they complete.
LATER = 60.0


@on_postgresql
@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_results_of_a_burst_stay_readable_by_id_from_node_a_minute_later(migrated: Settings) -> None:
    settings = migrated.replace(worker_concurrency=50)
    burst = [
        {"addBulk": [{"name": JOB_NAME, "data": {"usuarioId": n}} for n in range(start, start + 500)]}
        for start in range(1, JOBS + 1, 500)
    ]
    async with running_worker(settings):
        produced = await produce(settings, [*burst, {"wait": True}], timeout=120)
        await asyncio.sleep(LATER)  # the time under test, not a wait for a result
        await produce(settings, [add({"usuarioId": 1}), {"wait": True}])  # a completion applies retention
        later = await produce(settings, [{"read": produced.added}])
    missing = [job_id for job_id in produced.added if later.jobs[job_id] is None]
    assert not missing, f"{len(missing)} of {JOBS} results removed: {missing[:5]}"
    for job_id in produced.added:
        assert later.job(job_id)["returnvalue"] == produced.job(job_id)["returnvalue"]
