"""How long `audit reconcile` and `--repair` take on a million kept jobs (docs/operating/restore.md).

    python -m bench.reconcile_speed --jobs 1000000 --lost 100000 \
        [--database-url postgresql://postgres@127.0.0.1:5432/test]

Starts a private Redis and fills its completed set with job hashes in BullMQ's format (one pipeline), fills
a PostgreSQL schema of its own with their rows (COPY), less the newest `--lost` ones, with the id sequence
where a backup would have left it; then times `kpi-export audit reconcile`, `--repair` and a second
`reconcile`, each as the command runs, and prints their peak RSS. The schema and the Redis are gone at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import redis
from tests.embedded_redis import EmbeddedRedis

from kpi_export.contract import idempotency_key
from kpi_export.store import opened_engine
from kpi_export.store.schema import upgrade
from kpi_export.store.url import parse_database_url

QUEUE = "kpi-export-queue"
PREFIX = "bull"
STARTED_MS = 1_796_000_000_000
BATCH = 20_000


def data(n: int) -> dict[str, object]:
    return {
        "usuarioId": n % 5000 + 1,
        "ip": f"203.0.{n % 256}.{n % 199 + 1}",
        "filters": {"kpis": ["ventas", "margen"], "desde": "2026-01-01", "n": n},
        "format": "xlsx",
    }


def fill_redis(client: redis.Redis, jobs: int) -> None:
    base = f"{PREFIX}:{QUEUE}"
    for first in range(1, jobs + 1, BATCH):
        pipe = client.pipeline(transaction=False)
        scores = {}
        for n in range(first, min(first + BATCH, jobs + 1)):
            processed = STARTED_MS + n * 10
            pipe.hset(
                f"{base}:{n}",
                mapping={
                    "name": "kpi-export",
                    "data": json.dumps(data(n)),
                    "opts": '{"attempts":1}',
                    "timestamp": processed - 5,
                    "delay": 0,
                    "priority": 0,
                    "atm": 1,
                    "processedOn": processed,
                    "finishedOn": processed + 3,
                    "returnvalue": json.dumps({"idExport": n}),
                },
            )
            scores[str(n)] = processed + 3
        pipe.zadd(f"{base}:completed", scores)
        pipe.execute()
    client.set(f"{base}:id", jobs)


def rows(first: int, last: int) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = []
    for n in range(first, last + 1):
        processed = STARTED_MS + n * 10
        found.append(
            (
                n,
                data(n)["usuarioId"],
                data(n)["ip"],
                json.dumps(data(n)["filters"]),
                "xlsx",
                0,
                datetime.fromtimestamp((processed + 1) / 1000, UTC).replace(tzinfo=None),
                idempotency_key(f"{PREFIX}:{QUEUE}", str(n), processed - 5),
            )
        )
    return found


def timed(env: dict[str, str], *args: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "kpi_export", "audit", "reconcile", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr)
    return seconds, json.loads(done.stdout)


async def main(jobs: int, lost: int, url: str) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder)) as server:
            client = redis.Redis(port=server.port)
            started = time.perf_counter()
            fill_redis(client, jobs)
            print(
                f"Redis: {jobs:,} completed jobs in {time.perf_counter() - started:.0f} s, "
                f"{client.info('memory')['used_memory'] / 2**20:,.0f} MB"
            )
            target = parse_database_url(f"{url}?schema={schema}")
            async with opened_engine(target) as engine:
                await upgrade(engine)
            conn = await asyncpg.connect(url, server_settings={"search_path": schema})
            kept = jobs - lost
            for first in range(1, kept + 1, 100_000):
                await conn.copy_records_to_table(
                    "kpi_auditoria_export",
                    records=rows(first, min(first + 99_999, kept)),
                    columns=[
                        "idExport",
                        "usuarioId",
                        "ip",
                        "filters",
                        "format",
                        "codigoEstado",
                        "createdAt",
                        "idempotencyKey",
                    ],
                )
            await conn.execute(
                "SELECT setval(pg_get_serial_sequence('kpi_auditoria_export', 'idExport'), $1)", kept
            )
            await conn.execute("ANALYZE kpi_auditoria_export")
            await conn.close()
            env = {
                **os.environ,
                "REDIS_URL": server.url,
                "DATABASE_URL": f"{url}?schema={schema}",
                "QUEUE_NAME": QUEUE,
            }
            for label, args in (("reconcile", ()), ("--repair", ("--repair",)), ("reconcile", ())):
                seconds, found = timed(env, *args)
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
                missing = found["missing"]["count"]  # type: ignore[index]
                repaired = found.get("repaired", {}).get("count", "-")  # type: ignore[attr-defined]
                print(
                    f"{label:10} {seconds:7.1f} s  {jobs / seconds:9,.0f} jobs/s  missing {missing:,}  "
                    f"repaired {repaired}  peak RSS so far {peak:,.0f} MB"
                )
            client.close()
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--lost", type=int, default=100_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.lost, args.database_url))
