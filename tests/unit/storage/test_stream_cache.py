"""StreamCache: the stream's tokens in a flat file, against the store it was read from, on SQLite
and PostgreSQL: reads, reopening, crashes and damage, another stream, and withdrawn text."""

import json
import os

import numpy as np
import pytest

from storage import StreamCache
from storage.cache import CHECK_TOKENS, subtract_ranges

V = 257  # the byte tokenizer's vocabulary: uint16 in the file


def fill(queue, add, count: int, length: int = 300, seed: int = 0, prefix: str = "/in/f") -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    texts = [rng.integers(1, V, length) for _ in range(count)]  # no zeros: a zero is a blanked token
    for i, tokens in enumerate(texts):
        add(queue, f"{prefix}{seed}-{i}.txt", tokens)
    return texts


def file_tokens(path) -> np.ndarray:
    return np.fromfile(path, "<u2")


def record(path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


def test_a_new_cache_reads_the_windows_the_store_reads(tmp_path, queue, add):
    fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    try:
        assert (cache.size, cache.kept) == (0, 0)
        cache.extend(1000)
        assert cache.size == 1000
        np.testing.assert_array_equal(cache.tokens(0, 1000), queue.read_tokens(0, 1000))
        starts = np.random.default_rng(1).integers(0, 1000 - 17, 50)
        got = cache.windows(starts, 16)
        assert got.dtype == np.int32 and got.shape == (50, 17)
        np.testing.assert_array_equal(got, queue.read_windows_at(starts, 16))
        assert cache.windows(np.empty(0, np.int64), 16).shape == (0, 17)
        with pytest.raises(ValueError, match="within the cached stream"):
            cache.windows(np.array([1000 - 16]), 16)
    finally:
        cache.close()
        cache.close()  # idempotent
    assert record(path)["tokens"] == 1000
    assert file_tokens(path).size == 1000


def test_a_reopened_cache_keeps_its_tokens_and_reads_only_the_new_text(tmp_path, queue, add, monkeypatch):
    fill(queue, add, 4)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    cache.extend(1200)
    cache.close()
    fill(queue, add, 2, seed=1)
    asked = []
    read_tokens = queue.read_tokens
    monkeypatch.setattr(queue, "read_tokens",
                        lambda a, b, missing=None: asked.append((a, b)) or read_tokens(a, b, missing))
    cache = StreamCache.open(path, queue, V)
    try:
        assert cache.kept == cache.size == 1200
        assert all(b - a <= CHECK_TOKENS for a, b in asked)  # only the blocks checked on open
        asked.clear()
        cache.extend(1800)
        assert asked == [(1200, 1800)]
        np.testing.assert_array_equal(cache.tokens(0, 1800), read_tokens(0, 1800))
    finally:
        cache.close()


def test_tokens_written_after_the_last_record_are_read_again(tmp_path, queue, add, monkeypatch):
    """A kill between the write and the record: the record counts only what was fsynced before it."""
    fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    monkeypatch.setattr("storage.cache.COMMIT_TOKENS", 400)
    cache = StreamCache.open(path, queue, V)
    cache.extend(500)  # recorded at 500 (>= 400 new tokens)
    cache.extend(700)  # written, not recorded
    with open(path, "r+b") as f:  # and the unrecorded tail half written
        f.seek(600 * 2)
        f.write(b"\xff" * 200)
    os.close(cache.fd)  # the process dies: no close(), no record
    assert record(path)["tokens"] == 500
    cache = StreamCache.open(path, queue, V)
    try:
        assert cache.kept == cache.size == 500
        cache.extend(1500)
        np.testing.assert_array_equal(cache.tokens(0, 1500), queue.read_tokens(0, 1500))
    finally:
        cache.close()


def test_a_damaged_block_is_read_again_from_there(tmp_path, queue, add, monkeypatch):
    monkeypatch.setattr("storage.cache.CHECK_TOKENS", 100)
    fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    cache.extend(1500)
    cache.close()
    with open(path, "r+b") as f:  # the last block (tokens 1400 .. 1499) damaged
        f.seek(1450 * 2)
        f.write(b"\x00\x01")
    cache = StreamCache.open(path, queue, V)
    try:
        assert cache.kept == cache.size == 1400
        cache.extend(1500)
        np.testing.assert_array_equal(cache.tokens(0, 1500), queue.read_tokens(0, 1500))
    finally:
        cache.close()
    with open(path, "r+b") as f:  # a file cut short: only what it holds is kept
        f.truncate(900 * 2)
    cache = StreamCache.open(path, queue, V)
    assert cache.size == 900
    cache.close()


@pytest.mark.parametrize("change", ["identity", "tail", "dtype", "format", "garbage", "shorter"])
def test_a_record_of_another_stream_is_read_again_from_the_start(tmp_path, queue, add, change):
    fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    cache.extend(1500)
    cache.close()
    written = record(path)
    if change == "garbage":
        text = "{not json"
    else:
        if change == "shorter":  # a record longer than the stream: a database restored from a backup
            written["tokens"] = 1600
        else:
            written[change] = {"identity": "1:else", "tail": "5:else", "dtype": "<i4", "format": 99}[change]
        text = json.dumps(written)
    path.with_name(path.name + ".json").write_text(text)
    cache = StreamCache.open(path, queue, V)
    try:
        assert cache.kept == cache.size == 0
        assert file_tokens(path).size == 0
        cache.extend(1500)
        np.testing.assert_array_equal(cache.tokens(0, 1500), queue.read_tokens(0, 1500))
    finally:
        cache.close()


def test_a_cache_of_another_database_is_read_again(tmp_path, add):
    """The same text stored again (a reset, another database) is another stream: nothing is kept.
    Two SQLite files make the two databases (the record test above covers PostgreSQL's rule)."""
    from storage import CorpusQueue, StorageConfig, open_database

    path = tmp_path / "stream.tokens"
    for name in ("a.db", "b.db"):
        config = StorageConfig(url=f"sqlite:///{tmp_path / name}", chunk_tokens=7)  # small chunks, as the fixtures'
        with CorpusQueue(open_database(config)) as queue:
            fill(queue, add, 3)
            cache = StreamCache.open(path, queue, V)
            assert cache.kept == 0
            cache.extend(900)
            cache.close()


def test_forgotten_text_leaves_the_file(tmp_path, queue, add):
    texts = fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    cache.extend(1500)
    queue.forget(paths=["/in/f0-1.txt"])  # tokens [300, 600)
    mask = queue.stream_mask(None)
    cache.blank(mask.starts, mask.ends)
    on_disk = file_tokens(path)
    assert not on_disk[300:600].any()
    np.testing.assert_array_equal(on_disk[600:900], texts[2])
    assert record(path)["withdrawn"] == [[300, 600]] and record(path)["pending"] == []
    cache.close()
    # forgotten while no process had the file open: zeroed on the next open
    queue.forget(paths=["/in/f0-3.txt"])  # tokens [900, 1200)
    cache = StreamCache.open(path, queue, V)
    try:
        assert cache.kept == 1500
        assert not file_tokens(path)[900:1200].any()
        np.testing.assert_array_equal(cache.tokens(1200, 1500), texts[4])
    finally:
        cache.close()


def test_a_range_the_store_no_longer_withdraws_is_read_again(tmp_path, queue, add):
    """A database restored from a backup taken before a `forget` holds the text again."""
    fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    cache.extend(1500)
    cache.blank(np.array([100, 700]), np.array([250, 800]))  # as if withdrawn, then given back
    assert not file_tokens(path)[100:250].any()
    cache.close()
    cache = StreamCache.open(path, queue, V)
    try:
        assert cache.kept == 1500
        np.testing.assert_array_equal(cache.tokens(0, 1500), queue.read_tokens(0, 1500))
    finally:
        cache.close()


def test_a_blank_cut_short_is_done_again_on_open(tmp_path, queue, add, monkeypatch):
    fill(queue, add, 5)
    path = tmp_path / "stream.tokens"
    cache = StreamCache.open(path, queue, V)
    cache.extend(1500)
    queue.forget(paths=["/in/f0-2.txt"])  # tokens [600, 900)
    mask = queue.stream_mask(None)

    def killed(self, start, stop):
        raise KeyboardInterrupt  # the process dies with the range recorded as pending, not yet zeroed

    monkeypatch.setattr(StreamCache, "_fill_zeros", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.blank(mask.starts, mask.ends)
    monkeypatch.undo()
    assert record(path)["pending"] == [[600, 900]] and file_tokens(path)[600:900].all()
    os.close(cache.fd)
    cache = StreamCache.open(path, queue, V)
    try:
        assert not file_tokens(path)[600:900].any()
        assert record(path)["withdrawn"] == [[600, 900]] and record(path)["pending"] == []
    finally:
        cache.close()


def test_subtract_ranges_against_a_set_of_offsets():
    rng = np.random.default_rng(0)
    for _ in range(200):
        def ranges(n):
            from storage.mask import merge_ranges

            starts = rng.integers(0, 60, n)
            return merge_ranges(starts, starts + rng.integers(0, 12, n))

        a, b = ranges(rng.integers(0, 6)), ranges(rng.integers(0, 6))
        got = subtract_ranges(*a, *b)
        covered = lambda r: {i for s, e in zip(*r) for i in range(s, e)}
        assert covered(got) == covered(a) - covered(b)
        assert all(s < e for s, e in zip(*got)) and np.all(got[0][1:] > got[1][:-1])  # disjoint, not touching
