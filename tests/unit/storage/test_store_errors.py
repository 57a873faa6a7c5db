"""Store errors are classified once, where connections are made: every read and write path of
the store raises a typed error (StoreBusy, StoreDisconnected, StoreFull: transient; StoreBroken),
never the driver's, each one line naming the database, the cause and the way out.

The errors are real, not mocked: SQLite's full disk is `PRAGMA max_page_count` on every new
connection, its lock a second connection holding BEGIN IMMEDIATE (or, against readers, an
exclusive locking mode) past a tiny busy timeout. PostgreSQL's lock is a second session holding
every table of the test's schema under lock_timeout, its full disk a trigger raising SQLSTATE
53100 in that schema, its lost connection a relay the test cuts (tests/conftest.py) or
pg_terminate_backend. Each test also shows the transient error passing: the same call works once
the cause is gone.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from storage import (
    CorpusQueue,
    DatabaseUnavailable,
    FileClaims,
    StorageConfig,
    StoreBroken,
    StoreBusy,
    StoreDisconnected,
    StoreFull,
    StoreUnavailable,
    open_database,
)
from storage.db import store_error

# --- the paths: every kind of call a part of the crawler makes ------------------------------------


def seed(queue: CorpusQueue, add) -> None:
    """A document at /in/a.txt, so that reads find something and forget has something to do."""
    add(queue, "/in/a.txt", np.arange(40) % 50)


READS = {
    "stats": lambda q: q.stats(),
    "seen_many": lambda q: q.seen_many([("/in/a.txt", 40, 1.0)]),
    "latest_versions": lambda q: q.latest_versions(["/in/a.txt"]),
    "stream_end": lambda q: q.stream_end(),
    "read_windows": lambda q: q.read_windows(0, 2, 3),
    "tokenizer": lambda q: q.tokenizer(),
    "evaluations": lambda q: q.evaluations(),
    "latest_checkpoint": lambda q: q.latest_checkpoint(),
}


def _add_big(q, add, name="/in/big.txt"):
    return add(q, name, np.arange(60_000) % 200)  # about 120 kB of chunks


WRITES = {
    "add_documents": lambda q, add: _add_big(q, add),
    "record_skip": lambda q, add: q.record_skip(source_path="/in/skip.txt", reason="empty", detail="x" * 200_000),
    "record_evaluation": lambda q, add: q.record_evaluation(step=1, epoch=0.1, tokens_trained=10,
                                                            val_bits_per_byte=2.0, train_bits_per_byte=None,
                                                            holdout_tokens=5, seconds=0.1, best=True),
    "commit_checkpoint": lambda q, add: q.commit_checkpoint(step=1, path="ckpt-1", stream_position=0,
                                                            tokens_trained=0),
    "forget": lambda q, add: q.forget(paths=["/in/a.txt"]),
    "claim": lambda q, add: FileClaims(q.database, "test-daemon").claim(["/in/c.txt"]),
}
# the writes that need new pages (SQLite's full disk refuses only those)
GROWING = ("add_documents", "record_skip")


def nonzero(counts: dict) -> dict:
    return {status: n for status, n in counts.items() if n}


def each_fails(calls: dict, expected: type, queue, *args) -> dict[str, StoreUnavailable]:
    """Run every call; each must raise `expected` (one line); returns them by path name."""
    raised = {}
    for name, call in calls.items():
        with pytest.raises(StoreUnavailable) as info:
            call(queue, *args)
        assert type(info.value) is expected, f"{name}: {type(info.value).__name__}: {info.value}"
        assert "\n" not in str(info.value), name
        raised[name] = info.value
    return raised


# --- SQLite -------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path) -> Path:
    return tmp_path / "corpus.db"


def open_sqlite(path: Path, **config) -> CorpusQueue:
    return CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{path}", chunk_tokens=4096, **config)))


def test_sqlite_full_is_store_full_on_every_growing_write_and_passes(sqlite_path, add):
    with open_sqlite(sqlite_path) as queue:
        seed(queue, add)
        with queue.database.read() as connection:
            pages = connection.exec_driver_sql("PRAGMA page_count").scalar()

        def limit(dbapi_connection, record):  # a file system with no room left beyond `pages`
            dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

        sa.event.listen(queue.database.engine, "connect", limit)
        queue.database.engine.dispose()  # every connection from now on is limited
        raised = each_fails({name: WRITES[name] for name in GROWING}, StoreFull, queue, add)
        for error in raised.values():
            assert error.transient and error.cause == "disk_full"
            assert str(error).startswith(f"the database {sqlite_path} is full (database or disk is full)")
            assert "free space" in str(error)
            assert isinstance(error.orig, sqlite3.OperationalError) and error.__cause__ is error.orig
        assert nonzero(queue.stats().documents) == {"queued": 1}, "nothing of a failed transaction was written"
        sa.event.remove(queue.database.engine, "connect", limit)
        queue.database.engine.dispose()  # space freed: the same calls work
        for name in GROWING:
            WRITES[name](queue, add)
        assert nonzero(queue.stats().documents) == {"queued": 2, "skipped": 1}


def test_sqlite_locked_is_store_busy_on_every_write_and_passes(sqlite_path, add):
    with open_sqlite(sqlite_path, busy_timeout_ms=20) as queue:
        seed(queue, add)
        holder = sqlite3.connect(sqlite_path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding the lock
        try:
            raised = each_fails(WRITES, StoreBusy, queue, add)
            for error in raised.values():
                assert error.transient and error.cause == "busy"
                assert str(error).startswith(f"the database {sqlite_path} is locked (database is locked)")
                assert "busy_timeout_ms (20 ms)" in str(error)
            for call in READS.values():  # WAL: readers go on beside the writer
                call(queue)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        for call in WRITES.values():  # the lock released: every write works
            call(queue, add)


def test_sqlite_locked_against_readers_is_store_busy_on_every_read(sqlite_path, add):
    with open_sqlite(sqlite_path, busy_timeout_ms=20) as queue:
        seed(queue, add)
        queue.database.engine.dispose()  # no pooled connection holds a snapshot
        holder = sqlite3.connect(sqlite_path, isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # a writer that keeps even WAL readers out
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO meta(key, value) VALUES ('probe', 'x')")
        holder.execute("COMMIT")
        try:
            for error in each_fails(READS, StoreBusy, queue).values():
                assert error.transient and "database is locked" in str(error)
        finally:
            holder.close()
        for call in READS.values():
            call(queue)


def test_sqlite_damaged_file_is_store_broken_and_not_transient(sqlite_path, add):
    with open_sqlite(sqlite_path) as queue:
        seed(queue, add)
        queue.database.engine.dispose()
        data = bytearray(sqlite_path.read_bytes())
        data[:16] = b"garbage garbage!"
        sqlite_path.write_bytes(bytes(data))
        with pytest.raises(StoreBroken) as raised:
            queue.stats()
    assert not raised.value.transient
    assert str(raised.value).startswith(f"{sqlite_path} is damaged (file is not a database)")
    assert "backup" in str(raised.value)


def test_sqlite_codes_and_texts_are_classified():
    config = StorageConfig(url="sqlite:////data/corpus.db", busy_timeout_ms=5000)
    cases = {5: StoreBusy, 6: StoreBusy, 13: StoreFull, 10: StoreDisconnected, 10 | (3 << 8): StoreDisconnected,
             14: StoreDisconnected, 11: StoreBroken, 26: StoreBroken, 8: StoreBroken, 19: StoreBroken, 1: StoreBroken}
    for code, expected in cases.items():
        error = sqlite3.OperationalError("some text")
        error.sqlite_errorcode = code
        assert type(store_error(error, config)) is expected, code
    # without a code (an error made by hand): the message decides
    for text, expected in (("database is locked", StoreBusy), ("database or disk is full", StoreFull),
                           ("disk I/O error", StoreDisconnected), ("no such table: documents", StoreBroken)):
        assert type(store_error(sqlite3.OperationalError(text), config)) is expected, text


def test_open_time_errors_say_whether_they_pass(tmp_path, sqlite_path, add):
    with open_sqlite(sqlite_path):
        pass
    holder = sqlite3.connect(sqlite_path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO meta(key, value) VALUES ('probe', 'x')")
    holder.execute("COMMIT")
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            open_sqlite(sqlite_path, busy_timeout_ms=20)
    finally:
        holder.close()
    assert raised.value.transient and raised.value.cause == "busy" and "another process holds it" in str(raised.value)
    with pytest.raises(DatabaseUnavailable) as raised:
        open_sqlite(tmp_path / "nowhere" / "corpus.db")
    assert not raised.value.transient and raised.value.cause == "broken"
    assert isinstance(raised.value, StoreUnavailable)


# --- PostgreSQL -----------------------------------------------------------------------------------

postgres_only = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


def schema_of(url: str) -> str:
    return sa.make_url(url).query["options"].split("search_path=")[1].split()[0]


def with_options(url: str, extra: str) -> str:
    parsed = sa.make_url(url)
    return parsed.update_query_dict({"options": f"{parsed.query['options']} {extra}"}).render_as_string(
        hide_password=False)


def open_postgres(url: str) -> CorpusQueue:
    return CorpusQueue(open_database(StorageConfig(url=url, chunk_tokens=4096)))


@postgres_only
def test_postgres_locked_tables_are_store_busy_on_every_path_and_pass(database_url, add):
    schema = schema_of(database_url)
    with open_postgres(with_options(database_url, "-clock_timeout=200")) as queue:
        seed(queue, add)
        admin = sa.create_engine(database_url)
        holder = admin.connect()
        try:
            tables = holder.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"),
                                    {"s": schema}).scalars().all()
            holder.execute(sa.text(f"LOCK TABLE {', '.join(tables)} IN ACCESS EXCLUSIVE MODE"))
            raised = each_fails(READS, StoreBusy, queue) | each_fails(WRITES, StoreBusy, queue, add)
            for error in raised.values():
                assert error.transient and "SQLSTATE 55P03" in str(error) and "try again" in str(error)
                assert "secret" not in str(error)
        finally:
            holder.rollback()
            holder.close()
            admin.dispose()
        for call in READS.values():
            call(queue)
        for call in WRITES.values():
            call(queue, add)


@postgres_only
def test_postgres_disk_full_is_store_full_on_every_write_and_passes(database_url, add):
    schema = schema_of(database_url)
    with open_postgres(database_url) as queue:
        seed(queue, add)
        admin = sa.create_engine(database_url)
        with admin.begin() as connection:
            connection.execute(sa.text(
                f'CREATE FUNCTION "{schema}".disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
                "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'; END $$"))
            for table in connection.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"),
                                            {"s": schema}).scalars().all():
                connection.execute(sa.text(
                    f'CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE OR DELETE ON "{schema}".{table} '
                    f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".disk_full()'))
        try:
            raised = each_fails(WRITES, StoreFull, queue, add)
            for error in raised.values():
                assert error.transient and error.cause == "disk_full"
                assert "out of disk space" in str(error) and "SQLSTATE 53100" in str(error)
                assert type(error.orig).__name__ == "DiskFull"
            for call in READS.values():  # reads need no space
                call(queue)
        finally:
            with admin.begin() as connection:
                connection.execute(sa.text(f'DROP FUNCTION "{schema}".disk_full() CASCADE'))
            admin.dispose()
        for call in WRITES.values():  # space freed: every write works
            call(queue, add)


@postgres_only
def test_postgres_lost_server_is_store_disconnected_on_every_path_and_passes(database_url, postgres_relay, add):
    url, relay = postgres_relay(database_url)
    with open_postgres(url) as queue:
        seed(queue, add)
        relay.cut()  # the server goes away: the pooled connections die, new ones are refused
        raised = each_fails(READS, StoreDisconnected, queue) | each_fails(WRITES, StoreDisconnected, queue, add)
        for error in raised.values():
            assert error.transient and error.cause == "disconnected"
            assert f"127.0.0.1:{relay.port}" in str(error) and "check that the server runs" in str(error)
        relay.restore()  # back: the pool replaces its dead connections by itself
        for call in READS.values():
            call(queue)
        for call in WRITES.values():
            call(queue, add)


@postgres_only
def test_postgres_a_terminated_session_is_store_disconnected(database_url, add):
    with open_postgres(database_url) as queue:
        seed(queue, add)
        admin = sa.create_engine(database_url)
        try:
            with pytest.raises(StoreDisconnected) as raised:
                with queue.database.read() as connection:
                    pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                    with admin.begin() as other:
                        other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    connection.execute(sa.text("SELECT 1"))
        finally:
            admin.dispose()
        assert raised.value.transient and "\n" not in str(raised.value)
        assert nonzero(queue.stats().documents) == {"queued": 1}  # the pool replaced the dead connection


@postgres_only
def test_postgres_sqlstates_are_classified(database_url):
    cases = {"40001": StoreBusy, "40P01": StoreBusy, "55P03": StoreBusy, "57014": StoreBusy,
             "53100": StoreFull, "08006": StoreDisconnected, "57P01": StoreDisconnected,
             "57P03": StoreDisconnected, "53300": StoreDisconnected,
             "23505": StoreBroken, "42P01": StoreBroken, "XX001": StoreBroken, "22012": StoreBroken}
    with open_postgres(database_url) as queue:
        for sqlstate, expected in cases.items():
            with pytest.raises(StoreUnavailable) as raised:
                with queue.database.read() as connection:
                    connection.execute(sa.text(
                        f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$"))
            assert type(raised.value) is expected, sqlstate
            assert raised.value.transient is (expected is not StoreBroken), sqlstate
            assert f"SQLSTATE {sqlstate}" in str(raised.value) and "\n" not in str(raised.value)


def test_a_refused_server_at_open_is_transient():
    url = "postgresql+psycopg://crystalline:secret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(DatabaseUnavailable) as raised:
        open_database(StorageConfig(url=url))
    assert raised.value.transient and raised.value.cause == "disconnected" and "secret" not in str(raised.value)
