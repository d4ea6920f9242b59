"""Running the worker: `worker`, the readiness `check`, and the `demo` of `make run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kpi_export.cli.app import JSON_OPTION, cli, run, settings_or_exit
from kpi_export.cli.render import echo_result, show
from kpi_export.logs import setup_logging
from kpi_export.tables import shown, styled, table

if TYPE_CHECKING:
    from kpi_export.config import Settings
    from kpi_export.runtime.id_guard import IdCheck
    from kpi_export.runtime.readiness import Readiness


@cli.command()
# Given by the supervisor to each of its worker processes, so that their log lines say which one wrote them.
@click.option("--process-index", type=click.IntRange(1), hidden=True)
def worker(process_index: int | None) -> None:
    """Consume QUEUE_NAME until SIGINT/SIGTERM; each valid job gives one row in kpi_auditoria_export.

    WORKER_PROCESSES=N runs N worker processes under a supervisor that forwards signals and restarts them.
    """
    from kpi_export.runtime.worker_process import run_worker_process

    run_worker_process(settings_or_exit(console=True, process=process_index))


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
    try:
        from kpi_export.demo.run import run_demo
    except ModuleNotFoundError:
        click.echo(
            "kpi-export: the demo is not part of this installation; run `make run` in a clone", err=True
        )
        sys.exit(1)

    setup_logging("WARNING", "text", stream=sys.stderr)
    sys.exit(run_demo(total, workdir))


@cli.command()
@JSON_OPTION
def check(as_json: bool) -> None:
    """Readiness, for probes that run a command: exit 0 when Redis and the database answer and the audit table
    is migrated, else 1 (the checks /readyz makes). It also warns when the table's next idExport is at or below
    one that a result Redis keeps names: the database went back in time (`audit reconcile`)."""
    from kpi_export.bullmq import redis_client
    from kpi_export.errors import DatabaseMissing
    from kpi_export.runtime.readiness import (
        check_readiness,
        check_readiness_without_database,
        with_rights_warning,
    )
    from kpi_export.store import opened_engine

    settings = settings_or_exit()

    async def go() -> tuple[Readiness, IdCheck | None]:
        client = redis_client(settings.redis, max_connections=1)
        try:
            async with opened_engine(settings.database.target, pooled=False, create=False) as engine:
                readiness = await check_readiness(client, engine)
                readiness = await with_rights_warning(readiness, engine)
                return readiness, await _ids(settings, engine) if readiness.ready else None
        except DatabaseMissing as exc:
            return await check_readiness_without_database(client, str(exc)), None
        finally:
            await client.aclose()

    readiness, ids = run(go())
    body = readiness.body()
    if ids is not None:
        body["ids"] = {
            "nextIdExport": ids.next_id,
            "highestKept": ids.highest_kept,
            "wentBack": ids.went_back,
        }
    echo_result(as_json, body, lambda: _show_readiness(readiness, ids))
    sys.exit(0 if readiness.ready else 1)


async def _ids(settings: Settings, engine: Any) -> IdCheck | None:
    """The ids against the results Redis keeps; a failure to tell is said on stderr, and not readiness's."""
    from kpi_export.redaction import describe
    from kpi_export.runtime.id_guard import check_ids

    try:
        return await check_ids(settings, engine)
    except Exception as exc:
        click.echo(f"kpi-export: the audit ids were not checked against Redis: {describe(exc)}", err=True)
        return None


def _show_readiness(readiness: Readiness, ids: IdCheck | None) -> None:
    found = table("check", "state")
    for name, state in readiness.checks.items():
        found.add_row(name, state if state == "ok" else styled(state, "red"))
    show(found)
    if readiness.redis_master is not None:
        click.echo(f"redis master: {shown(readiness.redis_master)} (named by the sentinels)")
    if readiness.database_hosts is not None:
        host = shown(readiness.database_host or "none")
        click.echo(f"database host: {host} (of {shown(readiness.database_hosts)}, the one that answered)")
    if ids is not None and ids.went_back:
        click.echo(f"WARNING: {shown(ids.message())}; a worker moves the ids past it as it starts")
    click.echo("ready" if readiness.ready else f"not ready: {', '.join(readiness.failing)}")
    for line in readiness.warnings:
        click.echo(f"warning: {line}", err=True)
