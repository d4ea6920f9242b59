"""A database restored from a dump taken mid-run, while the queue keeps going: the worker does not hand out a
lost id again, `audit reconcile` finds exactly the rows the restore lost, `--repair` puts them back with their
ids and times, recorded in the seal chain, and `audit verify` passes.

Jobs come from npm bullmq (as the web application adds them); the first ones are consumed by the Node
original (rows without an idempotency key), the rest by this worker, sealing as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from kpi_export.bullmq import opened_queue
from kpi_export.config import Settings
from kpi_export.integrity.reconcile import MAX_LISTED, ms_to_utc
from kpi_export.store import audit_table, opened_engine
from tests.faults import TcpFaultProxy
from tests.interop.node import Produced, add, original_worker, produce
from tests.pgcluster import PostgresCluster, postgres_bin
from tests.services import unavailable, worker_env
from tests.support import LISTENING, WorkerProcess, audit_rows, run_kpi_export, wait_until

SEAL_KEY = "restore-test-seal-key-0123456789abcdef"
SEALING = {"AUDIT_SEAL_KEY": SEAL_KEY, "AUDIT_SEAL_INTERVAL": "1", "AUDIT_SEAL_MIN_AGE": "0"}


def job_data(n: int) -> dict[str, Any]:
    return {
        "usuarioId": n + 1,
        "ip": f"203.0.113.{n % 250 + 1}",
        "filters": {"area": "ventas", "n": n},
        "format": ["xlsx", "csv", "pdf"][n % 3],
    }


def bulk(first: int, last: int) -> list[dict[str, Any]]:
    return [{"addBulk": [add(job_data(n))["add"] for n in range(first, last)]}, {"wait": True}]


def env_of(settings: Settings) -> dict[str, str]:
    return worker_env(settings, **SEALING)


def cli_json(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    done = run_kpi_export(env_of(settings), *args, "--json", timeout=300)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


class Dump:
    """A dump of the test's database, as an operator takes one: pg_dump, mariadb-dump, a SQLite backup."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.url = settings.database.url.get_secret_value()
        self.file = folder / "dump"

    def _pg(self) -> tuple[str, str]:
        base, _, query = self.url.partition("?schema=")
        return base, query

    def _maria(self) -> list[str]:
        parts = urlsplit(self.url)
        return [
            "-h",
            parts.hostname or "127.0.0.1",
            "-P",
            str(parts.port or 3306),
            "-u",
            parts.username or "root",
        ]

    def take(self) -> None:
        if self.url.startswith("postgresql"):
            base, schema = self._pg()
            run(["pg_dump", f"--dbname={base}", "-n", schema, "-Fc", "-f", str(self.file)])
        elif self.url.startswith("mysql"):
            database = urlsplit(self.url).path.lstrip("/")
            with self.file.open("w") as out:
                run(["mariadb-dump", "--single-transaction", *self._maria(), database], stdout=out)
        else:
            _sqlite_copy(self.url.removeprefix("file:"), str(self.file))

    def restore(self) -> None:
        if self.url.startswith("postgresql"):
            base, schema = self._pg()
            run(["psql", base, "-q", "-c", f'DROP SCHEMA "{schema}" CASCADE'])
            run(["pg_restore", f"--dbname={base}", str(self.file)])
            # pg_dump reads a sequence outside its snapshot, when it gets to it: under load, ahead of the
            # table's rows (here, often past every lost id). As a base backup or a standby has it: at the rows.
            table = f'"{schema}"."kpi_auditoria_export"'
            sequence = f"pg_get_serial_sequence('{table}', 'idExport')"
            run(["psql", base, "-q", "-c", f'SELECT setval({sequence}, max("idExport")) FROM {table}'])
        elif self.url.startswith("mysql"):
            database = urlsplit(self.url).path.lstrip("/")
            with self.file.open() as dump:
                run(["mariadb", *self._maria(), database], stdin=dump)
        else:
            _sqlite_copy(str(self.file), self.url.removeprefix("file:"))


def run(command: list[str], **kwargs: Any) -> None:
    subprocess.run(command, check=True, timeout=120, **kwargs)


def _sqlite_copy(source: str, target: str) -> None:
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


async def completed_count(settings: Settings) -> int:
    async with opened_queue(settings.redis, settings.queue, max_connections=1) as queue:
        return int(await queue.client.zcard(queue.toKey("completed")))


async def table_ids(settings: Settings) -> set[int]:
    return {row.idExport for row in await audit_rows(settings)}


def results(*produced: Produced) -> dict[str, dict[str, Any]]:
    """Every completed job the producers saw: id -> its snapshot."""
    found = {}
    for one in produced:
        for job_id in one.added:
            job = one.job(job_id)
            assert job["state"] == "completed", job
            found[job_id] = job
    return found


@pytest.mark.restore
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
async def test_restore_mid_run_then_reconcile_and_repair(
    migrated: Settings, restore_jobs: int, tmp_path: Path
) -> None:
    fifth = max(restore_jobs // 5, 10)
    dump = Dump(migrated, tmp_path)
    async with first_consumer(migrated):
        by_original = await produce(migrated, bulk(0, fifth), timeout=120)
    with WorkerProcess(env_of(migrated)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        running = asyncio.create_task(produce(migrated, bulk(fifth, 3 * fifth), timeout=300))
        # The dump, taken while this worker writes: about two fifths of the jobs in.
        await wait_until(lambda: _at_least(migrated, 2 * fifth), timeout=120)
        await asyncio.to_thread(dump.take)
        before_restore = await running
        assert worker.stop()[0] == 0
    kept = results(by_original, before_restore)
    lost = {job["returnvalue"]["idExport"] for job in kept.values()}
    # The queue keeps going: jobs are added while the database is restored, and wait for the worker.
    after = asyncio.create_task(produce(migrated, bulk(3 * fifth, 5 * fifth), timeout=300))
    await wait_until(lambda: _waiting(migrated), timeout=60)
    await asyncio.to_thread(dump.restore)
    restored = await table_ids(migrated)
    lost -= restored
    assert lost, "the dump holds every row: it was taken too late"
    highest = max(job["returnvalue"]["idExport"] for job in kept.values())
    ids = json.loads(run_kpi_export(env_of(migrated), "check", "--json").stdout)["ids"]
    assert (ids["wentBack"], ids["highestKept"]) == (True, highest) and ids["nextIdExport"] <= highest
    with WorkerProcess(env_of(migrated)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        after_restore = await after
        assert worker.stop()[0] == 0
    assert sum("went back in time" in line for line in worker.lines) == 1, worker.output
    new_ids = [job["returnvalue"]["idExport"] for job in results(after_restore).values()]
    assert min(new_ids) > highest  # no lost id handed out again
    # Where only a row moves the ids (SQLite without AUTOINCREMENT), the worker re-inserted the highest one.
    lost -= await table_ids(migrated)

    # Sealed over the gap first, as the workers' sealing rounds soon are: the rows go back inside seals.
    assert run_kpi_export(env_of(migrated), "audit", "seal").returncode == 0
    status, found = cli_json(migrated, "audit", "reconcile")
    assert status == 1
    assert found["missing"] == {"count": len(lost), "first": sorted(lost)[:MAX_LISTED]}
    assert (found["differs"]["count"], found["taken"]["count"], found["unreadable"]["count"]) == (0, 0, 0)
    assert found["jobs"] == 5 * fifth

    status, repaired = cli_json(migrated, "audit", "reconcile", "--repair")
    assert status == 0, repaired
    assert repaired["repaired"] == {"count": len(lost), "first": sorted(lost)[:MAX_LISTED]}
    assert repaired["recorded"], "the repair is recorded in the seal chain"
    assert all(entry["kind"] == "repair" for entry in repaired["recorded"])
    assert {entry["detail"]["from"] for entry in repaired["recorded"]} == {
        f"Redis: the completed jobs of bull:{migrated.queue.name}"
    }

    every = results(by_original, before_restore, after_restore)
    rows = {row.idExport: row for row in await audit_rows(migrated)}
    for job in every.values():
        row = rows[job["returnvalue"]["idExport"]]
        assert (row.usuarioId, row.format, row.filters) == (
            job["data"]["usuarioId"],
            job["data"]["format"],
            job["data"]["filters"],
        )
        if row.idExport in lost:  # re-inserted with the job's time
            assert row.createdAt == ms_to_utc(job["processedOn"])
    print(
        f"[restore] {migrated.database.target.dialect}: jobs={5 * fifth}, lost={len(lost)}, "
        f"repaired={repaired['repaired']['count']}, repair entries={len(repaired['recorded'])}, "
        f"next id {repaired['nextIdExport']['before']}->{repaired['nextIdExport']['after']}"
    )
    status, again = cli_json(migrated, "audit", "reconcile", "--repair")
    assert status == 0
    assert again["repaired"]["count"] == 0 and again["recorded"] == []
    assert again["nextIdExport"]["before"] == again["nextIdExport"]["after"]
    assert again["equal"] == again["jobs"] == 5 * fifth

    sealed = run_kpi_export(env_of(migrated), "audit", "seal")
    assert sealed.returncode == 0, sealed.stderr
    verified = run_kpi_export(env_of(migrated), "audit", "verify", timeout=300)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "repair recorded in seal" in verified.stdout


@contextlib.asynccontextmanager
async def first_consumer(settings: Settings) -> AsyncIterator[None]:
    """The Node original (its rows have no idempotency key); this worker on SQLite, which the original's
    test double does not write."""
    if not settings.database.target.dialect.startswith("sqlite"):
        async with original_worker(settings):
            yield
        return
    with WorkerProcess(env_of(settings)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        yield
        assert worker.stop()[0] == 0


async def _at_least(settings: Settings, count: int) -> bool:
    return await completed_count(settings) >= count


async def _waiting(settings: Settings) -> bool:
    async with opened_queue(settings.redis, settings.queue, max_connections=1) as queue:
        return int(await queue.client.llen(queue.toKey("wait"))) > 0


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
async def test_a_row_edited_by_hand_is_reported_never_repaired(migrated: Settings) -> None:
    with WorkerProcess(worker_env(migrated)) as worker:
        await asyncio.to_thread(worker.wait_for_line, LISTENING)
        produced = await produce(migrated, bulk(1, 7))
        assert worker.stop()[0] == 0
    ids = sorted(job["returnvalue"]["idExport"] for job in results(produced).values())
    edited, deleted = ids[2], ids[3]
    async with opened_engine(migrated.database.target) as engine, engine.begin() as conn:
        c = audit_table.c
        await conn.execute(update(audit_table).where(c.idExport == edited).values(usuarioId=999))
        await conn.execute(audit_table.delete().where(c.idExport == deleted))

    status, found = cli_json(migrated, "audit", "reconcile")
    assert status == 1
    assert found["differs"] == {"count": 1, "first": [edited]}
    assert found["missing"] == {"count": 1, "first": [deleted]}
    status, later = cli_json(migrated, "audit", "reconcile", "--since", "2999-01-01")
    assert (status, later["jobs"], later["orphans"]["count"]) == (0, 0, 0)
    refused = run_kpi_export(env_of(migrated), "audit", "reconcile", "--since", "yesterday")
    assert refused.returncode == 2 and "--since" in refused.stderr
    status, repaired = cli_json(migrated, "audit", "reconcile", "--repair")
    assert status == 1  # the edited row is still for a person to look at
    assert repaired["repaired"] == {"count": 1, "first": [deleted]}
    assert repaired["differs"] == {"count": 1, "first": [edited]}
    async with opened_engine(migrated.database.target) as engine, engine.connect() as conn:
        user = await conn.scalar(select(audit_table.c.usuarioId).where(audit_table.c.idExport == edited))
    assert user == 999
    # No seal yet: the repair is recorded over the row it re-inserted, which the next seal covers.
    assert [(e["kind"], e["fromId"], e["toId"]) for e in repaired["recorded"]] == [
        ("repair", deleted, deleted)
    ]
    assert run_kpi_export(env_of(migrated), "audit", "seal").returncode == 0
    verified = run_kpi_export(env_of(migrated), "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "repair recorded in seal 1: 1 row re-inserted" in verified.stdout


@contextlib.contextmanager
def private_server() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin()
    if bin_dir is None:
        unavailable("initdb/pg_ctl not found", in_ci="initdb/pg_ctl not found, and CI needs them")
    server = PostgresCluster(bin_dir, role_password=f"pw-{uuid.uuid4().hex}")
    try:
        yield server
    finally:
        server.remove()


async def ids_on(url: str) -> set[int]:
    conn = await asyncpg.connect(url)
    try:
        return {row[0] for row in await conn.fetch('SELECT "idExport" FROM kpi_auditoria_export')}
    finally:
        await conn.close()


@pytest.mark.restore
async def test_an_async_standby_promoted_after_the_primary_died(
    redis_url: str, queue_name: str, restore_jobs: int
) -> None:
    """The standby's replication link cut (a network fault), the primary killed later, the standby promoted
    under a running worker: the rows the primary wrote in between are lost; the worker, reconnected, hands out
    none of their ids again; reconcile finds exactly those rows (counted from the old primary's data files)
    and --repair restores them."""
    fifth = max(restore_jobs // 5, 10)
    with private_server() as primary, private_server() as standby:
        primary.init()
        primary.start()
        await primary.execute('CREATE DATABASE "audit"')
        async with TcpFaultProxy(primary.port) as link, TcpFaultProxy(primary.port) as endpoint:
            await asyncio.to_thread(functools.partial(standby.standby_of, primary, port=link.port))
            # The workers reach the database at one address (a DNS name, a virtual IP): this proxy.
            settings = Settings.of(
                redis_url=SecretStr(redis_url),
                database_url=SecretStr(f"postgresql://postgres@127.0.0.1:{endpoint.port}/audit"),
                queue_name=queue_name,
                worker_concurrency=4,
                shutdown_timeout=5,
            )
            upgraded = await asyncio.to_thread(run_kpi_export, env_of(settings), "db", "upgrade")
            assert upgraded.returncode == 0, upgraded.stderr
            with WorkerProcess(env_of(settings)) as worker:
                await asyncio.to_thread(worker.wait_for_line, LISTENING)
                first = await produce(settings, bulk(0, 2 * fifth), timeout=120)
                link.block()  # the standby hears no more: what the primary commits now is its alone
                second = await produce(settings, bulk(2 * fifth, 3 * fifth), timeout=120)
                await asyncio.to_thread(primary.kill)  # the primary dies
                # Jobs keep coming while the standby is promoted; the address moves to it, the worker runs on.
                during = asyncio.create_task(produce(settings, bulk(3 * fifth, 4 * fifth), timeout=120))
                await asyncio.to_thread(standby.promote)
                endpoint.upstream = ("127.0.0.1", standby.port)
                third = await during
                assert (await asyncio.to_thread(worker.stop))[0] == 0
            assert sum("went back in time" in line for line in worker.lines) == 1, worker.output
            on_standby = await ids_on(standby.url("audit"))
            await asyncio.to_thread(primary.start)  # the old primary's data files, as it left them
            on_old_primary = await ids_on(primary.url("audit"))
            await asyncio.to_thread(primary.stop, "immediate")
            kept = results(first, second)
            lost = {job["returnvalue"]["idExport"] for job in kept.values()} & (on_old_primary - on_standby)
            assert lost, "the standby received every row: the link was cut too late"
            third_ids = [j["returnvalue"]["idExport"] for j in results(third).values()]
            assert min(third_ids) > max(on_old_primary), [x for x in worker.lines if "Job" not in x]

            status, found = await asyncio.to_thread(cli_json, settings, "audit", "reconcile")
            assert status == 1
            assert found["missing"] == {"count": len(lost), "first": sorted(lost)[:MAX_LISTED]}
            status, repaired = await asyncio.to_thread(cli_json, settings, "audit", "reconcile", "--repair")
            assert status == 0 and repaired["repaired"]["count"] == len(lost)
            assert await ids_on(standby.url("audit")) >= on_old_primary
            print(f"[restore] async standby: jobs={4 * fifth}, lost={len(lost)}, repaired={len(lost)}")
            verified = await asyncio.to_thread(run_kpi_export, env_of(settings), "audit", "verify")
            assert verified.returncode == 0, verified.stdout + verified.stderr
