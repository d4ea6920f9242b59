"""The soak's ledger: every job the producer says Redis took, against what Redis and the database hold at the
end. Pure: the jobs, the rows and the faults' times in, the accounting out (soak/__main__.py reads them)."""

from __future__ import annotations

import bisect
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kpi_export.contract import decode_job_data, parse_job_data
from kpi_export.errors import InvalidJobData

SETTLE_MS = 5000  # after a fault ends, jobs added within this long are the fault's, not "between faults"
SHOWN = 20  # ids named per finding


@dataclass(frozen=True)
class Job:
    """What Redis holds of one job the producer added (None: Redis no longer has it)."""

    id: str
    number: int
    kind: str  # steady | burst
    valid: bool
    added_at: int  # ms, when the producer's batch was acknowledged
    hash: Mapping[str, str] | None


@dataclass(frozen=True)
class Row:
    id_export: int
    key: str
    usuario_id: int
    format: str
    filters: Any


@dataclass(frozen=True)
class Fault:
    name: str
    start_ms: int
    end_ms: int


@dataclass
class Ledger:
    added: int = 0
    invalid_added: int = 0
    completed: int = 0
    failed: int = 0
    rows: int = 0
    lost_by_redis: list[str] = field(default_factory=list)  # acknowledged, then gone with a master
    rows_of_jobs_redis_lost: int = 0  # written for a job that Redis lost afterwards (its completion with it)
    unfinished: list[str] = field(default_factory=list)
    failed_valid: list[str] = field(default_factory=list)
    failed_without_contract_reason: list[str] = field(default_factory=list)
    completed_invalid: list[str] = field(default_factory=list)
    results_without_row: list[str] = field(default_factory=list)
    results_shared: list[str] = field(default_factory=list)  # two jobs, one idExport
    rows_differing: list[str] = field(default_factory=list)
    keys_with_two_rows: int = 0
    seal_chain_verifies: bool | None = None
    latency_between_faults_ms: dict[str, float] = field(default_factory=dict)
    recovery_s: dict[str, list[float]] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """Nothing failed, doubled, differing or unaccounted for; the seals verify. (Jobs lost by Redis's
        asynchronous replication are named apart: a property of Redis, not of the worker.)"""
        return (
            not (
                self.unfinished
                or self.failed_valid
                or self.failed_without_contract_reason
                or self.completed_invalid
                or self.results_without_row
                or self.results_shared
                or self.rows_differing
                or self.keys_with_two_rows
            )
            and self.seal_chain_verifies is not False
        )

    def to_json(self) -> dict[str, Any]:
        found = asdict(self)
        for name, value in found.items():
            if isinstance(value, list) and value and isinstance(value[0], str):
                found[name] = {"count": len(value), "first": value[:SHOWN]}
        return {**found, "whole": self.whole}


def account(
    jobs: Iterable[Job], rows: Mapping[int, Row], rows_per_key: Counter[str], faults: Sequence[Fault]
) -> Ledger:
    ledger = Ledger(rows=len(rows), keys_with_two_rows=sum(1 for count in rows_per_key.values() if count > 1))
    owner: dict[int, str] = {}
    latencies: list[float] = []
    completed: list[tuple[int, int]] = []  # (added, finished) ms, of every completed job
    for job in jobs:
        ledger.added += 1
        ledger.invalid_added += not job.valid
        state = _state(job)
        if state == "lost":
            ledger.lost_by_redis.append(job.id)
        elif state == "unfinished":
            ledger.unfinished.append(job.id)
        else:
            assert job.hash is not None
            added, done = int(job.hash["timestamp"]), int(job.hash["finishedOn"])
            if state == "failed":
                _failed(ledger, job)
                continue
            completed.append((added, done))
            if (
                _completed(ledger, job, rows, owner)
                and job.kind == "steady"
                and not _near_a_fault(added, faults)
            ):
                latencies.append(done - added)
    if latencies:
        ledger.latency_between_faults_ms = {
            "p50": statistics.median(latencies),
            "p99": statistics.quantiles(latencies, n=100)[98] if len(latencies) > 1 else latencies[0],
            "jobs": len(latencies),
        }
    ledger.recovery_s = _recoveries(faults, completed)
    ledger.rows_of_jobs_redis_lost = len(rows) - len(owner)
    return ledger


def _failed(ledger: Ledger, job: Job) -> None:
    assert job.hash is not None
    ledger.failed += 1
    if job.valid:
        ledger.failed_valid.append(job.id)
    elif "inválido" not in job.hash.get("failedReason", ""):
        ledger.failed_without_contract_reason.append(job.id)


def _completed(ledger: Ledger, job: Job, rows: Mapping[int, Row], owner: dict[int, str]) -> bool:
    """Counts a completed job; True when it is valid and its row is its own and equal to it."""
    assert job.hash is not None
    ledger.completed += 1
    if not job.valid:
        ledger.completed_invalid.append(job.id)
        return False
    id_export = int(json.loads(job.hash["returnvalue"])["idExport"])
    if id_export in owner:
        ledger.results_shared.append(job.id)
        return False
    owner[id_export] = job.id
    row = rows.get(id_export)
    if row is None:
        ledger.results_without_row.append(job.id)
        return False
    if not _equal(row, job.hash["data"]):
        ledger.rows_differing.append(job.id)
        return False
    return True


def _state(job: Job) -> str:
    if job.hash is None or "data" not in job.hash:
        return "lost"
    if "finishedOn" not in job.hash:
        return "unfinished"
    return "failed" if "failedReason" in job.hash and "returnvalue" not in job.hash else "completed"


def _equal(row: Row, data_text: str) -> bool:
    try:
        entry = parse_job_data(decode_job_data(data_text))
    except InvalidJobData:
        return False
    return (row.usuario_id, row.format, row.filters) == (entry.usuario_id, entry.format, entry.filters)


def _near_a_fault(added_ms: int, faults: Sequence[Fault]) -> bool:
    return any(fault.start_ms <= added_ms <= fault.end_ms + SETTLE_MS for fault in faults)


def _recoveries(faults: Sequence[Fault], completed: Sequence[tuple[int, int]]) -> dict[str, list[float]]:
    """Per kind of fault, for each time it struck: seconds from its start to the first completion of a job
    added after it started (work taken up again, and not only by jobs fetched before it; an invalid job
    fails without the database, so failures do not count)."""
    by_added = sorted(completed)
    added = [when for when, _done in by_added]
    first_done_from = [0] * len(by_added)  # the earliest completion among the jobs from index i on
    earliest = None
    for i in range(len(by_added) - 1, -1, -1):
        earliest = by_added[i][1] if earliest is None else min(earliest, by_added[i][1])
        first_done_from[i] = earliest
    recoveries: dict[str, list[float]] = {}
    for fault in faults:
        i = bisect.bisect_left(added, fault.start_ms)
        if i < len(by_added):
            recoveries.setdefault(fault.name, []).append(
                round((first_done_from[i] - fault.start_ms) / 1000, 1)
            )
    return recoveries
