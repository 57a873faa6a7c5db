"""The training loop against a real SQLite queue: steps, checkpoint + cursor, resume, repair, the
held-out split, evaluation, the best model and the plateau rule."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from crawler.config import Config, DaemonConfig
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.checkpoints import BEST_CHECKPOINT
from crawler.training.worker import TrainingWorker
from engine import CheckpointError, ModelConfig, TrainConfig, load_checkpoint
from engine.checkpoint import list_checkpoints
from storage import CorpusQueue, HoldoutSplit, StorageConfig, open_database


def tiny_config(state: Path, **daemon) -> Config:
    return Config(
        state_dir=state,
        model=ModelConfig(context_length=16, d_model=16, n_layer=1, n_head=2),
        train=TrainConfig(batch_size=4, seq_len=16, threads=1, warmup_steps=2, schedule="constant"),
        daemon=replace(DaemonConfig(), **({"checkpoint_every_steps": 5, "idle": "sleep"} | daemon)),
    )


@pytest.fixture
def store(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    yield database
    database.close()


def add_text(store, tmp_path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    outcome = Ingestor(CorpusQueue(store), ByteTokenizer()).ingest_file(path)
    assert outcome.status == "ingested"


def make_worker(tmp_path, store, **daemon) -> TrainingWorker:
    return TrainingWorker(tiny_config(tmp_path / "state", **daemon), CorpusQueue(store), ByteTokenizer(),
                          structlog.get_logger())


def test_trains_checkpoints_with_the_cursor_and_resumes(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "the quick brown fox jumps over the lazy dog. " * 40)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    try:
        for now in range(12):
            worker.run_once(float(now))
        assert worker.figures.step >= 10 and worker.figures.loss is not None
    finally:
        worker.shutdown()  # checkpoints the steps since the last one
    queue = CorpusQueue(store)
    latest = queue.latest_checkpoint()
    assert latest.step == worker.figures.step
    assert queue.cursor().stream_position == latest.stream_position == worker.figures.position
    assert latest.stream_position > 0
    assert latest.path == "checkpoints/" + Path(latest.path).name  # relative to the state directory
    assert (tmp_path / "state" / latest.path).exists()

    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        assert again.trainer.step_count == latest.step
        assert again.figures.position == latest.stream_position
        assert any(e["event"] == "checkpoint_loaded" for e in logs)
    finally:
        again.shutdown()


def test_a_checkpoint_is_taken_when_checkpoint_every_seconds_elapse_and_not_before(tmp_path, store):
    """The seconds branch of the schedule, on an injected clock: the worker's clock and the `now`
    handed to run_once are one fake clock, moved by hand (the step count never comes due)."""
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    now = [0.0]
    config = tiny_config(tmp_path / "state", checkpoint_every_steps=10_000, checkpoint_every_seconds=60.0,
                         eval_every_steps=10_000, eval_every_seconds=1e9)
    worker = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(),
                            clock=lambda: now[0])
    worker.initialize()

    def step_at(t: float) -> list[dict]:
        now[0] = t
        with capture_logs() as logs:
            assert worker.run_once(t) == 0.0
        return [(e["step"], e["reason"]) for e in logs if e["event"] == "checkpoint_saved"]

    try:
        for t in (10.0, 30.0, 59.9):
            assert step_at(t) == [], f"no checkpoint {t} s after the start"
        assert CorpusQueue(store).latest_checkpoint() is None
        assert step_at(60.0) == [(4, "schedule")]
        assert CorpusQueue(store).latest_checkpoint().step == 4
        assert step_at(119.9) == [], "the next interval counts from the checkpoint"
        assert step_at(120.0) == [(6, "schedule")]
        assert worker.figures.last_checkpoint_time == 120.0
    finally:
        worker.shutdown()


def test_waits_for_data_and_sleeps_when_idle(tmp_path, store):
    worker = make_worker(tmp_path, store)
    worker.initialize()
    try:
        assert worker.run_once(0.0) > 0, "an empty corpus: nothing to train, sleep"
        assert worker.figures.step == 0
        add_text(store, tmp_path, "a.txt", "some text to learn from, long enough for a batch. " * 10)
        assert worker.run_once(1.0) == 0.0 and worker.figures.step == 1
    finally:
        worker.shutdown()


def test_a_corrupt_newest_checkpoint_rewinds_to_the_previous(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    for now in range(11):  # checkpoints at steps 5 and 10
        worker.run_once(float(now))
    worker.trainer.close()
    queue = CorpusQueue(store)
    records = queue.checkpoints(limit=5)
    assert [r.step for r in records][:2] == [10, 5]
    newest = tmp_path / "state" / records[0].path
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        events = [e["event"] for e in logs]
        assert "checkpoint_corrupt" in events and "checkpoint_rewound" in events
        assert again.trainer.step_count == 5
        assert queue.cursor().stream_position == records[1].stream_position == again.figures.position
        assert queue.latest_checkpoint().step == 5
        assert not newest.exists() and (tmp_path / "state" / "quarantine" / newest.name).exists()  # moved aside
    finally:
        again.shutdown()


def test_an_uncommitted_checkpoint_file_is_recovered_not_deleted(tmp_path, store):
    """A crash between the file and its commit: the file holds the newest training, so the
    database is made to agree with it; a newer file without the loop's state is moved aside."""
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    for now in range(8):  # one committed checkpoint at step 5, then 3 more steps
        worker.run_once(float(now))
    # a crash after the file was written, before the database commit
    orphan = worker.trainer.save_checkpoint(worker.checkpoints.directory, extra=worker.checkpoint_extra(),
                                            keep_last=None)
    position, tokens = worker.figures.position, worker.figures.tokens_trained
    # a checkpoint of something else (no loop state), newer still: not this loop's to use or delete
    ones = np.ones((4, 16), np.int32)
    for _ in range(2):
        worker.trainer.step(ones, ones)
    foreign = worker.trainer.save_checkpoint(worker.checkpoints.directory,
                                             extra={"tokenizer": ByteTokenizer().identity()})
    worker.trainer.close()
    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        events = [e["event"] for e in logs]
        assert "checkpoint_recovered" in events and "checkpoint_orphan_removed" not in events
        assert orphan.exists() and again.trainer.step_count == 8
        assert not foreign.exists() and (tmp_path / "state" / "quarantine" / foreign.name).exists()
        queue = CorpusQueue(store)
        assert queue.latest_checkpoint().step == 8 and queue.latest_checkpoint().path == "checkpoints/" + orphan.name
        assert queue.cursor().stream_position == position == again.figures.position
        assert queue.cursor().tokens_trained == tokens
    finally:
        again.shutdown()


def test_a_checkpoint_from_another_tokenizer_is_refused(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    for now in range(6):
        worker.run_once(float(now))
    worker.trainer.close()

    class OtherTokenizer(ByteTokenizer):
        def identity(self):
            return {"kind": "byte", "vocab_size": 257, "version": 99}

    again = TrainingWorker(tiny_config(tmp_path / "state"), CorpusQueue(store), OtherTokenizer(), structlog.get_logger())
    with pytest.raises(CheckpointError, match="another tokenizer"):
        again.initialize()
    if again.trainer is not None:
        again.trainer.close()


def test_replay_share_of_batches(tmp_path, store, monkeypatch):
    monkeypatch.setattr("crawler.training.batches.FRESH_BUFFER", 8)  # replay draws from text before the buffer
    add_text(store, tmp_path, "a.txt", "x" * 5000)
    worker = make_worker(tmp_path, store, replay_fraction=0.25, checkpoint_every_steps=1000)
    worker.initialize()
    try:
        for now in range(20):
            worker.run_once(float(now))
        # 20 steps of 4 windows, a quarter replayed once there is trained data (after the first
        # buffer of 8): about 3 new windows per step (16 tokens each) were trained, not 4
        new_windows = worker.figures.tokens_trained // 16
        assert 20 * 3 <= new_windows <= 20 * 3 + 3, new_windows
    finally:
        worker.shutdown()


# --- the held-out split --------------------------------------------------------------------------

SMALL_SPLIT = HoldoutSplit(block_tokens=24, every=3, offset=1, max_blocks=1000)
HELD = ord("H")


def held_out_text(split: HoldoutSplit, n_bytes: int) -> str:
    """Text whose stream bytes are "H" exactly where the split holds text out (the stream is
    EOD + the file's bytes, so stream offset p is the file's byte p - 1), letters elsewhere."""
    mask = np.zeros(n_bytes + 1, bool)
    for k in split.blocks(n_bytes + 1):
        start = k * split.block_tokens
        mask[start : start + split.block_tokens + 1] = True
    letters = "abcdefghijklmnopqrstuvwxyz "
    return "".join("H" if mask[p] else letters[p % len(letters)] for p in range(1, n_bytes + 1))


def test_no_held_out_token_reaches_a_batch_and_the_split_survives_restarts(tmp_path, store):
    CorpusQueue(store).holdout(SMALL_SPLIT)  # recorded before the loop starts: the loop takes it
    add_text(store, tmp_path, "a.txt", held_out_text(SMALL_SPLIT, 3000))
    worker = make_worker(tmp_path, store, replay_fraction=0.25, checkpoint_every_steps=15, eval_every_steps=7,
                         plateau_patience=1000)
    batches = []
    worker.initialize()
    real_step = worker.trainer.step
    worker.trainer.step = lambda inputs, targets, **kw: (batches.append((inputs.copy(), targets.copy()))
                                                         or real_step(inputs, targets, **kw))
    try:
        for now in range(120):  # one pass is ~47 new windows at batch 4: most steps are further passes
            worker.run_once(float(now))
        assert worker.figures.epoch > 2
        assert worker.figures.val_bits_per_byte is not None
    finally:
        worker.shutdown()
    assert len(batches) > 120  # the live steps and the cool-downs' steps
    assert not any((x == HELD).any() or (y == HELD).any() for x, y in batches)
    again = make_worker(tmp_path, store)
    again.initialize()
    try:
        assert again.batches.split == SMALL_SPLIT  # recorded with the per-source fields: kept as it is
    finally:
        again.shutdown()


def test_evaluation_is_recorded_and_the_best_model_kept_apart(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "the quick brown fox jumps over the lazy dog. " * 200)  # 9k bytes
    worker = make_worker(tmp_path, store, checkpoint_every_steps=4, eval_every_steps=4, keep_checkpoints=2)
    worker.initialize()
    try:
        with capture_logs() as logs:
            for now in range(24):
                worker.run_once(float(now))
    finally:
        worker.shutdown()
    evals = [e for e in logs if e["event"] == "eval_finished"]
    assert [e["step"] for e in evals] == [4, 8, 12, 16, 20, 24]
    assert all(e["holdout_tokens"] == 512 and e["val_bits_per_byte"] > 0 for e in evals)
    history = CorpusQueue(store).evaluations()
    assert [r.step for r in history] == [4, 8, 12, 16, 20, 24]
    best = min(history, key=lambda r: r.val_bits_per_byte)
    assert CorpusQueue(store).best_evaluation().step == best.step
    saved = load_checkpoint(worker.checkpoints.directory / BEST_CHECKPOINT)
    assert saved.step == best.step and saved.extra["val_bits_per_byte"] == pytest.approx(best.val_bits_per_byte)
    # rolling retention: the newest two rolling files remain, the best is apart and untouched
    assert [p.name for p in list_checkpoints(worker.checkpoints.directory)] == ["ckpt-000000020.safetensors",
                                                                    "ckpt-000000024.safetensors"]


class ScriptedWorker(TrainingWorker):
    """The loop with held-out figures from a script instead of the model: the plateau rule alone."""

    def __init__(self, *args, script, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)

    def initialize(self) -> None:
        super().initialize()
        self.evaluation.measure = lambda holdout, by_source=None: self.script.pop(0)


def test_plateau_idles_after_patience_and_new_text_wakes_it(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 300)
    clock = iter(np.arange(0.0, 1e6, 0.5)).__next__
    # an evaluation every 25 steps: the sixth comes after the first pass over a.txt (about 120
    # steps), so the plateau rule is not deferred by text still unread
    config = tiny_config(tmp_path / "state", eval_every_steps=1000, eval_every_seconds=25.0, plateau_patience=3,
                         plateau_margin=0.01, checkpoint_every_steps=1000, checkpoint_every_seconds=1e9,
                         cooldown_fraction=0.0)  # one measurement per evaluation: the script's
    # improving by more than the margin, then three that do not beat 2.00 by 0.01 (one worse):
    # plateau; after new text, two more that do not improve, then one that does
    # (the first evaluation after it measures the best model again on the grown held-out set)
    script = [3.0, 2.5, 2.0, 1.995, 2.1, 1.999, 2.0, 2.05, 1.995, 1.5]
    worker = ScriptedWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(), clock=clock,
                            script=script)
    worker.initialize()
    try:
        with capture_logs() as logs:
            now, steps_at_plateau = 0.0, None
            while not worker.figures.plateaued:
                assert now < 400, "no plateau"
                assert worker.run_once(now) == 0.0, "idle before the plateau"
                now += 1.0
            steps_at_plateau = worker.figures.step
            assert worker.run_once(now) > 0 and worker.run_once(now + 1) > 0  # idle, no steps
            assert worker.figures.step == steps_at_plateau
        events = [e["event"] for e in logs]
        assert "plateau_deferred" not in events
        evals = [e for e in logs if e["event"] == "eval_finished"]
        assert [e["improved"] for e in evals] == [True, True, True, False, False, False]
        assert [e["stale"] for e in evals] == [0, 0, 0, 1, 2, 3]
        assert events.count("training_plateaued") == 1 and "trainer_idle" in events
        plateau = next(e for e in logs if e["event"] == "training_plateaued")
        assert plateau["best_val_bits_per_byte"] == 1.995 and plateau["reason"] == "no_improvement"
        assert load_checkpoint(worker.checkpoints.directory / BEST_CHECKPOINT).extra["val_bits_per_byte"] == 1.995
        assert CorpusQueue(store).latest_checkpoint().step == steps_at_plateau  # the plateau checkpointed

        add_text(store, tmp_path, "b.txt", "zyxwvutsrqponmlkjihgfedcba " * 300)
        with capture_logs() as logs:
            now += 100.0
            assert worker.run_once(now) == 0.0
            assert worker.figures.step == steps_at_plateau + 1 and not worker.figures.plateaued
            while worker.script:
                worker.run_once(now)
                now += 1.0
        assert "training_resumed" in [e["event"] for e in logs]
        assert "holdout_changed" in [e["event"] for e in logs]  # b.txt completed a second block
        evals = [e for e in logs if e["event"] == "eval_finished"]
        assert [e["stale"] for e in evals] == [1, 2, 0] and not worker.figures.plateaued
    finally:
        worker.shutdown()


def test_a_restart_keeps_the_plateau_and_the_best(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 300)
    config = tiny_config(tmp_path / "state", eval_every_steps=2, plateau_patience=2, plateau_margin=0.0,
                         checkpoint_every_steps=1000, cooldown_fraction=0.0)
    worker = ScriptedWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(),
                            script=[2.0] * 200)
    worker.initialize()
    try:
        now = 0
        while not worker.figures.plateaued:  # once the first pass over a.txt is done
            assert now < 400, "no plateau"
            worker.run_once(float(now))
            now += 1
        steps = worker.figures.step
    finally:
        worker.shutdown()
    again = make_worker(tmp_path, store)
    again.initialize()
    try:
        assert again.figures.plateaued and again.figures.best_val_bits_per_byte == 2.0
        assert again.run_once(1000.0) > 0 and again.figures.step == steps
    finally:
        again.shutdown()


def test_no_plateau_while_unread_text_remains(tmp_path, store):
    """A flat held-out figure from the first evaluation on: the plateau rule waits (one
    `plateau_deferred`) until the first pass over the stored text is done, then plateaus."""
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 300)
    config = tiny_config(tmp_path / "state", eval_every_steps=4, plateau_patience=2, plateau_margin=0.0,
                         checkpoint_every_steps=1000, cooldown_fraction=0.0)
    worker = ScriptedWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(),
                            script=[2.0] * 200)
    worker.initialize()
    try:
        with capture_logs() as logs:
            now, fresh_steps = 0, []
            while not worker.figures.plateaued:
                assert now < 400, "no plateau"
                worker.run_once(float(now))
                if worker.reading_new_text:
                    fresh_steps.append(worker.figures.step)
                now += 1
        events = [e["event"] for e in logs]
        deferred = [e for e in logs if e["event"] == "plateau_deferred"]
        assert len(deferred) == 1 and deferred[0]["reason"] == "new_text" and deferred[0]["evaluations"] == 2
        assert deferred[0]["step"] == 12  # the best at step 4, then two flat: long before the pass ends
        plateau = next(e for e in logs if e["event"] == "training_plateaued")
        # the last step that read new text came before the plateau, and the pass was complete
        assert max(fresh_steps) < plateau["step"] and plateau["epoch"] >= 1.0
        assert events.index("plateau_deferred") < events.index("training_plateaued")
    finally:
        worker.shutdown()


def test_the_best_model_is_a_cooled_copy_and_live_training_goes_on_undisturbed(tmp_path, monkeypatch):
    """Two runs from the same corpus, with and without cool-downs: the live weights agree bit for
    bit, and the best file holds the cooled copy with its own figure."""
    monkeypatch.setattr("crawler.training.batches.FRESH_BUFFER", 8)  # cool-downs draw from text before the buffer
    runs = {}
    for fraction in (0.0, 0.5):
        folder = tmp_path / f"run-{fraction}"
        folder.mkdir()
        database = open_database(StorageConfig(url=f"sqlite:///{folder / 'corpus.db'}").validate())
        try:
            add_text(database, folder, "a.txt", "the quick brown fox jumps over the lazy dog. " * 200)
            config = tiny_config(folder / "state", eval_every_steps=10, checkpoint_every_steps=1000,
                                 cooldown_fraction=fraction, plateau_patience=1000)
            config = replace(config, train=replace(config.train, learning_rate=0.01))
            worker = TrainingWorker(config, CorpusQueue(database), ByteTokenizer(), structlog.get_logger())
            worker.initialize()
            try:
                with capture_logs() as logs:
                    for now in range(30):
                        worker.run_once(float(now))
                runs[fraction] = (worker.trainer.params.copy(), worker.trainer.m.copy(), worker.trainer.step_count,
                                  [e for e in logs if e["event"] == "eval_finished"],
                                  load_checkpoint(worker.checkpoints.directory / BEST_CHECKPOINT))
            finally:
                worker.shutdown()
        finally:
            database.close()
    plain, cooled = runs[0.0], runs[0.5]
    assert plain[2] == cooled[2] == 30
    np.testing.assert_array_equal(plain[0], cooled[0])  # the live model never saw the cool-downs
    np.testing.assert_array_equal(plain[1], cooled[1])
    assert [e["cooldown_steps"] for e in plain[3]] == [0, 0, 0]
    assert [e["cooldown_steps"] for e in cooled[3]] == [5, 5, 5]  # half the 10 steps since the last
    for p, c in zip(plain[3], cooled[3]):
        assert p["live_val_bits_per_byte"] == p["val_bits_per_byte"]  # no cool-down: the live model
        assert c["live_val_bits_per_byte"] is None  # a cool-down: only the copy handed out is measured
        assert c["val_bits_per_byte"] != p["val_bits_per_byte"]
    best = cooled[4]
    assert best.extra["cooldown_steps"] == 5
    assert best.extra["val_bits_per_byte"] == pytest.approx(min(e["val_bits_per_byte"] for e in cooled[3]), abs=1e-4)
    assert not np.array_equal(best.params, plain[4].params)


def test_a_stop_request_cuts_a_cool_down_short(tmp_path, store, monkeypatch):
    monkeypatch.setattr("crawler.training.batches.FRESH_BUFFER", 8)
    add_text(store, tmp_path, "a.txt", "the quick brown fox jumps over the lazy dog. " * 200)
    asked = []
    config = tiny_config(tmp_path / "state", eval_every_steps=10, checkpoint_every_steps=1000, cooldown_fraction=1.0)
    worker = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(),
                            stopping=lambda: bool(asked))
    worker.initialize()
    try:
        with capture_logs() as logs:
            for now in range(10):
                worker.run_once(float(now))
            asked.append(True)
            for now in range(10, 20):
                worker.run_once(float(now))
        evals = [e for e in logs if e["event"] == "eval_finished"]
        assert [e["cooldown_steps"] for e in evals] == [10]  # the second gave way at once ...
        assert evals[0]["live_val_bits_per_byte"] is None
        # ... and its evaluation with it: the live weights are neither measured nor made the best
        assert [(e["reason"], e["step"]) for e in logs if e["event"] == "eval_skipped"] == [("stopping", 20)]
        assert [e["step"] for e in logs if e["event"] == "best_checkpoint_saved"] == [10]
        assert worker.trainer.step_count == 20
    finally:
        worker.shutdown()


def test_the_trained_text_in_memory_draws_what_the_store_draws(tmp_path, store):
    from crawler.training.batches import TrainedText

    CorpusQueue(store).holdout(SMALL_SPLIT)
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 100)
    queue = CorpusQueue(store)
    memory = TrainedText(queue, limit=10_000, vocab_size=257)
    for end in (100, 1500, 2700, 700):  # growing, and a draw from a shorter prefix afterwards
        for seed in range(3):
            got = memory.sample(8, 16, np.random.default_rng(seed), end=end, holdout=SMALL_SPLIT)
            want = queue.sample_replay(8, 16, np.random.default_rng(seed), end=end, holdout=SMALL_SPLIT)
            np.testing.assert_array_equal(got, want)
    assert memory.size == 2700
    small = TrainedText(queue, limit=1000, vocab_size=257)  # beyond the limit: the store itself
    got = small.sample(8, 16, np.random.default_rng(5), end=2000, holdout=SMALL_SPLIT)
    np.testing.assert_array_equal(got, queue.sample_replay(8, 16, np.random.default_rng(5), end=2000,
                                                           holdout=SMALL_SPLIT))
    assert small.size == 0


# --- a state directory that moves, loses commits or files, or cannot be written ------------------


def state_store(state: Path):
    """A store inside the state directory, as the daemon keeps it."""
    state.mkdir(parents=True, exist_ok=True)
    return open_database(StorageConfig(url=f"sqlite:///{(state / 'corpus.db').resolve()}").validate())


def run_steps(worker, start: int, stop: int) -> None:
    for now in range(start, stop):
        worker.run_once(float(now))


TROUBLE = {"checkpoint_missing", "checkpoint_corrupt", "checkpoint_recovered", "checkpoint_rewound",
           "checkpoint_quarantined", "checkpoint_unusable"}


def test_the_state_directory_works_from_any_directory_after_a_move_and_from_a_backup(tmp_path, monkeypatch):
    import shutil

    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.chdir(first)
    state = Path("crystalline-state")  # relative to the working directory, as the CLI's default
    database = state_store(state)
    add_text(database, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = TrainingWorker(tiny_config(state), CorpusQueue(database), ByteTokenizer(), structlog.get_logger())
    worker.initialize()
    run_steps(worker, 0, 12)  # checkpoints at 5 and 10, and at 12 on shutdown
    worker.shutdown()
    database.close()
    shutil.copytree(first / state, tmp_path / "backup")  # a backup, restored into a new folder below
    (first / state).rename(tmp_path / "moved")  # `mv state moved`
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for folder in (Path("../moved"), tmp_path / "backup"):
        database = state_store(folder)
        again = TrainingWorker(tiny_config(folder), CorpusQueue(database), ByteTokenizer(), structlog.get_logger())
        try:
            with capture_logs() as logs:
                again.initialize()
                run_steps(again, 12, 18)  # a checkpoint at 17, in the folder it now lives in
            assert not TROUBLE & {e["event"] for e in logs}, folder
            assert again.figures.step == 18 and CorpusQueue(database).latest_checkpoint().step == 17
            assert (folder / "checkpoints" / "ckpt-000000017.safetensors").exists()
        finally:
            again.shutdown()
            database.close()


@pytest.mark.parametrize("old", ["/srv/old/crystalline-state/checkpoints/", "crystalline-state/checkpoints/"])
def test_rows_of_an_earlier_version_are_read_by_their_file_name(tmp_path, store, old):

    from storage.models import checkpoints

    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    run_steps(worker, 0, 6)
    worker.trainer.close()
    with store.write() as connection:  # as an earlier version stored them: as given
        connection.execute(checkpoints.update().values(path=old + "ckpt-000000005.safetensors"))
    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        assert again.trainer.step_count == 5 and not TROUBLE & {e["event"] for e in logs}
    finally:
        again.shutdown()


def test_commits_lost_with_the_wal_keep_every_checkpoint_and_rebuild_the_cursor(tmp_path):
    """kill -9, then `rm corpus.db-wal`: the database falls back to its last WAL checkpoint and no
    longer names the three newer checkpoint files; they hold the training, so they are used."""
    state = tmp_path / "state"
    database = state_store(state)
    add_text(database, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    queue = CorpusQueue(database)
    worker = TrainingWorker(tiny_config(state, keep_checkpoints=10), queue, ByteTokenizer(), structlog.get_logger())
    worker.initialize()
    run_steps(worker, 0, 6)  # checkpoint 5, then copied into the main database file
    with database.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    run_steps(worker, 6, 21)  # checkpoints 10, 15 and 20: committed in the WAL only
    cursor = queue.cursor()
    assert queue.latest_checkpoint().step == 20
    lost = (state / "corpus.db").read_bytes()  # the main file alone: what the deleted WAL leaves
    worker.trainer.close()
    database.close()
    (state / "corpus.db").write_bytes(lost)
    for suffix in ("-wal", "-shm"):
        (state / f"corpus.db{suffix}").unlink(missing_ok=True)

    database = state_store(state)
    queue = CorpusQueue(database)
    assert queue.latest_checkpoint().step == 5  # the commits are really lost
    again = TrainingWorker(tiny_config(state, keep_checkpoints=10), queue, ByteTokenizer(), structlog.get_logger())
    try:
        with capture_logs() as logs:
            again.initialize()
        events = [e["event"] for e in logs]
        assert "checkpoint_recovered" in events and "checkpoint_orphan_removed" not in events
        assert again.trainer.step_count == 20 and again.figures.position == cursor.stream_position
        assert queue.cursor() == cursor and queue.latest_checkpoint().step == 20
        assert [p.name for p in list_checkpoints(state / "checkpoints")] == [
            f"ckpt-{step:09d}.safetensors" for step in (5, 10, 15, 20)]
    finally:
        again.shutdown()
        database.close()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_with_no_checkpoint_left_the_start_is_one_line_naming_the_way_out(tmp_path, store, damage):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    run_steps(worker, 0, 11)  # checkpoints 5 and 10
    worker.trainer.close()
    for path in list_checkpoints(worker.checkpoints.directory):
        if damage == "deleted":
            path.unlink()
        else:
            path.write_bytes(path.read_bytes()[:1000])
    again = make_worker(tmp_path, store)
    with pytest.raises(CheckpointError) as raised:
        again.initialize()
    message = str(raised.value)
    assert "\n" not in message and "crystalline reset --keep-corpus" in message
    assert "ckpt-000000010.safetensors: " + ("missing" if damage == "deleted" else "truncated") in message
    if damage == "truncated":  # moved aside, never deleted
        assert sorted(p.name for p in (tmp_path / "state" / "quarantine").iterdir()) == [
            "ckpt-000000005.safetensors", "ckpt-000000010.safetensors"]


def test_a_checkpoint_of_a_newer_format_is_one_line_and_never_called_corrupt(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    run_steps(worker, 0, 11)
    worker.trainer.close()
    newest = worker.checkpoints.directory / "ckpt-000000010.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data.replace(b'"format_version":"1"', b'"format_version":"7"', 1))
    again = make_worker(tmp_path, store)
    with capture_logs() as logs, pytest.raises(CheckpointError) as raised:
        again.initialize()
    message = str(raised.value)
    assert "\n" not in message and "newer than this program reads" in message and "upgrade crystalline" in message
    assert "checkpoint_corrupt" not in [e["event"] for e in logs]
    assert newest.exists() and CorpusQueue(store).latest_checkpoint().step == 10  # nothing moved, nothing rewound


def test_a_changed_model_shape_names_the_setting_and_the_way_out(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    run_steps(worker, 0, 6)
    worker.shutdown()
    config = tiny_config(tmp_path / "state")
    config = replace(config, model=replace(config.model, d_model=32))
    again = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger())
    with capture_logs() as logs:
        again.initialize()
    try:
        assert again.trainer.step_count == 6 and again.trainer.model_config.d_model == 16
        assert not TROUBLE & {e["event"] for e in logs}  # the intact checkpoints are not called corrupt
        ignored = next(e for e in logs if e["event"] == "model_config_ignored")
        assert "model.d_model = 32" in ignored["message"] and "d_model = 16" in ignored["message"]
        assert "crystalline reset --keep-corpus" in ignored["message"] and "\n" not in ignored["message"]
    finally:
        again.shutdown()


def test_a_stop_always_names_the_checkpoint_it_stands_on(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    run_steps(worker, 0, 5)  # the scheduled checkpoint lands on the last step: nothing left to save
    with capture_logs() as logs:
        worker.shutdown()
    stopped = [e for e in logs if e["event"] == "trainer_stopped"]
    assert len(stopped) == 1 and "checkpoint_saved" not in [e["event"] for e in logs]
    assert stopped[0]["checkpoint_step"] == 5 and stopped[0]["saved"] is False and stopped[0]["unsaved_steps"] == 0
    assert stopped[0]["checkpoint_path"] == str(worker.checkpoints.directory / "ckpt-000000005.safetensors")

    again = make_worker(tmp_path, store)
    again.initialize()
    run_steps(again, 5, 7)
    with capture_logs() as logs:
        again.shutdown()
    stopped = next(e for e in logs if e["event"] == "trainer_stopped")
    assert (stopped["checkpoint_step"], stopped["saved"]) == (7, True)


class FullDisk:
    """os.fsync failing with ENOSPC (or `error`) while `full`: every checkpoint write fails after
    its data."""

    def __init__(self, monkeypatch, error: str = "ENOSPC"):
        import errno
        import os

        self.full, real = True, os.fsync
        code = getattr(errno, error)

        def fsync(fd):
            if self.full:
                raise OSError(code, os.strerror(code))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("error, blocked", [("ENOSPC", "disk_full"), ("EROFS", "state_unwritable")])
def test_a_full_disk_defers_the_checkpoint_and_training_goes_on(tmp_path, store, monkeypatch, error, blocked):
    from crawler.state.writable import WriteState

    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    log = structlog.get_logger()
    writes = WriteState(tmp_path / "state", log, clock=lambda: 0.0)
    config = tiny_config(tmp_path / "state")
    worker = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), log, writes=writes)
    worker.initialize()
    disk = FullDisk(monkeypatch, error)
    try:
        with capture_logs() as logs:
            run_steps(worker, 0, 12)  # checkpoints due at 5 and 10: both blocked
        events = [e["event"] for e in logs]
        assert worker.figures.step == 12, "training went on in memory"
        assert events.count(blocked) == 1 and events.count("checkpoint_deferred") == 2
        assert writes.blocked == blocked and "checkpoint_saved" not in events
        assert list((tmp_path / "state" / "checkpoints").iterdir()) == []  # no file, no partial file
        assert CorpusQueue(store).latest_checkpoint() is None and CorpusQueue(store).cursor().stream_position == 0

        disk.full = False  # space freed: the next re-check clears the block, the loop writes at once
        assert writes.recheck(0.0, force=True) and writes.generation == 1
        with capture_logs() as logs:
            run_steps(worker, 12, 13)
        saved = [e for e in logs if e["event"] == "checkpoint_saved"]
        assert [(e["step"], e["reason"]) for e in saved] == [(12, "retry")]
        assert CorpusQueue(store).latest_checkpoint().step == 12
    finally:
        worker.shutdown()


def test_a_full_disk_at_shutdown_is_reported_not_raised(tmp_path, store, monkeypatch):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    run_steps(worker, 0, 7)  # a checkpoint at 5, two steps after it
    FullDisk(monkeypatch)
    with capture_logs() as logs:
        worker.shutdown()
    stopped = next(e for e in logs if e["event"] == "trainer_stopped")
    assert (stopped["checkpoint_step"], stopped["saved"], stopped["unsaved_steps"]) == (5, False, 2)
    assert [p.name for p in list_checkpoints(worker.checkpoints.directory)] == ["ckpt-000000005.safetensors"]


def test_a_really_full_disk_defers_the_checkpoint(tmp_path, store):
    """The same on a real 1 MiB file system (root only: mount a tmpfs as the state directory)."""
    import os
    import subprocess

    from crawler.state.writable import WriteState

    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN); the injected ENOSPC test covers the logic")
    try:
        add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
        log = structlog.get_logger()
        writes = WriteState(state, log, clock=lambda: 0.0)
        worker = TrainingWorker(tiny_config(state), CorpusQueue(store), ByteTokenizer(), log, writes=writes)
        worker.initialize()
        filler = state / "filler"
        free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
        filler.write_bytes(b"\0" * (free - 40_000))  # less room than one checkpoint (about 95 kB)
        try:
            with capture_logs() as logs:
                run_steps(worker, 0, 6)
            assert worker.figures.step == 6 and writes.blocked == "disk_full"
            assert "checkpoint_deferred" in [e["event"] for e in logs]
            assert sorted(p.name for p in state.iterdir()) == ["checkpoints", "filler"]
            assert list((state / "checkpoints").iterdir()) == []
            filler.unlink()
            assert writes.recheck(0.0, force=True)
            run_steps(worker, 6, 7)
            assert CorpusQueue(store).latest_checkpoint().step == 6
        finally:
            worker.shutdown()
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_operator_controls_checkpoint_now_and_pause_without_losing_a_step(tmp_path, store):
    from crawler.training.worker import PAUSED_POLL_SECONDS

    add_text(store, tmp_path, "a.txt", "the quick brown fox jumps over the lazy dog. " * 40)
    worker = make_worker(tmp_path, store, checkpoint_every_steps=1000)
    worker.initialize()
    try:
        for now in range(3):
            worker.run_once(float(now))
        with capture_logs() as logs:
            worker.checkpoint_requested.set()  # SIGUSR1
            worker.run_once(3.0)
        saved = [e for e in logs if e["event"] == "checkpoint_saved"]
        assert [e["reason"] for e in saved] == ["requested"] and saved[0]["step"] == 3
        assert worker.figures.step == 4, "the step goes on after the checkpoint"

        with capture_logs() as logs:
            worker.pause_requested = True  # STATE_DIR/paused
            assert worker.run_once(4.0) == PAUSED_POLL_SECONDS
            assert worker.run_once(5.0) == PAUSED_POLL_SECONDS
        assert worker.figures.step == 4 and worker.figures.paused
        events = [e["event"] for e in logs]
        assert events == ["checkpoint_saved", "training_paused"], "the steps before the pause are saved first"
        assert CorpusQueue(store).latest_checkpoint().step == 4

        with capture_logs() as logs:
            worker.checkpoint_requested.set()  # nothing new since the pause's checkpoint
            worker.run_once(6.0)
        assert [(e["event"], e.get("saved")) for e in logs] == [("checkpoint_requested", False)]

        with capture_logs() as logs:
            worker.pause_requested = False
            assert worker.run_once(7.0) == 0.0
        assert logs[0]["event"] == "training_unpaused" and worker.figures.step == 5 and not worker.figures.paused
    finally:
        worker.shutdown()


def test_a_checkpoint_just_after_an_evaluation_is_not_evaluated_again(tmp_path, store):
    """Timed evaluations every 10 steps and checkpoints every 12: a checkpoint fewer steps after
    an evaluation than half the gap between the last two takes that evaluation as its own (a
    second one, a few steps later, would measure a barely cooled copy); one further on is
    evaluated. The first two evaluations have no gap to compare yet."""
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 300)
    t = [0.0]
    config = tiny_config(tmp_path / "state", eval_every_steps=1000, eval_every_seconds=10.0,
                         checkpoint_every_steps=12, checkpoint_every_seconds=1e9, plateau_patience=1000)
    worker = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger(), clock=lambda: t[0])
    worker.initialize()
    try:
        with capture_logs() as logs:
            for now in range(50):
                t[0] = float(now)
                worker.run_once(float(now))
    finally:
        worker.shutdown()
    evals = [e["step"] for e in logs if e["event"] == "eval_finished"]
    saved = [e["step"] for e in logs if e["event"] == "checkpoint_saved" and e["reason"] == "schedule"]
    assert saved == [12, 24, 36, 48]
    # 11 timed, 12 its checkpoint (no gap known yet); 24 and 36 stand on 22 and 32; 48 is 6 steps
    # after 42, not fewer than half of 10: evaluated
    assert evals == [11, 12, 22, 32, 42, 48]
    extra = load_checkpoint(worker.checkpoints.directory / "ckpt-000000036.safetensors").extra
    assert extra["evaluated"] is True  # a restart from it does not evaluate at once
