"""The watcher's observers: one watchdog observer per watched root, kept running.

`Observers.check(now)`, called at every watcher step, replaces an observer that died (a watch-limit
error kills its thread; a deleted root ends its emitter), after a backoff that grows from nothing
to RETRY_CAP_SECONDS, and after MAX_WATCH_FAILURES failures in a row falls back to polling that
root. An observer alive for HEALTHY_RESET_SECONDS clears its root's failure count. Every failure
is logged (`watch_failed`, and `watch_fell_back` once) and reported to the watcher's
`on_failure`, which owes the roots a scan: the events the dead observer missed are found by
walking. `update` follows a reloaded config (roots added and removed, every observer restarted
when the polling settings change).

Not the debounce or the scans (crawler.ingest.watcher decides what an event means and when a file
is ready), and it never looks at a file. Relies on watchdog: inotify with full events on Linux (a
move in from outside is a move, and close-after-write is seen), its PollingObserver otherwise or
when asked. Locks: `_lock` guards the observers; `on_failure` is called with it held, so it must
take no lock that is held while calling into this class.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

MAX_WATCH_FAILURES = 3  # consecutive observer failures on a root before it falls back to polling
HEALTHY_RESET_SECONDS = 300.0  # an observer alive this long clears its root's failure count
RETRY_CAP_SECONDS = 30.0
JOIN_SECONDS = 2.0
# opened / closed-without-write events (every read by the ingestor) are not wanted
EVENT_FILTER = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent,
                FileMovedEvent, DirMovedEvent, FileDeletedEvent]


@dataclass
class _Watch:
    root: Path
    observer: Any = None  # a started watchdog observer, or None while waiting to retry
    polling: bool = False  # fell back to polling after repeated failures
    failures: int = 0
    retry_at: float = 0.0
    started_at: float = 0.0


class _Handler(FileSystemEventHandler):
    def __init__(self, dispatch: Callable[[FileSystemEvent], None]) -> None:
        self.dispatch = dispatch  # every event, whatever its type, goes to one method


def _make_observer(polling: bool, interval: float):
    if polling:
        return PollingObserver(timeout=interval)
    if sys.platform.startswith("linux"):  # full events: a move in from outside is a move, not a create
        from watchdog.observers.inotify import InotifyObserver
        return InotifyObserver(generate_full_events=True)
    return Observer()


def _healthy(observer) -> bool:
    emitters = list(observer.emitters)
    return (observer.is_alive() and not observer.stopped_event.is_set() and bool(emitters)
            and all(e.is_alive() for e in emitters))


def _retire(observer) -> None:
    with contextlib.suppress(Exception):
        if not observer.stopped_event.is_set():
            observer.stop()
    if observer.ident is not None and observer is not threading.current_thread():
        observer.join(timeout=JOIN_SECONDS)


class Observers:
    """One observer per root, each event handed to `dispatch(event)` on the observer's thread;
    `on_failure()` is told of every observer that failed to start or died."""

    def __init__(self, roots: Sequence[Path], *, polling: bool, interval: float,
                 dispatch: Callable[[FileSystemEvent], None], on_failure: Callable[[], None], log: Any) -> None:
        self._polling, self._interval = polling, interval
        self._watches = {root: _Watch(root) for root in roots}
        self._handler = _Handler(dispatch)
        self._on_failure = on_failure
        self._log = log
        self._lock = threading.RLock()
        self._started = False
        self._stopped = threading.Event()

    def start(self, now: float) -> None:
        """Create missing roots and start an observer on each (a failure is retried by `check`);
        RuntimeError when already started."""
        with self._lock:
            if self._started:
                raise RuntimeError("the watcher was already started")
            self._started = True
            for watch in self._watches.values():
                if watch.observer is None:
                    self._start_watch(watch, now)

    def stop(self) -> None:
        """Ask every observer to stop; does not block beyond a restart in flight."""
        self._stopped.set()
        with self._lock:
            for watch in self._watches.values():
                if watch.observer is not None and not watch.observer.stopped_event.is_set():
                    watch.observer.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for every observer's thread to end, up to `timeout` seconds for each."""
        with self._lock:
            observers = [w.observer for w in self._watches.values() if w.observer is not None]
        for observer in observers:
            if observer.ident is not None:
                observer.join(timeout)

    def check(self, now: float) -> None:
        """Replace dead observers (a watch limit kills the thread; a deleted root ends its emitter)."""
        with self._lock:
            if self._stopped.is_set():
                return
            for watch in self._watches.values():
                observer = watch.observer
                if observer is not None and not _healthy(observer):
                    watch.observer = None
                    _retire(observer)
                    self._watch_failed(watch, now, "the observer thread stopped")
                if watch.observer is None:
                    if now >= watch.retry_at:
                        self._start_watch(watch, now)
                elif watch.failures and now - watch.started_at >= HEALTHY_RESET_SECONDS:
                    watch.failures = 0

    def update(self, roots: Sequence[Path], *, polling: bool, interval: float,
               now: float) -> tuple[list[Path], list[Path], bool]:
        """Watch `roots` from now on: new roots watched (once started), removed ones unwatched; a
        change of polling settings restarts every observer. Returns (added, removed, restarted)."""
        with self._lock:
            restart = (self._polling, self._interval) != (polling, interval)
            self._polling, self._interval = polling, interval
            added = [r for r in roots if r not in self._watches]
            removed = [r for r in self._watches if r not in roots]
            for root in removed:
                watch = self._watches.pop(root)
                if watch.observer is not None:
                    _retire(watch.observer)
            for root in added:
                self._watches[root] = _Watch(root)
            running = self._started and not self._stopped.is_set()
            for watch in self._watches.values():
                if restart and watch.observer is not None:
                    _retire(watch.observer)
                    watch.observer = None
                if running and watch.observer is None:
                    self._start_watch(watch, now)
        return added, removed, restart

    def sees_closes(self, root: Path) -> bool:
        """Whether the root's events include close-after-write (inotify; polling has none)."""
        watch = self._watches.get(root)
        return not (self._polling or (watch is not None and watch.polling)) and sys.platform.startswith("linux")

    @property
    def observers(self) -> dict[Path, Any]:
        """The running observer of each root (None while one waits to be restarted)."""
        with self._lock:
            return {root: watch.observer for root, watch in self._watches.items()}

    def _start_watch(self, watch: _Watch, now: float) -> bool:
        observer = None
        try:
            watch.root.mkdir(parents=True, exist_ok=True)
            observer = _make_observer(self._polling or watch.polling, self._interval)
            observer.schedule(self._handler, str(watch.root), recursive=True, event_filter=EVENT_FILTER)
            observer.start()  # an inotify watch-limit error (ENOSPC, EMFILE) surfaces here
        except Exception as exc:  # noqa: BLE001 - retried with a backoff, then polled
            if observer is not None:
                _retire(observer)
            self._watch_failed(watch, now, f"{type(exc).__name__}: {exc}")
            return False
        watch.observer, watch.started_at = observer, now
        return True

    def _watch_failed(self, watch: _Watch, now: float, error: str) -> None:
        watch.failures += 1
        fell_back = watch.failures >= MAX_WATCH_FAILURES and not (watch.polling or self._polling)
        watch.polling = watch.polling or fell_back
        delay = 0.0 if watch.failures == 1 or fell_back else min(RETRY_CAP_SECONDS, 0.5 * 2 ** (watch.failures - 2))
        watch.retry_at = now + delay
        self._on_failure()
        self._log.error("watch_failed", root=str(watch.root), error=error, failures=watch.failures,
                        polling=watch.polling or self._polling, retry_in_s=delay)
        if fell_back:
            self._log.warning("watch_fell_back", root=str(watch.root), reason="repeated_failures")
