"""The daemon lock (across processes, and after kill -9), health.json (in place when it cannot be
replaced), and check_health (a full disk, a read-only state, an inbox that cannot be watched)."""

import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import structlog
from structlog.testing import capture_logs

from crawler.state.health import (
    FIELDS,
    HEALTH_FILE,
    LOCK_FILE,
    DaemonAlreadyRunning,
    DaemonLock,
    HealthFile,
    check_health,
    lock_holder,
    process_stats,
    read_health,
    root_problem,
    state_dir_problem,
    utc_iso,
)
from crawler.state.writable import PROBE_BYTES, WriteState

# A stand-in daemon: takes the lock, reports "ready", says so, then waits to be killed.
HOLDER = textwrap.dedent("""
    import sys
    from crawler.state.health import DaemonLock, HealthFile
    lock = DaemonLock(sys.argv[1])
    lock.acquire()
    HealthFile(sys.argv[1]).write({"state": "ready", "step": 3})
    print("locked", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def holder(tmp_path):
    """A subprocess holding tmp_path/state/daemon.lock: (state_dir, process)."""
    state = tmp_path / "state"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(state)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield state, process
    finally:
        process.kill()
        process.wait(timeout=10)
        process.stdin.close()
        process.stdout.close()


# ---------------------------------------------------------------------------------------------
# the lock


def test_acquire_writes_our_pid_and_release_frees_the_lock(tmp_path):
    state = tmp_path / "new" / "state"
    assert lock_holder(state) is None and not state.exists()  # probing creates nothing
    with DaemonLock(state) as lock:
        assert lock.held
        assert (state / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert lock_holder(state) == os.getpid()
    assert not lock.held
    assert lock_holder(state) is None
    assert (state / LOCK_FILE).exists()  # the file stays; only the lock matters
    lock.release()  # idempotent


def test_second_daemon_in_another_process_fails_naming_the_holder(holder):
    state, process = holder
    assert lock_holder(state) == process.pid
    with pytest.raises(DaemonAlreadyRunning) as caught:
        DaemonLock(state).acquire()
    assert caught.value.pid == process.pid
    assert f"pid {process.pid}" in str(caught.value) and str(state / LOCK_FILE) in str(caught.value)


def test_a_lock_file_left_by_kill_9_is_not_a_running_daemon(holder):
    state, process = holder
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    # the file still names the dead daemon, and its health.json still says "ready"...
    assert (state / LOCK_FILE).read_text().strip() == str(process.pid)
    assert read_health(state)["state"] == "ready"
    # ...but the kernel released the flock with the process
    assert lock_holder(state) is None
    healthy, reason, report = check_health(state, max_age_s=60)
    assert not healthy and reason == f"no daemon holds {state / LOCK_FILE}"
    assert report["lock_pid"] is None and report["pid"] == process.pid
    with DaemonLock(state):  # a new daemon starts without ceremony
        assert lock_holder(state) == os.getpid()


def test_a_live_daemon_in_another_process_is_healthy(holder):
    state, process = holder
    healthy, reason, report = check_health(state, max_age_s=60)
    assert healthy, reason
    assert reason == f"daemon (pid {process.pid}) is ready at step 3"
    assert report["lock_pid"] == process.pid and report["state"] == "ready"
    assert 0 <= report["age_s"] < 60


def test_a_second_lock_in_the_same_process_also_conflicts(tmp_path):
    with DaemonLock(tmp_path):
        with pytest.raises(DaemonAlreadyRunning) as caught:
            DaemonLock(tmp_path).acquire()
    assert caught.value.pid == os.getpid()


def test_acquire_tolerates_a_status_probe_in_progress(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")
    probe = os.open(tmp_path / LOCK_FILE, os.O_RDONLY)
    fcntl.flock(probe, fcntl.LOCK_SH)  # what lock_holder holds for an instant
    waits = []

    def sleep(seconds):  # the probe ends during acquire's first wait
        waits.append(seconds)
        os.close(probe)

    lock = DaemonLock(tmp_path, sleep=sleep)
    lock.acquire()
    assert len(waits) == 1 and lock_holder(tmp_path) == os.getpid()
    lock.release()


def test_a_holder_that_has_not_written_its_pid_yet(tmp_path):
    (tmp_path / LOCK_FILE).write_text("")
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert lock_holder(tmp_path, pid_wait_s=0.05) == 0
        with pytest.raises(DaemonAlreadyRunning, match="pid not yet written") as caught:
            DaemonLock(tmp_path).acquire()
        assert caught.value.pid is None
        healthy, reason, _ = check_health(tmp_path, max_age_s=60)
        assert not healthy and "has not written" in reason
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# health.json


def test_health_file_holds_every_field_in_order(tmp_path):
    clock = iter([1_700_000_000.0, 1_700_000_030.5])
    health = HealthFile(tmp_path, clock=lambda: next(clock))
    written = health.write({"state": "ready", "step": 12, "loss": 2.5, "queue_documents": 4,
                            "last_error": None, "extra": "kept"})
    on_disk = json.loads((tmp_path / HEALTH_FILE).read_text())
    assert on_disk == written == read_health(tmp_path)
    assert list(on_disk)[: len(FIELDS)] == list(FIELDS) and on_disk["extra"] == "kept"
    assert on_disk["pid"] == os.getpid()
    assert on_disk["started_at"] == "2023-11-14T22:13:20.000+00:00"
    assert on_disk["updated_at"] == "2023-11-14T22:13:50.500+00:00"
    assert on_disk["state"] == "ready" and on_disk["step"] == 12 and on_disk["loss"] == 2.5
    assert on_disk["tokens_per_s"] is None and on_disk["last_error"] is None
    assert on_disk["rss_mb"] > 1 and on_disk["threads"] >= 1  # measured when not given
    assert sorted(p.name for p in tmp_path.iterdir()) == [HEALTH_FILE]  # no temp file left


def test_health_file_is_replaced_and_checks_its_state(tmp_path):
    health = HealthFile(tmp_path)
    health.write({"state": "starting"})
    health.write({"state": "stopping", "rss_mb": 7.0, "threads": 3})
    data = read_health(tmp_path)
    assert data["state"] == "stopping" and data["rss_mb"] == 7.0 and data["threads"] == 3
    with pytest.raises(ValueError, match="state .'running'. must be one of starting, ready, stopping"):
        health.write({"state": "running"})
    with pytest.raises(OSError):
        HealthFile(tmp_path / "missing").write({"state": "ready"})
    assert read_health(tmp_path)["state"] == "stopping"


def test_process_stats_reads_proc_in_mb_of_a_million_bytes(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  9999 kB\nVmRSS:\t  2048 kB\nThreads:\t7\n")
    assert process_stats(status) == {"rss_mb": 2.1, "threads": 7}  # 2048 KiB = 2,097,152 bytes
    fallback = process_stats(tmp_path / "missing")  # not Linux: the peak, and Python's threads
    assert fallback["rss_mb"] > 1 and fallback["threads"] >= 1
    assert 1 <= process_stats()["rss_mb"] <= fallback["rss_mb"] + 1  # the current, at most the peak


def test_times_are_iso_in_utc_to_the_millisecond():
    assert utc_iso(1_700_000_030.5) == "2023-11-14T22:13:50.500+00:00"
    assert utc_iso(0.0001) == "1970-01-01T00:00:00.000+00:00"


def test_read_health_of_missing_or_broken_files(tmp_path):
    assert read_health(tmp_path) is None
    (tmp_path / HEALTH_FILE).write_text("{not json")
    assert read_health(tmp_path) is None
    (tmp_path / HEALTH_FILE).write_text("[1, 2]")
    assert read_health(tmp_path) is None


# ---------------------------------------------------------------------------------------------
# check_health, one reason at a time (this process plays the daemon)

NOW = 1_700_000_000.0


@pytest.fixture
def daemon(tmp_path):
    with DaemonLock(tmp_path):
        yield tmp_path, HealthFile(tmp_path, clock=lambda: NOW)


def test_check_health_without_a_daemon(tmp_path):
    healthy, reason, report = check_health(tmp_path, max_age_s=60, now=NOW)
    assert (healthy, reason) == (False, f"no daemon holds {tmp_path / LOCK_FILE}")
    assert report == {"lock_pid": None, "age_s": None}


def test_check_health_before_the_first_report(daemon):
    state, _ = daemon
    healthy, reason, _ = check_health(state, max_age_s=60, now=NOW)
    assert not healthy
    assert reason == f"daemon (pid {os.getpid()}) has not written {state / HEALTH_FILE} yet"


def test_check_health_of_a_report_from_an_earlier_daemon(daemon):
    state, health = daemon
    health.write({"state": "ready", "pid": 999_999_999})
    healthy, reason, _ = check_health(state, max_age_s=60, now=NOW)
    assert not healthy
    assert reason == f"health.json was written by pid 999999999, not by the daemon holding the lock (pid {os.getpid()})"


def test_check_health_of_a_stale_report(daemon):
    state, health = daemon
    health.write({"state": "ready"})
    healthy, reason, report = check_health(state, max_age_s=60, now=NOW + 95)
    assert (healthy, reason) == (False, "health.json is 95 s old (limit 60 s)")
    assert report["age_s"] == 95.0


@pytest.mark.parametrize("state_name", ["starting", "stopping"])
def test_check_health_of_a_daemon_not_ready(daemon, state_name):
    state, health = daemon
    health.write({"state": state_name})
    assert check_health(state, max_age_s=60, now=NOW + 1)[:2] == (False, f"daemon is {state_name}")


def test_check_health_of_a_ready_daemon(daemon):
    state, health = daemon
    health.write({"state": "ready", "step": 40, "tokens_trained": 81920})
    healthy, reason, report = check_health(state, max_age_s=60, now=NOW + 59)
    assert healthy and reason == f"daemon (pid {os.getpid()}) is ready at step 40"
    assert report["tokens_trained"] == 81920 and report["lock_pid"] == os.getpid()
    assert report["age_s"] == 59.0


# ---------------------------------------------------------------------------------------------
# when the state cannot be written: health.json in place, and a check that looks for itself


def refuse_replace(monkeypatch, error=errno.ENOSPC):
    def replace(src, dst):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr("crawler.state.health.os.replace", replace)


def test_health_is_rewritten_in_place_when_the_replace_fails(tmp_path, monkeypatch):
    writes = WriteState(tmp_path, structlog.get_logger())
    health = HealthFile(tmp_path, writes=writes)
    health.write({"state": "ready", "step": 1})
    refuse_replace(monkeypatch)
    with capture_logs() as logs:
        health.write({"state": "ready", "step": 2, "blocked": "disk_full"})
        health.write({"state": "ready", "step": 3, "blocked": "disk_full"})
    data = read_health(tmp_path)
    assert (data["step"], data["blocked"]) == (3, "disk_full")
    assert writes.blocked == "disk_full"
    assert [(e["event"], e["part"]) for e in logs] == [("disk_full", "health")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [HEALTH_FILE], "no temp file left"


def test_health_raises_the_first_error_when_it_cannot_be_written_either_way(tmp_path, monkeypatch):
    refuse_replace(monkeypatch, errno.EROFS)
    with pytest.raises(OSError) as info:  # no health.json to rewrite: creating one needs a block
        HealthFile(tmp_path).write({"state": "ready"})
    assert info.value.errno == errno.EROFS and not (tmp_path / HEALTH_FILE).exists()


def can_mount_tmpfs(path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_on_a_really_full_disk_health_is_rewritten_and_the_check_says_disk_full(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    if not can_mount_tmpfs(state):
        pytest.skip("needs root and mount(8) for a 1 MiB tmpfs (the monkeypatched variant above always runs)")
    try:
        with DaemonLock(state):
            writes = WriteState(state, structlog.get_logger())
            health = HealthFile(state, writes=writes)
            health.write({"state": "ready", "step": 1})
            fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                with pytest.raises(OSError) as full:
                    while True:
                        os.write(fd, b"\0" * 4096)
                assert full.value.errno == errno.ENOSPC
            finally:
                os.close(fd)
            with capture_logs():
                health.write({"state": "ready", "step": 2, "blocked": writes.blocked})
            assert writes.blocked == "disk_full" and read_health(state)["step"] == 2
            healthy, reason, _ = check_health(state, max_age_s=60)
            assert not healthy and reason.startswith("disk_full: ") and str(state) in reason
    finally:
        subprocess.run(["umount", str(state)], check=True)


class FakeStatvfs:
    def __init__(self, free: int, flag: int = 0):
        self.f_bavail = self.f_bfree = free // 4096
        self.f_frsize, self.f_flag = 4096, flag


def test_check_health_sees_a_full_disk_without_the_daemons_word(daemon, monkeypatch):
    state, health = daemon
    health.write({"state": "ready", "step": 5})
    monkeypatch.setattr("crawler.state.health.os.statvfs", lambda path: FakeStatvfs(free=8192))
    healthy, reason, _ = check_health(state, max_age_s=60, now=NOW + 500)  # the report is stale too
    assert not healthy
    assert reason == (f"disk_full: 8192 bytes free on the file system of {state}, the daemon needs at least "
                      f"{PROBE_BYTES}; free space on the state directory's file system; ingest and checkpoints "
                      "resume by themselves")


def test_check_health_sees_a_read_only_state_directory(daemon, monkeypatch):
    state, health = daemon
    health.write({"state": "ready"})
    monkeypatch.setattr("crawler.state.health.os.statvfs", lambda path: FakeStatvfs(free=1 << 30, flag=os.ST_RDONLY))
    healthy, reason, _ = check_health(state, max_age_s=60, now=NOW)
    assert not healthy and reason.startswith(f"state_unwritable: {state} is on a read-only file system; make ")


def test_state_dir_problem_of_a_writable_folder_is_none(tmp_path):
    assert state_dir_problem(tmp_path) is None


def test_check_health_reports_the_block_the_daemon_wrote(daemon):
    state, health = daemon
    health.write({"state": "ready", "blocked": "state_unwritable", "blocked_parts": {"checkpoint": "OSError: ..."}})
    healthy, reason, _ = check_health(state, max_age_s=60, now=NOW)
    assert not healthy
    assert reason.startswith(f"state_unwritable: writes to {state} fail (checkpoint); make the state directory")


def test_check_health_reports_an_inbox_that_cannot_be_watched(daemon):
    state, health = daemon
    health.write({"state": "ready", "unwatched_roots": {"/dev/null": "is a character device, not a folder",
                                                        "/srv/x": "does not exist"}})
    healthy, reason, _ = check_health(state, max_age_s=60, now=NOW)
    assert not healthy
    assert reason == ("watch root /dev/null is a character device, not a folder (and 1 more); "
                      "set [watch] roots (CRYSTALLINE_WATCH_ROOTS) to folders the daemon can read")


def test_root_problem_names_what_is_wrong(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "inbox").mkdir()
    assert root_problem(tmp_path / "inbox") is None
    assert root_problem("/dev/null") == "is a character device, not a folder"
    assert root_problem(tmp_path / "file.txt") == "is a regular file, not a folder"
    assert root_problem("/dev/null/inbox") == "does not exist and cannot be created: /dev/null is not a folder"
    assert root_problem(tmp_path / "file.txt" / "a" / "b") == (
        f"does not exist and cannot be created: {tmp_path / 'file.txt'} is not a folder")
    assert root_problem(tmp_path / "new" / "inbox") == "does not exist"
