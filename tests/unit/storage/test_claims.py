"""File claims (storage/claims.py) and the training lock (storage/locks.py), with injected clocks.

Each claims test runs on SQLite and on PostgreSQL (conftest's database_url); the concurrency and
lock tests need PostgreSQL, where they matter, and skip without it.
"""

from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest
import sqlalchemy as sa

from storage import CorpusQueue, FileClaims, NewDocument, StorageConfig, TrainingLock, TrainingLocked, open_database
from storage.models import claims as claims_table
from storage.models import documents

TOKENIZER = '{"kind": "byte", "version": 1}'  # as conftest records it


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair(make_config):
    """Two daemons' claims on one database, on one injected clock."""
    clock = Clock()
    databases = [open_database(make_config()) for _ in range(2)]
    a, b = (FileClaims(db, name, lease_seconds=60, max_attempts=3, clock=clock)
            for db, name in zip(databases, ("host-a:/state", "host-b:/state")))
    yield a, b, clock
    for db in databases:
        db.close()


def rows(claims: FileClaims) -> dict[str, tuple]:
    with claims.database.read() as connection:
        query = sa.select(claims_table.c.path, claims_table.c.claimed_by, claims_table.c.lease_until,
                          claims_table.c.attempts)
        return {row.path: tuple(row)[1:] for row in connection.execute(query)}


def test_a_file_is_claimed_by_one_daemon_until_its_lease_ends(pair):
    a, b, clock = pair
    first = a.claim(["/in/x.txt", "/in/y.txt"])
    assert first.claimed == ["/in/x.txt", "/in/y.txt"] and not first.held and not first.exhausted
    clock.now += 59.5
    second = b.claim(["/in/x.txt", "/in/z.txt"])
    assert second.claimed == ["/in/z.txt"]
    assert second.held == {"/in/x.txt": pytest.approx(0.5)}
    clock.now += 0.5  # a's lease ends: a died, or stopped renewing
    third = b.claim(["/in/x.txt"])
    assert third.claimed == ["/in/x.txt"]
    assert rows(a)["/in/x.txt"] == ("host-b:/state", clock.now + 60, 2)
    # a's late release of a file b took over leaves b's claim alone
    a.release(["/in/x.txt"], done=True)
    assert rows(a)["/in/x.txt"][0] == "host-b:/state"


def test_renewing_keeps_a_lease_alive_and_only_our_own(pair):
    a, b, clock = pair
    a.claim(["/in/x.txt"])
    b.claim(["/in/y.txt"])
    for _ in range(5):
        clock.now += 40
        assert a.renew(["/in/x.txt", "/in/y.txt"]) == 1  # y is b's: not renewed by a
    assert b.claim(["/in/x.txt"]).held == {"/in/x.txt": pytest.approx(60)}
    assert a.claim(["/in/y.txt"]).claimed == ["/in/y.txt"]  # b did not renew: expired long ago


def test_done_deletes_the_claim_and_not_done_hands_it_over_at_once(pair):
    a, b, clock = pair
    a.claim(["/in/done.txt", "/in/later.txt"])
    a.release(["/in/done.txt"], done=True)
    a.release(["/in/later.txt"], done=False)
    assert "/in/done.txt" not in rows(a)
    assert rows(a)["/in/later.txt"] == ("host-a:/state", clock.now, 1)
    taken = b.claim(["/in/later.txt", "/in/done.txt"])
    assert taken.claimed == ["/in/later.txt", "/in/done.txt"]
    assert rows(b)["/in/later.txt"][2] == 2 and rows(b)["/in/done.txt"][2] == 1


def test_a_restarted_daemon_takes_back_its_own_claims_at_once(pair):
    a, _, clock = pair
    a.claim(["/in/x.txt"])
    restarted = FileClaims(a.database, a.owner, lease_seconds=60, max_attempts=3, clock=clock)
    assert restarted.claim(["/in/x.txt"]).claimed == ["/in/x.txt"]
    assert rows(a)["/in/x.txt"][2] == 2


def test_after_max_attempts_the_file_is_exhausted_for_one_daemon(pair):
    a, b, clock = pair
    for claimer in (a, b, a):  # three claims, each dying before it finished
        assert claimer.claim(["/in/poison.txt"]).claimed == ["/in/poison.txt"]
        clock.now += 61
    result = b.claim(["/in/poison.txt", "/in/fine.txt"])
    assert result.claimed == ["/in/fine.txt"]
    assert list(result.exhausted) == ["/in/poison.txt"]
    assert "claimed 3 times without being finished" in result.exhausted["/in/poison.txt"]
    assert "host-a:/state" in result.exhausted["/in/poison.txt"]
    # b holds it now (attempts not counted up), so a does not record the failure too
    assert rows(b)["/in/poison.txt"] == ("host-b:/state", clock.now + 60, 3)
    assert a.claim(["/in/poison.txt"]).held == {"/in/poison.txt": pytest.approx(60)}
    b.release(["/in/poison.txt"], done=True)
    assert list(rows(b)) == ["/in/fine.txt"]


def test_odd_file_names_round_trip(pair):
    a, b, _ = pair
    name = "/in/caf\udce9 100%.txt"  # a byte that is not UTF-8, as os.fsdecode hands it over
    assert a.claim([name]).claimed == [name]
    assert b.claim([name]).held.keys() == {name}


def test_many_paths_are_claimed_in_groups(pair):
    a, b, _ = pair
    paths = [f"/in/{i:05d}.txt" for i in range(1234)]
    assert a.claim(paths).claimed == paths
    result = b.claim(paths[::-1])
    assert result.claimed == [] and set(result.held) == set(paths)
    assert a.renew(paths) == len(paths)


# --- PostgreSQL: two processes' worth of connections at once -------------------------------------


@pytest.fixture
def postgres_config(make_config, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite serializes writers with BEGIN IMMEDIATE")
    return make_config


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_concurrent_claims_of_the_same_files_give_each_file_one_owner(postgres_config):
    paths = [f"/in/{i:04d}.txt" for i in range(400)]
    databases = [open_database(postgres_config()) for _ in range(4)]
    start = threading.Barrier(len(databases))
    won: dict[int, list[str]] = {}
    errors = []

    def claimer(index: int) -> None:
        try:
            claims = FileClaims(databases[index], f"daemon-{index}", lease_seconds=300)
            start.wait(timeout=10)
            mine = []
            for offset in range(0, len(paths), 50):  # in batches, as the ingest worker claims
                group = paths[offset:offset + 50][:: 1 if index % 2 else -1]
                mine += claims.claim(group).claimed
            won[index] = mine
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(len(databases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for database in databases:
        database.close()
    assert not errors, errors
    everything = [path for mine in won.values() for path in mine]
    assert sorted(everything) == paths  # every file claimed, and by exactly one daemon


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_concurrent_inserts_of_the_same_bytes_store_one_document(postgres_config):
    # two daemons with the same 200 files under different names, committed at the same time
    contents = [f"text {i}\n".encode() * (i % 7 + 1) for i in range(200)]
    databases = [open_database(postgres_config()) for _ in range(2)]
    start = threading.Barrier(2)
    errors = []

    def writer(index: int) -> None:
        try:
            queue = CorpusQueue(databases[index])
            items = [NewDocument(f"/inbox-{index}/{i}.txt", hashlib.sha256(data).hexdigest(), len(data), 1.0,
                                 "text", np.frombuffer(data, dtype=np.uint8)) for i, data in enumerate(contents)]
            start.wait(timeout=10)
            for offset in range(0, len(items), 20):
                queue.add_documents(items[offset:offset + 20], tokenizer=TOKENIZER)
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    with databases[0].read() as connection:
        found = connection.execute(sa.select(documents.c.content_hash, documents.c.status)).all()
        total = connection.execute(sa.text("SELECT value FROM meta WHERE key = 'stream_end'")).scalar_one()
    for database in databases:
        database.close()
    stored = [digest for digest, status in found if status == "queued"]
    assert len(found) == 400
    assert sorted(stored) == sorted(hashlib.sha256(data).hexdigest() for data in contents)  # each once
    assert int(total) == sum(len(data) for data in contents)


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_a_second_training_job_on_the_corpus_is_refused_naming_the_first(postgres_config):
    first_db, second_db = open_database(postgres_config()), open_database(postgres_config())
    try:
        first = TrainingLock(first_db, "crystalline run on host-a, pid 101").acquire()
        with pytest.raises(TrainingLocked) as refused:
            TrainingLock(second_db, "crystalline train on host-b, pid 202").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert "crystalline run on host-a, pid 101" in message and "PostgreSQL backend pid" in message
        assert "--no-train" in message
        first.release()
        second = TrainingLock(second_db, "crystalline train on host-b, pid 202").acquire()
        assert second.held
        second.release()
    finally:
        first_db.close()
        second_db.close()


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_the_lock_ends_with_its_connection(postgres_config):
    # a job that dies (its connection drops) leaves no lock behind
    first_db, second_db = open_database(postgres_config()), open_database(postgres_config())
    try:
        first = TrainingLock(first_db, "doomed").acquire()
        pid = first._connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        first._connection.commit()
        with second_db.write() as connection:
            assert connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        lock = TrainingLock(second_db, "next")
        for _ in range(100):  # the server ends the backend asynchronously: until its lock is gone
            try:
                lock.acquire()
                break
            except TrainingLocked:
                threading.Event().wait(0.05)
        assert lock.held
        lock.release()
        first.release()  # its connection is gone: release must not raise
    finally:
        first_db.close()
        second_db.close()


def test_sqlite_needs_no_training_lock(tmp_path):
    with open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}")) as database:
        with TrainingLock(database, "a") as first, TrainingLock(database, "b") as second:
            assert first.held and second.held  # the state directory's lock guards a SQLite corpus
