"""The training loop and withdrawn text: a file rewritten while it waits in the shuffle buffer, a
document forgotten while the daemon trains, and checkpoints that stand on forgotten text."""

from __future__ import annotations

import os

import numpy as np
from structlog.testing import capture_logs
from test_training import make_worker, store  # noqa: F401 (the fixture)

from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.batches import WITHDRAWAL_POLL_SECONDS
from crawler.training.reconcile import _unusable, stream_digest
from crawler.training.worker import TrainingWorker
from engine import load_checkpoint
from storage import CorpusQueue

OLD = "qwerty uiop " * 300  # the text to be withdrawn: its letters occur nowhere else
OTHER = "0123456789 " * 300
NEW = "zxcv bnm " * 300
OLD_IDS = {ord(c) for c in "qwertyuiop"}


def ingest(store, tmp_path, name: str, text: str, mtime: float):
    path = tmp_path / name
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return Ingestor(CorpusQueue(store), ByteTokenizer()).ingest_file(path)


class Recording:
    """Wraps a Trainer's step to keep every batch it is given."""

    def __init__(self, worker: TrainingWorker):
        self.batches: list[np.ndarray] = []
        step = worker.trainer.step

        def recorded(inputs, targets, **kw):
            self.batches.append(np.concatenate([inputs, targets[:, -1:]], axis=1))
            return step(inputs, targets, **kw)

        worker.trainer.step = recorded

    def has_old_text(self) -> bool:
        return any(np.isin(batch, list(OLD_IDS)).any() for batch in self.batches)


def test_a_rewrite_drops_the_untrained_windows_of_its_earlier_version(tmp_path, store):
    old = ingest(store, tmp_path, "a.txt", OLD, 1.0)
    ingest(store, tmp_path, "b.txt", OTHER, 1.0)
    worker = make_worker(tmp_path, store, checkpoint_every_steps=1000)
    worker.initialize()
    try:
        seen = Recording(worker)
        worker.run_once(0.0)
        worker.run_once(0.1)
        assert seen.has_old_text()  # the shuffle buffer holds the old version; training has begun on it
        outcome = ingest(store, tmp_path, "a.txt", NEW, 2.0)  # rewritten: not a growth
        assert outcome.status == "ingested" and outcome.withdrawn == old.tokens  # cursor still at 0
        seen.batches.clear()
        with capture_logs() as logs:
            now = 0.1 + WITHDRAWAL_POLL_SECONDS
            for i in range(60):
                worker.run_once(now + i * 0.01)
        applied = [e for e in logs if e["event"] == "withdrawal_applied"]
        assert len(applied) == 1 and applied[0]["buffered_windows_dropped"] > 0
        assert applied[0]["new_tokens"] == old.tokens
        assert len(seen.batches) == 60 and not seen.has_old_text()
        assert any((batch == ord("z")).any() for batch in seen.batches)  # the new version is trained
    finally:
        worker.shutdown()


def test_a_document_forgotten_while_training_is_never_read_again(tmp_path, store):
    ingest(store, tmp_path, "b.txt", OTHER, 1.0)
    old = ingest(store, tmp_path, "a.txt", OLD, 1.0)
    worker = make_worker(tmp_path, store, checkpoint_every_steps=1000, replay_fraction=0.5)
    worker.initialize()
    try:
        seen = Recording(worker)
        for i in range(80):  # a.txt's windows reach batches, and the trained text is held for replay
            worker.run_once(i * 0.01)
        assert seen.has_old_text()
        result = CorpusQueue(store).forget(paths=[str(tmp_path / "a.txt")])
        assert result.tokens == old.tokens
        seen.batches.clear()
        worker.run_once(0.8 + WITHDRAWAL_POLL_SECONDS)
        for i in range(100):
            worker.run_once(2.0 + i * 0.01)
        assert seen.batches and not seen.has_old_text()
        held = worker.batches.trained._tokens[: worker.batches.trained.size]
        assert not np.isin(held, list(OLD_IDS)).any()  # no copy left in memory either
    finally:
        worker.shutdown()


def test_a_checkpoint_standing_on_forgotten_text_still_resumes(tmp_path, store):
    ingest(store, tmp_path, "a.txt", OLD * 3, 1.0)
    worker = make_worker(tmp_path, store)  # a checkpoint every 5 steps
    worker.initialize()
    try:
        for i in range(6):
            worker.run_once(float(i))
    finally:
        worker.shutdown()
    queue = CorpusQueue(store)
    latest = queue.latest_checkpoint()
    path = tmp_path / "state" / latest.path
    checkpoint = load_checkpoint(path)
    assert checkpoint.extra["stream_digest"] == stream_digest(queue, latest.stream_position)
    queue.forget(paths=[str(tmp_path / "a.txt")])
    assert stream_digest(queue, latest.stream_position) is None  # nothing left to match it with
    # a file no row names (commits lost) is judged by its digest: forgotten text is no mismatch
    assert _unusable(checkpoint, None, ByteTokenizer().identity(), queue, queue.stream_end()) is None
    again = make_worker(tmp_path, store)
    with capture_logs() as logs:
        again.initialize()
    try:
        assert again.trainer.step_count == latest.step
        assert not any(e["event"] == "checkpoint_quarantined" for e in logs)
        assert again.run_once(100.0) > 0  # nothing left to train on: it idles, it does not crash
    finally:
        again.shutdown()
