"""A state directory that moved or was damaged, from the command line: `train` from anywhere,
`crystalline repair`, `crystalline reset --keep-corpus`, and one line for every damaged file."""

import json
import sqlite3
from pathlib import Path

import pytest
import structlog

from crawler.cli.main import EXIT_STORE_BROKEN, main

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "a.txt"
    path.write_text("the crystal lattice grows slowly in the cold dark cave. " * 60)
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def error_line(stderr: str) -> str:
    """The one error line: every other stderr line is a JSON event, and there is no traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("crystalline: error: "), stderr
    return lines[0]


def train(capsys, text, state, steps: int) -> list[dict]:
    status, _, err = run(capsys, "train", text, "--steps", steps, "--checkpoint-every", 4, *TINY, "--state-dir", state)
    assert status == 0, err
    return events(err)


def test_train_resumes_a_moved_state_directory_from_another_working_directory(capsys, tmp_path, text, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train(capsys, text, "crystalline-state", 8)
    (tmp_path / "crystalline-state").rename(tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    logged = train(capsys, text, "../moved", 10)
    loaded = next(e for e in logged if e["event"] == "checkpoint_loaded")
    assert loaded["step"] == 8 and next(e for e in logged if e["event"] == "train_finished")["step"] == 10


def test_repair_makes_the_database_agree_with_the_files(capsys, tmp_path, text):
    state = tmp_path / "state"
    train(capsys, text, state, 8)  # checkpoints 4 and 8
    newest = state / "checkpoints" / "ckpt-000000008.safetensors"
    newest.write_bytes(newest.read_bytes()[:500])
    (state / "checkpoints" / ".ckpt-leftover.tmp").write_bytes(b"half a checkpoint")
    status, out, err = run(capsys, "repair", "--state-dir", state)
    assert status == 0, err
    assert "repair: the database was rewound to" in out and "ckpt-000000004.safetensors (step 4)" in out
    assert "ckpt-000000008.safetensors" in out and "removed 1 temporary file" in out
    assert (state / "quarantine" / "ckpt-000000008.safetensors").exists()
    assert not (state / "checkpoints" / ".ckpt-leftover.tmp").exists()
    status, out, err = run(capsys, "repair", "--state-dir", state)  # a second run has nothing to do
    lines = out.strip().splitlines()
    assert status == 0 and len(lines) == 1, out
    assert lines[0].startswith(f"repair: the database agrees with {state / 'checkpoints' / 'ckpt-000000004.safetensors'}"
                               " (step 4): training resumes at stream position ")


def test_with_every_checkpoint_deleted_reset_keep_corpus_is_the_way_out(capsys, tmp_path, text):
    state = tmp_path / "state"
    train(capsys, text, state, 8)
    for path in (state / "checkpoints").iterdir():
        if path.name.startswith("ckpt-"):
            path.unlink()
    status, _, err = run(capsys, "train", text, "--steps", 10, *TINY, "--state-dir", state)
    assert status == 1 and "crystalline reset --keep-corpus" in error_line(err)
    status, _, err = run(capsys, "reset", "--state-dir", state)
    assert status == 1 and "--keep-corpus" in error_line(err)

    status, out, err = run(capsys, "reset", "--keep-corpus", "--state-dir", state)
    assert status == 0, err
    assert out.startswith("reset: the model and its training state are dropped (no checkpoint files)")
    database = sqlite3.connect(state / "corpus.db")
    assert database.execute("select count(*) from checkpoints").fetchone() == (0,)
    assert database.execute("select stream_position, step from training_cursor").fetchone() == (0, 0)
    assert database.execute("select count(*) from documents where status = 'queued'").fetchone() == (1,)
    database.close()
    logged = train(capsys, text, state, 4)  # a new model, on the text that was kept
    started = next(e for e in logged if e["event"] == "train_started")
    assert started["step"] == 0 and started["files"] == {"unchanged": 1}
    status, out, err = run(capsys, "reset", "--keep-corpus", "--state-dir", state)  # a model to set aside
    assert status == 0 and "1 checkpoint file(s)" in out, err
    moved = next((state / "quarantine").iterdir())
    assert [p.name for p in moved.iterdir()] == ["ckpt-000000004.safetensors"]  # moved aside, not deleted
    assert list((state / "checkpoints").iterdir()) == []


def test_a_damaged_database_header_is_one_line(capsys, tmp_path, text):
    state = tmp_path / "state"
    train(capsys, text, state, 4)
    data = bytearray((state / "corpus.db").read_bytes())
    data[:16] = b"garbage garbage!"
    (state / "corpus.db").write_bytes(bytes(data))
    for command in (["status"], ["repair"], ["train", text, *TINY]):
        status, _, err = run(capsys, *command, "--state-dir", state)
        line = error_line(err)
        assert status == EXIT_STORE_BROKEN and f"{state / 'corpus.db'} is damaged" in line and "backup" in line


def test_a_store_url_in_a_missing_folder_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CRYSTALLINE_STORE_URL", f"sqlite:///{tmp_path / 'nowhere' / 'corpus.db'}")
    status, _, err = run(capsys, "status", "--state-dir", tmp_path / "state")
    line = error_line(err)
    assert status == EXIT_STORE_BROKEN and f"{tmp_path / 'nowhere'} does not exist" in line and "store url" in line


# ---------------------------------------------------------------------------------------------
# backup: beside a running daemon, restored by running on the copy


def test_backup_beside_a_running_daemon_restores_by_running_on_the_copy(capsys, tmp_path, text):
    from crawler.state.health import DaemonLock

    state, dest = tmp_path / "state", tmp_path / "backup"
    train(capsys, text, state, 8)
    with DaemonLock(state):  # as a running daemon holds it: backup needs no lock
        status, out, err = run(capsys, "backup", dest, "--state-dir", state)
    assert status == 0, err
    assert out.startswith(f"backup: {dest}: the database (1 documents), the model at step 8")
    assert (dest / "corpus.db").is_file() and (dest / "checkpoints" / "ckpt-000000008.safetensors").is_file()
    best = Path("checkpoints") / "best.safetensors"
    assert (dest / best).is_file() == (state / best).is_file()
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == \
        sorted(p.name for p in (state / "checkpoints").iterdir())
    assert not (tmp_path / "backup.partial").exists()
    logged = train(capsys, text, dest, 12)  # the copy is a state directory of its own
    assert next(e for e in logged if e["event"] == "checkpoint_loaded")["step"] == 8
    assert not any(e["event"] == "file_ingested" and e.get("doc_id") and not e.get("duplicate") for e in logged
                   if e.get("tokens")), "the copy already holds the text"


def test_backup_takes_another_snapshot_when_the_newest_checkpoint_is_pruned_meanwhile(capsys, tmp_path, text, monkeypatch):
    import shutil

    state, dest = tmp_path / "state", tmp_path / "backup"
    train(capsys, text, state, 8)
    real, pruned = shutil.copy2, []

    def copy2(src, dst, **kw):
        if Path(src).name == "ckpt-000000008.safetensors" and not pruned:
            pruned.append(src)  # the daemon pruned it between the snapshot and the copy, once
            raise FileNotFoundError(src)
        return real(src, dst, **kw)

    monkeypatch.setattr(shutil, "copy2", copy2)
    status, out, err = run(capsys, "backup", dest, "--state-dir", state)
    assert status == 0, err and pruned
    assert (dest / "checkpoints" / "ckpt-000000008.safetensors").is_file()


def test_backup_refuses_a_folder_that_is_not_empty(capsys, tmp_path, text):
    state, dest = tmp_path / "state", tmp_path / "backup"
    train(capsys, text, state, 4)
    dest.mkdir()
    (dest / "something").write_text("mine")
    status, _, err = run(capsys, "backup", dest, "--state-dir", state)
    assert status != 0
    assert "already exists and is not an empty folder" in error_line(err)
    assert (dest / "something").read_text() == "mine"
