"""The worker behind Debian's PgBouncer with Prisma's `?pgbouncer=true`, in transaction and in session pooling,
with fewer server connections than the worker's pool: every job completed once, the seal chain verifies, and
every operator command works through the pooler; the `db` commands use DATABASE_DIRECT_URL when it is set. No "prepared statement" error, ever: under transaction
pooling a client's next statement may reach another server, where a named statement is missing or taken.
Sized by --pooler-jobs."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import re
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import SecretStr

from kpi_export.config import Settings
from kpi_export.integrity.sealer import read_head
from kpi_export.store import opened_engine
from kpi_export.store.url import parse_database_url
from tests.docs import Page, code_blocks
from tests.embedded_redis import free_port
from tests.flow import add_jobs, assert_exactly_once, counts, failed_reasons, wait_all_finished
from tests.pgbouncer import PgBouncer
from tests.pgcluster import PASSWORD_ROLE, PostgresCluster
from tests.services import POSTGRES_URL, worker_env
from tests.support import LISTENING, WorkerProcess, invoke, wait_until

pytestmark = pytest.mark.pooler

SEALING = {"AUDIT_SEAL_KEY": "test-audit-seal-key-0123456789abcdef", "AUDIT_SEAL_INTERVAL": "1"}
PAGE = Page.of("production/postgresql-pooling.md")


def documented_pgbouncer() -> configparser.SectionProxy:
    """The `[pgbouncer]` section of the docs' pgbouncer.ini."""
    config = configparser.ConfigParser()
    config.read_string(code_blocks(PAGE.section("## PgBouncer"), "ini")[0])
    return config["pgbouncer"]


SERVER_CONNECTIONS = int(documented_pgbouncer()["default_pool_size"])  # as the docs advise
CONCURRENCY = 50  # a worker's pool: min(concurrency, 20) connections, or the URL's connection_limit


async def run_jobs_behind(
    bouncer: PgBouncer, settings: Settings, direct: Settings, total: int, workers: int
) -> tuple[int, int]:
    """Run `total` jobs through `workers` workers, whose sealers race; (server connections, clients) of the
    pooler once all are sealed. The test itself reads the table directly (`direct`)."""
    env = worker_env(settings, **SEALING, AUDIT_SEAL_MIN_AGE="0")
    with contextlib.ExitStack() as stack:
        fleet = [stack.enter_context(WorkerProcess(env)) for _ in range(workers)]
        for worker in fleet:
            await asyncio.to_thread(worker.wait_for_line, LISTENING)
        await add_jobs(settings, total)
        async with opened_engine(direct.database.target, pool_size=1) as engine:

            async def sealed() -> bool:
                assert not (await counts(settings))["failed"], await failed_reasons(settings)
                head, sealed_up_to = await read_head(engine)
                return head is not None and sealed_up_to >= total  # every row written and sealed

            await wait_until(sealed, timeout=60 + total / 20, what=f"{total} jobs done and sealed")
        pool = await asyncio.to_thread(bouncer.servers)
        await wait_all_finished(settings, total, timeout=60)
        for worker in fleet:
            assert worker.stop()[0] == 0
    for worker in fleet:
        assert "prepared statement" not in worker.output, worker.output
        assert "ERROR" not in worker.output and " failed: " not in worker.output, worker.output
    return pool


# Transaction pooling: each worker's pool (20) is larger than the pooler's (4). Session pooling gives a client
# a server until it leaves: the worker's pool must fit in the pooler's (connection_limit).
@pytest.mark.parametrize(
    ("pool_mode", "workers", "parameters"),
    [
        pytest.param("transaction", 2, "", id="transaction"),
        pytest.param("session", 1, "&connection_limit=2", id="session"),
    ],
)
async def test_the_worker_and_every_operator_command_work_behind_pgbouncer(
    postgresql_url: str,
    queue_name: str,
    pooler_jobs: int,
    pool_mode: str,
    workers: int,
    parameters: str,
    tmp_path: Path,
) -> None:
    schema = parse_qs(urlsplit(postgresql_url).query)["schema"][0]  # a schema of the test's own
    server_port = urlsplit(POSTGRES_URL).port or 5432
    with PgBouncer(server_port, pool_mode, pool_size=SERVER_CONNECTIONS) as bouncer:
        settings = Settings.of(
            database_url=SecretStr(f"{bouncer.url()}?schema={schema}&pgbouncer=true{parameters}"),
            queue_name=queue_name,
            worker_concurrency=CONCURRENCY,
            shutdown_timeout=10,
        )
        upgraded = await invoke(settings, "db", "upgrade")  # through the pooler too
        assert upgraded.exit_code == 0, upgraded.output
        direct = settings.replace(database_url=SecretStr(postgresql_url))
        servers, clients = await run_jobs_behind(bouncer, settings, direct, pooler_jobs, workers)
        assert 0 < servers <= SERVER_CONNECTIONS and clients >= workers, (servers, clients)
        await assert_exactly_once(settings, pooler_jobs)  # one row per job, each job's result its row

        async def command(*args: str) -> str:
            result = await invoke(settings, *args, env=SEALING)
            assert result.exit_code == 0, (args, result.output)
            assert "prepared statement" not in result.output, result.output
            return result.output

        verified = json.loads(await command("audit", "verify", "--json"))
        assert verified["clean"] and verified["rowsChecked"] == pooler_jobs, verified
        for args in (
            ["check"],
            ["stats"],
            ["jobs", "--state", "completed"],
            ["db", "current"],
            ["audit", "seal"],
        ):
            await command(*args)
        listed = json.loads(await command("audit", "list", "--limit", "5", "--json"))
        assert [row["idExport"] for row in listed] == list(range(pooler_jobs, pooler_jobs - 5, -1))
        assert json.loads(await command("audit", "show", "1", "--json"))["idExport"] == 1
        await command("audit", "list", "--csv", str(tmp_path / "rows.csv"))
        assert len((tmp_path / "rows.csv").read_text().splitlines()) == pooler_jobs + 1
        tomorrow = (date.today() + timedelta(days=1)).isoformat()
        await command("audit", "pseudonymise-ips", "--older-than", tomorrow)  # recorded in the chain
        verified = json.loads(await command("audit", "verify", "--json"))
        assert verified["clean"] and verified["rowsChecked"] == pooler_jobs, verified
    assert "prepared statement" not in bouncer.log


async def test_the_db_commands_connect_to_database_direct_url_and_never_print_its_password(
    postgres_cluster: PostgresCluster, private_postgresql_url: str, queue_name: str
) -> None:
    """Prisma's `directUrl`: DATABASE_URL names a pooler (down here), the migrations go to the server itself."""
    database = urlsplit(private_postgresql_url).path.lstrip("/")
    direct = postgres_cluster.url(database, role=PASSWORD_ROLE)  # with its password
    settings = Settings.of(
        database_url=SecretStr(
            f"postgresql://{PASSWORD_ROLE}@127.0.0.1:{free_port()}/{database}?pgbouncer=true"
        ),
        queue_name=queue_name,
    )
    env = {"DATABASE_DIRECT_URL": direct}
    upgraded = await invoke(settings, "db", "upgrade", env=env)
    assert upgraded.exit_code == 0, upgraded.output
    shown = f"{PASSWORD_ROLE}:***@127.0.0.1:{postgres_cluster.port}/{database}"
    assert f"{shown}: migrated from nothing to" in upgraded.output
    current = await invoke(settings, "db", "current", "--json", env=env)
    assert current.exit_code == 0 and json.loads(current.output)["up_to_date"], current.output
    listed = await invoke(settings, "audit", "list", env=env)  # not a `db` command: DATABASE_URL, down
    assert listed.exit_code == 1 and "DATABASE_URL" in listed.output, listed.output
    for result in (upgraded, current, listed):
        assert postgres_cluster.role_password not in result.output


def test_the_documented_pgbouncer_setup_is_the_tested_one() -> None:
    """The docs' pgbouncer.ini pools by transaction, with fewer server connections than a worker's pool, and
    their URLs are the worker's: `pgbouncer=true` through the pooler, the server itself for the `db` commands."""
    assert documented_pgbouncer()["pool_mode"] == "transaction"
    assert SERVER_CONNECTIONS < min(CONCURRENCY, 20)
    urls = dict(re.findall(r"(DATABASE_(?:DIRECT_)?URL)='([^']+)'", PAGE.section("## PgBouncer")))
    pooled, direct = parse_database_url(urls["DATABASE_URL"]), parse_database_url(urls["DATABASE_DIRECT_URL"])
    assert pooled.pgbouncer and not direct.pgbouncer
    assert pooled.schema == direct.schema == "public"
