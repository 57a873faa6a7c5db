"""`crystalline grow --layers N` and the commands on a grown model: the grown checkpoint computes
the old model's function (eval's bits per byte and generate's text are the same), export writes
its shape, `status` shows it, the next `train` goes on from it (bit-exact across the growth), and
grow refuses what it must (a running daemon, no model, fewer layers) in one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import structlog

from crawler.cli.main import main
from crawler.state.health import DaemonLock
from engine import ModelConfig, load_checkpoint, load_latest_checkpoint

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4", "--threads", "1",
        "--schedule", "constant", "--warmup", "2"]


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()


@pytest.fixture
def corpus(tmp_path) -> Path:
    """About 9k bytes: enough for a held-out block."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["crystal", "lattice", "grows", "slowly", "in", "the", "cold", "dark", "cave", "and"]
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(" ".join(rng.choice(words, size=800)) + "\n")
    return folder


def run(capture, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capture.readouterr()
    if isinstance(out, bytes):
        out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    return status, out, err


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def one_error_line(stderr: str, fragment: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crystalline: error: ") and fragment in lines[0], stderr


def test_grow_by_hand_keeps_the_function_and_every_command_loads_the_grown_model(capsysbinary, tmp_path, corpus):
    state = tmp_path / "state"
    assert run(capsysbinary, "train", corpus, *TINY, "--steps", "6", "--state-dir", state)[0] == 0
    # the model before: its held-out figure on the files, a completion, and its checkpoint
    status, out, err = run(capsysbinary, "eval", corpus, "--json", "--latest", "--state-dir", state)
    assert status == 0, err
    before = json.loads(out)
    status, text_before, err = run(capsysbinary, "generate", "crystal", "--max-new-tokens", "30", "--seed", "3",
                                   "--latest", "--state-dir", state)
    assert status == 0, err
    old, _ = load_latest_checkpoint(state / "checkpoints")

    status, out, err = run(capsysbinary, "grow", "--layers", "3", "--state-dir", state)
    assert status == 0, err
    assert "grow: 1 -> 3 layers" in out and "at step 6" in out
    grown_event = next(e for e in events(err) if e["event"] == "model_grown")
    assert grown_event["trigger"] == "command" and grown_event["reason"] == "by hand (crystalline grow)"
    assert (grown_event["old"]["n_layer"], grown_event["new"]["n_layer"], grown_event["step"]) == (1, 3, 6)
    assert grown_event["val_bits_per_byte_before"] is not None and grown_event["exact"]
    assert any(e["event"] == "checkpoint_saved" and e["reason"] == "grown" for e in events(err))
    grown, _ = load_latest_checkpoint(state / "checkpoints")
    assert grown.path == old.path and grown.step == 6  # written in place of the one it grew
    assert grown.model_config.n_layer == 3 and grown.params.size > old.params.size
    assert grown.extra["stream_position"] == old.extra["stream_position"]  # the loop's state carried
    assert grown.extra["command"] == old.extra["command"] == "train"  # retention treats it as before
    assert grown.train_state["growth"][0]["reason"] == "by hand (crystalline grow)"
    np.testing.assert_array_equal(grown.m[: 16], old.m[: 16])  # the embeddings keep their optimizer state

    # eval, generate and export on the grown checkpoint: the same function, a deeper shape
    status, out, err = run(capsysbinary, "eval", corpus, "--json", "--latest", "--state-dir", state)
    assert status == 0, err
    after = json.loads(out)
    assert after["bits_per_byte"] == before["bits_per_byte"] and after["step"] == 6
    status, text_after, err = run(capsysbinary, "generate", "crystal", "--max-new-tokens", "30", "--seed", "3",
                                  "--latest", "--state-dir", state)
    assert status == 0, err
    assert text_after == text_before
    out_file = tmp_path / "model.safetensors"
    status, out, err = run(capsysbinary, "export", out_file, "--latest", "--state-dir", state)
    assert status == 0, err
    import safetensors

    with safetensors.safe_open(out_file, "numpy") as exported:
        config = ModelConfig.from_dict(json.loads(exported.metadata()["model_config"]))
        assert config.n_layer == 3 and exported.get_tensor("qkvw").shape[0] == 3
        assert sum(exported.get_tensor(name).size for name in exported.keys()) == grown.params.size

    # status shows the shape and the growth
    status, out, err = run(capsysbinary, "status", "--state-dir", state)
    assert status == 0, err
    assert "model      3 layers, d_model 16, 2 heads" in out and "grown once, from 1 layers" in out
    status, out, err = run(capsysbinary, "status", "--json", "--state-dir", state)
    model = json.loads(out)["model"]
    assert (model["n_layer"], model["step"], [(g["from"], g["to"]) for g in model["growths"]]) == (3, 6, [(1, 3)])

    # the next train goes on from the grown model: --layers 1 is the shape it was born with
    status, out, err = run(capsysbinary, "train", corpus, *TINY, "--steps", "9", "--state-dir", state)
    assert status == 0, err
    assert not any(e["event"] == "model_config_ignored" for e in events(err))
    resumed, _ = load_latest_checkpoint(state / "checkpoints")
    assert resumed.step == 9 and resumed.model_config.n_layer == 3
    # eval of the best model, whichever shape it holds now, loads it at its own shape
    best = load_checkpoint(state / "checkpoints" / "best.safetensors")
    status, out, err = run(capsysbinary, "eval", corpus, "--json", "--state-dir", state)
    assert status == 0, err
    assert json.loads(out)["step"] == best.step


def test_resume_across_a_growth_by_hand_is_exact(capsys, tmp_path, corpus):
    """6 steps, grow to 2 layers, then 12 steps in one run or in two (9, then 12): the same bits."""
    for name, stops in (("straight", [12]), ("split", [9, 12])):
        state = tmp_path / name
        assert run(capsys, "train", corpus, *TINY, "--steps", "6", "--state-dir", state)[0] == 0
        assert run(capsys, "grow", "--layers", "2", "--state-dir", state)[0] == 0
        for stop in stops:
            status, _, err = run(capsys, "train", corpus, *TINY, "--steps", stop, "--state-dir", state)
            assert status == 0, err
    straight, _ = load_latest_checkpoint(tmp_path / "straight" / "checkpoints")
    split, _ = load_latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert straight.step == split.step == 12 and straight.model_config.n_layer == 2
    np.testing.assert_array_equal(straight.params, split.params)
    np.testing.assert_array_equal(straight.m, split.m)


def test_grow_refuses_in_one_line(capsys, tmp_path, corpus):
    state = tmp_path / "state"
    status, _, err = run(capsys, "grow", "--layers", "4", "--state-dir", tmp_path / "nowhere")
    assert status == 1
    one_error_line(err, "no such state directory")
    state.mkdir()
    status, _, err = run(capsys, "grow", "--layers", "4", "--state-dir", state)
    assert status == 1
    assert "no model to grow" in err.strip().splitlines()[-1]
    assert run(capsys, "train", corpus, *TINY, "--steps", "3", "--state-dir", state)[0] == 0
    status, _, err = run(capsys, "grow", "--layers", "1", "--state-dir", state)
    assert status == 2
    one_error_line(err, "--layers: must be at least 2")
    assert run(capsys, "grow", "--layers", "2", "--state-dir", state)[0] == 0
    status, _, err = run(capsys, "grow", "--layers", "2", "--state-dir", state)
    assert status == 1 and "the model has 2 layers already" in err.strip().splitlines()[-1]
    with DaemonLock(state):  # as a running daemon (or `train`) holds it
        status, _, err = run(capsys, "grow", "--layers", "3", "--state-dir", state)
    assert status != 0
    one_error_line(err, "running")
    assert load_latest_checkpoint(state / "checkpoints")[0].model_config.n_layer == 2  # untouched
