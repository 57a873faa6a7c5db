"""The daemon's parts, and how the supervisor builds and starts them: the store and tokenizer,
the training lock, the ingest and training workers on their threads, the inbox between the
watcher and the ingest worker, then metrics, the window and the watcher.

A mixin of Daemon (supervisor.py), so that the supervisor's file holds its start, tick and stop
and this one the parts. open_store(), make_worker(name) and make_watcher() are the seams where a
test puts its stand-ins. At start a store unavailable for now (a transient store error) is
waited out, with the outage's backoff, for `[daemon] store_start_timeout_seconds`; a permanent
one, or a part that cannot start, is a DaemonError (exits.py). Not the workers themselves
(ingest_worker.py, crawler/training/worker.py), their threads (threads.py) or the watcher
(crawler/ingest/watcher.py). Reads the supervisor's config, log, clock, sleep, notifier, writes,
outage, stop_event, stop_requested, workers, window and team.
"""

from __future__ import annotations

import queue as queue_module
import threading
from pathlib import Path
from typing import Any

from ..logging import get_logger
from ..training.worker import TrainingWorker
from .exits import EXIT_STORAGE_FAILED, EXIT_WORKER_FAILED, DaemonError, one_line, start_failure
from .ingest_worker import IngestWorker
from .outage import is_transient
from .status import display_url
from .threads import WorkerThread

LOOP_SECONDS = 0.2  # the supervisor's step: its loop's, and the start's waits


class DaemonParts:
    """The supervisor's parts: building them (the seams), starting them, handing files between them."""

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
                    raise start_failure("the store could not be opened", exc, EXIT_STORAGE_FAILED,
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
                    raise start_failure(f"the {name} worker could not start", thread.error, EXIT_WORKER_FAILED,
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
            raise DaemonError(f"the store is unavailable: {one_line(exc)}; gave up after {bound:g} s ([daemon] "
                              "store_start_timeout_seconds)", EXIT_STORAGE_FAILED, "storage_unavailable") from exc
        self._write_health(self.health_report("starting", now))
        until = min(now + delay, deadline)
        while not self.stop_requested and (now := self.clock()) < until:
            self.sleep(min(LOOP_SECONDS, until - now))
        return not self.stop_requested

    # --- the parts: what a test replaces with stand-ins -----------------------------------------

    @property
    def database(self) -> Any:
        """The open store, held by the state's opener (opening.py), which closes it at the stop."""
        return self.opened.database

    @database.setter
    def database(self, value: Any) -> None:
        self.opened.database = value

    def open_store(self) -> tuple[Any, Any]:
        """Open the corpus store as every command does (OpenedState.open_store), load the state
        directory's tokenizer, and record which tokenizer the store's tokens are in; returns
        (database, tokenizer)."""
        from ..ingest.tokenizer import load_state_tokenizer

        database, queue = self.opened.open_store()
        try:
            tokenizer = load_state_tokenizer(self.config.state_dir)
            queue.set_tokenizer(tokenizer.identity_string())
        except BaseException:
            self.opened.close_store()  # the start may try again: no pool left open behind it
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
                            outage=self.outage, training=self._training_now, clock=self.clock)

    def _training_now(self) -> bool:
        """Whether the trainer is taking steps: started, neither paused nor idle."""
        trainer = self.training_worker()
        return trainer is not None and not trainer.figures.paused and not trainer.figures.idle

    def make_watcher(self):
        """The watcher over [watch] roots, offering ready files to the ingest inbox."""
        from ..ingest.watcher import Watcher

        return Watcher(self.config.watch, self._offer, log=get_logger("watcher"))

    def training_worker(self) -> TrainingWorker | None:
        """The running trainer's worker; None before it starts, or with [daemon] train = false."""
        thread = self.workers.get("trainer")
        return thread.worker if thread is not None else None

    def _hold_training_lock(self) -> None:
        """One training job per corpus, taken as `train` takes it (OpenedState.hold_training: a
        PostgreSQL advisory lock held until the stop; on SQLite the state directory's lock, taken
        in start(), already is). Raises DaemonError when another job holds it, naming that job."""
        from storage import TrainingLocked

        try:
            lock = self.opened.hold_training("run")
        except TrainingLocked as exc:
            raise DaemonError(str(exc), EXIT_WORKER_FAILED, "training_locked") from exc
        except Exception as exc:  # noqa: BLE001 - the server failed us: the store's failure
            raise start_failure("the training lock could not be taken", exc, EXIT_STORAGE_FAILED,
                                "storage_failed") from exc
        if lock is not None:  # (a SQLite corpus: the state directory's lock is the training lock)
            self.log.info("training_lock_held", database=display_url(self.config.database_url), holder=lock.holder)

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
