"""What every test gets: the leaked-thread and structlog guards, the PostgreSQL server of the
`postgres` tests and a relay to it that a test can cut (`postgres_relay`), a user whom
permissions stop (`as_nobody`), and the check of what a run promises to test
(CRYSTALLINE_REQUIRE).

What it is not: the home of a room's own fixtures (tests/unit/storage/conftest.py,
tests/e2e/conftest.py); those ask this module's `postgres_url` for the server.
Relies on: pytest and structlog; SQLAlchemy to reach the server; each capability check imports or
runs what it checks, and nothing else.

A skip counts as untested. Tests that need what a machine may lack (PyTorch, a PostgreSQL server,
Chromium, MPI, root's tmpfs mounts) skip without it and say why, so that the suite still runs on a
laptop. A run that promises them (.ci/run) names them in CRYSTALLINE_REQUIRE, and a session
missing any of them stops before its first test instead of passing with those tests skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Callable

import pytest
import sqlalchemy as sa

POSTGRES_ENV = "CRYSTALLINE_TEST_POSTGRES_URL"
REQUIRE_ENV = "CRYSTALLINE_REQUIRE"


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail any test that leaves a thread running (the watchdog project's guard)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=2.0)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def structlog_restored():
    """Put back the logging configuration after each test: a command run in a test (`main()`)
    points structlog at the sys.stderr of that moment, a capture stream pytest closes after it."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# ---------------------------------------------------------------------------------------------
# the PostgreSQL server


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the server the `postgres` tests use (CRYSTALLINE_TEST_POSTGRES_URL), probed
    once a session. Unset: every test that asks for it skips, saying so. Set but not answering:
    every such test fails with the reason. A URL says a server is there (.ci/run sets one and
    starts the server), so a server that does not answer is a broken setup, never a reason to
    test less. Callers make their own schema on it and drop it afterwards."""
    import sqlalchemy as sa

    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set, so there is no PostgreSQL server to test against")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    unreachable = None
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:
        unreachable = (f"{POSTGRES_ENV} names PostgreSQL at {sa.make_url(url).render_as_string()}, "
                       f"which does not answer: {exc.orig}")
    finally:
        engine.dispose()
    if unreachable:  # raised outside the handler, so the report is this line, not the driver's chain
        # pytest keeps a session fixture's failure and raises it again for each test that asks
        pytest.fail(unreachable, pytrace=False)
    return url


# ---------------------------------------------------------------------------------------------
# a relay to the PostgreSQL server that a test can cut


class Relay:
    """A TCP relay on 127.0.0.1 to the server at (host, port), for a store to connect through.
    `cut()` is the server going away: every relayed connection is closed at once and new ones
    are refused (nothing listens on the port); `restore()` listens on the same port again.
    Threads: one accepting while it is up, one per relayed connection; `close()` ends them all."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self._up = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list = []  # every socket of the relayed connections
        self._threads: list[threading.Thread] = []
        self.restore()

    def restore(self) -> None:
        import socket

        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: the same port again
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._up.set()
        self._spawn(self._accept, listener)

    def cut(self) -> None:
        import socket

        self._up.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout=5)

    close = cut

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name="test-relay", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener) -> None:
        import socket

        with listener:
            while self._up.is_set():
                try:
                    client, _ = listener.accept()
                except (socket.timeout, BlockingIOError):
                    continue
                server = socket.create_connection(self.target)
                with self._lock:
                    self._sockets += [client, server]
                self._spawn(self._pipe, client, server)

    def _pipe(self, a, b) -> None:
        import select

        try:
            while self._up.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()


@pytest.fixture
def postgres_relay(postgres_url):
    """relay(url) -> (the same URL through a new Relay, the Relay): for a test that takes the
    server away from a store (`cut`) and gives it back (`restore`). Every relay is closed after."""
    import sqlalchemy as sa

    relays: list[Relay] = []

    def relay(url: str) -> tuple[str, Relay]:
        parsed = sa.make_url(url)
        made = Relay(parsed.host or "127.0.0.1", parsed.port or 5432)
        relays.append(made)
        return parsed.set(host="127.0.0.1", port=made.port).render_as_string(hide_password=False), made

    yield relay
    for made in relays:
        made.close()


# ---------------------------------------------------------------------------------------------
# a user whom permissions stop

NOBODY = 65534  # nobody and nogroup on Debian
REPO = Path(__file__).resolve().parents[1]

# Root reads and writes whatever the modes say, so a test of a permission error run as root would
# test nothing. The child drops to nobody itself, after its imports, rather than before its exec
# (setpriv, preexec_fn): the interpreter and its standard library may lie where nobody may not
# read (a pyenv under /root), which matters only for what is imported after the drop.
_CHILD = """\
import json, os, sys
{prepare}
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid({nobody})
    os.setuid({nobody})
    assert (os.getuid(), os.geteuid(), os.getgid()) == ({nobody}, {nobody}, {nobody})
{check}
"""


class Unprivileged:
    """`folder`: a fresh folder every user may enter (tmp_path lies in a folder only its owner may).
    `run(check, *args, prepare="")`: run the Python source `check` in a child process as a user
    whom permissions stop, and return its stdout; a nonzero exit fails the test with its stderr.
    The child has json, os and sys imported and the arguments in sys.argv[1:]. `prepare` runs
    first, as this user: the imports, and a warm-up call that loads whatever the code under test
    imports lazily. Under root the child then becomes nobody (uid and gid 65534, no groups); under
    any other user it stays that user, whom the modes already stop."""

    def __init__(self, folder: Path):
        self.folder = folder

    def run(self, check: str, *args: str, prepare: str = "", timeout: float = 120) -> str:
        source = _CHILD.format(prepare=textwrap.dedent(prepare), check=textwrap.dedent(check), nobody=NOBODY)
        result = subprocess.run([sys.executable, "-c", source, *map(str, args)], capture_output=True, text=True,
                                cwd=self.folder, timeout=timeout, env=os.environ | {"PYTHONPATH": str(REPO)})
        assert result.returncode == 0, f"the unprivileged child exited {result.returncode}:\n{result.stderr[-3000:]}"
        return result.stdout


@pytest.fixture
def as_nobody():
    """An Unprivileged runner and its folder, removed afterwards whatever modes a test left in it."""
    folder = Path(tempfile.mkdtemp(prefix="crystalline-nobody-"))
    folder.chmod(0o777)  # nobody creates files here too
    try:
        yield Unprivileged(folder)
    finally:
        folder.chmod(0o700)
        for directory, subdirectories, _ in os.walk(folder):  # top-down: each is opened before walked into
            for name in subdirectories:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)  # a folder of mode 000 or 500 cannot be emptied
        shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------
# CRYSTALLINE_REQUIRE: what a run promises to test, checked before the first test
#
# Each check mirrors the skip condition of the tests it stands for and returns why they would
# skip here, or None. The names, comma-separated: CRYSTALLINE_REQUIRE=torch,postgres,...


def _import_fails(module: str) -> str | None:
    try:
        __import__(module)
    except ImportError as exc:
        return f"{module} does not import ({exc})"
    return None


def _torch() -> str | None:
    # tests/unit/engine/test_torch_parity.py, test_arch_torch.py, the compare path of test_bench.py
    why = _import_fails("torch")
    return f"{why}: `make test` installs it (the bench extra, '.[dev,bench]')" if why else None


def _postgres() -> str | None:
    # whether the server answers is the `postgres_url` fixture's to say, test by test
    return None if os.environ.get(POSTGRES_ENV) else f"{POSTGRES_ENV} is not set"


def _browser() -> str | None:
    # tests/e2e/test_browser.py: Debian's chromium and chromium-driver, driven by selenium (dev extra)
    missing = [tool for tool in ("chromium", "chromedriver") if shutil.which(tool) is None]
    if "chromium" in missing and shutil.which("chromium-browser"):
        missing.remove("chromium")
    if missing:
        return f"{' and '.join(missing)} not on PATH (apt-get install chromium chromium-driver)"
    return _import_fails("selenium.webdriver")


def _mpi() -> str | None:
    # tests/unit/engine/test_distributed.py, tests/e2e/test_distributed.py: mpi4py and the mpich
    # wheel's mpiexec, both in the dev extra
    why = _import_fails("mpi4py")
    if why:
        return why
    if shutil.which("mpiexec") is None and shutil.which("mpiexec", path=str(Path(sys.executable).parent)) is None:
        return "no mpiexec on PATH or beside the interpreter"
    return None


def _plot() -> str | None:
    # tests/unit/crawler/test_plot.py: matplotlib (dev extra)
    return _import_fails("matplotlib")


def _tmpfs() -> str | None:
    # the really-full-disk tests (test_health.py, test_training.py, test_ingest.py) mount a tiny
    # tmpfs; this mounts one the same way and takes it down again
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "mount(8) is not installed"
    with tempfile.TemporaryDirectory(prefix="crystalline-tmpfs-") as folder:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", folder],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            return f"mount -t tmpfs failed: {mounted.stderr.strip()}"
        subprocess.run(["umount", folder], check=True)
    return None


REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "torch": _torch, "postgres": _postgres, "browser": _browser, "mpi": _mpi, "plot": _plot, "tmpfs": _tmpfs,
}


def pytest_sessionstart(session):
    """Stop the session, saying why, when a capability named in CRYSTALLINE_REQUIRE is missing."""
    wanted = [name.strip() for name in os.environ.get(REQUIRE_ENV, "").split(",") if name.strip()]
    unknown = [name for name in wanted if name not in REQUIREMENTS]
    if unknown:
        pytest.exit(f"{REQUIRE_ENV} names {', '.join(unknown)}; known: {', '.join(REQUIREMENTS)}",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    missing = [f"  {name}: {why}" for name in wanted if (why := REQUIREMENTS[name]())]
    if missing:
        pytest.exit(f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]} promises tests this machine would skip:\n"
                    + "\n".join(missing), returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """A URL to an empty database of each kind (PostgreSQL: a schema of its own, dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'corpus.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"crystalline_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class TrainingWindows:
    """Every window the training loop read (CorpusQueue.read_windows) or drew for replay
    (crawler.training.batches' draw_starts) while the fixture is active: (start, length)."""

    def __init__(self) -> None:
        self.read: list[tuple[int, int]] = []
        self.drawn: list[tuple[int, int]] = []


@pytest.fixture
def training_windows(monkeypatch) -> TrainingWindows:
    """Records the training loop's window starts, so a test can check that none meets held-out text."""
    from crawler.training import batches as batches_module
    from storage import CorpusQueue

    seen = TrainingWindows()
    real_read, real_draw = CorpusQueue.read_windows, batches_module.draw_starts

    def reading(self, position, count, seq_len, holdout=None, return_starts=False):
        out = real_read(self, position, count, seq_len, holdout=holdout, return_starts=True)
        seen.read.extend((int(s), seq_len + 1) for s in out[2])
        return out if return_starts else out[:2]

    def drawing(rng, high, count, seq_len, holdout, mix=None):
        starts = real_draw(rng, high, count, seq_len, holdout, mix)
        seen.drawn.extend((int(s), seq_len + 1) for s in starts)
        return starts

    monkeypatch.setattr(CorpusQueue, "read_windows", reading)
    monkeypatch.setattr(batches_module, "draw_starts", drawing)
    return seen
