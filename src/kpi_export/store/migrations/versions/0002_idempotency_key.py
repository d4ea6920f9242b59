"""The idempotency key: one row per job, whatever the number of deliveries. Old rows keep a null key.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("kpi_auditoria_export", sa.Column("idempotencyKey", sa.String(64), nullable=True))
    op.create_index(
        "kpi_auditoria_export_idempotencyKey_key", "kpi_auditoria_export", ["idempotencyKey"], unique=True
    )


def downgrade() -> None:
    op.drop_index("kpi_auditoria_export_idempotencyKey_key", table_name="kpi_auditoria_export")
    with op.batch_alter_table("kpi_auditoria_export") as batch:
        batch.drop_column("idempotencyKey")
