"""The database's commands: `db upgrade|current` (migrations), `db grants` (the roles' rights) and `audit list|show`
(the table's rows)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kpi_export.cli.app import JSON_OPTION, cli, run, settings_or_exit
from kpi_export.cli.export_file import export_target, written_whole
from kpi_export.cli.render import (
    counted,
    echo_result,
    echo_wrapped,
    progress_bar,
    show,
    show_rows,
)
from kpi_export.tables import shown, table

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from kpi_export.config import Settings
    from kpi_export.store.reader import AuditFilter

T = TypeVar("T")


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command()
@click.option(
    "--append-only",
    is_flag=True,
    help="Also install triggers that refuse UPDATE (but of ip), DELETE and TRUNCATE of the audit trail "
    "(PostgreSQL, MariaDB/MySQL).",
)
@JSON_OPTION
def upgrade(append_only: bool, as_json: bool) -> None:
    """Create the audit table, or upgrade in place the one the Node original's Prisma made (rows are kept)."""
    from kpi_export.store.schema import upgrade as run_upgrade

    settings = settings_or_exit()
    if append_only and settings.database.target.dialect == "sqlite":
        raise click.BadParameter(
            "is for PostgreSQL and MariaDB/MySQL, not SQLite", param_hint="--append-only"
        )
    before, after = run(with_engine(settings, run_upgrade, migrating=True))
    if append_only:
        from kpi_export.integrity.append_only import install

        run(with_engine(settings, install, migrating=True))
    target = settings.database.migration_target.display
    guarded = "; append-only triggers in place" if append_only else ""
    echo_result(
        as_json,
        {"database": target, "before": before, "after": after}
        | ({"append_only": True} if append_only else {}),
        lambda: click.echo(
            (
                f"{target}: already at migration {after}"
                if before == after
                else f"{target}: migrated from {before or 'nothing'} to {after}"
            )
            + guarded
        ),
    )


@db.command()
@JSON_OPTION
def current(as_json: bool) -> None:
    """Show the database's migration and the one this worker needs; exit 1 when it is behind."""
    from kpi_export.store.schema import current_revision, head_revision

    settings = settings_or_exit()
    now, head = run(with_engine(settings, current_revision, create=False, migrating=True)), head_revision()
    target = settings.database.migration_target.display
    state = "up to date" if now == head else "run `kpi-export db upgrade`"
    echo_result(
        as_json,
        {"database": target, "current": now, "head": head, "up_to_date": now == head},
        lambda: click.echo(f"{target}: at {now or 'nothing'}, this worker needs {head} ({state})"),
    )
    if now != head:
        sys.exit(1)


@db.command()
@click.option("--owner", default="kpi_owner", show_default=True, help="The role that runs `db upgrade`.")
@click.option(
    "--worker", default="kpi_worker", show_default=True, help="The workers' role: appends and seals."
)
@click.option("--auditor", default="kpi_auditor", show_default=True, help="The role that reads and verifies.")
@click.option(
    "--privacy", default="kpi_privacy", show_default=True, help="The role that runs `audit pseudonymise-ips`."
)
@click.option(
    "--host", default="%", show_default=True, help="MariaDB/MySQL: the accounts' host ('name'@'host')."
)
def grants(owner: str, worker: str, auditor: str, privacy: str, host: str) -> None:
    """Print the SQL that gives each role only the rights it needs, for DATABASE_URL's database (no password;
    the roles must exist). Run it after `db upgrade`, as an administrator."""
    from kpi_export.integrity.grants import Roles, grants_sql

    target = settings_or_exit().database.target
    try:
        roles = Roles(owner=owner, worker=worker, auditor=auditor, privacy=privacy, host=host)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    try:
        sql = grants_sql(target.dialect, roles, schema=target.schema, database=target.url.database)
    except ValueError as exc:
        click.echo(f"kpi-export: {exc}", err=True)
        sys.exit(1)
    click.echo(sql, nl=False)


@cli.group()
def audit() -> None:
    """The audit table kpi_auditoria_export (who exported what, from where, when): read, seal, verify."""


# Lines of the filters of a row that `audit list` shows: those of a few KPIs whole, a list stays a list.
FILTERS_LINES = 2
# usuarioId and idExport are 32-bit INTEGER columns, as Prisma's Int.
USUARIO_ID = click.IntRange(-(2**31), 2**31 - 1)
ID_EXPORT = click.IntRange(1, 2**31 - 1)


@audit.command("list")
@click.option("--usuario-id", type=USUARIO_ID, help="Only this user's exports.")
@click.option("--since", help="From this date or ISO date-time, inclusive (UTC unless an offset is given).")
@click.option("--until", help="Up to this date (inclusive) or ISO date-time (exclusive).")
@click.option("--format", "fmt", help="Only this export format, e.g. xlsx.")
@click.option(
    "--limit",
    type=click.IntRange(1),
    help="At most this many rows, newest first. [default: 50 on screen; every row with --csv]",
)
@click.option(
    "--csv",
    "csv_path",
    metavar="FILE",
    help="Write rows to FILE ('-': standard output), whole or not at all.",
)
@click.option("--force", is_flag=True, help="With --csv: replace FILE when it exists.")
@JSON_OPTION
def audit_list(
    usuario_id: int | None,
    since: str | None,
    until: str | None,
    fmt: str | None,
    limit: int | None,
    csv_path: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """List audit rows, newest first; --csv writes them to a file (all of them unless --limit)."""
    from kpi_export.store.reader import AuditFilter, list_rows

    export = None if csv_path is None else export_target(csv_path, force=force)
    audit_filter = AuditFilter(
        usuario_id=usuario_id,
        since=when_option(since, "--since"),
        until=when_option(until, "--until", upper_bound=True),
        format=fmt,
    )
    settings = settings_or_exit()
    if csv_path is not None:
        try:
            written = run(write_csv(settings, audit_filter, limit, export, force=force))
        except KeyboardInterrupt:
            left = (
                "the CSV on standard output is incomplete"
                if export is None
                else f"{shown(export)} left as it was"
            )
            click.echo(f"kpi-export: export interrupted: {left}", err=True)
            sys.exit(130)
        if export is None:
            click.echo(f"{counted(written, 'row')} written to standard output", err=True)
        else:
            echo_result(
                as_json,
                {"file": str(export), "rows": written},
                lambda: click.echo(f"{counted(written, 'row')} written to {shown(export)}"),
            )
        return
    rows = run(
        with_engine(settings, lambda engine: list_rows(engine, audit_filter, limit or 50), create=False)
    )
    echo_result(as_json, rows, lambda: _show_listed(rows, limit or 50))


def _show_listed(rows: list[dict[str, Any]], limit: int) -> None:
    cut = show_rows(
        ("idExport", "createdAt (UTC)", "usuarioId", "ip", "format", "filters"),
        [
            (
                row["idExport"],
                row["createdAt"].replace("T", " ")[:19],
                row["usuarioId"],
                row["ip"],
                row["format"],
                json.dumps(row["filters"], ensure_ascii=False),
            )
            for row in rows
        ],
        last_lines=FILTERS_LINES,
    )
    click.echo(counted(len(rows), "row") + (" (--limit reached)" if len(rows) == limit else ""))
    if cut:
        echo_wrapped("filters cut to fit (…): `kpi-export audit show ID` shows them whole")


@audit.command("show")
@click.argument("id_export", type=ID_EXPORT)
@JSON_OPTION
def audit_show(id_export: int, as_json: bool) -> None:
    """Show one audit row, its filters in full."""
    from kpi_export.store.reader import get_row

    settings = settings_or_exit()
    row = run(with_engine(settings, lambda engine: get_row(engine, id_export), create=False))
    if row is None:
        click.echo(f"kpi-export: no audit row with idExport {id_export}", err=True)
        sys.exit(1)
    echo_result(as_json, row, lambda: _show_row(id_export, row))


def _show_row(id_export: int, row: dict[str, Any]) -> None:
    shown_table = table("field", "value", title=f"Audit row {id_export}")
    for name, value in row.items():
        if name == "filters":
            for line_number, line in enumerate(json.dumps(value, ensure_ascii=False, indent=2).splitlines()):
                shown_table.add_row(name if line_number == 0 else "", line)
        else:
            shown_table.add_row(name, value)
    show(shown_table)


async def with_engine(
    settings: Settings,
    use: Callable[[AsyncEngine], Awaitable[T]],
    *,
    create: bool = True,
    migrating: bool = False,
) -> T:
    """`create=False` for the commands that only read: they never leave a new SQLite file behind.
    `migrating`: the `db` commands, which connect to DATABASE_DIRECT_URL when it is set."""
    from kpi_export.store import opened_engine

    database = settings.database
    target = database.migration_target if migrating else database.target
    async with opened_engine(target, pool_size=1, create=create) as engine:
        return await use(engine)


async def write_csv(
    settings: Settings, audit_filter: AuditFilter, limit: int | None, path: Path | None, *, force: bool
) -> int:
    """The rows into `path` (None: standard output), whole or not at all (export_file.py)."""
    from kpi_export.store.reader import COLUMNS, count_rows, stream_rows

    async def go(engine: AsyncEngine) -> int:
        total = await count_rows(engine, audit_filter)
        total = min(total, limit) if limit else total
        written = 0
        with written_whole(path, force=force) as file, progress_bar() as progress:
            task = progress.add_task(f"Writing {path.name if path else 'CSV'}", total=total)
            writer = csv.writer(file)
            writer.writerow(COLUMNS)
            async for row in stream_rows(engine, audit_filter, limit):
                row["filters"] = json.dumps(row["filters"], ensure_ascii=False)
                writer.writerow([row[column] for column in COLUMNS])
                written += 1
                if written % 500 == 0:
                    progress.update(task, completed=written)
            progress.update(task, completed=written)
        return written

    return await with_engine(settings, go, create=False)


def when_option(text: str | None, option: str, *, upper_bound: bool = False) -> datetime | None:
    from kpi_export.store.reader import parse_when

    if text is None:
        return None
    try:
        return parse_when(text, upper_bound=upper_bound)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
