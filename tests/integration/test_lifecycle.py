"""`kpi-export worker` as a process: start line, configuration errors, signals, drain, waiting for Redis."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.embedded_redis import EmbeddedRedis, free_port
from tests.faults import RedisFaultProxy, TcpFaultProxy
from tests.services import require_tool, worker_env
from tests.support import (
    LISTENING,
    WorkerProcess,
    audit_rows,
    cpu_wait_seconds,
    job_events,
    run_kpi_export,
    running_worker,
    start_line,
    table_locked,
    wait_until,
)
from tests.topology import wait_for


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKER_CONCURRENCY", "abc"),
        ("REDIS_PORT", "port"),
        ("REDIS_URL", "http://admin:hunter2@cache:6379"),
        ("DATABASE_URL", "postgresql://app:hunter2@db/kpis?sslcert=client.pem"),
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("WORKER_PROCESSES", "0"),
        ("WORKER_CONCURRENCY", "1000000"),  # would burn a core idle and not answer SIGTERM
        ("LOCK_DURATION", "inf"),  # would crash later, exit 1, restarted for ever
        ("DB_WRITE_TIMEOUT", "nan"),
        ("DATABASE_URL", "postgresql://app:hunter2@db/kpis?connection_limit=inf"),
        ("DATABASE_URL", "postgresql://app:hunter2@[::1"),
    ],
)
def test_bad_configuration_stops_at_start_with_one_line_and_status_2(
    settings: Settings, variable: str, value: str
) -> None:
    result = run_kpi_export(worker_env(settings, **{variable: value}), "worker")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kpi-export: invalid {variable}: "), result.stderr
    assert "hunter2" not in result.stderr


def test_a_missing_table_stops_the_worker_with_what_to_run(settings: Settings) -> None:
    if (
        settings.database.target.dialect == "sqlite"
    ):  # a database without the table, as a server has before upgrade
        sqlite3.connect(str(settings.database.target.url.database)).close()
    result = run_kpi_export(worker_env(settings), "worker")
    assert result.returncode == 1
    assert "run `kpi-export db upgrade` with the same DATABASE_URL" in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_mistyped_sqlite_path_stops_the_worker_and_no_file_is_made(
    settings: Settings, tmp_path: Path
) -> None:
    typo = tmp_path / "typo.db"
    env = worker_env(settings, DATABASE_URL=f"file:{typo}")
    result = run_kpi_export(env, "worker")
    assert result.returncode == 1
    line = f"no SQLite database at {typo} (DATABASE_URL): `kpi-export db upgrade` creates it"
    assert line in result.stderr
    assert not typo.exists()
    assert run_kpi_export(env, "db", "upgrade").returncode == 0  # the one command that makes the file
    assert typo.exists()


async def test_start_line_then_an_idle_worker_stops_within_a_second(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated)) as worker:
        line = await asyncio.to_thread(worker.wait_for_line, LISTENING)
        assert line == start_line(migrated)
        status, took = await asyncio.to_thread(worker.stop, signal.SIGTERM, 10)
        # Of its own doing (the time it waited for a CPU on a busy machine left out): not bullmq's blocking
        # wait for a job (DRAIN_DELAY, 5 s), a socket's timeout, nor a close that waits out its grace (5 s).
        assert took < 1.0, took
        assert status == 0
    assert worker.stdout[0] == line, worker.output  # first, alone, on stdout
    # On stderr, the tests' databases being used as their owner: that least privilege is not applied, alone.
    owner = migrated.database.target.dialect != "sqlite"
    assert [w.split(":")[0] for w in worker.stderr] == ["Least privilege not applied"] * owner, worker.output
    assert worker.stdout[1:3] == [
        "Cerrando worker...",  # the original's, on a signal
        "SIGTERM: finishing the jobs in flight, then stopping (send it again to stop at once)",
    ]
    assert worker.stdout[-1] == "Worker stopped"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_log_timestamps_puts_the_utc_time_first(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated, LOG_TIMESTAMPS="1")) as worker:
        line = await asyncio.to_thread(worker.wait_for_line, LISTENING)
        worker.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.wait, 10) == 0
    stamp, _, text = line.partition(" ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp), line
    assert text == start_line(migrated)


async def wait_until_active(settings: Settings, job_id: str) -> None:
    async with opened_queue(settings.redis, settings.queue) as queue:

        async def active() -> bool:
            return bool(await queue.getJobState(job_id) == "active")

        await wait_until(active, timeout=15, what=f"job {job_id} to be active")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_sigterm_lets_a_two_second_job_finish_then_exits_0(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
            async with table_locked(migrated):
                job = await queue.add("kpi-export", {"usuarioId": 21, "ip": "10.2.2.2"})
                await wait_until_active(migrated, job.id)
                worker.process.send_signal(signal.SIGTERM)
                await asyncio.to_thread(worker.wait_for_line, "SIGTERM: finishing the jobs in flight")
                await asyncio.sleep(2)  # the job's two seconds of work: the insert waits on the lock
            outcome = await events.finished(job.id)
        status = await asyncio.to_thread(worker.wait, 15)
    rows = await audit_rows(migrated)
    assert status == 0, worker.output
    assert outcome == ("completed", {"idExport": rows[0].idExport})
    assert len(rows) == 1
    assert worker.output.index("SIGTERM: finishing") < worker.output.index(f"Job {job.id} completed")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("stop", ["second signal", "shutdown timeout"])
async def test_an_immediate_stop_leaves_the_job_to_another_worker_and_one_row(
    migrated: Settings, stop: str
) -> None:
    settings = migrated.replace(lock_duration=2.0, shutdown_timeout=1.0 if "timeout" in stop else 30)
    env = worker_env(settings, LOCK_DURATION="2")
    with WorkerProcess(env) as first:
        await asyncio.to_thread(first.wait_for_line, LISTENING)
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            async with table_locked(settings):
                job = await queue.add("kpi-export", {"usuarioId": 22, "ip": "10.2.2.3"})
                await wait_until_active(settings, job.id)
                started = time.monotonic()
                first.process.send_signal(signal.SIGTERM)
                if stop == "second signal":
                    await asyncio.to_thread(first.wait_for_line, "SIGTERM: finishing")
                    first.process.send_signal(signal.SIGTERM)
                status = await asyncio.to_thread(first.wait, 15)
                stopped_after = time.monotonic() - started
                assert await queue.getJobState(job.id) == "active"  # left in Redis, not lost
            with WorkerProcess(env) as second:
                outcome = await events.finished(job.id, timeout=20)
                second.process.send_signal(signal.SIGTERM)
                second.wait(15)
    assert status == 0, first.output
    assert stopped_after < settings.worker.shutdown_timeout + 3
    assert "Stopping with 1 job(s) in flight" in first.output
    rows = await audit_rows(settings)
    assert len(rows) == 1
    assert outcome == ("completed", {"idExport": rows[0].idExport})


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_redis_down_at_start_is_waited_for_with_one_line(migrated: Settings, tmp_path: Path) -> None:
    port = free_port()
    settings = migrated.replace(redis_url=SecretStr(f"redis://127.0.0.1:{port}"))
    with WorkerProcess(worker_env(settings)) as worker:
        await asyncio.to_thread(worker.wait_for_line, "Redis not reachable at redis://127.0.0.1")
        with EmbeddedRedis(tmp_path / "redis", port=port):
            await asyncio.to_thread(worker.wait_for_line, LISTENING)
            async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
                job = await queue.add("kpi-export", {"usuarioId": 5, "ip": "10.0.0.5"})
                outcome, _ = await events.finished(job.id)
            worker.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(worker.wait, 15)
    assert outcome == "completed"
    assert status == 0
    assert worker.output.count("Redis not reachable") == 1, worker.output


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_job_added_after_30_s_of_idle_time_is_picked_up_within_a_second(migrated: Settings) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        await asyncio.sleep(30)  # the idle time under test, not a wait for a result
        # The worker runs in this thread (running_worker): the time the thread waits for a CPU meanwhile is
        # a busy machine's doing, not the worker's, and is left out.
        waited = cpu_wait_seconds()
        job = await queue.add("kpi-export", {"usuarioId": 30, "ip": "10.3.3.3"})
        outcome, _ = await events.finished(job.id, timeout=5)
        waited = cpu_wait_seconds() - waited
        stored = await queue.getJob(job.id)
    assert outcome == "completed"
    # Not after bullmq's blocking wait for a job (DRAIN_DELAY, 5 s) or a socket's timeout: woken by the job.
    assert stored.processedOn - stored.timestamp - waited * 1000 < 1000


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_redis_restart_gives_one_line_when_lost_one_when_back_and_work_goes_on(
    migrated: Settings, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    settings = migrated.replace(redis_url=SecretStr(server.url))
    with server, WorkerProcess(worker_env(settings)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        server.stop()
        await asyncio.to_thread(worker.wait_for_line, "Redis connection lost at")
        server.start()
        await asyncio.to_thread(worker.wait_for_line, "Redis reachable again")
        async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
            job = await queue.add("kpi-export", {"usuarioId": 8, "ip": "10.0.0.8"})
            outcome, _ = await events.finished(job.id, timeout=20)
        worker.process.send_signal(signal.SIGTERM)
        status = await asyncio.to_thread(worker.wait, 15)
    assert outcome == "completed"
    assert status == 0
    assert worker.output.count("Redis connection lost") == 1, worker.output
    assert worker.output.count("Redis reachable again") == 1, worker.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_redis_host_port_and_password_and_a_wrong_password(migrated: Settings, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis", password="s3cr3t-pw") as server:
        env = worker_env(
            migrated,
            REDIS_URL="",
            REDIS_HOST="127.0.0.1",
            REDIS_PORT=str(server.port),
            REDIS_PASSWORD="s3cr3t-pw",
        )
        settings = migrated.replace(redis_url=SecretStr(f"redis://:s3cr3t-pw@127.0.0.1:{server.port}"))
        with WorkerProcess(env) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING)
            async with job_events(settings) as events, opened_queue(settings.redis, settings.queue) as queue:
                job = await queue.add("kpi-export", {"usuarioId": 9})
                outcome, _ = await events.finished(job.id)
            worker.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(worker.wait, 15) == 0
        refused = run_kpi_export({**env, "REDIS_PASSWORD": "wrong-pw"}, "worker")
    assert outcome == "completed"
    assert "s3cr3t-pw" not in worker.output
    assert refused.returncode == 1
    assert f"Cannot start: Redis at redis://127.0.0.1:{server.port} refused the worker" in refused.stderr
    assert "wrong-pw" not in refused.stdout + refused.stderr


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A Redis that speaks only TLS, with a certificate of a private CA: (port, CA file)."""
    server_binary, openssl = require_tool("redis-server", "redis-server"), require_tool("openssl", "openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [
            server_binary,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), socket_connect_timeout=0.5
        )

        def answers() -> bool:
            if process.poll() is not None:
                pytest.fail("the TLS redis-server did not start")
            return bool(client.ping())

        try:
            wait_for(answers, 10, "the TLS redis-server")
        finally:
            client.close()
        yield port, cert
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_rediss_url_reaches_redis_over_tls(migrated: Settings, tls_redis: tuple[int, Path]) -> None:
    port, ca = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    settings = migrated.replace(redis_url=SecretStr(url))
    async with (
        job_events(settings) as events,
        opened_queue(settings.redis, settings.queue) as queue,
        running_worker(settings),
    ):
        job = await queue.add("kpi-export", {"usuarioId": 11, "ip": "10.0.0.11"})
        outcome, result = await events.finished(job.id)
    rows = await audit_rows(settings)
    assert (outcome, result) == ("completed", {"idExport": rows[0].idExport})


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_redis_lost_as_the_processing_loop_starts_is_waited_for(
    migrated: Settings, redis_url: str
) -> None:
    """bullmq's run() names its Redis connections before its error handling starts: Redis lost at that very
    moment must not end the loop."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with RedisFaultProxy(port) as proxy:
        proxy.cut = lambda command: command[:2] == [b"CLIENT", b"SETNAME"]
        settings = migrated.replace(redis_url=SecretStr(proxy.url))
        with WorkerProcess(worker_env(settings)) as worker:
            await asyncio.to_thread(worker.wait_for_line, LISTENING)

            # redis-py retries a command 3 times on a new connection: more cuts than that are retries of ours.
            async def retried() -> bool:
                return proxy.cuts >= 12 or worker.process.poll() is not None

            await wait_until(retried, timeout=20, what="retries of naming the connections")
            assert worker.process.poll() is None, worker.output
            proxy.cut = lambda _command: False
            async with job_events(migrated) as events, opened_queue(migrated.redis, migrated.queue) as queue:
                job = await queue.add("kpi-export", {"usuarioId": 6, "ip": "10.0.0.6"})
                outcome, _ = await events.finished(job.id, timeout=20)
            worker.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(worker.wait, 15)
    assert outcome == "completed"
    assert status == 0, worker.output
    assert "stopped unexpectedly" not in worker.output


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_stop_while_the_database_does_not_answer_at_start_is_immediate(migrated: Settings) -> None:
    url = migrated.database.url.get_secret_value()
    async with TcpFaultProxy(5432) as proxy:
        proxy.stalled = True  # connections open, nothing comes back
        silent = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        with WorkerProcess(worker_env(migrated, DATABASE_URL=silent)) as worker:

            async def asking() -> bool:
                return proxy.connections > 0

            await wait_until(asking, what="the worker to ask the database")
            status, took = await asyncio.to_thread(worker.stop, signal.SIGTERM, 15)
    assert status == 0, worker.output
    # Of its own doing (WorkerProcess.stop): not the connect timeout (10 s), nor a wait on the stuck check.
    assert took < 2, took
