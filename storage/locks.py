"""The training lock: at most one training job per corpus, however many daemons share it.

On PostgreSQL it is a session-level advisory lock, keyed by the corpus (the database and its
schema), held on a connection of its own from acquire() to release(); the server drops it when
that connection ends, so a job that dies (SIGKILL, a lost machine) never leaves it behind. The
connection carries the holder's description as its application_name, which is how a refused
job names the one that holds the lock. On SQLite the lock is a no-op: a SQLite corpus lives on
one machine, in (by default) its state directory, whose lock already keeps a second daemon or
`train` out. Knows nothing of models or training; it only holds a lock.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from .db import Database
from .errors import StorageError, StoreUnavailable

TRAINING_LOCK = 0x63727974  # "cryt": the first key of the pair; the second names the schema
APPLICATION_NAME_LIMIT = 63  # PostgreSQL truncates application_name beyond this many bytes


class TrainingLocked(StorageError):
    """Another training job holds the corpus's training lock; the message names it."""


class TrainingLock:
    """The corpus's training lock, held from acquire() until release() (or the process's end)."""

    def __init__(self, database: Database, holder: str):
        self.database = database
        self.holder = holder  # who we are, in words: "crystalline run on HOST, pid N"
        self._connection: sa.Connection | None = None
        self._key: int | None = None
        self._sqlite_held = False  # SQLite: nothing to hold, but held says what acquire() did

    @property
    def held(self) -> bool:
        return self._connection is not None or self._sqlite_held

    def acquire(self) -> "TrainingLock":
        """Takes the lock without waiting; raises TrainingLocked, one line naming the holder,
        when another job has it. Idempotent."""
        if self.held:
            return self
        if self.database.dialect != "postgresql":
            self._sqlite_held = True
            return self
        connection = self.database.engine.connect()
        try:
            name = self.holder.encode("utf-8")[:APPLICATION_NAME_LIMIT].decode("utf-8", "ignore")
            connection.execute(sa.text("SELECT set_config('application_name', :name, false)"), {"name": name})
            key = _schema_key(connection)
            got = connection.execute(sa.text("SELECT pg_try_advisory_lock(:first, :second)"),
                                     {"first": TRAINING_LOCK, "second": key}).scalar_one()
            if not got:
                holder = _holder(connection, key)
                raise TrainingLocked(f"another training job holds the corpus {self.database.url}: {holder}; only "
                                     "one job may train a corpus: stop that one first, or run this daemon with "
                                     "--no-train (ingest only)")
            connection.commit()  # a session-level lock outlives the transaction
        except BaseException:
            connection.close()
            raise
        self._connection, self._key = connection, key
        return self

    def release(self) -> None:
        """Drops the lock (closing its connection); idempotent, never raises for a lost connection."""
        self._sqlite_held = False
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.execute(sa.text("SELECT pg_advisory_unlock(:first, :second)"),
                               {"first": TRAINING_LOCK, "second": self._key})
            connection.commit()
        except (sa.exc.DBAPIError, StoreUnavailable):
            pass  # the connection is gone, and the lock with it
        finally:
            connection.close()

    def __enter__(self) -> "TrainingLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _schema_key(connection: sa.Connection) -> int:
    """The second lock key: the corpus's schema (advisory locks are already per database), as a
    non-negative 31-bit integer, so one server holds many corpora side by side."""
    schema = connection.execute(sa.text("SELECT current_schema()")).scalar_one() or ""
    return int.from_bytes(hashlib.sha256(schema.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def _holder(connection: sa.Connection, key: int) -> str:
    """The session holding the lock, in words (what pg_stat_activity tells this user)."""
    query = sa.text(
        "SELECT a.pid, a.application_name, host(a.client_addr) AS address, a.backend_start FROM pg_locks l "
        "LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND l.classid::bigint = :first AND l.objid::bigint = :second AND l.objsubid = 2")
    row = connection.execute(query, {"first": TRAINING_LOCK, "second": key}).first()
    connection.rollback()
    if row is None:
        return "a session that has just ended (try again)"
    name = row.application_name or "a session without a name"
    where = f" from {row.address}" if row.address else ""
    since = f", since {row.backend_start:%Y-%m-%d %H:%M:%S %Z}".rstrip() if row.backend_start else ""
    return f"{name} (PostgreSQL backend pid {row.pid}{where}{since})"
