"""The audit table `kpi_auditoria_export`, as the Node original's Prisma model maps it.

Column names are the Prisma model's, case-sensitive, so that its readers keep working.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    inspect,
    text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection

from kpi_export.store.names import KEY_COLUMN, TABLE_NAME

__all__ = ["KEY_COLUMN", "PENDING", "TABLE_NAME", "audit_table", "metadata", "table_columns"]

PENDING = 0  # codigoEstado of a new export

metadata = MetaData()

audit_table = Table(
    TABLE_NAME,
    metadata,
    Column("idExport", Integer, primary_key=True, autoincrement=True),
    Column("usuarioId", Integer, nullable=False),
    Column("ip", Text().with_variant(mysql.VARCHAR(191), "mysql", "mariadb"), nullable=True),
    Column("filters", JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
    Column("format", Text().with_variant(mysql.VARCHAR(191), "mysql", "mariadb"), nullable=False),
    Column("codigoEstado", Integer, nullable=False, server_default=text("0")),
    Column(
        "createdAt",
        DateTime()
        .with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
        .with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb"),
        nullable=False,
        server_default=func.current_timestamp(),
    ),
    # Null on rows the Node original wrote before the upgrade; a unique index allows many nulls.
    Column(KEY_COLUMN, String(64), nullable=True),
    Index(f"{TABLE_NAME}_{KEY_COLUMN}_key", KEY_COLUMN, unique=True),
)


def table_columns(sync_conn: Connection) -> set[str]:
    """The audit table's column names, or an empty set when it does not exist."""
    inspector = inspect(sync_conn)
    if not inspector.has_table(TABLE_NAME):
        return set()
    return {column["name"] for column in inspector.get_columns(TABLE_NAME)}
