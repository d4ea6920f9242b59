"""Chaos: several worker processes on one queue while jobs flow, and the faults an operator meets: kill -9,
a PostgreSQL restart, a Redis restart, a stop during a burst. After each: every job completed once, one row
per job, nothing left active.

CI runs them at --chaos-jobs 1000 (the default); by hand: --chaos-jobs 20000 --chaos-kill-every 2 (see README)."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from kpi_export.config import Settings
from tests.embedded_redis import EmbeddedRedis
from tests.flow import add_jobs, assert_exactly_once, counts, wait_all_finished
from tests.pgcluster import PostgresCluster
from tests.services import worker_env
from tests.support import LISTENING, WorkerProcess, wait_until

pytestmark = pytest.mark.chaos

LOCK_DURATION = 3  # seconds before a killed worker's jobs are taken over


@dataclass
class Fleet:
    """Worker processes on one queue; every process ever started is kept, for its output."""

    env: dict[str, str]
    running: list[WorkerProcess] = field(default_factory=list)
    started: list[WorkerProcess] = field(default_factory=list)
    kills: int = 0

    def start(self) -> WorkerProcess:
        worker = WorkerProcess(self.env)
        self.running.append(worker)
        self.started.append(worker)
        return worker

    def kill_one(self, rng: random.Random) -> None:
        """kill -9 a worker chosen at random among those taking jobs, and start its replacement."""
        ready = [worker for worker in self.running if any(LISTENING in line for line in worker.lines[:3])]
        if not ready:  # every replacement still starting: nothing to kill this time
            return
        victim = rng.choice(ready)
        victim.process.send_signal(signal.SIGKILL)
        victim.wait(10)
        self.running.remove(victim)
        self.kills += 1
        self.start()

    def stop_all(self) -> list[int]:
        """SIGTERM to every running worker, once each has started: a replacement started just before would
        otherwise be signalled while Python itself starts, before any handler can exist, and die of the
        signal (-15; a clean stop to systemd and Kubernetes, but not the exit status these tests check)."""
        for worker in self.running:
            if worker.process.poll() is None:
                worker.wait_for_line(LISTENING, 60)
        for worker in self.running:
            worker.process.send_signal(signal.SIGTERM)
        return [worker.wait(30) for worker in self.running]

    def kill_all(self) -> None:
        for worker in self.started:
            worker.kill()

    def count(self, text: str) -> int:
        return sum(worker.output.count(text) for worker in self.started)

    def errors(self) -> list[str]:
        return [line for w in self.started for line in w.lines if "ERROR" in line or "Traceback" in line]


def chaos_env(settings: Settings) -> dict[str, str]:
    # The default retention keeps every completed job for a day: the checks read them all.
    return worker_env(settings, LOCK_DURATION=str(LOCK_DURATION), WORKER_CONCURRENCY="4")


@pytest.fixture
def fleet_env(migrated: Settings) -> dict[str, str]:
    return chaos_env(migrated)


@pytest.fixture
def chaos_jobs(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--chaos-jobs"))


def report(what: str, **figures: object) -> None:
    """One line for the record (shown with -s)."""
    print(f"\n[chaos] {what}: " + ", ".join(f"{name}={value}" for name, value in figures.items()))


@pytest.fixture
def fleet(fleet_env: dict[str, str]) -> Iterator[Fleet]:
    workers = Fleet(fleet_env)
    try:
        yield workers
    finally:
        workers.kill_all()


async def started(fleet: Fleet, count: int) -> None:
    for _ in range(count):
        fleet.start()
    for worker in fleet.running:
        await asyncio.to_thread(worker.wait_for_line, LISTENING, 60)


async def slow_inserts(settings: Settings, seconds: float) -> None:
    """Each insert into the audit table takes `seconds` more, inside its transaction (a loaded database), so
    that a kill finds jobs in flight: their insert not yet committed, or committed and not yet in Redis."""
    base, schema = settings.database.url.get_secret_value().split("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    try:
        await conn.execute(
            f"""
            CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({seconds}); RETURN NEW; END $$;
            CREATE TRIGGER slow_insert AFTER INSERT ON kpi_auditoria_export
                FOR EACH ROW EXECUTE FUNCTION slow_insert();
            """
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_kill_9_of_one_worker_every_few_seconds_while_jobs_flow(
    migrated: Settings, fleet: Fleet, chaos_jobs: int, request: pytest.FixtureRequest
) -> None:
    every = float(request.config.getoption("--chaos-kill-every"))
    rng = random.Random(chaos_jobs)
    await slow_inserts(migrated, 0.05)
    begin = time.monotonic()
    await started(fleet, 3)
    # About 100 jobs/s, below what the fleet can do: the kills fall on a steady flow, for chaos_jobs / 100 s.
    feeding = asyncio.create_task(add_jobs(migrated, chaos_jobs, pause=0.1, batch_size=10))

    async def all_finished() -> bool:
        state = await counts(migrated)
        return state["completed"] + state["failed"] >= chaos_jobs

    while not (feeding.done() and await all_finished()):
        # At random moments, `every` seconds apart on average: a fixed period could keep falling on the
        # same phase of the flow (between two batches, when no job is in flight).
        await asyncio.sleep(rng.uniform(0.5, 1.5) * every)
        if not (feeding.done() and await all_finished()):
            fleet.kill_one(rng)
    await feeding
    elapsed = time.monotonic() - begin
    statuses = fleet.stop_all()
    jobs = await assert_exactly_once(migrated, chaos_jobs)
    taken_over = sum(1 for job in jobs.values() if job["stc"])
    report(
        "kill -9",
        jobs=chaos_jobs,
        kills=fleet.kills,
        workers_started=len(fleet.started),
        jobs_taken_over_after_a_kill=taken_over,
        most_stalls_of_one_job=max(int(job["stc"] or 0) for job in jobs.values()),
        seconds=round(elapsed, 1),
    )
    assert statuses == [0, 0, 0]
    assert fleet.kills >= 3
    assert taken_over > 0  # the kills did hit jobs in flight
    assert fleet.errors() == []


@pytest.mark.parametrize("database_url", ["private_postgresql"], indirect=True)
async def test_a_postgresql_restart_in_the_middle_of_a_run(
    migrated: Settings, fleet: Fleet, chaos_jobs: int, postgres_cluster: PostgresCluster
) -> None:
    await started(fleet, 2)
    feeding = asyncio.create_task(add_jobs(migrated, chaos_jobs, pause=0.2))

    async def a_third_done() -> bool:
        return (await counts(migrated))["completed"] >= chaos_jobs // 3

    await wait_until(a_third_done, timeout=120, what="a third of the jobs")
    postgres_cluster.restart()
    await feeding
    await wait_all_finished(migrated, chaos_jobs, timeout=120 + chaos_jobs / 20)
    statuses = fleet.stop_all()
    jobs = await assert_exactly_once(migrated, chaos_jobs)
    retried_attempts = sum(1 for job in jobs.values() if job["atm"] != "1")
    report("PostgreSQL restart", jobs=chaos_jobs, jobs_that_needed_a_second_attempt=retried_attempts)
    assert statuses == [0, 0]
    assert retried_attempts == 0  # the jobs in flight were retried inside their DB_RETRY_WINDOW
    assert fleet.count("Transient database fault") >= 1  # the restart did hit jobs in flight
    assert fleet.errors() == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_redis_restart_in_the_middle_of_a_run(
    migrated: Settings, chaos_jobs: int, tmp_path: Path
) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)  # jobs in Redis survive the restart
    server.start()
    settings = migrated.replace(redis_url=SecretStr(server.url))
    fleet = Fleet(chaos_env(settings))
    try:
        await add_jobs(settings, chaos_jobs)
        await started(fleet, 2)

        async def a_third_done() -> bool:
            return (await counts(settings))["completed"] >= chaos_jobs // 3

        await wait_until(a_third_done, timeout=120, what="a third of the jobs")
        server.stop()
        server.start()
        await wait_all_finished(settings, chaos_jobs, timeout=120 + chaos_jobs / 20)
        statuses = fleet.stop_all()
        jobs = await assert_exactly_once(settings, chaos_jobs)
    finally:
        fleet.kill_all()
        server.stop()
    report("Redis restart", jobs=chaos_jobs, jobs_run_again=sum(1 for job in jobs.values() if job["stc"]))
    assert statuses == [0, 0]
    for worker in fleet.started:  # at most one line each way per outage
        assert (
            worker.output.count("Redis connection lost") == worker.output.count("Redis reachable again") <= 1
        )
    assert fleet.errors() == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGTERM twice"])
async def test_a_stop_during_a_burst_leaves_every_job_completed_or_to_the_next_worker(
    migrated: Settings, fleet: Fleet, chaos_jobs: int, stop: str
) -> None:
    await add_jobs(migrated, chaos_jobs)
    await started(fleet, 1)
    first = fleet.running[0]

    async def a_quarter_done() -> bool:
        return (await counts(migrated))["completed"] >= chaos_jobs // 4

    await wait_until(a_quarter_done, timeout=120, what="a quarter of the jobs")
    begin = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    if stop == "SIGTERM twice":
        await asyncio.to_thread(first.wait_for_line, "SIGTERM: finishing")
        first.process.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(first.wait, 40)
    stopped_after = time.monotonic() - begin
    fleet.running.remove(first)
    left = await counts(migrated)
    await started(fleet, 1)  # the follow-up worker
    await wait_all_finished(migrated, chaos_jobs, timeout=120 + chaos_jobs / 20)
    statuses = fleet.stop_all()
    await assert_exactly_once(migrated, chaos_jobs)
    report(f"{stop} during a burst", jobs=chaos_jobs, at_the_stop=left, stopped_after=round(stopped_after, 1))
    assert status == 0 and statuses == [0]
    assert stopped_after < 10 + 3  # SHUTDOWN_TIMEOUT (10 s here) and a little
    assert left["failed"] == 0 and left["completed"] + left["active"] + left["wait"] == chaos_jobs
    if stop == "SIGTERM":
        assert left["active"] == 0, left  # the jobs in flight finished before the worker stopped
    assert fleet.errors() == []
