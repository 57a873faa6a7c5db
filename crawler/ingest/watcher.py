"""Watcher: watchdog observers on the inbox roots, and a debouncer that hands over complete files.

Events (created, modified, attrib, closed, moved in) and scans put a path into `pending` with its
(size, mtime). `run_once(now)` hands a pending file to `ready(path, root)` at the next step after a
close-after-write or a move into a root, else once two looks `settle_seconds` apart see the same
(size, mtime); an event with a new size restarts the wait. A close-after-write less than
`settle_seconds` after the file's previous one (a writer appending in open-write-close cycles,
as `>>` does) does not make it ready at once: the file is still being written, and is handed over
once it settles, so it arrives as one version, not one per cycle; a single write-and-close is
ready at the next step as before. A file written to and not yet closed
(inotify tells; polling cannot) waits for its close however long the writer pauses, or
OPEN_WRITE_CAP_SECONDS without a change. ready() returning False (the
consumer's bounded queue is full) keeps the file pending: only vanished files are dropped. Handed
over versions are remembered (pruned by every full scan) so scans do not offer them again;
`reoffer` forgets them, for a consumer that could not finish them; delivery is at-least-once,
and the ingestor deduplicates. Every entry but a folder is a candidate: a FIFO, socket or device
is handed over like a file, once, for the ingestor to skip as `unsupported` without opening it;
a file that cannot be looked at (a folder the daemon may not enter) is handed over once with the
version UNREADABLE, for the ingestor to skip as `unreadable`; a folder that cannot be listed is
logged once (`folder_unreadable`) until it can be.

Events are not trusted alone (watchdog drops inotify overflows silently, a watch-limit error
kills its thread, network and container mounts deliver none): the roots are scanned at start,
every `rescan_interval_seconds` and after every watch error; a dead observer is replaced, and its
root polled after repeated failures. Knows nothing of storage or the engine. Locks: `_watch_lock`
guards the observers, `_lock` the pending state; observer threads take only `_lock`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
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

from .. import ConfigError
from ..logging import get_logger
from ..state.walk import walk_files
from .pipeline import display_path, is_ignored_name

STEP_SECONDS = 0.2  # the thread's run_once period
# a file with a write event and no close-after-write since is still open for writing (inotify
# says so; polling cannot): it waits for its close, or for this long without a change
OPEN_WRITE_CAP_SECONDS = 300.0
MAX_WATCH_FAILURES = 3  # consecutive observer failures on a root before it falls back to polling
HEALTHY_RESET_SECONDS = 300.0  # an observer alive this long clears its root's failure count
RETRY_CAP_SECONDS = 30.0
JOIN_SECONDS = 2.0
UNREADABLE = (-1, -1)  # the (size, mtime_ns) of a file lstat may not look at
# opened / closed-without-write events (every read by the ingestor) are not wanted
EVENT_FILTER = [FileCreatedEvent, DirCreatedEvent, FileModifiedEvent, FileAttribEvent, FileClosedEvent,
                FileMovedEvent, DirMovedEvent, FileDeletedEvent]


@dataclass(frozen=True)
class WatchConfig:
    roots: tuple[str, ...] = ("inbox",)  # folders watched recursively; created if missing
    # a file is ready when size and mtime are unchanged this long (at once after a
    # close-after-write or a move into a root)
    settle_seconds: float = 2.0
    polling: bool = False  # watchdog's PollingObserver: for network filesystems, container volumes
    poll_interval_seconds: float = 2.0
    rescan_interval_seconds: float = 60.0  # full walk beside the events; 0 = at start and after errors
    include: tuple[str, ...] = ()  # fnmatch globs on the file name; empty = everything
    exclude: tuple[str, ...] = ()  # fnmatch globs on the name or the path relative to its root

    def validate(self) -> "WatchConfig":
        """Raise ConfigError naming the allowed values."""
        for name in ("roots", "include", "exclude"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{name} ({value!r}) must be a list of non-empty strings")
        if not self.roots:
            raise ConfigError("roots (()) must name at least one folder")
        if len({os.path.abspath(r) for r in self.roots}) != len(self.roots):
            raise ConfigError(f"roots ({list(self.roots)!r}) must not repeat a folder")
        for name, least, word in (("settle_seconds", 0, "0 or more"), ("rescan_interval_seconds", 0, "0 or more"),
                                  ("poll_interval_seconds", 1e-9, "positive")):
            if not getattr(self, name) >= least:  # `not >=` also refuses NaN
                raise ConfigError(f"{name} ({getattr(self, name)}) must be {word}")
        return self


@dataclass
class _Pending:
    root: Path
    size: int
    mtime_ns: int
    since: float  # when this (size, mtime) was first seen
    quick: bool  # closed after write or moved in: ready at the next step if still unchanged


@dataclass
class _Watch:
    root: Path
    observer: Any = None  # a started watchdog observer, or None while waiting to retry
    polling: bool = False  # fell back to polling after repeated failures
    failures: int = 0
    retry_at: float = 0.0
    started_at: float = 0.0


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "Watcher") -> None:
        self.dispatch = watcher.handle_event  # every event, whatever its type, goes to one method


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


def _version(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) from lstat; UNREADABLE when it may not look (EACCES and the like); None
    when the path is gone or is a folder."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNREADABLE
    return None if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)


def _absolute_roots(config: WatchConfig) -> list[Path]:
    """Absolute, innermost first, so a file in nested roots belongs to the inner one."""
    return sorted((Path(os.path.abspath(r)) for r in config.roots), key=lambda r: len(r.parts), reverse=True)


class Watcher:
    """Watches the roots and hands each file that is complete to `ready(path: Path, root: Path)`."""

    def __init__(self, config: WatchConfig, ready: Callable[[Path, Path], bool], *,
                 clock: Callable[[], float] = time.monotonic, log=None) -> None:
        self._config = config.validate()
        self._ready = ready
        self._clock = clock
        self._log = log if log is not None else get_logger("watcher")
        self._roots = _absolute_roots(config)
        self._watches = {root: _Watch(root) for root in self._roots}
        self._handler = _Handler(self)
        self._lock = threading.Lock()
        self._watch_lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: dict[Path, _Pending] = {}
        self._offered: dict[Path, tuple[int, int]] = {}  # handed-over versions: path -> (size, mtime_ns)
        self._writing: set[Path] = set()  # written to and not closed since (inotify events only)
        self._closed_at: dict[Path, float] = {}  # last close-after-write, kept settle_seconds
        self._scan_due: list[tuple[list[Path] | None, str]] = []  # owed scans (None: every root)
        self._last_rescan: float | None = None
        self._counts = {"handed_over": 0, "rescans": 0, "observer_errors": 0}
        self._unreadable_folders: set[Path] = set()  # logged once each, until they can be listed

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create missing roots, start one observer per root, then the thread (which scans first)."""
        with self._watch_lock:
            if self._thread is not None:
                raise RuntimeError("the watcher was already started")
            now = self._clock()
            for watch in self._watches.values():
                self._start_watch(watch, now)
            self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
            self._thread.start()
        self._log.info("watcher_started", roots=[str(r) for r in self._roots], polling=self._config.polling)

    def stop(self) -> None:
        """Ask the thread to end and stop the observers; does not block beyond a restart in flight."""
        self._stop.set()
        with self._watch_lock:
            for watch in self._watches.values():
                if watch.observer is not None and not watch.observer.stopped_event.is_set():
                    watch.observer.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread and the observers to end, up to `timeout` seconds for each."""
        if self._thread is not None:
            self._thread.join(timeout)
        with self._watch_lock:
            observers = [w.observer for w in self._watches.values() if w.observer is not None]
        for observer in observers:
            if observer.ident is not None:
                observer.join(timeout)

    def __enter__(self) -> "Watcher":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.join()

    def _run(self) -> None:
        self._guarded(lambda: self._scan(None, "start", self._clock()))
        while not self._stop.wait(STEP_SECONDS):
            self._guarded(lambda: self.run_once(self._clock()))
        self._log.info("watcher_stopped", **self.stats)

    def _guarded(self, step: Callable[[], object]) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - the watcher logs and carries on; it never dies of one fault
            self._log.exception("watcher_error", error=f"{type(exc).__name__}: {exc}")

    # --- the debouncer step ---------------------------------------------------------------------

    def run_once(self, now: float) -> list[tuple[Path, Path]]:
        """One step: heal dead observers, run owed and periodic scans, then hand over every pending
        file that became ready, in arrival order, until ready() says the consumer is full.
        Returns the (path, root) pairs handed over; an exception from ready() is logged and the
        file kept."""
        if self._thread is not None:
            self._check_watches(now)
        with self._lock:
            owed, self._scan_due = self._scan_due, []
        for roots, reason in owed:
            self._scan(roots, reason, now)
        interval = self._config.rescan_interval_seconds
        if self._last_rescan is None:
            self._last_rescan = now
        elif interval > 0 and now - self._last_rescan >= interval:
            self._scan(None, "interval", now)
        settle = self._config.settle_seconds
        with self._lock:  # settled, unless still open for writing (then: closed, or quiet for the cap)
            for path in [p for p, t in self._closed_at.items() if now - t >= settle]:
                del self._closed_at[path]
            due = [(p, e) for p, e in self._pending.items() if e.quick or (
                now - e.since >= (OPEN_WRITE_CAP_SECONDS if p in self._writing else settle))]
        handed: list[tuple[Path, Path]] = []
        for path, entry in due:
            version = _version(path)
            if version is None:
                with self._lock:
                    if self._pending.get(path) is entry:
                        del self._pending[path]
                self._log.debug("file_vanished", path=display_path(path))
                continue
            if version != (entry.size, entry.mtime_ns):  # still being written: settle again from now
                with self._lock:
                    if self._pending.get(path) is entry:
                        self._pending[path] = _Pending(entry.root, *version, now, False)
                continue
            try:
                accepted = self._ready(path, entry.root)
            except Exception as exc:  # noqa: BLE001 - keep the file; the consumer's fault is logged
                self._log.exception("watcher_error", path=display_path(path), error=f"{type(exc).__name__}: {exc}")
                break
            if not accepted:
                break  # the consumer's queue is full: the rest waits for a later step
            with self._lock:
                if self._pending.get(path) is entry:
                    del self._pending[path]
                self._offered[path] = version
                self._counts["handed_over"] += 1
            handed.append((path, entry.root))
            self._log.debug("file_handed_over", path=display_path(path), bytes=version[0])
        return handed

    def reoffer(self, files: list[tuple[Path, Path]]) -> None:
        """Forget that these (path, root) files were handed over, and offer each again at the next
        step if it is still there and unchanged (a consumer that could not store them calls this;
        thread-safe)."""
        now = self._clock()
        for path, root in files:
            path = Path(os.path.abspath(path))
            version = _version(path)
            with self._lock:
                self._offered.pop(path, None)
                if version is not None and path not in self._pending:
                    self._pending[path] = _Pending(Path(os.path.abspath(root)), *version, now, True)

    # --- events and scans -----------------------------------------------------------------------

    def handle_event(self, event: FileSystemEvent) -> None:
        """Record one watchdog event (called on observer threads; never raises)."""
        try:
            now = self._clock()
            kind, src = event.event_type, os.fsdecode(event.src_path)
            dest = os.fsdecode(event.dest_path) if kind == "moved" else ""
            if kind in ("deleted", "moved") and src:
                with self._lock:
                    self._pending.pop(Path(src), None)
                    self._offered.pop(Path(src), None)
                    self._writing.discard(Path(src))
                    self._closed_at.pop(Path(src), None)
            target = dest if kind == "moved" else src
            if not target or kind == "deleted":
                return
            if event.is_directory:  # files written before the new folder's watch was added
                if kind in ("created", "moved") and (root := self._root_of(Path(target))) is not None:
                    self._scan_folder(Path(target), root, now)
                return
            path = Path(target)
            root = self._root_of(path)
            if root is None or not self._wanted(path, root):
                return
            version = _version(path)
            if version is None:
                return  # created and deleted at once (its deleted event follows), or a folder
            quick = kind == "moved"
            with self._lock:
                if kind == "modified" and self._sees_closes(root):
                    self._writing.add(path)
                elif kind == "closed":
                    self._writing.discard(path)
                    # closed again within the settle time: written in cycles, so let it settle
                    last = self._closed_at.get(path)
                    quick = last is None or now - last >= self._config.settle_seconds
                    self._closed_at[path] = now
            self._consider(path, root, version, now, quick=quick)
        except Exception as exc:  # noqa: BLE001 - an observer thread must not die of one event
            self._log.exception("watcher_error", error=f"{type(exc).__name__}: {exc}")

    def rescan(self, reason: str) -> int:
        """Walk every root and put every candidate file into pending (versions already handed over
        excepted). Returns how many were put; logs rescan_started and rescan_finished."""
        return self._scan(None, reason, self._clock())

    def _scan(self, roots: list[Path] | None, reason: str, now: float) -> int:
        t0 = time.perf_counter()
        full, roots = roots is None, self._roots if roots is None else roots
        self._log.info("rescan_started", reason=reason, roots=len(roots))
        files = added = 0
        seen: set[Path] = set()
        for root in roots:
            for path, version in self._walk(root):
                if self._root_of(path) != root or not self._wanted(path, root):
                    continue  # in a nested root, or filtered
                files += 1
                if full:
                    seen.add(path)
                added += self._consider(path, root, version, now, quick=False)
        with self._lock:
            if full:  # what was handed over and is gone need not be remembered
                self._offered = {p: v for p, v in self._offered.items() if p in seen}
                self._writing &= seen
                self._closed_at = {p: t for p, t in self._closed_at.items() if p in seen}
                self._last_rescan = now
            self._counts["rescans"] += 1
        self._log.info("rescan_finished", reason=reason, roots=len(roots), files=files, added=added,
                       ms=round((time.perf_counter() - t0) * 1e3, 1))
        return added

    def _scan_folder(self, folder: Path, root: Path, now: float) -> None:
        for path, version in self._walk(folder):
            if self._wanted(path, root):
                self._consider(path, root, version, now, quick=False)

    def _walk(self, folder: Path) -> Iterator[tuple[Path, tuple[int, int]]]:
        """Every entry but a folder under folder, with its version (UNREADABLE when lstat may not
        look at it); hidden and temporary folders not entered, symlinked folders not followed. A
        folder that cannot be listed is logged once, until it can be."""
        for entry in walk_files(folder, skip=is_ignored_name, on_folder=self._listed):
            path = Path(entry.path)
            if (version := _version(path)) is not None:
                yield path, version

    def _listed(self, folder: Path, error: OSError | None) -> None:
        if isinstance(error, FileNotFoundError):
            return  # vanished mid-walk
        with self._lock:
            first = error is not None and folder not in self._unreadable_folders
            if error is None:
                self._unreadable_folders.discard(folder)
            else:
                self._unreadable_folders.add(folder)
        if first:
            self._log.warning("folder_unreadable", path=display_path(folder),
                              error=error.strerror or type(error).__name__,
                              action="give the daemon's user read and execute permission on it")

    def _consider(self, path: Path, root: Path, version: tuple[int, int], now: float, quick: bool) -> bool:
        """Put a file (any entry but a folder) into pending; False when this version was already
        handed over."""
        with self._lock:
            if self._offered.get(path) == version:
                return False
            entry = self._pending.get(path)
            if entry is not None and (entry.size, entry.mtime_ns) == version:
                entry.quick = entry.quick or quick
            else:
                self._pending[path] = _Pending(root, *version, now, quick)
        return True

    def _sees_closes(self, root: Path) -> bool:
        """Whether the root's events include close-after-write (inotify; polling has none)."""
        watch = self._watches.get(root)
        return not (self._config.polling or (watch is not None and watch.polling)) and sys.platform.startswith("linux")

    def _root_of(self, path: Path) -> Path | None:
        """The innermost root holding path, unless a part below the root is hidden or temporary."""
        for root in self._roots:
            if path == root or root in path.parents:
                rel = path.relative_to(root).parts
                return None if any(is_ignored_name(part) for part in rel) else root
        return None

    def _wanted(self, path: Path, root: Path) -> bool:
        config = self._config
        name, rel = path.name, path.relative_to(root).as_posix()
        if config.include and not any(fnmatch(name, glob) for glob in config.include):
            return False
        return not any(fnmatch(name, glob) or fnmatch(rel, glob) for glob in config.exclude)

    # --- observers ------------------------------------------------------------------------------

    def _start_watch(self, watch: _Watch, now: float) -> bool:
        observer = None
        try:
            watch.root.mkdir(parents=True, exist_ok=True)
            observer = _make_observer(self._config.polling or watch.polling, self._config.poll_interval_seconds)
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
        fell_back = watch.failures >= MAX_WATCH_FAILURES and not (watch.polling or self._config.polling)
        watch.polling = watch.polling or fell_back
        delay = 0.0 if watch.failures == 1 or fell_back else min(RETRY_CAP_SECONDS, 0.5 * 2 ** (watch.failures - 2))
        watch.retry_at = now + delay
        with self._lock:
            self._counts["observer_errors"] += 1
            if (None, "watch_error") not in self._scan_due:
                self._scan_due.append((None, "watch_error"))
        self._log.error("watch_failed", root=str(watch.root), error=error, failures=watch.failures,
                        polling=watch.polling or self._config.polling, retry_in_s=delay)
        if fell_back:
            self._log.warning("watch_fell_back", root=str(watch.root), reason="repeated_failures")

    def _check_watches(self, now: float) -> None:
        """Replace dead observers (a watch limit kills the thread; a deleted root ends its emitter)."""
        with self._watch_lock:
            if self._stop.is_set():
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

    def update_config(self, config: WatchConfig) -> None:
        """Apply a reloaded config: new roots are watched and scanned, removed ones unwatched and
        their pending files dropped; a change of polling settings restarts every observer."""
        config = config.validate()
        now = self._clock()
        with self._watch_lock:
            old, self._config = self._config, config
            roots = _absolute_roots(config)
            added = [r for r in roots if r not in self._watches]
            removed = [r for r in self._watches if r not in roots]
            self._roots = roots
            restart = (old.polling, old.poll_interval_seconds) != (config.polling, config.poll_interval_seconds)
            for root in removed:
                watch = self._watches.pop(root)
                if watch.observer is not None:
                    _retire(watch.observer)
            for root in added:
                self._watches[root] = _Watch(root)
            running = self._thread is not None and not self._stop.is_set()
            for watch in self._watches.values():
                if restart and watch.observer is not None:
                    _retire(watch.observer)
                    watch.observer = None
                if running and watch.observer is None:
                    self._start_watch(watch, now)
        with self._lock:  # what no longer belongs to a root, or is filtered out now, goes
            for store in (self._pending, self._offered):
                for path in [p for p in store if (r := self._root_of(p)) is None or not self._wanted(p, r)]:
                    del store[path]
            if added:
                self._scan_due.append((added, "config_reloaded"))
        self._log.info("watch_config_updated", added=[str(r) for r in added], removed=[str(r) for r in removed],
                       restarted=restart)

    # --- introspection --------------------------------------------------------------------------

    @property
    def observers(self) -> dict[Path, Any]:
        """The running observer of each root (None while one waits to be restarted)."""
        with self._watch_lock:
            return {root: watch.observer for root, watch in self._watches.items()}

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self._pending), **self._counts}
