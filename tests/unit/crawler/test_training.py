"""The training worker against a real SQLite queue: steps, checkpoint + cursor, resume, repair."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from crawler.config import Config, DaemonConfig
from crawler.ingest import Ingestor
from crawler.tokenizer import ByteTokenizer
from crawler.training import TrainingWorker
from engine import CheckpointError, ModelConfig, TrainConfig
from storage import CorpusQueue, StorageConfig, open_database


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
    assert latest.stream_position > 0 and Path(latest.path).exists()

    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        assert again.trainer.step_count == latest.step
        assert again.figures.position == latest.stream_position
        assert any(e["event"] == "checkpoint_loaded" for e in logs)
    finally:
        again.shutdown()


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
    newest = Path(records[0].path)
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
    finally:
        again.shutdown()


def test_an_uncommitted_checkpoint_file_is_an_orphan(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "abcdefghijklmnopqrstuvwxyz " * 200)
    worker = make_worker(tmp_path, store)
    worker.initialize()
    for now in range(6):  # one committed checkpoint at step 5
        worker.run_once(float(now))
    # a crash after the file was written, before the database commit
    orphan = worker.trainer.save_checkpoint(worker.directory, extra={"tokenizer": ByteTokenizer().identity(),
                                                                     "stream_position": 0, "tokens_trained": 0})
    worker.trainer.close()
    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        assert not orphan.exists()
        assert any(e["event"] == "checkpoint_orphan_removed" for e in logs)
        assert again.trainer.step_count == 5
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


def test_replay_share_of_batches(tmp_path, store):
    add_text(store, tmp_path, "a.txt", "x" * 5000)
    worker = make_worker(tmp_path, store, replay_fraction=0.25, checkpoint_every_steps=1000)
    worker.initialize()
    try:
        for now in range(20):
            worker.run_once(float(now))
        # 20 steps of 4 windows, a quarter replayed once there is trained data: the stream
        # advanced by about 3 new windows per step (16 tokens each), not 4
        new_windows = worker.figures.position // 16
        assert 20 * 3 - 2 <= new_windows <= 20 * 3 + 2, new_windows
    finally:
        worker.shutdown()
