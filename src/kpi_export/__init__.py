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

from kpi_export.lazy import lazy_exports

# Each module, and the names this package gives of it.
_EXPORTS = {
    "kpi_export.config": ("Settings", "load_settings"),
    "kpi_export.contract": ("AuditEntry", "idempotency_key", "parse_job_data"),
    "kpi_export.errors": (
        "AuditWriteError",
        "ConfigError",
        "InvalidJobData",
        "KpiExportError",
        "SchemaNotReady",
        "StartupError",
        "TransientDatabaseError",
    ),
    "kpi_export.store": ("AuditStore", "audit_table"),
}
# What the package gives: the names of _EXPORTS (tests/unit/test_lazy_exports.py holds the two equal).
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
    "parse_job_data"
]  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)
