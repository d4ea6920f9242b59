"""At the adapter's boundary: the contract's "invalid, never retry" becomes bullmq's UnrecoverableError, and
a handler's result and progress go their separate ways (no Redis: the worker never connects)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from bullmq import Job, UnrecoverableError
from redis.asyncio import Redis

from kpi_export.bullmq import Completion, QueuedJob
from kpi_export.bullmq.worker import KpiWorker, taken_before
from kpi_export.contract import USUARIO_ID_ERROR, parse_job_data


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    unused = Redis(host="127.0.0.1", port=1, decode_responses=True)
    yield unused
    await unused.aclose()


async def handle(job: QueuedJob) -> Completion:
    parse_job_data(job.data)
    return Completion(result={"idExport": 7}, progress={"idExport": 7, "step": "written"})


def worker_and_job(client: Redis, data: Any) -> tuple[KpiWorker, Job]:
    worker = KpiWorker("boundary", handle, {"autorun": False, "connection": client})
    return worker, Job(worker, "kpi-export", data, {}, "1")


async def test_invalid_job_data_fails_the_job_as_unrecoverable_with_its_reason(client: Redis) -> None:
    worker, job = worker_and_job(client, {"usuarioId": "abc"})
    with pytest.raises(UnrecoverableError) as caught:
        await worker.processor(job, "token-1")
    assert str(caught.value) == USUARIO_ID_ERROR


async def test_the_result_is_returned_and_the_progress_kept_for_the_completion(client: Redis) -> None:
    worker, job = worker_and_job(client, {"usuarioId": 42})
    assert await worker.processor(job, "token-1") == {"idExport": 7}
    assert worker.pending_progress == {"token-1": {"idExport": 7, "step": "written"}}


@pytest.mark.parametrize(
    ("processed_on", "before"),
    [("1000", True), ("2000", False), (None, False), ("", False), ("not-a-number", False), ("1e3", False)],
)
def test_a_job_is_an_orphan_candidate_only_with_a_readable_processed_on_before_the_failover(
    processed_on: object, before: bool
) -> None:
    assert taken_before(processed_on, 2000) is before
