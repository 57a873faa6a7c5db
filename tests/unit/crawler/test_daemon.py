"""The supervisor's restart of dead workers, driven one iteration at a time."""

import threading
import time

from structlog.testing import capture_logs

from crawler.config import Config
from crawler.daemon import Daemon, WorkerThread


class Flaky:
    """A worker whose run_once raises the first `failures` times it runs, in any instance."""

    name = "flaky"
    failures = 1
    runs = 0

    def initialize(self):
        pass

    def run_once(self, now):
        Flaky.runs += 1
        if Flaky.failures > 0:
            Flaky.failures -= 1
            raise RuntimeError("boom")
        return 0.01

    def shutdown(self):
        pass


class FakeDaemon(Daemon):
    def _make_worker(self, name):
        return Flaky()


def test_a_dead_worker_is_logged_and_restarted_with_backoff(tmp_path):
    Flaky.failures, Flaky.runs = 2, 0
    now = [1000.0]
    daemon = FakeDaemon(Config(state_dir=tmp_path), {}, clock=lambda: now[0])
    with capture_logs() as logs:
        daemon._start_worker("flaky")
        daemon.workers["flaky"].join(timeout=5)  # dies on its first run
        daemon._supervise(now[0])  # restart 1, at once
        daemon.workers["flaky"].join(timeout=5)  # dies again
        daemon._supervise(now[0])  # inside the backoff: not yet
        assert not daemon.workers["flaky"].is_alive()
        now[0] += 2.5
        daemon._supervise(now[0])  # restart 2
        time.sleep(0.2)
        assert daemon.workers["flaky"].is_alive(), "the third instance keeps running"
    daemon.stop_event.set()
    daemon.workers["flaky"].join(timeout=5)
    events = [e["event"] for e in logs]
    assert events.count("worker_failed") == 2
    restarts = [e for e in logs if e["event"] == "worker_restarted"]
    assert [e["restarts"] for e in restarts] == [1, 2]
    assert restarts[0]["error"] == "RuntimeError: boom"


def test_worker_thread_runs_shutdown_after_a_failure():
    calls = []

    class Worker(Flaky):
        def shutdown(self):
            calls.append("shutdown")

    Flaky.failures = 1
    stop = threading.Event()
    with capture_logs():
        thread = WorkerThread(Worker(), stop, __import__("structlog").get_logger(), time.monotonic, threading.Event())
        thread.start()
        thread.join(timeout=5)
    assert calls == ["shutdown"] and isinstance(thread.error, RuntimeError) and thread.ready.is_set()


def test_ingest_worker_moves_stored_files_when_asked(tmp_path):
    import queue as queue_module
    from dataclasses import replace

    import structlog

    from crawler.config import DaemonConfig
    from crawler.daemon import IngestWorker
    from crawler.tokenizer import ByteTokenizer
    from storage import CorpusQueue, StorageConfig, open_database

    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    (inbox / "sub" / "a.txt").write_text("a stored file\n")
    (inbox / "empty.txt").write_text("")
    config = Config(state_dir=tmp_path / "state", daemon=replace(DaemonConfig(), after_ingest="move"))
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'c.db'}").validate())
    try:
        pending: queue_module.Queue = queue_module.Queue()
        for path in (inbox / "sub" / "a.txt", inbox / "empty.txt"):
            pending.put((path, inbox))
        worker = IngestWorker(config, CorpusQueue(database), ByteTokenizer(), pending, structlog.get_logger())
        worker.initialize()
        with capture_logs() as logs:
            worker.run_once(0.0)
        assert {e["event"] for e in logs} == {"file_ingested", "file_skipped"}
        assert not (inbox / "sub" / "a.txt").exists()
        assert (tmp_path / "state" / "processed" / "inbox" / "sub" / "a.txt").read_text() == "a stored file\n"
        assert (inbox / "empty.txt").exists(), "a skipped file stays where it is"
    finally:
        database.close()


def test_a_second_stop_signal_exits_at_once(tmp_path, monkeypatch):
    import signal

    exits = []
    monkeypatch.setattr("crawler.daemon.os._exit", lambda code: exits.append(code))
    daemon = FakeDaemon(Config(state_dir=tmp_path), {})
    daemon._on_signal(signal.SIGHUP, None)
    daemon._on_signal(signal.SIGTERM, None)
    assert exits == [] and daemon.stop_requested
    daemon.signals.clear()  # the main loop has taken the first one
    daemon._on_signal(signal.SIGINT, None)
    assert exits == [130]
