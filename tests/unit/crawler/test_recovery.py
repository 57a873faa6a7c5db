"""Recovery without a restart: when the state directory becomes writable again, the files that
arrived while it was read-only are stored, as they are after a full disk.

The trap is SQLite's: a connection opened while the database cannot be opened for writing is
opened read-only, and stays so. The daemon's WriteState renews the store's connections
(Daemon._renew_store_connections, its on_clear) before any writer retries. The tests run as
root, whom file modes do not stop, so the read-only state is injected: the writability probe
fails, and new connections open read-only, as SQLite opens them by itself on a read-only file.
One step at a time, on an injected clock.
"""

import queue as queue_module
from pathlib import Path

import sqlalchemy as sa
import structlog
from structlog.testing import capture_logs

from crawler.config import Config
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.ingest.watcher import WatchConfig, Watcher
from crawler.service.supervisor import Daemon
from crawler.state import writable
from crawler.state.writable import STATE_UNWRITABLE, WriteState
from storage import CorpusQueue, StorageConfig, open_database


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class ReadOnlyOpens:
    """While `on`, the database's new connections are opened read-only (SQLite's `mode=ro`): what
    SQLite does by itself when the file may not be written. Connections already open stay as
    they are, as real ones do."""

    def __init__(self, database):
        self.on = False
        path = database.engine.url.database

        @sa.event.listens_for(database.engine, "do_connect")
        def connect(dialect, record, cargs, cparams):
            if self.on:
                cargs[:] = [f"file:{path}?mode=ro"]
                cparams["uri"] = True


def events(logs, name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_a_block_clears_only_after_on_clear_has_run(tmp_path, monkeypatch):
    seen = []
    clock = FakeClock()
    writes = WriteState(tmp_path, structlog.get_logger(), clock=clock, recheck_seconds=10.0,
                        on_clear=lambda: seen.append((writes.blocked, writes.generation)))
    assert writes.report("ingest", OSError(30, "Read-only file system"))
    monkeypatch.setattr(writable, "probe", lambda state_dir: False)
    clock.t += 10
    assert not writes.recheck(clock.t) and seen == []  # still read-only: nothing renewed
    monkeypatch.setattr(writable, "probe", lambda state_dir: True)
    clock.t += 10
    assert writes.recheck(clock.t)
    assert seen == [(STATE_UNWRITABLE, 0)]  # renewed while writers still saw the block
    assert (writes.blocked, writes.generation) == (None, 1)
    assert writes.recheck(clock.t + 10) and len(seen) == 1  # not blocked: nothing to renew


def test_files_that_arrive_while_the_state_is_read_only_are_stored_once_it_is_writable(tmp_path, monkeypatch):
    state, inbox_dir = tmp_path / "state", tmp_path / "inbox"
    state.mkdir()
    inbox_dir.mkdir()
    clock = FakeClock()
    daemon = Daemon(Config(state_dir=state), {}, clock=clock)
    database = open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}").validate())
    read_only = ReadOnlyOpens(database)
    daemon.database, daemon.tokenizer, daemon.inbox = database, ByteTokenizer(), queue_module.Queue()
    worker = daemon.make_worker("ingest")  # the real IngestWorker, sharing the daemon's WriteState
    worker.initialize()
    watcher = Watcher(WatchConfig(roots=(str(inbox_dir),), settle_seconds=0.5, rescan_interval_seconds=0),
                      lambda path, root: daemon.inbox.put_nowait((path, root)) or True, clock=clock)

    def step() -> None:
        watcher.rescan("test")
        clock.t += 1
        watcher.run_once(clock.t)
        while not daemon.inbox.empty() or worker.held:
            if worker.run_once(clock.t):  # paused: writes are blocked
                break

    def arrive(*names: str) -> list[Path]:
        for name in names:
            (inbox_dir / name).write_text(f"the text of {name}\n")
        return [inbox_dir / name for name in names]

    trainer = None
    try:
        with capture_logs() as logs:
            arrive("before.txt")
            step()
            # the state turns read-only; the trainer holds a connection meanwhile, so the ingest
            # worker's next one is opened now: read-only, for good
            trainer = database.engine.connect()
            read_only.on = True
            monkeypatch.setattr(writable, "probe", lambda state_dir: False)
            arrive("during1.txt", "during2.txt")
            step()
            assert daemon.writes.blocked == STATE_UNWRITABLE and len(worker.held) == 2
            arrive("later.txt")  # arrives while ingest is paused
            step()
            # writable again: the next re-check clears the block and the held files are retried
            read_only.on = False
            monkeypatch.setattr(writable, "probe", lambda state_dir: True)
            clock.t += daemon.writes.recheck_seconds
            step()
        ingested = sorted(Path(e["path"]).name for e in events(logs, "file_ingested"))
        assert ingested == ["before.txt", "during1.txt", "during2.txt", "later.txt"]
        assert len(events(logs, STATE_UNWRITABLE)) == 1 and len(events(logs, "state_writable")) == 1
        assert daemon.writes.blocked is None and worker.held == []
        assert CorpusQueue(database).stats().documents["queued"] == 4
    finally:
        if trainer is not None:
            trainer.close()
        database.close()
