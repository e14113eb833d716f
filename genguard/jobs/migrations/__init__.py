"""The jobs schema's Alembic migrations, run at startup (gateway, worker) or by `genguard jobs migrate`.

Several processes may start at once (gateway replicas, workers): PostgreSQL serialises them with an advisory
lock held for the migration's transaction, SQLite with a file lock beside the database.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
_LOCK_ID = 0x6767_6A6F  # "ggjo": the advisory lock GenGuard's migrations take


def _config(connection):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


@contextlib.contextmanager
def _sqlite_lock(engine):
    import fcntl

    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(engine, revision: str = "head") -> None:
    from alembic import command
    from sqlalchemy import text

    lock = _sqlite_lock(engine) if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    with lock, engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
        command.upgrade(_config(connection), revision)


def current(engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
