"""The trained text past replay_memory_mb: read from the token file (STATE_DIR/stream.tokens), it
draws the windows the in-memory copy and the store draw, so training takes the same batches at
any size. The store is made "large" by lowering the limit, not by shipping data."""

from __future__ import annotations

import numpy as np
import structlog
from structlog.testing import capture_logs
from test_training import tiny_config

from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.batches import STREAM_CACHE_FILE, TrainedText
from crawler.training.worker import TrainingWorker
from storage import CorpusQueue, HoldoutSplit, StorageConfig, open_database

SPLIT = HoldoutSplit(block_tokens=64, every=5, offset=2)
TEXTS = {"a.txt": "abcdefghijklmnopqrstuvwxyz " * 60, "b.txt": "qwerty uiop " * 150,
         "c.txt": "the quick brown fox jumps over the lazy dog. " * 40}


def make_store(folder, texts=TEXTS):
    folder.mkdir(parents=True, exist_ok=True)
    database = open_database(StorageConfig(url=f"sqlite:///{folder / 'corpus.db'}").validate())
    queue = CorpusQueue(database)
    queue.holdout(SPLIT)
    for name, text in texts.items():
        path = folder / name
        path.write_text(text)
        assert Ingestor(queue, ByteTokenizer()).ingest_file(path).status == "ingested"
    return database, queue


def test_the_token_file_draws_what_memory_and_the_store_draw(tmp_path):
    database, queue = make_store(tmp_path / "store")
    try:
        queue.forget(paths=[str(tmp_path / "store" / "b.txt")])  # withdrawn text inside the range drawn from
        mask = queue.stream_mask(SPLIT)
        end = queue.stream_end()
        memory = TrainedText(queue, limit=10**9, vocab_size=257)
        file = TrainedText(queue, limit=0, vocab_size=257, cache=tmp_path / "state" / STREAM_CACHE_FILE)
        (tmp_path / "state").mkdir()
        for stop in (200, end // 2, end, 300):  # growing, and a shorter prefix afterwards
            for seed in range(4):
                want = queue.sample_replay(16, 24, np.random.default_rng(seed), end=stop, holdout=mask)
                for text in (memory, file):
                    got = text.sample(16, 24, np.random.default_rng(seed), end=stop, holdout=mask)
                    np.testing.assert_array_equal(got, want)
        assert file.size == 0 and file.file is not None and file.file.size == end  # nothing held in memory
        file.close()
        assert (tmp_path / "state" / STREAM_CACHE_FILE).stat().st_size == 2 * end
    finally:
        database.close()


def test_a_token_file_that_fails_hands_over_to_the_store(tmp_path, monkeypatch):
    database, queue = make_store(tmp_path / "store")
    (tmp_path / "blocked").write_text("a file where the state directory should be")
    try:
        text = TrainedText(queue, limit=0, vocab_size=257, cache=tmp_path / "blocked" / STREAM_CACHE_FILE,
                           log=structlog.get_logger())
        with capture_logs() as logs:
            for seed in range(3):
                got = text.sample(8, 16, np.random.default_rng(seed), end=1000, holdout=SPLIT)
                want = queue.sample_replay(8, 16, np.random.default_rng(seed), end=1000, holdout=SPLIT)
                np.testing.assert_array_equal(got, want)
        assert [e["event"] for e in logs] == ["stream_cache_failed"]  # once, then the store quietly

        # a read that fails once the windows are drawn: the same windows, from the store
        text = TrainedText(queue, limit=0, vocab_size=257, cache=tmp_path / "state" / STREAM_CACHE_FILE,
                           log=structlog.get_logger())
        want = queue.sample_replay(8, 16, np.random.default_rng(0), end=1000, holdout=SPLIT)
        np.testing.assert_array_equal(text.sample(8, 16, np.random.default_rng(0), end=1000, holdout=SPLIT), want)

        def fails(starts, seq_len):
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(text.file, "windows", fails)
        with capture_logs() as logs:
            got = text.sample(8, 16, np.random.default_rng(0), end=1000, holdout=SPLIT)
        np.testing.assert_array_equal(got, want)
        assert [e["event"] for e in logs] == ["stream_cache_failed"] and text.file is None
    finally:
        database.close()


class Recording:
    """Keeps every batch a worker's trainer is given (cool-down copies included)."""

    def __init__(self, worker: TrainingWorker):
        self.batches: list[np.ndarray] = []
        step = worker.trainer.step

        def recorded(inputs, targets, **kw):
            self.batches.append(np.concatenate([inputs, targets[:, -1:]], axis=1))
            return step(inputs, targets, **kw)

        worker.trainer.step = recorded


def run(tmp_path, name: str, replay_memory_mb: int, steps: int = 60):
    """A worker on its own store of TEXTS; `b.txt` forgotten halfway. Returns (batches, params, logs)."""
    database, queue = make_store(tmp_path / name)
    config = tiny_config(tmp_path / name / "state", replay_memory_mb=replay_memory_mb, replay_fraction=0.5,
                         eval_every_steps=20, checkpoint_every_steps=1000, cooldown_fraction=0.25, max_passes=0)
    worker = TrainingWorker(config, queue, ByteTokenizer(), structlog.get_logger())
    try:
        with capture_logs() as logs:
            worker.initialize()
            seen = Recording(worker)
            for now in range(steps):
                if now == steps // 2:
                    queue.forget(paths=[str(tmp_path / name / "b.txt")])
                worker.run_once(float(now))
            worker.shutdown()
        return seen.batches, worker.figures, logs
    finally:
        database.close()


def test_training_past_replay_memory_mb_takes_the_batches_memory_takes(tmp_path, monkeypatch):
    monkeypatch.setattr("crawler.training.batches.FRESH_BUFFER", 8)  # replay from the first refills on
    memory, memory_figures, memory_logs = run(tmp_path, "memory", replay_memory_mb=256)
    file, file_figures, file_logs = run(tmp_path, "file", replay_memory_mb=0)
    assert len(memory) == len(file) > 60  # every step, and the cool-downs' steps
    for a, b in zip(memory, file):
        np.testing.assert_array_equal(a, b)
    assert memory_figures.loss == file_figures.loss
    assert any(e["event"] == "withdrawal_applied" for e in file_logs)
    assert not (tmp_path / "memory" / "state" / STREAM_CACHE_FILE).exists()
    assert [e["event"] for e in memory_logs if e["event"].startswith("stream_cache")] == []
    opened = [e for e in file_logs if e["event"] == "stream_cache_opened"]
    assert len(opened) == 1 and opened[0]["tokens"] == 0  # a new file
    cached = np.fromfile(tmp_path / "file" / "state" / STREAM_CACHE_FILE, "<u2")
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'file' / 'corpus.db'}").validate())
    mask = CorpusQueue(database).stream_mask(None)
    assert mask.withdrawn_tokens == len(TEXTS["b.txt"]) and mask.ends[-1] < cached.size
    for start, end in zip(mask.starts, mask.ends):
        assert not cached[start:end].any()  # forgotten: gone from the file too

    # a restart keeps the file: only the text trained since is read from the store
    config = tiny_config(tmp_path / "file" / "state", replay_memory_mb=0, replay_fraction=0.5, max_passes=0)
    worker = TrainingWorker(config, CorpusQueue(database), ByteTokenizer(), structlog.get_logger())
    try:
        with capture_logs() as logs:
            worker.initialize()
            for now in range(5):
                worker.run_once(float(now))
        opened = [e for e in logs if e["event"] == "stream_cache_opened"]
        assert len(opened) == 1 and opened[0]["tokens"] == cached.size
    finally:
        worker.shutdown()
        database.close()
