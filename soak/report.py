"""The soak's report: soak.md (the ledger and the faults as tables) and soak.png (throughput, p99 and the
workers' memory over time, each fault marked), next to soak.json."""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BUCKET_S = 10  # seconds per point of the picture

INTRO = """\
`make soak` runs the production shape on one machine: Redis (a master, a replica, three sentinels), PostgreSQL (a
primary and a synchronous streaming standby, reached by a multi-host `DATABASE_URL`), the worker as systemd runs
it (`WORKER_PROCESSES=2`, started again when it exits, sealing on) and a Node application adding jobs at a steady
rate, with a burst every ten minutes, one job in twenty invalid and some with hostile data. Every 30 s a fault
strikes, in rotation: kill -9 of a worker process; a rolling restart (SIGTERM, start); `SENTINEL FAILOVER`;
kill -9 of the Redis master; the database primary killed and its standby promoted (a new standby built from it);
a clean database switchover; Redis, then the database, unreachable for 10 s (every process stopped: connections
go silent, none is closed); the database read-only for 5 s; Redis at its `maxmemory` for 10 s. At the end, the
ledger sets every job the producer added against Redis and the database. `SOAK_MINUTES` and `SOAK_RATE` size it
(`make soak SOAK_MINUTES=10`); `make test` runs three minutes of it."""


def write(summary: dict[str, Any], finished: Sequence[tuple[int, int]], out: Path, *, picture: bool) -> None:
    (out / "soak.md").write_text(markdown(summary))
    if picture and finished:
        chart(summary, finished, out / "soak.png")


def markdown(summary: dict[str, Any]) -> str:
    led = summary["ledger"]
    rss = summary["rss_mb"]
    latency = led["latency_between_faults_ms"]

    def named(finding: Any) -> str:
        if isinstance(finding, dict):
            return f"{finding['count']} ({', '.join(finding['first'][:5])}{' …' if finding['count'] > 5 else ''})"
        return str(finding if finding else 0)

    title = f"# Soak: {summary['minutes']:g} minutes at {summary['rate']} jobs/s, a fault every {_interval(summary):g} s"
    first_rss, last_rss = (rss[0][1], rss[-1][1]) if rss else ("—", "—")
    rows = [
        (
            "jobs the producer added (Redis acknowledged)",
            f"{led['added']:,} ({led['invalid_added']:,} invalid)",
        ),
        ("completed / failed", f"{led['completed']:,} / {led['failed']:,}"),
        ("audit rows", f"{led['rows']:,}"),
        ("ledger whole", "yes" if led["whole"] else "**no**"),
        ("valid jobs failed", named(led["failed_valid"])),
        ("invalid jobs failed without the contract's reason", named(led["failed_without_contract_reason"])),
        ("invalid jobs completed", named(led["completed_invalid"])),
        ("jobs not finished at the end", named(led["unfinished"])),
        ("results without their row", named(led["results_without_row"])),
        ("rows differing from their job", named(led["rows_differing"])),
        ("two jobs with one idExport", named(led["results_shared"])),
        ("idempotency keys with two rows", str(led["keys_with_two_rows"])),
        ("seal chain verifies (`audit verify`)", str(led["seal_chain_verifies"])),
        ("acknowledged adds lost by Redis (asynchronous replication)", named(led["lost_by_redis"])),
        ("rows written for jobs Redis lost afterwards", str(led["rows_of_jobs_redis_lost"])),
        (
            "added → finished between faults, steady jobs: p50 / p99",
            f"{_ms(latency.get('p50'))} / {_ms(latency.get('p99'))} ({latency.get('jobs', 0):,} jobs)",
        ),
        ("workers' RSS, first and last sample", f"{first_rss} → {last_rss} MB"),
        (
            "producer's Redis connections made anew (ioredis ended one for good)",
            str(summary["producer_connections_remade"]),
        ),
        (
            "worker service starts / its exit status at the end",
            f"{summary['worker_starts']} / {summary['worker_exit_status']}",
        ),
    ]
    lines = [
        title,
        "",
        INTRO,
        "",
        "![Throughput, p99 and the workers' memory over the run, each fault marked](soak.png)",
        "",
    ]
    lines += ["| ledger | |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)]
    lines += ["", "| fault | times | recovery s, median | recovery s, max |", "|---|---:|---:|---:|"]
    for name, seconds in led["recovery_s"].items():
        lines.append(f"| {name} | {len(seconds)} | {statistics.median(seconds):.1f} | {max(seconds):.1f} |")
    lines += [
        "",
        "Recovery: from the fault's start to the first completion of a job added after it started.",
        "",
    ]
    return "\n".join(lines)


def chart(summary: dict[str, Any], finished: Sequence[tuple[int, int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(added for added, _done in finished)
    buckets: dict[int, list[int]] = defaultdict(list)
    for added, done in finished:
        buckets[(done - start) // (BUCKET_S * 1000)].append(done - added)
    minutes = [b * BUCKET_S / 60 for b in sorted(buckets)]
    rate = [len(buckets[b]) / BUCKET_S for b in sorted(buckets)]
    p99 = [_p99(buckets[b]) / 1000 for b in sorted(buckets)]
    figure, (top, middle, bottom) = plt.subplots(3, 1, sharex=True, figsize=(11, 7))
    top.plot(minutes, rate, linewidth=0.8)
    top.set_ylabel("completed jobs/s")
    middle.plot(minutes, p99, linewidth=0.8, color="tab:red")
    middle.set_ylabel("p99 added→finished, s")
    middle.set_yscale("log")
    rss = summary["rss_mb"]
    bottom.plot([t / 60 for t, _mb in rss], [mb for _t, mb in rss], linewidth=0.8, color="tab:green")
    bottom.set_ylabel("workers' RSS, MB")
    bottom.set_xlabel("minutes")
    for fault in summary["faults"]:
        begin, end = (fault["start_ms"] - start) / 60000, (fault["end_ms"] - start) / 60000
        for axes in (top, middle, bottom):
            axes.axvspan(begin, max(end, begin + 0.05), color="tab:orange", alpha=0.25, linewidth=0)
        top.annotate(fault["name"], (begin, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                     fontsize=6, va="top", ha="right")  # fmt: skip
    figure.suptitle(markdown(summary).splitlines()[0].removeprefix("# "))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _interval(summary: dict[str, Any]) -> float:
    starts = [fault["start_ms"] for fault in summary["faults"]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    return round(statistics.median(gaps) / 1000) if gaps else 0


def _p99(values: list[int]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) > 1 else float(values[0])


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"
