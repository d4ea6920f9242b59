"""The `kpi-export` command."""

from __future__ import annotations

import asyncio
import csv
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.audit_query import AuditFilter
from kpi_export.config import Settings, load_settings
from kpi_export.errors import ConfigError
from kpi_export.logs import setup_logging

T = TypeVar("T")
EXIT_CONFIG = 2

JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for a script instead of a table."
)


def _settings(*, stream: Any = None) -> Settings:
    """Settings from the environment, logging set up; bad configuration exits 2 with one line."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"kpi-export: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(settings.log_level, settings.log_format, settings.secrets(), stream=stream or sys.stderr)
    logging.captureWarnings(True)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fast_loop() -> asyncio.AbstractEventLoop:
    """libuv's event loop (uvloop), about 10 % less CPU per job than asyncio's own, where it is built."""
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kpi-export-worker")
def cli() -> None:
    """Audit worker for KPI export jobs on a BullMQ queue. Configured by environment variables (see README)."""


@cli.command()
def worker() -> None:
    """Consume QUEUE_NAME until SIGINT/SIGTERM; each valid job gives one row in kpi_auditoria_export.

    WORKER_PROCESSES=N runs N worker processes under a supervisor that forwards signals and restarts them.
    """
    from kpi_export.worker import run_worker

    settings = _settings(stream=sys.stdout)
    if settings.worker_processes > 1:
        from kpi_export.supervisor import Supervisor, worker_command

        env = os.environ | {"WORKER_PROCESSES": "1"}
        sys.exit(_run(Supervisor(settings.worker_processes, worker_command(), env).run()))
    # What start-up made (modules, SQLAlchemy's and bullmq's structures) lives as long as the process: frozen,
    # it is out of the collector's reach, and a full collection no longer pauses the worker for tens of ms.
    status = _fast_loop().run_until_complete(run_worker(settings, started=gc.freeze))
    # Everything is closed by now. Exit as the original did (process.exit): asyncio.run() would cancel and
    # await what is left, and a bullmq close() whose teardown gets cancelled spins forever; the interpreter's
    # own teardown adds a few hundred milliseconds to every stop.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command()
@JSON_OPTION
def upgrade(as_json: bool) -> None:
    """Create the audit table, or upgrade in place the one the Node original's Prisma made (rows are kept)."""
    from kpi_export.audit import create_engine
    from kpi_export.schema import upgrade as run_upgrade

    settings = _settings()

    async def go() -> tuple[str | None, str | None]:
        engine = create_engine(settings.database)
        try:
            return await run_upgrade(engine)
        finally:
            await engine.dispose()

    before, after = _run(go())
    target = settings.database.display
    if as_json:
        _echo_json({"database": target, "before": before, "after": after})
    elif before == after:
        click.echo(f"{target}: already at migration {after}")
    else:
        click.echo(f"{target}: migrated from {before or 'nothing'} to {after}")


@db.command()
@JSON_OPTION
def current(as_json: bool) -> None:
    """Show the database's migration and the one this worker needs; exit 1 when it is behind."""
    from kpi_export.audit import create_engine
    from kpi_export.schema import current_revision, head_revision

    settings = _settings()

    async def go() -> str | None:
        engine = create_engine(settings.database)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    now, head = _run(go()), head_revision()
    if as_json:
        _echo_json(
            {"database": settings.database.display, "current": now, "head": head, "up_to_date": now == head}
        )
    else:
        state = "up to date" if now == head else "run `kpi-export db upgrade`"
        click.echo(f"{settings.database.display}: at {now or 'nothing'}, this worker needs {head} ({state})")
    if now != head:
        sys.exit(1)


@cli.command()
@click.option("--usuario-id", help="usuarioId; sent as a number when it is one, else as the text given.")
@click.option("--ip", help="Client address, e.g. 203.0.113.7 or an X-Forwarded-For list.")
@click.option("--filters", "filters_json", help='Filters as JSON, e.g. \'{"area": "ventas"}\'.')
@click.option("--format", "fmt", help="Export format, e.g. xlsx (default on the worker: csv).")
@click.option("--data", "data_json", help="The whole job.data as JSON, instead of the options above.")
@click.option("--from-file", type=click.File("r"), help="One job.data JSON object per line ('-': stdin).")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1), help="Add this many copies.")
@click.option("--attempts", type=click.IntRange(1), help="BullMQ attempts (retries on a database error).")
@click.option("--name", default="kpi-export", show_default=True, help="BullMQ job name.")
def enqueue(
    usuario_id: str | None,
    ip: str | None,
    filters_json: str | None,
    fmt: str | None,
    data_json: str | None,
    from_file: Any,
    count: int,
    attempts: int | None,
    name: str,
) -> None:
    """Add export jobs to QUEUE_NAME, as the Node application does; prints their ids."""
    from kpi_export.operations import add_jobs

    settings = _settings()
    if from_file is not None:
        payloads = [_json_arg(line, "--from-file") for line in from_file if line.strip()]
    elif data_json is not None:
        payloads = [_json_arg(data_json, "--data")]
    else:
        data: dict[str, Any] = {}
        if usuario_id is not None:
            data["usuarioId"] = int(usuario_id) if re.fullmatch(r"-?[0-9]+", usuario_id) else usuario_id
        if ip is not None:
            data["ip"] = ip
        if filters_json is not None:
            data["filters"] = _json_arg(filters_json, "--filters")
        if fmt is not None:
            data["format"] = fmt
        payloads = [data]
    opts: dict[str, Any] = {"attempts": attempts} if attempts else {}
    ids = _run(add_jobs(settings, name, payloads * count, opts))
    for job_id in ids:
        click.echo(job_id)


@cli.command("job")
@click.argument("job_id")
def job_command(job_id: str) -> None:
    """Show one job as JSON: state, progress, result, failure reason, attempts."""
    from kpi_export.operations import job_snapshot

    settings = _settings()
    snapshot = _run(job_snapshot(settings, job_id))
    if snapshot is None:
        click.echo(f"kpi-export: no job {job_id!r} in queue {settings.queue_name!r}", err=True)
        sys.exit(1)
    text = json.dumps(snapshot, ensure_ascii=False, indent=2)
    click.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))  # bytes that were not UTF-8: \udcff


@cli.command()
@click.option(
    "--jobs",
    "total",
    default=200,
    show_default=True,
    type=click.IntRange(1),
    help="How many sample jobs to enqueue.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Where the demo keeps its SQLite file and Redis socket.",
)
def demo(total: int, workdir: Path) -> None:
    """The end-to-end demo of `make run`: an embedded Redis, SQLite, the real worker and sample jobs."""
    from kpi_export.demo import run_demo

    setup_logging("WARNING", "text", stream=sys.stderr)
    sys.exit(run_demo(total, workdir))


@cli.command()
@JSON_OPTION
def check(as_json: bool) -> None:
    """Readiness, for probes that run a command: exit 0 when Redis and the database answer and the audit table
    is migrated, else 1 (the checks /readyz makes)."""
    from kpi_export.audit import create_engine
    from kpi_export.queue import redis_client
    from kpi_export.readiness import Readiness, check_readiness

    settings = _settings()

    async def go() -> Readiness:
        client = redis_client(settings, max_connections=1)
        engine = create_engine(settings.database, pooled=False)
        try:
            return await check_readiness(client, engine)
        finally:
            await client.aclose()
            await engine.dispose()

    readiness = _run(go())
    if as_json:
        _echo_json(readiness.body())
    else:
        table = _table("check", "state")
        for name, state in readiness.checks.items():
            table.add_row(name, state if state == "ok" else f"[red]{escape(state)}[/red]")
        _print(table)
        click.echo("ready" if readiness.ready else f"not ready: {', '.join(readiness.failing)}")
    sys.exit(0 if readiness.ready else 1)


@cli.command()
@JSON_OPTION
def stats(as_json: bool) -> None:
    """Jobs in QUEUE_NAME by state, the workers connected, and the age of the oldest waiting job."""
    from kpi_export.operations import queue_stats

    settings = _settings()
    found = _run(queue_stats(settings))
    if as_json:
        _echo_json(found)
        return
    table = _table("state", "jobs", title=f"Queue {settings.queue_name}")
    for state, count in found["counts"].items():
        table.add_row(state, f"{count:,}")
    _print(table)
    workers = found["workers"]
    if workers is None:
        click.echo("workers connected: unknown (this Redis does not allow CLIENT LIST)")
    else:
        names = ", ".join(str(worker["name"]) for worker in workers)
        click.echo(f"workers connected: {len(workers)}" + (f" ({names})" if names else ""))
    age = found["oldest_waiting_age_s"]
    click.echo(f"oldest waiting job: {'none waiting' if age is None else _duration(age) + ' ago'}")


@cli.command()
@click.option(
    "--state",
    type=click.Choice(["waiting", "prioritized", "active", "delayed", "completed", "failed"]),
    default="failed",
    show_default=True,
    help="Which jobs to list.",
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="At most this many.")
@JSON_OPTION
def jobs(state: str, limit: int, as_json: bool) -> None:
    """List jobs in one state: id, when added, attempts, failure reason (newest first; waiting ones oldest
    first)."""
    from kpi_export.operations import list_jobs

    settings = _settings()
    found = _run(list_jobs(settings, state, limit))
    if as_json:
        _echo_json(found)
        return
    last = "result" if state == "completed" else "reason"
    table = _table("id", "added (UTC)", "attempts", last, title=f"{state} jobs in {settings.queue_name}")
    for job in found:
        shown = json.dumps(job["returnvalue"]) if state == "completed" else job["failedReason"] or ""
        table.add_row(
            escape(str(job["id"])),
            _when_ms(job["added"]),
            f"{job['attemptsMade']}/{job['attempts']}",
            escape(shown),
        )
    _print(table)
    click.echo(f"{len(found)} job(s)" + (f" (--limit {limit})" if len(found) == limit else ""))


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed job of the queue.")
@JSON_OPTION
def retry(job_ids: tuple[str, ...], all_failed: bool, as_json: bool) -> None:
    """Put failed jobs back to wait (JOB_IDS, or --all-failed); their audit row stays single (idempotency key).

    Exit status 1 when an id is unknown or its job is not failed."""
    from kpi_export.operations import retry_all_failed, retry_jobs

    if bool(job_ids) == all_failed:
        raise click.UsageError("give job ids or --all-failed (not both)")
    settings = _settings()
    if all_failed:
        with _progress() as progress:
            task = progress.add_task("Retrying failed jobs", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            retried = _run(retry_all_failed(settings, advance))
        if as_json:
            _echo_json({"retried": retried})
        else:
            click.echo(f"{retried} failed job(s) put back to wait")
        return
    outcome = _run(retry_jobs(settings, list(job_ids)))
    if as_json:
        _echo_json(outcome)
    else:
        table = _table("id", "result")
        for job_id, result in outcome.items():
            table.add_row(escape(job_id), result if result == "retried" else f"[red]{escape(result)}[/red]")
        _print(table)
    if any(result != "retried" for result in outcome.values()):
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
    from kpi_export.audit_query import list_rows

    audit_filter = AuditFilter(
        usuario_id=usuario_id,
        since=_when_option(since, "--since"),
        until=_when_option(until, "--until", upper_bound=True),
        format=fmt,
    )
    settings = _settings()
    if csv_path is not None:
        written = _run(_write_csv(settings, audit_filter, limit, csv_path))
        if as_json:
            _echo_json({"file": str(csv_path), "rows": written})
        else:
            click.echo(f"{written} row(s) written to {csv_path}")
        return
    rows = _run(_with_engine(settings, lambda engine: list_rows(engine, audit_filter, limit or 50)))
    if as_json:
        _echo_json(rows)
        return
    table = _table("idExport", "createdAt (UTC)", "usuarioId", "ip", "format", "filters")
    for row in rows:
        table.add_row(
            str(row["idExport"]),
            row["createdAt"].replace("T", " ")[:19],
            str(row["usuarioId"]),
            escape(row["ip"] or ""),
            escape(row["format"]),
            escape(_short(json.dumps(row["filters"], ensure_ascii=False))),
        )
    _print(table)
    click.echo(f"{len(rows)} row(s)" + (" (--limit reached)" if len(rows) == (limit or 50) else ""))


@audit.command("show")
@click.argument("id_export", type=int)
@JSON_OPTION
def audit_show(id_export: int, as_json: bool) -> None:
    """Show one audit row, its filters in full."""
    from kpi_export.audit_query import get_row

    settings = _settings()
    row = _run(_with_engine(settings, lambda engine: get_row(engine, id_export)))
    if row is None:
        click.echo(f"kpi-export: no audit row with idExport {id_export}", err=True)
        sys.exit(1)
    if as_json:
        _echo_json(row)
        return
    table = _table("field", "value", title=f"Audit row {id_export}")
    for name, value in row.items():
        shown = json.dumps(value, ensure_ascii=False, indent=2) if name == "filters" else str(value)
        table.add_row(name, escape(shown))
    _print(table)


async def _with_engine(settings: Settings, use: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from kpi_export.audit import create_engine

    engine = create_engine(settings.database, pool_size=1)
    try:
        return await use(engine)
    finally:
        await engine.dispose()


async def _write_csv(settings: Settings, audit_filter: AuditFilter, limit: int | None, path: Path) -> int:
    from kpi_export.audit_query import COLUMNS, count_rows, stream_rows

    async def go(engine: AsyncEngine) -> int:
        total = await count_rows(engine, audit_filter)
        total = min(total, limit) if limit else total
        written = 0
        with path.open("w", newline="", encoding="utf-8") as file, _progress() as progress:
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

    return await _with_engine(settings, go)


def _when_option(text: str | None, option: str, *, upper_bound: bool = False) -> datetime | None:
    from kpi_export.audit_query import parse_when

    if text is None:
        return None
    try:
        return parse_when(text, upper_bound=upper_bound)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def _table(*columns: str, title: str | None = None) -> Table:
    """The last column takes what width is left and folds; the others keep to one line."""
    table = Table(title=title, title_justify="left")
    for column in columns[:-1]:
        table.add_column(column, no_wrap=True)
    table.add_column(columns[-1], overflow="fold")
    return table


def _print(renderable: Any) -> None:
    Console().print(renderable)


def _progress() -> Progress:
    """A progress bar on stderr (stdout stays for the result)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _duration(seconds: float) -> str:
    """3 s, 4 min 12 s, 2 h 5 min, 3 d 4 h."""
    whole = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)):
        if whole >= size:
            return f"{whole // size} {unit} {whole % size // sub_size} {sub}"
    return f"{seconds:.1f} s"


def _when_ms(timestamp_ms: int | None) -> str:
    if not timestamp_ms:
        return ""
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc.msg})", param_hint=option) from None


def main() -> None:
    cli()
