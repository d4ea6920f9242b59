"""kpi-export-worker: writes one audit row per KPI export job taken from a BullMQ queue.

    contract/   job.data -> AuditEntry, the idempotency key (pure)
    store/      the audit table: writer, group commit, transient faults, DATABASE_URL, migrations, reader
    bullmq/     the only package that imports bullmq: the consumer, the producer, the queue's reads
    runtime/    lifecycle, job handler, listeners, Redis watch, health, metrics, supervisor
    cli/        the `kpi-export` command
    demo/       `make run`

The names below are imported when first used, so that starting a command does not wait for them all.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditEntry": "kpi_export.contract",
    "AuditStore": "kpi_export.store",
    "AuditWriteError": "kpi_export.errors",
    "ConfigError": "kpi_export.errors",
    "InvalidJobData": "kpi_export.errors",
    "KpiExportError": "kpi_export.errors",
    "SchemaNotReady": "kpi_export.errors",
    "Settings": "kpi_export.config",
    "StartupError": "kpi_export.errors",
    "TransientDatabaseError": "kpi_export.errors",
    "audit_table": "kpi_export.store",
    "idempotency_key": "kpi_export.contract",
    "load_settings": "kpi_export.config",
    "parse_job_data": "kpi_export.contract",
}
__all__ = [
    "AuditEntry",
    "AuditStore",
    "AuditWriteError",
    "ConfigError",
    "InvalidJobData",
    "KpiExportError",
    "SchemaNotReady",
    "Settings",
    "StartupError",
    "TransientDatabaseError",
    "audit_table",
    "idempotency_key",
    "load_settings",
    "parse_job_data",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kpi_export' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
