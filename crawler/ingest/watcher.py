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
root polled after repeated failures (crawler.ingest.observers). Which entries are candidates, and
their versions, are crawler.ingest.candidates'. Knows nothing of storage or the engine. Locks:
`_lock` guards the pending state; observer threads take only `_lock`; the observers' own lock is
taken before `_lock`, never after.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent

from .. import ConfigError
from ..logging import get_logger
from .candidates import FolderWalk, Roots, version_of
from .observers import Observers
from .pipeline import display_path

STEP_SECONDS = 0.2  # the thread's run_once period
# a file with a write event and no close-after-write since is still open for writing (inotify
# says so; polling cannot): it waits for its close, or for this long without a change
OPEN_WRITE_CAP_SECONDS = 300.0


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


class Watcher:
    """Watches the roots and hands each file that is complete to `ready(path: Path, root: Path)`."""

    def __init__(self, config: WatchConfig, ready: Callable[[Path, Path], bool], *,
                 clock: Callable[[], float] = time.monotonic, log=None) -> None:
        self._config = config.validate()
        self._ready = ready
        self._clock = clock
        self._log = log if log is not None else get_logger("watcher")
        self._lock = threading.Lock()
        self._roots = Roots.build(config.roots, config.include, config.exclude)
        self._observers = Observers(self._roots.paths, polling=config.polling, interval=config.poll_interval_seconds,
                                    dispatch=self.handle_event, on_failure=self._observer_failed, log=self._log)
        self._folders = FolderWalk(self._log)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: dict[Path, _Pending] = {}
        self._offered: dict[Path, tuple[int, int]] = {}  # handed-over versions: path -> (size, mtime_ns)
        self._writing: set[Path] = set()  # written to and not closed since (inotify events only)
        self._closed_at: dict[Path, float] = {}  # last close-after-write, kept settle_seconds
        self._scan_due: list[tuple[list[Path] | None, str]] = []  # owed scans (None: every root)
        self._last_rescan: float | None = None
        self._counts = {"handed_over": 0, "rescans": 0, "observer_errors": 0}

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create missing roots, start one observer per root, then the thread (which scans first);
        RuntimeError when already started."""
        self._observers.start(self._clock())
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()
        self._log.info("watcher_started", roots=[str(r) for r in self._roots.paths], polling=self._config.polling)

    def stop(self) -> None:
        """Ask the thread to end and stop the observers; does not block beyond a restart in flight."""
        self._stop.set()
        self._observers.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread and the observers to end, up to `timeout` seconds for each."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._observers.join(timeout)

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
            self._observers.check(now)
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
            found = version_of(path)
            if found is None:
                with self._lock:
                    if self._pending.get(path) is entry:
                        del self._pending[path]
                self._log.debug("file_vanished", path=display_path(path))
                continue
            if found != (entry.size, entry.mtime_ns):  # still being written: settle again from now
                with self._lock:
                    if self._pending.get(path) is entry:
                        self._pending[path] = _Pending(entry.root, *found, now, False)
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
                self._offered[path] = found
                self._counts["handed_over"] += 1
            handed.append((path, entry.root))
            self._log.debug("file_handed_over", path=display_path(path), bytes=found[0])
        return handed

    def reoffer(self, files: list[tuple[Path, Path]]) -> None:
        """Forget that these (path, root) files were handed over, and offer each again at the next
        step if it is still there and unchanged (a consumer that could not store them calls this;
        thread-safe)."""
        now = self._clock()
        for path, root in files:
            path = Path(os.path.abspath(path))
            found = version_of(path)
            with self._lock:
                self._offered.pop(path, None)
                if found is not None and path not in self._pending:
                    self._pending[path] = _Pending(Path(os.path.abspath(root)), *found, now, True)

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
                if kind in ("created", "moved") and (root := self._roots.root_of(Path(target))) is not None:
                    self._scan_folder(Path(target), root, now)
                return
            path = Path(target)
            root = self._roots.root_of(path)
            if root is None or not self._roots.wanted(path, root):
                return
            found = version_of(path)
            if found is None:
                return  # created and deleted at once (its deleted event follows), or a folder
            quick = kind == "moved"
            with self._lock:
                if kind == "modified" and self._observers.sees_closes(root):
                    self._writing.add(path)
                elif kind == "closed":
                    self._writing.discard(path)
                    # closed again within the settle time: written in cycles, so let it settle
                    last = self._closed_at.get(path)
                    quick = last is None or now - last >= self._config.settle_seconds
                    self._closed_at[path] = now
            self._consider(path, root, found, now, quick=quick)
        except Exception as exc:  # noqa: BLE001 - an observer thread must not die of one event
            self._log.exception("watcher_error", error=f"{type(exc).__name__}: {exc}")

    def rescan(self, reason: str) -> int:
        """Walk every root and put every candidate file into pending (versions already handed over
        excepted). Returns how many were put; logs rescan_started and rescan_finished."""
        return self._scan(None, reason, self._clock())

    def _scan(self, roots: list[Path] | None, reason: str, now: float) -> int:
        t0 = time.perf_counter()
        full, roots = roots is None, list(self._roots.paths) if roots is None else roots
        self._log.info("rescan_started", reason=reason, roots=len(roots))
        files = added = 0
        seen: set[Path] = set()
        for root in roots:
            for path, found in self._folders.walk(root):
                if self._roots.root_of(path) != root or not self._roots.wanted(path, root):
                    continue  # in a nested root, or filtered
                files += 1
                if full:
                    seen.add(path)
                added += self._consider(path, root, found, now, quick=False)
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
        """The files of a folder that was just created or moved in. A link to a folder comes as
        a created folder too (watchdog reports what it points to), and is never entered."""
        if folder.is_symlink():
            return
        for path, found in self._folders.walk(folder):
            if self._roots.root_of(path) == root and self._roots.wanted(path, root):
                self._consider(path, root, found, now, quick=False)

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

    def _observer_failed(self) -> None:
        """An observer failed to start or died: count it and owe every root a scan."""
        with self._lock:
            self._counts["observer_errors"] += 1
            if (None, "watch_error") not in self._scan_due:
                self._scan_due.append((None, "watch_error"))

    # --- a reloaded config ----------------------------------------------------------------------

    def update_config(self, config: WatchConfig) -> None:
        """Apply a reloaded config: new roots are watched and scanned, removed ones unwatched and
        their pending files dropped; a change of polling settings restarts every observer."""
        config = config.validate()
        now = self._clock()
        self._config = config
        self._roots = Roots.build(config.roots, config.include, config.exclude)
        added, removed, restart = self._observers.update(
            self._roots.paths, polling=config.polling, interval=config.poll_interval_seconds, now=now)
        roots = self._roots
        with self._lock:  # what no longer belongs to a root, or is filtered out now, goes
            for store in (self._pending, self._offered):
                for path in [p for p in store if (r := roots.root_of(p)) is None or not roots.wanted(p, r)]:
                    del store[path]
            if added:
                self._scan_due.append((added, "config_reloaded"))
        self._log.info("watch_config_updated", added=[str(r) for r in added], removed=[str(r) for r in removed],
                       restarted=restart)

    # --- introspection --------------------------------------------------------------------------

    @property
    def observers(self) -> dict[Path, Any]:
        """The running observer of each root (None while one waits to be restarted)."""
        return self._observers.observers

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self._pending), **self._counts}
