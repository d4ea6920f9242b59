"""The queue's commands start light: they never open the database, so they import neither SQLAlchemy nor a
driver (DATABASE_URL is not even parsed), nor the worker's side of the bullmq adapter, nor the other commands.
A guard on what is imported, not on time: the machine that runs the suite is shared."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from tests.services import worker_env
from tests.support import invoke, run_kpi_export

# Runs the command as the console script does, then names what it imported of HEAVY.
PROBE = """
import json
import sys
from kpi_export.cli import main
sys.argv = ["kpi-export", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    assert not stop.code, stop.code
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in HEAVY or name in HEAVY)), file=sys.stderr)
"""
HEAVY = {
    "sqlalchemy",
    "alembic",
    "asyncpg",
    "aiomysql",
    "aiosqlite",
    "rich.progress",
    "kpi_export.bullmq.consumer",
    "kpi_export.bullmq.worker",
    "kpi_export.cli.db_commands",
    "kpi_export.cli.integrity_commands",
    "kpi_export.store.engine",
}


def imported_by(settings: Settings, *args: str) -> list[str]:
    probe = [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}"]
    result = run_kpi_export(worker_env(settings), *args, command=probe)
    assert result.returncode == 0, result.stdout + result.stderr
    found: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_the_queue_commands_import_no_database_library(settings: Settings) -> None:
    async with opened_queue(settings.redis, settings.queue) as queue:
        job = await queue.add("kpi-export", {"usuarioId": 1})
    for args in (["stats"], ["jobs", "--state", "waiting"], ["job", str(job.id)]):
        assert await asyncio.to_thread(imported_by, settings, *args) == [], args


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_bad_database_url_stops_only_the_commands_that_use_the_database(settings: Settings) -> None:
    env = {"DATABASE_URL": "mongodb://app:hunter2@db/kpis"}
    assert (await invoke(settings, "stats", env=env)).exit_code == 0
    refused = await invoke(settings, "audit", "list", env=env)
    assert refused.exit_code == 2 and "invalid DATABASE_URL: has an unsupported scheme" in refused.stderr
    assert "hunter2" not in refused.output
