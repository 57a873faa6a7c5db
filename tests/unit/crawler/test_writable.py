import errno
import os
import sqlite3

import pytest
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


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_probe_fails_in_a_folder_that_cannot_be_written(tmp_path):
    assert writable.probe(tmp_path)
    assert not (tmp_path / writable.PROBE_FILE).exists()
    tmp_path.chmod(0o500)
    try:
        assert not writable.probe(tmp_path)
    finally:
        tmp_path.chmod(0o700)
