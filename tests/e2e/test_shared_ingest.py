"""End-to-end: several `crystalline run` daemons sharing one PostgreSQL corpus (docs/SCALE-OUT.md).

Each test gets a schema of its own on the server named by CRYSTALLINE_TEST_POSTGRES_URL (first on
the search_path, as the storage tests do). It skips, saying why, when the variable is unset, and
fails when it is set and the server does not answer (tests/conftest.py's `postgres_url`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import DaemonProcess, write_text_file

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

FILES = 500
IN_STREAM = ("queued", "trained")


@pytest.fixture
def corpus_url(postgres_url):
    """A URL to an empty schema of the test server (dropped afterwards)."""
    admin = sa.create_engine(postgres_url, connect_args={"connect_timeout": 3})
    schema = f"crystalline_e2e_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def daemons(tmp_path, corpus_url):
    """Start daemons on the shared corpus, each with its own state directory; all killed at the end."""
    started: list[DaemonProcess] = []

    def start(name: str, roots: list[Path], *, train: bool = False, **env) -> DaemonProcess:
        environment = {"CRYSTALLINE_STORE_URL": corpus_url, "CRYSTALLINE_DAEMON_TRAIN": str(train).lower(),
                       **{f"CRYSTALLINE_DAEMON_{k.upper()}": str(v) for k, v in env.items()}}
        daemon = DaemonProcess(tmp_path / name, roots, env=environment)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def rows(url: str, query: str) -> list[dict]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(sa.text(query))]
    finally:
        engine.dispose()


def wait_until_stored(url: str, count: int, timeout: float = 120.0) -> list[dict]:
    """The documents rows once `count` distinct files are in the stream and no claim is left."""
    deadline = time.monotonic() + timeout
    while True:
        documents = rows(url, "SELECT * FROM documents ORDER BY id")
        claims = rows(url, "SELECT * FROM claims")
        if len({d["content_hash"] for d in documents if d["status"] in IN_STREAM}) >= count and not claims:
            return documents
        assert time.monotonic() < deadline, f"{len(documents)} rows, {len(claims)} claims left after {timeout} s"
        time.sleep(0.5)  # the store is the proof; the daemons log no event for an unchanged file


def drop(folder: Path, count: int = FILES, size: int = 200_000) -> list[Path]:
    """`count` files of about `size` bytes, each unique by its first line, each appearing whole."""
    body = write_text_file(folder.parent / "body.txt", seed=-1, size=size).read_text()
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = folder / f"f{i:03d}.txt"
        temporary = folder / f".f{i:03d}.txt.tmp"
        temporary.write_text(f"file {i}\n{body}")
        temporary.rename(path)
        files.append(path)
    return files


def freeze_mid_batch(daemon: DaemonProcess, url: str, owner: str, timeout: float = 60.0) -> set[str]:
    """Stop the daemon (SIGSTOP) at a moment it holds claims on files not stored yet, and return
    those files: what a death at that moment leaves to the others. Stopped and looked at again
    until it does."""
    deadline = time.monotonic() + timeout
    while True:
        daemon.proc.send_signal(signal.SIGSTOP)
        claimed = {r["path"] for r in rows(url, "SELECT path, claimed_by FROM claims") if r["claimed_by"] == owner}
        left = claimed - {d["source_path"] for d in rows(url, "SELECT source_path FROM documents")}
        if left:
            return left
        daemon.proc.send_signal(signal.SIGCONT)
        assert time.monotonic() < deadline, "the daemon never held a claim on a file it had not stored"
        time.sleep(0.05)  # let it claim its next batch


def check_each_stored_once(documents: list[dict], files: int) -> None:
    in_stream = [d for d in documents if d["status"] in IN_STREAM]
    hashes = [d["content_hash"] for d in in_stream]
    assert len(in_stream) == len(set(hashes)) == files, "every content stored, none twice"
    ids = {d["id"] for d in in_stream}
    duplicates = [d for d in documents if d["status"] == "duplicate"]
    assert all(d["duplicate_of"] in ids for d in duplicates)
    assert not [d for d in documents if d["status"] in ("failed", "skipped")]
    spans = sorted((d["stream_start"], d["stream_end"]) for d in in_stream)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and spans[0][0] == 0, "the stream has no gap"


def test_two_daemons_with_the_same_files_in_both_inboxes_store_each_once(tmp_path, daemons, corpus_url):
    inboxes = [tmp_path / "inbox-a", tmp_path / "inbox-b"]
    first, second = (daemons(name, [inbox]) for name, inbox in zip(("a", "b"), inboxes))
    for daemon in (first, second):
        ready = daemon.wait_for("daemon_ready", timeout=120)[0]
        assert ready["train"] is False
    for i in range(FILES):  # the same bytes into both inboxes at once
        for inbox in inboxes:
            write_text_file(inbox / f"f{i:03d}.txt", seed=i, size=400)
    for daemon in (first, second):
        daemon.wait_for("file_ingested", count=FILES, timeout=120)
    documents = wait_until_stored(corpus_url, FILES)
    assert len(documents) == 2 * FILES  # each name once: stored, or a duplicate of the other's
    check_each_stored_once(documents, FILES)
    status = first.wait_for("status", timeout=30)[-1]
    assert status["train"] is False and "trainer" not in status["workers"]
    for daemon in (first, second):
        assert daemon.stop() == 0


def test_a_daemon_killed_mid_ingest_loses_nothing_in_a_shared_folder(tmp_path, daemons, corpus_url):
    shared = tmp_path / "shared"
    lease = 3.0  # renewed every second while a daemon lives
    first, second = (daemons(name, [shared], claim_lease_seconds=lease) for name in ("a", "b"))
    for daemon in (first, second):
        daemon.wait_for("daemon_ready", timeout=120)
    files = drop(shared)  # 100 MB: a batch takes a while, and is stored a megabyte at a time
    first.wait_for("file_ingested", timeout=120)  # a has claimed files and stored some
    owner = f"{socket.gethostname()}:{(tmp_path / 'a').resolve()}"
    left_by_a = freeze_mid_batch(first, corpus_url, owner)
    first.kill()  # SIGKILL: its claims stay until their leases end
    documents = wait_until_stored(corpus_url, FILES)
    check_each_stored_once(documents, FILES)
    in_stream = [d["source_path"] for d in documents if d["status"] in IN_STREAM]
    assert sorted(in_stream) == sorted(str(f) for f in files)  # one folder: each path stored once
    # the files a held when it died and had not stored: b stored every one (a is dead)
    assert left_by_a <= {e["path"] for e in second.find("file_ingested")}
    assert second.stop() == 0


def test_a_second_training_job_on_the_corpus_is_refused(tmp_path, daemons, corpus_url):
    trainer = daemons("trainer", [tmp_path / "inbox"], train=True)
    held = trainer.wait_for("training_lock_held", timeout=120)[0]
    assert held["holder"] == f"crystalline run on {socket.gethostname()}, pid {trainer.proc.pid}"
    # a second training daemon, with its own state directory, stops at start and says why
    second = daemons("second", [tmp_path / "inbox-2"], train=True)
    stopped = second.wait_for("daemon_stopped", timeout=120)[0]
    assert (stopped["reason"], stopped["exit_code"]) == ("training_locked", 3)
    assert second.proc.wait(timeout=30) == 3
    # and so does `crystalline train` on a third
    write_text_file(tmp_path / "more" / "x.txt", seed=1)
    env = dict(os.environ, CRYSTALLINE_STORE_URL=corpus_url)
    out = subprocess.run([sys.executable, "-m", "crawler", "train", str(tmp_path / "more"), "--steps", "1",
                          "--state-dir", str(tmp_path / "third")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("crystalline: error: another training job holds the corpus")
    assert held["holder"] in error and "--no-train" in error
    # an ingest-only daemon beside it is welcome
    ingest_only = daemons("ingest", [tmp_path / "inbox-3"])
    assert ingest_only.wait_for("daemon_ready", timeout=120)[0]["train"] is False
    assert ingest_only.stop() == 0
    assert trainer.stop() == 0
