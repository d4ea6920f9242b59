"""The queue's commands: `enqueue` as the Node application does, `job`, `stats`, `jobs`, `retry`."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import click
from rich.markup import escape

from kpi_export.cli.app import JSON_OPTION, cli, json_arg, run, settings_or_exit
from kpi_export.cli.render import duration, echo_json, progress_bar, show, table, when_ms


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
    from kpi_export.bullmq import add_jobs

    settings = settings_or_exit()
    if from_file is not None:
        payloads = [json_arg(line, "--from-file") for line in from_file if line.strip()]
    elif data_json is not None:
        payloads = [json_arg(data_json, "--data")]
    else:
        data: dict[str, Any] = {}
        if usuario_id is not None:
            data["usuarioId"] = int(usuario_id) if re.fullmatch(r"-?[0-9]+", usuario_id) else usuario_id
        if ip is not None:
            data["ip"] = ip
        if filters_json is not None:
            data["filters"] = json_arg(filters_json, "--filters")
        if fmt is not None:
            data["format"] = fmt
        payloads = [data]
    opts: dict[str, Any] = {"attempts": attempts} if attempts else {}
    ids = run(add_jobs(settings, name, payloads * count, opts))
    for job_id in ids:
        click.echo(job_id)


@cli.command("job")
@click.argument("job_id")
def job_command(job_id: str) -> None:
    """Show one job as JSON: state, progress, result, failure reason, attempts."""
    from kpi_export.bullmq import job_snapshot

    settings = settings_or_exit()
    snapshot = run(job_snapshot(settings, job_id))
    if snapshot is None:
        click.echo(f"kpi-export: no job {job_id!r} in queue {settings.queue_name!r}", err=True)
        sys.exit(1)
    text = json.dumps(snapshot, ensure_ascii=False, indent=2)
    click.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))  # bytes that were not UTF-8: \udcff


@cli.command()
@JSON_OPTION
def stats(as_json: bool) -> None:
    """Jobs in QUEUE_NAME by state, the workers connected, and the age of the oldest waiting job."""
    from kpi_export.bullmq import queue_stats

    settings = settings_or_exit()
    found = run(queue_stats(settings))
    if as_json:
        echo_json(found)
        return
    shown_table = table("state", "jobs", title=f"Queue {settings.queue_name}")
    for state, count in found["counts"].items():
        shown_table.add_row(state, f"{count:,}")
    show(shown_table)
    workers = found["workers"]
    if workers is None:
        click.echo("workers connected: unknown (this Redis does not allow CLIENT LIST)")
    else:
        names = ", ".join(str(worker["name"]) for worker in workers)
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

    settings = settings_or_exit()
    found = run(list_jobs(settings, state, limit))
    if as_json:
        echo_json(found)
        return
    last = "result" if state == "completed" else "reason"
    shown_table = table("id", "added (UTC)", "attempts", last, title=f"{state} jobs in {settings.queue_name}")
    for job in found:
        shown = json.dumps(job["returnvalue"]) if state == "completed" else job["failedReason"] or ""
        shown_table.add_row(
            escape(str(job["id"])),
            when_ms(job["added"]),
            f"{job['attemptsMade']}/{job['attempts']}",
            escape(shown),
        )
    show(shown_table)
    click.echo(f"{len(found)} job(s)" + (f" (--limit {limit})" if len(found) == limit else ""))


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
    settings = settings_or_exit()
    if all_failed:
        with progress_bar() as progress:
            task = progress.add_task("Retrying failed jobs", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            retried = run(retry_all_failed(settings, advance))
        if as_json:
            echo_json({"retried": retried})
        else:
            click.echo(f"{retried} failed job(s) put back to wait")
        return
    outcome = run(retry_jobs(settings, list(job_ids)))
    if as_json:
        echo_json(outcome)
    else:
        shown_table = table("id", "result")
        for job_id, result in outcome.items():
            shown_table.add_row(
                escape(job_id), result if result == "retried" else f"[red]{escape(result)}[/red]"
            )
        show(shown_table)
    if any(result != "retried" for result in outcome.values()):
        sys.exit(1)
