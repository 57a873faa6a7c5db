"""`crystalline run`'s supervisor: the Daemon that owns the main thread, the signals and every
part, as start() / tick(now) / stop(), which run() strings together on the daemon's clock.

Parts: the watcher (crawler/ingest/watcher.py), the ingest worker (ingest_worker.py) and the
training worker (crawler/training/worker.py); each worker is initialize() / run_once(now) /
shutdown() on a thread of its own (threads.py), restarted with backoff if it dies. Signal
handlers only set flags; the main thread does the logging, the notify protocol, health.json and
the joining. Shutdown on SIGTERM or SIGINT ends within `daemon.stop_timeout_seconds`,
checkpoint first: stop watching and take back the files queued for ingest, let the trainer
finish its step and write a final checkpoint, let the ingest worker finish its batch, close
storage, release the state directory's lock; what the deadline cuts short is named in
`shutdown_cut_short`. A second signal exits at once (every file and database write is atomic,
so that loses at most the steps since the last checkpoint). Every exit after `daemon_started`
logs `daemon_stopped` with its reason and exit code (EXIT_*, exits.py).

A store that is unavailable for now (a transient store error: a lock held past busy_timeout_ms,
a lost connection, a full database disk) ends no part: the StoreOutage (outage.py) keeps the
times, the workers retry with its backoff (the ingest worker holds its files, none is failed),
and health says `store unavailable` until the store answers. At start it is retried for
`[daemon] store_start_timeout_seconds`; a permanent one refuses the start in one line.

Not the parts and their seams (parts.py), nor the reports (reporting.py), nor the wiring that
resolves the configuration and builds metrics and the window (daemon.py).
"""

from __future__ import annotations

import dataclasses
import math
import os
import queue as queue_module
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..config import Config, load_config
from ..logging import configure_logging, get_logger
from ..state.writable import WriteState
from .exits import EXIT_AT_ONCE, EXIT_FAILED, EXIT_STOPPED, DaemonError, one_line
from .notify import Notifier
from .opening import OpenedState
from .outage import StoreOutage
from .parts import LOOP_SECONDS, DaemonParts
from .reporting import DaemonReports
from .status import display_url
from .threads import RestartBackoff, WorkerThread

PAUSE_FILE = "paused"  # STATE_DIR/paused: training held by the operator (`crystalline pause`)
# a stop signal this soon after the first is the same request delivered twice, not a second one
REPEAT_SIGNAL_SECONDS = 1.0
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)  # run() installs handle_signal
WATCHER_JOIN_SECONDS = 5.0  # of the stop budget, at most this for the watcher


class Daemon(DaemonParts, DaemonReports):
    """Builds every part from a Config and supervises them until a stop signal.

    The shape of a run is start(), then tick(now) every LOOP_SECONDS on the daemon's clock until
    a stop signal is taken, then stop(); run() is exactly that, inside the signal handlers. A
    test drives the same three steps with a clock of its own. open_store(), make_worker(name)
    and make_watcher() build the parts (parts.py): the seams where a test puts its stand-ins.
    """

    def __init__(self, config: Config, config_source: dict, clock: Callable[[], float] = time.monotonic,
                 metrics=None, window=None, opened: OpenedState | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.config = config
        # how this state directory is opened, as every command opens it (opening.py): run_daemon
        # has joined the ranks already (opened.team: this daemon is rank 0 under mpiexec)
        self.opened = opened if opened is not None else OpenedState(config)
        self.team = self.opened.team
        self.metrics = metrics  # crawler.service.metrics.EventMetrics when [metrics] or [http] listen is set (observing the log)
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
        self.restarts = RestartBackoff()  # when a worker that died may start again
        self.started_wall = time.time()
        # the one judge of "disk full / state read-only", shared by every writer
        self.writes = WriteState(config.state_dir, self.log, clock, on_clear=self._renew_store_connections)
        # the one judge of "store unavailable" (a lock, a lost connection, a full database disk)
        self.outage = StoreOutage(self.log, clock)
        self._next_status = self._next_watchdog = math.inf  # tick's schedule, set when start() ends
        self._watchdog: float | None = None  # systemd's WatchdogSec, halved; None: no watchdog
        self._init_reports()  # health.json, the status event, the metrics endpoint, the folder caps

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
            if self.opened.state_lock is None:
                raise  # the state directory could not be locked: nothing started
            self.log.exception("daemon_failed", error=f"{type(exc).__name__}: {exc}")
            failure = DaemonError(f"the supervisor failed: {one_line(exc)} (the daemon_failed event holds the "
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
        self.opened.lock()  # held from here to stop()
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

    # --- the supervisor's pass ------------------------------------------------------------------

    def tick(self, now: float) -> bool:
        """One pass of the supervisor at `now` (the daemon's clock, read once by the caller).

        First the signals recorded since the last pass: SIGHUP reloads the configuration, SIGUSR1
        asks the trainer for a checkpoint, and a stop signal ends the pass (daemon_stopping):
        returns False, and the caller calls stop(). Then: restart the workers that died (with
        backoff), renew the ingest claims, follow the pause file, re-check blocked writes; every
        status_interval_seconds, and at once when a block, a store outage or a pause begins or ends, the
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
        store_changed, pause_changed = self._check_store(now), self._check_pause()
        if self._check_writes(now) or store_changed or pause_changed or now >= self._next_status:
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
            restarts = self.restarts.due(name, now)
            if restarts is None:
                continue
            self.log.warning("worker_restarted", worker=name, restarts=restarts,
                             error=None if thread.error is None else f"{type(thread.error).__name__}: {thread.error}")
            self._start_worker(name)

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
        configure_logging(new.log.level, json=json_flag(new.log.format), observer=self.window or self.metrics)
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
        if self.opened.state_lock is None:
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
            thread.join_until(deadline)
            if thread.is_alive():
                cut_short[name] = self._unfinished(name)
                self.log.error("worker_stuck", worker=name, stop_timeout_seconds=budget)
        if self.metrics_server is not None:
            self._guarded("metrics", self.metrics_server.shutdown)
        if "trainer" not in cut_short:  # after the final checkpoint
            self._guarded("storage", self.opened.release_training)
        if not cut_short:  # never closed under a worker still using it
            self._guarded("storage", self.opened.close_store)
        if cut_short:
            self.log.error("shutdown_cut_short", parts=cut_short, stop_timeout_seconds=budget)
        fields = dict(reason=reason, exit_code=status, seconds_up=round(time.time() - self.started_wall, 1),
                      stop_seconds=round(self.clock() - began, 1), cut_short=sorted(cut_short),
                      files_left=files_left)
        if status == EXIT_STOPPED:
            self.log.info("daemon_stopped", **fields)
        else:
            self.log.error("daemon_stopped", **fields)
        self.opened.end_ranks()  # the other ranks end after the final checkpoint
        self.opened.release_lock()

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


def json_flag(fmt: str) -> bool | None:
    """[log] format as configure_logging's `json`: None for "auto" (JSON unless on a TTY)."""
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
