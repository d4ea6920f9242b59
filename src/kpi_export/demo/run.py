"""`make run`: the real worker, end to end, on embedded defaults (a private Redis, a SQLite file)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from kpi_export.bullmq import add_jobs, job_counts, list_jobs, opened_queue
from kpi_export.config import Settings
from kpi_export.demo.embedded_redis import EmbeddedRedis
from kpi_export.demo.samples import sample_jobs
from kpi_export.store import opened_engine
from kpi_export.store.reader import AuditFilter, count_rows, list_rows
from kpi_export.store.schema import upgrade
from kpi_export.tables import SafeTable, shown, table

START_LINE = "Worker escuchando cola"
CONCURRENCY = 4


def run_demo(total: int, workdir: Path) -> int:
    console = Console()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    with EmbeddedRedis(workdir / "redis") as server:
        env = {
            **os.environ,
            "REDIS_URL": server.url,
            "DATABASE_URL": f"file:{workdir / 'demo.db'}",
            "QUEUE_NAME": "kpi-export-queue",
            "WORKER_CONCURRENCY": str(CONCURRENCY),
            "LOG_FORMAT": "text",
        }
        settings = Settings.of(
            redis_url=SecretStr(env["REDIS_URL"]),
            database_url=SecretStr(env["DATABASE_URL"]),
            queue_name=env["QUEUE_NAME"],
        )
        console.print(f"[bold]Embedded Redis[/] {server.url}   [bold]SQLite[/] {workdir / 'demo.db'}")
        asyncio.run(_migrate(settings))
        log_path = workdir / "worker.log"
        with log_path.open("wb") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "kpi_export", "worker"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                _wait_for_line(log_path, START_LINE, worker, timeout=30)
                console.print(f"[green]{_first_line_with(log_path, START_LINE)}[/]  (pid {worker.pid})")
                jobs = sample_jobs(total, invalid_every=10)
                counts = asyncio.run(_enqueue_and_follow(settings, jobs, console))
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    status = worker.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    status = worker.wait()
        rows, sample, reasons = asyncio.run(_summarise(settings, total))
    console.print(summary_table(total, counts, rows, reasons, status))
    console.print(rows_table(sample))
    console.print(f"Worker log: {log_path}")
    ok = status == 0 and counts["completed"] == rows and counts["completed"] + counts["failed"] == total
    if not ok:
        console.print("[red]The demo did not add up: see the worker log.[/]")
    return 0 if ok else 1


async def _migrate(settings: Settings) -> None:
    async with opened_engine(settings.database.target) as engine:
        await upgrade(engine)


def _wait_for_line(path: Path, text: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        if process.poll() is not None:
            raise SystemExit(f"the worker exited with status {process.returncode}:\n{path.read_text()}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start within {timeout:.0f} s:\n{path.read_text()}")
        time.sleep(0.05)


def _first_line_with(path: Path, text: str) -> str:
    return next(line for line in path.read_text().splitlines() if text in line)


async def _enqueue_and_follow(
    settings: Settings, jobs: list[dict[str, Any]], console: Console
) -> Counter[str]:
    await add_jobs(settings.redis, settings.queue, "kpi-export", jobs, {"attempts": 3})
    counts: Counter[str] = Counter()
    async with opened_queue(settings.redis, settings.queue) as queue:
        with Progress(
            TextColumn("[bold]Processing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("jobs", total=len(jobs), detail="")
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                counts = Counter(await job_counts(queue))
                done = counts["completed"] + counts["failed"]
                progress.update(
                    task, completed=done, detail=f"{counts['completed']} completed, {counts['failed']} failed"
                )
                if done >= len(jobs):
                    break
                await asyncio.sleep(0.1)  # a progress display refresh, not a test wait
    return counts


async def _summarise(settings: Settings, total: int) -> tuple[int, list[dict[str, Any]], Counter[str]]:
    async with opened_engine(settings.database.target) as engine:
        rows = await count_rows(engine, AuditFilter())
        sample = await list_rows(engine, AuditFilter(), 5)
    failed = await list_jobs(settings.redis, settings.queue, "failed", total)
    return rows, sample, Counter(job["failedReason"] for job in failed)


def summary_table(
    total: int, counts: Counter[str], rows: int, reasons: Counter[str], status: int
) -> SafeTable:
    """The failure reasons come from Redis: their cells are literal text, as in every other table."""
    found = SafeTable(title="Summary", show_header=False)
    found.add_column(style="bold")
    found.add_column(justify="right")
    found.add_row("jobs enqueued", total)
    found.add_row("jobs completed", _coloured(counts["completed"], "green"))
    found.add_row("jobs failed (invalid data, not retried)", _coloured(counts["failed"], "yellow"))
    for reason, count in reasons.most_common():
        found.add_row(f"  · {reason}", count)
    found.add_row("audit rows written", _coloured(rows, "green"))
    found.add_row("worker exit status after SIGTERM", status)
    return found


def _coloured(count: int, colour: str) -> Text:
    # The colour on the figure alone, not on the padding that justifies it.
    return Text.assemble((shown(count), colour))


def rows_table(rows: list[dict[str, Any]]) -> SafeTable:
    found = table("idExport", "usuarioId", "format", "createdAt (UTC)", "ip", title="Latest audit rows")
    for row in rows:
        created = row["createdAt"].replace("T", " ").removesuffix("Z")
        found.add_row(row["idExport"], row["usuarioId"], row["format"], created, row["ip"])  # no ip: a dash
    return found
