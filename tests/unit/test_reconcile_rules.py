"""The rules of `audit reconcile` as a table: a kept job against the row holding its key and the row at its
idExport."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from kpi_export.contract import idempotency_key
from kpi_export.integrity.reconcile import (
    MAX_LISTED,
    TIME_TOLERANCE,
    KeptJob,
    Tally,
    expected,
    ms_to_utc,
    verdict,
)
from kpi_export.integrity.reconciler import IdBitmap

STARTED = 1_796_000_000_000
DATA = {"usuarioId": 42, "ip": "203.0.113.7", "filters": {"area": "ventas"}, "format": "XLSX"}


def job(data: Any = DATA, result: Any = None, job_id: str = "7") -> KeptJob:
    return KeptJob(
        job_id=job_id,
        queue="bull:kpi",
        data=json.dumps(data),
        returnvalue=json.dumps({"idExport": 57} if result is None else result),
        timestamp=STARTED - 5,
        processed_on=STARTED,
        finished_on=STARTED + 20,
    )


KEY = idempotency_key("bull:kpi", "7", STARTED - 5)


def row(**changes: Any) -> dict[str, Any]:
    values = {
        "idExport": 57,
        "usuarioId": 42,
        "ip": "203.0.113.7",
        "filters": {"area": "ventas"},
        "format": "xlsx",
        "codigoEstado": 0,
        "createdAt": ms_to_utc(STARTED + 3),
        "idempotencyKey": KEY,
    }
    return values | changes


@pytest.mark.parametrize(
    ("by_key", "by_id", "found"),
    [
        (row(), row(), "equal"),
        (None, row(idempotencyKey=None), "equal"),  # the Node original's row: no key, found by idExport
        (None, None, "missing"),
        (row(usuarioId=43), row(usuarioId=43), "differs"),
        (row(format="csv"), row(format="csv"), "differs"),
        (row(filters={"area": "compras"}), None, "differs"),
        (row(ip="10.0.0.1"), None, "differs"),
        (row(ip="203.0.113.0"), None, "equal"),  # truncated since (AUDIT_IP_MODE, pseudonymise-ips)
        (row(ip=None), None, "equal"),  # removed since
        (row(codigoEstado=2), None, "equal"),  # the exporting application moves it on
        (row(createdAt=ms_to_utc(STARTED) - TIME_TOLERANCE - timedelta(seconds=1)), None, "differs"),
        (row(createdAt=ms_to_utc(STARTED + 20) + TIME_TOLERANCE), None, "equal"),
        (None, row(idempotencyKey="another job's key"), "taken"),  # a lost id handed out again
        (row(idExport=58), None, "taken"),  # its row is elsewhere
    ],
)
def test_verdict(by_key: dict[str, Any] | None, by_id: dict[str, Any] | None, found: str) -> None:
    assert verdict(expected(job()), by_key, by_id) == found


@pytest.mark.parametrize(
    "kept",
    [
        job(result={"other": 1}),
        job(result={"idExport": True}),
        job(result={"idExport": "57"}),
        job(result={"idExport": 0}),
        job(data={"usuarioId": "abc"}),  # the contract refuses it (the original accepted some such)
        KeptJob("7", "bull:kpi", None, '{"idExport": 57}', None, None, None),
    ],
)
def test_a_job_that_cannot_be_told_is_unreadable(kept: KeptJob) -> None:
    assert expected(kept) is None
    assert verdict(None, None, None) == "unreadable"


def test_the_row_to_re_insert_is_the_workers_with_its_time() -> None:
    found = expected(job())
    assert found is not None
    assert found.row("full") == row(createdAt=ms_to_utc(STARTED))
    assert found.row("truncated")["ip"] == "203.0.113.0"


def test_a_tally_keeps_the_lowest_ids() -> None:
    tally = Tally()
    for item in range(100, 0, -1):
        tally.add(item)
    assert (tally.count, tally.first) == (100, list(range(1, MAX_LISTED + 1)))


def test_the_bitmap_of_named_ids() -> None:
    named = IdBitmap()
    for id_export in (1, 8, 9, 1_000_003):
        named.add(id_export)
    assert [i for i in range(1_000_010) if i in named] == [1, 8, 9, 1_000_003]
