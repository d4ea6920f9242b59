"""The chain of tamper-evident seals over the audit rows (kpi_export.integrity). The audit table is unchanged.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    long_text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    op.create_table(
        "kpi_auditoria_seal",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("fromId", sa.Integer(), nullable=False),
        sa.Column("toId", sa.Integer(), nullable=False),
        sa.Column("rowCount", sa.Integer(), nullable=False),
        sa.Column("rowIds", long_text, nullable=False),
        sa.Column("rowMacs", long_text, nullable=False),
        sa.Column(
            "sealedAt",
            sa.DateTime()
            .with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
            .with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.Column("actor", sa.String(191), nullable=False),
        sa.Column("detail", long_text, nullable=False),
        sa.Column("keyId", sa.String(16), nullable=False),
        sa.Column("prevDigest", sa.String(64), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="kpi_auditoria_seal_pkey"),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("kpi_auditoria_seal")
