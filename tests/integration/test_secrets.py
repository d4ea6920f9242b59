"""No secret anywhere: the Redis password, a URL's credentials and the database password (real ones, that a
real Redis and a real PostgreSQL check) never appear in a log line, in what is stored in Redis (a job's
failedReason, its stack trace, the event stream) or in the output of `kpi-export`, whatever goes wrong."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import redis.asyncio
from click.testing import CliRunner
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.cli import cli
from kpi_export.config import Settings
from kpi_export.store import create_engine
from kpi_export.store.schema import upgrade
from tests.embedded_redis import EmbeddedRedis
from tests.pgcluster import PASSWORD_ROLE, PostgresCluster
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, job_events, run_kpi_export


async def kpi_export_in_process(env: dict[str, str], *args: str) -> str:
    result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
    return f"$ kpi-export {' '.join(args)} -> {result.exit_code}\n{result.output}"


def kpi_export(env: dict[str, str], *args: str) -> str:
    result = run_kpi_export(env, *args)
    return f"$ kpi-export {' '.join(args)} -> {result.returncode}\n{result.stdout}{result.stderr}"


async def everything_in_redis(url: str, queue: str) -> str:
    """Every value of every key of the queue: job hashes, lists, sets and the event stream."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True, encoding_errors="backslashreplace")
    found: list[str] = []
    try:
        async for key in client.scan_iter(match=f"bull:{queue}:*"):
            kind = await client.type(key)
            if kind == "hash":
                found.append(str(await client.hgetall(key)))
            elif kind == "stream":
                found.append(str(await client.xrange(key)))
            elif kind == "list":
                found.append(str(await client.lrange(key, 0, -1)))
            elif kind == "zset":
                found.append(str(await client.zrange(key, 0, -1)))
            elif kind == "string":
                found.append(str(await client.get(key)))
    finally:
        await client.aclose()
    return "\n".join(found)


async def test_no_password_in_logs_failed_reasons_or_cli_output(
    private_postgresql_url: str, postgres_cluster: PostgresCluster, queue_name: str, tmp_path: Path
) -> None:
    redis_password = f"redis-pw-{uuid.uuid4().hex}"
    database_password = postgres_cluster.role_password
    wrong = f"wrong-pw-{uuid.uuid4().hex}"
    database = private_postgresql_url.rsplit("/", 1)[1]
    server = EmbeddedRedis(tmp_path / "redis", password=redis_password)
    redis_url = f"redis://:{redis_password}@127.0.0.1:{server.port}"
    settings = Settings.of(
        redis_url=SecretStr(redis_url),
        database_url=SecretStr(postgres_cluster.url(database, role=PASSWORD_ROLE)),
        queue_name=queue_name,
        worker_concurrency=2,
        shutdown_timeout=5,
    )
    assert database_password in settings.database.url.get_secret_value()
    engine = create_engine(settings.database.target)
    await upgrade(engine)
    await engine.dispose()
    env = worker_env(settings, DB_RETRY_WINDOW="1", LOG_LEVEL="DEBUG")
    outputs: list[str] = []
    with server, WorkerProcess(env) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        server.stop()  # Redis lost, then back
        await asyncio.to_thread(worker.wait_for_line, "Redis connection lost")
        server.start()
        await asyncio.to_thread(worker.wait_for_line, "Redis reachable again")
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            ids = [
                (await queue.add("kpi-export", data)).id for data in ({"usuarioId": 1}, {"usuarioId": "x"})
            ]
            outcomes = [await events.finished(job_id, timeout=20) for job_id in ids]
            postgres_cluster.stop()  # the database lost for longer than DB_RETRY_WINDOW
            ids.append((await queue.add("kpi-export", {"usuarioId": 2})).id)
            outcomes.append(await events.finished(ids[-1], timeout=20))
            postgres_cluster.start()
            await _sql(postgres_cluster, database, "ALTER TABLE kpi_auditoria_export RENAME TO gone")
            ids.append((await queue.add("kpi-export", {"usuarioId": 3})).id)
            outcomes.append(await events.finished(ids[-1], timeout=20))
            await _sql(postgres_cluster, database, "ALTER TABLE gone RENAME TO kpi_auditoria_export")
        worker.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 15) == 0
        outputs.append(worker.output)
        for job_id in ids:
            outputs.append(await kpi_export_in_process(env, "job", job_id, "--json"))
        outputs.append(await kpi_export_in_process(env, "db", "current"))
        outputs.append(await kpi_export_in_process(env, "enqueue", "--usuario-id", "4"))
        bad_database = settings.database.url.get_secret_value().replace(database_password, wrong)
        outputs.append(await asyncio.to_thread(kpi_export, {**env, "DATABASE_URL": bad_database}, "worker"))
        bad_redis = redis_url.replace(redis_password, wrong)
        outputs.append(await asyncio.to_thread(kpi_export, {**env, "REDIS_URL": bad_redis}, "worker"))
        stored = await everything_in_redis(redis_url, queue_name)
    text = "\n".join(outputs)
    # The faults really happened, and each said why:
    assert [outcome[0] for outcome in outcomes] == ["completed", "failed", "failed", "failed"]
    assert outcomes[2][1].startswith("base de datos no disponible: ")
    assert 'relation "kpi_auditoria_export" does not exist' in outcomes[3][1]
    assert "Cannot start: the database refused the worker: " in text
    assert "refused the worker: AuthenticationError" in text
    assert '"failedReason": "base de datos no disponible: ' in text  # kpi-export job shows the reasons
    for secret in (redis_password, database_password, wrong):
        assert secret not in text, text
        assert secret not in stored, stored


async def _sql(cluster: PostgresCluster, database: str, statement: str) -> None:
    await cluster.execute(statement, database)
