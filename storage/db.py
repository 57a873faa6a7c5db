"""Database setup: the engine, SQLite's pragmas, the transaction scopes, and migrations on open.

This is the one place that knows how a connection is configured. SQLite gets, on every new
connection: WAL (readers never block the writer), a busy timeout, enforced foreign keys and the
configured `synchronous`. sqlite3's own transaction handling is switched off (isolation_level=None)
and a "begin" event emits BEGIN ourselves, SQLAlchemy's documented pysqlite recipe: BEGIN IMMEDIATE
for every `Database.write()` scope, so a writer takes the lock up front and waits up to the busy
timeout for it, instead of failing with "database is locked" when a deferred transaction tries to
upgrade; plain BEGIN for `Database.read()`, so a read sees one snapshot. PostgreSQL needs none of
this: the queue locks the rows it serializes on (SELECT ... FOR UPDATE).

Opening runs Alembic in one write transaction: a fresh database is created at head, an older one
is upgraded, and one at a revision this code does not know is refused with SchemaTooNew before
anything is written; one that cannot be opened at all (a missing folder, a damaged file, a server
that does not answer) raises DatabaseUnavailable, one line with the way out. Knows nothing of
tokens or training; see queue.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .config import StorageConfig
from .errors import DatabaseUnavailable, SchemaTooNew, StorageError
from .models import metadata

# found next to this file, so an installed package (package data) migrates as a checkout does
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# execution option marking a connection whose transactions write (BEGIN IMMEDIATE on SQLite)
WRITE_OPTION = "crystalline_write"
# PostgreSQL advisory lock key held while migrating, so two daemons never migrate at once
MIGRATION_LOCK = 0x63727973  # "crys"
SYNCHRONOUS_LEVELS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}


def sqlite_pragmas(config: StorageConfig) -> list[str]:
    """The statements run on every new SQLite connection, in order."""
    return [
        "PRAGMA journal_mode=WAL",
        f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}",
        "PRAGMA foreign_keys=ON",
        f"PRAGMA synchronous={config.sqlite_synchronous}",
    ]


def create_engine(config: StorageConfig) -> sa.Engine:
    """An engine for `config.url`; on SQLite, with the pragmas and BEGIN handling above."""
    url = sa.make_url(config.url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    # each pooled connection is used by one thread at a time, never shared across threads
    engine = sa.create_engine(url, connect_args={"check_same_thread": False})
    pragmas = sqlite_pragmas(config)

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, in on_begin
        for pragma in pragmas:
            row = dbapi_connection.execute(pragma).fetchone()
            if pragma.startswith("PRAGMA journal_mode") and row[0].lower() != "wal":
                raise StorageError(f"{url.database}: SQLite refused WAL (journal_mode {row[0]})")

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection):
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class Database:
    """An open corpus database: the engine and the two transaction scopes all queries use."""

    def __init__(self, engine: sa.Engine, config: StorageConfig):
        self.engine = engine
        self.config = config
        self.url = engine.url.render_as_string(hide_password=True)
        self.dialect = engine.dialect.name  # "sqlite" or "postgresql"

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[sa.Connection]:
        """One write transaction: commits when the block ends, rolls back if it raises.

        On SQLite it starts with BEGIN IMMEDIATE, so it may block up to busy_timeout_ms for
        another writer. `durable=True` raises SQLite's synchronous to FULL for this commit (the
        commit survives a power loss): use it for commits that let a caller delete a source file.
        """
        with self.engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            configured = self.config.sqlite_synchronous
            raise_sync = (
                durable
                and self.dialect == "sqlite"
                and SYNCHRONOUS_LEVELS[configured] < SYNCHRONOUS_LEVELS["FULL"]
            )
            if raise_sync:
                _set_synchronous(connection, "FULL")
            try:
                with connection.begin():
                    yield connection
            finally:
                if raise_sync and not connection.invalidated:
                    _set_synchronous(connection, configured)

    @contextmanager
    def read(self) -> Iterator[sa.Connection]:
        """One read-only transaction (one snapshot on SQLite); never blocks on a writer in WAL."""
        with self.engine.connect() as connection, connection.begin():
            yield connection

    def size_bytes(self) -> int:
        """Bytes the corpus takes: SQLite's file plus its WAL; PostgreSQL's tables with indexes."""
        if self.dialect == "sqlite":
            path = Path(self.engine.url.database)
            files = [path, path.with_name(path.name + "-wal")]
            return sum(file.stat().st_size for file in files if file.exists())
        names = [*metadata.tables, "alembic_version"]
        query = sa.text("SELECT coalesce(pg_total_relation_size(to_regclass(:name)), 0)")
        with self.read() as connection:
            return sum(int(connection.execute(query, {"name": n}).scalar_one()) for n in names)

    def truncate_log(self) -> bool:
        """SQLite: copy the write-ahead log into the database and truncate it to zero bytes
        (PRAGMA wal_checkpoint(TRUNCATE)), so pages a delete overwrote leave the log file too.
        Best effort: returns False when a reader kept it from finishing (the next checkpoint
        that completes does it); True on PostgreSQL, which has no such file."""
        if self.dialect != "sqlite":
            return True
        raw = self.engine.raw_connection()
        try:
            busy = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            raw.close()
        return busy == 0

    def close(self) -> None:
        """Closes every pooled connection. Idempotent."""
        self.engine.dispose()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _set_synchronous(connection: sa.Connection, level: str) -> None:
    # on the DBAPI connection, outside any transaction: SQLAlchemy would otherwise autobegin
    connection.connection.dbapi_connection.execute(f"PRAGMA synchronous={level}")


# --- migrations ---------------------------------------------------------------------------------


def alembic_config() -> AlembicConfig:
    """Alembic's config for the bundled migrations; script_location set here, no alembic.ini."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    return config


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(database: Database) -> str | None:
    """The database's schema revision, or None for a database without one."""
    with database.read() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade_schema(database: Database, revision: str = "head") -> None:
    """Migrates the database to `revision` in one write transaction.

    Raises SchemaTooNew, without writing anything, when the database is at a revision these
    migrations do not contain (a newer crystalline migrated it).
    """
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    known = {rev.revision for rev in script.walk_revisions()}
    with database.write() as connection:
        if database.dialect == "postgresql":
            lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": MIGRATION_LOCK})
        current = MigrationContext.configure(connection).get_current_heads()
        unknown = [rev for rev in current if rev not in known]
        if unknown:
            raise SchemaTooNew(
                f"database {database.url} is at schema revision {', '.join(unknown)}, newer than "
                f"this crystalline (head {script.get_current_head()}); upgrade crystalline"
            )
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def open_database(config: StorageConfig) -> Database:
    """Validates the config, connects, and brings the schema to head (see upgrade_schema).

    A database that cannot be opened raises DatabaseUnavailable, one line naming the file or
    server and the way out (a missing folder, a damaged file, a refused connection), never the
    driver's traceback."""
    database = Database(create_engine(config.validate()), config)
    try:
        upgrade_schema(database)
    except sa.exc.DBAPIError as exc:
        database.close()
        raise unavailable(config.url, exc) from exc
    except BaseException:
        database.close()
        raise
    return database


def unavailable(url: str, exc: sa.exc.DBAPIError) -> DatabaseUnavailable:
    """The one-line DatabaseUnavailable for a driver error met while opening `url`."""
    detail = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        shown = parsed.render_as_string(hide_password=True)
        return DatabaseUnavailable(f"cannot open the database {shown}: {detail}; check that the server runs "
                                   "and the store url names it")
    path = Path(parsed.database or "")
    lowered = detail.lower()
    if not path.parent.is_dir():
        return DatabaseUnavailable(f"cannot open the database {path}: its folder {path.parent} does not exist; "
                                   "create it, or set the store url (or the state directory) to an existing folder")
    if any(text in lowered for text in ("unable to open", "readonly", "read-only")):
        return DatabaseUnavailable(f"cannot open the database {path}: {detail}; check that the daemon's user "
                                   f"may read and write {path.parent}")
    if "locked" in lowered or "busy" in lowered:
        return DatabaseUnavailable(f"cannot open the database {path}: {detail}; another process holds it")
    if "full" in lowered:
        return DatabaseUnavailable(f"cannot open the database {path}: {detail}; free space on its file system")
    if any(text in lowered for text in ("not a database", "malformed", "corrupt")):
        return DatabaseUnavailable(f"{path} is damaged ({detail}): restore it from a backup, or move it (and "
                                   f"any {path.name}-wal) aside to start a new, empty corpus")
    return DatabaseUnavailable(f"cannot open the database {path}: {detail}")
