"""The daemon's worker threads: one worker's loop on a thread of its own, and when a dead one
may be started again.

A WorkerThread runs a worker's initialize(), then run_once(now) on the daemon's clock until the
stop flag is set, then shutdown(), and records how it ended; RestartBackoff spaces the restarts
of one that died. Not the workers (ingest_worker.py, crawler/training/worker.py), not the
supervisor that decides to restart or stop them (supervisor.py). Relies on outage.py for what
a transient store error means: the store's outage, waited out, not the worker's death.
"""

from __future__ import annotations

import threading
from typing import Callable

from engine import CheckpointError, ConfigError
from storage import StoreUnavailable

from .. import ConfigError as SettingError
from .outage import StoreOutage, is_transient

# errors whose message already says what is wrong and what to do: logged without a traceback
EXPLAINED_ERRORS = (ConfigError, SettingError, CheckpointError, StoreUnavailable)
JOIN_SLICE_SECONDS = 0.1  # join_until waits this long at a time and then asks the clock


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

    def join_until(self, deadline: float) -> None:
        """Wait for the thread until `deadline` on the daemon's clock (short real waits, so an
        injected clock decides)."""
        while self.is_alive():
            left = deadline - self.clock()
            if left <= 0:
                return
            self.join(min(JOIN_SLICE_SECONDS, left))


class RestartBackoff:
    """When a worker that died may start again: at once the first time, then after a delay that
    doubles up to a minute, counted per worker by name."""

    def __init__(self) -> None:
        self.restarts: dict[str, tuple[int, float]] = {}  # name -> (count, not before)

    def due(self, name: str, now: float) -> int | None:
        """The number of this restart of `name` when it may restart at `now` (the next one is
        then delayed); None while its backoff lasts."""
        count, not_before = self.restarts.get(name, (0, 0.0))
        if now < not_before:
            return None
        delay = min(60.0, 2.0 ** count)
        self.restarts[name] = (count + 1, now + delay)
        return count + 1
