"""Alembic environment of the corpus store: runs the migrations on a connection it is handed.

`storage.db` calls Alembic with `config.attributes["connection"]` set to a connection already
inside a write transaction (BEGIN IMMEDIATE on SQLite, an advisory lock on PostgreSQL), so a
whole upgrade commits or rolls back as one. Run from the `alembic` command line instead (for
`alembic revision --autogenerate` while developing), it builds its engine through storage.db from
`sqlalchemy.url`, so the same pragmas apply. Offline (SQL script) mode is not supported.
"""

from alembic import context

from storage.models import metadata


def run_migrations(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite alters a table by copying it; batch mode writes that for future revisions
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_from_command_line() -> None:
    from storage.config import StorageConfig
    from storage.db import Database, create_engine

    config = StorageConfig(url=context.config.get_main_option("sqlalchemy.url")).validate()
    with Database(create_engine(config), config) as database, database.write() as connection:
        run_migrations(connection)


if context.is_offline_mode():
    raise RuntimeError("the corpus store's migrations run online only, on a live connection")
connection = context.config.attributes.get("connection")
if connection is None:
    run_from_command_line()
else:
    run_migrations(connection)
