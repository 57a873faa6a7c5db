"""The ingest pipeline against a real SQLite store: outcomes, dedup, versions, round trips, CLI."""

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from crawler.cli.main import main
from crawler.ingest.extract import extract_file
from crawler.ingest.pipeline import Ingestor, iter_files
from crawler.ingest.tokenizer import ByteTokenizer
from storage import CorpusQueue, StorageConfig, open_database


@pytest.fixture(autouse=True)
def logs_in_memory():
    """Every test logs into memory, whatever an earlier test configured: a command run in an earlier
    test (`crystalline ingest`) may have pointed structlog at a stream pytest has closed since."""
    with capture_logs():
        yield


@pytest.fixture
def queue(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    q = CorpusQueue(database)
    yield q
    q.close()
    database.close()


def nonzero(counts: dict) -> dict:
    return {status: n for status, n in counts.items() if n}


def whole_stream(queue) -> np.ndarray:
    total = queue.stats().tokens_total
    windows, _ = queue.read_windows(0, 1, total - 1)
    return windows[0]


def test_a_folder_of_mixed_files(tmp_path, queue):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first document\n")
    (root / "sub" / "b.md").write_text("# second\n\nbody\n")
    (root / "copy.txt").write_text("first document\n")  # same bytes, another name
    (root / "empty.txt").write_text("")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (root / ".hidden").write_text("never read")
    (root / "draft.txt.part").write_text("still downloading")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the root")
    os.symlink(outside, root / "link.txt")

    ingestor = Ingestor(queue, ByteTokenizer())
    outcomes = {Path(o.path).name: o for o in (ingestor.ingest_file(p, r) for p, r in iter_files([root]))}
    assert set(outcomes) == {"a.txt", "b.md", "copy.txt", "empty.txt", "blob.bin", "link.txt"}
    assert outcomes["a.txt"].status == "ingested" and outcomes["a.txt"].tokens == len("first document") + 1
    assert outcomes["b.md"].status == "ingested"
    assert outcomes["copy.txt"].status == "duplicate" and outcomes["copy.txt"].tokens == 0
    assert (outcomes["empty.txt"].status, outcomes["empty.txt"].reason) == ("skipped", "empty")
    assert (outcomes["blob.bin"].status, outcomes["blob.bin"].reason) == ("skipped", "binary")
    assert (outcomes["link.txt"].status, outcomes["link.txt"].reason) == ("skipped", "outside_root")

    stats = queue.stats()
    assert nonzero(stats.documents) == {"queued": 2, "duplicate": 1, "skipped": 3}
    eod = ByteTokenizer().eod_id
    # the stream is the two documents in arrival order, each opened by a separator
    expected = [eod, *b"first document", eod, *b"# second\n\nbody"]
    assert whole_stream(queue).tolist() == expected

    # a second pass reads nothing: every file version was seen
    again = [ingestor.ingest_file(p, r).status for p, r in iter_files([root])]
    assert set(again) == {"unchanged"}
    assert queue.stats().tokens_total == len(expected)


def test_a_modified_file_is_a_new_version(tmp_path, queue):
    path = tmp_path / "notes.txt"
    path.write_text("version one")
    ingestor = Ingestor(queue, ByteTokenizer())
    first = ingestor.ingest_file(path)
    path.write_text("version two, longer")
    os.utime(path, (1e9, 1e9))
    second = ingestor.ingest_file(path)
    assert first.status == second.status == "ingested"
    assert second.document_id != first.document_id
    assert nonzero(queue.stats().documents) == {"queued": 2}


def test_a_file_deleted_before_ingest_is_vanished(tmp_path, queue):
    path = tmp_path / "gone.txt"
    outcome = Ingestor(queue, ByteTokenizer()).ingest_file(path)
    assert (outcome.status, outcome.reason) == ("skipped", "vanished")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=1, max_size=300).filter(lambda s: s.strip()), min_size=1, max_size=4))
def test_text_tokens_chunks_tokens_text_round_trip(tmp_path_factory, texts):
    base = tmp_path_factory.mktemp("rt")
    database = open_database(StorageConfig(url=f"sqlite:///{base / 'c.db'}", chunk_tokens=7).validate())
    queue = CorpusQueue(database)
    try:
        tokenizer = ByteTokenizer()
        ingestor = Ingestor(queue, tokenizer)
        stored = []
        for i, text in enumerate(texts):
            path = base / f"{i}.txt"
            path.write_bytes(text.encode("utf-8"))
            outcome = ingestor.ingest_file(path)
            if outcome.status == "ingested":
                stored.append(extract_file(path).text)  # the text is what the extractor made of the file
        if not stored:  # every text was rejected (say, control characters only): nothing queued
            assert queue.stats().tokens_total == 0
            return
        stream = whole_stream(queue)
        documents = np.split(stream, np.flatnonzero(stream == tokenizer.eod_id))[1:]
        decoded = [tokenizer.decode_text(doc[1:]) for doc in documents]
        assert decoded == stored
    finally:
        queue.close()
        database.close()


def test_cli_ingest_and_status(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.txt").write_text(f"document number {i}\n" * 20)
    (root / "z.bin").write_bytes(bytes(range(256)) * 4)
    state = tmp_path / "state"
    assert main(["ingest", str(root), "--state-dir", str(state), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == {"ingested": 5, "skipped": 1}
    assert report["reasons"] == {"skipped:binary": 1}
    assert main(["status", "--json", "--state-dir", str(state)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["exists"] and nonzero(status["documents"]) == {"queued": 5, "skipped": 1}
    # each document: its text without the final newline (trailing whitespace is stripped), plus
    # the separator that opens it
    per_document = len("document number 0\n") * 20 - 1 + 1
    assert status["tokens_queued"] == status["tokens_total"] == 5 * per_document
    assert status["tokens_trained"] == 0 and status["last_checkpoint"] is None


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), "--state-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err
    assert main(["status", "--state-dir", str(tmp_path / "fresh")]) == 0
    assert "not created yet" in capsys.readouterr().out


def test_a_tokenizer_change_under_an_existing_corpus_is_refused(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_text("some text to start the corpus with\n" * 50)
    state = tmp_path / "state"
    assert main(["ingest", str(root), "--state-dir", str(state)]) == 0
    # a BPE forced into the state directory after the byte-level corpus exists
    assert main(["tokenizer", "train", str(root), "--vocab-size", "300", "--state-dir", str(state), "--force"]) == 0
    (root / "b.txt").write_text("more text\n")
    capsys.readouterr()
    assert main(["ingest", str(root), "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizer" in err and "Traceback" not in err


# --- the daemon's path: Watcher -> IngestWorker -> store, one step at a time ----------------------

@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    """A CorpusQueue on an empty database of each kind (PostgreSQL: a fresh schema on the server of
    tests/conftest.py's `postgres_url`, dropped after; it skips or fails as that fixture says)."""
    import uuid

    import sqlalchemy as sa

    if request.param == "sqlite":
        database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
        yield CorpusQueue(database)
        database.close()
        return
    base = request.getfixturevalue("postgres_url")
    admin = sa.create_engine(base)
    schema = f"crystalline_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    database = open_database(StorageConfig(url=url.render_as_string(hide_password=False)).validate())
    try:
        yield CorpusQueue(database)
    finally:
        database.close()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Pipeline:
    """The daemon's ingest path without threads: the real Watcher's scan and debouncer feed the
    real IngestWorker's inbox; `step()` runs both until the inbox is empty, with a fake clock."""

    def __init__(self, root: Path, queue, clock: FakeClock | None = None, writes=None, state_dir: Path | None = None,
                 tokenizer=None):
        import queue as queue_module

        import structlog

        from crawler.config import Config
        from crawler.ingest.watcher import WatchConfig, Watcher
        from crawler.service.ingest_worker import IngestWorker

        self.clock = clock or FakeClock()
        self.inbox = queue_module.Queue()
        config = WatchConfig(roots=(str(root),), settle_seconds=0.5, rescan_interval_seconds=0)
        self.watcher = Watcher(config, self._offer, clock=self.clock)
        self.worker = IngestWorker(Config(state_dir=state_dir or root.parent / "state"), queue, tokenizer or ByteTokenizer(),
                                   self.inbox, structlog.get_logger(), writes=writes, release=self.watcher.reoffer)
        self.worker.initialize()

    def _offer(self, path: Path, root: Path) -> bool:
        self.inbox.put_nowait((path, root))
        return True

    def step(self, rescan: bool = True) -> None:
        if rescan:
            self.watcher.rescan("test")
        self.clock.t += 1
        self.watcher.run_once(self.clock.t)
        while not self.inbox.empty() or self.worker.held:
            if self.worker.run_once(self.clock.t):  # paused: writes are blocked
                break


def events(logs, name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def good_files(root: Path, n: int = 10) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = root / f"good{i:02d}.txt"
        path.write_text(f"good document number {i}\n")
        paths.append(path)
    return paths


def stored_paths(queue) -> dict[str, str]:
    """source_path -> status of every row, as the store hands it back."""
    import sqlalchemy as sa

    from storage.models import documents

    with queue.database.read() as connection:
        return {row.source_path: row.status for row in connection.execute(sa.select(documents))}


def test_a_batch_with_a_name_that_is_not_utf8_and_a_symlink_loop_stores_every_good_file(tmp_path, store):
    from structlog.testing import capture_logs

    root = tmp_path / "inbox"
    good = good_files(root)
    poison = Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9 notes.txt"))  # Latin-1, not UTF-8
    poison.write_text("written on an old system\n")
    os.symlink(root / "loop_b", root / "loop_a")
    os.symlink(root / "loop_a", root / "loop_b")
    pipeline = Pipeline(root, store)
    with capture_logs() as logs:
        pipeline.step()
        pipeline.step()  # a second rescan finds nothing new to offer
    ingested = events(logs, "file_ingested")
    assert sorted(e["path"] for e in ingested) == sorted([str(p) for p in good] + [f"{root}/caf\\xe9 notes.txt"])
    assert all(not e["duplicate"] for e in ingested)
    skipped = events(logs, "file_skipped")
    assert sorted((Path(e["path"]).name, e["reason"]) for e in skipped) == [("loop_a", "unreadable"),
                                                                              ("loop_b", "unreadable")]
    assert "symlink loop" in skipped[0]["detail"]
    assert not events(logs, "file_failed") and not events(logs, "watcher_error")
    for e in logs:
        json.dumps(e, ensure_ascii=False).encode("utf-8")  # every line prints: no lone surrogate
    # stored losslessly: the name comes back byte for byte, and the same version is not read again
    rows = stored_paths(store)
    assert rows[str(poison)] == "queued" and os.fsencode(next(p for p in rows if "caf" in p)).endswith(b"caf\xe9 notes.txt")
    assert store.seen(str(poison), poison.stat().st_size, poison.stat().st_mtime)
    again = Pipeline(root, store)  # a restart: a new watcher offers everything again
    with capture_logs() as logs:
        again.step()
    assert not events(logs, "file_ingested") and not events(logs, "file_skipped")
    assert again.worker.counts["unchanged"] == 13


def test_the_stored_form_of_a_name_that_is_not_utf8_is_ascii_text(tmp_path, store):
    import sqlalchemy as sa

    path = Path(os.fsdecode(os.fsencode(tmp_path) + b"/r\xe9sum\xe9 100%.txt"))
    path.write_text("a curriculum\n")
    assert Ingestor(store, ByteTokenizer()).ingest_file(path).status == "ingested"
    with store.database.read() as connection:
        [raw] = connection.execute(sa.text("SELECT source_path FROM documents")).scalars()
    assert raw == f"escaped:{tmp_path}/r%E9sum%E9 100%25.txt"


def test_a_file_whose_tokenizing_raises_is_failed_alone(tmp_path, store):
    from structlog.testing import capture_logs

    class Tokenizer(ByteTokenizer):
        def encode_text(self, text):
            if "poison" in text:
                raise RecursionError("maximum recursion depth exceeded")
            return super().encode_text(text)

    root = tmp_path / "inbox"
    good = good_files(root)
    (root / "bad.txt").write_text("a poison text for this tokenizer\n")
    with capture_logs() as logs:
        Pipeline(root, store, tokenizer=Tokenizer()).step()
    assert sorted(e["path"] for e in events(logs, "file_ingested")) == [str(p) for p in good]
    [failed] = events(logs, "file_failed")
    assert failed["path"] == str(root / "bad.txt") and "RecursionError" in failed["error"]
    assert nonzero(store.stats().documents) == {"queued": 10, "failed": 1}


class FailingQueue:
    """A CorpusQueue whose document writes raise `error` while `failing` holds (a path predicate,
    or True for every write); everything else goes to the real queue."""

    def __init__(self, queue, error: Exception, failing=True):
        self.queue, self.error, self.failing = queue, error, failing
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.queue, name)

    def _check(self, paths) -> None:
        self.calls += 1
        failing = self.failing
        if failing is True or (callable(failing) and any(failing(p) for p in paths)):
            raise self.error

    def add_documents(self, items, **kwargs):
        self._check([item.source_path for item in items])
        return self.queue.add_documents(items, **kwargs)

    def record_skip(self, **kwargs):
        self._check([kwargs["source_path"]])
        return self.queue.record_skip(**kwargs)


def disk_full() -> Exception:
    import sqlite3

    import sqlalchemy as sa

    return sa.exc.OperationalError("INSERT INTO documents ...", {}, sqlite3.OperationalError("database or disk is full"))


def test_a_file_whose_storage_write_fails_alone_does_not_take_its_neighbours_with_it(tmp_path, store):
    import sqlalchemy as sa
    from structlog.testing import capture_logs

    root = tmp_path / "inbox"
    good = good_files(root)
    (root / "poison.txt").write_text("this one the store refuses\n")
    error = sa.exc.IntegrityError("INSERT INTO documents ...", {}, Exception("a constraint this file breaks"))
    queue = FailingQueue(store, error, failing=lambda p: p.endswith("poison.txt"))
    pipeline = Pipeline(root, queue)
    with capture_logs() as logs:
        pipeline.step()
    assert sorted(e["path"] for e in events(logs, "file_ingested")) == [str(p) for p in good]
    [failed] = events(logs, "file_failed")
    assert failed["path"] == str(root / "poison.txt") and "IntegrityError" in failed["error"]
    assert nonzero(store.stats().documents) == {"queued": 10}
    assert pipeline.worker.held == [] and not pipeline.worker.writes.blocked


def test_a_worker_that_dies_mid_batch_hands_its_files_back_to_be_offered_again(tmp_path, store):
    """Without a daemon restart: the supervisor starts a new worker; the watcher offers again."""
    import threading

    import structlog
    from structlog.testing import capture_logs

    from crawler.service.ingest_worker import IngestWorker
    from crawler.service.threads import WorkerThread

    class Killed(BaseException):
        """Escapes every `except Exception`, as a worker's death would."""

    root = tmp_path / "inbox"
    good = good_files(root)
    killing = FailingQueue(store, Killed(), failing=True)
    pipeline = Pipeline(root, killing)
    with capture_logs() as logs:
        pipeline.watcher.rescan("test")
        pipeline.clock.t += 1
        assert len(pipeline.watcher.run_once(pipeline.clock.t)) == 10
        thread = WorkerThread(pipeline.worker, threading.Event(), structlog.get_logger(), pipeline.clock,
                              threading.Event())
        thread.start()
        thread.join(timeout=20)
    assert isinstance(thread.error, Killed) and events(logs, "worker_failed")
    assert pipeline.inbox.empty() and pipeline.watcher.stats["pending"] == 10  # handed back
    restarted = IngestWorker(pipeline.worker.config, store, ByteTokenizer(), pipeline.inbox, structlog.get_logger())
    restarted.initialize()
    pipeline.worker = restarted
    with capture_logs() as logs:
        pipeline.step(rescan=False)  # no rescan needed: the watcher offers them at its next step
    assert sorted(e["path"] for e in events(logs, "file_ingested")) == [str(p) for p in good]


def test_a_full_disk_holds_the_batch_pauses_and_retries_once_writing_works(tmp_path, store):
    from structlog.testing import capture_logs

    from crawler.state.writable import WriteState

    root = tmp_path / "inbox"
    first = good_files(root / "first")
    (root / "first" / "empty.txt").write_text("")  # its skip is a write too
    clock = FakeClock()
    state = tmp_path / "state"
    state.mkdir()
    with capture_logs() as logs:
        writes = WriteState(state, __import__("structlog").get_logger(), clock=clock, recheck_seconds=10.0)
        queue = FailingQueue(store, disk_full(), failing=True)
        pipeline = Pipeline(root, queue, clock=clock, writes=writes, state_dir=state)
        pipeline.step()
        assert writes.blocked == "disk_full" and len(pipeline.worker.held) == 11
        second = [root / "second" / f"new{i}.txt" for i in range(3)]  # arrives while blocked: left in the inbox
        for i, path in enumerate(second):
            path.parent.mkdir(exist_ok=True)
            path.write_text(f"a newer document {i}\n")
        pipeline.watcher.rescan("test")
        pipeline.watcher.run_once(clock.t + 1)
        calls = queue.calls
        assert pipeline.worker.run_once(clock.t + 2) == pipeline.worker.BLOCKED_PAUSE_SECONDS
        assert queue.calls == calls and pipeline.inbox.qsize() == 3, "paused: nothing read, nothing written"
        queue.failing = False  # space was freed; nothing happens before the next re-check
        clock.t += 10
        pipeline.step(rescan=False)
    assert writes.blocked is None and writes.generation == 1
    assert len(events(logs, "disk_full")) == 1 and events(logs, "ingest_resumed")[0]["files"] == 11
    ingested = sorted(e["path"] for e in events(logs, "file_ingested"))
    assert ingested == sorted(str(p) for p in first + second)
    assert [e["reason"] for e in events(logs, "file_skipped")] == ["empty"]
    assert nonzero(store.stats().documents) == {"queued": 13, "skipped": 1}


def test_a_full_disk_after_part_of_a_batch_was_committed_stores_nothing_twice(tmp_path, store):
    from structlog.testing import capture_logs

    from crawler.state.writable import WriteState

    root = tmp_path / "inbox"
    root.mkdir()
    for i in range(3):  # about 600 kB each: the batch commits after the second file
        (root / f"big{i}.txt").write_text(f"{i} " + "word " * 120_000)
    clock = FakeClock()
    writes = WriteState(tmp_path, __import__("structlog").get_logger(), clock=clock, recheck_seconds=1.0)
    queue = FailingQueue(store, disk_full(), failing=lambda p: p.endswith("big2.txt"))
    pipeline = Pipeline(root, queue, clock=clock, writes=writes)
    with capture_logs() as logs:
        pipeline.step()
        assert [p.name for p, _ in pipeline.worker.held] == ["big2.txt"]
        queue.failing = False
        clock.t += 5
        pipeline.step()
    assert sorted(Path(e["path"]).name for e in events(logs, "file_ingested")) == ["big0.txt", "big1.txt", "big2.txt"]
    assert nonzero(store.stats().documents) == {"queued": 3}
    assert store.stats().tokens_total == sum(len(p.read_text().rstrip()) + 1 for p in root.iterdir())


def test_a_real_full_disk_under_the_database(tmp_path):
    """A 1 MB tmpfs holds the database: ingest fills it, stops without dying, and finishes every
    file once space is freed. The store says so (StoreFull): the files wait out the store
    outage's backoff, not the state directory's write probe. Needs root (mount); skipped otherwise."""
    import shutil
    import subprocess

    from structlog.testing import capture_logs

    from crawler.state.writable import WriteState

    disk = tmp_path / "disk"
    disk.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("mounting a 1 MB tmpfs needs root (CAP_SYS_ADMIN); the injected variants above always run")
    try:
        database = open_database(StorageConfig(url=f"sqlite:///{disk / 'corpus.db'}").validate())
        queue = CorpusQueue(database)
        ballast = disk / "ballast"
        with open(ballast, "wb") as f:  # leave about 60 kB: too little for the batch (about 200 kB)
            f.write(b"\0" * (shutil.disk_usage(disk).free - 60_000))
        root = tmp_path / "inbox"
        root.mkdir()
        for i in range(20):  # about 3 kB of text each, 6 kB of tokens
            (root / f"doc{i:02d}.txt").write_text(f"{i} " + " ".join(f"w{i}x{j}" for j in range(500)))
        clock = FakeClock()
        writes = WriteState(disk, __import__("structlog").get_logger(), clock=clock, recheck_seconds=10.0)
        pipeline = Pipeline(root, queue, clock=clock, writes=writes, state_dir=disk)
        outage = pipeline.worker.outage
        with capture_logs() as logs:
            pipeline.step()
            assert outage.cause == "disk_full" and pipeline.worker.held
            clock.t += 10
            pipeline.step()  # the retry fails again: still unavailable, nothing lost
            assert outage.cause == "disk_full" and pipeline.worker.held
            ballast.unlink()
            clock.t += 10
            pipeline.step()
        assert outage.cause is None and not pipeline.worker.held and writes.blocked is None
        assert [e["cause"] for e in events(logs, "store_unavailable")] == ["disk_full"]
        assert events(logs, "store_available")[0]["tries"] == 2 and not events(logs, "file_failed")
        names = sorted(Path(e["path"]).name for e in events(logs, "file_ingested"))
        assert names == [f"doc{i:02d}.txt" for i in range(20)]
        assert nonzero(queue.stats().documents) == {"queued": 20}
        assert queue.stats().tokens_total == sum(len(p.read_text()) + 1 for p in root.iterdir())
        database.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_fifo_and_socket_are_skipped_as_unsupported_once_and_never_opened(tmp_path, store, monkeypatch):
    import socket

    from structlog.testing import capture_logs

    import crawler.ingest.reading as ingest_module  # the Ingestor's per-file read

    root = tmp_path / "inbox"
    good = good_files(root, 2)
    os.mkfifo(root / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "sock"))
    (root / "#notes.txt#").write_text("an emacs autosave")
    (root / ".#notes.txt").write_text("an emacs lock")
    real = ingest_module.extract_file
    opened = []
    monkeypatch.setattr(ingest_module, "extract_file", lambda path, limits=None: opened.append(Path(path).name) or real(path, limits))
    try:
        pipeline = Pipeline(root, store)
        with capture_logs() as logs:
            pipeline.step()
            pipeline.step()
        again = Pipeline(root, store)  # after a restart: unchanged, not reported again
        with capture_logs() as later:
            again.step()
    finally:
        server.close()
    skipped = sorted((Path(e["path"]).name, e["reason"], e["detail"]) for e in events(logs, "file_skipped"))
    assert skipped == [("pipe", "unsupported", "a FIFO, not a regular file"),
                       ("sock", "unsupported", "a socket, not a regular file")]
    assert sorted(e["path"] for e in events(logs, "file_ingested")) == [str(p) for p in good]
    assert sorted(opened) == ["good00.txt", "good01.txt"]
    assert not events(later, "file_skipped") and not events(later, "file_ingested")


def test_a_file_in_a_folder_the_daemon_may_not_enter_is_skipped_as_unreadable_once(tmp_path, store, monkeypatch):
    """Injected (root is not stopped by permissions); the real case runs below as nobody."""
    from structlog.testing import capture_logs

    root = tmp_path / "inbox"
    good = good_files(root, 2)
    locked = root / "locked"
    locked.mkdir()
    (locked / "secret.txt").write_text("you may not read me\n")
    real_lstat = os.lstat

    def lstat(path, *args, **kwargs):
        if Path(path).parent == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    pipeline = Pipeline(root, store)
    with capture_logs() as logs:
        pipeline.step()
        pipeline.step()
    assert [(e["path"], e["reason"], e["detail"]) for e in events(logs, "file_skipped")] == [
        (str(locked / "secret.txt"), "unreadable", "Permission denied")]
    assert len(events(logs, "file_ingested")) == len(good) and not events(logs, "watcher_error")


# the child of the test below: imports, then a warm-up database (SQLite and the migrations load
# lazily), all before the child becomes nobody
UNPRIVILEGED_PREPARE = r'''
import queue as queue_module
import tempfile
from pathlib import Path
import structlog
from structlog.testing import capture_logs
from crawler.config import Config
from crawler.service.ingest_worker import IngestWorker
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.ingest.watcher import WatchConfig, Watcher
from storage import CorpusQueue, StorageConfig, open_database
with tempfile.TemporaryDirectory() as warm:
    open_database(StorageConfig(url=f"sqlite:///{warm}/warm.db").validate()).close()
'''
UNPRIVILEGED_CHECK = r'''
base = Path(sys.argv[1])
database = open_database(StorageConfig(url=f"sqlite:///{base / 'state' / 'corpus.db'}").validate())
inbox = queue_module.Queue()
clock = [1000.0]
watcher = Watcher(WatchConfig(roots=(str(base / "inbox"),), settle_seconds=0.5, rescan_interval_seconds=0),
                  lambda p, r: inbox.put_nowait((p, r)) or True, clock=lambda: clock[0])
worker = IngestWorker(Config(state_dir=base / "state"), CorpusQueue(database), ByteTokenizer(), inbox,
                      structlog.get_logger(), release=watcher.reoffer)
worker.initialize()
with capture_logs() as logs:
    for _ in range(2):
        watcher.rescan("test")
        clock[0] += 1
        watcher.run_once(clock[0])
        while not inbox.empty():
            worker.run_once(clock[0])
database.close()
print(json.dumps([{k: v for k, v in e.items() if k != "exc_info"} for e in logs]))
'''


def test_unreadable_files_and_folders_for_real_under_an_unprivileged_user(as_nobody):
    """The injected test above, for real: a folder that may be listed but not entered, and one
    that may not even be listed, walked and ingested by a user whom permissions stop (root is
    not stopped: tests/conftest.py's `as_nobody` runs the child as nobody)."""
    base = as_nobody.folder
    root = base / "inbox"
    good_files(root, 2)
    (base / "state").mkdir()
    for folder in ("noenter", "nolist"):
        (root / folder).mkdir()
        (root / folder / "inside.txt").write_text("private\n")
    for path in (root, base / "state", *root.glob("good*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    (root / "noenter").chmod(0o644)  # r without x
    (root / "nolist").chmod(0o000)  # nothing at all
    logs = json.loads(as_nobody.run(UNPRIVILEGED_CHECK, base, prepare=UNPRIVILEGED_PREPARE).strip().splitlines()[-1])
    assert [(Path(e["path"]).relative_to(root).as_posix(), e["reason"]) for e in events(logs, "file_skipped")] == [
        ("noenter/inside.txt", "unreadable")]
    [folder] = events(logs, "folder_unreadable")
    assert Path(folder["path"]).name == "nolist" and folder["log_level"] == "warning"
    assert len(events(logs, "file_ingested")) == 2 and not events(logs, "watcher_error")


def test_emacs_leftovers_are_not_ingested(tmp_path):
    for name in ("notes.txt", "#notes.txt#", ".#notes.txt"):
        (tmp_path / name).write_text("text")
    assert [p.name for p, _ in iter_files([tmp_path])] == ["notes.txt"]


# --- what a changed file means ---------------------------------------------------------------------

def stored_rows(queue, path: Path) -> list[dict]:
    import sqlalchemy as sa

    from storage.models import documents

    with queue.database.read() as connection:
        query = sa.select(documents).where(documents.c.source_path == str(path)).order_by(documents.c.version)
        return [row._asdict() for row in connection.execute(query)]


def stored_text(queue, row: dict) -> str:
    tokens = queue.read_tokens(row["stream_start"], row["stream_end"])
    assert tokens[0] == ByteTokenizer().eod_id  # each version opens with one separator
    return bytes(tokens[1:].tolist()).decode("utf-8")


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:  # what `>>` does: open, append, close
        f.write(data)


def test_a_file_that_only_grew_stores_only_its_new_text(tmp_path, store):
    path = tmp_path / "app.log"
    path.write_bytes(b"first line\n")
    ingestor = Ingestor(store, ByteTokenizer())
    first = ingestor.ingest_file(path)
    assert (first.status, first.tokens, first.offset) == ("ingested", 1 + 10, None)
    append(path, b"second line\r\n")
    second = ingestor.ingest_file(path)
    # the new bytes, opened by the whitespace the first version's text left at its end
    assert (second.status, second.offset, second.bytes, second.tokens) == ("ingested", 11, 13, 1 + 12)
    append(path, b"  \n")  # whitespace only: nothing to store, but the version is remembered
    blank = ingestor.ingest_file(path)
    assert (blank.status, blank.reason) == ("skipped", "empty")
    assert ingestor.ingest_file(path).status == "unchanged"
    append(path, "third, café\n".encode())
    third = ingestor.ingest_file(path)
    assert (third.status, third.offset) == ("ingested", 27)
    rows = stored_rows(store, path)
    assert [(r["version"], r["status"], r["byte_offset"], r["continues"]) for r in rows] == [
        (1, "queued", None, None), (2, "queued", 11, rows[0]["id"]),
        (3, "skipped", 24, rows[1]["id"]), (4, "queued", 27, rows[2]["id"])]
    assert [r["size"] for r in rows] == [11, 24, 27, 40]
    # every byte stored once: the versions' texts joined are the file's text
    texts = [stored_text(store, r) for r in rows if r["status"] == "queued"]
    assert texts == ["first line", "\nsecond line", "\n  \nthird, café"]
    assert "".join(texts) == extract_file(path).text
    assert store.stats().tokens_total == len(extract_file(path).text.encode()) + 3
    assert rows[-1]["content_hash"] == extract_file(path).content_hash  # the whole file's bytes, as always
    # a copy of the grown file under another name is a duplicate: its bytes are all in the stream
    copy = tmp_path / "copy.log"
    copy.write_bytes(path.read_bytes())
    assert ingestor.ingest_file(copy).status == "duplicate"


def test_a_file_that_grew_from_a_duplicate_stores_only_its_new_text(tmp_path, store):
    ingestor = Ingestor(store, ByteTokenizer())
    (tmp_path / "a.txt").write_text("shared start\n")
    path = tmp_path / "b.txt"
    path.write_text("shared start\n")
    assert [ingestor.ingest_file(p).status for p in (tmp_path / "a.txt", path)] == ["ingested", "duplicate"]
    append(path, b"and more\n")
    grown = ingestor.ingest_file(path)
    assert (grown.status, grown.offset, grown.tokens) == ("ingested", 13, 1 + len("\nand more"))


@pytest.mark.parametrize("name, before, after", [
    ("edited.txt", b"first line\n", b"First line\nsecond\n"),  # an earlier byte changed
    ("shrunk.txt", b"a longer first text\n", b"shorter\n"),
    ("page.html", b"<p>one</p>\n", b"<p>one</p>\n<p>two</p>\n"),  # a parsed kind changes as a whole
    ("cut.txt", "café".encode()[:4], "café au lait\n".encode()),  # first read cut mid-character
    ("wide.txt", "one\n".encode("utf-16"), "one\ntwo\n".encode("utf-16")),  # not UTF-8
])
def test_a_file_that_did_not_only_grow_is_a_whole_new_version(tmp_path, store, name, before, after):
    path = tmp_path / name
    path.write_bytes(before)
    ingestor = Ingestor(store, ByteTokenizer())
    assert ingestor.ingest_file(path).status == "ingested"
    path.write_bytes(after)
    os.utime(path, (2e9, 2e9))
    outcome = ingestor.ingest_file(path)
    whole = extract_file(path)
    assert (outcome.status, outcome.offset, outcome.bytes) == ("ingested", None, len(after))
    assert outcome.tokens == 1 + len(whole.text.encode())
    row = stored_rows(store, path)[-1]
    assert (row["byte_offset"], row["continues"]) == (None, None)
    assert stored_text(store, row) == whole.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="close-after-write events are inotify's")
def test_a_file_written_by_twenty_append_cycles_stores_each_byte_once(tmp_path, store):
    """The daemon's path, watcher events included: the real Watcher (inotify, a fake clock) hands
    the file to the real IngestWorker. 20 open-append-close cycles in four bursts: each burst's
    first close is a single write-and-close (handed over at once), the rest are closes within the
    settle time (handed over once quiet), so the file arrives 8 times, and is stored once."""
    import queue as queue_module

    import structlog

    from crawler.config import Config
    from crawler.ingest.watcher import WatchConfig, Watcher
    from crawler.service.ingest_worker import IngestWorker

    root = tmp_path / "inbox"
    root.mkdir()
    path = root / "app.log"
    clock, inbox = FakeClock(), queue_module.Queue()

    def offer(p: Path, r: Path) -> bool:
        inbox.put_nowait((p, r))
        return True

    watcher = Watcher(WatchConfig(roots=(str(root),), settle_seconds=2.0, rescan_interval_seconds=0), offer,
                      clock=clock)
    worker = IngestWorker(Config(state_dir=tmp_path / "state"), store, ByteTokenizer(), inbox,
                          structlog.get_logger(), release=watcher.reoffer)
    worker.initialize()

    def handed_over_and_ingested() -> None:
        assert wait_for(lambda: not inbox.empty())
        while not inbox.empty():
            worker.run_once(clock.t)

    with capture_logs() as logs, watcher:
        assert wait_for(lambda: watcher.stats["rescans"] == 1)
        for burst in range(4):
            for j in range(5):
                append(path, f"cycle {burst * 5 + j:02d}: a line of text\n".encode())
                size = path.stat().st_size
                if j == 0:
                    handed_over_and_ingested()
                else:  # this cycle's write and close seen, and the file not handed over
                    assert wait_for(lambda: path not in watcher._writing and watcher._pending.get(path) is not None
                                    and watcher._pending[path].size == size)
                    assert watcher.run_once(clock.t) == [] and inbox.empty()
                clock.t += 0.5
            clock.t += 2.0  # quiet for the settle time
            handed_over_and_ingested()
    ingested = events(logs, "file_ingested")
    assert len(ingested) == 8 and not events(logs, "file_skipped") and not events(logs, "file_failed")
    rows = stored_rows(store, path)
    assert [r["version"] for r in rows] == list(range(1, 9))
    assert [r["byte_offset"] for r in rows] == [None, *(r["size"] for r in rows[:-1])]
    text = extract_file(path).text
    assert "".join(stored_text(store, r) for r in rows) == text  # each byte once
    assert store.stats().tokens_total == sum(r["token_count"] for r in rows) == len(text.encode()) + 8
    assert sum(e["tokens"] for e in ingested) == len(text.encode()) + 8


def wait_for(predicate, timeout: float = 20.0) -> bool:
    """Poll until predicate() holds; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
