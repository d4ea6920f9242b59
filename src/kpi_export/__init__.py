"""kpi-export-worker: writes one audit row per KPI export job taken from a BullMQ queue."""

from kpi_export.audit import AuditStore, audit_table
from kpi_export.config import Settings, load_settings
from kpi_export.errors import (
    AuditWriteError,
    ConfigError,
    InvalidJobData,
    KpiExportError,
    SchemaNotReady,
    StartupError,
    TransientDatabaseError,
)
from kpi_export.payload import AuditEntry, idempotency_key, parse_job_data

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
