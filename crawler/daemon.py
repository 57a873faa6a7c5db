"""`crystalline run`: the supervisor that owns the main thread, the signals and every part.

Parts: the watcher (watchdog observer and debouncer, watcher.py), the ingest worker (extract,
tokenize, store: ingest.py) and the training worker (training.py); each worker is
initialize() / run_once(now) / shutdown() on a thread of its own, restarted with backoff if it
dies. Signal handlers only set flags; the main thread does the logging, the notify protocol,
health.json and the joining. Shutdown order on SIGTERM or SIGINT: stop watching, let the ingest
worker finish its batch, let the trainer finish its step and write a final checkpoint, close
storage, release the state directory's lock; a second signal exits at once (every file and
database write is atomic, so that loses at most the steps since the last checkpoint).
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_module
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .config import Config, load_config
from .health import DaemonLock, HealthFile
from .ingest import Ingestor
from .logging import configure_logging, get_logger
from .notify import Notifier
from .training import TrainingWorker

PROCESSED_DIR = "processed"
EXIT_AT_ONCE = 130


class IngestWorker:
    """Takes ready files from the inbox queue and ingests them in batches."""

    name = "ingest"

    def __init__(self, config: Config, queue, tokenizer, inbox: queue_module.Queue, log):
        self.config, self.queue, self.tokenizer, self.inbox = config, queue, tokenizer, inbox
        self.log = log.bind(component="ingest")
        self.ingestor: Ingestor | None = None
        self.counts = {"ingested": 0, "duplicate": 0, "skipped": 0, "failed": 0, "unchanged": 0}

    def initialize(self) -> None:
        self.ingestor = Ingestor(self.queue, self.tokenizer, self.config.extract)

    def run_once(self, now: float) -> float:
        try:
            batch = [self.inbox.get(timeout=0.5)]
        except queue_module.Empty:
            return 0.0
        while len(batch) < 256:
            try:
                batch.append(self.inbox.get_nowait())
            except queue_module.Empty:
                break
        for outcome in self.ingestor.ingest_files(batch):
            self.counts[outcome.status] += 1
            if outcome.status in ("ingested", "duplicate"):
                self.log.info("file_ingested", path=outcome.path, doc_id=outcome.document_id, bytes=outcome.bytes,
                              tokens=outcome.tokens, ms=round(outcome.ms, 1), duplicate=outcome.status == "duplicate")
                if self.config.daemon.after_ingest == "move":
                    self._move(Path(outcome.path), batch)
            elif outcome.status == "skipped":
                self.log.info("file_skipped", path=outcome.path, reason=outcome.reason, detail=outcome.detail)
            elif outcome.status == "failed":
                self.log.warning("file_failed", path=outcome.path, error=outcome.detail)
        return 0.0

    def _move(self, path: Path, batch: list) -> None:
        """Move an ingested file (its tokens are durably committed) under STATE_DIR/processed."""
        root = next((Path(r) for p, r in batch if Path(os.path.abspath(p)) == path and r), path.parent)
        target = Path(self.config.state_dir) / PROCESSED_DIR / root.name / path.relative_to(Path(os.path.abspath(root)))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        except (OSError, ValueError) as exc:
            self.log.warning("file_move_failed", path=str(path), error=str(exc))

    def shutdown(self) -> None:
        """Files still in the inbox are not lost: unstored, they are found by the next start's scan."""


class WorkerThread:
    """Runs one worker's loop on a thread until `stop` is set; records how it ended."""

    def __init__(self, worker, stop: threading.Event, log, clock: Callable[[], float], ready: threading.Event):
        self.worker, self.stop, self.log, self.clock, self.ready = worker, stop, log, clock, ready
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"crystalline-{worker.name}", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.initialize()
            self.ready.set()
            while not self.stop.is_set():
                pause = self.worker.run_once(self.clock())
                if pause:
                    self.stop.wait(pause)
        except BaseException as exc:  # noqa: BLE001 - reported to the supervisor, which restarts
            self.error = exc
            self.log.exception("worker_failed", worker=self.worker.name, error=f"{type(exc).__name__}: {exc}")
        finally:
            try:
                self.worker.shutdown()
            except BaseException as exc:  # noqa: BLE001
                self.log.exception("worker_shutdown_failed", worker=self.worker.name, error=str(exc))
            self.ready.set()

    def start(self) -> None:
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


class Daemon:
    """Builds every part from a Config and runs until a stop signal."""

    def __init__(self, config: Config, config_source: dict, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.config_source = config_source  # how to reload it: load_config keyword arguments
        self.clock = clock
        self.log = get_logger("daemon")
        self.stop_event = threading.Event()  # the workers' stop flag
        self.signals: list[int] = []
        self.stop_requested = False  # set by the first SIGTERM or SIGINT
        self.notifier = Notifier.from_environment()
        self.workers: dict[str, WorkerThread] = {}
        self.restarts: dict[str, tuple[int, float]] = {}  # name -> (count, not before)
        self.started_wall = time.time()

    # --- signals: handlers only record ----------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.stop_requested:
                os._exit(EXIT_AT_ONCE)  # the second stop signal: at once
            self.stop_requested = True
        self.signals.append(signum)

    # --- run ------------------------------------------------------------------------------------

    def run(self) -> int:
        from storage import CorpusQueue, open_database

        from .tokenizer import load_state_tokenizer
        from .watcher import Watcher

        config = self.config
        t0 = self.clock()
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        lock = DaemonLock(state)
        lock.acquire()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        health = HealthFile(state)
        try:
            self.log.info("daemon_started", pid=os.getpid(), state_dir=str(state), database=_safe_url(config.database_url))
            self.log.info("config_loaded", config=config.to_dict())
            health.write(self._health("starting"))
            self.database = open_database(config.storage_config())
            self.tokenizer = load_state_tokenizer(state)
            CorpusQueue(self.database).set_tokenizer(self.tokenizer.identity_string())
            self.inbox: queue_module.Queue = queue_module.Queue(maxsize=config.daemon.ingest_queue_size)
            self._start_worker("trainer")
            self._start_worker("ingest")
            for thread in self.workers.values():
                thread.ready.wait()
                if thread.error is not None:
                    raise thread.error
            self.watcher = Watcher(config.watch, self._offer, log=get_logger("watcher"))
            self.watcher.start()
            ready_seconds = self.clock() - t0
            self.notifier.ready(self._status_line())
            self.log.info("daemon_ready", seconds=round(ready_seconds, 3), roots=list(config.watch.roots),
                          threads=self._trainer().trainer.threads if self._trainer() else None)
            health.write(self._health("ready"))
            self._loop(health)
        finally:
            self._shutdown(health)
            lock.release()
        return 0

    def _offer(self, path: Path, root: Path) -> bool:
        try:
            self.inbox.put_nowait((path, root))
            return True
        except queue_module.Full:
            return False  # the watcher keeps it pending and offers it again

    def _make_worker(self, name: str):
        from storage import CorpusQueue

        queue = CorpusQueue(self.database)
        if name == "trainer":
            return TrainingWorker(self.config, queue, self.tokenizer, get_logger("trainer"), clock=self.clock,
                                  stopping=self.stop_event.is_set)
        return IngestWorker(self.config, queue, self.tokenizer, self.inbox, get_logger("ingest"))

    def _start_worker(self, name: str) -> None:
        thread = WorkerThread(self._make_worker(name), self.stop_event, self.log, self.clock, threading.Event())
        self.workers[name] = thread
        thread.start()

    def _trainer(self) -> TrainingWorker | None:
        thread = self.workers.get("trainer")
        return thread.worker if thread is not None else None

    def _loop(self, health: HealthFile) -> None:
        interval = self.config.daemon.status_interval_seconds
        watchdog = self.notifier.watchdog_interval()
        next_status = self.clock() + interval
        next_watchdog = self.clock() + (watchdog or 1e18)
        while True:
            while self.signals:
                signum = self.signals.pop(0)
                if signum == signal.SIGHUP:
                    self._reload()
                else:
                    self.log.info("daemon_stopping", signal=signal.Signals(signum).name)
                    self.notifier.stopping("stopping: finishing the step and checkpointing")
                    return
            now = self.clock()
            self._supervise(now)
            if now >= next_status:
                next_status = now + self.config.daemon.status_interval_seconds
                self._report(health)
            if now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog
            time.sleep(0.2)

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

    def _status_line(self) -> str:
        trainer = self._trainer()
        f = trainer.figures if trainer else None
        if f is None:
            return "starting"
        loss = "-" if f.loss is None else f"{f.loss:.3f}"
        line = f"step {f.step}, loss {loss}, {f.tokens_trained} tokens trained"
        if f.val_bits_per_byte is not None:
            line += f", held-out {f.val_bits_per_byte:.3f} bits/byte (best {f.best_val_bits_per_byte:.3f})"
        return line + (", plateaued" if f.plateaued else "")

    def _health(self, state: str) -> dict[str, Any]:
        trainer = self._trainer()
        f = trainer.figures if trainer else None
        now = self.clock()
        return {
            "pid": os.getpid(), "state": state, "started_at": _iso(self.started_wall),
            "step": f.step if f else None, "tokens_trained": f.tokens_trained if f else None,
            "loss": f.loss if f else None, "tokens_per_s": f.tokens_per_s if f else None,
            "last_checkpoint_step": f.last_checkpoint_step if f else None,
            "last_checkpoint_age_s": None if not f or f.last_checkpoint_time is None else round(now - f.last_checkpoint_time, 1),
            "epoch": round(f.epoch, 3) if f else None,
            "val_bits_per_byte": f.val_bits_per_byte if f else None,
            "best_val_bits_per_byte": f.best_val_bits_per_byte if f else None,
            "plateaued": f.plateaued if f else None, "idle": f.idle if f else None,
            "rss_mb": round(current_rss_mb(), 1),
            "threads": trainer.trainer.threads if trainer and trainer.trainer else None,
            "workers": {name: t.is_alive() for name, t in self.workers.items()},
        }

    def _report(self, health: HealthFile) -> None:
        from storage import CorpusQueue

        report = self._health("ready")
        try:
            stats = CorpusQueue(self.database).stats()
            position = self._trainer().figures.position if self._trainer() else 0
            report |= {"queue_documents": stats.documents.get("queued", 0),
                       "queue_tokens": max(0, stats.tokens_total - position)}
        except Exception as exc:  # noqa: BLE001 - a status report must not stop the daemon
            report["last_error"] = f"{type(exc).__name__}: {exc}"
        health.write(report)
        self.log.info("status", **{k: v for k, v in report.items() if k not in ("pid", "state", "started_at")})
        self.notifier.status(self._status_line())

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
        configure_logging(new.log.level, json=_json_flag(new.log.format))
        for thread in self.workers.values():
            thread.worker.config = self.config
        self.watcher.update_config(new.watch)
        self.log.info("config_reloaded", changed=changed, roots=list(new.watch.roots), level=new.log.level)
        self.notifier.ready(self._status_line())

    def _shutdown(self, health: HealthFile) -> None:
        health.write(self._health("stopping"))
        watcher = getattr(self, "watcher", None)
        if watcher is not None:
            watcher.stop()
            watcher.join(timeout=10)
        self.stop_event.set()
        for name in ("ingest", "trainer"):  # the ingest worker first: its batch is in flight
            thread = self.workers.get(name)
            if thread is not None:
                thread.join(timeout=120)
                if thread.is_alive():
                    self.log.error("worker_stuck", worker=name)
        database = getattr(self, "database", None)
        if database is not None:
            database.close()
        self.log.info("daemon_stopped", seconds_up=round(time.time() - self.started_wall, 1))


def _json_flag(fmt: str) -> bool | None:
    return None if fmt == "auto" else fmt == "json"


def _iso(wall: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(wall, timezone.utc).isoformat().replace("+00:00", "Z")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def run_daemon(config_file=None, state_dir=None, overrides=None) -> int:
    """Resolve the configuration, configure logging, and run the daemon in this process."""
    source = {"config_file": config_file, "state_dir": state_dir, "overrides": overrides}
    config = load_config(**source)
    configure_logging(config.log.level, json=_json_flag(config.log.format))
    return Daemon(config, source).run()
