"""Alembic environment: runs on the connection that `kpi_export.store.schema` hands over."""

from alembic import context

from kpi_export.store.table import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
