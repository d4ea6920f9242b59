"""Jobs added by npm bullmq (as the Node web application adds them), consumed by the Python worker and, for
comparison, by the Node original: the Node side must read back what the original leaves.

Each case runs against both consumers; where the two differ on purpose (README, "How it differs from the
Node original"), the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from kpi_export.bullmq import node_client_name, opened_queue, worker_name
from kpi_export.config import Settings
from kpi_export.contract import USUARIO_ID_ERROR, idempotency_key
from tests.faults import TcpFaultProxy
from tests.interop.node import Produced, add, added_while_paused, original_worker, produce
from tests.support import audit_rows, running_worker, wait_for_workers, wait_until

# The original's database (SPEC.md); the fault case runs on MariaDB too.
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

VALID = {
    "usuarioId": 42,
    "ip": "203.0.113.7",
    "filters": {"area": "ventas", "kpis": ["margen", "ventas"]},
    "format": "xlsx",
}
INVALID = {"usuarioId": "abc", "ip": "10.0.0.1"}

Consumer = Callable[[Settings], contextlib.AbstractAsyncContextManager[Any]]


@pytest.fixture(params=["python", "node-original"])
def consumer(request: pytest.FixtureRequest) -> Consumer:
    """The worker that consumes the queue: this project's, or the Node original for comparison."""
    if request.param == "python":
        return running_worker

    @contextlib.asynccontextmanager
    async def original(settings: Settings) -> AsyncIterator[None]:
        async with original_worker(settings):
            yield

    return original


def is_original(consumer: Consumer) -> bool:
    return consumer is not running_worker


def completed(produced: Produced, job_id: str) -> int:
    """Assert the job completed once, as the original leaves it; return its idExport."""
    job = produced.job(job_id)
    id_export = job["returnvalue"]["idExport"]
    assert type(id_export) is int
    assert produced.finished[job_id] == {"value": {"idExport": id_export}}  # waitUntilFinished's value
    assert (job["state"], job["progress"], job["attemptsMade"], job["failedReason"]) == (
        "completed",
        {"idExport": id_export},
        1,
        None,
    )
    return id_export


@on_postgresql
async def test_valid_jobs(migrated: Settings, consumer: Consumer) -> None:
    async with consumer(migrated):
        produced = await produce(migrated, added_while_paused(add(VALID), add({**VALID, "usuarioId": "7"})))
    first, second = produced.added
    rows = {row.idExport: row for row in await audit_rows(migrated)}
    assert sorted(rows) == sorted([completed(produced, first), completed(produced, second)])
    assert rows[completed(produced, first)].usuarioId == 42
    assert rows[completed(produced, second)].usuarioId == 7
    assert produced.job(first)["data"] == VALID  # the job keeps its data as the producer gave it
    # npm bullmq's getWorkers(), which dashboards show, finds the worker (the original has no name).
    unnamed = node_client_name(migrated.queue.prefix, migrated.queue.name, "").removesuffix(":w:")
    named = node_client_name(migrated.queue.prefix, migrated.queue.name, worker_name())
    assert produced.workers == [unnamed if is_original(consumer) else named]


@on_postgresql
@pytest.mark.parametrize("attempts", [None, 3])
async def test_invalid_usuario_id(migrated: Settings, consumer: Consumer, attempts: int | None) -> None:
    opts = {"attempts": attempts} if attempts else {}
    async with consumer(migrated):
        produced = await produce(migrated, added_while_paused(add(INVALID, opts)))
    job_id = produced.added[0]
    job = produced.job(job_id)
    assert produced.finished[job_id] == {"error": USUARIO_ID_ERROR}  # waitUntilFinished rejects
    assert (job["state"], job["failedReason"], job["returnvalue"], job["progress"]) == (
        "failed",
        USUARIO_ID_ERROR,
        None,
        0,
    )
    assert job["data"] == INVALID
    # The original retries bad data `attempts` times; this worker fails it once (UnrecoverableError).
    assert job["attemptsMade"] == (attempts or 1 if is_original(consumer) else 1)
    assert produced.event_names(job_id).count("failed") == 1
    assert await audit_rows(migrated) == []


@pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        ({"type": "fixed", "delay": 600}, [600, 600]),
        ({"type": "exponential", "delay": 600}, [600, 1200]),
    ],
)
async def test_attempts_and_backoff_after_a_database_fault(
    migrated: Settings, consumer: Consumer, backoff: dict[str, Any], delays: list[int]
) -> None:
    """The database is cut off for the first two attempts; the third one succeeds."""
    url = migrated.database.url.get_secret_value()
    port = int(url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    async with TcpFaultProxy(port) as proxy:
        through_proxy = url.replace(f":{port}/", f":{proxy.port}/")
        faulty = migrated.replace(database_url=SecretStr(through_proxy), db_retry_window=0.2)
        async with consumer(faulty), opened_queue(migrated.redis, migrated.queue) as queue:
            await wait_for_workers(migrated)  # past its start-up check of the database
            proxy.block()
            job = {"attempts": 3, "backoff": backoff}
            task = asyncio.create_task(produce(migrated, added_while_paused(add(VALID, job))))

            async def failed_twice() -> bool:
                stored = await queue.getJob("1")
                return stored is not None and stored.attemptsMade >= 2

            await wait_until(failed_twice, timeout=20, what="two failed attempts")
            proxy.unblock()
            produced = await task

    job_id = produced.added[0]
    stored = produced.job(job_id)
    (row,) = await audit_rows(migrated)
    assert produced.finished[job_id] == {"value": {"idExport": row.idExport}}
    assert (stored["state"], stored["returnvalue"], stored["progress"], stored["attemptsMade"]) == (
        "completed",
        {"idExport": row.idExport},
        {"idExport": row.idExport},
        3,
    )
    # The backoff each retry waited: the delayed event's due time minus the moment it was written.
    waited = [int(e["delay"]) - e["at"] for e in produced.events[job_id] if e["event"] == "delayed"]
    assert len(waited) == 2
    for measured, expected in zip(waited, delays, strict=True):
        assert expected - 250 <= measured <= expected + 20, waited
    # The reason of the last failed attempt stays on the completed job, with either worker (Lua scripts).
    if not is_original(consumer):
        assert stored["failedReason"].startswith("base de datos no disponible: ")
    else:
        assert stored["failedReason"]


@on_postgresql
async def test_a_custom_job_id(migrated: Settings, consumer: Consumer) -> None:
    """A producer that names its jobs (`jobId`): adding the same id again, while the job exists, is a no-op."""
    job_id = "export:2026-03-31:u42"
    opts = {"jobId": job_id}
    steps = added_while_paused(add(VALID, opts), add({**VALID, "usuarioId": 43}, opts))
    async with consumer(migrated):
        produced = await produce(migrated, steps)
    assert produced.added == [job_id, job_id]
    (row,) = await audit_rows(migrated)
    assert completed(produced, job_id) == row.idExport
    assert row.usuarioId == 42
    if not is_original(consumer):  # the idempotency key is built from the custom id
        key = idempotency_key(f"bull:{migrated.queue.name}", job_id, produced.job(job_id)["timestamp"])
        assert row.idempotencyKey == key


@on_postgresql
async def test_remove_on_complete_and_on_fail(migrated: Settings, consumer: Consumer) -> None:
    steps = added_while_paused(
        add(VALID, {"removeOnComplete": True}),
        add(INVALID, {"removeOnFail": True}),
        *(add({**VALID, "usuarioId": n}, {"removeOnComplete": 1}) for n in (1, 2, 3)),
    )
    async with consumer(migrated):
        produced = await produce(migrated, steps)
    removed, failed, *kept_last = produced.added
    rows = await audit_rows(migrated)
    assert len(rows) == 4
    # Gone from Redis, yet waitUntilFinished had the result (or the reason) from the queue's events.
    assert produced.jobs[removed] is None and produced.jobs[failed] is None
    assert produced.finished[removed]["value"]["idExport"] in {row.idExport for row in rows}
    assert produced.finished[failed] == {"error": USUARIO_ID_ERROR}
    # removeOnComplete: 1 keeps the last completed job only.
    assert sum(produced.jobs[job_id] is not None for job_id in kept_last) == 1


@on_postgresql
async def test_priority(migrated: Settings, consumer: Consumer) -> None:
    """One job at a time: the lower the priority number, the sooner it runs; all jobs are waiting first."""
    one_at_a_time = migrated.replace(worker_concurrency=1)
    priorities = [5, 1, 3, 2, 4]
    steps = added_while_paused(*(add({**VALID, "usuarioId": p}, {"priority": p}) for p in priorities))
    async with consumer(one_at_a_time):
        produced = await produce(one_at_a_time, steps)
    for job_id in produced.added:
        completed(produced, job_id)
    # idExport grows in the order the jobs were processed.
    assert [row.usuarioId for row in await audit_rows(migrated)] == sorted(priorities)


@on_postgresql
async def test_delay(migrated: Settings, consumer: Consumer) -> None:
    async with consumer(migrated):
        produced = await produce(migrated, [add(VALID, {"delay": 1500}), {"wait": True}])
    job = produced.job(produced.added[0])
    completed(produced, job["id"])
    assert job["opts"]["delay"] == 1500
    assert job["processedOn"] >= job["timestamp"] + 1500
    assert produced.event_names(job["id"])[:2] == ["delayed", "waiting"]


@on_postgresql
async def test_deduplication(migrated: Settings, consumer: Consumer) -> None:
    """A second job with the same deduplication id is dropped while the first is pending; once it finished,
    the id is free again, so the worker's way of finishing a job releases it as npm bullmq's does."""
    dedup = {"deduplication": {"id": "report-42"}}
    steps = [
        *added_while_paused(add(VALID, dedup), add({**VALID, "usuarioId": 43}, dedup)),
        add({**VALID, "usuarioId": 44}, dedup),
        {"wait": True},
    ]
    async with consumer(migrated):
        produced = await produce(migrated, steps)
    first, duplicate, later = produced.added
    assert duplicate == first and later != first
    assert "deduplicated" in produced.event_names(first)
    rows = await audit_rows(migrated)
    assert [row.usuarioId for row in rows] == [42, 44]
    assert [completed(produced, first), completed(produced, later)] == [row.idExport for row in rows]


@on_postgresql
async def test_add_bulk(migrated: Settings, consumer: Consumer) -> None:
    bulk = [
        {"name": "kpi-export", "data": {**VALID, "usuarioId": 1}, "opts": {}},
        {"name": "kpi-export", "data": {**VALID, "usuarioId": 2}, "opts": {"attempts": 3}},
        {
            "name": "kpi-export-pdf",
            "data": {**VALID, "usuarioId": 3, "format": "pdf"},
            "opts": {"lifo": True},
        },
        {"name": "kpi-export", "data": INVALID, "opts": {}},
    ]
    async with consumer(migrated):
        produced = await produce(migrated, added_while_paused({"addBulk": bulk}))
    *valid, invalid = produced.added
    ids = [completed(produced, job_id) for job_id in valid]
    assert sorted(ids) == [row.idExport for row in await audit_rows(migrated)]
    assert produced.job(valid[2])["name"] == "kpi-export-pdf"
    assert produced.job(invalid)["failedReason"] == USUARIO_ID_ERROR
