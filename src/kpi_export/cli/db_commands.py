"""The database's commands: `db upgrade|current` (migrations) and `audit list|show` (the table's rows)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import click
from rich.markup import escape
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.cli.app import JSON_OPTION, cli, run, settings_or_exit
from kpi_export.cli.render import echo_json, progress_bar, shortened, show, table
from kpi_export.config import Settings
from kpi_export.store.reader import AuditFilter

T = TypeVar("T")


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command()
@JSON_OPTION
def upgrade(as_json: bool) -> None:
    """Create the audit table, or upgrade in place the one the Node original's Prisma made (rows are kept)."""
    from kpi_export.store.schema import upgrade as run_upgrade

    settings = settings_or_exit()
    before, after = run(with_engine(settings, run_upgrade))
    target = settings.database.display
    if as_json:
        echo_json({"database": target, "before": before, "after": after})
    elif before == after:
        click.echo(f"{target}: already at migration {after}")
    else:
        click.echo(f"{target}: migrated from {before or 'nothing'} to {after}")


@db.command()
@JSON_OPTION
def current(as_json: bool) -> None:
    """Show the database's migration and the one this worker needs; exit 1 when it is behind."""
    from kpi_export.store.schema import current_revision, head_revision

    settings = settings_or_exit()
    now, head = run(with_engine(settings, current_revision)), head_revision()
    if as_json:
        echo_json(
            {"database": settings.database.display, "current": now, "head": head, "up_to_date": now == head}
        )
    else:
        state = "up to date" if now == head else "run `kpi-export db upgrade`"
        click.echo(f"{settings.database.display}: at {now or 'nothing'}, this worker needs {head} ({state})")
    if now != head:
        sys.exit(1)


@cli.group()
def audit() -> None:
    """Read the audit table kpi_auditoria_export: who exported what, from where, when."""


@audit.command("list")
@click.option("--usuario-id", type=int, help="Only this user's exports.")
@click.option("--since", help="From this date or ISO date-time, inclusive (UTC unless an offset is given).")
@click.option("--until", help="Up to this date (inclusive) or ISO date-time (exclusive).")
@click.option("--format", "fmt", help="Only this export format, e.g. xlsx.")
@click.option(
    "--limit",
    type=click.IntRange(1),
    help="At most this many rows, newest first. [default: 50 on screen; every row with --csv]",
)
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write rows to FILE."
)
@JSON_OPTION
def audit_list(
    usuario_id: int | None,
    since: str | None,
    until: str | None,
    fmt: str | None,
    limit: int | None,
    csv_path: Path | None,
    as_json: bool,
) -> None:
    """List audit rows, newest first; --csv writes them to a file (all of them unless --limit)."""
    from kpi_export.store.reader import list_rows

    audit_filter = AuditFilter(
        usuario_id=usuario_id,
        since=when_option(since, "--since"),
        until=when_option(until, "--until", upper_bound=True),
        format=fmt,
    )
    settings = settings_or_exit()
    if csv_path is not None:
        written = run(write_csv(settings, audit_filter, limit, csv_path))
        if as_json:
            echo_json({"file": str(csv_path), "rows": written})
        else:
            click.echo(f"{written} row(s) written to {csv_path}")
        return
    rows = run(with_engine(settings, lambda engine: list_rows(engine, audit_filter, limit or 50)))
    if as_json:
        echo_json(rows)
        return
    shown_table = table("idExport", "createdAt (UTC)", "usuarioId", "ip", "format", "filters")
    for row in rows:
        shown_table.add_row(
            str(row["idExport"]),
            row["createdAt"].replace("T", " ")[:19],
            str(row["usuarioId"]),
            escape(row["ip"] or ""),
            escape(row["format"]),
            escape(shortened(json.dumps(row["filters"], ensure_ascii=False))),
        )
    show(shown_table)
    click.echo(f"{len(rows)} row(s)" + (" (--limit reached)" if len(rows) == (limit or 50) else ""))


@audit.command("show")
@click.argument("id_export", type=int)
@JSON_OPTION
def audit_show(id_export: int, as_json: bool) -> None:
    """Show one audit row, its filters in full."""
    from kpi_export.store.reader import get_row

    settings = settings_or_exit()
    row = run(with_engine(settings, lambda engine: get_row(engine, id_export)))
    if row is None:
        click.echo(f"kpi-export: no audit row with idExport {id_export}", err=True)
        sys.exit(1)
    if as_json:
        echo_json(row)
        return
    shown_table = table("field", "value", title=f"Audit row {id_export}")
    for name, value in row.items():
        shown = json.dumps(value, ensure_ascii=False, indent=2) if name == "filters" else str(value)
        shown_table.add_row(name, escape(shown))
    show(shown_table)


async def with_engine(settings: Settings, use: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from kpi_export.store import opened_engine

    async with opened_engine(settings.database, pool_size=1) as engine:
        return await use(engine)


async def write_csv(settings: Settings, audit_filter: AuditFilter, limit: int | None, path: Path) -> int:
    from kpi_export.store.reader import COLUMNS, count_rows, stream_rows

    async def go(engine: AsyncEngine) -> int:
        total = await count_rows(engine, audit_filter)
        total = min(total, limit) if limit else total
        written = 0
        with path.open("w", newline="", encoding="utf-8") as file, progress_bar() as progress:
            task = progress.add_task(f"Writing {path.name}", total=total)
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

    return await with_engine(settings, go)


def when_option(text: str | None, option: str, *, upper_bound: bool = False) -> datetime | None:
    from kpi_export.store.reader import parse_when

    if text is None:
        return None
    try:
        return parse_when(text, upper_bound=upper_bound)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
