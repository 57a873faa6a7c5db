"""Held-out figures per source: the grouping of paths into sources, the loop that has the store
choose blocks of every source before it reads them (and never reads one), the figures in
`eval_finished`, in the history and in `crystalline status`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs
from test_training import tiny_config

from crawler.cli.corpus import describe_status
from crawler.config import Config
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.evaluation import Evaluation
from crawler.training.sources import SourceNames
from engine import Trainer
from engine.units import LN2
from crawler.training.worker import TrainingWorker
from storage import CorpusQueue, HoldoutSplit, StorageConfig, open_database
from storage.holdout import block_weights, evaluation_windows
from storage.records import HoldoutSet

# the base ends with block 4 (tokens up to 121): everything after it is held out per source
SPLIT = HoldoutSplit(block_tokens=24, every=3, offset=1, max_blocks=2, source_blocks=3, extra_blocks=8,
                     spread_blocks=0)


@pytest.mark.parametrize("path, name", [
    ("/srv/inbox/plays/hamlet.txt", "plays"),
    ("/srv/inbox/plays/act1/scene2.txt", "plays"),
    ("/srv/inbox/python3.11-doc/library/os.html", "python3.11-doc"),
    ("/srv/inbox/docs.tar.gz!guide/intro.md", "docs.tar.gz"),  # an archive at the top: a source of its own
    ("/srv/inbox/plays/more.tar!a.txt", "plays"),
    ("/srv/inbox/notes.txt", "inbox"),  # directly in the watched folder
    ("/srv/inbox/nested/x/y.txt", "x"),  # the innermost root holds it
    ("/elsewhere/corpus/train/a.txt", "train"),  # under no root: its folder
    ("/elsewhere/b.tar.gz!c/d.txt", "b.tar.gz"),
])
def test_a_source_is_the_top_level_folder_of_a_watched_folder(path, name):
    assert SourceNames(["/srv/inbox", "/srv/inbox/nested"])(path) == name


def make_store(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    CorpusQueue(database).holdout(SPLIT)  # recorded before the loop starts: the loop takes it
    return database


def drop(store, folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    assert Ingestor(CorpusQueue(store), ByteTokenizer()).ingest_file(folder / name).status == "ingested"


def words(seed: int, n: int) -> str:
    rng = np.random.default_rng(seed)
    vocabulary = ("night castle king sleeps moon winter bird lord friend gate import def return class "
                  "value table index select where join").split()
    return " ".join(rng.choice(vocabulary, n))


def test_every_source_gets_blocks_never_read_and_its_own_figure(tmp_path, training_windows):
    store = make_store(tmp_path)
    inbox = tmp_path / "inbox"
    drop(store, inbox / "plays", "a.txt", words(1, 300))  # about 2k tokens: the base and more
    config = tiny_config(tmp_path / "state", eval_every_steps=6, checkpoint_every_steps=12, plateau_patience=1000)
    config = replace(config, watch=replace(config.watch, roots=(str(inbox),)))
    worker = TrainingWorker(config, CorpusQueue(store), ByteTokenizer(), structlog.get_logger())
    worker.initialize()
    try:
        with capture_logs() as logs:
            for now in range(30):
                worker.run_once(float(now))
            # text dropped after the first has been read: a new source, and more of the first
            drop(store, inbox / "docs", "b.md", words(2, 400))
            drop(store, inbox / "plays", "c.txt", words(3, 200))
            for now in range(30, 90):
                worker.run_once(float(now))
    finally:
        worker.shutdown()
    queue = CorpusQueue(store)
    held = queue.held_out_blocks(SPLIT)
    S = SPLIT.block_tokens
    blocks = np.concatenate([SPLIT.blocks(queue.stream_end()), held.blocks])
    extended = [e for e in logs if e["event"] == "holdout_extended"]
    assert extended and {"plays", "docs"} <= {name for e in extended for name in e["added"]}
    # no window read or drawn for training meets a held-out region, base or per source
    read, drawn = training_windows.read, training_windows.drawn
    for start, length in read + drawn:
        assert not any(k * S < start + length and k * S + S + 1 > start for k in blocks.tolist()), start
    assert len(read) > 50 and len(drawn) > 50
    # the figures per source: in the event, in the history, summing to the whole
    evals = [e for e in logs if e["event"] == "eval_finished"]
    last = evals[-1]
    assert set(last["sources"]) == {"plays", "docs"}
    assert sum(s["holdout_tokens"] for s in last["sources"].values()) == last["holdout_tokens"]
    values = [s["val_bits_per_byte"] for s in last["sources"].values()]
    assert min(values) - 1e-3 <= last["val_bits_per_byte"] <= max(values) + 1e-3
    history = queue.evaluations()
    assert history[-1].sources == {name: {"val_bits_per_byte": pytest.approx(s["val_bits_per_byte"], abs=1e-4),
                                          "holdout_tokens": s["holdout_tokens"]}
                                   for name, s in last["sources"].items()}
    assert history[0].sources is not None and set(history[0].sources) == {"plays"}
    # the held-out set grew with the new source: the best was measured again on the new set
    assert any(e["event"] == "holdout_changed" for e in logs)


def test_status_shows_each_source_with_its_change():
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()

    def evaluation(step, plays, docs, docs_tokens=4096):
        return {"step": step, "epoch": 0.5, "val_bits_per_byte": (plays + docs) / 2, "train_bits_per_byte": None,
                "holdout_tokens": 131072 + docs_tokens, "created_at": "2026-12-01 11:59:00+00:00",
                "sources": {"plays": {"val_bits_per_byte": plays, "holdout_tokens": 131072},
                            "python3.11-doc": {"val_bits_per_byte": docs, "holdout_tokens": docs_tokens}}}

    # docs' blocks grew before the last two: its change is over those two only
    recent = [evaluation(100, 2.0, 3.0, 2048), evaluation(200, 2.01, 2.9, 2048), evaluation(300, 2.02, 2.8),
              evaluation(400, 2.05, 2.6)]
    report = {
        "state_dir": "s", "database": "sqlite:///x.db", "exists": True,
        "documents": {"queued": 1, "trained": 1}, "tokens_total": 10, "tokens_queued": 0, "tokens_trained": 10,
        "last_checkpoint": None, "evaluation": {"latest": recent[-1], "best": recent[-1], "recent": recent},
        "disk": {"database": {"bytes": 1}, "checkpoints": {"bytes": 0, "cap_bytes": 0},
                 "processed": {"bytes": 0, "cap_bytes": 0}, "quarantine": {"bytes": 0, "cap_bytes": 0},
                 "free_bytes": 10**9},
        "daemon": {"running": False, "pid": None, "health": None},
    }
    lines = describe_status(report, Config(), now).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("held-out"))
    assert lines[at + 1 : at + 3] == [
        "  plays           2.050 bits/byte on 131k held-out tokens; +0.050 over the last 4 evaluations",
        "  python3.11-doc  2.600 bits/byte on 4.1k held-out tokens; -0.200 over the last 2 evaluations",
    ]
    # one source: the held-out line says it all
    for e in recent:
        del e["sources"]["python3.11-doc"]
    assert not describe_status(report, Config(), now).splitlines()[at + 1].startswith("  plays")


def test_a_spread_set_weighs_each_block_by_the_stretch_it_stands_for(tmp_path):
    config = tiny_config(tmp_path)
    rng = np.random.default_rng(5)
    S, blocks = 20, np.array([10, 30, 50, 90, 170, 330])  # an even start, then sparser: weights 20 .. 160
    regions = rng.integers(0, 256, size=(blocks.size, S + 1)).astype(np.int32)  # (B, S + 1)
    regions[2, :7] = ByteTokenizer().eod_id  # separators count no bytes: bytes differ from block to block
    windows, tail = evaluation_windows(regions, config.train.seq_len)  # 16: one window and a tail each
    weights = block_weights(blocks)
    tokenizer = ByteTokenizer()
    with Trainer(config.model, config.train) as trainer:
        evaluation = Evaluation(trainer, SimpleNamespace(sources=None), None, config.train, None, tokenizer,
                                None, None, None, None, None, None)
        plain = HoldoutSet(blocks=blocks.size, tokens=blocks.size * S, windows=windows, tail=tail)
        spread = replace(plain, weights=weights)
        nats, n_bytes = np.zeros(blocks.size), np.zeros(blocks.size)
        for i in range(blocks.size):  # block by block, by hand
            for rows in (windows[i : i + 1], tail[i : i + 1]):
                nats[i] += trainer.evaluate(rows[:, :-1], rows[:, 1:])[0]
                n_bytes[i] += tokenizer.token_bytes(rows[:, 1:])
        assert evaluation.measure(plain) == pytest.approx(nats.sum() / LN2 / n_bytes.sum(), rel=1e-9)
        by_source: dict = {}
        weighted = evaluation.measure(spread, by_source)
        assert weighted == pytest.approx((weights @ nats) / LN2 / (weights @ n_bytes), rel=1e-9)
        assert abs(weighted - evaluation.measure(plain)) > 1e-4  # the sparse blocks count for more
        assert by_source == {"all": (pytest.approx(weighted, rel=1e-9), blocks.size * S)}
