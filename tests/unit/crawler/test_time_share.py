"""Where the training loop's time goes: TimeShare (crawler/training/figures.py) on a scripted
timer, the worker's spans (steps, evaluations, checkpoints, idle), and how `status` says it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
import structlog

from crawler.cli.corpus import describe_status
from crawler.config import Config
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.figures import TimeShare
from crawler.training.worker import TrainingWorker
from storage import CorpusQueue

from test_training import add_text, store, tiny_config  # noqa: F401  (store: a fixture)


class Timer:
    """A timer that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_shares_of_the_window_with_a_span_cut_by_its_start_and_idle_still_going():
    timer = Timer()
    share = TimeShare(timer, window=100.0)
    timer.now = 30.0
    share.add("train", 0.0)  # 0..30
    share.add("evaluate", 30.0, 40.0)
    timer.now = 50.0
    assert share.shares() == {"window_s": 50.0, "train": 0.6, "evaluate": 0.2, "checkpoint": 0.0, "idle": 0.0,
                              "other": 0.2}
    share.add("checkpoint", 45.0, 50.0)
    share.idle(True)  # from 50
    timer.now = 120.0  # the window is 20..120: 10 s of the train span, idle 70 s and going on
    got = share.shares()
    assert got["window_s"] == 100.0
    assert got["train"] == pytest.approx(0.1) and got["evaluate"] == pytest.approx(0.1)
    assert got["checkpoint"] == pytest.approx(0.05) and got["idle"] == pytest.approx(0.7)
    assert got["other"] == pytest.approx(0.05)
    share.idle(False)  # the idle span is closed at 120
    timer.now = 250.0  # everything before 150 is out of the window; the last 130 s: nothing recorded
    assert share.shares() == {"window_s": 100.0, "train": 0.0, "evaluate": 0.0, "checkpoint": 0.0, "idle": 0.0,
                              "other": 1.0}


def test_the_loop_counts_its_steps_evaluations_checkpoints_and_idle_time(tmp_path, store):  # noqa: F811
    """Each timer read advances it by one second: a step, an evaluation and a checkpoint are one
    second each, so the shares count how many of each the loop ran; at the plateau it idles."""
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 300)
    ticks = [0.0]

    def timer() -> float:
        ticks[0] += 1.0
        return ticks[0]

    config = tiny_config(tmp_path / "state", eval_every_steps=5, checkpoint_every_steps=10, log_every=1,
                         cooldown_fraction=0.0)
    worker = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(), timer=timer)
    worker.initialize()
    try:
        for now in range(20):
            worker.run_once(float(now))
        share = worker.figures.time_share  # reported at step 20's train_step, before its evaluation
        # 20 steps, evaluations at 5, 10, 15, checkpoints at 10 (with its evaluation): one
        # second each, two timer reads a span and none between them
        assert share["train"] > share["evaluate"] > share["checkpoint"] > 0
        assert share["idle"] == 0.0
        assert share["train"] + share["evaluate"] + share["checkpoint"] + share["other"] == pytest.approx(1.0, abs=0.01)
        worker.pause_requested = True
        worker.run_once(20.0)  # paused: idle from here
        ticks[0] += 100.0
        worker.run_once(20.5)
        assert worker.figures.time_share["idle"] > 0.5
    finally:
        worker.shutdown()


def test_status_says_how_much_of_the_last_ten_minutes_trained():
    now = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc).timestamp()
    health = {"state": "ready", "started_at": "2026-11-30T10:00:00Z", "updated_at": "2026-11-30T11:59:54Z",
              "step": 5123, "loss": 1.5, "tokens_per_s": 24360.2, "idle": False, "plateaued": False,
              "paused": False, "blocked": None,
              "time_share": {"window_s": 600.0, "train": 0.931, "evaluate": 0.058, "checkpoint": 0.004,
                             "idle": 0.0, "other": 0.007}}
    report = {"exists": False, "state_dir": "crystalline-state", "database": "sqlite:///x.db",
              "daemon": {"running": True, "pid": 42, "health": health},
              "disk": {"database": {"bytes": 0}, "checkpoints": {"bytes": 0, "cap_bytes": 0},
                       "processed": {"bytes": 0, "cap_bytes": 0}, "quarantine": {"bytes": 0, "cap_bytes": 0},
                       "free_bytes": 1}}
    lines = describe_status(report, Config(), now).splitlines()
    assert lines[2] == ("time       training 93 % of the last 10 min (evaluation 6 %, checkpoints 0 %, idle 0 %, "
                        "the loop between steps 1 %)")
    health["time_share"] = {"window_s": 45.0, "train": 0.5, "evaluate": 0.5, "checkpoint": 0.0, "idle": 0.0,
                            "other": 0.0}
    assert "training 50 % of the last 45 s" in describe_status(report, Config(), now)
    health["time_share"] = None  # a daemon of an earlier version, or before the first step
    assert "time " not in describe_status(report, Config(), now)
