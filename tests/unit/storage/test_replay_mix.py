"""Replay drawn source by source (storage/replay.py): each source gets its weight's share of the
windows whatever its size, every start uniform within its source, and the store, the in-memory
copy and the token file draw the same windows from one seed."""

from __future__ import annotations

import numpy as np
import pytest

from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.batches import STREAM_CACHE_FILE, TrainedText
from storage import CorpusQueue, HoldoutSplit, ReplayMix, StorageConfig, open_database
from storage.holdout import draw_window_starts
from storage.replay import draw_starts


def source_of(mix: ReplayMix, starts: np.ndarray) -> np.ndarray:
    """The source of the range holding each start (-1: none)."""
    out = np.full(starts.size, -1)
    for a, b, k in zip(mix.starts, mix.ends, mix.source):
        out[(starts >= a) & (starts < b)] = k
    return out


def test_each_source_gets_its_weights_share_whatever_its_size():
    # source 0: 100 starts in two ranges; source 1: 10,000 starts, 100 times as many
    mix = ReplayMix(np.array([0, 10_200, 100]), np.array([50, 10_250, 10_100]), np.array([0, 0, 1]),
                    np.array([0.5, 0.5]))
    starts = mix.draw(np.random.default_rng(0), high=20_000, count=20_000, seq_len=8, holdout=None)
    k = source_of(mix, starts)
    assert (k >= 0).all()  # every start lies in a source's range
    assert abs((k == 0).mean() - 0.5) < 0.02  # not 1 %: the size does not decide
    small = starts[k == 0]
    assert abs((small < 50).mean() - 0.5) < 0.03  # uniform over the source's two ranges (50 starts each)
    assert np.unique(small).size == 100  # and every one of its starts is drawn
    np.testing.assert_allclose(mix.shares(20_000), [0.5, 0.5])

    uneven = ReplayMix(mix.starts, mix.ends, mix.source, np.array([0.2, 0.8]))
    k = source_of(uneven, uneven.draw(np.random.default_rng(1), 20_000, 20_000, 8, None))
    assert abs((k == 0).mean() - 0.2) < 0.02


def test_starts_stay_below_high_and_a_source_with_none_gives_way():
    mix = ReplayMix(np.array([0, 1_000]), np.array([1_000, 2_000]), np.array([0, 1]), np.array([0.5, 0.5]))
    starts = mix.draw(np.random.default_rng(2), high=1_500, count=4_000, seq_len=8, holdout=None)
    assert starts.max() < 1_500 and abs((starts >= 1_000).mean() - 0.5) < 0.03  # source 1: starts [1000, 1500)
    only = mix.draw(np.random.default_rng(3), high=800, count=500, seq_len=8, holdout=None)
    assert only.max() < 800  # source 1 has no start below 800: all of it from source 0
    np.testing.assert_allclose(mix.shares(800), [1.0, 0.0])
    assert mix.draw(np.random.default_rng(4), high=0, count=10, seq_len=8, holdout=None).size == 0


def test_windows_on_held_out_text_are_drawn_again():
    split = HoldoutSplit(block_tokens=64, every=3, offset=0)
    mix = ReplayMix(np.array([0, 3_000]), np.array([3_000, 6_000]), np.array([0, 1]), np.array([0.9, 0.1]))
    starts = mix.draw(np.random.default_rng(5), 6_000, 2_000, 16, split)
    assert starts.size == 2_000 and not split.overlaps(starts, 17).any()


def test_without_a_mix_the_draw_is_the_uniform_one():
    for seed in range(3):
        np.testing.assert_array_equal(draw_starts(np.random.default_rng(seed), 5_000, 64, 16, None),
                                      draw_window_starts(np.random.default_rng(seed), 5_000, 64, 16, None))


def test_a_bad_mix_is_refused():
    with pytest.raises(ValueError):
        ReplayMix(np.array([0]), np.array([10]), np.array([2]), np.array([1.0]))  # no weight for source 2
    with pytest.raises(ValueError):
        ReplayMix(np.array([0]), np.array([10]), np.array([0]), np.array([-1.0]))


def test_the_store_memory_and_the_token_file_draw_the_same_windows(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    try:
        queue = CorpusQueue(database)
        split = HoldoutSplit(block_tokens=64, every=5, offset=2)
        queue.holdout(split)
        texts = {"plays/a.txt": "to be or not to be " * 40, "desk/b.txt": "SELECT * FROM t; " * 300,
                 "plays/c.txt": "all the world's a stage " * 30}
        for name, text in texts.items():
            path = tmp_path / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            assert Ingestor(queue, ByteTokenizer()).ingest_file(path).status == "ingested"
        paths, starts, ends = queue.document_ranges()
        assert [p.split("/")[-1] for p in paths] == ["a.txt", "b.txt", "c.txt"]  # stream order
        assert (starts[1:] >= ends[:-1]).all() and ends[-1] <= queue.stream_end()
        later_paths, later_starts, _ = queue.document_ranges(since=int(ends[0]))
        assert later_paths == paths[1:] and (later_starts == starts[1:]).all()

        mix = ReplayMix(starts, ends, np.array([0, 1, 0]), np.array([0.5, 0.5]))
        mask = queue.stream_mask(split)
        (tmp_path / "state").mkdir()
        memory = TrainedText(queue, limit=10**9, vocab_size=257)
        file = TrainedText(queue, limit=0, vocab_size=257, cache=tmp_path / "state" / STREAM_CACHE_FILE)
        end = queue.stream_end()
        for stop in (end // 2, end):
            for seed in range(3):
                want = queue.sample_replay(32, 24, np.random.default_rng(seed), end=stop, holdout=mask, mix=mix)
                assert want.shape == (32, 25)
                for text in (memory, file):
                    got = text.sample(32, 24, np.random.default_rng(seed), end=stop, holdout=mask, mix=mix)
                    np.testing.assert_array_equal(got, want)
        file.close()
    finally:
        database.close()
