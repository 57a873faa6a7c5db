"""Windows out: read_windows and sample_replay against a numpy concatenation of the documents."""

import tracemalloc
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage.stream
from storage import CorpusQueue, StorageConfig, open_database
from storage.stream import overlapping_chunks


def expected_windows(stream: np.ndarray, position: int, count: int, seq_len: int) -> np.ndarray:
    """The reference: window k is stream[p + k*T : p + k*T + T + 1], p = position, T = seq_len."""
    found = []
    for k in range(count):
        start = position + k * seq_len
        if start + seq_len + 1 > len(stream):
            break
        found.append(stream[start : start + seq_len + 1])
    return np.array(found, np.int32).reshape(len(found), seq_len + 1)


def fill(queue, add, lengths, seed=0) -> np.ndarray:
    """Adds one document per length (ids mixing uint16 and uint32 chunks); returns the stream."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, length in enumerate(lengths):
        tokens = rng.integers(0, 70_000 if i % 3 == 2 else 300, size=length)
        unique = uuid.uuid4().hex * 2  # never a duplicate, even of an earlier example's document
        assert add(queue, f"/in/{seed}-{i}", tokens, content_hash=unique).status == "queued"
        parts.append(tokens)
    return np.concatenate(parts)


@pytest.mark.parametrize("seq_len", [1, 3, 7, 10])
def test_read_windows_equals_the_concatenation(queue, add, seq_len):
    stream = fill(queue, add, [1, 5, 7, 8, 20, 2, 14, 3])  # spans chunks and documents
    for position in [0, 1, 6, 7, 13, 30, len(stream) - seq_len - 1, len(stream) - 1, len(stream)]:
        for count in [0, 1, 2, 5, 100]:
            windows, following = queue.read_windows(position, count, seq_len)
            expected = expected_windows(stream, position, count, seq_len)
            assert windows.dtype == np.int32 and windows.shape == (len(expected), seq_len + 1)
            np.testing.assert_array_equal(windows, expected)
            assert following == position + len(expected) * seq_len


def test_the_partial_tail_waits_for_more_tokens(queue, add):
    add(queue, "/in/a", np.arange(10))
    windows, position = queue.read_windows(0, 10, 4)  # [0, 5) and [4, 9): token 9 waits
    np.testing.assert_array_equal(windows, [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]])
    assert position == 8
    windows, position = queue.read_windows(8, 10, 4)
    assert windows.shape == (0, 5) and position == 8
    add(queue, "/in/b", np.arange(100, 103))
    windows, position = queue.read_windows(8, 10, 4)
    np.testing.assert_array_equal(windows, [[8, 9, 100, 101, 102]])
    assert position == 12


def test_walking_the_cursor_reads_every_token_once(queue, add):
    stream = fill(queue, add, [9, 13, 4, 30])
    position, seen = 0, []
    while True:
        windows, following = queue.read_windows(position, 3, 5)
        if len(windows) == 0:
            break
        seen.extend(windows[:, :-1].ravel())  # the inputs; each target is the next input
        assert windows[-1, -1] == stream[following]
        position = following
    np.testing.assert_array_equal(seen, stream[:position])
    assert len(stream) - position <= 5


def test_bad_arguments_are_refused(queue):
    for position, count, seq_len in [(-1, 1, 1), (0, -1, 1), (0, 1, 0)]:
        with pytest.raises(ValueError):
            queue.read_windows(position, count, seq_len)
    with pytest.raises(ValueError):
        queue.sample_replay(1, 0, np.random.default_rng(0))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    seq_len=st.integers(1, 12),
    offset=st.integers(0, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_read_windows_matches_numpy_for_any_documents(queue, add, lengths, seq_len, offset, seed):
    # the store is shared by the examples: each one appends and checks its own part of the stream
    start = queue.stats().tokens_total
    stream = fill(queue, add, lengths, seed=seed)
    offset = min(offset, len(stream))
    windows, following = queue.read_windows(start + offset, 1000, seq_len)
    expected = expected_windows(stream, offset, 1000, seq_len)
    np.testing.assert_array_equal(windows, expected)
    assert following == start + offset + len(expected) * seq_len


# --- replay ---------------------------------------------------------------------------------------


def test_replay_is_empty_until_enough_is_trained(queue, add):
    add(queue, "/in/a", np.arange(50))
    rng = np.random.default_rng(1)
    assert queue.sample_replay(4, 8, rng).shape == (0, 9)
    queue.commit_checkpoint(step=1, path="cp", stream_position=8, tokens_trained=8)
    assert queue.sample_replay(4, 8, rng).shape == (0, 9)  # 8 trained tokens: no 9-token window
    assert rng.integers(1 << 30) == np.random.default_rng(1).integers(1 << 30)  # nothing drawn
    queue.commit_checkpoint(step=2, path="cp", stream_position=9, tokens_trained=9)
    np.testing.assert_array_equal(queue.sample_replay(2, 8, rng), [np.arange(9)] * 2)


def test_replay_draws_uniformly_from_the_trained_range_only(queue, add):
    stream = fill(queue, add, [11, 30, 6, 25, 40])
    trained, seq_len, count = 70, 6, 400
    queue.commit_checkpoint(step=1, path="cp", stream_position=trained, tokens_trained=trained)
    windows = queue.sample_replay(count, seq_len, np.random.default_rng(7))
    positions = np.random.default_rng(7).integers(0, trained - seq_len, size=count)
    assert windows.shape == (count, seq_len + 1) and windows.dtype == np.int32
    for window, position in zip(windows, positions):
        np.testing.assert_array_equal(window, stream[position : position + seq_len + 1])
    assert positions.max() + seq_len + 1 <= trained
    assert {0, trained - seq_len - 1} <= set(positions.tolist())  # both ends are reachable


# --- memory: reads follow the request, not the corpus -------------------------------------------


@pytest.fixture
def big_queue(make_config, add):
    """One 512k-token document in 2,000 chunks of 256 (1 MB of uint16 blobs)."""
    with CorpusQueue(open_database(make_config(chunk_tokens=256))) as queue:
        add(queue, "/in/big", np.arange(512_000) % 50_000)
        yield queue


@pytest.mark.parametrize(
    "start, stop, expected",
    [(0, 1, [0]), (255, 257, [0, 256]), (300_000, 300_600, [299_776, 300_032, 300_288, 300_544])],
)
def test_only_overlapping_chunks_are_selected(big_queue, start, stop, expected):
    with big_queue.database.read() as connection:
        found = connection.execute(overlapping_chunks(start, stop)).all()
    assert [row.stream_start for row in found] == expected


def test_reading_windows_asks_for_the_requested_range_only(big_queue, monkeypatch):
    ranges = []

    def spy(start, stop):
        ranges.append((start, stop))
        return overlapping_chunks(start, stop)

    monkeypatch.setattr(storage.stream, "overlapping_chunks", spy)
    big_queue.read_windows(400_000, 4, 32)
    assert ranges == [(400_000, 400_129)]  # 4 windows of 33 tokens, each sharing one with the next


def test_reading_windows_does_not_load_the_corpus(big_queue):
    # Python-side memory only: 2,000 blobs held at once would be over 1 MB
    big_queue.read_windows(1000, 4, 32)  # warm SQLAlchemy's statement cache
    tracemalloc.start()
    try:
        windows, _ = big_queue.read_windows(400_000, 4, 32)
        replay = big_queue.sample_replay(4, 32, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(windows[0], np.arange(400_000, 400_033) % 50_000)
    assert replay.shape == (0, 33)
    assert peak < 128_000, f"peak {peak} bytes for 132 tokens out of a 1 MB corpus"


def test_sqlite_chunk_lookup_uses_the_index(tmp_path, add):
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'c.db'}"))) as queue:
        with queue.database.read() as connection:
            statement = overlapping_chunks(10, 20).compile(
                dialect=connection.dialect, compile_kwargs={"literal_binds": True}
            )
            plan = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}").all()
    details = " | ".join(row[-1] for row in plan)
    assert "SCAN chunks" not in details, details
    assert "USING INDEX ix_chunks_stream_start" in details or "USING COVERING INDEX" in details
