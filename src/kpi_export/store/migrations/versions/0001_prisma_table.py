"""The audit table as the Node original's Prisma migration makes it; kept as it is when it already exists.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kpi_auditoria_export",
        sa.Column("idExport", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("usuarioId", sa.Integer(), nullable=False),
        # Prisma maps String to TEXT on PostgreSQL and SQLite, to VARCHAR(191) on MySQL/MariaDB.
        sa.Column("ip", _string(), nullable=True),
        sa.Column("filters", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("format", _string(), nullable=False),
        sa.Column("codigoEstado", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "createdAt",
            sa.DateTime()
            .with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
            .with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb"),
            server_default=sa.text("CURRENT_TIMESTAMP(3)")
            if op.get_bind().dialect.name in ("mysql", "mariadb")
            else sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("idExport", name="kpi_auditoria_export_pkey"),
        if_not_exists=True,
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_unicode_ci",
    )


def _string() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.VARCHAR(191), "mysql", "mariadb")


def downgrade() -> None:
    op.drop_table("kpi_auditoria_export")
