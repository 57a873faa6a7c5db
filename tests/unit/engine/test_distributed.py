"""Training across processes (engine/distributed.py) under a real `mpiexec` over loopback.

"sync": every rank holds bit-identical parameters after every step, equal (up to float
summation order) to one process taking the combined batch. "local": ranks differ between
averages and agree after each one. The runs use tests/unit/engine/distributed_run.py. Skipped,
saying why, only when mpi4py or mpiexec (the `distributed` extra) is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import ConfigError, DistributedConfig, ModelConfig, count_parameters
from engine.distributed import Averager, Communicator

RUN = Path(__file__).with_name("distributed_run.py")
ROOT = Path(__file__).resolve().parents[3]


def mpiexec() -> str:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[distributed]')")
    found = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("no mpiexec on PATH (the mpich wheel of the `distributed` extra ships one)")
    return found


def launch(out: Path, ranks: int, *argv) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(RUN), str(out), *map(str, argv)]
    if ranks:
        command = [mpiexec(), "-n", str(ranks), *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("ranks", [2, 3])
def test_sync_ranks_are_bit_identical_and_take_the_combined_batch(tmp_path, ranks):
    launch(tmp_path / "mpi", ranks, "sync", 4, 2)
    launch(tmp_path / "one", 0, "sync", 4, 2 * ranks)  # one process, the combined batch
    history = [np.load(tmp_path / "mpi" / f"rank-{r}.npy") for r in range(ranks)]  # (steps, P) each
    for other in history[1:]:
        np.testing.assert_array_equal(history[0], other)  # every step, every bit
    single = np.load(tmp_path / "one" / "rank-0.npy")
    assert not np.array_equal(history[0][0], history[0][-1])  # it did train
    # the same maths summed in another order: within 1e-5 of the parameters' scale (AdamW divides
    # by sqrt(v), so a near-zero gradient's last bits can move a parameter by a part of the rate)
    scale = np.abs(single).max(axis=1, keepdims=True)  # (steps, 1)
    assert (np.abs(history[0] - single) <= 1e-5 * scale).all()


def test_local_ranks_diverge_between_averages_and_agree_after_each(tmp_path):
    launch(tmp_path / "mpi", 3, "local", 6, 2, 3)  # average every 3 steps
    history = [np.load(tmp_path / "mpi" / f"rank-{r}.npy") for r in range(3)]
    for step in range(6):
        agree = all(np.array_equal(history[0][step], h[step]) for h in history[1:])
        assert agree == ((step + 1) % 3 == 0), f"step {step + 1}"


def test_ranks_that_grow_at_the_same_step_stay_together(tmp_path):
    """engine/grow.py is a fixed function of its arguments: "sync" ranks stay bit-identical
    through a growth, and "local" ranks (whose averager's anchor grows too) agree after each
    average that follows it."""
    launch(tmp_path / "sync", 2, "sync", 4, 2, 2, 2)  # two blocks more after step 2
    history = [np.load(tmp_path / "sync" / f"rank-{r}.npy") for r in range(2)]  # (2, P') each
    grown = ModelConfig(vocab_size=61, context_length=12, d_model=16, n_layer=4, n_head=2)  # distributed_run's, grown
    assert history[0].shape == (2, count_parameters(grown))
    np.testing.assert_array_equal(history[0], history[1])
    launch(tmp_path / "local", 2, "local", 6, 2, 3, 2)  # averages at steps 3 and 6, growth after step 2
    history = [np.load(tmp_path / "local" / f"rank-{r}.npy") for r in range(2)]  # steps 3..6
    for step in range(3, 7):
        agree = np.array_equal(history[0][step - 3], history[1][step - 3])
        assert agree == (step % 3 == 0), f"step {step}"


def test_one_process_is_free_and_averaging_is_exact():
    params = np.arange(6, dtype=np.float32)
    averager = Averager(Communicator(), DistributedConfig(mode="local"), params)
    params += 1.0
    averager.average(params)  # one rank: the average is itself
    np.testing.assert_array_equal(params, np.arange(6, dtype=np.float32) + 1)
    np.testing.assert_array_equal(averager.anchor, params)
    nesterov = Averager(Communicator(), DistributedConfig(mode="local", outer_lr=0.5, outer_momentum=0.5), params)
    before = params.copy()
    params -= 2.0  # the ranks' averaged change is -2: the outer step moves half of it, with momentum
    nesterov.average(params)
    np.testing.assert_allclose(params, before - 0.5 * (2.0 + 0.5 * 2.0))


@pytest.mark.parametrize("bad", [{"mode": "ring"}, {"sync_every": 0}, {"outer_lr": 0.0},
                                 {"outer_momentum": 1.0}, {"timeout_seconds": 0}])
def test_bad_settings_name_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        DistributedConfig(**bad).validate()


def test_a_follower_that_hears_nothing_from_rank_0_ends_the_job():
    import structlog
    from structlog.testing import capture_logs

    from crawler.training.team import follow

    class Silent(Communicator):
        size = 2
        rank = 1

        def bcast_idle(self, x, root=0, timeout=None):
            assert timeout == 7.0  # the first wait is bounded by [distributed] timeout_seconds
            raise TimeoutError("rank 0 sent nothing for 7 s")

    with capture_logs() as logs:
        assert follow(Silent(), structlog.get_logger(), timeout=7.0) == 1
    failed = [e for e in logs if e["event"] == "follower_failed"]
    assert failed and "timeout_seconds" in failed[0]["error"]
