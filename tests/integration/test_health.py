"""/livez, /readyz and /metrics against the real worker, with Redis and the database stopped and started."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from kpi_export.runtime.lifecycle import run_worker
from kpi_export.runtime.signals import StopSignals
from kpi_export.store import create_engine
from kpi_export.store.schema import upgrade
from tests.embedded_redis import EmbeddedRedis, free_port
from tests.faults import RedisFaultProxy, calls_script
from tests.pgcluster import PostgresCluster
from tests.probes import get, get_json, metric, sample
from tests.support import job_events, running_worker, wait_until


def with_health(settings: Settings, **update: Any) -> Settings:
    return settings.replace(health_port=free_port(), health_host="127.0.0.1", **update)


async def wait_for_status(port: int, path: str, status: int, timeout: float = 20) -> Any:
    """Poll `path` until it answers `status`; return its JSON body."""
    seen: list[Any] = []

    async def answers() -> bool:
        got, body = await get_json(port, path)
        seen[:] = [got, body]
        return got == status

    await wait_until(answers, timeout=timeout, what=f"{path} to answer {status} (last: {seen})")
    return seen[1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_livez_while_starting_running_and_through_a_redis_outage(
    migrated: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    settings = with_health(migrated, redis_url=SecretStr(f"redis://127.0.0.1:{port}"))
    health = settings.health.port
    assert health is not None
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    try:
        async with running_worker(settings):
            # Redis is not there yet: the worker waits for it, and says it is starting.
            assert await wait_for_status(health, "/livez", 503) == {"status": "starting"}
            assert await metric(health, "kpi_export_worker_running") == 0  # what /livez says, for Prometheus
            body = await wait_for_status(health, "/readyz", 503)
            assert body["status"] == "not ready"
            assert body["checks"]["redis"].startswith("ConnectionError")
            assert (body["checks"]["database"], body["checks"]["audit_table"]) == ("ok", "ok")

            server.start()
            assert await wait_for_status(health, "/livez", 200) == {"status": "running"}
            assert await metric(health, "kpi_export_worker_running") == 1
            assert (await wait_for_status(health, "/readyz", 200))["checks"] == {
                "redis": "ok",
                "database": "ok",
                "audit_table": "ok",
            }
            assert await metric(health, "kpi_export_redis_reconnects_total") == 0

            # A Redis outage makes the worker not ready, but it stays alive: restarting it would not help.
            with caplog.at_level(logging.WARNING, logger="kpi_export"):
                server.stop()
                body = await wait_for_status(health, "/readyz", 503)
                assert body["checks"]["redis"] != "ok"

                async def lost() -> bool:
                    return any("Redis connection lost" in r.getMessage() for r in caplog.records)

                await wait_until(lost, timeout=15, what="the worker to notice")
            assert await get_json(health, "/livez") == (200, {"status": "running"})

            server.start()
            await wait_for_status(health, "/readyz", 200)

            async def reconnected() -> bool:
                return await metric(health, "kpi_export_redis_reconnects_total") == 1

            await wait_until(reconnected, timeout=15, what="the reconnect to be counted")
    finally:
        server.stop()


async def test_readyz_turns_503_while_the_database_is_stopped_and_200_when_it_is_back(
    postgres_cluster: PostgresCluster, private_postgresql_url: str, redis_url: str, queue_name: str
) -> None:
    settings = Settings.of(
        redis_url=SecretStr(redis_url),
        database_url=SecretStr(private_postgresql_url),
        queue_name=queue_name,
        worker_concurrency=2,
        shutdown_timeout=10,
        db_retry_window=60,
        health_port=free_port(),
        health_host="127.0.0.1",
    )
    health = settings.health.port
    assert health is not None
    engine = create_engine(settings.database.target)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()

    async with (
        job_events(settings) as events,
        opened_queue(settings.redis, settings.queue) as queue,
        running_worker(settings),
    ):
        await wait_for_status(health, "/readyz", 200)

        postgres_cluster.stop()
        body = await wait_for_status(health, "/readyz", 503)
        assert body["status"] == "not ready"
        assert body["checks"]["redis"] == "ok"
        assert body["checks"]["database"] != "ok"
        assert body["checks"]["audit_table"] == "not checked"
        assert await get_json(health, "/livez") == (200, {"status": "running"})

        # A job taken meanwhile waits inside the worker, retrying its write, until the database is back.
        job = await queue.add("kpi-export", {"usuarioId": 77, "ip": "10.7.7.7"})

        async def in_flight() -> bool:
            return await metric(health, "kpi_export_jobs_in_flight") == 1

        await wait_until(in_flight, timeout=15, what="the job to be in flight")

        postgres_cluster.start()
        assert (await wait_for_status(health, "/readyz", 200))["status"] == "ready"
        outcome, _ = await events.finished(job.id, timeout=60)
        assert outcome == "completed"
        assert await metric(health, "kpi_export_jobs_retried_inside_total") == 1
        assert await metric(health, "kpi_export_jobs_total", outcome="completed") == 1
        assert await metric(health, "kpi_export_jobs_in_flight") == 0

    # The worker has stopped: nothing answers any more.
    assert (await get_json(health, "/livez"))[0] == 0


REFUSE_USER_13 = """
CREATE TRIGGER refuse_user_13 BEFORE INSERT ON kpi_auditoria_export
WHEN NEW.usuarioId = 13 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_metrics_move_as_jobs_complete_fail_and_retry(migrated: Settings, redis_url: str) -> None:
    path = migrated.database.target.url.database
    assert path is not None
    with sqlite3.connect(path) as conn:  # the database itself refuses these rows
        conn.execute(REFUSE_USER_13)
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with RedisFaultProxy(redis_port) as proxy:
        proxy.refuse = calls_script("updateProgress")
        settings = with_health(migrated, redis_url=SecretStr(proxy.url), queue_metrics_interval=0.2)
        health = settings.health.port
        assert health is not None
        labels = {"queue": settings.queue.name}
        async with (
            job_events(migrated) as events,
            opened_queue(migrated.redis, migrated.queue) as queue,
            running_worker(settings),
        ):
            await wait_for_status(health, "/livez", 200)
            assert await metric(health, "kpi_export_jobs_total", outcome="completed", **labels) == 0
            jobs = [
                await queue.add("kpi-export", {"usuarioId": 1}),
                await queue.add("kpi-export", {"usuarioId": 2}),
                await queue.add("kpi-export", {"usuarioId": "nope"}),
                await queue.add("kpi-export", {"usuarioId": 13}, {"attempts": 2}),
            ]
            outcomes = [(await events.finished(job.id))[0] for job in jobs]
            assert outcomes == ["completed", "completed", "failed", "failed"]

            async def depth_read() -> bool:
                return await metric(health, "kpi_export_queue_jobs", state="failed", **labels) == 2

            await wait_until(depth_read, timeout=10, what="the queue depth to be refreshed")
            status, text = await get(health, "/metrics")
    assert status == 200

    def value(name: str, **extra: str) -> float | None:
        return sample(text, name, **labels, **extra)

    assert value("kpi_export_jobs_total", outcome="completed") == 2
    assert value("kpi_export_jobs_total", outcome="failed") == 2  # the invalid job; user 13's last attempt
    assert value("kpi_export_jobs_total", outcome="retried") == 1  # user 13's first attempt
    assert value("kpi_export_job_duration_seconds_count") == 5  # every attempt
    assert value("kpi_export_db_write_duration_seconds_count") == 4  # two rows written, two refused
    assert value("kpi_export_progress_update_failures_total") == 2
    assert value("kpi_export_jobs_retried_inside_total") == 0
    assert value("kpi_export_jobs_in_flight") == 0
    assert value("kpi_export_queue_jobs", state="waiting") == 0
    assert value("kpi_export_queue_jobs", state="active") == 0
    assert "# TYPE kpi_export_job_duration_seconds histogram" in text
    assert "process_cpu_seconds_total" in text
    assert "kpi_export_audit" not in text  # sealing off (no AUDIT_SEAL_KEY): not a series of it


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_health_port_in_use_stops_the_worker_with_exit_1(migrated: Settings) -> None:
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    try:
        busy = server.sockets[0].getsockname()[1]
        outcome = await run_worker(
            migrated.replace(health_port=busy, health_host="127.0.0.1"),
            StopSignals(install=False),
        )
    finally:
        server.close()
        await server.wait_closed()
    assert outcome == 1
