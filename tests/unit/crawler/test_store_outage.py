"""A store that does not answer for now (locked, gone, full) fails no file and kills no worker:
the daemon holds what was in flight, retries with backoff and says `store unavailable` in
health until it answers; at start it waits a bounded time. A broken store is refused in one
line. The CLI ends either in one line naming the cause and the way out, with exit 75 (transient)
or 74 (broken).

The faults are real, as in tests/unit/storage/test_store_errors.py: another SQLite connection
holding the lock past a tiny busy timeout, `PRAGMA max_page_count`, a table dropped under the
store, a PostgreSQL relay cut (tests/conftest.py), a trigger raising SQLSTATE 53100. The daemon
runs on an injected clock, one run_once and one tick at a time; the only threads are the ones a
WorkerThread test starts and joins.
"""

from __future__ import annotations

import dataclasses
import queue as queue_module
import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog
from structlog.testing import capture_logs

from crawler.cli.main import EXIT_STORE_BROKEN, EXIT_STORE_UNAVAILABLE, main
from crawler.config import Config, DaemonConfig
from crawler.service.exits import EXIT_STORAGE_FAILED, DaemonError
from crawler.service.outage import StoreOutage
from crawler.service.supervisor import Daemon
from crawler.service.threads import WorkerThread
from crawler.state.health import DaemonLock, check_health, read_health
from storage import StorageConfig, StoreBroken, StoreBusy, open_database

WAIT = 10  # a failure guard for waits on events, never reached when the test passes


def events(logs, name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- faults -------------------------------------------------------------------------------------


class SqliteHolder:
    """Another process's connection to a SQLite file. `lock()` takes the write lock (BEGIN
    IMMEDIATE: writers wait, WAL readers go on); `lock(readers=True)` takes it in exclusive
    locking mode after a write, which keeps readers out too. `release()` lets go."""

    def __init__(self, path: Path):
        self.path, self.connection = path, None

    def lock(self, readers: bool = False) -> None:
        self.connection = sqlite3.connect(self.path, isolation_level=None)
        if readers:
            self.connection.execute("PRAGMA locking_mode=EXCLUSIVE")
        self.connection.execute("BEGIN IMMEDIATE")
        if readers:
            self.connection.execute("INSERT INTO meta(key, value) VALUES ('held-by-test', 'x')")
            self.connection.execute("COMMIT")

    def release(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@pytest.fixture
def after_open():
    """after_open(action): run `action()` once, when the first connection of the process goes
    back to its pool: the moment a command has opened the store (the migrations' transaction is
    its first). The fault then meets the command's own reads and writes, not the open. That
    pooled connection is dropped first, as a pool recycles its connections: an idle SQLite
    connection in WAL mode would keep another process from taking the exclusive lock."""
    hooks = []

    def install(action):
        done = []

        def checkin(dbapi_connection, connection_record):
            if not done:
                done.append(True)
                connection_record.invalidate()
                action()

        sa.event.listen(sa.pool.Pool, "checkin", checkin)
        hooks.append(checkin)

    yield install
    for hook in hooks:
        sa.event.remove(sa.pool.Pool, "checkin", hook)


@pytest.fixture
def postgres_schema(postgres_url):
    """The server's URL with a fresh schema first on the search_path; dropped afterwards."""
    schema = f"crystalline_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False), schema, admin
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def fill_disk_trigger(admin, schema: str) -> None:
    """Every write to a table of `schema` fails as a full disk does (SQLSTATE 53100)."""
    with admin.begin() as connection:
        connection.execute(sa.text(
            f'CREATE FUNCTION "{schema}".disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN '
            "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100'; END $$"))
        for table in connection.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = :s"),
                                        {"s": schema}).scalars().all():
            connection.execute(sa.text(f'CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE OR DELETE ON '
                                       f'"{schema}".{table} FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".disk_full()'))


def free_disk_trigger(admin, schema: str) -> None:
    with admin.begin() as connection:
        connection.execute(sa.text(f'DROP FUNCTION "{schema}".disk_full() CASCADE'))


# --- the CLI: one line, 75 for a store unavailable for now, 74 for a broken one ---------------------


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("crystalline: error: "), stderr
    return lines[0]


def commands(tmp_path: Path, state: Path) -> dict[str, list[str]]:
    text = tmp_path / "text.txt"
    text.write_text("a few words to store, and a few more. " * 50)
    return {
        "ingest": ["ingest", str(text), "--state-dir", str(state)],
        "forget": ["forget", str(text), "--state-dir", str(state)],
        "status": ["status", "--state-dir", str(state)],
        "train": ["train", str(text), "--steps", "1", "--state-dir", str(state)],
    }


def fresh_store(state: Path) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}")).close()
    return state / "corpus.db"


@pytest.mark.parametrize("command", ["ingest", "forget", "status", "train"])
def test_a_store_locked_after_it_opened_is_one_line_and_exit_75(command, tmp_path, capsys, monkeypatch, after_open):
    state = tmp_path / "state"
    holder = SqliteHolder(fresh_store(state))
    monkeypatch.setenv("CRYSTALLINE_STORE_BUSY_TIMEOUT_MS", "20")
    after_open(lambda: holder.lock(readers=True))
    try:
        status = main(commands(tmp_path, state)[command])
    finally:
        holder.release()
    line = one_error_line(capsys.readouterr().err)
    assert status == EXIT_STORE_UNAVAILABLE == 75, line
    assert f"the database {state / 'corpus.db'} is locked (database is locked)" in line
    assert "busy_timeout_ms (20 ms)" in line and "try again" in line
    capsys.readouterr()
    assert main(commands(tmp_path, state)[command]) in (0, 1), "the same command works once the lock is gone"


@pytest.mark.parametrize("command", ["ingest", "forget", "status", "train"])
def test_a_store_broken_after_it_opened_is_one_line_and_exit_74(command, tmp_path, capsys, after_open):
    state = tmp_path / "state"
    path = fresh_store(state)

    def drop_meta():  # the schema damaged under the command: retrying will not help
        with sqlite3.connect(path, isolation_level=None) as connection:
            connection.execute("DROP TABLE meta")

    after_open(drop_meta)
    status = main(commands(tmp_path, state)[command])
    line = one_error_line(capsys.readouterr().err)
    assert status == EXIT_STORE_BROKEN == 74, line
    assert f"the database {path} refused the operation" in line and "no such table: meta" in line
    assert "retrying will not help" in line


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["ingest", "status"])
def test_a_postgres_server_lost_after_the_store_opened_is_one_line_and_exit_75(
        command, tmp_path, capsys, monkeypatch, after_open, postgres_schema, postgres_relay):
    url, _, _ = postgres_schema
    relayed, relay = postgres_relay(url)
    monkeypatch.setenv("CRYSTALLINE_STORE_URL", relayed)
    open_database(StorageConfig(url=relayed)).close()  # the schema exists: `status` reads it
    after_open(relay.cut)
    status = main(commands(tmp_path, tmp_path / "state")[command])
    line = one_error_line(capsys.readouterr().err)
    assert status == EXIT_STORE_UNAVAILABLE, line
    assert f"the connection to the database server postgresql+psycopg://postgres@127.0.0.1:{relay.port}/" in line
    assert "check that the server runs" in line


# --- the daemon: files in flight held and retried, health says so, nothing failed ---------------------


class StubWatcher:
    """The watcher's part in a hand-back: files it is given are offered again (into the inbox)."""

    observers: dict = {}

    def __init__(self, inbox):
        self.inbox = inbox

    def reoffer(self, files):
        for item in files:
            self.inbox.put_nowait(item)

    def start(self):
        pass

    def stop(self):
        pass

    def join(self, timeout=None):
        pass


class SqliteBusy:
    cause = "busy"

    def __init__(self, daemon, state):
        self.holder = SqliteHolder(state / "corpus.db")

    def begin(self):
        self.holder.lock()

    def end(self):
        self.holder.release()


class SqliteFull:
    cause = "disk_full"

    def __init__(self, daemon, state):
        self.engine = daemon.database.engine

    def _limit(self, dbapi_connection, record):
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count={pages}")

    def begin(self):
        sa.event.listen(self.engine, "connect", self._limit)
        self.engine.dispose()

    def end(self):
        sa.event.remove(self.engine, "connect", self._limit)
        self.engine.dispose()


class PostgresGone:
    cause = "disconnected"

    def __init__(self, daemon, state):
        self.relay = daemon.relay

    def begin(self):
        self.relay.cut()

    def end(self):
        self.relay.restore()


class PostgresFull:
    cause = "disk_full"

    def __init__(self, daemon, state):
        self.admin, self.schema = daemon.admin, daemon.schema

    def begin(self):
        fill_disk_trigger(self.admin, self.schema)

    def end(self):
        free_disk_trigger(self.admin, self.schema)


FAULTS = [pytest.param(SqliteBusy, id="sqlite-locked"), pytest.param(SqliteFull, id="sqlite-full"),
          pytest.param(PostgresGone, id="postgresql-gone", marks=pytest.mark.postgres),
          pytest.param(PostgresFull, id="postgresql-full", marks=pytest.mark.postgres)]


@pytest.fixture
def store_url(request, tmp_path):
    """The store each fault needs: SQLite in the state directory, or PostgreSQL through a relay."""
    if request.node.callspec.params["fault"] in (SqliteBusy, SqliteFull):
        return "", None
    url, schema, admin = request.getfixturevalue("postgres_schema")
    relayed, relay = request.getfixturevalue("postgres_relay")(url)
    return relayed, (relay, schema, admin)


@pytest.mark.parametrize("fault", FAULTS)
def test_files_in_flight_are_held_while_the_store_is_unavailable_and_stored_once_it_answers(
        fault, store_url, tmp_path):
    url, postgres = store_url
    state = tmp_path / "state"
    clock = Clock()
    config = Config(state_dir=state, store=StorageConfig(url=url, busy_timeout_ms=20),
                    daemon=dataclasses.replace(DaemonConfig(), train=False))
    daemon = Daemon(config, {}, clock=clock)
    if postgres is not None:
        daemon.relay, daemon.schema, daemon.admin = postgres
    state.mkdir()
    daemon.database, daemon.tokenizer = daemon.open_store()
    daemon.inbox = queue_module.Queue()
    daemon.watcher = StubWatcher(daemon.inbox)
    worker = daemon.make_worker("ingest")
    worker.initialize()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    paths = []
    for i in range(12):  # about 6 kB of tokens each: the batch needs new pages
        paths.append(inbox / f"doc{i:02d}.txt")
        paths[-1].write_text(f"document {i} " + " ".join(f"w{i}x{j}" for j in range(400)))
        daemon.inbox.put_nowait((paths[-1], inbox))
    injected = fault(daemon, state)
    lock = DaemonLock(state)  # a live holder, as the daemon's own would be, for check_health
    lock.acquire()
    try:
        with capture_logs() as logs:
            injected.begin()
            assert worker.run_once(clock.now) > 0  # the batch failed: held (or offered again), not failed
            assert worker.outage.cause == injected.cause and not events(logs, "file_failed")
            assert len(worker.held) + daemon.inbox.qsize() == 12
            daemon.tick(clock.now)  # the outage began: health.json says so at once
            healthy, reason, report = check_health(state, 120)
            assert not healthy and reason.startswith("store unavailable: "), reason
            assert report["store_unavailable"]["cause"] == injected.cause and report["state"] == "ready"

            clock.now += 0.5  # before the retry is due: nothing is tried
            assert worker.run_once(clock.now) > 0 and worker.outage.failing("ingest")
            clock.now += 1.0  # due: tried again, still unavailable, still nothing failed
            worker.run_once(clock.now)
            assert worker.outage.failing("ingest") and not events(logs, "file_failed")

            injected.end()
            clock.now += 60.0
            while not daemon.inbox.empty() or worker.held:
                assert worker.run_once(clock.now) == 0.0
            clock.now += 60.0
            daemon.tick(clock.now)  # a status report's own read finds the store back too
            daemon.tick(clock.now)
            healthy, reason, report = check_health(state, 120)
        assert healthy, reason
        assert report["store_unavailable"] is None and worker.outage.cause is None
        assert sorted(Path(e["path"]).name for e in events(logs, "file_ingested")) == [p.name for p in paths]
        assert not events(logs, "file_failed") and worker.counts["failed"] == 0
        [unavailable] = [e for e in events(logs, "store_unavailable") if e["part"] == "ingest"]
        assert unavailable["cause"] == injected.cause and unavailable["log_level"] == "error"
        [available] = [e for e in events(logs, "store_available") if e["part"] == "ingest"]
        assert available["tries"] == 2 and available["was"] == injected.cause
        stats = worker.queue.stats()
        assert stats.documents["queued"] == 12, "every file stored once"
    finally:
        lock.release()
        worker.shutdown()
        daemon.database.close()


# --- worker threads: a transient store error is an outage, not a death --------------------------------


class StoreFlaky:
    """A trainer whose run_once meets the store locked `failures` times, then works."""

    name = "trainer"

    def __init__(self, error: Exception, failures: int):
        self.error, self.failures = error, failures
        self.calls, self.worked = 0, threading.Event()

    def initialize(self):
        pass

    def run_once(self, now):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        self.worked.set()
        return 0.01

    def shutdown(self):
        pass


def test_a_worker_thread_waits_out_a_transient_store_error_instead_of_dying():
    log = structlog.get_logger()
    outage = StoreOutage(log, first_seconds=0.001)
    worker = StoreFlaky(StoreBusy("the database /x/corpus.db is locked (database is locked): try again"), 3)
    stop = threading.Event()
    thread = WorkerThread(worker, stop, log, time.monotonic, threading.Event(), outage=outage)
    with capture_logs() as logs:
        thread.start()
        assert worker.worked.wait(WAIT)
        alive = thread.is_alive()
        stop.set()
        thread.join(WAIT)
    assert alive and thread.error is None and worker.calls >= 4
    assert not events(logs, "worker_failed")
    [unavailable] = events(logs, "store_unavailable")
    assert (unavailable["part"], unavailable["cause"]) == ("trainer", "busy")
    [available] = events(logs, "store_available")
    assert available["tries"] == 3 and outage.cause is None


def test_a_worker_thread_dies_on_a_broken_store_with_one_line():
    log = structlog.get_logger()
    worker = StoreFlaky(StoreBroken("/x/corpus.db is damaged (file is not a database): restore it"), 1)
    thread = WorkerThread(worker, threading.Event(), log, time.monotonic, threading.Event(),
                          outage=StoreOutage(log, first_seconds=0.001))
    with capture_logs() as logs:
        thread.start()
        thread.join(WAIT)
    assert isinstance(thread.error, StoreBroken) and worker.calls == 1
    [failed] = events(logs, "worker_failed")
    assert failed["error"] == str(worker.error) and "exc_info" not in failed
    assert not events(logs, "store_unavailable")


# --- the start: a bounded wait for a store unavailable for now; a broken one refused at once ------------


class Part:
    """A worker stand-in: nothing to do."""

    figures = trainer = None

    def __init__(self, name):
        self.name = name

    def initialize(self):
        pass

    def run_once(self, now):
        return 0.05

    def shutdown(self):
        pass


class StartingDaemon(Daemon):
    """The real store, stand-in workers and watcher; `sleep` advances the daemon's clock."""

    def __init__(self, config, on_sleep=lambda daemon: None):
        self.waits: list[float] = []
        self.on_sleep = on_sleep
        self.fake_now = 1000.0
        super().__init__(config, {}, clock=lambda: self.fake_now, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.fake_now += seconds
        self.on_sleep(self)

    def make_worker(self, name):
        return Part(name)

    def make_watcher(self):
        return StubWatcher(None)


def start_config(state: Path, timeout: float) -> Config:
    return Config(state_dir=state, store=StorageConfig(url="", busy_timeout_ms=20),
                  daemon=dataclasses.replace(DaemonConfig(), store_start_timeout_seconds=timeout))


def test_at_start_a_locked_store_is_waited_for_and_health_says_starting_store_unavailable(tmp_path):
    state = tmp_path / "state"
    holder = SqliteHolder(fresh_store(state))
    holder.lock(readers=True)
    seen = []

    def on_sleep(daemon):
        if not seen:
            seen.append(check_health(state, 120))
        if daemon.fake_now >= 1003.0:  # the other process lets go after 3 s
            holder.release()

    daemon = StartingDaemon(start_config(state, timeout=60.0), on_sleep)
    try:
        with capture_logs() as logs:
            daemon.start()
        healthy, reason, report = seen[0]
        assert not healthy and reason.startswith("daemon is starting: store unavailable: cannot open the database")
        assert report["state"] == "starting" and report["store_unavailable"]["cause"] == "busy"
        assert "daemon_ready" in [e["event"] for e in logs]
        [unavailable] = events(logs, "store_unavailable")
        assert unavailable["part"] == "start"
        assert events(logs, "store_available")[0]["part"] == "start"
        assert read_health(state)["state"] == "ready" and read_health(state)["store_unavailable"] is None
        assert 2.99 < sum(daemon.waits) < 10.0  # the backoff's 1 s, then 2 s; not the 60 s bound
    finally:
        holder.release()
        daemon.stop()
        for thread in daemon.workers.values():
            thread.join(WAIT)


def test_at_start_a_store_unavailable_past_the_bound_exits_4_in_one_line(tmp_path):
    state = tmp_path / "state"
    holder = SqliteHolder(fresh_store(state))
    holder.lock(readers=True)
    daemon = StartingDaemon(start_config(state, timeout=5.0))
    try:
        with capture_logs() as logs, pytest.raises(DaemonError) as raised:
            daemon.run()
    finally:
        holder.release()
    error = raised.value
    assert error.status == EXIT_STORAGE_FAILED and error.reason == "storage_unavailable"
    assert "\n" not in str(error) and "gave up after 5 s ([daemon] store_start_timeout_seconds)" in str(error)
    assert "database is locked" in str(error)
    assert sum(daemon.waits) == pytest.approx(5.0), "waited up to the bound, not past it"
    [stopped] = events(logs, "daemon_stopped")
    assert (stopped["reason"], stopped["exit_code"]) == ("storage_unavailable", EXIT_STORAGE_FAILED)


def test_at_start_a_broken_store_is_refused_at_once_in_one_line(tmp_path):
    state = tmp_path / "state"
    path = fresh_store(state)
    data = bytearray(path.read_bytes())
    data[:16] = b"garbage garbage!"
    path.write_bytes(bytes(data))
    daemon = StartingDaemon(start_config(state, timeout=60.0))
    with capture_logs() as logs, pytest.raises(DaemonError) as raised:
        daemon.run()
    assert raised.value.status == EXIT_STORAGE_FAILED and raised.value.reason == "storage_failed"
    assert str(raised.value).startswith(f"the store could not be opened: {path} is damaged")
    assert daemon.waits == [] and not events(logs, "store_unavailable"), "no wait for what will not pass"
