"""The supervisor: restarts of dead workers, a stop bounded by stop_timeout_seconds (checkpoint
first), daemon_stopped on every exit path, blocked writes and unwatched roots in health.json;
driven through its public steps (start, tick(now), stop) with injected clocks and stand-in parts."""

import errno
import json
import os
import queue as queue_module
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from crawler import ConfigError
from crawler.config import Config, DaemonConfig, WatchConfig
from crawler.service.exits import EXIT_FAILED, EXIT_STORAGE_FAILED, EXIT_WORKER_FAILED, DaemonError
from crawler.service.supervisor import Daemon
from crawler.service.threads import WorkerThread
from crawler.state.health import HealthFile, read_health
from crawler.training.figures import TrainingFigures

WAIT = 10  # a failure guard for waits on events, never reached when the test passes


# ---------------------------------------------------------------------------------------------
# stand-ins: a clock, workers, a watcher, and a Daemon built from them


class Ticking:
    """A clock that moves `step` seconds each time it is read: a deadline is reached after a
    known number of reads, whatever the real time."""

    def __init__(self, step: float, start: float = 1000.0):
        self.now, self.step = start, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Flaky:
    """A worker whose run_once raises the first `failures` times it runs, in any instance;
    `ran` is set by the first run that does not raise."""

    name = "flaky"
    failures = 1
    runs = 0
    ran = threading.Event()

    def initialize(self):
        pass

    def run_once(self, now):
        Flaky.runs += 1
        if Flaky.failures > 0:
            Flaky.failures -= 1
            raise RuntimeError("boom")
        Flaky.ran.set()
        return 0.01

    def shutdown(self):
        pass


class Part:
    """A worker with hooks the test controls: `batch` blocks run_once until released (a slow
    ingest batch), `checkpoint` blocks shutdown until released (a slow final checkpoint)."""

    figures = None
    trainer = None
    unsaved_steps = 7
    pause_requested = False

    def __init__(self, name, log, slow_batch=False, slow_checkpoint=False, fail_start=None):
        self.name, self.log = name, log
        self.in_batch, self.batch = threading.Event(), threading.Event()
        self.checkpoint = threading.Event()
        self.slow_batch = slow_batch
        if not slow_batch:
            self.batch.set()
        if not slow_checkpoint:
            self.checkpoint.set()
        self.fail_start = fail_start

    def initialize(self):
        if self.fail_start is not None:
            raise self.fail_start

    def run_once(self, now):
        self.in_batch.set()
        self.batch.wait(WAIT)
        if self.slow_batch:
            self.log.append((self.name, "batch_done"))
        return 0.01

    def shutdown(self):
        self.checkpoint.wait(WAIT)
        self.log.append((self.name, "shutdown"))


class PartsDaemon(Daemon):
    """A Daemon whose store, workers and watcher are stand-ins."""

    def __init__(self, config, clock=time.monotonic, **parts):
        super().__init__(config, {}, clock=clock)
        self.calls: list = []
        self.parts = parts  # name -> Part keyword arguments

    def open_store(self):
        return None, None

    def make_worker(self, name):
        return Part(name, self.calls, **self.parts.get(name, {}))

    def make_watcher(self):
        return StubWatcher()


class FlakyDaemon(PartsDaemon):
    def make_worker(self, name):
        return Flaky()


class StubWatcher:
    def __init__(self, observers=None):
        self.observers = observers or {}

    def start(self):
        pass

    def stop(self):
        pass

    def join(self, timeout=None):
        pass


def config_for(tmp_path, **daemon):
    return Config(state_dir=tmp_path, daemon=replace(DaemonConfig(), **daemon))


def finish(daemon):
    """Release whatever the test held, and join every worker (no thread outlives a test)."""
    for thread in daemon.workers.values():
        thread.worker.batch.set()
        thread.worker.checkpoint.set()
        thread.join(WAIT)


# ---------------------------------------------------------------------------------------------
# workers: restarted with backoff, shut down after a failure


def test_a_dead_worker_is_logged_and_restarted_with_backoff(tmp_path):
    Flaky.failures, Flaky.runs = 2, 0
    Flaky.ran.clear()
    now = [1000.0]
    daemon = FlakyDaemon(config_for(tmp_path, train=False), clock=lambda: now[0])  # the ingest worker only
    with capture_logs() as logs:
        daemon.start()
        daemon.workers["ingest"].join(timeout=5)  # dies on its first run
        assert daemon.tick(now[0])  # restart 1, at once
        daemon.workers["ingest"].join(timeout=5)  # dies again
        assert daemon.tick(now[0])  # inside the backoff: not yet
        assert not daemon.workers["ingest"].is_alive()
        now[0] += 2.5
        assert daemon.tick(now[0])  # restart 2
        assert Flaky.ran.wait(WAIT)
        assert daemon.workers["ingest"].is_alive(), "the third instance keeps running"
    daemon.stop("signal", 0)
    assert not daemon.workers["ingest"].is_alive()
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
    from crawler.ingest.tokenizer import ByteTokenizer
    from crawler.service.ingest_worker import IngestWorker
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


@pytest.mark.parametrize(("share", "training", "rest"), [(0.25, True, 6.0), (0.25, False, 0.0), (1.0, True, 0.0)])
def test_ingest_rests_after_a_batch_while_the_trainer_takes_steps(tmp_path, share, training, rest):
    """A batch that took 2 s (on the worker's clock) is followed by a rest that keeps ingest at
    `ingest_share` of the time while training runs; none when the trainer is paused or idle."""
    import queue as queue_module
    from dataclasses import replace

    import structlog

    from crawler.config import DaemonConfig
    from crawler.ingest.tokenizer import ByteTokenizer
    from crawler.service.ingest_worker import IngestWorker
    from storage import CorpusQueue, StorageConfig, open_database

    (tmp_path / "a.txt").write_text("a stored file\n")
    config = Config(state_dir=tmp_path / "state", daemon=replace(DaemonConfig(), ingest_share=share))
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'c.db'}").validate())
    clock = iter([102.0])  # read once, after the batch that started at 100
    try:
        pending: queue_module.Queue = queue_module.Queue()
        pending.put((tmp_path / "a.txt", tmp_path))
        worker = IngestWorker(config, CorpusQueue(database), ByteTokenizer(), pending, structlog.get_logger(),
                              training=lambda: training, clock=lambda: next(clock))
        worker.initialize()
        assert worker.run_once(100.0) == pytest.approx(rest)
        assert worker.counts["ingested"] == 1
        assert worker.rest(1000.0) == (IngestWorker.MAX_REST_SECONDS if rest else 0.0)
    finally:
        database.close()


def test_a_second_stop_signal_exits_at_once(tmp_path, monkeypatch):
    exits, now = [], [1000.0]
    monkeypatch.setattr("crawler.service.supervisor.os._exit", lambda code: exits.append(code))
    daemon = PartsDaemon(config_for(tmp_path), clock=lambda: now[0])
    daemon.handle_signal(signal.SIGHUP)
    daemon.handle_signal(signal.SIGTERM)
    assert exits == [] and daemon.stop_requested
    assert daemon.signals == [signal.SIGHUP, signal.SIGTERM], "recorded for the loop, nothing done yet"
    now[0] += 0.5  # the same stop delivered twice (`timeout make run`: to make, then to its group)
    daemon.handle_signal(signal.SIGTERM)
    assert exits == [] and daemon.signals == [signal.SIGHUP, signal.SIGTERM], "not recorded again"
    now[0] += 1.0  # a person asking again
    daemon.handle_signal(signal.SIGINT)
    assert exits == [130]


# ---------------------------------------------------------------------------------------------
# the stop: bounded by stop_timeout_seconds on the daemon's clock, checkpoint first


def test_a_slow_final_checkpoint_is_cut_short_at_the_stop_timeout(tmp_path):
    clock = Ticking(step=5.0)
    daemon = PartsDaemon(config_for(tmp_path, stop_timeout_seconds=30.0), clock=clock,
                         trainer={"slow_checkpoint": True})
    daemon.start()
    try:
        with capture_logs() as logs:
            t0 = clock.now
            daemon.stop("signal", 0)
            stop_seconds = clock.now - t0
    finally:
        finish(daemon)

    assert stop_seconds <= 30.0 + 2 * clock.step, "the stop ends at its deadline on the daemon's clock"
    cut = [e for e in logs if e["event"] == "shutdown_cut_short"]
    assert len(cut) == 1 and list(cut[0]["parts"]) == ["trainer"]
    assert "the final checkpoint: 7 steps since the start" in cut[0]["parts"]["trainer"]
    assert [e["worker"] for e in logs if e["event"] == "worker_stuck"] == ["trainer"]
    stopped = [e for e in logs if e["event"] == "daemon_stopped"]
    assert len(stopped) == 1 and stopped[0]["cut_short"] == ["trainer"]
    assert (stopped[0]["reason"], stopped[0]["exit_code"]) == ("signal", 0)
    assert logs.index(cut[0]) < logs.index(stopped[0])
    assert read_health(tmp_path)["state"] == "stopping"


def test_the_final_checkpoint_does_not_wait_for_a_slow_ingest_batch(tmp_path):
    clock = Ticking(step=5.0)
    daemon = PartsDaemon(config_for(tmp_path, stop_timeout_seconds=30.0), clock=clock, ingest={"slow_batch": True})
    daemon.start()
    ingest = daemon.workers["ingest"].worker
    assert ingest.in_batch.wait(WAIT)  # a batch is in flight and will not end by itself
    for name in ("a.txt", "b.txt", "c.txt"):
        daemon.inbox.put((tmp_path / name, tmp_path))
    try:
        with capture_logs() as logs:
            daemon.stop("signal", 0)
    finally:
        finish(daemon)
    # the trainer stopped and checkpointed while the ingest batch was still in flight
    assert daemon.calls[:2] == [("trainer", "shutdown"), ("ingest", "batch_done")]
    cut = next(e for e in logs if e["event"] == "shutdown_cut_short")
    assert list(cut["parts"]) == ["ingest"] and "found by the next start's scan" in cut["parts"]["ingest"]
    stopped = next(e for e in logs if e["event"] == "daemon_stopped")
    assert stopped["files_left"] == 3 and daemon.inbox.empty(), "queued files were not handed to ingest"


def test_a_stop_with_nothing_slow_is_not_cut_short(tmp_path):
    daemon = PartsDaemon(config_for(tmp_path), clock=Ticking(step=0.001))
    daemon.start()
    with capture_logs() as logs:
        daemon.stop("signal", 0)
    finish(daemon)
    events = [e["event"] for e in logs]
    assert "shutdown_cut_short" not in events and "worker_stuck" not in events
    assert sorted(c[0] for c in daemon.calls) == ["ingest", "trainer"]
    assert next(e for e in logs if e["event"] == "daemon_stopped")["cut_short"] == []


# ---------------------------------------------------------------------------------------------
# every exit path logs daemon_stopped, with an exit code that says which


def run_daemon_in_test(daemon):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with capture_logs() as logs:
        try:
            result = daemon.run()
        except DaemonError as exc:
            result = exc
    for thread in daemon.workers.values():
        thread.join(WAIT)
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "run() restores the signal handlers"
    stopped = [e for e in logs if e["event"] == "daemon_stopped"]
    assert len(stopped) == 1, "daemon_stopped is logged exactly once"
    return result, stopped[0], logs


def test_a_stop_signal_exits_0_with_daemon_stopped(tmp_path):
    class SignalledWhileStarting(PartsDaemon):
        def make_watcher(self):
            self.handle_signal(signal.SIGTERM)  # delivered during the start: the loop stops at once
            return super().make_watcher()

    result, stopped, logs = run_daemon_in_test(SignalledWhileStarting(config_for(tmp_path)))
    assert result == 0 and (stopped["reason"], stopped["exit_code"]) == ("signal", 0)
    events = [e["event"] for e in logs]
    assert "daemon_ready" in events and events.index("daemon_stopping") < events.index("daemon_stopped")


def test_a_state_directory_another_daemon_holds_raises_before_daemon_started(tmp_path):
    from crawler.state.health import DaemonAlreadyRunning, DaemonLock

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    daemon = PartsDaemon(config_for(tmp_path))
    with DaemonLock(tmp_path), capture_logs() as logs:
        try:
            daemon.run()
            raise AssertionError("run() took a lock another holder has")
        except DaemonAlreadyRunning:
            pass
    assert {s: signal.getsignal(s) for s in handlers} == handlers, "run() restores the signal handlers"
    assert logs == [] and daemon.workers == {}, "nothing started, so nothing stopped"


def test_a_storage_failure_at_start_exits_4_with_daemon_stopped(tmp_path):
    class NoStore(PartsDaemon):
        def open_store(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "corpus.db"))

    result, stopped, _ = run_daemon_in_test(NoStore(config_for(tmp_path)))
    assert isinstance(result, DaemonError) and result.status == EXIT_STORAGE_FAILED
    assert str(result).startswith("disk_full: the store could not be opened: ")
    assert "free space on the state directory's file system, then start again" in str(result)
    assert "\n" not in str(result)
    assert (stopped["reason"], stopped["exit_code"], stopped["log_level"]) == ("storage_failed", 4, "error")


def test_a_worker_that_cannot_start_exits_3_with_daemon_stopped(tmp_path):
    error = ConfigError("d_model: checkpoint=32 expected=64; set [model] d_model = 32 or use another --state-dir")
    daemon = PartsDaemon(config_for(tmp_path), trainer={"fail_start": error})
    result, stopped, logs = run_daemon_in_test(daemon)
    assert isinstance(result, DaemonError) and result.status == EXIT_WORKER_FAILED
    assert str(result) == f"the trainer worker could not start: {error}"
    assert (stopped["reason"], stopped["exit_code"]) == ("worker_failed", 3)
    assert "daemon_ready" not in [e["event"] for e in logs]


def test_an_unexpected_fault_in_the_loop_exits_1_with_daemon_stopped(tmp_path):
    class Broken(PartsDaemon):
        def tick(self, now):
            raise KeyError("a bug")

    result, stopped, logs = run_daemon_in_test(Broken(config_for(tmp_path)))
    assert isinstance(result, DaemonError) and result.status == EXIT_FAILED
    assert "the supervisor failed: 'a bug'" in str(result)
    failed = [e for e in logs if e["event"] == "daemon_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "KeyError: 'a bug'"
    assert (stopped["reason"], stopped["exit_code"]) == ("internal_error", 1)


def test_a_worker_dying_in_a_loop_on_a_full_disk_still_ends_in_daemon_stopped(tmp_path, monkeypatch):
    """The issue's ENOSPC case: the worker dies and restarts while health.json cannot be
    written; the daemon goes on, says disk_full, and a stop ends as usual."""

    class FullDisk(HealthFile):
        def write(self, report):
            exc = OSError(errno.ENOSPC, "No space left on device")
            self._writes.report("health", exc)
            raise exc

    class Dying(PartsDaemon):
        rounds = 0

        def make_worker(self, name):
            return Flaky() if name == "ingest" else super().make_worker(name)

        def tick(self, now):
            going = super().tick(now)
            Dying.rounds += 1
            if Dying.rounds == 4:
                self.handle_signal(signal.SIGTERM)
            return going

    Flaky.failures, Flaky.runs = 1000, 0
    monkeypatch.setattr("crawler.service.reporting.HealthFile", FullDisk)
    monkeypatch.setattr("crawler.state.writable.probe", lambda state_dir: False)  # and it stays full
    clock = Ticking(step=10.0)  # every supervisor step is past the restart backoff
    daemon = Dying(config_for(tmp_path), clock=clock)
    result, stopped, logs = run_daemon_in_test(daemon)
    events = [e["event"] for e in logs]
    assert result == 0 and (stopped["reason"], stopped["exit_code"]) == ("signal", 0)
    assert events.count("worker_restarted") >= 2
    assert events.count("disk_full") == 1, "logged once, not once per write"
    assert events.count("health_write_failed") == 1


# ---------------------------------------------------------------------------------------------
# blocked writes and watch roots in the supervisor's health report


def test_the_supervisor_rechecks_blocked_writes_and_reports_the_change_at_once(tmp_path):
    clock = Ticking(step=0.0)
    daemon = PartsDaemon(config_for(tmp_path, status_interval_seconds=3600.0), clock=clock)
    daemon.start()
    try:
        with capture_logs() as logs:
            assert daemon.tick(clock.now)  # nothing changed: no status before the interval
            assert daemon.writes.report("checkpoint", OSError(errno.ENOSPC, "No space left on device"))
            assert daemon.tick(clock.now)  # the block is reported now, not at the next interval
            assert read_health(tmp_path)["blocked"] == "disk_full"
            assert daemon.tick(clock.now)  # and once
            report = daemon.health_report("ready", clock.now)
            assert report["blocked"] == "disk_full" and list(report["blocked_parts"]) == ["checkpoint"]
            clock.now += daemon.writes.recheck_seconds  # the state directory (tmp_path) is writable
            assert daemon.tick(clock.now)
        assert daemon.writes.blocked is None and daemon.health_report("ready", clock.now)["blocked"] is None
        assert read_health(tmp_path)["blocked"] is None
    finally:
        daemon.stop("signal", 0)
    assert [e["event"] for e in logs] == ["disk_full", "status", "state_writable", "status"]
    assert [e["blocked"] for e in logs if e["event"] == "status"] == ["disk_full", None]


def test_the_supervisors_report_takes_its_time_and_memory_from_the_health_module(tmp_path, monkeypatch):
    import crawler.service.reporting as reporting_module

    daemon = PartsDaemon(config_for(tmp_path))
    daemon.started_wall = 1_700_000_000.0
    monkeypatch.setattr(reporting_module, "process_stats", lambda: {"rss_mb": 12.5, "threads": 9})
    report = daemon.health_report("ready", daemon.clock())
    # the format HealthFile writes updated_at in: one clock format in health.json
    assert report["started_at"] == "2023-11-14T22:13:20.000+00:00"
    assert report["rss_mb"] == 12.5


def test_workers_share_the_daemons_write_state_and_hand_back_files_to_the_watcher(tmp_path):
    from crawler.ingest.tokenizer import ByteTokenizer
    from crawler.service.ingest_worker import IngestWorker
    from crawler.training.worker import TrainingWorker
    from storage import StorageConfig, open_database

    daemon = Daemon(config_for(tmp_path), {})
    daemon.tokenizer, daemon.inbox = ByteTokenizer(), queue_module.Queue()
    with open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'c.db'}").validate()) as daemon.database:
        workers = {name: daemon.make_worker(name) for name in ("ingest", "trainer")}
    assert isinstance(workers["ingest"], IngestWorker) and isinstance(workers["trainer"], TrainingWorker)
    assert workers["ingest"].writes is daemon.writes and workers["trainer"].writes is daemon.writes
    handed_back = []
    daemon.watcher = StubWatcher()
    daemon.watcher.reoffer = handed_back.extend
    workers["ingest"].release([(tmp_path / "a.txt", tmp_path)])
    assert handed_back == [(tmp_path / "a.txt", tmp_path)]


def test_an_inbox_that_cannot_be_watched_is_in_the_health_report(tmp_path):
    from crawler.ingest.watcher import Watcher

    not_a_folder = tmp_path / "inbox.txt"
    not_a_folder.write_text("a file, not a folder")
    good = tmp_path / "inbox"
    roots = (str(not_a_folder), str(good), "/dev/null")
    daemon = PartsDaemon(config_for(tmp_path))
    daemon.watcher = Watcher(WatchConfig(roots=roots), lambda path, root: True)
    with capture_logs() as logs:
        daemon.watcher.start()
        try:
            first = daemon.health_report("ready", daemon.clock())["unwatched_roots"]
            again = daemon.health_report("ready", daemon.clock())["unwatched_roots"]
        finally:
            daemon.watcher.stop()
            daemon.watcher.join(WAIT)
    assert first == again == {str(not_a_folder): "is a regular file, not a folder",
                              "/dev/null": "is a character device, not a folder"}
    unwatched = [e for e in logs if e["event"] == "root_unwatched"]
    assert sorted(e["root"] for e in unwatched) == sorted([str(not_a_folder), "/dev/null"]), "once per root"
    assert all(e["setting"] == "watch.roots" for e in unwatched)
    daemon.watcher = StubWatcher({Path("/dev/null"): object()})  # watched again
    with capture_logs() as logs:
        assert daemon.health_report("ready", daemon.clock())["unwatched_roots"] is None
    assert sorted(e["root"] for e in logs if e["event"] == "root_watched") == sorted([str(not_a_folder), "/dev/null"])


def test_the_pause_file_holds_the_trainer_and_resume_releases_it(tmp_path, capsys):
    from crawler.cli.main import main

    assert main(["pause", "--state-dir", str(tmp_path)]) == 0
    assert "no daemon runs: it will start paused" in capsys.readouterr().out
    clock = Ticking(step=0.0)
    daemon = PartsDaemon(config_for(tmp_path), clock=clock)
    daemon.start()
    try:
        trainer = daemon.training_worker()
        assert daemon.tick(clock.now)
        assert trainer.pause_requested
        assert main(["resume", "--state-dir", str(tmp_path)]) == 0
        assert f"training goes on in the daemon (pid {os.getpid()})" in capsys.readouterr().out
        assert daemon.tick(clock.now)
        assert not trainer.pause_requested
    finally:
        daemon.stop("signal", 0)
    assert main(["resume", "--state-dir", str(tmp_path)]) == 0
    assert "was not paused" in capsys.readouterr().out


def test_health_says_a_pause_at_once_not_at_the_next_interval(tmp_path):
    clock = Ticking(step=0.0)  # the clock stands still: no status interval passes
    daemon = PartsDaemon(config_for(tmp_path, status_interval_seconds=3600), clock=clock)
    daemon.start()
    try:
        trainer = daemon.training_worker()
        trainer.figures = TrainingFigures()
        assert daemon.tick(clock.now)
        health = tmp_path / "health.json"
        assert not json.loads(health.read_text())["paused"]
        trainer.figures.paused = True  # the trainer took up `crystalline pause`
        assert daemon.tick(clock.now)
        assert json.loads(health.read_text())["paused"] is True
        trainer.figures.paused = False
        assert daemon.tick(clock.now)
        assert json.loads(health.read_text())["paused"] is False
    finally:
        daemon.stop("signal", 0)


def test_nice_lowers_the_priority_of_every_thread_started_after_it(tmp_path):
    import subprocess
    import sys

    # in a child process: niceness cannot be raised back, and the test process must keep its own
    code = (
        "import os, threading, structlog\n"
        "from crawler.service.supervisor import lower_priority\n"
        "before = os.nice(0)\n"
        "lower_priority(5, structlog.get_logger())\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))\n"
        "t.start(); t.join()\n"
        "print(before, os.nice(0), seen[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, thread = map(int, out[-3:])
    assert after == min(before + 5, 19) and thread == after
