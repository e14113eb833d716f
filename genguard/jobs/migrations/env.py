"""Alembic's environment: the connection comes from genguard.jobs.migrations.upgrade (never a URL in a file)."""

from alembic import context

from genguard.jobs.store import metadata

context.configure(connection=context.config.attributes["connection"], target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
