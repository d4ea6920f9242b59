"""One measurement: a backlog (throughput, CPU per job), then a steady stream (latency), then the check that
every job gave exactly the row and the result it should."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

import redis.asyncio as aioredis

from bench.netdelay import DelayProxy
from bench.targets import Place, audit_rows, make_place, remove_place
from bench.workers import Contender, RunningWorker
from kpi_export.bullmq import create_queue
from kpi_export.demo.samples import sample_jobs

JOB_NAME = "kpi-export"
ADD_CHUNK = 1000


class BenchError(RuntimeError):
    """A run did not give what it must (a job not completed, a row missing or wrong); the bench stops."""


@dataclass(frozen=True)
class Plan:
    redis_url: str
    postgres_url: str
    workdir: Path
    rtt_ms: float | None = None  # a delay proxy (netdelay.py) between the worker and Redis and PostgreSQL


@dataclass(frozen=True)
class Measurement:
    contender: str
    database: str
    concurrency: int
    backlog_jobs: int
    throughput: float  # jobs/s, first pick-up to last completion
    cpu_ms_per_job: float  # user + system CPU of the worker's process(es) over the backlog
    stream_rate: float  # jobs/s added
    stream_jobs: int
    p50_ms: float | None  # added -> finished, on the stream
    p99_ms: float | None
    peak_rss_mb: float  # over the whole run
    # Through a delay proxy: its round-trip time, and the worker's round trips to Redis and to the database
    # over the backlog, per job.
    redis_trips_per_job: float | None = None
    db_trips_per_job: float | None = None
    rtt_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def measure(
    plan: Plan,
    contender: Contender,
    database: str,
    concurrency: int,
    backlog: int,
    stream_rate: float,
    stream_seconds: float,
    seed: int,
    warmup: int = 0,
) -> Measurement:
    place = await make_place(
        plan.redis_url, database, plan.postgres_url, plan.workdir, prisma_table=contender.runtime == "node"
    )
    log = plan.workdir / f"{contender.name}-{database}-c{concurrency}-{place.queue}.log"
    settings = place.settings()
    queue = create_queue(settings.redis, settings.queue)
    worker: RunningWorker | None = None
    network = contextlib.ExitStack()
    try:
        redis_proxy, db_proxy, worker_place = _network(network, plan, place)
        # Warm-up, not measured: a worker runs for days, and Node's JIT (V8) takes thousands of jobs to
        # reach its speed; a cold run would measure the compiler.
        warm_jobs = dict(await _add_paused(queue, sample_jobs(warmup, seed=seed + 1000)))
        worker = RunningWorker(contender, worker_place, concurrency, log)
        await asyncio.to_thread(worker.wait_ready)
        if warm_jobs:
            await queue.resume()
            await _wait_finished(place, len(warm_jobs), timeout=60 + warmup / 20)
        backlog_jobs = dict(await _add_paused(queue, sample_jobs(backlog, seed=seed)))
        cpu_before = worker.cpu_seconds()
        trips_before = _trips(redis_proxy), _trips(db_proxy)
        await queue.resume()
        await _wait_finished(place, len(warm_jobs) + len(backlog_jobs), timeout=60 + backlog / 20)
        cpu_backlog = worker.cpu_seconds() - cpu_before
        redis_trips, db_trips = _trips(redis_proxy) - trips_before[0], _trips(db_proxy) - trips_before[1]
        pick_up, done, _ = await _timings(place, list(backlog_jobs))
        throughput = len(backlog_jobs) / max((max(done) - min(pick_up)) / 1000, 0.001)

        # Below saturation: at most half of what this worker did on the backlog.
        rate = min(stream_rate, throughput / 2)
        stream_count = int(rate * stream_seconds)
        stream_data = sample_jobs(stream_count, seed=seed + 1)
        gc.disable()  # a collection in the producer would add its pause to the latencies measured
        try:
            stream_jobs = await _stream(queue, stream_data, rate)
        finally:
            gc.enable()
        await _wait_finished(
            place, len(warm_jobs) + len(backlog_jobs) + len(stream_jobs), timeout=60 + stream_seconds * 2
        )
        _, finished, added = await _timings(place, list(stream_jobs))
        latencies = [f - a for f, a in zip(finished, added, strict=True)]
        peak_rss = worker.peak_rss_mb()
        status = await asyncio.to_thread(worker.stop)
        if status != 0:
            raise BenchError(f"{contender.name} exited {status} after SIGTERM: see {log}")
        if not contender.noop:  # the no-op writes no row and returns nothing: completed is all it does
            await _check(place, warm_jobs | backlog_jobs | stream_jobs)
    except BaseException:
        if worker is not None and worker.process.poll() is None:
            await asyncio.to_thread(worker.stop)
        raise
    finally:
        network.close()
        await queue.close()
        await remove_place(place, plan.postgres_url)
    log.unlink(missing_ok=True)  # kept only when the run failed
    p50, p99 = _percentiles(latencies)
    return Measurement(
        contender=contender.name,
        database=database,
        concurrency=concurrency,
        backlog_jobs=len(backlog_jobs),
        throughput=round(throughput, 1),
        cpu_ms_per_job=round(cpu_backlog * 1000 / len(backlog_jobs), 3),
        stream_rate=round(rate, 1),
        stream_jobs=len(stream_jobs),
        p50_ms=p50,
        p99_ms=p99,
        peak_rss_mb=round(peak_rss, 1),
        redis_trips_per_job=round(redis_trips / len(backlog_jobs), 2) if redis_proxy else None,
        db_trips_per_job=round(db_trips / len(backlog_jobs), 2) if db_proxy else None,
        rtt_ms=plan.rtt_ms,
    )


def _network(
    stack: contextlib.ExitStack, plan: Plan, place: Place
) -> tuple[DelayProxy | None, DelayProxy | None, Place]:
    """Through a network (--rtt-ms, --network-rtt-ms), the place as the worker sees it: Redis and PostgreSQL
    behind delay proxies."""
    if plan.rtt_ms is None:
        return None, None, place
    redis_parts, db_parts = urlsplit(place.redis_url), urlsplit(place.database_url)
    redis_proxy = stack.enter_context(
        DelayProxy(redis_parts.hostname or "127.0.0.1", redis_parts.port or 6379, rtt_ms=plan.rtt_ms)
    )
    db_proxy = None
    worker_place = replace(place, redis_url=_via(redis_parts, redis_proxy.port))
    if place.schema is not None:
        db_proxy = stack.enter_context(
            DelayProxy(db_parts.hostname or "127.0.0.1", db_parts.port or 5432, rtt_ms=plan.rtt_ms)
        )
        worker_place = replace(worker_place, database_url=_via(db_parts, db_proxy.port))
    return redis_proxy, db_proxy, worker_place


def _via(parts: SplitResult, port: int) -> str:
    """The URL with 127.0.0.1:`port` for its host and port, credentials kept."""
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _trips(proxy: DelayProxy | None) -> int:
    return proxy.counts.snapshot()[0] if proxy is not None else 0


async def _add_paused(queue: Any, payloads: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The backlog, added while the queue is paused, so that the worker starts on all of it at once."""
    await queue.pause()
    added: list[tuple[str, dict[str, Any]]] = []
    for start in range(0, len(payloads), ADD_CHUNK):
        chunk = payloads[start : start + ADD_CHUNK]
        jobs = await queue.addBulk([{"name": JOB_NAME, "data": data} for data in chunk])
        added += [(str(job.id), data) for job, data in zip(jobs, chunk, strict=True)]
    return added


async def _stream(queue: Any, payloads: list[dict[str, Any]], rate: float) -> dict[str, dict[str, Any]]:
    """One job every 1/rate seconds, on a fixed schedule (a late add does not push the next ones back)."""
    started = time.monotonic()
    added: dict[str, dict[str, Any]] = {}
    for index, data in enumerate(payloads):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        job = await queue.add(JOB_NAME, data)
        added[str(job.id)] = data
    return added


async def _wait_finished(place: Place, count: int, timeout: float) -> None:
    client = aioredis.Redis.from_url(place.redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            completed = await client.zcard(f"bull:{place.queue}:completed")
            failed = await client.zcard(f"bull:{place.queue}:failed")
            if failed:
                raise BenchError(f"{failed} job(s) failed on queue {place.queue}")
            if completed >= count:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"only {completed} of {count} jobs completed within {timeout:.0f} s")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def _fields(place: Place, ids: list[str], *fields: str) -> list[list[str | None]]:
    client = aioredis.Redis.from_url(place.redis_url, decode_responses=True)
    try:
        values: list[list[str | None]] = []
        for start in range(0, len(ids), 5000):
            pipe = client.pipeline(transaction=False)
            for job_id in ids[start : start + 5000]:
                pipe.hmget(f"bull:{place.queue}:{job_id}", list(fields))
            values += await pipe.execute()
        return values
    finally:
        await client.aclose()


async def _timings(place: Place, ids: list[str]) -> tuple[list[int], list[int], list[int]]:
    """processedOn, finishedOn and timestamp (added) of each job, in ms."""
    rows = await _fields(place, ids, "processedOn", "finishedOn", "timestamp")
    return (
        [int(row[0] or 0) for row in rows],
        [int(row[1] or 0) for row in rows],
        [int(row[2] or 0) for row in rows],
    )


def expected_row(data: dict[str, Any]) -> tuple[int, str]:
    """(usuarioId, format) that a valid sample job must give."""
    return int(float(str(data["usuarioId"]).strip())), (
        str(data.get("format") or "").strip().lower() or "csv"
    )


async def _check(place: Place, jobs: dict[str, dict[str, Any]]) -> None:
    """Every job completed, with progress = result = {"idExport": N}, N a row of its own matching its data."""
    ids = list(jobs)
    results = await _fields(place, ids, "returnvalue", "progress", "finishedOn")
    rows = await audit_rows(place)
    problems: list[str] = []
    if len(rows) != len(jobs):
        problems.append(f"{len(jobs)} jobs gave {len(rows)} rows")
    claimed: set[int] = set()
    for job_id, (returnvalue, progress, finished_on) in zip(ids, results, strict=True):
        if not finished_on or returnvalue is None:
            problems.append(f"job {job_id} did not complete")
            continue
        result = json.loads(returnvalue)
        id_export = result.get("idExport") if isinstance(result, dict) else None
        if not isinstance(id_export, int) or json.loads(progress or "null") != result:
            problems.append(f"job {job_id}: result {returnvalue}, progress {progress}")
            continue
        if id_export in claimed:
            problems.append(f"job {job_id}: idExport {id_export} is another job's")
        claimed.add(id_export)
        if rows.get(id_export) != expected_row(jobs[job_id]):
            problems.append(
                f"job {job_id}: row {id_export} is {rows.get(id_export)}, not {expected_row(jobs[job_id])}"
            )
    if problems:
        raise BenchError(f"{len(problems)} problem(s) on queue {place.queue}: " + "; ".join(problems[:5]))


def _percentiles(values: list[int]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 1), round(cuts[98], 1)
