"""Where a run's jobs and rows live: a queue of its own on the shared Redis, and a PostgreSQL schema or a
SQLite file of its own, removed afterwards."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from pydantic import SecretStr
from sqlalchemy import text
from tests.prisma import PRISMA_POSTGRES  # the original's table: what the Node baseline writes to

from kpi_export.config import Settings
from kpi_export.store import create_engine
from kpi_export.store.schema import upgrade


@dataclass(frozen=True)
class Place:
    """One run's queue and database."""

    redis_url: str
    database_url: str
    queue: str
    schema: str | None = None  # PostgreSQL
    sqlite_file: Path | None = None

    def settings(self) -> Settings:
        return Settings.of(
            redis_url=SecretStr(self.redis_url),
            database_url=SecretStr(self.database_url),
            queue_name=self.queue,
        )


async def make_place(
    redis_url: str, database: str, postgres_url: str, workdir: Path, *, prisma_table: bool
) -> Place:
    """A fresh queue and table: made by this project's migrations, or by the original's SQL."""
    tag = uuid.uuid4().hex[:10]
    queue = f"bench-{tag}"
    if database == "postgresql":
        schema = f"bench_{tag}"
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            if prisma_table:
                await conn.execute(f'SET search_path TO "{schema}"')
                await conn.execute(PRISMA_POSTGRES)
        finally:
            await conn.close()
        place = Place(redis_url, f"{postgres_url}?schema={schema}", queue, schema=schema)
    else:
        if prisma_table:
            raise ValueError("the Node baseline runs on PostgreSQL only (@prisma/adapter-pg)")
        path = workdir / f"{tag}.db"
        place = Place(redis_url, f"file:{path}", queue, sqlite_file=path)
    if not prisma_table:
        engine = create_engine(place.settings().database.target)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
    return place


async def remove_place(place: Place, postgres_url: str) -> None:
    client = aioredis.Redis.from_url(place.redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"bull:{place.queue}:*", count=5000)]
        for start in range(0, len(keys), 5000):
            await client.delete(*keys[start : start + 5000])
    finally:
        await client.aclose()
    if place.schema:
        conn = await asyncpg.connect(postgres_url)
        try:
            await conn.execute(f'DROP SCHEMA "{place.schema}" CASCADE')
        finally:
            await conn.close()
    if place.sqlite_file:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{place.sqlite_file}{suffix}").unlink(missing_ok=True)


async def audit_rows(place: Place) -> dict[int, tuple[int, str]]:
    """idExport -> (usuarioId, format) for every row of the run's table."""
    engine = create_engine(place.settings().database.target)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(
                text('SELECT "idExport", "usuarioId", "format" FROM kpi_auditoria_export')
            )
            rows: list[Any] = list(result.all())
    finally:
        await engine.dispose()
    return {int(row[0]): (int(row[1]), str(row[2])) for row in rows}
