"""The soak's ledger (soak/ledger.py): each way a run can lose, double or spoil an export makes it not whole."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from soak.ledger import Fault, Job, Row, account

DATA = {"usuarioId": 7, "ip": "10.0.0.1", "filters": {"area": "ventas"}, "format": "xlsx"}


def job(number: int, *, valid: bool = True, **fields: Any) -> Job:
    found = {"data": json.dumps(DATA), "timestamp": "1000", "finishedOn": "1010", **fields}
    return Job(
        f"s-{number}", number, "steady", valid, 1000, {k: v for k, v in found.items() if v is not None}
    )


def completed(number: int, id_export: int) -> Job:
    return job(number, returnvalue=json.dumps({"idExport": id_export}))


def row(id_export: int, usuario_id: int = 7) -> Row:
    return Row(id_export, f"key-{id_export}", usuario_id, "xlsx", {"area": "ventas"})


def test_every_job_completed_with_its_own_equal_row_is_whole() -> None:
    ledger = account([completed(1, 1), completed(2, 2)], {1: row(1), 2: row(2)}, Counter(["k1", "k2"]), [])
    assert ledger.whole and ledger.completed == 2
    assert ledger.latency_between_faults_ms["p50"] == 10


@pytest.mark.parametrize(
    ("jobs", "rows", "finding"),
    [
        ([job(1, failedReason="boom")], {}, "failed_valid"),
        ([job(20, valid=False, failedReason="Redis se cayó")], {}, "failed_without_contract_reason"),
        ([job(20, valid=False, returnvalue='{"idExport": 1}')], {1: row(1)}, "completed_invalid"),
        ([job(1, finishedOn=None)], {}, "unfinished"),
        ([completed(1, 1)], {}, "results_without_row"),
        ([completed(1, 1)], {1: row(1, usuario_id=8)}, "rows_differing"),
        ([completed(1, 1), completed(2, 1)], {1: row(1)}, "results_shared"),
    ],
)
def test_each_finding_makes_the_ledger_not_whole(jobs: list[Job], rows: dict[int, Row], finding: str) -> None:
    ledger = account(jobs, rows, Counter(), [])
    assert getattr(ledger, finding) and not ledger.whole


def test_two_rows_for_one_key_and_a_failed_seal_check_are_not_whole() -> None:
    assert not account([completed(1, 1)], {1: row(1)}, Counter(["k", "k"]), []).whole
    ledger = account([completed(1, 1)], {1: row(1)}, Counter(["k"]), [])
    ledger.seal_chain_verifies = False
    assert not ledger.whole


def test_jobs_redis_lost_are_named_apart_and_their_rows_counted() -> None:
    lost = Job("s-2", 2, "steady", True, 1000, None)
    ledger = account([completed(1, 1), lost], {1: row(1), 2: row(2)}, Counter(["a", "b"]), [])
    assert ledger.whole and ledger.lost_by_redis == ["s-2"] and ledger.rows_of_jobs_redis_lost == 1


def test_recovery_is_the_first_completion_of_a_job_added_after_the_fault_began() -> None:
    jobs = [
        job(1, timestamp="900", finishedOn="2500", returnvalue='{"idExport": 1}'),  # fetched before the fault
        job(2, timestamp="1100", finishedOn="4000", returnvalue='{"idExport": 2}'),
        job(
            20,
            valid=False,
            timestamp="1200",
            finishedOn="1201",
            failedReason="usuarioId inválido en job.data",
        ),
    ]
    ledger = account(jobs, {1: row(1), 2: row(2)}, Counter(), [Fault("redis unreachable", 1000, 2000)])
    assert ledger.recovery_s == {"redis unreachable": [3.0]}
    assert ledger.latency_between_faults_ms["jobs"] == 1  # the jobs added during the fault are its own
