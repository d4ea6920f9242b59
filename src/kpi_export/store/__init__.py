"""Where the audit rows live: the table, the idempotent writer with its group commit, which faults are
transient, DATABASE_URL as Prisma writes it, the migrations, and the operators' reads.

The names below are imported when first used: the settings import `store.url` and the seal digests
`store.names`, and a command that never opens the database must not wait for SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kpi_export.store.engine import create_engine, opened_engine
    from kpi_export.store.table import KEY_COLUMN, TABLE_NAME, audit_table
    from kpi_export.store.writer import AuditStore, utc_now

_EXPORTS = {
    "KEY_COLUMN": "kpi_export.store.names",
    "TABLE_NAME": "kpi_export.store.names",
    "AuditStore": "kpi_export.store.writer",
    "audit_table": "kpi_export.store.table",
    "create_engine": "kpi_export.store.engine",
    "opened_engine": "kpi_export.store.engine",
    "utc_now": "kpi_export.store.writer",
}
__all__ = [
    "KEY_COLUMN",
    "TABLE_NAME",
    "AuditStore",
    "audit_table",
    "create_engine",
    "opened_engine",
    "utc_now",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kpi_export.store' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
