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
that does not answer) raises DatabaseUnavailable, one line with the way out.

Driver errors are classified here, once, for every query of every store class: the engine's
`handle_error` event replaces each driver error with a typed one (errors.py): StoreBusy (a lock
held past busy_timeout_ms, a deadlock), StoreDisconnected (a connection lost or refused, an I/O
error), StoreFull (SQLITE_FULL, SQLSTATE 53100), all transient, or StoreBroken for the rest. The
few calls that reach the driver beneath SQLAlchemy (`_driver_errors`) get the same treatment.
SQLAlchemy's own pre-ping is left alone, so a dropped pooled connection is still replaced
without an error. Knows nothing of tokens or training; see queue.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from .config import StorageConfig
from .errors import (DatabaseUnavailable, SchemaTooNew, StorageError, StoreBroken, StoreBusy, StoreDisconnected,
                     StoreFull, StoreUnavailable)
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
        engine = sa.create_engine(url, pool_pre_ping=True)
        _classify_errors(engine, config)
        return engine
    # each pooled connection is used by one thread at a time, never shared across threads; the
    # driver's own busy timeout (5 s unless told) is the configured one from the first pragma on
    connect_args = {"check_same_thread": False, "timeout": config.busy_timeout_ms / 1000}
    engine = sa.create_engine(url, connect_args=connect_args)
    _classify_errors(engine, config)
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


class ClosesOnExit:
    """A `with` block closes it on the way out, whatever ends the block: the base of the store's
    fronts that hold connections (Database, queue.CorpusQueue), each with its own close()."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Database(ClosesOnExit):
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
                with _driver_errors(self.config):
                    _set_synchronous(connection, "FULL")
            try:
                with connection.begin():
                    yield connection
            finally:
                if raise_sync and not connection.invalidated:
                    with _driver_errors(self.config):
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
        with _driver_errors(self.config):
            raw = self.engine.raw_connection()
            try:
                busy = raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            finally:
                raw.close()
        return busy == 0

    def close(self) -> None:
        """Closes every pooled connection. Idempotent."""
        self.engine.dispose()


def _set_synchronous(connection: sa.Connection, level: str) -> None:
    # on the DBAPI connection, outside any transaction: SQLAlchemy would otherwise autobegin
    connection.connection.dbapi_connection.execute(f"PRAGMA synchronous={level}")


# --- driver errors: classified once, here -----------------------------------------------------

# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF; https://sqlite.org/rescode.html)
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 11, 13, 14, 26
# ... read from the message when the error carries no code (one made by hand, an older Python)
_SQLITE_TEXTS = (("database is locked", SQLITE_BUSY), ("database table is locked", SQLITE_LOCKED),
                 ("database or disk is full", SQLITE_FULL), ("disk i/o error", SQLITE_IOERR),
                 ("unable to open database file", SQLITE_CANTOPEN), ("file is not a database", SQLITE_NOTADB),
                 ("malformed", SQLITE_CORRUPT), ("readonly database", SQLITE_READONLY))
# PostgreSQL's SQLSTATEs that pass by themselves (https://www.postgresql.org/docs/current/errcodes-appendix.html);
# every other one is StoreBroken. Class 08 (connection exception) is StoreDisconnected as a whole.
BUSY_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57014",  # query_canceled (statement_timeout)
    "53200",  # out_of_memory
})
DISCONNECTED_SQLSTATES = frozenset({
    "57P01",  # admin_shutdown: the server stops, or pg_terminate_backend
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: the server is starting
    "57P05",  # idle_session_timeout
    "53300",  # too_many_connections: no connection slot left, for now
})
FULL_SQLSTATES = frozenset({"53100"})  # disk_full


def _classify_errors(engine: sa.Engine, config: StorageConfig) -> None:
    """Make every driver error this engine meets (a statement, BEGIN, COMMIT, a new connection)
    leave as the typed error of `store_error` instead: SQLAlchemy raises what a handle_error
    handler returns, with the driver's exception as its __cause__, after its own clean-up (a
    lost connection is still invalidated)."""

    @sa.event.listens_for(engine, "handle_error")
    def on_error(context: Any) -> StoreUnavailable | None:
        if context.is_pre_ping or context.sqlalchemy_exception is None:
            # pre-ping: SQLAlchemy replaces the dead connection itself; no DBAPI error: our own bug
            return None
        return store_error(context.original_exception, config, disconnect=context.is_disconnect)


@contextmanager
def _driver_errors(config: StorageConfig) -> Iterator[None]:
    """The same conversion for the few calls made on the driver's connection beneath SQLAlchemy."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("sqlite3", "psycopg", "psycopg2"):
            raise
        raise store_error(exc, config) from exc


def store_error(orig: BaseException, config: StorageConfig, *, disconnect: bool = False) -> StoreUnavailable:
    """The typed error for the driver error `orig` met on the database of `config`: StoreBusy,
    StoreDisconnected, StoreFull or StoreBroken, its message one line naming the database, the
    cause and the way out. `disconnect` is SQLAlchemy's judgement that the connection is gone."""
    url = sa.make_url(config.url)
    detail = _detail(orig)
    if url.get_backend_name() == "sqlite":
        return _sqlite_error(orig, detail, Path(url.database or ""), config.busy_timeout_ms)
    return _server_error(orig, detail, url.render_as_string(hide_password=True), disconnect)


def _detail(orig: BaseException) -> str:
    """The driver's message, first line only (PostgreSQL adds DETAIL, HINT and CONTEXT lines)."""
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return " ".join(text.split()) or type(orig).__name__


def _sqlite_error(orig: BaseException, detail: str, path: Path, busy_timeout_ms: int) -> StoreUnavailable:
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        code &= 0xFF
    else:
        code = next((c for text, c in _SQLITE_TEXTS if text in detail.lower()), None)
    if code in (SQLITE_BUSY, SQLITE_LOCKED):
        return StoreBusy(f"the database {path} is locked ({detail}): another connection held it past "
                         f"busy_timeout_ms ({busy_timeout_ms} ms); try again once that writer is done, or raise "
                         "[store] busy_timeout_ms", orig)
    if code == SQLITE_FULL:
        return StoreFull(f"the database {path} is full ({detail}): free space on the file system that holds "
                         "it; nothing of the failed transaction was written", orig)
    if code in (SQLITE_IOERR, SQLITE_CANTOPEN):
        return StoreDisconnected(f"the database {path} could not be read or written ({detail}): check the disk "
                                 f"and that {path.parent} is still there and writable by this user", orig)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return StoreBroken(f"{path} is damaged ({detail}): restore it from a backup, or move it (and any "
                           f"{path.name}-wal) aside to start a new, empty corpus", orig)
    if code == SQLITE_READONLY:
        return StoreBroken(f"the database {path} cannot be written ({detail}): check that this user may "
                           f"write it and {path.parent}", orig)
    return StoreBroken(f"the database {path} refused the operation ({type(orig).__name__}: {detail}); "
                       "retrying will not help: check the file and the store url", orig)


def _server_error(orig: BaseException, detail: str, shown: str, disconnect: bool) -> StoreUnavailable:
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    where = f"SQLSTATE {sqlstate}" if sqlstate else type(orig).__name__
    # a client-side failure (refused, reset, closed) carries no SQLSTATE
    lost = sqlstate is None and type(orig).__name__ in ("OperationalError", "InterfaceError")
    if sqlstate in FULL_SQLSTATES:
        return StoreFull(f"the database server {shown} is out of disk space ({detail}, {where}): free space "
                         "on the server's disk; nothing of the failed transaction was written", orig)
    if disconnect or lost or (sqlstate or "").startswith("08") or sqlstate in DISCONNECTED_SQLSTATES:
        return StoreDisconnected(f"the connection to the database server {shown} was lost or refused "
                                 f"({detail}, {where}): check that the server runs and answers from here", orig)
    if sqlstate in BUSY_SQLSTATES:
        return StoreBusy(f"the database server {shown} could not serve the transaction now ({detail}, {where}): "
                         "another transaction held what it needed; try again", orig)
    return StoreBroken(f"the database server {shown} refused the operation ({detail}, {where}); retrying "
                       "will not help: check the store url, the schema and the server's log", orig)


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
    driver's traceback; its `transient` says whether opening may work later unchanged."""
    database = Database(create_engine(config.validate()), config)
    try:
        upgrade_schema(database)
    except (StoreUnavailable, sa.exc.DBAPIError) as exc:
        database.close()
        raise unavailable(config.url, exc) from exc
    except BaseException:
        database.close()
        raise
    return database


def unavailable(url: str, exc: StoreUnavailable | sa.exc.DBAPIError) -> DatabaseUnavailable:
    """The one-line DatabaseUnavailable for a driver error met while opening `url` (as
    store_error classified it, or still SQLAlchemy's own); transient when the classified error
    is, unless the file's folder is missing or the file cannot be opened or is damaged."""
    orig = exc.orig
    detail = " ".join(str(orig).split()) or type(orig).__name__
    transient = isinstance(exc, StoreUnavailable) and exc.transient
    cause = exc.cause if isinstance(exc, StoreUnavailable) else "broken"

    def refused(message: str, passes: bool = transient) -> DatabaseUnavailable:
        return DatabaseUnavailable(message, orig, transient=passes, cause=cause if passes else "broken")

    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        shown = parsed.render_as_string(hide_password=True)
        return refused(f"cannot open the database {shown}: {detail}; check that the server runs and the store "
                       "url names it")
    path = Path(parsed.database or "")
    lowered = detail.lower()
    if not path.parent.is_dir():
        return refused(f"cannot open the database {path}: its folder {path.parent} does not exist; create it, or "
                       "set the store url (or the state directory) to an existing folder", passes=False)
    if any(text in lowered for text in ("unable to open", "readonly", "read-only")):
        return refused(f"cannot open the database {path}: {detail}; check that the daemon's user may read and "
                       f"write {path.parent}", passes=False)
    if "locked" in lowered or "busy" in lowered:
        return refused(f"cannot open the database {path}: {detail}; another process holds it")
    if "full" in lowered:
        return refused(f"cannot open the database {path}: {detail}; free space on its file system")
    if any(text in lowered for text in ("not a database", "malformed", "corrupt")):
        return refused(f"{path} is damaged ({detail}): restore it from a backup, or move it (and any "
                       f"{path.name}-wal) aside to start a new, empty corpus", passes=False)
    return refused(f"cannot open the database {path}: {detail}")
