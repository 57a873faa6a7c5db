"""Each source's share of the batches (crawler/training/mixing.py): a large drop beside a small
folder does not wash the folder out of training, one folder alone trains as it always did."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs
from test_replay_scale import Recording
from test_training import tiny_config

from crawler.config import WatchConfig
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.mixing import SourceMix
from crawler.training.sources import SourceNames
from crawler.training.worker import TrainingWorker
from storage import CorpusQueue, StorageConfig, open_database


class Ranges:
    """A store's document ranges, for SourceMix alone."""

    def __init__(self, docs):  # [(path, start, end)] in stream order
        self.docs, self.asked = docs, 0

    def document_ranges(self, since=0):
        self.asked += 1
        docs = [d for d in self.docs if d[1] >= since]
        return [d[0] for d in docs], np.array([d[1] for d in docs], np.int64), np.array([d[2] for d in docs], np.int64)


def mix_of(docs, balance=0.5):
    mix = SourceMix(Ranges(docs), lambda p: p.split("/")[0], balance)
    mix.refresh(max(d[2] for d in docs))
    return mix


PLAYS = [("plays/a", 0, 40_000), ("plays/b", 40_000, 100_000)]  # 100k tokens
DESK = [("desk/x", 100_000, 900_000), ("desk/y", 900_000, 1_700_000)]  # 1.6M: 16 times the plays


def test_weights_follow_tokens_to_the_power_balance():
    mix = mix_of(PLAYS + DESK)
    assert mix.names == ["plays", "desk"]
    np.testing.assert_allclose(mix.weights(), [0.2, 0.8])  # sqrt: 1 to 4
    np.testing.assert_allclose(mix_of(PLAYS + DESK, balance=0.0).weights(), [0.5, 0.5])
    np.testing.assert_allclose(mix_of(PLAYS + DESK, balance=1.0).weights(), [1 / 17, 16 / 17])


def test_the_ranges_are_read_once_and_then_only_what_is_new():
    store = Ranges(list(PLAYS))
    mix = SourceMix(store, lambda p: p.split("/")[0], 0.5)
    mix.refresh(100_005)  # a few tokens past the last document (a forgotten one's, say)
    for _ in range(3):
        mix.refresh(100_005)  # the stream has not grown: no query
    assert store.asked == 1 and mix.names == ["plays"]
    store.docs += DESK
    mix.refresh(1_700_000)
    assert store.asked == 2 and mix.names == ["plays", "desk"] and mix._starts.size == 4


def test_one_source_replays_as_before():
    plan = mix_of(PLAYS).plan(trained_end=60_000, seq_len=128, replay_fraction=0.05)
    assert plan.share == 0.05 and plan.mix is None and plan.passes is None


def test_the_folders_read_before_are_replayed_at_their_weight_while_a_drop_is_read():
    mix = mix_of(PLAYS + DESK)
    plan = mix.plan(trained_end=100_000, seq_len=128, replay_fraction=0.05)  # the desk not yet read
    assert plan.share == pytest.approx(0.2) and plan.mix is None  # the plays alone are trained: the uniform draw is theirs
    plan = mix.plan(trained_end=500_000, seq_len=128, replay_fraction=0.05)  # half-way through the desk
    assert abs(plan.share - 0.2) < 1e-12
    np.testing.assert_allclose(plan.mix.shares(500_000), [1.0, 0.0])  # replay is the plays'
    np.testing.assert_allclose(plan.passes.shares(1_700_000), [0.2, 0.8])  # passes: every source's weight
    done = mix.plan(trained_end=1_700_000 - 100, seq_len=128, replay_fraction=0.05)  # a sliver left
    assert done.share == 0.05 and done.mix is done.passes
    assert mix_of(PLAYS + DESK, balance=1.0).plan(500_000, 128, 0.05) == (0.05, None, None)


def test_a_large_source_being_read_keeps_the_floor_and_shares_it():
    notes = [("notes/n", 0, 1_000)]
    mix = mix_of(notes + [("desk/x", 1_000, 1_001_000)])  # weights sqrt: about 3 % and 97 %
    plan = mix.plan(trained_end=500_000, seq_len=128, replay_fraction=0.05)
    assert plan.share == 0.05  # the floor: the notes' weight is less
    w = mix.weights()
    np.testing.assert_allclose(plan.mix.shares(500_000), [w[0] / 0.05, 1 - w[0] / 0.05])


def test_folders_dropped_together_are_read_at_full_speed_until_one_is_through():
    docs = [("python/a", 0, 200_000), ("pg/b", 200_000, 700_000), ("c/c", 700_000, 900_000),
            ("python/d", 900_000, 950_000)]
    mix = mix_of(docs)
    assert mix.plan(trained_end=350_000, seq_len=128, replay_fraction=0.05).share == 0.05  # all three unread
    w = mix.weights()
    plan = mix.plan(trained_end=800_000, seq_len=128, replay_fraction=0.05)  # pg is through
    assert plan.share == pytest.approx(w[1])
    np.testing.assert_allclose(plan.mix.shares(800_000), [0.0, 1.0, 0.0])


def test_training_replays_a_small_folder_at_its_share_while_a_large_one_is_read(tmp_path):
    """The worker end to end: 2,000 tokens of plays trained, then 32,000 of a desk stored; while
    the desk is read, a fifth of the windows are the plays' (weights sqrt: 1 to 4), against
    about a twentieth of the replay with the uniform draw."""

    def plays_share(balance: float) -> float:
        root = tmp_path / f"b{balance}"
        inbox = root / "inbox"
        root.mkdir()
        database = open_database(StorageConfig(url=f"sqlite:///{root / 'corpus.db'}").validate())
        queue = CorpusQueue(database)
        config = tiny_config(root / "state", replay_fraction=0.05, replay_balance=balance, eval_every_steps=10_000,
                             checkpoint_every_steps=10_000, max_passes=0)
        config = replace(config, watch=replace(WatchConfig(), roots=(str(inbox),)))

        def drop(name, text):
            path = inbox / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            assert Ingestor(queue, ByteTokenizer()).ingest_file(path).status == "ingested"

        rng = np.random.default_rng(0)
        drop("plays/p.txt", "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 2_000)))
        worker = TrainingWorker(config, queue, ByteTokenizer(), structlog.get_logger())
        try:
            with capture_logs() as logs:
                worker.initialize()
                for now in range(60):  # the plays, read and replayed
                    worker.run_once(float(now))
                for i in range(4):
                    drop(f"desk/d{i}.txt", "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), 8_000)))
                seen = Recording(worker)
                for now in range(60, 260):  # 200 steps of 4 windows: the desk is read, not through
                    worker.run_once(float(now))
            windows = np.concatenate(seen.batches)
            if balance < 1:  # what health.json and `status` say
                assert worker.figures.source_shares == {"plays": 0.2, "desk": 0.8}
                assert worker.figures.replay_share == pytest.approx(0.2, abs=1e-4)
            else:
                assert worker.figures.source_shares is None and worker.figures.replay_share == 0.05
            plays = (windows >= ord("a")).mean(axis=1) > 0.5  # (n,) a window mostly of lower case
            if balance < 1:
                assert [e["shares"] for e in logs if e["event"] == "replay_mix"] == [{"plays": 0.2, "desk": 0.8}]
            assert (windows < ord("a")).mean() > 0.5  # the desk is still being read
            return float(plays.mean())
        finally:
            worker.shutdown()
            database.close()

    balanced, uniform = plays_share(0.5), plays_share(1.0)
    assert 0.17 < balanced < 0.23, balanced
    assert uniform < 0.06, uniform


def test_source_names_group_a_drop_by_its_top_level_folder(tmp_path):
    names = SourceNames([str(tmp_path / "inbox")])
    assert names(str(tmp_path / "inbox" / "desk" / "python" / "os.html")) == "desk"


def test_a_resumed_run_takes_the_batches_of_an_uninterrupted_one_with_two_sources(tmp_path):
    """The plan is read from the store and the checkpoint's replay credit: a stop and a start
    while a drop is read beside a folder read before change no batch."""

    def batches(name: str, stop_at: int | None) -> list[np.ndarray]:
        root = tmp_path / name
        root.mkdir()
        inbox = root / "inbox"
        database = open_database(StorageConfig(url=f"sqlite:///{root / 'corpus.db'}").validate())
        queue = CorpusQueue(database)
        config = tiny_config(root / "state", replay_fraction=0.05, eval_every_steps=10_000,
                             checkpoint_every_steps=10_000, max_passes=0)
        config = replace(config, watch=replace(WatchConfig(), roots=(str(inbox),)))
        rng = np.random.default_rng(1)
        for name_, letters, n in (("plays/p.txt", "abcdefghijklm", 2_000), ("desk/d.txt", "NOPQRSTUVWXYZ", 20_000)):
            path = inbox / name_
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(rng.choice(list(letters), n)))
            if name_.startswith("plays"):
                assert Ingestor(queue, ByteTokenizer()).ingest_file(path).status == "ingested"
        seen: list[np.ndarray] = []
        worker = TrainingWorker(config, queue, ByteTokenizer(), structlog.get_logger())
        try:
            worker.initialize()
            recording = Recording(worker)
            for now in range(100):
                if now == 40:
                    assert Ingestor(queue, ByteTokenizer()).ingest_file(inbox / "desk/d.txt").status == "ingested"
                if now == stop_at:
                    seen += recording.batches
                    worker.shutdown()
                    worker = TrainingWorker(config, queue, ByteTokenizer(), structlog.get_logger())
                    worker.initialize()
                    recording = Recording(worker)
                worker.run_once(float(now))
            return seen + recording.batches
        finally:
            worker.shutdown()
            database.close()

    straight, split = batches("straight", None), batches("split", 70)
    assert len(straight) == len(split) == 100
    for a, b in zip(straight, split):
        np.testing.assert_array_equal(a, b)
    replayed = np.concatenate(straight[45:])
    assert ((replayed < ord("n")).mean(axis=1) > 0.5).mean() > 0.15  # the plays are replayed at their share


def test_the_overall_figure_weighs_each_source_by_its_share_of_the_batches(tmp_path):
    from types import SimpleNamespace

    from crawler.training.evaluation import Evaluation
    from engine import Trainer
    from storage import HoldoutSet
    from storage.holdout import evaluation_windows

    config = tiny_config(tmp_path)
    rng = np.random.default_rng(7)
    S = 32
    regions = rng.integers(97, 123, size=(4, S + 1)).astype(np.int32)  # (4, S + 1): 2 blocks of each source
    windows, tail = evaluation_windows(regions, config.train.seq_len)
    holdout = HoldoutSet(blocks=4, tokens=4 * S, windows=windows, tail=tail,
                         paths=("plays/a", "plays/b", "desk/x", "desk/y"))
    with Trainer(config.model, config.train) as trainer:
        figures = {}
        for balance in (0.5, 1.0):
            batches = SimpleNamespace(sources=lambda p: p.split("/")[0], mixing=mix_of(PLAYS + DESK, balance))
            evaluation = Evaluation(trainer, batches, None, config.train, None, ByteTokenizer(), None, None, None,
                                    None, None, None)
            by_source: dict = {}
            figures[balance] = evaluation.measure(holdout, by_source)
        plays, desk = by_source["plays"][0], by_source["desk"][0]
        assert abs(plays - desk) > 1e-3  # the sources score differently: the weighting shows
        assert figures[0.5] == pytest.approx(0.2 * plays + 0.8 * desk, rel=1e-12)
        assert figures[1.0] == pytest.approx((plays + desk) / 2, rel=1e-6)  # by bytes: equal blocks


def test_status_names_each_sources_weight_and_the_replayed_share():
    from datetime import UTC, datetime

    from crawler.cli.corpus import describe_status
    from crawler.config import Config

    now = datetime(2026, 12, 8, 12, 0, tzinfo=UTC).timestamp()
    health = {"state": "ready", "started_at": "2026-12-08T10:00:00Z", "updated_at": "2026-12-08T11:59:54Z",
              "step": 5123, "loss": 1.5, "tokens_per_s": 20000.0, "idle": False, "plateaued": False, "paused": False,
              "blocked": None, "source_shares": {"plays": 0.2837, "desk": 0.7163}, "replay_share": 0.2837}
    report = {"exists": False, "state_dir": "s", "database": "sqlite:///x.db",
              "daemon": {"running": True, "pid": 42, "health": health},
              "disk": {"database": {"bytes": 0}, "checkpoints": {"bytes": 0, "cap_bytes": 0},
                       "processed": {"bytes": 0, "cap_bytes": 0}, "quarantine": {"bytes": 0, "cap_bytes": 0},
                       "free_bytes": 1}}
    lines = describe_status(report, Config(), now).splitlines()
    assert "batches    desk 72 %, plays 28 % (each source's weight); 28 % of each batch replayed" in lines
    health["source_shares"] = None  # one source
    assert not any(line.startswith("batches") for line in describe_status(report, Config(), now).splitlines())


def test_the_mix_is_logged_when_a_source_appears_and_when_a_weight_moves():
    store = Ranges(list(PLAYS) + [("desk/x", 100_000, 110_000)])
    mix = SourceMix(store, lambda p: p.split("/")[0], 0.5, structlog.get_logger())
    with capture_logs() as logs:
        mix.refresh(110_000)  # the desk's first file: it weighs little yet
        store.docs.append(("desk/y", 110_000, 112_000))
        mix.refresh(112_000)  # moved less than 0.05: quiet
        store.docs.append(("desk/z", 112_000, 1_700_000))
        mix.refresh(1_700_000)
    shares = [e["shares"] for e in logs if e["event"] == "replay_mix"]
    assert len(shares) == 2 and shares[0]["desk"] < 0.3 and shares[1] == {"plays": 0.2, "desk": 0.8}
