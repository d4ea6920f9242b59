"""`make profile`: where this worker's time goes on a backlog, sampled by py-spy (on-CPU and waiting).

Prints the functions with the most samples, by own time and by time including callees, and keeps the
collapsed stacks (flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import click

from bench.runs import Plan, _add_paused, _wait_finished
from bench.targets import make_place, remove_place
from bench.workers import CONTENDERS, RunningWorker
from kpi_export.bullmq import create_queue
from kpi_export.demo.samples import sample_jobs


async def profile(plan: Plan, jobs: int, concurrency: int, database: str, idle: bool, stacks: Path) -> None:
    place = await make_place(plan.redis_url, database, plan.postgres_url, plan.workdir, prisma_table=False)
    settings = place.settings()
    queue = create_queue(settings.redis, settings.queue)
    worker = RunningWorker(CONTENDERS["python"], place, concurrency, plan.workdir / "worker.log")
    spy: asyncio.subprocess.Process | None = None
    try:
        await _add_paused(queue, sample_jobs(jobs))
        await asyncio.to_thread(worker.wait_ready)
        # Attached once the worker is ready, so that start-up (imports, connections) is left out.
        command = ["py-spy", "record", "--pid", str(worker.process.pid), "--format", "raw", "--rate", "250"]
        command += ["--output", str(stacks), "--nonblocking", *(["--idle"] if idle else [])]
        spy = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        await asyncio.sleep(1)  # py-spy's own start
        await queue.resume()
        await _wait_finished(place, jobs, timeout=60 + jobs / 20)
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its stacks on Control-C
            await asyncio.wait_for(spy.wait(), 60)
        await asyncio.to_thread(worker.stop)
        await queue.close()
        await remove_place(place, plan.postgres_url)


def summarise(stacks: Path, top: int) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in stacks.read_text().splitlines():
        frames, _, count_text = line.rpartition(" ")
        if not frames or not count_text.isdigit():
            continue
        count = int(count_text)
        names = [_short(f) for f in frames.split(";")]
        total += count
        own[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    lines = [f"{total} samples"]
    for title, counter in (("own time", own), ("including callees", inclusive)):
        lines.append(f"\ntop {top} by {title}:")
        lines += [f"  {100 * n / total:5.1f} %  {name}" for name, n in counter.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """'process_job (kpi_export/processor.py:40)' with the site-packages prefix dropped."""
    for marker in ("site-packages/", "/lib/python3"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            return f"{head}({tail.split(marker, 1)[-1]}"
    return frame.replace(str(Path.cwd()) + "/", "")


@click.command()
@click.option("--jobs", default=5000, show_default=True)
@click.option("--concurrency", default=50, show_default=True)
@click.option("--database", default="postgresql", show_default=True)
@click.option("--idle/--cpu-only", default=False, help="Also count samples of threads that wait (off-CPU).")
@click.option("--top", default=25, show_default=True)
@click.option("--redis-url", default=lambda: os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
@click.option(
    "--postgres-url",
    default=lambda: os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
def main(
    jobs: int, concurrency: int, database: str, idle: bool, top: int, redis_url: str, postgres_url: str
) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kpi-profile-"))
    stacks = workdir / "stacks.txt"
    asyncio.run(profile(Plan(redis_url, postgres_url, workdir), jobs, concurrency, database, idle, stacks))
    click.echo(summarise(stacks, top))
    click.echo(f"\ncollapsed stacks: {stacks}")


if __name__ == "__main__":
    main()
