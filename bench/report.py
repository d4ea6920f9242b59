"""Medians of the repeated runs, the table, the targets (issues 6 and 12), the JSON file and the chart."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.runs import Measurement
from bench.workers import CONTENDERS

METRICS = (
    "throughput",
    "cpu_ms_per_job",
    "stream_rate",
    "p50_ms",
    "p99_ms",
    "peak_rss_mb",
    "redis_trips_per_job",
    "db_trips_per_job",
)
TARGET_CONCURRENCY = 50
TARGET_RATE = 200.0


@dataclass(frozen=True)
class Row:
    database: str
    contender: str
    concurrency: int
    runs: int
    values: dict[str, float | None]
    rtt_ms: float | None = None  # through a delay proxy of this round-trip time; None: direct

    @property
    def network(self) -> str:
        return network_label(self.rtt_ms)


def network_label(rtt_ms: float | None) -> str:
    return "local" if rtt_ms is None else f"{rtt_ms:g} ms RTT"


def medians(measurements: Iterable[Measurement]) -> list[Row]:
    groups: dict[tuple[float | None, str, str, int], list[Measurement]] = defaultdict(list)
    for m in measurements:
        groups[(m.rtt_ms, m.database, m.contender, m.concurrency)].append(m)
    rows = []
    for (rtt_ms, database, contender, concurrency), runs in groups.items():
        values: dict[str, float | None] = {}
        for metric in METRICS:
            present = [v for v in (getattr(m, metric) for m in runs) if v is not None]
            values[metric] = round(statistics.median(present), 3) if present else None
        rows.append(Row(database, contender, concurrency, len(runs), values, rtt_ms))
    order = list(CONTENDERS)
    rows.sort(
        key=lambda r: (
            r.rtt_ms is not None,
            r.rtt_ms or 0,
            r.database != "postgresql",
            r.database,
            r.concurrency,
            order.index(r.contender),
        )
    )
    return rows


def _label(contender: str) -> str:
    """A contender's label; python-base exists only in the run that built it (--baseline)."""
    return CONTENDERS[contender].label if contender in CONTENDERS else contender


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def table(rows: list[Row]) -> Table:
    out = Table(title="Medians per (network, database, worker, concurrency)", title_justify="left")
    for header in (
        "network",
        "database",
        "worker",
        "conc.",
        "runs",
        "jobs/s",
        "CPU ms/job",
        "stream/s",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
        "Redis trips/job",
        "DB trips/job",
    ):
        out.add_column(header, justify="left" if header in ("network", "database", "worker") else "right")
    for r in rows:
        v = r.values
        out.add_row(
            r.network,
            r.database,
            _label(r.contender),
            str(r.concurrency),
            str(r.runs),
            _fmt(v["throughput"], 0),
            _fmt(v["cpu_ms_per_job"], 2),
            _fmt(v["stream_rate"], 0),
            _fmt(v["p50_ms"]),
            _fmt(v["p99_ms"]),
            _fmt(v["peak_rss_mb"]),
            _fmt(v["redis_trips_per_job"], 2),
            _fmt(v["db_trips_per_job"], 2),
        )
    return out


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured in this run


def _ratio(
    py: dict[str, float | None] | None,
    node: dict[str, float | None] | None,
    key: str,
    target: str,
    number: str,
    unit: str,
    met: Callable[[float], bool],
) -> Verdict:
    """A target on the ratio of this worker's figure to Node's."""
    mine, theirs = (py or {}).get(key), (node or {}).get(key)
    if not (mine and theirs):
        return Verdict(target, "not measured (needs python and node at c50 on PostgreSQL)", None)
    ratio = mine / theirs
    return Verdict(
        target, f"{number.format(mine)} vs {number.format(theirs)} {unit} = {ratio:.2f}×", met(ratio)
    )


def targets(rows: list[Row], rss_by_jobs: dict[int, float]) -> list[Verdict]:
    """Issue 6's targets: PostgreSQL, one process each, concurrency 50."""
    at = {
        r.contender: r.values
        for r in rows
        if r.database == "postgresql" and r.concurrency == TARGET_CONCURRENCY and r.rtt_ms is None
    }
    py, node = at.get("python"), at.get("node")
    verdicts = [
        _ratio(py, node, "throughput", "throughput ≥ 1.5× Node's", "{:,.0f}", "jobs/s", lambda r: r >= 1.5),
        _ratio(
            py, node, "cpu_ms_per_job", "CPU per job ≤ 2/3 of Node's", "{:.2f}", "ms", lambda r: r <= 2 / 3
        ),
    ]
    verdicts += _measured_ratio(py, at.get("python-base"), "throughput ≥ 2× the baseline commit's", 2)
    noop = at.get("noop")
    if py and noop and py["throughput"] and noop["throughput"]:
        share = py["throughput"] / noop["throughput"]
        verdicts.append(
            Verdict(
                "share of the queue's ceiling (npm bullmq, no-op)",
                f"{py['throughput']:,.0f} vs {noop['throughput']:,.0f} jobs/s = {share:.2f}×",
                None,  # reported, not a target
            )
        )
    verdicts += _measured_ratio(at.get("python-2p"), py, "2 processes ≥ 1.7× one process", 1.7)
    verdicts += _network_verdicts(rows)
    if py and py["cpu_ms_per_job"] is not None:
        verdicts.append(
            Verdict(
                "CPU per job ≤ 0.14 ms (issue 12)",
                f"{py['cpu_ms_per_job']:.2f} ms",
                py["cpu_ms_per_job"] <= 0.14,
            )
        )
    if py and py["p99_ms"] is not None and py["stream_rate"] == TARGET_RATE:
        verdicts.append(
            Verdict(
                "p99 at 200 jobs/s ≤ 50 ms",
                f"{py['p99_ms']:.1f} ms (p50 {_fmt(py['p50_ms'])} ms)",
                py["p99_ms"] <= 50,
            )
        )
    else:
        verdicts.append(Verdict("p99 at 200 jobs/s ≤ 50 ms", "not measured at 200 jobs/s", None))
    if py and py["peak_rss_mb"] is not None:
        verdicts.append(Verdict("peak RSS ≤ 120 MB", f"{py['peak_rss_mb']:.1f} MB", py["peak_rss_mb"] <= 120))
    if len(rss_by_jobs) >= 2:
        low, high = min(rss_by_jobs), max(rss_by_jobs)
        growth = rss_by_jobs[high] / rss_by_jobs[low] - 1
        verdicts.append(
            Verdict(
                f"RSS flat (±10 %) from {low:,} to {high:,} jobs",
                f"{rss_by_jobs[low]:.1f} → {rss_by_jobs[high]:.1f} MB ({growth:+.1%})",
                abs(growth) <= 0.10 and max(rss_by_jobs.values()) <= 120,
            )
        )
    else:
        verdicts.append(
            Verdict("RSS flat (±10 %) from 10,000 to 100,000 jobs", "not measured (--rss-jobs)", None)
        )
    return verdicts


def _measured_ratio(
    mine: dict[str, float | None] | None, theirs: dict[str, float | None] | None, target: str, at_least: float
) -> list[Verdict]:
    """A throughput ratio target, when both sides ran (python-base and python-2p run only when asked for)."""
    if not (mine and theirs and mine["throughput"] and theirs["throughput"]):
        return []
    return [_ratio(mine, theirs, "throughput", target, "{:,.0f}", "jobs/s", lambda r: r >= at_least)]


def _network_verdicts(rows: list[Row]) -> list[Verdict]:
    """Across a network, at concurrency 1: this worker ≥ 1.8× the original, and each one's trips a job."""
    verdicts = []
    for rtt_ms in sorted({r.rtt_ms for r in rows if r.rtt_ms is not None}):
        at = {
            r.contender: r.values
            for r in rows
            if r.rtt_ms == rtt_ms and r.database == "postgresql" and r.concurrency == 1
        }
        py, node = at.get("python"), at.get("node")
        if not (py and node):
            continue
        verdict = _ratio(
            py,
            node,
            "throughput",
            f"{network_label(rtt_ms)}, c=1: throughput ≥ 1.8× Node's",
            "{:,.0f}",
            "jobs/s",
            lambda r: r >= 1.8,
        )
        trips = "; round trips a job (Redis + DB): this worker {} + {}, Node {} + {}".format(
            _fmt(py["redis_trips_per_job"], 2),
            _fmt(py["db_trips_per_job"], 2),
            _fmt(node["redis_trips_per_job"], 2),
            _fmt(node["db_trips_per_job"], 2),
        )
        verdicts.append(Verdict(verdict.target, verdict.measured + trips, verdict.met))
    return verdicts


def targets_table(verdicts: list[Verdict]) -> Table:
    out = Table(
        title="Targets (PostgreSQL, local, one process each, concurrency 50, unless the target says otherwise)",
        title_justify="left",
    )
    out.add_column("target")
    out.add_column("measured")
    out.add_column("met")
    for v in verdicts:
        out.add_row(v.target, v.measured, {True: "yes", False: "NO", None: "—"}[v.met])
    return out


def write_json(
    path: Path,
    meta: dict[str, Any],
    measurements: list[Measurement],
    rows: list[Row],
    rss: dict[int, float],
    verdicts: list[Verdict],
) -> None:
    document = {
        "meta": meta,
        "runs": [m.as_dict() for m in measurements],
        "medians": [
            {
                "rtt_ms": r.rtt_ms,
                "database": r.database,
                "contender": r.contender,
                "concurrency": r.concurrency,
                "runs": r.runs,
                **r.values,
            }
            for r in rows
        ],
        "rss_by_backlog": {str(k): v for k, v in rss.items()},
        "targets": [{"target": v.target, "measured": v.measured, "met": v.met} for v in verdicts],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def chart(path: Path, rows: list[Row], title: str) -> None:
    """Throughput and p99 by concurrency on PostgreSQL, each worker beside the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pg = [r for r in rows if r.database == "postgresql" and r.rtt_ms is None]
    contenders = [c for c in CONTENDERS if any(r.contender == c for r in pg)]
    levels = sorted({r.concurrency for r in pg})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / max(len(contenders), 1)
    for index, name in enumerate(contenders):
        by_level = {r.concurrency: r.values for r in pg if r.contender == name}
        xs = [i + (index - (len(contenders) - 1) / 2) * width for i in range(len(levels))]
        throughput = [by_level.get(c, {}).get("throughput") or 0 for c in levels]
        p99 = [by_level.get(c, {}).get("p99_ms") or 0 for c in levels]
        bars = left.bar(xs, throughput, width, label=CONTENDERS[name].label)
        left.bar_label(bars, fmt="%.0f", fontsize=7)
        bars = right.bar(xs, p99, width, label=CONTENDERS[name].label)
        right.bar_label(bars, fmt="%.0f", fontsize=7)
    for axis, ylabel in (
        (left, "jobs/s on a backlog (higher is better)"),
        (right, "p99 added → finished, ms (lower is better)"),
    ):
        axis.set_xticks(range(len(levels)), [str(c) for c in levels])
        axis.set_xlabel("concurrency")
        axis.set_ylabel(ylabel)
        axis.grid(axis="y", alpha=0.3)
    left.legend(fontsize=8)
    right.set_title("stream: 200 jobs/s, or half the backlog rate if lower", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(document: dict[str, Any]) -> str:
    """The medians and the targets of a run's JSON file, as Markdown tables (for the README)."""
    lines = [
        (
            "| network | database | worker | concurrency | jobs/s | CPU ms/job | stream jobs/s | p50 ms | p99 ms "
            "| peak RSS MB | Redis trips/job | DB trips/job |"
        ),
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in document["medians"]:
        lines.append(
            f"| {network_label(m.get('rtt_ms'))} | {m['database']} | {_label(m['contender'])} | {m['concurrency']} "
            f"| {_fmt(m['throughput'], 0)} | {_fmt(m['cpu_ms_per_job'], 2)} | {_fmt(m['stream_rate'], 0)} "
            f"| {_fmt(m['p50_ms'])} | {_fmt(m['p99_ms'])} | {_fmt(m['peak_rss_mb'])} "
            f"| {_fmt(m.get('redis_trips_per_job'), 2)} | {_fmt(m.get('db_trips_per_job'), 2)} |"
        )
    lines += [
        "",
        "| target (PostgreSQL, local, one process each, concurrency 50, unless it says otherwise) | measured | met |",
        "|---|---|---|",
    ]
    for t in document["targets"]:
        lines.append(
            f"| {t['target']} | {t['measured']} | {({True: 'yes', False: 'NO', None: '—'})[t['met']]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
