"""Alembic environment: always driven programmatically with an open connection."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table="georeg_schema_version",
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
