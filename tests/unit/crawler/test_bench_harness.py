"""crawler.bench.results and crawler.bench.harness, the bench/ scripts' shared harness: a result row
names the commit it was measured on and is refused from a dirty tree unless allowed (on a
throwaway git repository), a campaign's exit status, the settings a daemon is given, and held-out
bits per byte counted by hand. The daemon itself is exercised by the scripts, not here."""

from __future__ import annotations

import json
import math
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from crawler.bench import harness
from crawler.bench.results import DirtyTree, ResultLog, add_result_flags, is_dirty, read_revision
from engine.units import LN2, bits_per_byte


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
                           "-c", "commit.gpgsign=false", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with one commit: a source file and a results file, both tracked."""
    root = tmp_path / "repo"
    (root / "bench" / "results").mkdir(parents=True)
    (root / "code.py").write_text("x = 1\n")
    (root / "bench" / "results" / "runs.jsonl").write_text("")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


def log_in(repo: Path, allow_dirty: bool = False) -> ResultLog:
    return ResultLog(repo / "bench" / "results" / "runs.jsonl", allow_dirty=allow_dirty, repo=repo)


# ---------------------------------------------------------------------------------------------
# result rows


def test_a_row_records_the_commit_it_was_measured_on(repo):
    log = log_in(repo)
    before = log.check()
    written = log.append({"key": "a", "bpb": 2.0}, before)
    assert written["revision"] == git(repo, "rev-parse", "HEAD") and written["dirty"] is False
    assert log.latest() == {"a": written}
    assert json.loads((repo / "bench" / "results" / "runs.jsonl").read_text()) == written


def test_a_dirty_tree_is_refused_before_the_run_unless_allowed(repo):
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(DirtyTree, match="--allow-dirty"):
        log_in(repo).check()
    log = log_in(repo, allow_dirty=True)
    written = log.append({"key": "a"}, log.check())
    assert written["dirty"] is True and is_dirty(written)
    assert written["revision"] == git(repo, "rev-parse", "HEAD")


def test_a_tree_that_changes_during_the_run_is_refused_unless_allowed(repo):
    before = log_in(repo).check()
    (repo / "code.py").write_text("x = 2\n")
    with pytest.raises(DirtyTree, match="changed during the run"):
        log_in(repo).append({"key": "a"}, before)
    assert log_in(repo).rows() == []
    assert log_in(repo, allow_dirty=True).append({"key": "a"}, before)["dirty"] is True


def test_a_commit_made_during_the_run_makes_the_row_dirty(repo):
    before = log_in(repo).check()
    (repo / "code.py").write_text("x = 2\n")
    git(repo, "commit", "-q", "-am", "second")
    assert read_revision(repo).dirty is False
    with pytest.raises(DirtyTree):
        log_in(repo).append({"key": "a"}, before)


def test_the_rows_themselves_do_not_make_the_tree_dirty(repo):
    log = log_in(repo)
    log.append({"key": "a"}, log.check())  # the tracked results file now differs from HEAD
    assert read_revision(repo).dirty is False
    assert log.append({"key": "b"}, log.check())["dirty"] is False


def test_outside_a_checkout_every_row_counts_as_dirty(tmp_path):
    revision = read_revision(tmp_path)
    assert revision.commit is None and revision.dirty
    with pytest.raises(DirtyTree):
        ResultLog(tmp_path / "runs.jsonl", repo=tmp_path).check()


def test_older_rows_say_dirty_in_their_revision():
    assert is_dirty({"revision": "742e542+dirty"}) and not is_dirty({"revision": "742e542"})
    assert is_dirty({"revision": "0" * 40, "dirty": True}) and not is_dirty({})


def test_rows_keep_the_last_of_each_key_and_leave_out_what_is_not_a_row(tmp_path, capsys):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"key": "a", "n": 1}\nnot json\n{"key": "a", "n": 2}\n[1]\n\n{"name": "x"}\n')
    log = ResultLog(path)
    assert log.latest() == {"a": {"key": "a", "n": 2}}
    assert capsys.readouterr().err.count("not a result row") == 2  # lines 2 and 4
    assert log.latest("name") == {"x": {"name": "x"}}


def test_result_flags_default_to_the_results_folder():
    import argparse

    parser = argparse.ArgumentParser()
    add_result_flags(parser, "runs.jsonl")
    args = parser.parse_args([])
    assert (args.results.name, args.results.parent.name, args.force, args.allow_dirty) == \
        ("runs.jsonl", "results", False, False)


def test_record_each_records_what_finished_and_reports_what_failed(repo, capsys):
    def failing() -> dict:
        raise harness.RunFailed("daemon exited 1")

    log = log_in(repo)
    handler = signal.getsignal(signal.SIGTERM)
    status = harness.record_each(log, [("good", lambda: {"key": "good"}), ("bad", failing)], "bench/x.py", corpus="C")
    assert status == 1 and signal.getsignal(signal.SIGTERM) is handler  # SIGTERM is Ctrl-C only during the runs
    (row,) = log.rows()
    assert row["key"] == "good" and row["corpus"] == "C" and row["started_at"] and row["dirty"] is False
    assert "bad: FAILED, not recorded: daemon exited 1" in capsys.readouterr().err


def test_record_each_starts_nothing_on_a_dirty_tree(repo, capsys):
    (repo / "code.py").write_text("x = 2\n")
    ran = []
    status = harness.record_each(log_in(repo), [("a", lambda: ran.append(1) or {"key": "a"})], "bench/x.py")
    assert (status, ran) == (2, [])
    err = capsys.readouterr().err
    assert err.startswith("bench/x.py:") and "--allow-dirty" in err


# ---------------------------------------------------------------------------------------------
# settings and the corpus


def test_settings_become_the_daemons_crystalline_toml():
    recipes = harness.parse_recipes("rope=model.positions=rope,fast=train.learning_rate=0.003/daemon.x=true")
    assert recipes == {"rope": (("model", "positions", "rope"),),
                       "fast": (("train", "learning_rate", 0.003), ("daemon", "x", True))}
    sections = harness.with_settings(harness.watching(Path("/in")), recipes["fast"])
    assert harness.toml_text(sections) == ('[watch]\nroots = ["/in"]\nsettle_seconds = 0.5\n\n'
                                           '[log]\nformat = "json"\n\n'
                                           '[train]\nlearning_rate = 0.003\n\n[daemon]\nx = true\n\n')
    with pytest.raises(ValueError, match="NAME=section.key=value"):
        harness.parse_recipes("bad=nodot")


def test_held_out_counts_every_target_once_and_its_bytes():
    tokens = np.arange(1, 42, dtype=np.int32) % 256  # 41 tokens: 40 targets, no EOD
    held = harness.held_out(tokens, seq_len=8, batch_size=2)
    assert sum(y.size for _, y in held.batches) == 40 and held.n_bytes == 40
    assert held.bits_per_byte(lambda x, y: float(y.size)) == pytest.approx(1 / math.log(2))
    kept = harness.held_out(tokens, seq_len=8, batch_size=2, keep=3)
    assert [x.shape for x, _ in kept.batches] == [(2, 8), (1, 8)] and kept.n_bytes == 24


def test_bits_per_byte_is_nats_over_ln2_over_bytes():
    assert LN2 == math.log(2.0)
    assert bits_per_byte(2 * LN2 * 10, 10) == pytest.approx(2.0)


def test_a_missing_corpus_names_what_it_needs(tmp_path):
    (tmp_path / "train").mkdir()
    assert harness.corpus_folder(tmp_path, splits=("train",)) == tmp_path.resolve()
    with pytest.raises(harness.CorpusMissing, match="needs train/ and val/ folders"):
        harness.corpus_folder(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        harness.corpus_or_exit(tmp_path / "nowhere", "bench/x.py")
    assert exit_.value.code == 2


def test_json_events_and_the_mean_rate():
    assert harness.json_events('{"event": "a"}\nplain\n[1]\n{"event": "b"}') == [{"event": "a"}, {"event": "b"}]
    assert harness.mean_rate([100.0, 300.0]) == pytest.approx(150.0) and harness.mean_rate([]) is None
