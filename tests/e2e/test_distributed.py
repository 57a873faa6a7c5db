"""`mpiexec -n 2 crystalline train --distributed` as users run it: the ranks agree, the job
takes the steps one process with the combined batch takes, and a rank killed mid-run ends the
job without losing a checkpoint. Skipped, saying why, only when mpi4py or mpiexec is missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import load_latest_checkpoint
from storage import CorpusQueue, StorageConfig, open_database

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "engine"))
from test_distributed import mpiexec  # noqa: E402 (the same skip)

ROOT = Path(__file__).resolve().parents[2]
FLAGS = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--threads", "1",
         "--schedule", "constant", "--warmup", "2", "--log-every", "1"]
pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    words = ["crystal", "lattice", "growth", "facet", "seed", "melt", "cool", "grain"]
    for i in range(3):
        (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 3000)) + "\n")
    return folder


def crystalline(*argv, ranks: int = 0, **kw) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "crawler", *map(str, argv)]
    if ranks:
        command = [mpiexec(), "-n", str(ranks), *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    if kw.pop("background", False):
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT, start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def events(stderr: str) -> list[dict]:
    """Every JSON event line; two ranks' lines may reach the one pipe run together (mpiexec forwards
    each rank's output in pieces), so each object on a line is read."""
    decoder, found = json.JSONDecoder(), []
    for line in stderr.splitlines():
        at = line.find("{")
        while at >= 0:
            try:
                event, end = decoder.raw_decode(line, at)
            except json.JSONDecodeError:  # a piece cut short: the next object may follow it
                at = line.find("{", at + 1)
                continue
            if isinstance(event, dict) and "event" in event:  # (not an object nested in a piece)
                found.append(event)
            at = line.find("{", end)
    return found


def test_two_ranks_agree_and_train_as_one_process_with_the_combined_batch(tmp_path, corpus):
    two = crystalline("train", corpus, "--distributed", "--steps", "12", "--batch-size", "4", *FLAGS,
                      "--state-dir", tmp_path / "two", ranks=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = crystalline("train", corpus, "--steps", "12", "--batch-size", "8", *FLAGS, "--state-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    logged = events(two.stderr)
    released = [e for e in logged if e["event"] == "replicas_released"]
    idle = [e for e in logged if e["event"] == "follower_idle"]
    assert released and idle and released[-1]["params_sha256"] == idle[-1]["params_sha256"]
    assert {e.get("rank") for e in logged} == {0, 1}  # every event says which rank it is from
    steps = [e for e in logged if e["event"] == "train_step"]
    assert steps[-1]["step"] == 12 and all(e["rank"] == 0 for e in steps)
    distributed, _ = load_latest_checkpoint(tmp_path / "two" / "checkpoints")
    single, _ = load_latest_checkpoint(tmp_path / "one" / "checkpoints")
    assert distributed.step == single.step == 12
    assert distributed.extra["stream_position"] == single.extra["stream_position"]  # the same windows consumed
    assert np.abs(distributed.params - single.params).max() <= 1e-5 * np.abs(single.params).max()


def test_a_rank_killed_mid_run_ends_the_job_and_a_restart_resumes_from_the_checkpoint(tmp_path, corpus):
    state = tmp_path / "state"
    job = crystalline("train", corpus, "--distributed", "--steps", "100000", "--batch-size", "4", *FLAGS,
                      "--checkpoint-every", "5", "--state-dir", state, ranks=2, background=True)
    follower, saved = None, []
    try:
        for line in job.stderr:
            if not line.startswith("{"):
                continue
            event = json.loads(line)
            if event["event"] == "follower_ready":
                follower = event["pid"]
            if event["event"] == "checkpoint_saved":
                saved.append(event["step"])
                if len(saved) == 2:
                    break
        assert follower is not None and len(saved) == 2
        os.kill(follower, signal.SIGKILL)
        assert job.wait(timeout=60) != 0  # the launcher ends the job
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}"))) as queue:
        cursor, latest = queue.cursor(), queue.latest_checkpoint()
    assert latest.step >= saved[-1] and cursor.stream_position == latest.stream_position
    again = crystalline("train", corpus, "--steps", str(latest.step + 3), "--batch-size", "8", *FLAGS,
                        "--state-dir", state)
    assert again.returncode == 0, again.stderr[-3000:]
    loaded = [e for e in events(again.stderr) if e["event"] == "checkpoint_loaded"]
    assert loaded and loaded[0]["step"] == latest.step and loaded[0]["stream_position"] == latest.stream_position


def test_sync_ranks_grow_together_and_stay_bit_identical(tmp_path, corpus):
    """[growth] on (settings that find any curve flat) and the depth left to it (no --layers): the
    policy grows the model at the second evaluation; rank 0 sends GROW, every rank grows at the
    same step, and the replicas agree to the bit at the end."""
    at = FLAGS.index("--layers")
    flags = FLAGS[:at] + FLAGS[at + 2:]  # the default depth, 4: not set by hand
    growth = {"CRYSTALLINE_GROWTH_ENABLED": "true", "CRYSTALLINE_GROWTH_MAX_LAYERS": "5",
              "CRYSTALLINE_GROWTH_WINDOW": "2", "CRYSTALLINE_GROWTH_FLAT_SLOPE": "100",
              "CRYSTALLINE_GROWTH_MIN_SECONDS": "0", "CRYSTALLINE_GROWTH_MIN_TOKENS_PER_PARAMETER": "0",
              "CRYSTALLINE_GROWTH_MAX_PASSES": "1000", "CRYSTALLINE_GROWTH_MAX_STEP_SECONDS": "60"}
    two = crystalline("train", corpus, "--distributed", "--steps", "15", "--batch-size", "4", *flags,
                      "--checkpoint-every", "5", "--state-dir", tmp_path / "two", ranks=2, env=growth)
    assert two.returncode == 0, two.stderr[-3000:]
    logged = events(two.stderr)
    grown = [e for e in logged if e["event"] == "model_grown"]
    assert [(e["step"], e["old"]["n_layer"], e["new"]["n_layer"], e["ranks"]) for e in grown] == [(10, 4, 5, 2)]
    assert grown[0]["exact"]
    followers = [e for e in logged if e["event"] == "follower_grown"]
    assert [(e["rank"], e["step"], e["n_layer"]) for e in followers] == [(1, 10, 5)]
    released = [e for e in logged if e["event"] == "replicas_released"]
    idle = [e for e in logged if e["event"] == "follower_idle"]
    assert released and idle and released[-1]["params_sha256"] == idle[-1]["params_sha256"]
    latest, _ = load_latest_checkpoint(tmp_path / "two" / "checkpoints")
    assert latest.step == 15 and latest.model_config.n_layer == 5
