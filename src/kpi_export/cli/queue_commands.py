"""The queue's commands: `enqueue` as the Node application does, `job`, `stats`, `jobs`, `retry`."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from typing import Any

import click

from kpi_export.cli.app import JSON_OPTION, cli, run, settings_or_exit
from kpi_export.cli.fit import clipped
from kpi_export.cli.json_input import json_arg
from kpi_export.cli.render import (
    attempts,
    counted,
    duration,
    echo_result,
    progress_bar,
    show,
    show_rows,
    when_ms,
)
from kpi_export.runtime.tracing_switch import tracing_wanted
from kpi_export.tables import shown, styled, table

JOB_VALUE_LIMIT = 500  # characters of a value `job` shows without --full: about ten lines at 80 columns


@cli.command()
@click.option(
    "--usuario-id", help="usuarioId; sent as a number when it is one (42.0 as 42), else as the text given."
)
@click.option("--ip", help="Client address, e.g. 203.0.113.7 or an X-Forwarded-For list.")
@click.option("--filters", "filters_json", help='Filters as JSON, e.g. \'{"area": "ventas"}\'.')
@click.option("--format", "fmt", help="Export format, e.g. xlsx (default on the worker: csv).")
@click.option("--data", "data_json", help="The whole job.data as JSON, instead of the options above.")
@click.option(
    "--from-file", type=click.File("r"), help="One job.data JSON object per line ('-': stdin), instead."
)
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
    from kpi_export.bullmq import add_jobs

    fields = {"usuarioId": usuario_id, "ip": ip, "filters": filters_json, "format": fmt}
    payloads = _payloads(fields, data_json, from_file)
    settings = settings_or_exit(database=False)
    opts: dict[str, Any] = {"attempts": attempts} if attempts else {}
    if tracing_wanted():  # the jobs carry the context of a PRODUCER span, as npm bullmq with bullmq-otel
        from kpi_export.runtime.tracing import CONTEXT_OPTION, producer_span

        with producer_span(settings.queue.name, name, len(payloads) * count) as context:
            ids = run(
                add_jobs(
                    settings.redis, settings.queue, name, payloads * count, opts | {CONTEXT_OPTION: context}
                )
            )
    else:
        ids = run(add_jobs(settings.redis, settings.queue, name, payloads * count, opts))
    for job_id in ids:
        click.echo(shown(job_id))


def _payloads(fields: dict[str, str | None], data_json: str | None, from_file: Any) -> list[Any]:
    """The job.data to add, from exactly one of: the field options, --data, --from-file."""
    given = [
        option for option, value in (("--data", data_json), ("--from-file", from_file)) if value is not None
    ]
    if any(value is not None for value in fields.values()):
        given.append("--usuario-id/--ip/--filters/--format")
    if len(given) != 1:
        raise click.UsageError(
            f"give one of {' or '.join(given)}, not both"
            if given
            else "nothing to add: give --usuario-id (with --ip, --filters, --format), --data or --from-file"
        )
    if from_file is not None:
        return [
            json_arg(line, f"--from-file (line {number})")
            for number, line in enumerate(from_file, start=1)
            if line.strip()
        ]
    if data_json is not None:
        return [json_arg(data_json, "--data")]
    data = {name: value for name, value in fields.items() if value is not None}
    if "usuarioId" in data:
        data["usuarioId"] = _number_or_text(data["usuarioId"])
    if "filters" in data:
        data["filters"] = json_arg(data["filters"], "--filters")
    return [data]


def _number_or_text(text: str) -> Any:
    """A number as the Node application's JSON would carry it (42.0 is 42 there), else the text given."""
    if not _JSON_NUMBER.fullmatch(text):
        return text
    try:
        value = json.loads(text)
    except ValueError:  # more digits than Python reads as an int
        return text
    if isinstance(value, float) and not math.isfinite(value):  # 1e400: JSON has no such number
        return text
    return int(value) if isinstance(value, float) and value.is_integer() else value


@cli.command("job")
@click.argument("job_id")
@click.option(
    "--full", is_flag=True, help=f"Show long values whole (else the first {JOB_VALUE_LIMIT:,} characters)."
)
@JSON_OPTION
def job_command(job_id: str, full: bool, as_json: bool) -> None:
    """Show one job: state, data, progress, result, failure reason, attempts, times (UTC; --json: bullmq's
    epoch milliseconds, every value whole)."""
    from kpi_export.bullmq import job_snapshot

    settings = settings_or_exit(database=False)
    snapshot = run(job_snapshot(settings.redis, settings.queue, job_id))
    if snapshot is None:
        click.echo(f"kpi-export: no job {shown(job_id)} in queue {settings.queue.name}", err=True)
        sys.exit(1)
    echo_result(as_json, snapshot, lambda: _show_job(job_id, settings.queue.name, snapshot, full))


def _show_job(job_id: str, queue: str, snapshot: dict[str, Any], full: bool) -> None:
    shown_table = table("field", "value", title=f"Job {job_id} in {queue}")
    for field, value in snapshot.items():
        if field == "attemptsMade":
            continue  # shown with the attempts allowed
        if field == "attempts":
            shown_table.add_row(field, attempts(snapshot["attemptsMade"], value))
        elif field in _TIMES:
            shown_table.add_row(f"{field} (UTC)", when_ms(value))
        elif value is None:
            shown_table.add_row(field, value)
        else:
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            shown_table.add_row(
                field, text if full else clipped(text, JOB_VALUE_LIMIT, hint="--full shows all")
            )
    show(shown_table)


@cli.command()
@JSON_OPTION
def stats(as_json: bool) -> None:
    """Jobs in QUEUE_NAME by state, the workers connected, and the age of the oldest waiting job."""
    from kpi_export.bullmq import queue_stats

    settings = settings_or_exit(database=False)
    found = run(queue_stats(settings.redis, settings.queue))
    echo_result(as_json, found, lambda: _show_stats(settings.queue.name, found))


def _show_stats(queue: str, found: dict[str, Any]) -> None:
    shown_table = table("state", "jobs", title=f"Queue {queue}")
    for state, count in found["counts"].items():
        shown_table.add_row(state, f"{count:,}")
    show(shown_table)
    workers = found["workers"]
    if workers is None:
        click.echo("workers connected: unknown (this Redis does not allow CLIENT LIST)")
    else:
        names = ", ".join(shown(worker["name"]) for worker in workers)
        click.echo(f"workers connected: {len(workers)}" + (f" ({names})" if names else ""))
    age = found["oldest_waiting_age_s"]
    click.echo(f"oldest waiting job: {'none waiting' if age is None else duration(age) + ' ago'}")


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
    from kpi_export.bullmq import list_jobs

    settings = settings_or_exit(database=False)
    found = run(list_jobs(settings.redis, settings.queue, state, limit))
    echo_result(as_json, found, lambda: _show_jobs(settings.queue.name, state, limit, found))


def _show_jobs(queue: str, state: str, limit: int, found: list[dict[str, Any]]) -> None:
    last, value_of = _LAST_COLUMN.get(state, ("name", lambda job: job["name"]))
    show_rows(
        ("id", "added (UTC)", "attempts", last),
        [
            (
                job["id"],
                when_ms(job["added"]),
                attempts(job["attemptsMade"], job["attempts"]),
                f"unreadable: {job['unreadable']}" if "unreadable" in job else value_of(job),
            )
            for job in found
        ],
        title=f"{state} jobs in {queue}",
    )
    click.echo(counted(len(found), "job") + (f" (--limit {limit})" if len(found) == limit else ""))


# The last column of `jobs`, by state: what a person looks for in jobs of that state (else their name).
_LAST_COLUMN: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "failed": ("reason", lambda job: job["failedReason"]),
    "completed": ("result", lambda job: json.dumps(job["returnvalue"], ensure_ascii=False)),
    "active": ("started (UTC)", lambda job: when_ms(job["processedOn"])),
    "delayed": ("runs at (UTC)", lambda job: when_ms(job["runsAt"])),
}
_TIMES = ("timestamp", "processedOn", "finishedOn")
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


@cli.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed job of the queue.")
@JSON_OPTION
def retry(job_ids: tuple[str, ...], all_failed: bool, as_json: bool) -> None:
    """Put failed jobs back to wait (JOB_IDS, or --all-failed); their audit row stays single (idempotency key).

    Exit status 1 when an id is unknown or its job is not failed."""
    from kpi_export.bullmq import retry_all_failed, retry_jobs

    if bool(job_ids) == all_failed:
        raise click.UsageError("give job ids or --all-failed (not both)")
    settings = settings_or_exit(database=False)
    if all_failed:
        with progress_bar() as progress:
            task = progress.add_task("Retrying failed jobs", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            retried = run(retry_all_failed(settings.redis, settings.queue, advance))
        echo_result(
            as_json,
            {"retried": retried},
            lambda: click.echo(f"{counted(retried, 'failed job')} put back to wait"),
        )
        return
    outcome = run(retry_jobs(settings.redis, settings.queue, list(job_ids)))
    echo_result(as_json, outcome, lambda: _show_retried(outcome))
    if any(result != "retried" for result in outcome.values()):
        sys.exit(1)


def _show_retried(outcome: dict[str, str]) -> None:
    shown_table = table("id", "result")
    for job_id, result in outcome.items():
        shown_table.add_row(job_id, result if result == "retried" else styled(result, "red"))
    show(shown_table)
