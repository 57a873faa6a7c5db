"""Two daemons' ingest workers on one folder, one step at a time, with claims on an injected clock
(crawler/ingest/claiming.py over storage.FileClaims; on SQLite here, where the logic is the same)."""

from __future__ import annotations

import queue as queue_module

import pytest
import structlog
from structlog.testing import capture_logs

from crawler.config import Config
from crawler.ingest.claiming import EXHAUSTED, ClaimGate
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.service.ingest_worker import IngestWorker
from storage import CorpusQueue, FileClaims, StorageConfig, open_database

LEASE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def shared(tmp_path):
    """A folder of five files, one database, and a worker factory for daemons on one clock."""
    folder = tmp_path / "shared"
    folder.mkdir()
    files = []
    for i in range(5):
        path = folder / f"f{i}.txt"
        path.write_text(f"file number {i}\n")
        files.append(path)
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'c.db'}").validate())
    clock = Clock()

    def worker(owner: str) -> IngestWorker:
        queue = CorpusQueue(database)
        log = structlog.get_logger()
        gate = ClaimGate(FileClaims(database, owner, lease_seconds=LEASE, max_attempts=2, clock=clock), queue, log)
        made = IngestWorker(Config(state_dir=tmp_path / owner), queue, ByteTokenizer(), queue_module.Queue(), log,
                            gate=gate)
        made.initialize()
        return made

    yield folder, files, database, clock, worker
    database.close()


def offer(worker: IngestWorker, files, root) -> None:
    for path in files:
        worker.inbox.put((path, root))


def test_a_file_held_by_another_daemon_waits_for_its_lease(shared):
    folder, files, database, clock, worker = shared
    a, b = worker("a"), worker("b")
    a.gate.claims.claim([str(f) for f in files[:2]])  # a claimed two files, then died
    offer(b, files, folder)
    with capture_logs() as logs:
        b.run_once(0.0)
    ingested = sorted(e["path"] for e in logs if e["event"] == "file_ingested")
    assert ingested == [str(f) for f in files[2:]]
    assert sorted(b.gate.deferred) == [str(f) for f in files[:2]]
    with capture_logs() as logs:
        b.run_once(LEASE)  # not yet: the lease and the margin have not passed
    assert not [e for e in logs if e["event"] == "file_ingested"]
    clock.now += LEASE  # a's lease ends
    with capture_logs() as logs:
        b.run_once(LEASE + 2)
    assert sorted(e["path"] for e in logs if e["event"] == "file_ingested") == [str(f) for f in files[:2]]
    assert b.gate.deferred == {}
    assert b.counts["ingested"] == 5
    with database.read() as connection:  # every claim is deleted once its file is stored
        assert connection.exec_driver_sql("SELECT count(*) FROM claims").scalar() == 0


def test_a_file_stored_by_its_holder_is_unchanged_when_retried(shared):
    folder, files, _, clock, worker = shared
    a, b = worker("a"), worker("b")
    offer(a, files[:1], folder)
    a.gate.claims.claim([str(files[0])])  # a holds it while b is offered it
    offer(b, files[:1], folder)
    b.run_once(0.0)
    assert list(b.gate.deferred) == [str(files[0])]
    a.run_once(0.0)  # a stores it and deletes its claim
    assert a.counts["ingested"] == 1
    clock.now += LEASE
    b.run_once(LEASE + 2)
    assert (b.counts["ingested"], b.counts["unchanged"]) == (0, 1)


def test_a_file_no_daemon_finishes_is_failed_after_the_attempts(shared):
    folder, files, database, clock, worker = shared
    a, b = worker("a"), worker("b")
    poison = str(files[0])
    for gate in (a.gate, b.gate):  # each claims it and dies before finishing
        assert gate.claims.claim([poison]).claimed == [poison]
        clock.now += LEASE + 1
    offer(a, files[:1], folder)
    with capture_logs() as logs:
        a.run_once(0.0)
    failed = [e for e in logs if e["event"] == "file_failed"]
    assert len(failed) == 1 and failed[0]["reason"] == EXHAUSTED and "claimed 2 times" in failed[0]["error"]
    assert a.counts["failed"] == 1 and a.counts["ingested"] == 0
    rows = CorpusQueue(database).seen_many([(poison, files[0].stat().st_size, files[0].stat().st_mtime)])
    assert rows, "the failure is recorded for this version: not retried until the file changes"
    with database.read() as connection:
        reason = connection.exec_driver_sql("SELECT status, reason FROM documents").all()
        assert reason == [("failed", EXHAUSTED)]
        assert connection.exec_driver_sql("SELECT count(*) FROM claims").scalar() == 0


def test_shutdown_releases_unfinished_files_and_hands_back_deferred_ones(shared):
    folder, files, _, clock, worker = shared
    handed_back = []
    a, b = worker("a"), worker("b")
    b.release = handed_back.extend
    a.gate.claims.claim([str(files[0])])
    offer(b, files[:1], folder)
    b.run_once(0.0)
    b.held = [(files[1], folder)]  # a blocked write held this one (claimed by b)
    b.gate.claims.claim([str(files[1])])
    b.shutdown()
    assert sorted(str(p) for p, _ in handed_back) == [str(files[0]), str(files[1])]
    # b's unfinished file may be taken over at once, without waiting for its lease
    assert a.gate.claims.claim([str(files[1])]).claimed == [str(files[1])]
