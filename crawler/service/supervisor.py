"""`crystalline run`: the supervisor that owns the main thread, the signals and every part.

Parts: the watcher (watchdog observer and debouncer, watcher.py), the ingest worker (extract,
tokenize, store: ingest.py) and the training worker (training.py); each worker is initialize() /
run_once(now) / shutdown() on a thread of its own, restarted with backoff if it dies. The
supervisor has the same shape: start() / tick(now) / stop(), which run() strings together on the
daemon's clock. Signal handlers only set flags; the main thread does the logging, the notify
protocol, health.json and the joining. Shutdown on SIGTERM or SIGINT ends within
`daemon.stop_timeout_seconds`, checkpoint first: stop watching and take back the files queued
for ingest, let the trainer finish its step and write a final checkpoint, let the ingest worker
finish its batch, close storage, release the state directory's lock; what the deadline cuts
short is named in `shutdown_cut_short`. A second signal exits at once (every file and database
write is atomic, so that loses at most the steps since the last checkpoint). Every exit after
`daemon_started` logs `daemon_stopped` with its reason and exit code (EXIT_*).

A store that is unavailable for now (a transient store error: a lock held past busy_timeout_ms,
a lost connection, a full database disk) ends no part: the StoreOutage (outage.py) keeps the
times, the workers retry with its backoff (the ingest worker holds its files, none is failed),
and health says `store unavailable` until the store answers. At start it is retried for
`[daemon] store_start_timeout_seconds`; a permanent one refuses the start in one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue as queue_module
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from engine import CheckpointError, ConfigError
from storage import StoreUnavailable

from .. import ConfigError as SettingError
from ..config import Config, load_config
from ..ingest.extract import shutdown_pool
from ..ingest.pipeline import Ingestor, display_path
from ..logging import configure_logging, get_logger
from ..state.disk import PROCESSED_DIR, FolderCaps
from ..state.health import DaemonLock, HealthFile, process_stats, root_problem, utc_iso
from ..state.writable import DISK_FULL, STATE_UNWRITABLE, WriteState, classify
from ..training.worker import TrainingWorker
from .notify import Notifier
from .outage import StoreOutage, is_transient
from .status import display_url

# exit statuses: which way the daemon ended (daemon_stopped says it too)
EXIT_STOPPED = 0  # a stop signal, as asked
EXIT_FAILED = 1  # the supervisor itself failed: a bug (daemon_failed holds the traceback)
EXIT_WORKER_FAILED = 3  # a worker could not start: a setting, a checkpoint (one line says which)
EXIT_STORAGE_FAILED = 4  # the store or the state directory could not be opened at start
EXIT_AT_ONCE = 130  # the second stop signal
PAUSE_FILE = "paused"  # STATE_DIR/paused: training held by the operator (`crystalline pause`)
# a stop signal this soon after the first is the same request delivered twice, not a second one
REPEAT_SIGNAL_SECONDS = 1.0
LOOP_SECONDS = 0.2  # the supervisor's step
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)  # run() installs handle_signal
WATCHER_JOIN_SECONDS = 5.0  # of the stop budget, at most this for the watcher
JOIN_SLICE_SECONDS = 0.1  # the stop's joins wait this long at a time and then ask the clock


class IngestWorker:
    """Takes ready files from the inbox queue and ingests them in batches; never loses one.

    A per-file fault is that file's own outcome (Ingestor). A storage error that stops a batch
    holds the files not yet stored, in one list, when it is one that passes by itself: a
    transient store error (storage.StoreUnavailable: a lock held past busy_timeout_ms, a lost
    connection, a full database disk) is reported to the daemon's StoreOutage (`outage`), and
    ingest waits out its backoff and then retries them before anything new; a blocked write of
    the state directory (`writes` says disk full or read-only) pauses ingest while
    `writes.blocked` (re-checking it), and they are retried once writing works again
    (`writes.generation` grew). Held files stay offered: none is failed for the store's sake. Any
    other error is retried one file at a time, so the file whose write fails alone gets
    `file_failed` and its neighbours are stored. Nothing is stored twice: a committed file is
    never retried, and a retried file whose version is already stored is `unchanged`. If the
    worker dies anyway, `shutdown` hands the files it held back through `release` (the daemon
    passes `Watcher.reoffer`), else the inbox. With a `gate` (PostgreSQL), it reads only the
    files this daemon claims; a file another daemon holds waits for that daemon's lease
    (crawler/ingest/claiming.py); a claim the store cannot take for now hands the batch back.
    """

    name = "ingest"
    BATCH_FILES = 256
    BLOCKED_PAUSE_SECONDS = 1.0  # between re-checks while writes are blocked

    def __init__(self, config: Config, queue, tokenizer, inbox: queue_module.Queue, log, *,
                 writes: WriteState | None = None, release: Callable[[list], None] | None = None, gate=None,
                 outage: StoreOutage | None = None):
        self.config, self.queue, self.tokenizer, self.inbox = config, queue, tokenizer, inbox
        self.gate = gate  # crawler.ingest.claiming.ClaimGate on PostgreSQL: several daemons may watch one folder
        self.log = log.bind(component="ingest")
        self.writes = writes if writes is not None else WriteState(config.state_dir, self.log)
        self.outage = outage if outage is not None else StoreOutage(self.log)  # the daemon's, shared
        self.release = release
        self.ingestor: Ingestor | None = None
        self.counts = {"ingested": 0, "duplicate": 0, "skipped": 0, "failed": 0, "unchanged": 0}
        self.held: list[tuple[Path, Path]] = []  # files a blocked write could not store, in order
        self._in_flight: list[tuple[Path, Path]] = []  # the batch being ingested, less what is done
        self._isolating: list[tuple[Path, Path]] = []  # after a storage error: retried one at a time

    def initialize(self) -> None:
        self.ingestor = Ingestor(self.queue, self.tokenizer, self.config.extract)

    def run_once(self, now: float) -> float:
        if self.writes.blocked and not self.writes.recheck(now):
            return self.BLOCKED_PAUSE_SECONDS  # paused: the inbox fills and the watcher keeps the rest
        if self.outage.retry_in(self.name, now) > 0:  # the store is unavailable: wait for the next try
            return min(self.outage.retry_in(self.name, now), self.BLOCKED_PAUSE_SECONDS)
        if self.held:  # writing works again, or the store may answer: every held file, before anything new
            batch, self.held = self.held, []
            if not self.outage.failing(self.name):  # (a store retry says store_available once it works)
                self.log.info("ingest_resumed", files=len(batch), generation=self.writes.generation)
        else:
            try:
                batch = [self.inbox.get(timeout=0.5)]
            except queue_module.Empty:
                if self.gate is None or not self.gate.deferred:
                    return 0.0
                batch = []  # files another daemon held may be due
            while len(batch) < self.BATCH_FILES:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue_module.Empty:
                    break
            if self.gate is not None:  # only the files this daemon claims; the rest wait or are failed
                self._in_flight = list(batch)  # handed back by shutdown if claiming fails
                try:
                    batch, self._in_flight = self.gate.admit(batch, now, self.counts), []
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self.outage.report(self.name, exc, now)  # nothing was claimed: offered again later
                    unclaimed, self._in_flight = self._in_flight, []
                    self._hand_back(unclaimed)
                    return min(self.outage.retry_in(self.name, now), self.BLOCKED_PAUSE_SECONDS)
                if not batch:
                    return 0.0
        self._ingest(batch, now)
        if self.gate is not None:
            self.gate.finish([item for item in batch if item not in self.held])
        return min(self.outage.retry_in(self.name, now), self.BLOCKED_PAUSE_SECONDS)  # 0 unless held for the store

    def _ingest(self, batch: list[tuple[Path, Path]], now: float) -> None:
        """Ingest a batch; on a storage error hold, isolate or fail what is left (see the class)."""
        failure = self._attempt(batch)
        if failure is None:
            self.outage.recovered(self.name, now)  # (logs store_available when it was unavailable)
            return
        exc, left = failure
        if self._hold(exc, left, now):
            return
        if len(batch) == 1:
            self._failed(batch[0], exc)
            return
        self._isolating = left  # find the file at fault: each of the rest on its own
        while self._isolating:
            failure = self._attempt(self._isolating[:1])
            if failure is not None:
                if self._hold(failure[0], self._isolating, now):  # unavailable meanwhile: hold the rest too
                    self._isolating = []
                    return
                self._failed(self._isolating[0], failure[0])
            del self._isolating[0]

    def _hold(self, exc: Exception, files: list[tuple[Path, Path]], now: float) -> bool:
        """Keep `files` for a retry when `exc` passes by itself: a transient store error (the
        outage's backoff says when to retry; logged once as store_unavailable) or a blocked write
        of the state directory (the WriteState's probe says when; logged once as disk_full /
        state_unwritable). False for any other error, which stays the caller's."""
        if is_transient(exc):
            self.outage.report(self.name, exc, now)
        elif not self.writes.report("ingest", exc):
            return False
        self.held.extend(files)
        return True

    def _attempt(self, batch: list[tuple[Path, Path]]) -> tuple[Exception, list] | None:
        """Ingest and report each file; None, or the storage error with the files not stored."""
        self._in_flight = list(batch)
        try:
            for outcome in self.ingestor.ingest_files(batch):
                for i, (path, _) in enumerate(self._in_flight):
                    if os.path.abspath(path) == outcome.path:
                        del self._in_flight[i]
                        break
                self._report(outcome, batch)
        except Exception as exc:  # noqa: BLE001 - a storage error: the caller decides, never fatal
            left, self._in_flight = self._in_flight, []
            return exc, left
        self._in_flight = []  # (kept on a BaseException: shutdown hands it back)
        return None

    def _failed(self, item: tuple[Path, Path], exc: Exception) -> None:
        """A file whose storage write fails on its own: reported once, retried when it changes."""
        self.counts["failed"] += 1
        self.log.warning("file_failed", path=display_path(os.path.abspath(item[0])),
                         error=f"{type(exc).__name__}: {exc}")

    def _report(self, outcome, batch: list) -> None:
        self.counts[outcome.status] += 1
        path = display_path(outcome.path)
        if outcome.status in ("ingested", "duplicate"):
            self.log.info("file_ingested", path=path, doc_id=outcome.document_id, bytes=outcome.bytes,
                          tokens=outcome.tokens, ms=round(outcome.ms, 1), duplicate=outcome.status == "duplicate",
                          offset=outcome.offset, withdrawn_tokens=outcome.withdrawn)
            if self.config.daemon.after_ingest == "move":
                self._move(Path(outcome.path), batch)
        elif outcome.status == "skipped":
            self.log.info("file_skipped", path=path, reason=outcome.reason, detail=outcome.detail)
        elif outcome.status == "failed":
            self.log.warning("file_failed", path=path, error=outcome.detail)

    def _move(self, path: Path, batch: list) -> None:
        """Move an ingested file (its tokens are durably committed) under STATE_DIR/processed."""
        root = next((Path(r) for p, r in batch if Path(os.path.abspath(p)) == path and r), path.parent)
        target = Path(self.config.state_dir) / PROCESSED_DIR / root.name / path.relative_to(Path(os.path.abspath(root)))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        except (OSError, ValueError) as exc:
            self.log.warning("file_move_failed", path=display_path(path), error=str(exc))

    def shutdown(self) -> None:
        """Hand back what was not stored: through `release` (offered again), else into the inbox;
        what fits nowhere is found by the next start's scan (unstored files are never seen).
        The extractor processes end too (a busy one after its file)."""
        shutdown_pool()
        unfinished = list(dict.fromkeys(self.held + self._in_flight + self._isolating))
        self.held, self._in_flight, self._isolating = [], [], []
        if self.gate is not None:  # others may take these over at once; the deferred go back too
            unfinished = self.gate.shutdown(unfinished)
        self._hand_back(unfinished)

    def _hand_back(self, files: list) -> None:
        """Offer files again through `release`, else put them back into the inbox (what does not
        fit is found by the next start's scan)."""
        if not files:
            return
        if self.release is not None:
            self.release(files)
            return
        for item in files:
            try:
                self.inbox.put_nowait(item)
            except queue_module.Full:
                break


# errors whose message already says what is wrong and what to do: logged without a traceback
EXPLAINED_ERRORS = (ConfigError, SettingError, CheckpointError, StoreUnavailable)


class WorkerThread:
    """Runs one worker's loop on a thread until `stop` is set; records how it ended.

    A transient store error out of run_once (storage.StoreUnavailable: a lock held too long, a
    lost connection, a full database disk) is the store's outage, not the worker's death: it is
    reported to `outage` (health says store unavailable), the loop waits out the outage's backoff
    and calls run_once again, and the first call that returns says the store is back. A worker
    keeps its state between two calls, so nothing is redone but the call that failed. One that
    fails to initialize on a transient store error is reported too, and dies: the supervisor
    starts a fresh one (within the start's bound, or with the restart backoff)."""

    def __init__(self, worker, stop: threading.Event, log, clock: Callable[[], float], ready: threading.Event,
                 outage: StoreOutage | None = None):
        self.worker, self.stop, self.log, self.clock, self.ready = worker, stop, log, clock, ready
        self.outage = outage if outage is not None else StoreOutage(log, clock)
        self.error: BaseException | None = None
        self.initialized = False  # initialize() returned: a later error is a death, not a failed start
        self._store_failed = False  # this thread reported the worker's last call to the outage
        self.thread = threading.Thread(target=self._run, name=f"crystalline-{worker.name}", daemon=True)

    def _run(self) -> None:
        try:
            try:
                self.worker.initialize()
            except Exception as exc:
                if is_transient(exc):
                    self.outage.report(self.worker.name, exc, self.clock())
                raise
            self.outage.recovered(self.worker.name, self.clock())  # (when a failed start was reported)
            self.initialized = True
            self.ready.set()
            while not self.stop.is_set():
                pause = self._step(self.clock())
                if pause:
                    self.stop.wait(pause)
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, which restarts
            self.error = exc
            if isinstance(exc, EXPLAINED_ERRORS):  # damaged state or a setting: one line that names the way out
                self.log.error("worker_failed", worker=self.worker.name, error=str(exc))
            else:
                self.log.exception("worker_failed", worker=self.worker.name, error=f"{type(exc).__name__}: {exc}")
        finally:
            try:
                self.worker.shutdown()
            except BaseException as exc:  # noqa: BLE001
                self.log.exception("worker_shutdown_failed", worker=self.worker.name, error=str(exc))
            self.ready.set()

    def _step(self, now: float) -> float:
        """One run_once at `now`; returns the pause before the next. A transient store error
        gives the outage's delay before the retry instead of ending the loop."""
        try:
            pause = self.worker.run_once(now)
        except StoreUnavailable as exc:
            if not exc.transient:
                raise
            self._store_failed = True
            return self.outage.report(self.worker.name, exc, now)
        if self._store_failed:
            self._store_failed = False
            self.outage.recovered(self.worker.name, now)
        return pause

    def start(self) -> None:
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


class DaemonError(RuntimeError):
    """The daemon could not start, or its supervisor failed; logged as daemon_stopped with
    `reason` first. `status` is the exit status (EXIT_STORAGE_FAILED, EXIT_WORKER_FAILED,
    EXIT_FAILED); the message is one line naming the cause and the way out."""

    def __init__(self, message: str, status: int, reason: str):
        super().__init__(message)
        self.status, self.reason = status, reason


class Daemon:
    """Builds every part from a Config and supervises them until a stop signal.

    The shape of a run is start(), then tick(now) every LOOP_SECONDS on the daemon's clock until
    a stop signal is taken, then stop(); run() is exactly that, inside the signal handlers. A
    test drives the same three steps with a clock of its own. open_store(), make_worker(name)
    and make_watcher() build the parts: the seams where a test puts its stand-ins.
    """

    def __init__(self, config: Config, config_source: dict, clock: Callable[[], float] = time.monotonic,
                 metrics=None, window=None, team=None, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.team = team  # crawler.training.team.Team under mpiexec: this daemon is rank 0
        self.metrics = metrics  # crawler.service.metrics.EventMetrics when [metrics] or [http] listen is set (observing the log)
        self.metrics_server = None
        self.window = window  # crawler.service.http.Window when [http] listen is set: the page and API (observing the log too)
        self.config_source = config_source  # how to reload it: load_config keyword arguments
        self.clock = clock
        self.sleep = sleep  # the start's waits for an unavailable store (a test's advances its clock)
        self.log = get_logger("daemon")
        self.stop_event = threading.Event()  # the workers' stop flag
        self.signals: list[int] = []  # recorded by handle_signal, taken by tick
        self.stop_requested = False  # set by the first SIGTERM or SIGINT
        self.stop_requested_at = 0.0
        self.notifier = Notifier.from_environment()
        self.workers: dict[str, WorkerThread] = {}
        self.restarts: dict[str, tuple[int, float]] = {}  # name -> (count, not before)
        self.started_wall = time.time()
        # the one judge of "disk full / state read-only", shared by every writer
        self.writes = WriteState(config.state_dir, self.log, clock, on_clear=self._renew_store_connections)
        # the one judge of "store unavailable" (a lock, a lost connection, a full database disk)
        self.outage = StoreOutage(self.log, clock)
        self._lock = DaemonLock(config.state_dir)  # held from start() to stop()
        self._health_file = HealthFile(config.state_dir, writes=self.writes)
        self._next_status = self._next_watchdog = math.inf  # tick's schedule, set when start() ends
        self._watchdog: float | None = None  # systemd's WatchdogSec, halved; None: no watchdog
        self._reported_block: str | None = None  # writes.blocked as health.json last said it
        self._reported_store: str | None = None  # outage.cause as health.json last said it
        self._unwatched: dict[str, str] = {}  # watch root -> why it cannot be watched
        self._health_error: str | None = None  # the last health.json failure logged
        self.folder_caps = FolderCaps(config.state_dir, self.log)  # processed/ and quarantine/ caps

    # --- signals: handlers only record ----------------------------------------------------------

    def handle_signal(self, signum: int, frame: Any = None) -> None:
        """The handler run() installs for SIGTERM, SIGINT, SIGHUP and SIGUSR1: records the signal
        for tick. A stop signal within REPEAT_SIGNAL_SECONDS of the first is the same request
        delivered twice and is dropped; a later one exits at once (EXIT_AT_ONCE)."""
        if signum in (signal.SIGTERM, signal.SIGINT):
            now = self.clock()
            if self.stop_requested:
                if now - self.stop_requested_at < REPEAT_SIGNAL_SECONDS:
                    return  # the same stop delivered twice (`timeout make run` signals make and its group)
                os._exit(EXIT_AT_ONCE)  # the second stop signal: at once
            self.stop_requested, self.stop_requested_at = True, now
        self.signals.append(signum)

    # --- run ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start the parts, supervise them until a stop signal, stop within stop_timeout_seconds.

        Every path after daemon_started ends in daemon_stopped, with `reason` and `exit_code`:
        returns EXIT_STOPPED after a stop signal; raises DaemonError (status EXIT_STORAGE_FAILED,
        EXIT_WORKER_FAILED or EXIT_FAILED) when a part could not start or the supervisor failed.
        A state directory that cannot be locked raises before daemon_started (DaemonAlreadyRunning,
        OSError), with nothing to stop. The signal handlers are this process's until it returns.
        """
        previous = {signum: signal.signal(signum, self.handle_signal) for signum in HANDLED_SIGNALS}
        failure: DaemonError | None = DaemonError("interrupted", EXIT_FAILED, "internal_error")  # until proven
        try:
            self.start()
            while self.tick(self.clock()):
                time.sleep(LOOP_SECONDS)
            failure = None
        except DaemonError as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, then a clean stop
            if not self._lock.held:
                raise  # the state directory could not be locked: nothing started
            self.log.exception("daemon_failed", error=f"{type(exc).__name__}: {exc}")
            failure = DaemonError(f"the supervisor failed: {_one_line(exc)} (the daemon_failed event holds the "
                                  "traceback; please report it)", EXIT_FAILED, "internal_error")
        finally:
            reason, status = ("signal", EXIT_STOPPED) if failure is None else (failure.reason, failure.status)
            self.stop(reason, status)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if failure is not None:
            raise failure
        return EXIT_STOPPED

    def start(self) -> None:
        """Take the state directory's lock, then start every part: the store, the workers (waiting
        until each has initialized: the checkpoints are checked and loaded), then metrics and the
        window when configured, then the watcher; logs daemon_started, then daemon_ready. Nothing
        listens before the state is known to be good, so a refusal to start is one line on
        stderr. A stop signal during a slow start (numba compiling) skips the rest, and the next
        tick takes it.

        Raises DaemonAlreadyRunning or OSError when the lock cannot be taken: nothing started.
        After the lock, raises DaemonError when a part cannot start; stop() then ends what did."""
        t0 = self.clock()
        state = Path(self.config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        self.log.info("daemon_started", pid=os.getpid(), state_dir=str(state),
                      database=display_url(self.config.database_url))
        self.log.info("config_loaded", config=self.config.to_dict())
        lower_priority(self.config.daemon.nice, self.log)
        self._write_health(self.health_report("starting", t0))
        self._start_parts(t0)
        now = self.clock()  # tick's schedule starts here
        self._watchdog = self.notifier.watchdog_interval()
        self._next_status = now + self.config.daemon.status_interval_seconds
        self._next_watchdog = now + (self._watchdog or math.inf)

    def _start_parts(self, t0: float) -> None:
        """Open the store, start the workers, then the watcher; a stop signal meanwhile skips
        the rest. A store unavailable for now (a transient store error) is retried until
        `[daemon] store_start_timeout_seconds` after t0. Raises DaemonError when a part cannot
        start."""
        deadline = t0 + self.config.daemon.store_start_timeout_seconds
        while True:
            try:
                self.database, self.tokenizer = self.open_store()
                break
            except Exception as exc:  # noqa: BLE001 - any failure here is the store's or the state's
                if not is_transient(exc):
                    raise _start_failure("the store could not be opened", exc, EXIT_STORAGE_FAILED,
                                         "storage_failed") from exc
                if not self._wait_for_store("start", exc, deadline):
                    return  # a stop signal meanwhile: tick takes it
        self.outage.recovered("start", self.clock())
        self.inbox: queue_module.Queue = queue_module.Queue(maxsize=self.config.daemon.ingest_queue_size)
        if self.config.daemon.train:  # else ingest only (`run --no-train`)
            self._hold_training_lock()
            self._start_worker("trainer")
        self._start_worker("ingest")
        for name in list(self.workers):
            while True:
                thread = self.workers[name]
                while not thread.ready.wait(LOOP_SECONDS):
                    if self.stop_requested:  # a stop during a slow start (numba compiling)
                        return
                if thread.initialized:  # (one that dies later is restarted by tick)
                    break
                if not is_transient(thread.error):
                    raise _start_failure(f"the {name} worker could not start", thread.error, EXIT_WORKER_FAILED,
                                         "worker_failed")
                if not self._wait_for_store(name, thread.error, deadline, reported=True):
                    return
                self._start_worker(name)  # a fresh worker: the failed one has shut down
        self._serve_metrics()  # the state is open and checked: now the figures can be served
        if self.window is not None:
            self.window.serve(self)  # http_serving, or http_failed and on without it
        self.watcher = self.make_watcher()
        self.watcher.start()
        self.notifier.ready(self._status_line())
        trainer = self.training_worker()
        now = self.clock()
        self.log.info("daemon_ready", seconds=round(now - t0, 3), roots=list(self.config.watch.roots),
                      threads=trainer.trainer.threads if trainer is not None and trainer.trainer else None,
                      train=self.config.daemon.train)
        self._write_health(self.health_report("ready", now))

    def _wait_for_store(self, part: str, exc: BaseException, deadline: float, reported: bool = False) -> bool:
        """At start, after `part` met the transient store error `exc`: record it with the outage
        (unless `reported` already), say `starting` with the store unavailable in health.json, and
        wait out the outage's backoff, no later than `deadline` on the daemon's clock, in
        LOOP_SECONDS slices of `sleep`. Returns False when a stop signal came meanwhile. Raises
        DaemonError (storage_unavailable) once the deadline has passed."""
        now = self.clock()
        delay = self.outage.retry_in(part, now) if reported else self.outage.report(part, exc, now)
        if now >= deadline:
            bound = self.config.daemon.store_start_timeout_seconds
            raise DaemonError(f"the store is unavailable: {_one_line(exc)}; gave up after {bound:g} s ([daemon] "
                              "store_start_timeout_seconds)", EXIT_STORAGE_FAILED, "storage_unavailable") from exc
        self._write_health(self.health_report("starting", now))
        until = min(now + delay, deadline)
        while not self.stop_requested and (now := self.clock()) < until:
            self.sleep(min(LOOP_SECONDS, until - now))
        return not self.stop_requested

    # --- the parts: what a test replaces with stand-ins ---------------------------------------------

    def open_store(self) -> tuple[Any, Any]:
        """Open the corpus store and load the state directory's tokenizer, and record which
        tokenizer the store's tokens are in; returns (database, tokenizer)."""
        from storage import CorpusQueue, open_database

        from ..ingest.tokenizer import load_state_tokenizer

        database = open_database(self.config.storage_config())
        try:
            tokenizer = load_state_tokenizer(self.config.state_dir)
            CorpusQueue(database).set_tokenizer(tokenizer.identity_string())
        except BaseException:
            database.close()  # the start may try again: no pool left open behind it
            raise
        return database, tokenizer

    def make_worker(self, name: str):
        """A new worker by name ("trainer" or "ingest") on the open store, sharing the daemon's
        WriteState and StoreOutage; the ingest worker hands the files it could not store back to
        the watcher."""
        from storage import CorpusQueue

        queue = CorpusQueue(self.database)
        if name == "trainer":
            return TrainingWorker(self.config, queue, self.tokenizer, get_logger("trainer"), clock=self.clock,
                                  stopping=self.stop_event.is_set, writes=self.writes, team=self.team)
        from ..ingest.claiming import make_gate

        log = get_logger("ingest")
        return IngestWorker(self.config, queue, self.tokenizer, self.inbox, log, writes=self.writes,
                            release=self._reoffer, gate=make_gate(self.config, self.database, queue, log),
                            outage=self.outage)

    def make_watcher(self):
        """The watcher over [watch] roots, offering ready files to the ingest inbox."""
        from ..ingest.watcher import Watcher

        return Watcher(self.config.watch, self._offer, log=get_logger("watcher"))

    def training_worker(self) -> TrainingWorker | None:
        """The running trainer's worker; None before it starts, or with [daemon] train = false."""
        thread = self.workers.get("trainer")
        return thread.worker if thread is not None else None

    def _hold_training_lock(self) -> None:
        """One training job per corpus (storage.TrainingLock: a PostgreSQL advisory lock held
        until the stop; the state directory's lock on SQLite). Raises DaemonError when another
        job holds it, naming that job."""
        import socket

        from storage import TrainingLock, TrainingLocked

        if getattr(self.database, "dialect", None) != "postgresql":
            return  # a SQLite corpus: the state directory's lock, taken in start(), is the training lock
        holder = f"crystalline run on {socket.gethostname()}, pid {os.getpid()}"
        self.training_lock = TrainingLock(self.database, holder)
        try:
            self.training_lock.acquire()
        except TrainingLocked as exc:
            raise DaemonError(str(exc), EXIT_WORKER_FAILED, "training_locked") from exc
        except Exception as exc:  # noqa: BLE001 - the server failed us: the store's failure
            raise _start_failure("the training lock could not be taken", exc, EXIT_STORAGE_FAILED,
                                 "storage_failed") from exc
        self.log.info("training_lock_held", database=display_url(self.config.database_url), holder=holder)

    def _offer(self, path: Path, root: Path) -> bool:
        try:
            self.inbox.put_nowait((path, root))
            return True
        except queue_module.Full:
            return False  # the watcher keeps it pending and offers it again

    def _reoffer(self, files: list) -> None:
        """The ingest worker's way to hand back files it could not store: the watcher offers
        them again (before the watcher exists no file was handed over)."""
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.reoffer(files)

    def _start_worker(self, name: str) -> None:
        thread = WorkerThread(self.make_worker(name), self.stop_event, self.log, self.clock, threading.Event(),
                              outage=self.outage)
        self.workers[name] = thread
        thread.start()

    # --- the supervisor's pass ------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """One pass of the supervisor at `now` (the daemon's clock, read once by the caller).

        First the signals recorded since the last pass: SIGHUP reloads the configuration, SIGUSR1
        asks the trainer for a checkpoint, and a stop signal ends the pass (daemon_stopping):
        returns False, and the caller calls stop(). Then: restart the workers that died (with
        backoff), renew the ingest claims, follow the pause file, re-check blocked writes; every
        status_interval_seconds, and at once when a block or a store outage begins or ends, the
        status event, health.json and the folder caps; then the systemd watchdog when due.
        Returns True."""
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                self._reload()
            elif signum == signal.SIGUSR1:  # a checkpoint now, at the trainer's next step
                if (trainer := self.training_worker()) is not None:
                    trainer.checkpoint_requested.set()
            else:
                self.log.info("daemon_stopping", signal=signal.Signals(signum).name)
                self.notifier.stopping("stopping: checkpointing, then finishing the ingest batch")
                return False
        self._supervise(now)
        self._renew_claims(now)
        self._follow_pause()
        store_changed = self._check_store(now)
        if self._check_writes(now) or store_changed or now >= self._next_status:
            self._next_status = now + self.config.daemon.status_interval_seconds
            self._report(now)
            self._trim_folders()
        if now >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = now + self._watchdog
        return True

    def _renew_claims(self, now: float) -> None:
        """Keep the leases on the files the ingest worker holds (crawler/ingest/claiming.py)."""
        thread = self.workers.get("ingest")
        gate = getattr(thread.worker, "gate", None) if thread is not None else None
        if gate is not None:
            gate.renew(now)

    def _follow_pause(self) -> None:
        """`crystalline pause` / `resume` create and remove STATE_DIR/paused; the trainer follows."""
        trainer = self.training_worker()
        if trainer is not None:
            trainer.pause_requested = (Path(self.config.state_dir) / PAUSE_FILE).exists()

    def _supervise(self, now: float) -> None:
        """Restart a worker that died, with a backoff that doubles up to a minute."""
        for name, thread in list(self.workers.items()):
            if thread.is_alive():
                continue
            count, not_before = self.restarts.get(name, (0, 0.0))
            if now < not_before:
                continue
            delay = min(60.0, 2.0 ** count)
            self.restarts[name] = (count + 1, now + delay)
            self.log.warning("worker_restarted", worker=name, restarts=count + 1,
                             error=None if thread.error is None else f"{type(thread.error).__name__}: {thread.error}")
            self._start_worker(name)

    def _check_writes(self, now: float) -> bool:
        """Re-check blocked writes (WriteState's own pace); True when the block began or ended
        since health.json last said, so that it says so now rather than at the next interval."""
        self.writes.recheck(now)
        blocked = self.writes.blocked
        changed, self._reported_block = blocked != self._reported_block, blocked
        return changed

    def _renew_store_connections(self) -> None:
        """When a block of the state's writes clears, before any writer retries (WriteState's
        on_clear, whoever's recheck cleared it): close the SQLite store's pooled connections, so
        each next use opens a new one. SQLite opens a connection read-only, and keeps it so, when
        it cannot open the database for writing: one the pool opened while the state was
        read-only would refuse every write after, until a restart. A connection in use now is
        not handed out again: it goes back to the old pool, which is dropped. (PostgreSQL's
        connections never depended on the state.)"""
        database = getattr(self, "database", None)  # None before the store is open
        if getattr(database, "dialect", None) == "sqlite":
            database.engine.dispose()

    def _check_store(self, now: float) -> bool:
        """True when the store became unavailable, or answers again, since health.json last
        said, so that it says so now rather than at the next interval; also when the status
        report's own read of the store failed and its retry is due (for an idle daemon, the one
        call that finds the store back)."""
        cause = self.outage.cause
        changed, self._reported_store = cause != self._reported_store, cause
        return changed or (self.outage.failing("status") and self.outage.retry_in("status", now) == 0)

    def _status_line(self) -> str:
        trainer = self.training_worker()
        f = trainer.figures if trainer else None
        if f is None:
            return "starting" if self.config.daemon.train else "ingest only (no trainer: [daemon] train = false)"
        loss = "-" if f.loss is None else f"{f.loss:.3f}"
        line = f"step {f.step}, loss {loss}, {f.tokens_trained} tokens trained"
        if f.val_bits_per_byte is not None:
            line += f", held-out {f.val_bits_per_byte:.3f} bits/byte (best {f.best_val_bits_per_byte:.3f})"
        if self.writes.blocked:
            line += f", {self.writes.blocked}: ingest and checkpoints paused"
        if self.outage.cause:
            line += f", store unavailable ({self.outage.cause}): retrying"
        return line + (", plateaued" if f.plateaued else "")

    def health_report(self, state: str, now: float) -> dict[str, Any]:
        """What health.json and the status event say in `state` ("starting", "ready", "stopping")
        at `now` on the daemon's clock; logs root_unwatched / root_watched when a root's changes."""
        trainer = self.training_worker()
        f = trainer.figures if trainer else None
        writes = self.writes.snapshot()
        return {
            "pid": os.getpid(), "state": state, "started_at": utc_iso(self.started_wall),
            "train": self.config.daemon.train,
            "step": f.step if f else None, "tokens_trained": f.tokens_trained if f else None,
            "loss": f.loss if f else None, "tokens_per_s": f.tokens_per_s if f else None,
            "last_checkpoint_step": f.last_checkpoint_step if f else None,
            "last_checkpoint_age_s": None if not f or f.last_checkpoint_time is None else round(now - f.last_checkpoint_time, 1),
            "epoch": round(f.epoch, 3) if f else None,
            "val_bits_per_byte": f.val_bits_per_byte if f else None,
            "best_val_bits_per_byte": f.best_val_bits_per_byte if f else None,
            "plateaued": f.plateaued if f else None, "idle": f.idle if f else None,
            "paused": f.paused if f else None,
            "rss_mb": process_stats()["rss_mb"],
            "threads": trainer.trainer.threads if trainer and trainer.trainer else None,
            "workers": {name: t.is_alive() for name, t in self.workers.items()},
            "blocked": writes["blocked"], "blocked_parts": writes.get("parts"),
            "free_bytes": writes.get("free_bytes"),
            "unwatched_roots": self._unwatched_roots() or None,
            "store_unavailable": self.outage.snapshot(now),
        }

    def _unwatched_roots(self) -> dict[str, str]:
        """Watch roots without a running observer, with the reason; logs each change once."""
        watcher = getattr(self, "watcher", None)
        if watcher is None:
            return {}
        now = {str(root): root_problem(root) or "could not be watched (see watch_failed); retrying"
               for root, observer in watcher.observers.items() if observer is None}
        for root, why in now.items():
            if self._unwatched.get(root) != why:
                self.log.error("root_unwatched", root=root, reason=why, setting="watch.roots",
                               action="set [watch] roots (CRYSTALLINE_WATCH_ROOTS) to folders the daemon can read; "
                                      "the watcher retries by itself")
        for root in self._unwatched.keys() - now.keys():
            self.log.info("root_watched", root=root)
        self._unwatched = now
        return now

    def _write_health(self, report: dict[str, Any]) -> None:
        """health.json, never fatal: a blocked write was told to `writes` by HealthFile; any
        other failure is logged once (until the error changes or a write succeeds)."""
        try:
            self._health_file.write(report)
            self._health_error = None
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._health_error:
                self._health_error = error
                self.log.error("health_write_failed", path=str(self._health_file.path), error=error,
                               blocked=self.writes.blocked)

    def _report(self, now: float) -> None:
        from storage import CorpusQueue

        figures, error = {}, None
        try:  # first: a store that does not answer is in this very report
            stats = CorpusQueue(self.database).stats()
            trainer = self.training_worker()
            position = trainer.figures.position if trainer else 0
            figures = {"queue_documents": stats.documents.get("queued", 0),
                       "queue_tokens": max(0, stats.tokens_total - position)}
            self.outage.recovered("status", now)
        except Exception as exc:  # noqa: BLE001 - a status report must not stop the daemon
            if is_transient(exc):
                self.outage.report("status", exc, now)
            error = f"{type(exc).__name__}: {exc}"
        report = self.health_report("ready", now) | figures
        if error is not None:
            report["last_error"] = error
        self._write_health(report)
        self.log.info("status", **{k: v for k, v in report.items() if k not in ("pid", "state", "started_at")})
        self.notifier.status(self._status_line())

    def _trim_folders(self) -> None:
        """The processed/ and quarantine/ caps (disk.FolderCaps): processed/ is walked again only
        after the ingest worker stored files with after_ingest = "move"; never fatal."""
        thread = self.workers.get("ingest")
        counts = getattr(thread.worker, "counts", {}) if thread is not None else {}
        moved = None
        if self.config.daemon.after_ingest == "move":
            moved = (id(thread), counts.get("ingested", 0) + counts.get("duplicate", 0))
        try:
            self.folder_caps.sweep(self.config.daemon, moved)
        except Exception as exc:  # noqa: BLE001 - a sweep must not stop the daemon
            self.log.error("disk_trim_failed", error=f"{type(exc).__name__}: {exc}")

    def _reload(self) -> None:
        """SIGHUP: re-read the configuration; roots, log level and intervals apply at once."""
        self.notifier.reloading()
        try:
            new = load_config(**self.config_source)
        except Exception as exc:  # noqa: BLE001 - a bad edit keeps the running configuration
            self.log.error("config_reload_failed", error=str(exc))
            self.notifier.ready(self._status_line())
            return
        changed = [name for name in ("watch", "daemon", "log") if getattr(new, name) != getattr(self.config, name)]
        # the model, the training recipe and the store need a restart; the rest applies now
        self.config = dataclasses.replace(self.config, watch=new.watch, daemon=new.daemon, log=new.log)
        configure_logging(new.log.level, json=_json_flag(new.log.format), observer=self.window or self.metrics)
        for thread in self.workers.values():
            thread.worker.config = self.config
        self.watcher.update_config(new.watch)
        self.log.info("config_reloaded", changed=changed, roots=list(new.watch.roots), level=new.log.level)
        self.notifier.ready(self._status_line())

    # --- stop -----------------------------------------------------------------------------------

    def stop(self, reason: str = "signal", status: int = EXIT_STOPPED) -> None:
        """Stop every part start() started within stop_timeout_seconds (the daemon's clock),
        checkpoint first: no more files for ingest (the watcher stops, the files queued for
        ingest are left to the next start's scan), then the trainer's final checkpoint, then the
        ingest batch in flight, then the store; then the other ranks (under mpiexec) and the
        state directory's lock. What is not done by the deadline is left running on its daemon
        thread, named in shutdown_cut_short, and ended by the process's exit; each file and
        database write is atomic, so that loses at most the steps since the last checkpoint.

        `reason` and `status` (EXIT_*) go to daemon_stopped, which always ends the stop; the
        stop's own steps never raise. Does nothing unless start() holds the lock: before it
        (nothing started) and after a stop."""
        if not self._lock.held:
            return
        budget = self.config.daemon.stop_timeout_seconds
        began = self.clock()
        deadline = began + budget
        cut_short: dict[str, str] = {}
        self._guarded("health", lambda: self._write_health(self.health_report("stopping", began)))
        if self.window is not None:  # no new requests; streams and completions end
            self._guarded("http", self.window.stop)
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            self._guarded("watcher", watcher.stop)
            self._guarded("watcher", lambda: watcher.join(timeout=max(0.0, min(WATCHER_JOIN_SECONDS,
                                                                                deadline - self.clock()))))
        files_left = self._drain_inbox()
        self.stop_event.set()
        for name in ("trainer", "ingest"):  # the checkpoint first; the ingest batch runs meanwhile
            thread = self.workers.get(name)
            if thread is None:
                continue
            self._join(thread, deadline)
            if thread.is_alive():
                cut_short[name] = self._unfinished(name)
                self.log.error("worker_stuck", worker=name, stop_timeout_seconds=budget)
        if self.metrics_server is not None:
            self._guarded("metrics", self.metrics_server.shutdown)
        training_lock = getattr(self, "training_lock", None)
        if training_lock is not None and "trainer" not in cut_short:  # after the final checkpoint
            self._guarded("storage", training_lock.release)
        database = getattr(self, "database", None)
        if database is not None and not cut_short:  # never closed under a worker still using it
            self._guarded("storage", database.close)
        if cut_short:
            self.log.error("shutdown_cut_short", parts=cut_short, stop_timeout_seconds=budget)
        fields = dict(reason=reason, exit_code=status, seconds_up=round(time.time() - self.started_wall, 1),
                      stop_seconds=round(self.clock() - began, 1), cut_short=sorted(cut_short),
                      files_left=files_left)
        if status == EXIT_STOPPED:
            self.log.info("daemon_stopped", **fields)
        else:
            self.log.error("daemon_stopped", **fields)
        if self.team is not None:
            self.team.stop()  # the other ranks end after the final checkpoint
        self._lock.release()

    def _serve_metrics(self) -> None:
        """Start the Prometheus endpoint when configured; an address that cannot be bound is
        logged (metrics_failed) and the daemon runs on without it: training never waits on it."""
        listen = self.config.metrics.listen
        if self.metrics is None or not listen:
            return
        try:
            self.metrics_server = self.metrics.serve(listen)
        except OSError as exc:
            self.log.error("metrics_failed", listen=listen, error=str(exc),
                           action="free the port or set another [metrics] listen; the daemon runs without metrics")
            return
        self.log.info("metrics_serving", listen=listen, url=f"http://{listen}/metrics")

    def _join(self, thread: "WorkerThread", deadline: float) -> None:
        """Wait for a thread until the deadline on the daemon's clock (short real waits, so an
        injected clock decides)."""
        while thread.is_alive():
            left = deadline - self.clock()
            if left <= 0:
                return
            thread.join(min(JOIN_SLICE_SECONDS, left))

    def _unfinished(self, name: str) -> str:
        """What a worker still running at the deadline leaves undone, in words."""
        if name == "trainer":
            trainer = self.training_worker()
            f = getattr(trainer, "figures", None)
            steps = getattr(trainer, "unsaved_steps", None)
            since = f"step {f.last_checkpoint_step}" if f and f.last_checkpoint_step is not None else "the start"
            return (f"the final checkpoint: {'its' if steps is None else steps} steps since {since} are trained again "
                    "after the next start")
        return "the ingest batch in flight: its files not yet stored are found by the next start's scan"

    def _drain_inbox(self) -> int:
        """Take back the files queued for ingest (not yet read: the next start's scan finds them)."""
        inbox = getattr(self, "inbox", None)
        count = 0
        while inbox is not None:
            try:
                inbox.get_nowait()
            except queue_module.Empty:
                break
            count += 1
        return count

    def _guarded(self, part: str, step: Callable[[], object]) -> None:
        """Run one step of the stop; a failure is logged and the stop goes on."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the stop must reach daemon_stopped
            self.log.exception("shutdown_step_failed", part=part, error=f"{type(exc).__name__}: {exc}")


def _one_line(exc: BaseException) -> str:
    """An exception as one line: the first line of its text (a database error's SQL and
    background link dropped), with the file an OSError names."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__


_START_WAY_OUT = {
    DISK_FULL: "free space on the state directory's file system, then start again",
    STATE_UNWRITABLE: "make the state directory writable by the daemon's user, then start again",
}


def _start_failure(what: str, exc: BaseException, status: int, reason: str) -> DaemonError:
    """A DaemonError for a part that could not start; a full disk or read-only state says so."""
    blocked = classify(exc)
    if blocked is None:
        return DaemonError(f"{what}: {_one_line(exc)}", status, reason)
    return DaemonError(f"{blocked}: {what}: {_one_line(exc)}; {_START_WAY_OUT[blocked]}", status, reason)


def _json_flag(fmt: str) -> bool | None:
    return None if fmt == "auto" else fmt == "json"


def lower_priority(increment: int, log) -> None:
    """Add `increment` ([daemon] nice) to this process's niceness, before any worker thread
    starts (on Linux niceness is per thread and a new thread inherits its creator's); logged as
    priority_lowered. A refusal is logged and training goes on at the priority it has."""
    if not increment:
        return
    try:
        before = os.nice(0)
        after = os.nice(increment)
    except OSError as exc:
        log.warning("priority_lowered", nice=None, error=str(exc))
        return
    log.info("priority_lowered", nice=after, was=before)


def run_daemon(config_file=None, state_dir=None, overrides=None, distributed: bool = False) -> int:
    """Resolve the configuration, configure logging, and run the daemon in this process. With
    `distributed` (under mpiexec), rank 0 runs the daemon and the other ranks follow its steps."""
    source = {"config_file": config_file, "state_dir": state_dir, "overrides": overrides}
    config = load_config(**source)
    team = None
    if distributed:
        from ..training.team import follow, join

        team, comm = join(config.distributed)
        if comm.rank > 0:
            configure_logging(config.log.level, json=_json_flag(config.log.format))
            return follow(comm, get_logger("daemon"), config.distributed.timeout_seconds)
    metrics = window = None
    if config.metrics.listen or config.http.enabled:  # /metrics is served on the [http] address too
        from .. import installed_version
        from .metrics import EventMetrics

        metrics = EventMetrics(installed_version())
    if config.http.enabled:
        from .http import Window

        window = Window(config.http, metrics)  # reads the token file: a ConfigError before anything starts
    configure_logging(config.log.level, json=_json_flag(config.log.format), observer=window or metrics)
    try:
        return Daemon(config, source, metrics=metrics, window=window, team=team).run()
    except BaseException:
        if team is not None:  # a start that failed before the supervisor ran: the followers end too
            team.stop()
        raise
