"""A state directory written by the release before per-source held-out blocks (schema 0008, its
held-out split, its checkpoints and history: fixtures/release-state.tar.gz, made by
fixtures/make_release_state.py with that release's code) loads and trains under this one: the
schema is upgraded, the split keeps every block it held out, text the release trained on never
becomes held out, and text it had not reached, and text dropped since, gets blocks per source
with their own figures."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import structlog
from structlog.testing import capture_logs
from test_training import tiny_config

from crawler.cli.corpus import describe_status
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.service.status import status_report
from crawler.training.worker import TrainingWorker
from engine import ModelConfig, count_parameters
from storage import CorpusQueue, HoldoutSplit, StorageConfig, open_database
from storage.db import current_revision
from storage.models import meta

FIXTURE = Path(__file__).parent / "fixtures" / "release-state.tar.gz"
# what the release wrote (make_release_state.py's run): its split, as its to_json wrote it, and
# where its training stood
RELEASE_SPLIT = '{"block_tokens": 32, "every": 4, "max_blocks": 6, "offset": 1}'
RELEASE_STEP, RELEASE_CURSOR, RELEASE_STREAM = 40, 8576, 10979


def unpack(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    with tarfile.open(FIXTURE) as archive:  # the "data" filter where this Python has it (3.11.4 on)
        archive.extractall(state, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return state


def test_the_release_state_opens_and_keeps_what_it_recorded(tmp_path):
    state = unpack(tmp_path)
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}").validate())) as queue:
        assert current_revision(queue.database) == "0010"  # upgraded from 0008 on open
        with queue.database.read() as connection:
            assert connection.execute(sa.select(meta.c.value).where(meta.c.key == "holdout")).scalar() == RELEASE_SPLIT
        assert (queue.cursor().step, queue.cursor().stream_position, queue.stream_end()) == (
            RELEASE_STEP, RELEASE_CURSOR, RELEASE_STREAM)
        history = queue.evaluations()
        assert [r.step for r in history] == [20, 40] and all(r.sources is None for r in history)
        assert all(r.model is None for r in history)  # revision 0010's column: unknown for the release's rows
        # its split, read as it is: exactly the blocks it held out
        earlier = queue.holdout(HoldoutSplit.from_json(RELEASE_SPLIT))
        assert not earlier.per_source and earlier.complete_blocks(RELEASE_STREAM).tolist() == [1, 5, 9, 13, 17, 21]


def test_the_release_state_trains_with_blocks_per_source_and_none_it_trained_on(tmp_path, training_windows):
    state = unpack(tmp_path)
    database = open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}").validate())
    queue = CorpusQueue(database)
    release = HoldoutSplit.from_json(RELEASE_SPLIT)
    before = queue.holdout_set(release, 16)
    docs = tmp_path / "inbox" / "docs"  # a new source, dropped after the upgrade
    docs.mkdir(parents=True)
    rng = np.random.default_rng(7)
    vocabulary = "import def return class value table index select where join for while".split()
    (docs / "guide.md").write_text(" ".join(rng.choice(vocabulary, 600)))
    assert Ingestor(queue, ByteTokenizer()).ingest_file(docs / "guide.md").status == "ingested"

    config = tiny_config(state, eval_every_steps=10, checkpoint_every_steps=20, plateau_patience=1000)
    config = replace(config, model=ModelConfig(context_length=16, d_model=8, n_layer=1, n_head=2),
                     watch=replace(config.watch, roots=(str(tmp_path / "inbox"),)))
    worker = TrainingWorker(config, queue, ByteTokenizer(), structlog.get_logger())
    with capture_logs() as logs:
        worker.initialize()
        try:
            assert (worker.trainer.step_count, worker.figures.position) == (RELEASE_STEP, RELEASE_CURSOR)
            for now in range(150):  # the release's shuffle buffer first (352 windows), then new text
                worker.run_once(float(now))
        finally:
            worker.shutdown()
    split = queue.holdout(HoldoutSplit())
    # the release's four fields, extended once with the per-source and the spread ones
    assert json.loads(split.to_json()) == json.loads(RELEASE_SPLIT) | {
        "source_blocks": HoldoutSplit().source_blocks, "extra_blocks": HoldoutSplit().extra_blocks,
        "spread_blocks": HoldoutSplit().spread_blocks}
    held = queue.held_out_blocks(split)
    S = split.block_tokens
    sources = {worker.batches.sources(path) for path in queue.holdout_set(split, 16).paths}
    assert sources == {"plays", "docs"}
    # the text the release trained on (before its cursor) stays training text; what it had not
    # reached of the plays, and the new source, get blocks
    assert held.blocks.size and all(k * S > RELEASE_CURSOR for k in held.blocks.tolist())
    assert any(k * S < RELEASE_STREAM for k in held.blocks.tolist())  # the plays' untrained rest
    assert any(k * S >= RELEASE_STREAM for k in held.blocks.tolist())  # the docs
    # every block the release held out still is, with the same text first in the set
    after = queue.holdout_set(queue.stream_mask(split), 16)
    np.testing.assert_array_equal(after.windows[: len(before.windows)], before.windows)
    # no window read or drawn meets a held-out region
    blocks = np.concatenate([split.blocks(queue.stream_end()), held.blocks]).tolist()
    windows = training_windows.read + training_windows.drawn
    assert len(windows) > 100
    for start, length in windows:
        assert not any(k * S < start + length and k * S + S + 1 > start for k in blocks), start
    # the figures: per source in the event and the history, the release's rows kept as they were
    last = [e for e in logs if e["event"] == "eval_finished"][-1]
    assert set(last["sources"]) == {"plays", "docs"}
    history = queue.evaluations()
    assert [r.sources for r in history[:2]] == [None, None] and set(history[-1].sources) == {"plays", "docs"}
    assert [r.model for r in history[:2]] == [None, None]
    assert history[-1].model == {"d_model": 8, "n_head": 2, "n_layer": 1,  # the model it measured
                                 "parameters": count_parameters(config.model), "grown_at_step": None,
                                 "grown_from_layers": None}
    assert any(e["event"] == "holdout_changed" for e in logs)  # the release's best, measured on the new set
    assert queue.cursor().step == RELEASE_STEP + 150  # checkpoints commit on the upgraded schema
    database.close()
    report = status_report(replace(config, store=replace(config.store, url=f"sqlite:///{state / 'corpus.db'}")))
    report["daemon"] = {"running": False, "pid": None, "health": None}
    text = describe_status(report, config, 0.0)
    assert "\n  docs " in text and "\n  plays " in text
