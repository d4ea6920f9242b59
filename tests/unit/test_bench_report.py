"""The bench's report (bench/report.py): runs through a network are rows of their own, and the targets read
the local runs at concurrency 50 apart from the network's at concurrency 1."""

from __future__ import annotations

from bench.report import markdown, medians, targets
from bench.runs import Measurement


def _run(contender: str, concurrency: int, throughput: float, rtt_ms: float | None = None) -> Measurement:
    trips = 1.0 if rtt_ms is not None else None
    return Measurement(
        contender=contender,
        database="postgresql",
        concurrency=concurrency,
        backlog_jobs=1000,
        throughput=throughput,
        cpu_ms_per_job=0.2,
        stream_rate=200.0,
        stream_jobs=2000,
        p50_ms=3.0,
        p99_ms=5.0,
        peak_rss_mb=100.0,
        redis_trips_per_job=trips,
        db_trips_per_job=trips,
        rtt_ms=rtt_ms,
    )


def test_network_runs_are_rows_of_their_own_and_have_their_target() -> None:
    runs = [
        _run("python", 50, 3000),
        _run("python-2p", 50, 4500),
        _run("node", 50, 2000),
        _run("python", 1, 140, rtt_ms=1),
        _run("python", 1, 150, rtt_ms=1),
        _run("node", 1, 75, rtt_ms=1),
        _run("python", 50, 900, rtt_ms=1),  # would halve the local c50 figure if it were mixed in
    ]
    rows = medians(runs)
    assert [(r.network, r.contender, r.concurrency, r.runs) for r in rows] == [
        ("local", "python", 50, 1),
        ("local", "python-2p", 50, 1),
        ("local", "node", 50, 1),
        ("1 ms RTT", "python", 1, 2),
        ("1 ms RTT", "node", 1, 1),
        ("1 ms RTT", "python", 50, 1),
    ]
    verdicts = {v.target: v for v in targets(rows, {})}
    assert verdicts["throughput ≥ 1.5× Node's"].measured.startswith("3,000 vs 2,000 jobs/s = 1.50×")
    two = verdicts["2 processes ≥ 1.7× one process"]
    assert (two.measured, two.met) == ("4,500 vs 3,000 jobs/s = 1.50×", False)
    network = verdicts["1 ms RTT, c=1: throughput ≥ 1.8× Node's"]
    assert network.met is True
    assert network.measured == (
        "145 vs 75 jobs/s = 1.93×; round trips a job (Redis + DB): this worker 1.00 + 1.00, Node 1.00 + 1.00"
    )


def test_the_markdown_table_names_each_rows_network() -> None:
    rows = medians([_run("python", 1, 140, rtt_ms=1), _run("python", 50, 3000)])
    document = {
        "medians": [
            {
                "rtt_ms": r.rtt_ms,
                "database": r.database,
                "contender": r.contender,
                "concurrency": r.concurrency,
                **r.values,
            }
            for r in rows
        ],
        "targets": [],
    }
    lines = markdown(document).splitlines()
    assert lines[2].startswith("| local | postgresql | this worker | 50 | 3,000 |")
    assert lines[3].startswith("| 1 ms RTT | postgresql | this worker | 1 | 140 |")
