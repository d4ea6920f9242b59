"""The rules of `audit reconcile`, pure: a completed job Redis keeps against the audit rows, and what the row
it lost would be. The reads (Redis, the database) and the repair are in reconciler.py.

A job's row is found by its idempotency key (the rows this worker wrote), else by the `idExport` of its result
(the Node original's rows, which have no key). It is `equal` when it holds the job's data as the worker
writes it; an `ip` reduced since (AUDIT_IP_MODE, `audit pseudonymise-ips`) still counts as equal, and
`codigoEstado`, which the exporting application moves on, is not compared.
"""

from __future__ import annotations

import json
from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kpi_export.contract import AuditEntry, decode_job_data, idempotency_key, parse_job_data
from kpi_export.contract.ip_privacy import IpMode, reduce_ip
from kpi_export.errors import InvalidJobData
from kpi_export.integrity.digests import ChainEntry
from kpi_export.store.table import KEY_COLUMN, PENDING

# A row's createdAt is the worker's clock between the job's processedOn and finishedOn (the Node original's is
# the database's clock): this much either side still matches, for clocks that disagree a little.
TIME_TOLERANCE = timedelta(seconds=60)
MAX_LISTED = 20  # ids kept of each finding; the counts cover all of them

Verdict = Literal["equal", "missing", "differs", "taken", "unreadable"]


@dataclass(frozen=True, slots=True)
class KeptJob:
    """What reconcile reads of a completed job's hash in Redis."""

    job_id: str
    queue: str  # the queue's qualified name (prefix:name), part of the idempotency key
    data: str | None  # job.data's JSON text
    returnvalue: str | None
    timestamp: int | None  # when it was added (ms)
    processed_on: int | None  # ms
    finished_on: int | None  # ms

    @property
    def id_export(self) -> int | None:
        """The `idExport` of the job's result, or None when it names none."""
        try:
            result = json.loads(self.returnvalue or "null")
        except ValueError:
            return None
        found = result.get("idExport") if isinstance(result, dict) else None
        return found if isinstance(found, int) and not isinstance(found, bool) and found > 0 else None

    @property
    def key(self) -> str | None:
        if self.timestamp is None:
            return None
        return idempotency_key(self.queue, self.job_id, self.timestamp)


@dataclass(frozen=True, slots=True)
class Expected:
    """The row a kept job's worker wrote: its entry, key and time window."""

    job: KeptJob
    id_export: int
    entry: AuditEntry
    key: str | None

    def row(self, ip_mode: IpMode) -> dict[str, Any]:
        """The row to re-insert: its original idExport, its original time (when the job was taken)."""
        return {
            "idExport": self.id_export,
            "usuarioId": self.entry.usuario_id,
            "ip": reduce_ip(self.entry.ip, ip_mode),
            "filters": self.entry.filters,
            "format": self.entry.format,
            "codigoEstado": PENDING,
            "createdAt": ms_to_utc(self.job.processed_on or self.job.finished_on or 0),
            KEY_COLUMN: self.key,
        }


def expected(job: KeptJob) -> Expected | None:
    """The row `job` should have, or None when it cannot be told (no idExport, data the contract refuses)."""
    id_export = job.id_export
    if id_export is None or job.data is None:
        return None
    try:
        entry = parse_job_data(decode_job_data(job.data))
    except InvalidJobData:
        return None
    return Expected(job, id_export, entry, job.key)


def verdict(
    found: Expected | None, by_key: Mapping[str, Any] | None, by_id: Mapping[str, Any] | None
) -> Verdict:
    """What became of a kept job's row: `by_key` is the row holding its key, `by_id` the row at its idExport."""
    if found is None:
        return "unreadable"
    if by_key is not None:
        if by_key["idExport"] != found.id_export:
            return "taken"  # its row is elsewhere, and its result names another
        return "equal" if same_row(found, by_key) else "differs"
    if by_id is None:
        return "missing"
    if by_id[KEY_COLUMN] is not None and by_id[KEY_COLUMN] != found.key:
        return "taken"  # another job's row took the id (a restored sequence handed it out again)
    return "equal" if same_row(found, by_id) else "differs"


def same_row(found: Expected, row: Mapping[str, Any]) -> bool:
    entry = found.entry
    return (
        row["usuarioId"] == entry.usuario_id
        and row["format"] == entry.format
        and row["filters"] == entry.filters
        and row["ip"] in {entry.ip, reduce_ip(entry.ip, "truncated"), None}
        and _in_window(row["createdAt"], found.job)
    )


def _in_window(created: datetime, job: KeptJob) -> bool:
    start = job.processed_on or job.finished_on
    end = job.finished_on or job.processed_on
    if start is None or end is None:
        return True  # no time to hold it against
    return ms_to_utc(start) - TIME_TOLERANCE <= created <= ms_to_utc(end) + TIME_TOLERANCE


def ms_to_utc(ms: int) -> datetime:
    """bullmq's epoch milliseconds as the table stores times: naive UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


@dataclass
class Tally:
    """How many of one finding, and the lowest ids of it (idExports, or job ids)."""

    count: int = 0
    first: list[Any] = field(default_factory=list)

    def add(self, item: int | str) -> None:
        self.count += 1
        if len(self.first) < MAX_LISTED or item < self.first[-1]:
            insort(self.first, item)
            del self.first[MAX_LISTED:]


@dataclass
class ReconcileReport:
    """What reconcile found. `missing`, `differs`, `taken` and `orphans` list idExports, `unreadable` job ids."""

    jobs: int = 0
    equal: int = 0
    missing: Tally = field(default_factory=Tally)
    differs: Tally = field(default_factory=Tally)
    taken: Tally = field(default_factory=Tally)  # results whose idExport is another job's row
    unreadable: Tally = field(default_factory=Tally)  # no idExport, or data the contract refuses
    orphans: Tally = field(default_factory=Tally)  # rows in the kept ids' range that no kept result names
    highest_id: int = 0  # the highest idExport a kept result names
    repaired: Tally = field(default_factory=Tally)
    not_repaired: Tally = field(default_factory=Tally)  # missing, but the id is a row now
    recorded: list[ChainEntry] = field(default_factory=list)  # the repair's entries in the seal chain
    sequence: tuple[int, int] | None = None  # the table's next id before and after --repair moved it

    @property
    def clean(self) -> bool:
        """Nothing missing (or left missing by --repair), nothing that differs, no id taken."""
        left = self.missing.count - self.repaired.count
        return left == 0 and not self.differs.count and not self.taken.count

    def add(self, kind: Verdict, job: KeptJob, id_export: int | None) -> None:
        self.jobs += 1
        if kind == "equal":
            self.equal += 1
        elif kind == "unreadable":
            self.unreadable.add(job.job_id)
        else:
            assert id_export is not None
            getattr(self, kind).add(id_export)
