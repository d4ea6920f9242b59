"""The audit table's name and its idempotency column, as the Node original's Prisma model names them: for code
that needs the names without SQLAlchemy's table (the seal digests, imported whenever settings are read)."""

TABLE_NAME = "kpi_auditoria_export"
KEY_COLUMN = "idempotencyKey"
