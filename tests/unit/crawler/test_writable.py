"""crawler.state.writable: which errors mean a full disk or an unwritable state directory, one
log line per blocked part until a probe clears it, and the probe itself on real folders (run as
nobody, whom a folder's mode stops where it would not stop root)."""

import errno
import json
import sqlite3

import sqlalchemy as sa
from structlog.testing import capture_logs

from crawler.logging import get_logger
from crawler.state import writable
from crawler.state.writable import DISK_FULL, STATE_UNWRITABLE, WriteState, classify


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_classify_reads_errnos_driver_errors_and_causes():
    assert classify(OSError(errno.ENOSPC, "No space left on device")) == DISK_FULL
    assert classify(OSError(errno.EROFS, "Read-only file system")) == STATE_UNWRITABLE
    assert classify(OSError(errno.ENOENT, "gone")) is None
    assert classify(ValueError("bad")) is None
    wrapped = sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    assert classify(wrapped) == DISK_FULL
    readonly = sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("attempt to write a readonly database"))
    assert classify(readonly) == STATE_UNWRITABLE
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("checkpoint failed") from inner
    except RuntimeError as outer:
        assert classify(outer) == DISK_FULL


def test_a_block_is_logged_once_per_part_and_cleared_by_a_probe(tmp_path, monkeypatch):
    clock = Clock()
    state = WriteState(tmp_path, get_logger("test"), clock=clock, recheck_seconds=10)
    full = OSError(errno.ENOSPC, "No space left on device")
    with capture_logs() as logs:
        assert state.report("ingest", full)
        assert state.report("ingest", full)
        assert state.report("checkpoint", full)
        assert not state.report("ingest", ValueError("not a write block"))
    assert [(e["event"], e["part"]) for e in logs] == [("disk_full", "ingest"), ("disk_full", "checkpoint")]
    assert state.blocked == DISK_FULL and state.generation == 0
    assert state.snapshot()["parts"].keys() == {"ingest", "checkpoint"}

    monkeypatch.setattr(writable, "probe", lambda d: False)
    clock.now += 10
    assert not state.recheck(clock.now)
    monkeypatch.setattr(writable, "probe", lambda d: True)
    clock.now += 5
    assert not state.recheck(clock.now)  # not due yet: checked at most every recheck_seconds
    clock.now += 5
    with capture_logs() as logs:
        assert state.recheck(clock.now)
    assert logs[0]["event"] == "state_writable" and logs[0]["was"] == DISK_FULL and logs[0]["blocked_s"] == 20.0
    assert state.blocked is None and state.generation == 1
    assert state.snapshot() == {"blocked": None}


def test_probe_fails_in_a_folder_that_cannot_be_written(as_nobody):
    """Probed by a user whom permissions stop (root writes into a read-only folder anyway:
    tests/conftest.py's `as_nobody`): True in a folder open to all, False in one of mode 555,
    and no probe file left in either."""
    open_to_all, read_only = as_nobody.folder / "open", as_nobody.folder / "read-only"
    for folder, mode in ((open_to_all, 0o777), (read_only, 0o555)):
        folder.mkdir()
        folder.chmod(mode)
    out = as_nobody.run("print(json.dumps([writable.probe(path) for path in sys.argv[1:]]))",
                        open_to_all, read_only, prepare="from crawler.state import writable")
    assert json.loads(out) == [True, False]
    assert not (open_to_all / writable.PROBE_FILE).exists() and not (read_only / writable.PROBE_FILE).exists()
