"""Where the audit rows live: the table, the idempotent writer with its group commit, which faults are
transient, DATABASE_URL as Prisma writes it, the migrations, and the operators' reads."""

from kpi_export.store.engine import create_engine, opened_engine
from kpi_export.store.table import KEY_COLUMN, TABLE_NAME, audit_table
from kpi_export.store.writer import AuditStore, utc_now

__all__ = [
    "KEY_COLUMN",
    "TABLE_NAME",
    "AuditStore",
    "audit_table",
    "create_engine",
    "opened_engine",
    "utc_now",
]
