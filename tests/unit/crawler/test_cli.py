"""The `crystalline` command line: one-line errors, and tiny train / resume / eval / generate runs.

The runs call `main(argv)` in-process on generated text in tmp_path; stdout and stderr are
captured, and stderr's events are JSON lines (it is not a TTY under pytest).
"""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import structlog

from crawler.cli.main import main
from crawler.ingest.tokenizer import TOKENIZER_FILE, BPETokenizer, train_bpe
from engine import ModelConfig, init_parameters, load_latest_checkpoint, save_checkpoint

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4", "--threads", "1"]
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def reset_structlog():
    """main() points structlog at the captured stderr; leave no stale stream to later tests."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["crystal", "lattice", "grows", "slowly", "in", "the", "cold", "dark", "cave", "and"]
    for name in ("a.txt", "b.txt"):
        text = " ".join(rng.choice(words, size=300)) + "\n"
        (folder / name).write_text(text)
    return folder


def run(capture, *argv) -> tuple[int, str, str]:
    """main(argv) under capsys or capsysbinary (decoded: generate writes raw bytes)."""
    status = main([str(a) for a in argv])
    out, err = capture.readouterr()
    if isinstance(out, bytes):
        out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    return status, out, err


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crystalline: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0]


# ---------------------------------------------------------------------------------------------
# errors: one line, non-zero, no traceback


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "x.txt", "--steps", "0"], "--steps: must be at least 1"),
        (["train", "x.txt", "--lr", "abc"], "--lr: expected a number"),
        (["train", "x.txt", "--schedule", "linear"], "--schedule"),
        (["train", "x.txt", "--bogus"], "unrecognized arguments: --bogus"),
        (["generate", "--top-p", "0"], "--top-p"),
        (["tokenizer", "train", "x.txt", "--vocab-size", "259"], "--vocab-size: must be at least 260"),
        (["tokenizer", "train", "x.txt", "--vocab-size", "1048577"], "--vocab-size: must be at most 1048576"),
        (["tokenizer", "train", "x.txt"], "--vocab-size"),
        (["tokenizer"], "COMMAND"),
        (["train"], "PATH"),
        ([], "COMMAND"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(capsys, argv, fragment):
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert_one_error_line(err, fragment)


def test_every_command_has_the_same_state_flags():
    """No command keeps a default of its own: the state directory is resolved by load_config."""
    from crawler.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    tokenizer = commands["tokenizer"]._subparsers._group_actions[0].choices
    parsers = {name: p for name, p in commands.items() if name not in ("bench", "tokenizer")}
    parsers["tokenizer train"] = tokenizer["train"]
    for name, parser in parsers.items():
        flags = {a.dest: a.default for a in parser._actions if a.dest in ("state_dir", "config")}
        assert flags == {"state_dir": None, "config": None}, name


def test_help_exits_zero(capsys):
    status, out, _ = run(capsys, "train", "--help")
    assert status == 0
    assert "--steps" in out


def test_missing_file_is_one_line(capsys, tmp_path):
    status, _, err = run(capsys, "train", tmp_path / "nope.txt", "--state-dir", tmp_path / "state")
    assert status == 1
    assert_one_error_line(err, "nope.txt", "no such file")


@pytest.mark.parametrize("command", [["generate", "hello"], ["eval", "__corpus__"]])
def test_no_checkpoint_is_one_line(capsys, tmp_path, corpus, command):
    argv = [corpus if a == "__corpus__" else a for a in command]
    status, _, err = run(capsys, *argv, "--state-dir", tmp_path / "empty-state")
    assert status == 1
    assert_one_error_line(err, "no checkpoint in", "empty-state")


def _write_checkpoint(directory: Path, extra: dict) -> None:
    config = ModelConfig(d_model=8, n_layer=1, n_head=2, context_length=8).validate()
    params = init_parameters(config)
    zeros = np.zeros_like(params)
    save_checkpoint(directory, step=1, model_config=config, params=params, m=zeros, v=zeros, extra=extra)


def test_checkpoint_of_an_unknown_tokenizer_is_one_line(capsys, tmp_path):
    _write_checkpoint(tmp_path / "checkpoints", {"tokenizer": {"kind": "wordpiece", "vocab_size": 257, "version": 1}})
    status, out, err = run(capsys, "generate", "hi", "--state-dir", tmp_path)
    assert status == 1 and out == ""
    assert_one_error_line(err, "unknown tokenizer kind 'wordpiece'")


def test_corrupt_checkpoints_are_reported_then_missing(capsys, tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    (directory / "ckpt-000000005.safetensors").write_bytes(b"\x01\x02")
    status, _, err = run(capsys, "generate", "--state-dir", tmp_path)
    assert status == 1
    warning, error = err.strip().splitlines()
    assert json.loads(warning)["event"] == "checkpoint_skipped"
    assert_one_error_line(error, "no checkpoint in")


def test_console_script_module_gives_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "crawler", "eval", tmp_path / "missing.txt", "--state-dir", tmp_path],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "no checkpoint in")


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path):
    """`crystalline generate ... | head`: once the reader has closed the pipe, the command stops
    with 141 (a shell's status for SIGPIPE) and writes nothing to stderr, no error line and no
    "Exception ignored" from the interpreter's last flush."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write gets EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "crawler", "status", "--json", "--state-dir", tmp_path / "state"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


# ---------------------------------------------------------------------------------------------
# tiny end-to-end runs


def test_train_resume_eval_generate(capsysbinary, tmp_path, corpus):
    capsys = capsysbinary  # generate prints the model's raw bytes, which need not be UTF-8
    state = tmp_path / "state"
    status, out, err = run(capsys, "train", corpus, *TINY, "--steps", "6", "--log-every", "2", "--state-dir", state)
    assert status == 0, err
    assert out == ""  # stdout stays free for results; events go to stderr
    logged = events(err)
    steps = [e for e in logged if e["event"] == "train_step"]
    assert [e["step"] for e in steps] == [2, 4, 6]
    assert all(math.isfinite(e["loss"]) and e["tokens_per_s"] > 0 for e in steps)
    assert all({"timestamp", "level", "component"} <= e.keys() for e in logged)
    checkpoint, _ = load_latest_checkpoint(state / "checkpoints")
    assert checkpoint.step == 6
    assert checkpoint.extra["tokenizer"] == {"kind": "byte", "vocab_size": 257, "version": 1}
    assert checkpoint.model_config.d_model == 16
    # the files went into the state directory's corpus, exactly as `ingest` stores them
    started = next(e for e in logged if e["event"] == "train_started")
    assert started["files"] == {"ingested": 2} and started["resumed"] is False
    assert len([e for e in logged if e["event"] == "file_ingested"]) == 2
    assert checkpoint.extra["tokens_seen"] == 6 * 4 * 16

    # a second run on the same state dir resumes and continues to the new total; the model's
    # shape comes from the checkpoint, not from the (default) configuration
    status, _, err = run(capsys, "train", corpus, "--steps", "9", "--threads", "1", "--batch-size", "4",
                         "--state-dir", state)
    assert status == 0, err
    started = next(e for e in events(err) if e["event"] == "train_started")
    assert started["resumed"] is True and started["step"] == 6
    checkpoint, _ = load_latest_checkpoint(state / "checkpoints")
    assert checkpoint.step == 9
    assert checkpoint.model_config.d_model == 16  # the shape came from the checkpoint

    # a conflicting shape flag is refused in one line
    status, _, err = run(capsys, "train", corpus, "--steps", "12", "--d-model", "32", "--state-dir", state)
    assert status == 1
    assert_one_error_line(err, "--d-model 32 conflicts", "d_model=16")

    status, out, err = run(capsys, "eval", corpus, "--json", "--batch-size", "3", "--threads", "1", "--state-dir", state)
    assert status == 0, err
    result = json.loads(out)  # exactly one JSON object
    n_bytes = sum(len(p.read_bytes().rstrip()) for p in corpus.iterdir())  # the text the daemon reads: no final newline
    assert result["bytes"] == n_bytes
    assert result["tokens"] == n_bytes + 1  # every byte, plus the EOD between the two documents
    assert result["step"] == 9
    assert math.isfinite(result["bits_per_byte"]) and 0 < result["bits_per_byte"] < 12
    assert result["bits_per_byte"] == pytest.approx(result["loss_nats"] * result["tokens"] / math.log(2) / n_bytes)

    status, out, err = run(capsys, "generate", "crystal", "--max-new-tokens", "20", "--seed", "3", "--state-dir", state)
    assert status == 0, err
    assert out.startswith("crystal")
    assert len(out) > len("crystal")


def test_resume_is_exact(capsys, tmp_path, corpus):
    # 3 steps, then a resume to 6, land on exactly the parameters of 6 uninterrupted steps: the
    # checkpoint carries the loop's state (shuffle buffer, replay credit), the batches depend on
    # (seed, step) alone. The recipe comes from the configuration each time, so the same flags.
    flags = [*TINY, "--schedule", "constant", "--warmup", "2"]
    assert run(capsys, "train", corpus, *flags, "--steps", "6", "--state-dir", tmp_path / "straight")[0] == 0
    assert run(capsys, "train", corpus, *flags, "--steps", "3", "--state-dir", tmp_path / "split")[0] == 0
    assert run(capsys, "train", corpus, *flags, "--steps", "6", "--state-dir", tmp_path / "split")[0] == 0
    straight, _ = load_latest_checkpoint(tmp_path / "straight" / "checkpoints")
    split, _ = load_latest_checkpoint(tmp_path / "split" / "checkpoints")
    assert straight.step == split.step == 6
    np.testing.assert_array_equal(straight.params, split.params)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_finishes_the_step_saves_and_exits_130(tmp_path, corpus):
    state = tmp_path / "state"
    process = subprocess.Popen(
        [sys.executable, "-m", "crawler", "train", corpus, *TINY, "--steps", "100000",
         "--log-every", "1", "--checkpoint-every", "0", "--state-dir", state],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in process.stderr:
            if '"train_step"' in line:
                break
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        status = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 130, rest
    assert "Traceback" not in rest
    assert any(json.loads(line)["event"] == "train_stopped" for line in rest.splitlines() if line.startswith("{"))
    checkpoint, _ = load_latest_checkpoint(state / "checkpoints")
    assert 1 <= checkpoint.step < 100000


# ---------------------------------------------------------------------------------------------
# the BPE tokenizer of a state directory


def train_tokenizer(capture, path, state, *flags, vocab_size=280) -> tuple[int, str, str]:
    return run(capture, "tokenizer", "train", path, "--vocab-size", vocab_size, "--state-dir", state, *flags)


def test_bpe_tokenizer_train_then_train_eval_generate(capsysbinary, tmp_path, corpus):
    capsys = capsysbinary
    state = tmp_path / "state"
    status, out, err = train_tokenizer(capsys, corpus, state, vocab_size=300)
    assert status == 0, err
    tokenizer = BPETokenizer.load(state / TOKENIZER_FILE)
    n_bytes = sum(len(p.read_bytes().rstrip()) for p in corpus.iterdir())  # the text the daemon reads: no final newline
    summary = out.strip().splitlines()
    assert len(summary) == 1
    assert f"vocab {tokenizer.vocab_size}" in summary[0] and "from 2 files" in summary[0]
    assert f"{n_bytes:,} bytes" in summary[0] and "bytes/token" in summary[0]
    trained = next(e for e in events(err) if e["event"] == "tokenizer_trained")
    assert trained["sha256"] == tokenizer.sha256 and trained["bytes"] == n_bytes
    assert trained["tokens"] < n_bytes / 2  # ten distinct words: most become single tokens

    status, _, err = run(capsys, "train", corpus, *TINY, "--steps", "3", "--log-every", "1", "--state-dir", state)
    assert status == 0, err
    checkpoint, _ = load_latest_checkpoint(state / "checkpoints")
    assert checkpoint.extra["tokenizer"] == tokenizer.identity()
    assert checkpoint.model_config.vocab_size == tokenizer.vocab_size
    steps = [e for e in events(err) if e["event"] == "train_step"]
    assert steps and all(e["bits_per_byte"] < e["loss"] / math.log(2) for e in steps)  # > 1 byte a token

    status, out, err = run(capsys, "eval", corpus, "--json", "--threads", "1", "--state-dir", state)
    assert status == 0, err
    result = json.loads(out)
    assert result["bytes"] == n_bytes  # bytes come from the tokens, not from counting tokens
    assert result["tokens"] == trained["tokens"] + 1  # every token, plus the EOD between the documents
    bits = result["loss_nats"] * result["tokens"] / math.log(2)
    assert result["bits_per_byte"] == pytest.approx(bits / n_bytes)

    status, out, err = run(capsys, "generate", "crystal", "--max-new-tokens", "8", "--state-dir", state)
    assert status == 0, err
    assert out.startswith("crystal") and len(out) > len("crystal\n")

    # once a model exists, its tokenizer stays: with or without --force
    for force in ([], ["--force"]):
        status, out, err = train_tokenizer(capsys, corpus, state, *force)
        assert status == 1 and out == ""
        assert_one_error_line(err, "holds 1 checkpoint", "fixed for the life of a model", "new --state-dir")
    assert BPETokenizer.load(state / TOKENIZER_FILE).identity() == tokenizer.identity()


def test_tokenizer_train_refuses_a_corpus_database_unless_forced(capsys, tmp_path, corpus):
    state = tmp_path / "state"
    state.mkdir()
    (state / "corpus.db").write_bytes(b"")
    status, out, err = train_tokenizer(capsys, corpus, state)
    assert status == 1 and out == ""
    assert_one_error_line(err, "corpus.db", "the tokenizer is fixed for the life of a model", "--force")
    assert not (state / TOKENIZER_FILE).exists()
    status, out, err = train_tokenizer(capsys, corpus, state, "--force")
    assert status == 0, err
    assert (state / TOKENIZER_FILE).exists()


def test_tokenizer_train_reads_files_as_the_daemon_does(capsys, tmp_path, corpus):
    (corpus / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))  # decoded, as ingest decodes it
    (corpus / "blob.bin").write_bytes(b"\x00\x01\x02" * 10)
    status, _, err = train_tokenizer(capsys, corpus, tmp_path / "s")
    assert status == 0, err
    skipped = [e for e in events(err) if e["event"] == "file_skipped"]
    assert [(Path(e["path"]).name, e["reason"]) for e in skipped] == [("blob.bin", "binary")]
    trained = next(e for e in events(err) if e["event"] == "tokenizer_trained")
    assert trained["files"] == 3

    only = tmp_path / "only"
    only.mkdir()
    (only / "blob.bin").write_bytes(b"\x00\x01")
    status, _, err = train_tokenizer(capsys, only, tmp_path / "t")
    assert status == 1
    assert_one_error_line(err.splitlines()[-1], "no readable text files")
    assert not (tmp_path / "t" / TOKENIZER_FILE).exists()


def test_a_tokenizer_that_appears_after_a_byte_model_is_refused(capsys, tmp_path, corpus):
    state = tmp_path / "state"
    assert run(capsys, "train", corpus, *TINY, "--steps", "2", "--state-dir", state)[0] == 0
    train_bpe([(corpus / "a.txt").read_text()], vocab_size=280).save(state / TOKENIZER_FILE)
    status, out, err = run(capsys, "generate", "crystal", "--state-dir", state)
    assert status == 1 and out == ""
    assert_one_error_line(err, "checkpoint was trained with tokenizer byte", "holds bpe sha256:",
                          "the tokenizer is fixed for the life of a model")
    # train stores its files first: the corpus, tokenized with bytes, refuses the new tokenizer
    status, out, err = run(capsys, "train", corpus, "--steps", "4", "--threads", "1", "--state-dir", state)
    assert status == 1 and out == ""
    assert_one_error_line(err, "does not match the corpus tokenizer", "fixed for the life of a model")


# ---------------------------------------------------------------------------------------------
# the best model: eval, generate and export use it by default


@pytest.fixture
def bigger_corpus(tmp_path) -> Path:
    """About 9k bytes: enough for a held-out block (the first one ends at stream offset 5633)."""
    folder = tmp_path / "bigger"
    folder.mkdir()
    rng = np.random.default_rng(1)
    words = ["crystal", "lattice", "grows", "slowly", "in", "the", "cold", "dark", "cave", "and"]
    for name in ("a.txt", "b.txt", "c.txt"):
        (folder / name).write_text(" ".join(rng.choice(words) for _ in range(450)) + "\n")
    return folder


def test_eval_generate_and_export_use_the_best_checkpoint(capsysbinary, tmp_path, bigger_corpus):
    import safetensors.numpy

    from engine import load_checkpoint, parameter_table

    capsys = capsysbinary
    state = tmp_path / "state"
    status, _, err = run(capsys, "train", bigger_corpus, *TINY, "--steps", "12", "--checkpoint-every", "4",
                         "--lr", "0.05", "--state-dir", state)  # a rate high enough to wander
    assert status == 0, err
    evals = [e for e in events(err) if e["event"] == "eval_finished"]
    assert [e["step"] for e in evals] == [4, 8, 12]
    best_eval = min(evals, key=lambda e: e["val_bits_per_byte"])
    best = load_checkpoint(state / "checkpoints" / "best.safetensors")
    assert best.step == best_eval["step"]
    finished = next(e for e in events(err) if e["event"] == "train_finished")
    assert finished["best_val_bits_per_byte"] == pytest.approx(best_eval["val_bits_per_byte"], abs=1e-4)
    share = finished["time_share"]  # 12 steps, 3 evaluations with their cool-downs, 3 checkpoints
    assert share["train"] > 0 and share["evaluate"] > 0 and share["checkpoint"] > 0
    assert sum(share[k] for k in ("train", "evaluate", "checkpoint", "idle", "other")) == pytest.approx(1, abs=0.01)

    status, out, err = run(capsys, "eval", bigger_corpus, "--json", "--threads", "1", "--state-dir", state)
    assert status == 0, err
    assert json.loads(out)["step"] == best.step
    status, out, err = run(capsys, "eval", bigger_corpus, "--json", "--latest", "--threads", "1", "--state-dir", state)
    assert status == 0, err
    assert json.loads(out)["step"] == 12

    exported = tmp_path / "out" / "model.safetensors"
    status, out, err = run(capsys, "export", exported, "--state-dir", state)
    assert status == 0, err
    tensors = safetensors.numpy.load_file(exported)
    views = parameter_table(best.model_config).views(best.params)
    assert set(tensors) == set(views._fields)
    for name in views._fields:
        np.testing.assert_array_equal(tensors[name], getattr(views, name))
    with open(exported, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    assert json.loads(header["model_config"]) == best.model_config.to_dict()
    assert json.loads(header["tokenizer"]) == {"kind": "byte", "vocab_size": 257, "version": 1}
    assert int(header["step"]) == best.step and float(header["val_bits_per_byte"]) == pytest.approx(
        best_eval["val_bits_per_byte"], abs=1e-4)

    # status shows the held-out figures kept in the database
    status, out, err = run(capsys, "status", "--json", "--state-dir", state)
    report = json.loads(out)
    assert [report["evaluation"][k]["step"] for k in ("latest", "best")] == [12, best.step]


def test_train_runs_until_the_plateau_without_steps(capsysbinary, tmp_path, bigger_corpus):
    state = tmp_path / "state"
    state.mkdir()
    (state / "crystalline.toml").write_text(
        "[daemon]\neval_every_steps = 2\nplateau_patience = 2\nplateau_margin = 10.0\n")  # no gain is enough
    status, _, err = run(capsysbinary, "train", bigger_corpus, *TINY, "--state-dir", state)
    assert status == 0, err
    logged = events(err)
    stale = [e["stale"] for e in logged if e["event"] == "eval_finished"]
    assert stale == list(range(len(stale)))  # no evaluation gains enough
    # patience is reached at step 6, while the corpus is still being read: the rule waits
    deferred = next(e for e in logged if e["event"] == "plateau_deferred")
    assert deferred["step"] == 6 and deferred["epoch"] < 1.0
    plateaued = next(e for e in logged if e["event"] == "training_plateaued")
    finished = next(e for e in logged if e["event"] == "train_finished")
    assert plateaued["step"] == finished["step"] > 6 and finished["reason"] == "plateau"
    assert plateaued["epoch"] >= 1.0  # once the first pass over the corpus is done


def test_a_second_stop_signal_to_train_stops_at_once_unless_it_repeats_the_first(monkeypatch):
    import signal

    from crawler.cli.train import StopFlag

    now = [100.0]
    exits = []
    monkeypatch.setattr("crawler.cli.train.os._exit", lambda code: exits.append(code))
    flag = StopFlag(clock=lambda: now[0])
    flag.handle(signal.SIGTERM, None)
    assert flag.signum == signal.SIGTERM and exits == []
    now[0] += 0.5  # the same stop delivered twice
    flag.handle(signal.SIGTERM, None)
    assert exits == []
    now[0] += 1.0  # asked again: at once
    with pytest.raises(KeyboardInterrupt):
        flag.handle(signal.SIGINT, None)
    flag.handle(signal.SIGTERM, None)
    assert exits == [128 + signal.SIGTERM]


def test_status_shows_disk_use_by_part_with_the_caps(capsys, tmp_path, corpus, monkeypatch):
    import shutil
    from collections import namedtuple

    state = tmp_path / "state"
    state.mkdir()
    (state / "crystalline.toml").write_text("[daemon]\ncheckpoints_max_mb = 50\nquarantine_max_mb = 2\n")
    for part, name, size in (("checkpoints", "ckpt-000000004.safetensors", 3_000_000),
                             ("checkpoints", "best.safetensors", 1_000_000),
                             ("processed", "corpus/a.txt", 250_000), ("quarantine", "reset-x/ckpt-1.safetensors", 70)):
        (state / part / name).parent.mkdir(parents=True, exist_ok=True)
        (state / part / name).write_bytes(b"x" * size)
    free = namedtuple("usage", "total used free")(10**12, 10**11, 123_400_000_000)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: free)

    status, out, _ = run(capsys, "status", "--json", "--state-dir", state)  # no database yet
    assert status == 0
    disk = json.loads(out)["disk"]
    assert disk["database"] == {"bytes": None} and disk["free_bytes"] == 123_400_000_000
    assert disk["checkpoints"] == {"files": 2, "bytes": 4_000_000, "cap_bytes": 50_000_000}
    assert disk["processed"] == {"files": 1, "bytes": 250_000, "cap_bytes": 0}
    assert disk["quarantine"] == {"files": 1, "bytes": 70, "cap_bytes": 2_000_000}

    assert run(capsys, "ingest", corpus, "--state-dir", state)[0] == 0
    status, out, _ = run(capsys, "status", "--json", "--state-dir", state)
    report = json.loads(out)
    assert report["disk"]["database"]["bytes"] == report["database_bytes"] > 0
    status, out, _ = run(capsys, "status", "--state-dir", state)
    line = next(line for line in out.splitlines() if line.startswith("disk "))
    assert line.endswith("checkpoints 4.0 MB (cap 50.0 MB), processed 0.2 MB, quarantine 0.0 MB (cap 2.0 MB); "
                         "123.4 GB free"), line
    assert line.startswith(f"disk       database {report['database_bytes'] / 1e6:.1f} MB, ")


def test_status_for_a_person_rounds_says_what_the_daemon_does_and_when_the_queue_drains():
    from datetime import datetime, timezone

    from crawler.cli.corpus import describe_status
    from crawler.config import Config

    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc).timestamp()
    evaluation = lambda step, value, at: {"step": step, "epoch": 0.5, "val_bits_per_byte": value,  # noqa: E731
                                          "train_bits_per_byte": None, "holdout_tokens": 512, "created_at": at}
    recent = [evaluation(1000 * i, 3.0 - 0.1 * i, f"2026-11-30 11:5{i}:00+00:00") for i in range(1, 6)]
    report = {
        "state_dir": "crystalline-state", "database": "sqlite:///x.db", "exists": True,
        "documents": {"queued": 17, "trained": 17, "duplicate": 1, "skipped": 2, "failed": 0},
        "tokens_total": 4_071_523, "tokens_queued": 1_945_699, "tokens_trained": 2_125_824,
        "last_checkpoint": {"step": 5000, "path": "checkpoints/ckpt-000005000.safetensors",
                            "created_at": "2026-11-30 11:58:30+00:00"},
        "evaluation": {"latest": recent[-1], "best": recent[-1], "recent": recent},
        "disk": {"database": {"bytes": 8_800_000}, "checkpoints": {"bytes": 20_200_000, "cap_bytes": 0},
                 "processed": {"bytes": 0, "cap_bytes": 0}, "quarantine": {"bytes": 0, "cap_bytes": 0},
                 "free_bytes": 77_300_000_000},
        "daemon": {"running": True, "pid": 42, "health": {
            "state": "ready", "started_at": "2026-11-30T10:00:00Z", "updated_at": "2026-11-30T11:59:54Z",
            "step": 5123, "loss": 1.52639, "tokens_per_s": 24360.2, "queue_tokens": 1_945_699,
            "idle": False, "plateaued": False, "paused": False, "blocked": None}},
    }
    base = dict(report["daemon"]["health"])
    text = describe_status(report, Config(), now)
    assert text.splitlines()[:6] == [
        "daemon     running, pid 42, up 2 h 0 min; training on new text",
        "training   step 5,123, loss 1.526, 24.4k tokens/s (as of 6 s ago)",
        "documents  34 stored (17 trained, 17 queued); 1 duplicate, 2 skipped, 0 failed",
        # 1,945,699 / (24,360.2 x 0.95 of a batch new text) = 84 s
        "text       4.07M tokens stored, 1.95M not yet trained (about 1 min 24 s to train at the current rate)",
        "checkpoint step 5,000, 1 min 30 s ago (checkpoints/ckpt-000005000.safetensors)",
        "held-out   2.500 bits/byte at step 5,000, 5 min ago; best 2.500 at step 5,000; "
        "improving (-0.400 over the last 5 evaluations)",
    ]
    for health, doing in (({"paused": True}, "training paused by the operator"),
                          ({"plateaued": True}, "idle: the held-out figure stopped improving"),
                          ({"queue_tokens": 0}, "training on earlier text"),
                          ({"blocked": "disk_full"}, "writes blocked (disk_full)")):
        report["daemon"]["health"] = base | health
        assert doing in describe_status(report, Config(), now).splitlines()[0]
    # before the first checkpoint the store says nothing is trained; the running daemon's own
    # figure says how far it is, and a stale or withdrawn-inflated one never raises the store's
    report["daemon"]["health"] = base | {"queue_tokens": 1_234_567}
    assert "4.07M tokens stored, 1.23M not yet trained" in describe_status(report, Config(), now)
    report["daemon"]["health"] = base | {"queue_tokens": 3_000_000}
    assert "4.07M tokens stored, 1.95M not yet trained" in describe_status(report, Config(), now)
    report["daemon"] = {"running": False, "pid": None, "health": None}
    assert "1.95M not yet trained" in describe_status(report, Config(), now)
    # new text added held-out blocks: the trend is over the evaluations on the latest's set, and
    # a best measured again on it says so
    grown = [dict(e) for e in recent]
    grown[-2]["holdout_tokens"] = grown[-1]["holdout_tokens"] = 1024
    grown[-1]["val_bits_per_byte"] = 2.9
    report["evaluation"] = {"latest": grown[-1], "recent": grown,
                            "best": grown[0] | {"val_bits_per_byte": 2.7, "holdout_tokens": 1024, "remeasured": True}}
    assert ("held-out   2.900 bits/byte at step 5,000, 5 min ago; best 2.700 at step 1,000 (measured again on "
            "today's held-out text); worse (+0.300 over the last 2 evaluations)") in describe_status(report, Config(), now)
    grown[-2]["holdout_tokens"] = 512
    assert "; its held-out text grew since the evaluation before" in describe_status(report, Config(), now)
