"""Where the audit rows live: the table, the idempotent writer with its group commit, which faults are
transient, DATABASE_URL as Prisma writes it, the migrations, and the operators' reads.

The names below are imported when first used: the settings import `store.url` and the seal digests
`store.names`, and a command that never opens the database must not wait for SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kpi_export.store.engine import create_engine, opened_engine
    from kpi_export.store.table import KEY_COLUMN, TABLE_NAME, audit_table
    from kpi_export.store.writer import AuditStore, utc_now

from kpi_export.lazy import lazy_exports

# Each module, and the names this package gives of it.
_EXPORTS = {
    "kpi_export.store.engine": ("create_engine", "opened_engine"),
    "kpi_export.store.names": ("KEY_COLUMN", "TABLE_NAME"),
    "kpi_export.store.table": ("audit_table",),
    "kpi_export.store.writer": ("AuditStore", "utc_now"),
}
# What the package gives: the names of _EXPORTS (tests/unit/test_lazy_exports.py holds the two equal).
__all__ = [
    "KEY_COLUMN",
    "TABLE_NAME",
    "AuditStore",
    "audit_table",
    "create_engine",
    "opened_engine",
    "utc_now"
]  # fmt: skip

__getattr__ = lazy_exports(__name__, _EXPORTS)
