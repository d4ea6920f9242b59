"""`python -m bench` (make bench): every contender, every concurrency, repeated; a table, JSON and a chart."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from bench.baseline import build_baseline
from bench.report import chart, markdown, medians, network_label, table, targets, targets_table, write_json
from bench.runs import BenchError, Measurement, Plan, measure
from bench.workers import CONTENDERS, Contender, node_baseline_ready

RESULTS = Path(__file__).parent / "results"


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@click.command()
@click.option("--jobs", default=10000, show_default=True, help="Backlog size of each run (measured).")
@click.option(
    "--warmup",
    default=10000,
    show_default=True,
    help="Jobs each worker processes before the measured backlog (V8's JIT needs thousands to warm up).",
)
@click.option(
    "--repeat", default=3, show_default=True, help="Runs of each measurement; the table shows medians."
)
@click.option("--concurrency", "levels", default="1,10,50,100", show_default=True)
@click.option(
    "--contenders",
    default="python,node,python-2p,noop",
    show_default=True,
    help=f"Of {', '.join(CONTENDERS)}.",
)
@click.option("--databases", default="postgresql,sqlite", show_default=True, help="SQLite: this worker only.")
@click.option(
    "--stream-rate",
    default=200.0,
    show_default=True,
    help="Jobs/s of the steady stream (at most half the backlog rate).",
)
@click.option(
    "--stream-seconds",
    default=30.0,
    show_default=True,
    help="Length of the steady stream: its p99 is its 1 % slowest jobs, and a shorter stream lets one stall "
    "of the shared PostgreSQL decide it.",
)
@click.option(
    "--rss-jobs",
    default="10000,100000",
    show_default=True,
    help="Backlogs for the flat-RSS check ('' to skip).",
)
@click.option(
    "--quick",
    is_flag=True,
    help="While developing: 1000 jobs, 1 run, 3 s of stream, concurrency 50, no RSS check.",
)
@click.option("--redis-url", default=lambda: os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
@click.option(
    "--postgres-url",
    default=lambda: os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
)
@click.option(
    "--rtt-ms",
    type=click.FloatRange(0, 1000),
    help="Put a network of this round-trip time (a delay proxy, bench/netdelay.py) between the workers and "
    "Redis and PostgreSQL, and count each worker's round trips per job.",
)
@click.option(
    "--network-rtt-ms",
    type=click.FloatRange(0, 1000),
    default=1.0,
    show_default=True,
    help="Also a pass through a network of this round-trip time (0: none): this worker and the original "
    "(those of --contenders) at --network-concurrency, counting their round trips per job.",
)
@click.option("--network-concurrency", "network_levels", default="1,10,50", show_default=True)
@click.option(
    "--baseline",
    metavar="REV",
    help="Also run this worker as it was at commit REV (built in a clone with its own virtualenv): "
    "the contender python-base, for a change measured against the code before it.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(
    jobs: int,
    warmup: int,
    repeat: int,
    levels: str,
    contenders: str,
    databases: str,
    stream_rate: float,
    stream_seconds: float,
    rss_jobs: str,
    quick: bool,
    redis_url: str,
    postgres_url: str,
    rtt_ms: float | None,
    network_rtt_ms: float,
    network_levels: str,
    baseline: str | None,
    out: Path,
) -> None:
    """Measure this worker against the Node original on the same Redis and database, in one run."""
    if quick:
        jobs, warmup, repeat, levels, stream_seconds, rss_jobs = 1000, 1000, 1, "50", 3.0, ""
        network_rtt_ms = 0
    # SIGTERM (`timeout`, a cancelled job) unwinds like an error: the run's worker is stopped, its queue and
    # schema removed.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    console = Console(width=150)
    chosen = [CONTENDERS[name] for name in _names(contenders)]
    workdir = Path(tempfile.mkdtemp(prefix="kpi-bench-"))
    if baseline is not None:
        console.print(f"Building this worker at {baseline} (a clone and a virtualenv in {workdir})")
        python = build_baseline(baseline, workdir)
        CONTENDERS["python-base"] = Contender("python-base", "python", python=str(python), revision=baseline)
        chosen.append(CONTENDERS["python-base"])
    if any(c.runtime == "node" for c in chosen) and not node_baseline_ready():
        raise click.ClickException(
            "the Node baseline is not built: run `make bench` (it builds bench/node-baseline)"
        )
    out.mkdir(parents=True, exist_ok=True)
    plan = Plan(redis_url, postgres_url, workdir, rtt_ms=rtt_ms)
    across = replace(plan, rtt_ms=network_rtt_ms) if network_rtt_ms and rtt_ms is None else None
    schedule: list[tuple[int, Plan, str, int, Contender]] = []
    for rep in range(repeat):
        schedule += [
            (rep, plan, database, level, contender)
            for database in _names(databases)
            for level in _ints(levels)
            for contender in chosen
            if database == "postgresql" or contender.name in ("python", "python-base")
        ]
        if across is not None:
            schedule += [
                (rep, across, "postgresql", level, contender)
                for level in _ints(network_levels)
                for contender in chosen
                if contender.name in ("python", "node")
            ]
    meta = _machine() | {
        "command": "make bench " + shlex.join(sys.argv[1:]),
        "started": _now(),
        "jobs": jobs,
        "warmup": warmup,
        "repeat": repeat,
        "stream_seconds": stream_seconds,
        "rtt_ms": rtt_ms,
        "network_rtt_ms": across.rtt_ms if across else None,
        "baseline": baseline,
    }
    measurements: list[Measurement] = []
    rss: dict[int, float] = {}
    try:
        for index, (rep, where, database, level, contender) in enumerate(schedule, 1):
            m = asyncio.run(
                measure(
                    where,
                    contender,
                    database,
                    level,
                    jobs,
                    stream_rate,
                    stream_seconds,
                    seed=rep,
                    warmup=warmup,
                )
            )
            measurements.append(m)
            console.print(
                f"[{index}/{len(schedule)}] {network_label(where.rtt_ms):10} {database:10} "
                f"{contender.name:9} c={level:<3} "
                f"{m.throughput:8,.0f} jobs/s  {m.cpu_ms_per_job:6.2f} CPU ms/job  "
                f"p99 {m.p99_ms if m.p99_ms is not None else '—'} ms at {m.stream_rate:.0f}/s  "
                f"RSS {m.peak_rss_mb:.1f} MB"
            )
        for size in _ints(rss_jobs):
            m = asyncio.run(
                measure(plan, CONTENDERS["python"], "postgresql", 50, size, stream_rate, 0, seed=99)
            )
            rss[size] = m.peak_rss_mb
            console.print(
                f"RSS check: backlog {size:,}: peak RSS {m.peak_rss_mb:.1f} MB ({m.throughput:,.0f} jobs/s)"
            )
    except BenchError as exc:
        raise click.ClickException(f"{exc} (worker logs in {plan.workdir})") from None
    meta["finished"] = _now()
    meta["load_average_at_end"] = os.getloadavg()
    rows = medians(measurements)
    verdicts = targets(rows, rss)
    console.print(table(rows))
    console.print(targets_table(verdicts))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    json_path, png_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    write_json(json_path, meta, measurements, rows, rss, verdicts)
    json_path.with_suffix(".md").write_text(markdown(json.loads(json_path.read_text())) + "\n")
    chart(
        png_path,
        rows,
        f"{meta['cpu']} · {meta['cores']} cores · {jobs:,} jobs a run after {warmup:,} of warm-up, median of {repeat}",
    )
    console.print(
        f"Wrote {json_path}, {png_path} and the tables in Markdown ({json_path.with_suffix('.md')})"
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node,
        "packages": {name: version(name) for name in ("bullmq", "redis", "hiredis", "sqlalchemy", "asyncpg")},
        "load_average_at_start": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
