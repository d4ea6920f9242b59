"""The worker's sealing rounds (runtime/sealing.py) on real databases: each round logs its seals and keeps the
head it saw for the next; a failed round is counted every time, logged once a minute at most, and leaves that
head as it was."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.config import Settings
from kpi_export.contract import AuditEntry
from kpi_export.errors import SealingError
from kpi_export.integrity.digests import SealKey
from kpi_export.integrity.seal_table import seal_table
from kpi_export.logs import Throttle
from kpi_export.runtime.metrics import WorkerMetrics
from kpi_export.runtime.sealing import SealingRounds
from kpi_export.store import AuditStore, opened_engine

KEY = SealKey("test-audit-seal-key-0123456789abcdef")
OLD = datetime(2026, 1, 15, 9, 30, 0, 250000)


@pytest.fixture
async def engine(migrated: Settings) -> AsyncIterator[AsyncEngine]:
    async with opened_engine(migrated.database.target) as opened:
        yield opened


def rounds_on(engine: AsyncEngine) -> tuple[SealingRounds, WorkerMetrics]:
    metrics = WorkerMetrics("q")
    metrics.watch_seals()
    rounds = SealingRounds(
        engine=engine, key=KEY, min_age=0, actor="worker", metrics=metrics, throttle=Throttle()
    )
    return rounds, metrics


def seal_metrics(metrics: WorkerMetrics) -> tuple[float | None, float | None]:
    """(the highest idExport sealed, failed rounds) as /metrics shows them."""
    sample = metrics.registry.get_sample_value
    return sample("kpi_export_audit_sealed_id", {"queue": "q"}), sample(
        "kpi_export_audit_seal_failures_total", {"queue": "q"}
    )


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_round_keeps_the_head_it_saw_and_a_chain_that_lost_it_fails_each_round_logged_once(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    store = AuditStore(engine, group_commit=False)
    for n in range(1, 4):
        await store.record(AuditEntry(n, "10.0.0.1", {}, "csv"), f"key-{n}", OLD)
    rounds, metrics = rounds_on(engine)
    with caplog.at_level(logging.INFO, logger="kpi_export.runtime.sealing"):
        await rounds.seal()
    assert rounds.known_head is not None and rounds.known_head[0] == 1
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        "Audit rows 1-3 sealed (seal 1, 3 rows)"
    ]
    assert seal_metrics(metrics) == (3, 0)

    seen = rounds.known_head
    async with engine.begin() as conn:  # the head this worker saw is removed
        await conn.execute(delete(seal_table))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kpi_export.runtime.sealing"):
        for _ in range(2):
            with pytest.raises(SealingError, match="no longer holds seal 1") as refused:
                await rounds.seal()
            rounds.failed(refused.value)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"Audit rows not sealed: {refused.value}")
    ]
    assert rounds.known_head == seen
    assert seal_metrics(metrics) == (3, 2)


async def test_a_round_on_an_unreachable_database_is_postponed(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = Settings.of(
        redis_url=SecretStr(redis_url), database_url=SecretStr("postgresql://postgres@127.0.0.1:1/test")
    )
    async with opened_engine(nowhere.database.target) as engine:
        rounds, metrics = rounds_on(engine)
        with pytest.raises(OSError) as lost:  # connection refused
            await rounds.seal()
    with caplog.at_level(logging.INFO, logger="kpi_export.runtime.sealing"):
        rounds.failed(lost.value)
    [line] = caplog.records
    assert line.levelname == "WARNING"
    assert line.getMessage().startswith("Audit rows not sealed this round (")
    assert line.getMessage().endswith("); the next round tries again")
    assert rounds.known_head is None and seal_metrics(metrics) == (0, 1)
