"""`crystalline forget`: what its arguments name, what it prints, and that the text is gone."""

from __future__ import annotations

import json
import os

from crawler.cli.corpus import forget_forms
from crawler.cli.main import main
from crawler.config import load_config
from storage import CorpusQueue, StorageError, open_database


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_arguments_name_paths_folders_ids_and_processed_copies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "inbox" / "notes").mkdir(parents=True)
    config = load_config(None, state_dir=tmp_path / "state")
    inbox = os.path.abspath("inbox")
    assert forget_forms("inbox/a.txt", config) == ([f"{inbox}/a.txt"], [], [])
    assert forget_forms("42", config) == ([], [], [42])
    assert forget_forms("inbox/notes", config) == ([], [f"{inbox}/notes/"], [])
    moved = str(tmp_path / "state" / "processed" / "inbox" / "b.txt")
    assert forget_forms(moved, config) == ([moved, f"{inbox}/b.txt"], [], [])
    (tmp_path / "42").write_text("a file named like an id")
    assert forget_forms("42", config) == ([str(tmp_path / "42")], [], [])


def test_forget_removes_the_text_and_says_what_the_model_keeps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "keep.txt").write_text("words worth keeping. " * 50)
    (inbox / "secret.txt").write_text("a secret never to train on. " * 50)
    (inbox / "copy.txt").write_text("a secret never to train on. " * 50)
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0

    status, out, _ = run(capsys, "forget", "inbox/copy.txt", "--dry-run", "--state-dir", state)
    assert status == 0 and out.startswith("would remove the text of 1 document")
    assert str(inbox / "secret.txt") in out and str(inbox / "copy.txt") in out

    status, out, err = run(capsys, "forget", "inbox/secret.txt", "nope.txt", "--json", "--state-dir", state)
    report = json.loads(out)
    # copy.txt came first (folders are read in name order): secret.txt is stored as its duplicate
    assert status == 0 and report["paths"] == [str(inbox / "copy.txt")] and report["not_found"] == ["nope.txt"]
    assert report["sharing"] == [str(inbox / "secret.txt")] and report["tokens"] > 0
    assert any(json.loads(line)["event"] == "text_forgotten" for line in err.splitlines() if line.startswith("{"))
    with CorpusQueue(open_database(load_config(None, state_dir=state).storage_config())) as queue:
        (document,) = report["documents"]
        stats = queue.stats()
        assert stats.tokens_withdrawn == report["tokens"] and stats.documents["skipped"] == 1
        try:
            queue.read_tokens(0, stats.tokens_total)
            raise AssertionError("the forgotten chunks are still stored")
        except StorageError:
            pass
    assert (inbox / "secret.txt").exists()  # your files are never touched

    status, out, _ = run(capsys, "forget", "nope.txt", "--state-dir", state)
    assert status == 1 and "no document of that name or id" in out
    status, out, _ = run(capsys, "status", "--state-dir", state)
    assert "withdrawn" in out


def test_forget_blanks_the_training_copy_of_the_stream_when_no_trainer_runs(tmp_path, capsys):
    """STATE_DIR/stream.tokens (the copy training reads past replay_memory_mb) holds no forgotten
    text once `forget` returns, when no daemon or `train` holds the state to blank it itself."""
    import numpy as np

    from crawler.training.batches import STREAM_CACHE_FILE
    from storage import StreamCache

    state, inbox = tmp_path / "state", tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "keep.txt").write_text("words worth keeping. " * 50)
    (inbox / "secret.txt").write_text("a secret never to train on. " * 50)
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0
    config = load_config(None, state_dir=state)
    with open_database(config.storage_config()) as database:
        queue = CorpusQueue(database)
        cache = StreamCache.open(state / STREAM_CACHE_FILE, queue, 257)
        cache.extend(queue.stream_end())
        cache.close()

    def copied_text() -> bytes:
        tokens = np.fromfile(state / STREAM_CACHE_FILE, dtype="<u2")
        return bytes(int(t) for t in tokens if t < 256)

    assert b"a secret never" in copied_text() and b"words worth" in copied_text()
    status, _, err = run(capsys, "forget", inbox / "secret.txt", "--state-dir", state)
    assert status == 0, err
    assert b"a secret never" not in copied_text() and b"words worth" in copied_text()
