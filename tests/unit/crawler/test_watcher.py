"""The watcher: debounce logic driven one step at a time with a fake clock, and real observer
threads (inotify and polling) on tmp_path folders, always stopped and joined.

No assertion depends on how fast this machine is: the real-observer tests wait for the
condition that proves the state (the wait's timeout is only a failure guard), a frozen fake
clock proves that a hand-over came from an event and not from settling, and "exactly once" is
checked after the watcher stopped, by a far-future step and a full rescan that must find
nothing more to hand over."""

import errno
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.events import DirCreatedEvent, FileModifiedEvent
from watchdog.observers.polling import PollingObserver

import crawler.ingest.observers as observers_module
from crawler import ConfigError
from crawler.ingest.watcher import OPEN_WRITE_CAP_SECONDS, WatchConfig, Watcher


@pytest.fixture(autouse=True)
def logs_in_memory():
    """Every test logs into memory, whatever an earlier test configured: a command run in an earlier
    test (`crystalline ingest`) may have pointed structlog at a stream pytest has closed since."""
    with capture_logs():
        yield


class Collector:
    """A ready() callback: records (path, root, size at hand-over); can refuse like a full queue."""

    def __init__(self, accept: bool = True):
        self.accept = accept
        self.refused = 0
        self.items: list[tuple[Path, Path, int]] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path, root: Path) -> bool:
        if not self.accept:
            self.refused += 1
            return False
        with self.lock:
            self.items.append((path, root, os.lstat(path).st_size))
        return True

    @property
    def names(self) -> list[str]:
        with self.lock:
            return [p.name for p, *_ in self.items]


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_for(predicate, timeout: float = 20.0) -> bool:
    """Poll until predicate() holds; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def nothing_more(w: Watcher) -> bool:
    """On a stopped watcher: a far-future step and a full rescan hand over nothing more."""
    return w.run_once(1e12) == [] and w.rescan("check") == 0 and w.stats["pending"] == 0


def config(*roots: Path, **kwargs) -> WatchConfig:
    kwargs.setdefault("rescan_interval_seconds", 0.0)
    return WatchConfig(roots=tuple(str(r) for r in roots), **kwargs)


def write(path: Path, text: str = "hello") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"settle_seconds": -1.0}, "settle_seconds (-1.0) must be 0 or more"),
    ({"poll_interval_seconds": 0.0}, "poll_interval_seconds (0.0) must be positive"),
    ({"rescan_interval_seconds": -5.0}, "rescan_interval_seconds (-5.0) must be 0 or more"),
    ({"roots": ()}, "roots (()) must name at least one folder"),
    ({"roots": ("a", "./a")}, "must not repeat a folder"),
    ({"include": ("*.txt", "")}, "include"),
])
def test_config_validation_names_the_setting_and_what_is_allowed(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        WatchConfig(**fields).validate()
    assert WatchConfig().validate() == WatchConfig()


# --- the debouncer, one step at a time ---------------------------------------------------------------

def test_settle_waits_until_size_and_mtime_stop_changing(tmp_path):
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.5), ready, clock=clock)
    path = write(tmp_path / "a.txt", "x")
    assert w.rescan("test") == 1
    for _ in range(5):  # growing: each look sees a new size, so the wait starts again
        clock.t += 0.3
        with path.open("a") as f:
            f.write("more")
        assert w.run_once(clock.t) == []
    last_write, handed = clock.t, []
    while not handed:
        clock.t += 0.2
        handed = w.run_once(clock.t)
    assert handed == [(path, tmp_path)] and ready.items[0][2] == path.stat().st_size == 21
    # two looks settle_seconds apart saw the same (size, mtime): at least settle, at most twice it
    assert 0.5 <= clock.t - last_write <= 1.0 + 0.2
    assert w.run_once(clock.t + 10) == [] and w.rescan("again") == 0  # that version was handed over
    assert w.stats == {"pending": 0, "handed_over": 1, "rescans": 2, "observer_errors": 0}


def test_ready_false_keeps_the_file_pending_and_offers_it_again(tmp_path):
    clock, ready = FakeClock(), Collector(accept=False)
    w = Watcher(config(tmp_path, settle_seconds=0.5), ready, clock=clock)
    write(tmp_path / "a.txt")
    write(tmp_path / "b.txt")
    w.rescan("test")
    clock.t += 1
    assert w.run_once(clock.t) == [] and w.run_once(clock.t + 0.2) == []
    assert ready.refused == 2  # one offer per step: a full queue is not hammered with the rest
    assert w.stats["pending"] == 2
    ready.accept = True
    assert sorted(p.name for p, _ in w.run_once(clock.t + 0.4)) == ["a.txt", "b.txt"]
    assert w.run_once(clock.t + 5) == [] and ready.names.count("a.txt") == 1


def test_vanished_file_is_dropped_silently(tmp_path):
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.5), ready, clock=clock)
    path = write(tmp_path / "gone.txt")
    w.rescan("test")
    path.unlink()
    clock.t += 1
    assert w.run_once(clock.t) == [] and w.stats["pending"] == 0 and ready.items == []


def test_hidden_and_temporary_files_are_not_offered_but_special_files_are(tmp_path):
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.1), ready, clock=clock)
    for name in (".hidden", "notes.txt~", "x.part", "y.tmp", ".a.swp", "z.crdownload", ".git/config.txt",
                 "sub/.cache/deep.txt", "#notes.txt#", ".#notes.txt", "sub/#draft.md#", "keep.txt",
                 "sub/keep2.txt", "#tag", "#"):
        write(tmp_path / name)
    os.mkfifo(tmp_path / "pipe")  # offered, never opened: the ingestor skips it as unsupported
    (tmp_path / "link.txt").symlink_to(tmp_path.parent)  # offered: the ingestor refuses it with a reason
    (tmp_path / "emptydir").mkdir()
    w.rescan("test")
    clock.t += 1
    assert sorted(p.name for p, _ in w.run_once(clock.t)) == ["#", "#tag", "keep.txt", "keep2.txt", "link.txt", "pipe"]
    assert w.rescan("again") == 0, "each is offered once, not on every rescan"


def test_a_file_lstat_may_not_look_at_is_offered_once_as_unreadable(tmp_path, monkeypatch):
    """(Injected: the tests run as root, whom permissions do not stop; the real case, under an
    unprivileged user, is in test_ingest.py.)"""
    locked, unlisted = tmp_path / "locked", tmp_path / "unlisted"
    write(locked / "inside.txt")
    write(unlisted / "hidden_by_it.txt")
    write(tmp_path / "plain.txt")
    real_lstat, real_scandir = os.lstat, os.scandir

    def lstat(path, *args, **kwargs):
        if Path(path).parent == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_lstat(path, *args, **kwargs)

    def scandir(path="."):
        if Path(path) == unlisted:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "lstat", lstat)
    monkeypatch.setattr(os, "scandir", scandir)
    clock = FakeClock()
    w = Watcher(config(tmp_path, settle_seconds=0.1), lambda path, root: True, clock=clock)
    with capture_logs() as logs:
        w.rescan("test")
        clock.t += 1
        assert sorted(p.name for p, _ in w.run_once(clock.t)) == ["inside.txt", "plain.txt"]
        assert w.rescan("again") == 0 and w.run_once(clock.t + 10) == []  # not again on a rescan
        w.handle_event(FileModifiedEvent(str(locked / "inside.txt")))  # an event: no traceback either
        assert w.run_once(clock.t + 20) == []
    unreadable = [e for e in logs if e["event"] == "folder_unreadable"]
    assert len(unreadable) == 1 and unreadable[0]["path"] == str(unlisted) and unreadable[0]["log_level"] == "warning"
    assert not [e for e in logs if e["event"] == "watcher_error"]
    monkeypatch.setattr(os, "scandir", real_scandir)  # readable again: its files are found
    w.rescan("fixed")
    assert [p.name for p, _ in w.run_once(clock.t + 30)] == ["hidden_by_it.txt"]


def test_reoffer_hands_a_file_over_again_at_the_next_step(tmp_path):
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.5), ready, clock=clock)
    path = write(tmp_path / "a.txt")
    w.rescan("test")
    clock.t += 1
    assert w.run_once(clock.t) == [(path, tmp_path)]
    assert w.rescan("again") == 0 and w.run_once(clock.t + 1) == []
    w.reoffer([(path, tmp_path), (tmp_path / "gone.txt", tmp_path)])  # a vanished one is forgotten quietly
    assert w.run_once(clock.t + 1) == [(path, tmp_path)] and ready.names == ["a.txt", "a.txt"]
    assert w.stats["pending"] == 0


def test_include_and_exclude_globs(tmp_path):
    clock, ready = FakeClock(), Collector()
    cfg = config(tmp_path, settle_seconds=0.1, include=("*.txt", "*.md"), exclude=("draft_*", "archive/*"))
    w = Watcher(cfg, ready, clock=clock)
    for name in ("a.txt", "b.md", "c.pdf", "draft_d.txt", "archive/e.txt", "sub/f.md", "sub/draft_g.md"):
        write(tmp_path / name)
    w.rescan("test")
    clock.t += 1
    assert sorted(p.name for p, _ in w.run_once(clock.t)) == ["a.txt", "b.md", "f.md"]


# --- real observers ---------------------------------------------------------------------------------

def test_file_created_and_closed_is_handed_over_once_without_waiting_to_settle(tmp_path):
    ready = Collector()
    # the clock never moves, so nothing can settle: only the close event makes the file ready
    with Watcher(config(tmp_path, settle_seconds=60.0), ready, clock=FakeClock()) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        path = write(tmp_path / "doc.txt", "some text")
        assert wait_for(lambda: ready.names == ["doc.txt"])
    assert nothing_more(w)
    assert ready.items == [(path, tmp_path, 9)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="close-after-write events are inotify's")
def test_a_file_open_for_writing_waits_for_its_close_however_long_the_writer_pauses(tmp_path):
    ready, clock = Collector(), FakeClock()
    path = tmp_path / "growing.log"
    with Watcher(config(tmp_path, settle_seconds=0.5), ready, clock=clock) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        with path.open("w") as f:
            for i in range(1, 16):  # appends, flushed each time, the file open throughout
                f.write("line\n")
                f.flush()
                # the write's own event (a late `created` event may report the new size first)
                assert wait_for(lambda: path in w._writing and w._pending.get(path) is not None
                                and w._pending[path].size == 5 * i)
                clock.t += 5.0  # a writer pausing ten times the settle time between writes
                assert w.run_once(clock.t) == []
        assert wait_for(lambda: len(ready.items) == 1)  # the close makes it ready at once
    assert nothing_more(w)
    assert [size for _, _, size in ready.items] == [75]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="close-after-write events are inotify's")
def test_a_file_closed_and_written_again_within_the_settle_time_is_still_being_written(tmp_path):
    ready, clock = Collector(), FakeClock()
    path = tmp_path / "cycles.log"

    def append(text: str) -> None:  # what `>>` does: open, append, close
        with path.open("a") as f:
            f.write(text)

    with Watcher(config(tmp_path, settle_seconds=2.0), ready, clock=clock) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        append("line 00\n")  # a single write-and-close: ready at the next step, the clock frozen
        assert wait_for(lambda: len(ready.items) == 1)
        for i in range(1, 20):  # then 19 more cycles, 0.5 s apart: closed again within the settle time
            clock.t += 0.5
            append(f"line {i:02d}\n")
            size = 8 * (i + 1)  # this cycle's events seen: its write (the size), then its close
            assert wait_for(lambda: path not in w._writing and (
                (w._pending.get(path) is not None and w._pending[path].size == size)
                or any(s == size for *_, s in ready.items)))
            assert w.run_once(clock.t) == []  # not ready at its close: still being written
        assert len(ready.items) == 1
        clock.t += 2.0  # quiet for the settle time: handed over once, whole
        assert wait_for(lambda: len(ready.items) == 2)
        clock.t += 2.0  # long after the last close, a single write-and-close is quick again
        append("one more\n")
        assert wait_for(lambda: len(ready.items) == 3)
    assert nothing_more(w)
    assert [size for _, _, size in ready.items] == [8, 160, 169]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="close-after-write events are inotify's")
def test_a_file_left_open_is_handed_over_after_the_cap_without_a_change(tmp_path):
    ready, clock = Collector(), FakeClock()
    path = tmp_path / "held.log"
    with Watcher(config(tmp_path, settle_seconds=0.5), ready, clock=clock) as w, path.open("w") as f:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        f.write("a line\n")
        f.flush()
        assert wait_for(lambda: path in w._writing and w._pending.get(path) is not None)
        clock.t += OPEN_WRITE_CAP_SECONDS - 1
        assert w.run_once(clock.t) == []
        clock.t += 1
        assert w.run_once(clock.t) == [(path, tmp_path)]


def test_polling_sees_no_closes_so_a_modified_file_settles_as_before(tmp_path):
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.5, polling=True), ready, clock=clock)
    path = write(tmp_path / "a.txt", "x")
    w.handle_event(FileModifiedEvent(str(path)))
    assert path not in w._writing
    clock.t += 0.5
    assert w.run_once(clock.t) == [(path, tmp_path)]


def test_files_present_before_start_are_found_by_the_initial_scan(tmp_path):
    for i in range(5):
        write(tmp_path / f"old{i}.txt")
    write(tmp_path / "deep/er/old.txt")
    ready = Collector()
    with capture_logs() as logs, Watcher(config(tmp_path, settle_seconds=0.1), ready):
        assert wait_for(lambda: len(ready.items) == 6)
    assert {"event": "rescan_finished", "reason": "start"}.items() <= next(
        e for e in logs if e["event"] == "rescan_finished").items()


def test_new_subfolder_with_files_written_right_after_mkdir(tmp_path):
    ready = Collector()
    with Watcher(config(tmp_path, settle_seconds=0.2), ready) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        folder = tmp_path / "new" / "nested"
        folder.mkdir(parents=True)
        for i in range(20):
            (folder / f"f{i}.txt").write_text(str(i))
        assert wait_for(lambda: len(ready.items) == 20)
    assert nothing_more(w)
    assert sorted(ready.names) == sorted(f"f{i}.txt" for i in range(20))


def test_file_deleted_right_after_creation_is_never_handed_over(tmp_path):
    ready = Collector(accept=False)  # refuses while the brief files exist: none can slip through
    with Watcher(config(tmp_path, settle_seconds=0.2), ready) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        for i in range(30):
            write(tmp_path / f"brief{i}.txt").unlink()
        ready.accept = True
        write(tmp_path / "stays.txt")
        assert wait_for(lambda: "stays.txt" in ready.names and w.stats["pending"] == 0)
    assert nothing_more(w)
    assert ready.names == ["stays.txt"]


def test_file_moved_in_from_outside_the_root_is_ready_at_once(tmp_path):
    root, outside = tmp_path / "inbox", tmp_path / "staging"
    ready = Collector()
    source = write(outside / "moved.txt", "payload")
    # created if missing; the clock never moves, so only the move event can make the file ready
    with Watcher(config(root, settle_seconds=60.0), ready, clock=FakeClock()) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        os.rename(source, root / "moved.txt")
        assert wait_for(lambda: ready.names == ["moved.txt"])
    assert nothing_more(w)


def test_polling_mode(tmp_path):
    ready = Collector()
    cfg = config(tmp_path, polling=True, poll_interval_seconds=0.1, settle_seconds=0.3)
    with Watcher(cfg, ready) as w:
        assert isinstance(w.observers[tmp_path], PollingObserver)
        assert wait_for(lambda: w.stats["rescans"] == 1)
        write(tmp_path / "sub" / "polled.txt")
        assert wait_for(lambda: ready.names == ["polled.txt"])
    assert w.stats["rescans"] == 1  # found by the poll, not by a rescan


def test_a_killed_observer_is_detected_restarted_and_followed_by_a_rescan(tmp_path):
    ready = Collector()
    with capture_logs() as logs, Watcher(config(tmp_path, settle_seconds=0.2), ready) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        dead = w.observers[tmp_path]
        dead.stop()  # behind the watcher's back, as a watch-limit error would
        dead.join()
        write(tmp_path / "while_dead.txt")
        assert wait_for(lambda: "while_dead.txt" in ready.names)
        assert w.stats["observer_errors"] == 1 and w.stats["rescans"] == 2
        fresh = w.observers[tmp_path]
        assert fresh is not dead and fresh.is_alive()
        write(tmp_path / "after.txt")  # the new observer delivers events
        assert wait_for(lambda: "after.txt" in ready.names)
    assert any(e["event"] == "watch_failed" and e["log_level"] == "error" for e in logs)
    assert any(e["event"] == "rescan_started" and e["reason"] == "watch_error" for e in logs)


def test_repeated_watch_failures_fall_back_to_polling(tmp_path, monkeypatch):
    make = observers_module._make_observer

    def failing(polling, interval):
        if not polling:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return make(True, 0.1)

    monkeypatch.setattr(observers_module, "_make_observer", failing)
    ready = Collector()
    with capture_logs() as logs, Watcher(config(tmp_path, settle_seconds=0.2), ready) as w:
        assert wait_for(lambda: isinstance(w.observers[tmp_path], PollingObserver))
        assert w.stats["observer_errors"] == 3
        write(tmp_path / "late.txt")
        assert wait_for(lambda: ready.names == ["late.txt"])
    failed = [e for e in logs if e["event"] == "watch_failed"]
    assert "inotify watch limit reached" in failed[0]["error"]
    assert any(e["event"] == "watch_fell_back" for e in logs)


def test_update_config_adds_a_new_root_and_removes_an_old_one(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    ready = Collector()
    with Watcher(config(first, settle_seconds=0.2), ready) as w:
        write(second / "already_there.txt")
        w.update_config(config(first, second, settle_seconds=0.2))
        assert wait_for(lambda: "already_there.txt" in ready.names)
        write(second / "later.txt")
        assert wait_for(lambda: "later.txt" in ready.names)
        w.update_config(config(second, settle_seconds=0.2))
        assert set(w.observers) == {second}
        write(first / "unwatched.txt")
        write(second / "watched.txt")
        assert wait_for(lambda: "watched.txt" in ready.names)
    assert nothing_more(w)  # the first root's observer was retired: nothing of it is pending
    assert "unwatched.txt" not in ready.names
    assert {root for _, root, *_ in ready.items} == {second}


def test_a_burst_of_a_thousand_files_is_handed_over_exactly_once_each(tmp_path):
    ready = Collector()
    with Watcher(config(tmp_path, settle_seconds=0.3), ready) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        for i in range(1000):
            (tmp_path / f"burst{i:04d}.txt").write_text(f"document {i}")
        assert wait_for(lambda: len(ready.items) >= 1000 and w.stats["pending"] == 0, timeout=60.0)
    assert nothing_more(w)  # a rescan offers nothing already handed over
    assert len(ready.items) == 1000 and len(set(ready.names)) == 1000


def test_a_file_reached_through_a_symlinked_folder_is_no_candidate(tmp_path):
    """A linked folder is never entered: not by the walk, nor by an event for a path through it
    (watchdog's inotify watches what a newly created link to a folder points to)."""
    from crawler.ingest.candidates import Roots

    root = tmp_path / "inbox"
    (root / "real" / "deep").mkdir(parents=True)
    (root / "real" / "deep" / "x.txt").write_text("text")
    (root / "link").symlink_to("real")
    roots = Roots.build([str(root)])
    assert roots.root_of(root / "real" / "deep" / "x.txt") == root
    assert roots.root_of(root / "link" / "deep" / "x.txt") is None
    assert roots.root_of(root / "link") == root  # the link itself is offered, and skipped as a folder


def test_a_link_to_a_folder_created_in_a_watched_folder_is_not_entered(tmp_path):
    """The event for a new link to a folder is a created folder, as for a new folder: the files
    behind the link are not offered (the desk's python3.11-doc has two such links, each to the
    whole HTML manual); the files of a real new folder are."""
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.5, polling=True), ready, clock=clock)
    write(tmp_path / "real" / "deep" / "x.txt", "text")
    (tmp_path / "link").symlink_to("real")
    w.handle_event(DirCreatedEvent(str(tmp_path / "link")))
    clock.t += 0.5
    assert w.run_once(clock.t) == []
    w.handle_event(DirCreatedEvent(str(tmp_path / "real")))
    clock.t += 0.5
    assert w.run_once(clock.t) == [(tmp_path / "real" / "deep" / "x.txt", tmp_path)]
