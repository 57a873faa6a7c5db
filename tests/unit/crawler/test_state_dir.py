"""Every command finds the state directory the daemon uses: flag, environment, config file, default.

A tiny model is trained into a state directory; then every command runs from ANOTHER working
directory with only CRYSTALLINE_STATE_DIR set, as an operator does with `docker exec` or a
shell in another folder, and must act on that state: nothing may appear in the working
directory, and each command's result must name or change the state it was pointed at.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import structlog

from crawler.cli.main import main
from crawler.config import DEFAULT_STATE_DIR

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()


def run(capture, *argv) -> tuple[int, str, str]:
    """main(argv) under capsysbinary, decoded (generate writes the model's raw bytes)."""
    status = main([str(a) for a in argv])
    out, err = capture.readouterr()
    return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


@pytest.fixture
def trained(tmp_path, capsysbinary, monkeypatch) -> tuple[Path, Path, Path]:
    """(state, corpus folder, an empty working directory) with a trained tiny model in state."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(1)
    words = ["amber", "quartz", "forms", "under", "slow", "pressure", "deep", "below"]
    (corpus / "a.txt").write_text(" ".join(rng.choice(words, size=400)) + "\n")
    state = tmp_path / "state"
    status, _, err = run(capsysbinary, "train", corpus, *TINY, "--steps", "4", "--state-dir", state)
    assert status == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("CRYSTALLINE_STATE_DIR", str(state))
    return state, corpus, elsewhere


def test_every_command_acts_on_the_environments_state_from_another_folder(capsysbinary, trained, tmp_path):
    state, corpus, elsewhere = trained

    status, out, err = run(capsysbinary, "generate", "amber", "--max-new-tokens", "5")
    assert status == 0, err
    assert out.startswith("amber")

    status, out, err = run(capsysbinary, "eval", corpus, "--json", "--threads", "1")
    assert status == 0, err
    assert json.loads(out)["step"] == 4

    exported = tmp_path / "model.safetensors"
    status, out, err = run(capsysbinary, "export", exported)
    assert status == 0, err
    assert exported.is_file() and str(state / "checkpoints") in out

    status, out, err = run(capsysbinary, "status", "--json")
    assert status == 0, err
    assert Path(json.loads(out)["state_dir"]).resolve() == state.resolve()

    status, out, err = run(capsysbinary, "pause")
    assert status == 0, err
    assert (state / "paused").exists()
    status, out, err = run(capsysbinary, "resume")
    assert status == 0, err
    assert not (state / "paused").exists()

    status, out, err = run(capsysbinary, "init")
    assert status == 0, err
    assert (state / "crystalline.toml").is_file()

    more = tmp_path / "more.txt"
    more.write_text("pressure forms quartz deep below the amber\n" * 20)
    status, out, err = run(capsysbinary, "ingest", more, "--json")
    assert status == 0, err
    assert json.loads(out)["files"] == {"ingested": 1}
    status, out, err = run(capsysbinary, "forget", more, "--json")
    assert status == 0, err
    assert len(json.loads(out)["documents"]) == 1

    status, out, err = run(capsysbinary, "tokenizer", "train", corpus, "--vocab-size", "300")
    assert status == 1  # refused: this state already has checkpoints, which fix its tokenizer
    assert str(state) in err

    status, out, err = run(capsysbinary, "repair")
    assert status == 0, err
    status, out, err = run(capsysbinary, "backup", tmp_path / "copy")
    assert status == 0, err
    assert (tmp_path / "copy" / "corpus.db").is_file()

    status, out, err = run(capsysbinary, "train", corpus, "--steps", "6", "--threads", "1")
    assert status == 0, err
    started = [json.loads(line) for line in err.splitlines() if '"train_started"' in line]
    assert started and started[0]["resumed"] is True and started[0]["step"] == 4

    assert list(elsewhere.iterdir()) == []  # nothing was made in the working directory
    assert not (elsewhere / DEFAULT_STATE_DIR).exists()


def test_the_flag_wins_over_the_environment_and_the_file_over_the_default(capsysbinary, trained, tmp_path, monkeypatch):
    state, _, elsewhere = trained
    other = tmp_path / "other"
    other.mkdir()
    status, out, err = run(capsysbinary, "pause", "--state-dir", other)  # flag over environment
    assert status == 0, err
    assert (other / "paused").exists() and not (state / "paused").exists()

    monkeypatch.delenv("CRYSTALLINE_STATE_DIR")
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "{state}"\n')
    status, out, err = run(capsysbinary, "generate", "quartz", "--max-new-tokens", "3", "--config", config)
    assert status == 0, err  # the file's state_dir over ./crystalline-state
    status, out, err = run(capsysbinary, "generate", "quartz", "--max-new-tokens", "3")
    assert status == 1 and "crystalline-state" in err  # and the default last


def test_init_force_replaces_a_config_file_that_does_not_load(capsysbinary, trained):
    state, _, _ = trained
    (state / "crystalline.toml").write_text("[model\n")
    status, _, err = run(capsysbinary, "status")
    assert status == 1 and "crystalline.toml" in err
    status, _, err = run(capsysbinary, "init")
    assert status == 1 and "crystalline.toml" in err
    status, out, err = run(capsysbinary, "init", "--force")
    assert status == 0, err
    status, _, err = run(capsysbinary, "status")
    assert status == 0, err
