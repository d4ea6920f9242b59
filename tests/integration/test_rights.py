"""Least privilege (docs/production/rights.md), on real servers: the database roles `db grants` prints, each
doing its job and no more, on PostgreSQL and MariaDB; the append-only triggers; the Redis ACL users of the
page, through a private Redis.

`--rights-jobs` sets how many jobs the worker role writes and seals (CI's size by default, 3,000 by hand)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio
from click.testing import CliRunner
from pydantic import SecretStr
from redis.exceptions import NoPermissionError
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

from kpi_export.cli import cli
from kpi_export.config import Settings
from kpi_export.integrity import chain_store
from kpi_export.integrity.digests import SealKey
from kpi_export.integrity.sealer import seal_pending
from kpi_export.integrity.verifier import verify
from kpi_export.store import audit_table, opened_engine
from kpi_export.store.schema import upgrade
from tests.docs import Page, code_blocks
from tests.embedded_redis import EmbeddedRedis
from tests.flow import add_jobs, assert_exactly_once, wait_all_finished
from tests.services import POSTGRES_URL, mariadb_execute, require_tool, worker_env
from tests.support import WorkerProcess, invoke, start_line, wait_until

SECRET = "test-audit-seal-key-0123456789abcdef"
KEY_ENV = {"AUDIT_SEAL_KEY": SECRET, "AUDIT_SEAL_MIN_AGE": "0", "AUDIT_SEAL_INTERVAL": "1"}
RIGHTS_PAGE = Page.of("production/rights.md")
ROLES = ("owner", "worker", "auditor", "privacy")
both_servers = pytest.mark.parametrize("database_url", ["postgresql", "mariadb"], indirect=True)
WARNING = "Least privilege not applied"
OWNER_WARNING = (
    "Least privilege not applied: DATABASE_URL's role owns kpi_auditoria_export and may UPDATE, DELETE, TRUNCATE it "
    "(rights that could rewrite the audit trail); `kpi-export db grants` prints the SQL of a worker role that may "
    "only append"
)


@dataclass
class Accounts:
    """Roles (PostgreSQL) or accounts (MariaDB) of this test's own, named `<prefix>_<role>`, without password."""

    settings: Settings  # the administrator's: the test's own schema or database
    prefix: str

    @property
    def dialect(self) -> str:
        return self.settings.database.target.dialect

    def name(self, role: str) -> str:
        return f"{self.prefix}_{role}"

    def options(self) -> list[str]:
        return [option for role in ROLES for option in (f"--{role}", self.name(role))]

    def as_role(self, role: str, **variables: Any) -> Settings:
        """The settings with DATABASE_URL's user replaced by the role's."""
        parts = urlsplit(self.settings.database.url.get_secret_value())
        netloc = f"{self.name(role)}@{parts.netloc.rsplit('@', 1)[-1]}"
        url = urlunsplit(parts._replace(netloc=netloc))
        return self.settings.replace(database_url=SecretStr(url), **variables)

    async def admin(self, *statements: str) -> None:
        if self.dialect == "postgresql":
            conn = await asyncpg.connect(POSTGRES_URL)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()
        else:
            await mariadb_execute(self.settings.database.url.get_secret_value(), *statements)

    async def admin_script(self, script: str) -> None:
        """SQL as `db grants` prints it: comment lines, statements ending with `;`."""
        lines = [line for line in script.splitlines() if line.strip() and not line.startswith("--")]
        await self.admin(*(s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")))

    async def create(self) -> None:
        if self.dialect == "postgresql":
            await self.admin(*(f'CREATE ROLE "{self.name(role)}" LOGIN' for role in ROLES))
        else:
            await self.admin(*(f"CREATE USER '{self.name(role)}'@'%'" for role in ROLES))

    async def drop(self) -> None:
        if self.dialect == "postgresql":
            for role in ROLES:
                await self.admin(
                    f'DROP OWNED BY "{self.name(role)}" CASCADE', f'DROP ROLE "{self.name(role)}"'
                )
        else:
            await self.admin(*(f"DROP USER IF EXISTS '{self.name(role)}'@'%'" for role in ROLES))


@pytest.fixture
async def accounts(settings: Settings) -> AsyncIterator[Accounts]:
    made = Accounts(settings, f"kpi_{uuid.uuid4().hex[:10]}")
    await made.create()
    try:
        yield made
    finally:
        await made.drop()


@pytest.fixture
def rights_jobs(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--rights-jobs"))


async def refused(settings: Settings, statement: str) -> str:
    """The database's refusal of `statement` run as `settings`' role; fails when it is not refused."""
    async with opened_engine(settings.database.target, create=False) as engine:
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement))
        except DBAPIError as exc:
            return str(exc.orig)
    raise AssertionError(f"{statement!r} was not refused")


def verify_json(output: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(output)
    return found


@both_servers
@pytest.mark.timeout(600)
async def test_each_role_does_its_job_and_no_more(accounts: Accounts, rights_jobs: int) -> None:
    admin = accounts.settings
    async with opened_engine(admin.database.target) as engine:
        await upgrade(engine)
    grants = await invoke(admin, "db", "grants", *accounts.options())
    assert grants.exit_code == 0, grants.output
    await accounts.admin_script(grants.stdout)

    # The worker role, sealing on: every job completed, one row each, every row sealed, no permission error.
    worker = accounts.as_role("worker", worker_concurrency=20)
    with WorkerProcess(worker_env(worker, **KEY_ENV)) as process:
        await asyncio.to_thread(process.wait_for_line, "Worker escuchando cola", 60)
        await add_jobs(worker, rights_jobs)
        await wait_all_finished(worker, rights_jobs, timeout=60 + rights_jobs / 20)
        async with opened_engine(worker.database.target, create=False) as engine:

            async def all_sealed() -> bool:
                async with engine.connect() as conn:
                    top = await conn.scalar(select(func.max(audit_table.c.idExport)))
                    return bool(top) and await chain_store.sealed_up_to(conn) >= int(top or 0)

            await wait_until(all_sealed, timeout=120, what="the worker role to seal every row")
    await assert_exactly_once(worker, rights_jobs)
    assert process.stdout[0] == start_line(worker, 20)
    for line in process.lines:
        assert "denied" not in line.lower() and "not sealed" not in line and WARNING not in line, line

    # The same role may not rewrite the trail: the database refuses.
    table = '"kpi_auditoria_export"' if accounts.dialect == "postgresql" else "kpi_auditoria_export"
    for statement in (
        f"UPDATE {table} SET {quoted(accounts, 'usuarioId')} = 0",
        f"DELETE FROM {table}",
        f"TRUNCATE TABLE {table}",
    ):
        assert denied(await refused(worker, statement)), statement

    # The auditor verifies; the privacy role pseudonymises, recorded in the chain; the auditor verifies again.
    auditor = accounts.as_role("auditor")
    checked = await invoke(auditor, "audit", "verify", "--json", env=KEY_ENV)
    report = verify_json(checked.stdout)
    assert checked.exit_code == 0 and report["clean"], checked.output
    assert (report["rowsChecked"], report["rowsNotSealed"]) == (rights_jobs, 0)
    assert denied(await refused(auditor, f"DELETE FROM {table}"))
    privacy = accounts.as_role("privacy")
    blurred = await invoke(
        privacy,
        "audit",
        "pseudonymise-ips",
        "--older-than",
        "2999-01-01",
        "--to",
        "none",
        "--json",
        env=KEY_ENV,
    )
    assert blurred.exit_code == 0, blurred.output
    assert json.loads(blurred.stdout)["rowsChanged"] == rights_jobs
    assert denied(await refused(privacy, f"UPDATE {table} SET {quoted(accounts, 'usuarioId')} = 0"))
    again = await invoke(auditor, "audit", "verify", "--json", env=KEY_ENV)
    assert again.exit_code == 0 and verify_json(again.stdout)["clean"], again.output

    # `check` warns the over-privileged administrator, in one line on stderr and in --json; not the worker.
    over = await invoke(admin, "check")
    assert over.exit_code == 0
    warnings = [line for line in over.stderr.splitlines() if WARNING in line]
    assert len(warnings) == 1 and "db grants" in warnings[0] and "DELETE" in warnings[0], over.stderr
    assert json.loads((await invoke(admin, "check", "--json")).stdout)["warnings"] == [
        warnings[0].removeprefix("warning: ")
    ]
    least = await invoke(worker, "check", "--json")
    assert least.exit_code == 0 and "warnings" not in json.loads(least.stdout), least.output


@pytest.mark.parametrize(
    ("heading", "url"),
    [
        ("### PostgreSQL", "postgresql://admin@db:5432/kpis?schema=public"),
        ("### MariaDB and MySQL", "mysql://admin@db:3306/kpis"),
    ],
)
def test_the_rights_page_shows_what_db_grants_prints(heading: str, url: str) -> None:
    """The page's SQL is the command's, for the URL the page names (the tests above run the command's)."""
    section = RIGHTS_PAGE.section(heading)
    assert f"`DATABASE_URL={url}`" in section
    printed = CliRunner().invoke(cli, ["db", "grants"], env={"DATABASE_URL": url})
    assert printed.exit_code == 0, printed.output
    assert code_blocks(section, "sql") == [printed.stdout]


def test_the_rights_page_shows_the_warning_as_check_prints_it() -> None:
    (shown,) = code_blocks(RIGHTS_PAGE.section("### Least privilege, checked"), "text")
    assert shown == f"warning: {OWNER_WARNING}\n"


def quoted(accounts: Accounts, column: str) -> str:
    return f'"{column}"' if accounts.dialect == "postgresql" else f"`{column}`"


def denied(message: str) -> bool:
    """PostgreSQL's `permission denied`, MariaDB's `command denied` (1142)."""
    return "permission denied" in message or "command denied" in message


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_over_privileged_worker_starts_with_the_original_line_and_a_warning_apart(
    migrated: Settings,
) -> None:
    with WorkerProcess(worker_env(migrated)) as process:
        await asyncio.to_thread(process.wait_for_line, "Worker escuchando cola", 60)
        await asyncio.to_thread(process.wait_for_line, WARNING, 30)
    assert process.stdout[0] == start_line(migrated)
    assert [line for line in process.stderr if WARNING in line] == [OWNER_WARNING]


@both_servers
async def test_the_append_only_triggers_refuse_the_owner_and_verify_reports_what_it_does_around_them(
    migrated: Settings,
) -> None:
    upgraded = await invoke(migrated, "db", "upgrade", "--append-only")
    assert upgraded.exit_code == 0 and "append-only triggers in place" in upgraded.output
    key = SealKey(SECRET)
    postgresql = migrated.database.target.dialect == "postgresql"

    def q(name: str) -> str:
        return f'"{name}"' if postgresql else f"`{name}`"

    table = q("kpi_auditoria_export")
    async with opened_engine(migrated.database.target) as engine:
        async with engine.begin() as conn:
            await conn.execute(
                insert(audit_table),
                [{"usuarioId": n, "ip": "203.0.113.9", "format": "csv"} for n in range(1, 4)],
            )
        assert [(e.from_id, e.to_id) for e in await seal_pending(engine, key, min_age=0, actor="test")] == [
            (1, 3)
        ]
        for statement in (
            f"UPDATE {table} SET {q('usuarioId')} = 0 WHERE {q('idExport')} = 1",
            f"DELETE FROM {table} WHERE {q('idExport')} = 2",
            f"TRUNCATE TABLE {table}",
            f"DELETE FROM {q('kpi_auditoria_seal')}",
        ):
            message = await refused(migrated, statement)
            assert "append-only" in message or "foreign key" in message, (statement, message)
        blurred = await invoke(
            migrated, "audit", "pseudonymise-ips", "--older-than", "2999-01-01", env=KEY_ENV
        )
        assert blurred.exit_code == 0, blurred.output
        assert (await verify(engine, key)).clean

        # The owner goes around them: verify names what it did.
        async with engine.begin() as conn:
            if postgresql:
                await conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            else:
                await conn.execute(text("DROP TRIGGER `kpi_auditoria_export_no_delete`"))
            await conn.execute(text(f"DELETE FROM {table} WHERE {q('idExport')} = 2"))
        report = await verify(engine, key)
    assert not report.clean and any(finding.id_export == 2 for finding in report.findings), report.findings


# Redis: the ACL users of the Rights page, as written there.


def acl_lines() -> list[str]:
    (block,) = code_blocks(RIGHTS_PAGE.section("## Redis"), "text")
    return block.splitlines()


def acl_url(server: EmbeddedRedis, line: str) -> str:
    """redis://user:password@… for the user an `ACL SETUSER` line makes."""
    words = line.split()
    password = next(word[1:] for word in words if word.startswith(">"))
    return f"redis://{words[2]}:{password}@127.0.0.1:{server.port}"


@pytest.fixture
async def acl_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    binary = require_tool("redis-server", "redis-server")
    with EmbeddedRedis(tmp_path / "redis", binary=binary) as server:
        client = redis.asyncio.Redis(port=server.port)
        try:
            for line in acl_lines():
                reply = await client.execute_command(*line.split())  # type: ignore[no-untyped-call]
                assert reply in (b"OK", "OK")
            yield server
        finally:
            await client.aclose()


async def test_the_worker_and_the_cli_work_through_the_acl_users_of_the_rights_page(
    acl_redis: EmbeddedRedis, sqlite_url: str
) -> None:
    worker_line, operator_line, reader_line = acl_lines()
    # The page's users are for the queue kpi-export-queue: this private Redis has nothing else.
    base = Settings.of(
        redis_url=SecretStr(acl_url(acl_redis, worker_line)),
        database_url=SecretStr(sqlite_url),
        queue_name="kpi-export-queue",
        worker_concurrency=8,
        shutdown_timeout=10,
    )
    operator = base.replace(redis_url=SecretStr(acl_url(acl_redis, operator_line)))
    reader = base.replace(redis_url=SecretStr(acl_url(acl_redis, reader_line)))
    assert (await invoke(base, "db", "upgrade")).exit_code == 0
    jobs = 300
    with WorkerProcess(worker_env(base, **KEY_ENV)) as process:
        await asyncio.to_thread(process.wait_for_line, "Worker escuchando cola", 60)
        enqueued = await invoke(operator, "enqueue", "--usuario-id", "7", "--ip", "203.0.113.7")
        assert enqueued.exit_code == 0, enqueued.output
        await add_jobs(operator, jobs - 1)
        await wait_all_finished(operator, jobs, timeout=120)
        bad = await invoke(operator, "enqueue", "--data", '{"usuarioId": "x"}')
        assert bad.exit_code == 0, bad.output
        await wait_all_finished(operator, jobs + 1, timeout=60)
    for command in (("stats",), ("jobs", "--state", "failed"), ("job", "job-1")):
        shown = await invoke(reader, *command)
        assert shown.exit_code == 0 and "NOPERM" not in shown.output and "refused" not in shown.output, (
            shown.output
        )
    assert (
        await invoke(reader, "retry", "--all-failed")
    ).exit_code != 0  # the reader's scripts may not write
    retried = await invoke(operator, "retry", "--all-failed")
    assert retried.exit_code == 0 and "1 failed job put back to wait" in retried.output, retried.output
    for line in process.lines:
        assert "NOPERM" not in line and "permission" not in line.lower(), line

    client = redis.asyncio.Redis.from_url(acl_url(acl_redis, worker_line))
    admin = redis.asyncio.Redis(port=acl_redis.port, decode_responses=True)
    try:
        # What the worker tried beyond its rights: only CONFIG GET, which it does without (INFO tells it).
        tried = {str(entry["object"]) for entry in await admin.acl_log() if entry["username"] == "kpi-worker"}
        assert tried <= {"config|get"}, tried
        await admin.set("bull:another-queue:1", "secret")
        with pytest.raises(NoPermissionError):
            await client.get("bull:another-queue:1")
        with pytest.raises(NoPermissionError):
            await client.execute_command("FLUSHALL")  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
        await admin.aclose()


def test_db_grants_refuses_a_role_name_that_is_not_one_and_says_sqlite_has_no_roles(tmp_path: Path) -> None:
    runner = CliRunner()
    postgresql = {"DATABASE_URL": "postgresql://admin@db:5432/kpis"}
    bad = runner.invoke(cli, ["db", "grants", "--worker", "kpi; DROP TABLE x"], env=postgresql)
    assert (
        bad.exit_code == 2 and "letters, digits and underscores" in bad.output and "GRANT" not in bad.output
    )
    sqlite = runner.invoke(cli, ["db", "grants"], env={"DATABASE_URL": f"file:{tmp_path / 'audit.db'}"})
    assert sqlite.exit_code == 1 and sqlite.stdout == "" and "SQLite has no roles" in sqlite.stderr
    assert not (tmp_path / "audit.db").exists()
