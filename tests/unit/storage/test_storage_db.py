"""Database setup: migrations on open, SQLite's pragmas and BEGIN IMMEDIATE, size."""

import re
import tomllib
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import storage
from storage import CorpusQueue, Cursor, SchemaTooNew, open_database
from storage.db import (
    MIGRATIONS,
    Database,
    alembic_config,
    create_engine,
    current_revision,
    head_revision,
    upgrade_schema,
)
from storage.models import checkpoints, chunks, documents, evaluations, meta, metadata

ROOT = Path(__file__).resolve().parents[3]


def test_fresh_database_is_created_at_head(make_config):
    with open_database(make_config()) as database:
        assert current_revision(database) == head_revision() == "0010"
        tables = set(sa.inspect(database.engine).get_table_names())
    assert tables == {*metadata.tables, "alembic_version"}


def test_migrations_build_exactly_the_models(make_config):
    # the migrations and storage/models.py describe the same schema, on each dialect
    with open_database(make_config()) as database, database.read() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_reopening_at_head_changes_nothing(make_config):
    open_database(make_config()).close()
    with open_database(make_config()) as database:
        assert current_revision(database) == "0010"


def test_upgrade_from_the_first_schema_keeps_the_rows(make_config):
    config = make_config()
    with Database(create_engine(config), config) as database:
        upgrade_schema(database, "0001")
        assert current_revision(database) == "0001"
        assert "training_cursor" not in sa.inspect(database.engine).get_table_names()
        tokens = np.arange(10, dtype="<u2")
        now = datetime.now(UTC)
        document = {
            "id": 1,
            "source_path": "/in/a.txt",
            "content_hash": "a" * 64,
            "size": 10,
            "mtime": 1.5,
            "kind": "text",
            "status": "queued",
            "version": 1,
            "token_count": 10,
            "stream_start": 0,
            "stream_end": 10,
            "created_at": now,
            "updated_at": now,
        }
        chunk = {"document_id": 1, "seq": 0, "stream_start": 0, "token_count": 10}
        chunk |= {"dtype": "uint16", "tokens": tokens.tobytes()}
        with database.write() as connection:
            connection.execute(documents.insert().values(**document))
            connection.execute(chunks.insert().values(**chunk))
            connection.execute(meta.update().values(value="10").where(meta.c.key == "stream_end"))

    with CorpusQueue(open_database(config)) as queue:
        assert current_revision(queue.database) == "0010"
        assert queue.cursor() == Cursor(stream_position=0, tokens_trained=0, step=0)
        windows, position = queue.read_windows(0, 5, 3)
        np.testing.assert_array_equal(windows, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
        assert position == 9
        stats = queue.stats()
        assert (stats.documents["queued"], stats.tokens_total, stats.tokens_queued) == (1, 10, 10)


def test_upgrade_from_0002_adds_the_evaluations_and_keeps_the_checkpoints(make_config):
    config = make_config()
    with Database(create_engine(config), config) as database:
        upgrade_schema(database, "0002")
        assert "evaluations" not in sa.inspect(database.engine).get_table_names()
        with database.write() as connection:
            connection.execute(checkpoints.insert().values(
                step=7, path="/ck/7", tokens_trained=70, stream_position=0, loss=3.5))
    with CorpusQueue(open_database(config)) as queue:
        assert current_revision(queue.database) == "0010"
        assert (queue.latest_checkpoint().step, queue.latest_checkpoint().loss) == (7, 3.5)
        assert queue.evaluations() == []
        kept = queue.record_evaluation(
            step=7, epoch=0.0, tokens_trained=70, val_bits_per_byte=3.0, train_bits_per_byte=None,
            holdout_tokens=0, seconds=0.25, best=True)
        assert queue.best_evaluation().id == kept


def test_upgrade_from_0009_keeps_the_history_and_gives_its_rows_no_model(make_config):
    # revision 0010 adds evaluations.model: a row from before has none, a row after holds its own
    config = make_config()
    with Database(create_engine(config), config) as database:
        upgrade_schema(database, "0009")
        assert "model" not in {c["name"] for c in sa.inspect(database.engine).get_columns("evaluations")}
        with database.write() as connection:
            connection.execute(evaluations.insert().values(
                step=5, epoch=0.5, tokens_trained=50, val_bits_per_byte=3.25, holdout_tokens=64, seconds=0.5,
                best=True, sources='{"plays": {"holdout_tokens": 64, "val_bits_per_byte": 3.25}}'))
    with CorpusQueue(open_database(config)) as queue:
        assert current_revision(queue.database) == "0010"
        (old,) = queue.evaluations()
        assert (old.step, old.val_bits_per_byte, old.best, old.model) == (5, 3.25, True, None)
        assert old.sources == {"plays": {"holdout_tokens": 64, "val_bits_per_byte": 3.25}}
        model = {"d_model": 16, "n_head": 2, "n_layer": 2, "parameters": 9000, "grown_at_step": 5,
                 "grown_from_layers": 1}
        queue.record_evaluation(step=9, epoch=0.9, tokens_trained=90, val_bits_per_byte=3.0, train_bits_per_byte=None,
                                holdout_tokens=64, seconds=0.5, best=True, model=model)
        assert [r.model for r in queue.evaluations()] == [None, model]


def test_a_newer_revision_is_refused_untouched(database_url, make_config):
    if database_url.startswith("postgresql"):
        # trust authentication ignores the password, which must not appear in the message
        url = sa.make_url(database_url).set(password="hunter2")
        database_url = url.render_as_string(hide_password=False)
    config = make_config(url=database_url)
    open_database(config).close()
    engine = create_engine(config)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    expected = "is at schema revision 0999, newer than this crystalline (head 0010); upgrade"
    with pytest.raises(SchemaTooNew, match=re.escape(expected)) as raised:
        open_database(config)
    assert str(raised.value).startswith("database " + sa.make_url(database_url).render_as_string())
    assert "hunter2" not in str(raised.value)
    with engine.connect() as connection:
        version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert version == "0999"


def test_migrations_are_found_next_to_the_package():
    location = Path(alembic_config().get_main_option("script_location"))
    assert location == MIGRATIONS == Path(storage.__file__).resolve().parent / "migrations"
    assert location.is_absolute()
    script = ScriptDirectory.from_config(alembic_config())
    assert [revision.revision for revision in script.walk_revisions()] == [
        "0010", "0009", "0008", "0007", "0006", "0005", "0004", "0003", "0002", "0001"]


def test_pyproject_ships_the_migrations_as_package_data():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = declared["tool"]["setuptools"]["package-data"]["storage"]
    files = [
        path.relative_to(ROOT / "storage").as_posix()
        for path in MIGRATIONS.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert files
    missing = [f for f in files if not any(fnmatch(f, pattern) for pattern in patterns)]
    assert not missing, f"not shipped in the wheel: {missing}"


def test_foreign_keys_are_enforced(make_config):
    with open_database(make_config()) as database:
        with pytest.raises(storage.StoreBroken) as raised:  # a refused constraint: retrying will not help
            with database.write() as connection:
                orphan = {"document_id": 999, "seq": 0, "stream_start": 0, "token_count": 1}
                connection.execute(chunks.insert().values(dtype="uint16", tokens=b"\0\0", **orphan))
        assert not raised.value.transient and "foreign key" in str(raised.value).lower()


def test_size_bytes_grows_with_the_corpus(make_config, add):
    with CorpusQueue(open_database(make_config(chunk_tokens=4096))) as queue:
        before = queue.database.size_bytes()
        add(queue, "/in/big.txt", np.arange(200_000) % 60_000)
        assert queue.database.size_bytes() >= before + 400_000 * 0.9


# --- SQLite only --------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'corpus.db'}"


@pytest.mark.parametrize("synchronous", ["OFF", "NORMAL", "FULL", "EXTRA"])
def test_sqlite_pragmas_are_applied_to_every_connection(sqlite_url, synchronous):
    config = storage.StorageConfig(
        url=sqlite_url, sqlite_synchronous=synchronous, busy_timeout_ms=1234
    )
    expected = {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 1234,
        "synchronous": ["OFF", "NORMAL", "FULL", "EXTRA"].index(synchronous),
    }
    with open_database(config) as database:
        for scope in (database.read, database.write):
            with scope() as connection:
                pragma = connection.exec_driver_sql
                assert {name: pragma(f"PRAGMA {name}").scalar() for name in expected} == expected


def test_sqlite_durable_write_commits_at_full_then_restores(sqlite_url):
    with open_database(storage.StorageConfig(url=sqlite_url)) as database:
        with database.write(durable=True) as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        with database.write() as connection:
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1


def test_sqlite_write_begins_immediate_and_read_begins_deferred(sqlite_url):
    with open_database(storage.StorageConfig(url=sqlite_url)) as database:
        statements = []
        sa.event.listen(
            database.engine, "before_cursor_execute", lambda *args: statements.append(args[2])
        )
        with database.write():
            pass
        with database.read():
            pass
    assert statements == ["BEGIN IMMEDIATE", "BEGIN"]


def test_sqlite_writer_takes_the_lock_at_begin_and_readers_go_on(sqlite_url):
    config = storage.StorageConfig(url=sqlite_url)
    impatient = storage.StorageConfig(url=sqlite_url, busy_timeout_ms=0)
    with open_database(config) as first, open_database(impatient) as second:
        with first.write():
            # no statement yet, but BEGIN IMMEDIATE already holds the write lock
            with pytest.raises(storage.StoreBusy, match="database is locked"):
                with second.write():
                    pass
            with second.read() as connection:  # WAL: a reader is never blocked by the writer
                assert connection.execute(sa.text("SELECT count(*) FROM documents")).scalar() == 0
