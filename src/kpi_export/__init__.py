"""kpi-export-worker: writes one audit row per KPI export job taken from a BullMQ queue.

contract/   job.data -> AuditEntry, the idempotency key (pure)
store/      the audit table: writer, group commit, faults, DATABASE_URL, migrations, reader
bullmq/     the only package that imports bullmq: the consumer, the producer, the queue's reads
runtime/    lifecycle, job handler, listeners, Redis watch, health, metrics, supervisor
cli/        the `kpi-export` command
demo/       `make run`
"""

from kpi_export.config import Settings, load_settings
from kpi_export.contract import AuditEntry, idempotency_key, parse_job_data
from kpi_export.errors import (
    AuditWriteError,
    ConfigError,
    InvalidJobData,
    KpiExportError,
    SchemaNotReady,
    StartupError,
    TransientDatabaseError,
)
from kpi_export.store import AuditStore, audit_table

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
