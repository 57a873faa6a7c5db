"""The training loop grows its model (crawler/training/grower.py) against a real SQLite queue: the
growth is measured before and after (the same bits per byte), logged as `model_grown`,
checkpointed and recorded in train_state; a restart goes on from the grown model without a
misleading `model_config_ignored`; a resume across a growth lands on the bits of an
uninterrupted run; a best model from before the growth never breaks an evaluation. The policy is
scripted here (its rule is tested in test_growth_policy.py)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from crawler.config import Config, DaemonConfig, GrowthConfig
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.checkpoints import BEST_CHECKPOINT
from crawler.training.growth import Decision
from crawler.training.worker import TrainingWorker
from engine import ModelConfig, TrainConfig, load_checkpoint
from storage import CorpusQueue, StorageConfig, open_database

TEXT = "the quick brown fox jumps over the lazy dog. " * 200  # 9k bytes: one held-out block


def tiny_config(state: Path, **daemon) -> Config:
    return Config(
        state_dir=state,
        model=ModelConfig(context_length=16, d_model=16, n_layer=1, n_head=2),
        train=TrainConfig(batch_size=4, seq_len=16, threads=1, warmup_steps=2, schedule="constant"),
        daemon=replace(DaemonConfig(), **({"checkpoint_every_steps": 4, "eval_every_steps": 4, "idle": "sleep",
                                           "keep_checkpoints": 10} | daemon)),
    )


@pytest.fixture
def store(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    yield database
    database.close()


def add_text(store, folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    assert Ingestor(CorpusQueue(store), ByteTokenizer()).ingest_file(path).status == "ingested"


class GrowAt:
    """A scripted policy: at the first evaluation at or after `step`, grow to `to` layers (a model
    already that deep is left alone, so a restarted run does not grow twice)."""

    def __init__(self, step: int, to: int):
        self.step, self.to = step, to

    def decide(self, history, now):
        last = history[-1]
        if last.step < self.step or last.n_layer >= self.to:
            return None
        return Decision(add=self.to - last.n_layer, n_layer=self.to, reason="scripted", slope=None,
                        evaluations=len(history), passes=last.passes, tokens_per_parameter=0.0, step_seconds=0.0,
                        memory_mb=0.0)


def worker_for(config: Config, store, policy=None) -> TrainingWorker:
    return TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(), growth_policy=policy)


def run_to(worker: TrainingWorker, step: int) -> None:
    while worker.figures.step < step:  # `now` on the worker's clock, as the policy's times are
        assert worker.run_once(worker.clock()) == 0.0


def test_the_loop_grows_logs_checkpoints_and_a_restart_goes_on_from_the_grown_model(tmp_path, store):
    add_text(store, tmp_path, "a.txt", TEXT)
    config = tiny_config(tmp_path / "state")
    worker = worker_for(config, store, GrowAt(8, to=3))
    worker.initialize()
    try:
        with capture_logs() as logs:
            run_to(worker, 12)
        assert worker.trainer.model_config.n_layer == 3 and worker.figures.n_layer == 3
        assert [(g["step"], g["from"], g["to"]) for g in worker.figures.growths] == [(8, 1, 3)]
    finally:
        worker.shutdown()
    grown = [e for e in logs if e["event"] == "model_grown"]
    assert len(grown) == 1
    event = grown[0]
    assert (event["step"], event["trigger"], event["reason"]) == (8, "policy", "scripted")
    assert (event["old"]["n_layer"], event["new"]["n_layer"]) == (1, 3)
    assert event["parameters_after"] > event["parameters_before"] == event["old"]["parameters"]
    # the grown model computes the old one's function: the same held-out figure, to the bit
    assert event["val_bits_per_byte_before"] is not None and event["exact"]
    assert event["val_bits_per_byte_after"] == event["val_bits_per_byte_before"]
    saved = [(e["step"], e["reason"]) for e in logs if e["event"] == "checkpoint_saved"]
    assert saved == [(4, "schedule"), (8, "grown"), (12, "schedule")]
    assert [e["step"] for e in logs if e["event"] == "eval_finished"] == [4, 8, 12]  # no evaluation lost or added
    at_growth = load_checkpoint(tmp_path / "state" / "checkpoints" / "ckpt-000000008.safetensors")
    assert at_growth.model_config.n_layer == 3
    assert [(r["step"], r["old"]["n_layer"], r["new"]["n_layer"]) for r in at_growth.train_state["growth"]] == \
        [(8, 1, 3)]
    assert "growth_history" in at_growth.extra  # the policy's evaluations, for the next start

    again = worker_for(config, store)  # the configured policy: [growth] off; [model] n_layer = 1
    with capture_logs() as logs:
        again.initialize()
    try:
        events = {e["event"]: e for e in logs}
        assert "model_config_ignored" not in events  # the shape it was born with is the configured one
        assert again.trainer.model_config.n_layer == 3 and again.trainer.step_count == 12
        assert events["trainer_ready"]["growths"] == 1 and events["trainer_ready"]["growth"].startswith("off")
        # the policy's history came back with the checkpoint: the evaluations of the last doubling
        # of tokens seen (steps 8 and 12; step 4's is older than half of step 12's count)
        assert [p.step for p in again.grower.points] == [8, 12] and again.grower.depth_tokens > 0
        run_to(again, 14)  # and it trains on, grown
    finally:
        again.shutdown()


def test_the_history_shows_each_shape_and_the_step_it_grew_at(tmp_path, store):
    """Each evaluation row holds the model it measured: the growth at step 8 shows in the history
    as the first row of the new shape, which names the step and the depth it grew from, and no
    row of its own (the curve stays the cooled copies' figures)."""
    add_text(store, tmp_path, "a.txt", TEXT)
    worker = worker_for(tiny_config(tmp_path / "state"), store, GrowAt(8, to=3))
    worker.initialize()
    try:
        with capture_logs() as logs:
            run_to(worker, 12)
    finally:
        worker.shutdown()
    (grown,) = [e for e in logs if e["event"] == "model_grown"]
    shape = {"d_model": 16, "n_head": 2}
    born = shape | {"n_layer": 1, "parameters": grown["parameters_before"], "grown_at_step": None,
                    "grown_from_layers": None}
    deeper = shape | {"n_layer": 3, "parameters": grown["parameters_after"], "grown_at_step": 8, "grown_from_layers": 1}
    history = CorpusQueue(store).evaluations()
    assert [(r.step, r.model) for r in history] == [(4, born), (8, born), (12, deeper)]
    assert [r.step for r in history] == [e["step"] for e in logs if e["event"] == "eval_finished"]


def test_a_resume_across_a_growth_is_bit_exact(tmp_path):
    """Grown at step 8 and run to 16 straight, or stopped at 10 and resumed: the same bits."""
    results = {}
    for run, stops in (("straight", [16]), ("split", [10, 16])):
        folder = tmp_path / run
        folder.mkdir()
        database = open_database(StorageConfig(url=f"sqlite:///{folder / 'corpus.db'}").validate())
        try:
            add_text(database, folder, "a.txt", TEXT)
            for stop in stops:
                worker = worker_for(tiny_config(folder / "state"), database, GrowAt(8, to=2))
                worker.initialize()
                try:
                    run_to(worker, stop)
                    params, m, v = worker.trainer.params.copy(), worker.trainer.m.copy(), worker.trainer.v.copy()
                    growth = worker.trainer.growth
                finally:
                    worker.shutdown()
            results[run] = (params, m, v, growth)
        finally:
            database.close()
    straight, split = results["straight"], results["split"]
    assert [r["step"] for r in straight[3]] == [r["step"] for r in split[3]] == [8]
    for a, b in zip(straight[:3], split[:3]):
        np.testing.assert_array_equal(a, b)


def test_a_best_model_from_before_the_growth_never_breaks_an_evaluation(tmp_path, store):
    """New text completes a second held-out block after the growth: the best (one layer) cannot
    be measured again by the grown trainer, so the grown model's next figure is the best."""
    add_text(store, tmp_path, "a.txt", TEXT)
    worker = worker_for(tiny_config(tmp_path / "state"), store, GrowAt(8, to=2))
    worker.initialize()
    try:
        run_to(worker, 8)
        assert worker.trainer.model_config.n_layer == 2
        best = load_checkpoint(worker.checkpoints.best_path)
        assert best.model_config.n_layer == 1  # the cooled copy of the evaluation before the growth
        add_text(store, tmp_path, "b.txt", "pack my box with five dozen liquor jugs. " * 250)
        with capture_logs() as logs:
            run_to(worker, 16)
        events = [e["event"] for e in logs]
        assert "best_checkpoint_unreadable" not in events
        changed = next(e for e in logs if e["event"] == "holdout_changed")
        assert changed["best_val_bits_per_byte"] is None
        assert load_checkpoint(worker.checkpoints.best_path).model_config.n_layer == 2
    finally:
        worker.shutdown()


def test_the_configured_policy_grows_the_loop_and_a_set_depth_keeps_it(tmp_path):
    """[growth] on, with settings that find any curve flat: the loop grows at the second
    evaluation (the window) to the ceiling; the same with the depth set by hand does not."""
    growth = GrowthConfig(enabled=True, max_layers=2, window=2, flat_slope=100.0, min_seconds=0.0,
                          min_tokens_per_parameter=0.0, max_passes=1000.0, max_step_seconds=60.0)
    for depth_set_in, grows in (("flag --layers", False), ("", True)):
        folder = tmp_path / f"run-{grows}"
        folder.mkdir()
        database = open_database(StorageConfig(url=f"sqlite:///{folder / 'corpus.db'}").validate())
        state = folder / "state"
        config = replace(tiny_config(state), growth=growth, depth_set_in=depth_set_in)
        try:
            add_text(database, folder, "a.txt", TEXT)
            worker = worker_for(config, database)
            worker.initialize()
            try:
                with capture_logs() as logs:
                    run_to(worker, 20)
            finally:
                worker.shutdown()
        finally:
            database.close()
        grown = [e for e in logs if e["event"] == "model_grown"]
        if not grows:
            assert grown == [] and worker.figures.n_layer == 1
            continue
        assert [(e["step"], e["new"]["n_layer"]) for e in grown] == [(8, 2)]
        assert grown[0]["evaluations"] == 2 and "flat" in grown[0]["reason"]
        # the grown depth is judged once tokens seen have doubled since (step 16): flat, at the ceiling
        declined = [e for e in logs if e["event"] == "growth_declined"]
        assert [(e["reason"], e["step"], e["n_layer"]) for e in declined] == [("max_layers", 16, 2)]  # once
        assert (state / "checkpoints" / BEST_CHECKPOINT).exists()
