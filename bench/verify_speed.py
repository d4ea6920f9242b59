"""How long `audit seal` and `audit verify` take over a large table (README, "Audit integrity").

    python -m bench.verify_speed --rows 10000000 [--database-url postgresql://postgres@127.0.0.1:5432/test]

Fills a schema of its own with rows shaped as the worker writes them (PostgreSQL's generate_series, so the
fill is not what is measured), seals them, verifies them, prints rows per second, and drops the schema.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid

import asyncpg

from kpi_export.integrity import SealKey
from kpi_export.integrity.sealer import seal_pending
from kpi_export.integrity.verifier import verify
from kpi_export.store import opened_engine
from kpi_export.store.schema import upgrade
from kpi_export.store.url import parse_database_url

FILL = """
INSERT INTO kpi_auditoria_export ("usuarioId", ip, filters, format, "createdAt", "idempotencyKey")
SELECT n % 5000 + 1, '203.0.' || (n % 256) || '.' || (n % 199 + 1),
       jsonb_build_object('kpis', jsonb_build_array('ventas', 'margen'), 'desde', '2026-01-01', 'n', n),
       'xlsx', timestamp '2026-01-01' + n * interval '1 millisecond', md5(n::text) || md5((n + 1)::text)
FROM generate_series($1::int, $2::int) AS n
"""


async def main(rows: int, url: str) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        target = parse_database_url(f"{url}?schema={schema}")
        async with opened_engine(target) as engine:
            await upgrade(engine)
            conn = await asyncpg.connect(url, server_settings={"search_path": schema})
            for first in range(1, rows + 1, 1_000_000):
                await conn.execute(FILL, first, min(first + 999_999, rows))
            await conn.execute("ANALYZE kpi_auditoria_export")
            await conn.close()
            key = SealKey("bench-seal-key-" + "0" * 32)
            started = time.perf_counter()
            sealed = await seal_pending(engine, key, min_age=0, actor="bench")
            seal_seconds = time.perf_counter() - started
            started = time.perf_counter()
            report = await verify(engine, key)
            verify_seconds = time.perf_counter() - started
        assert report.clean and report.rows_checked == rows, report.findings
        print(f"rows {rows:,}: {len(sealed)} seals")
        print(f"seal   {seal_seconds:8.1f} s  {rows / seal_seconds:10,.0f} rows/s")
        print(f"verify {verify_seconds:8.1f} s  {rows / verify_seconds:10,.0f} rows/s")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.database_url))
