"""The `kpi-export` command."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from kpi_export.config import Settings, load_settings
from kpi_export.errors import ConfigError
from kpi_export.logs import setup_logging

T = TypeVar("T")
EXIT_CONFIG = 2


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


def _run(coro: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """`fast_loop`: libuv's event loop (uvloop), about 10 % less CPU per job than asyncio's own."""
    if fast_loop:
        try:
            import uvloop
        except ImportError:  # not built for this platform (Windows)
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
    return asyncio.run(coro)


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
    outcome = _run(run_worker(settings, started=gc.freeze), fast_loop=True)
    if not outcome.clean:
        logging.shutdown()
        os._exit(outcome.status)  # leave bullmq's stuck task behind instead of waiting on it
    sys.exit(outcome.status)


@cli.group()
def db() -> None:
    """Database migrations."""


@db.command()
def upgrade() -> None:
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
    if before == after:
        click.echo(f"{target}: already at migration {after}")
    else:
        click.echo(f"{target}: migrated from {before or 'nothing'} to {after}")


@db.command()
def current() -> None:
    """Show the database's migration and the one this worker needs."""
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
    state = "up to date" if now == head else "run `kpi-export db upgrade`"
    click.echo(f"{settings.database.display}: at {now or 'nothing'}, this worker needs {head} ({state})")


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
    from kpi_export.queue import add_jobs

    settings = _settings()
    if from_file is not None:
        payloads = [_json_arg(line, "--from-file") for line in from_file if line.strip()]
    elif data_json is not None:
        payloads = [_json_arg(data_json, "--data")]
    else:
        data: dict[str, Any] = {}
        if usuario_id is not None:
            data["usuarioId"] = int(usuario_id) if usuario_id.strip().lstrip("-").isdigit() else usuario_id
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
    from kpi_export.queue import job_snapshot

    settings = _settings()
    snapshot = _run(job_snapshot(settings, job_id))
    if snapshot is None:
        click.echo(f"kpi-export: no job {job_id!r} in queue {settings.queue_name!r}", err=True)
        sys.exit(1)
    click.echo(json.dumps(snapshot, ensure_ascii=False, indent=2))


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


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc.msg})", param_hint=option) from None


def main() -> None:
    cli()
