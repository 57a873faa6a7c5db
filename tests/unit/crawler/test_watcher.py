"""The watcher: debounce logic driven one step at a time with a fake clock, and real observer
threads (inotify and polling) on tmp_path folders, always stopped and joined."""

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs
from watchdog.observers.polling import PollingObserver

import crawler.watcher as watcher_module
from crawler.watcher import WatchConfig, Watcher
from engine import ConfigError


class Collector:
    """A ready() callback: records (path, root, size at hand-over, time); can refuse like a full queue."""

    def __init__(self, accept: bool = True):
        self.accept = accept
        self.refused = 0
        self.items: list[tuple[Path, Path, int, float]] = []
        self.lock = threading.Lock()

    def __call__(self, path: Path, root: Path) -> bool:
        if not self.accept:
            self.refused += 1
            return False
        with self.lock:
            self.items.append((path, root, os.lstat(path).st_size, time.monotonic()))
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


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


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


def test_hidden_temporary_and_non_regular_files_are_not_offered(tmp_path):
    clock, ready = FakeClock(), Collector()
    w = Watcher(config(tmp_path, settle_seconds=0.1), ready, clock=clock)
    for name in (".hidden", "notes.txt~", "x.part", "y.tmp", ".a.swp", "z.crdownload", ".git/config.txt",
                 "sub/.cache/deep.txt", "keep.txt", "sub/keep2.txt"):
        write(tmp_path / name)
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.txt").symlink_to(tmp_path.parent)  # offered: the ingestor refuses it with a reason
    (tmp_path / "emptydir").mkdir()
    w.rescan("test")
    clock.t += 1
    assert sorted(p.name for p, _ in w.run_once(clock.t)) == ["keep.txt", "keep2.txt", "link.txt"]


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
    with Watcher(config(tmp_path, settle_seconds=60.0), ready) as w:  # only the close makes it ready
        assert wait_for(lambda: w.stats["rescans"] == 1)
        path = write(tmp_path / "doc.txt", "some text")
        assert wait_for(lambda: ready.names == ["doc.txt"], timeout=3.0)
        time.sleep(0.5)
    assert ready.items[0][:3] == (path, tmp_path, 9) and len(ready.items) == 1


def test_file_still_being_written_is_handed_over_after_it_stops_growing(tmp_path):
    ready = Collector()
    with Watcher(config(tmp_path, settle_seconds=0.5), ready):
        path = tmp_path / "growing.log"
        with path.open("w") as f:
            for _ in range(15):  # 1.5 s of appends, flushed each time, the file open throughout
                f.write("line\n")
                f.flush()
                time.sleep(0.1)
            assert ready.items == []
        finished = time.monotonic()
        assert wait_for(lambda: len(ready.items) == 1, timeout=3.0)
        time.sleep(0.3)
    [(_, _, size, at)] = ready.items
    assert size == 75 and at >= finished


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
        time.sleep(0.3)
    assert sorted(ready.names) == sorted(f"f{i}.txt" for i in range(20))


def test_file_deleted_right_after_creation_is_never_handed_over(tmp_path):
    ready = Collector()
    with Watcher(config(tmp_path, settle_seconds=0.2), ready) as w:
        for i in range(30):
            write(tmp_path / f"brief{i}.txt").unlink()
        write(tmp_path / "stays.txt")
        assert wait_for(lambda: "stays.txt" in ready.names)
        time.sleep(0.4)
        assert ready.names == ["stays.txt"] and w.stats["pending"] == 0


def test_file_moved_in_from_outside_the_root_is_ready_at_once(tmp_path):
    root, outside = tmp_path / "inbox", tmp_path / "staging"
    ready = Collector()
    with Watcher(config(root, settle_seconds=60.0), ready) as w:  # created if missing
        assert wait_for(lambda: w.stats["rescans"] == 1)
        source = write(outside / "moved.txt", "payload")
        time.sleep(0.05)
        os.rename(source, root / "moved.txt")
        assert wait_for(lambda: ready.names == ["moved.txt"], timeout=3.0)


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
    make = watcher_module._make_observer

    def failing(polling, interval):
        if not polling:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")
        return make(True, 0.1)

    monkeypatch.setattr(watcher_module, "_make_observer", failing)
    ready = Collector()
    with capture_logs() as logs, Watcher(config(tmp_path, settle_seconds=0.2), ready) as w:
        assert wait_for(lambda: isinstance(w.observers[tmp_path], PollingObserver), timeout=3.0)
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
        time.sleep(0.3)
    assert "unwatched.txt" not in ready.names
    assert {root for _, root, *_ in ready.items} == {second}


def test_a_burst_of_a_thousand_files_is_handed_over_exactly_once_each(tmp_path):
    ready = Collector()
    with Watcher(config(tmp_path, settle_seconds=0.3), ready) as w:
        assert wait_for(lambda: w.stats["rescans"] == 1)
        t0 = time.monotonic()
        for i in range(1000):
            (tmp_path / f"burst{i:04d}.txt").write_text(f"document {i}")
        assert wait_for(lambda: len(ready.items) >= 1000, timeout=5.0)
        elapsed = time.monotonic() - t0
        w.rescan("check")  # a rescan offers nothing already handed over
        time.sleep(0.5)
    assert len(ready.items) == 1000 and len(set(ready.names)) == 1000
    assert elapsed < 5.0 and w.stats["pending"] == 0
