"""The held-out split: its arithmetic against brute force, the reads that honour it, evaluations.

The references are deliberately slow and obvious: a boolean mask over token offsets marking
every held-out region, and loops over block indices. Stores built here hold tokens whose value
is their stream offset (plus a base), so every window returned names the offsets it came from.
"""

import json
import uuid
from datetime import UTC

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import (
    ConfigError,
    CorpusQueue,
    EvaluationRecord,
    HoldoutSet,
    HoldoutSplit,
    open_database,
)
from storage.holdout import block_weights, evaluation_windows
from storage.models import meta
from storage.stream import read_range

TINY = HoldoutSplit(block_tokens=8, every=3, offset=1, max_blocks=1000)

splits = st.builds(
    HoldoutSplit,
    block_tokens=st.integers(1, 10),
    every=st.integers(1, 5),
    offset=st.integers(0, 6),
    max_blocks=st.integers(1, 5),
)
store_settings = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the references -------------------------------------------------------------------------------


def held_out(split: HoldoutSplit, k: int) -> bool:
    rank, rest = divmod(k - split.offset, split.every)
    return k >= split.offset and rest == 0 and rank < split.max_blocks


def held_out_mask(split: HoldoutSplit, n: int) -> np.ndarray:
    """bool (n,): True at every offset < n that lies in a held-out region [k*S, k*S + S + 1)."""
    S = split.block_tokens
    mask = np.zeros(n, bool)
    for k in range(n // S + 1):
        if held_out(split, k):
            mask[k * S : k * S + S + 1] = True
    return mask


def window_touches(split: HoldoutSplit, start: int, length: int) -> bool:
    """Loops over the blocks near one window only, so it works far along the stream."""
    S = split.block_tokens
    return any(
        held_out(split, k) and k * S < start + length and start < k * S + S + 1
        for k in range(max(0, start // S - 2), (start + length) // S + 2)
    )


# --- the split's arithmetic -----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    split=splits,
    length=st.integers(1, 120),
    starts=st.lists(st.integers(0, 400), max_size=40),
)
def test_overlaps_matches_a_mask_over_the_offsets(split, length, starts):
    mask = held_out_mask(split, 400 + length)
    expected = [bool(mask[s : s + length].any()) for s in starts]
    found = split.overlaps(np.array(starts, np.int64), length)
    assert found.dtype == bool and found.shape == (len(starts),)
    assert found.tolist() == expected


@settings(max_examples=200, deadline=None)
@given(
    block_tokens=st.integers(1, 600),
    every=st.integers(1, 40),
    offset=st.integers(0, 30),
    max_blocks=st.integers(1, 2**20),
    length=st.integers(1, 3000),
    starts=st.lists(st.integers(0, 2**40), min_size=1, max_size=10),
)
def test_overlaps_is_exact_far_along_and_for_long_windows(
    block_tokens, every, offset, max_blocks, length, starts
):
    split = HoldoutSplit(block_tokens, every, offset, max_blocks)
    expected = [window_touches(split, s, length) for s in starts]
    assert split.overlaps(np.array(starts), length).tolist() == expected


@settings(max_examples=300, deadline=None)
@given(split=splits, end=st.integers(0, 500))
def test_blocks_and_complete_blocks_match_brute_force(split, end):
    S = split.block_tokens
    candidates = [k for k in range(end // S + 2) if held_out(split, k)]
    blocks, complete = split.blocks(end), split.complete_blocks(end)
    assert blocks.dtype == complete.dtype == np.int64
    assert blocks.tolist() == [k for k in candidates if k * S < end]
    assert complete.tolist() == [k for k in candidates if k * S + S + 1 <= end]
    # the blocks are exactly those touching a stream of `end` tokens
    touching = held_out_mask(split, end).any() if end else False
    assert bool(len(blocks)) == bool(touching)


@settings(max_examples=200, deadline=None)
@given(split=splits, ends=st.lists(st.integers(0, 2000), min_size=2, max_size=2))
def test_blocks_only_grow_as_text_arrives(split, ends):
    first, second = sorted(ends)
    for blocks in (split.blocks, split.complete_blocks):
        before, after = blocks(first).tolist(), blocks(second).tolist()
        assert after[: len(before)] == before


def test_the_defaults_hold_out_one_block_of_a_small_corpus():
    split = HoldoutSplit().validate()
    assert (split.block_tokens, split.every, split.offset, split.max_blocks) == (512, 20, 10, 256)
    assert split.complete_blocks(10 * 512 + 512).tolist() == []  # one token short of the region
    assert split.complete_blocks(10 * 512 + 513).tolist() == [10]
    assert split.blocks(10 * 512 + 1).tolist() == [10]


def test_the_cap_bounds_the_held_out_text():
    split = HoldoutSplit()
    last = 10 + 255 * 20
    for blocks in (split.blocks, split.complete_blocks):
        found = blocks(10**12)
        assert len(found) == 256 and found[-1] == last
    beyond = (last + 1) * 512 + 1  # past the last region's final token
    assert split.overlaps(np.array([last * 512 + 512, beyond, 10**12]), 1000).tolist() == [
        True, False, False]
    assert split.overlaps(np.array([0]), 10**12).tolist() == [True]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("block_tokens", 0, "block_tokens (0) must be an integer >= 1"),
        ("every", 0, "every (0) must be an integer >= 1"),
        ("offset", -1, "offset (-1) must be an integer >= 0"),
        ("max_blocks", 0, "max_blocks (0) must be an integer >= 1"),
        ("every", 2.0, "every (2.0) must be an integer >= 1"),
        ("offset", True, "offset (True) must be an integer >= 0"),
    ],
)
def test_validate_names_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HoldoutSplit(**{field: value}).validate()
    assert issubclass(ConfigError, ValueError)


def test_json_round_trip_and_refusals():
    split = HoldoutSplit(block_tokens=64, every=7, offset=0, max_blocks=9, source_blocks=3, extra_blocks=5,
                         spread_blocks=2)
    text = split.to_json()
    assert text == ('{"block_tokens": 64, "every": 7, "extra_blocks": 5, "max_blocks": 9, "offset": 0, '
                    '"source_blocks": 3, "spread_blocks": 2}')
    assert HoldoutSplit.from_json(text) == split
    # a split without spread blocks is written, and read, in the six keys of the release before them
    six = HoldoutSplit(block_tokens=64, every=7, offset=0, max_blocks=9, source_blocks=3, extra_blocks=5,
                       spread_blocks=0)
    assert six.to_json() == ('{"block_tokens": 64, "every": 7, "extra_blocks": 5, "max_blocks": 9, "offset": 0, '
                             '"source_blocks": 3}')
    assert HoldoutSplit.from_json(six.to_json()) == six and not six.spread and six.beyond_base
    # a split without per-source blocks is written, and read, in the four keys of earlier releases
    earlier = HoldoutSplit(block_tokens=64, every=7, offset=0, max_blocks=9, source_blocks=0, extra_blocks=0,
                           spread_blocks=0)
    assert earlier.to_json() == '{"block_tokens": 64, "every": 7, "max_blocks": 9, "offset": 0}'
    assert HoldoutSplit.from_json(earlier.to_json()) == earlier and not earlier.per_source
    assert not earlier.beyond_base
    for bad in ["", "[]", "not json", '{"block_tokens": 64}', None,
                '{"block_tokens": 64, "every": 7, "max_blocks": 9, "offset": 0, "extra": 1}',
                '{"block_tokens": 64, "every": 7, "max_blocks": 9, "offset": 0, "source_blocks": 1}',
                '{"block_tokens": 64, "every": 7, "extra_blocks": -1, "max_blocks": 9, "offset": 0, '
                '"source_blocks": 1}',
                '{"block_tokens": 0, "every": 7, "max_blocks": 9, "offset": 0}',
                '{"block_tokens": 64, "every": 7, "max_blocks": 9, "offset": 0, "spread_blocks": 2}',
                '{"block_tokens": 64, "every": 7, "extra_blocks": 5, "max_blocks": 9, "offset": 0, '
                '"source_blocks": 3, "spread_blocks": -1}']:
        with pytest.raises(ConfigError):
            HoldoutSplit.from_json(bad)


@settings(max_examples=200, deadline=None)
@given(
    split=splits,
    position=st.integers(0, 100),
    seq_len=st.integers(1, 15),
    available=st.integers(0, 60),
    count=st.integers(0, 70),
)
def test_training_windows_takes_the_first_free_ones(split, position, seq_len, available, count):
    free = [j for j in range(available)
            if not window_touches(split, position + j * seq_len, seq_len + 1)]
    taken, examined = split.training_windows(position, seq_len, available, count)
    assert taken.tolist() == free[:count]
    assert examined == (free[count - 1] + 1 if 0 < count <= len(free) else available if count else 0)


@pytest.mark.parametrize("seq_len", [1, 2, 3, 7, 8, 9, 20])
def test_evaluation_windows_score_every_target_once(seq_len):
    S = 8
    regions = np.arange(3)[:, None] * 100 + np.arange(S + 1)[None, :]  # (3, 9): block b at 100*b
    windows, tail = evaluation_windows(regions, seq_len)
    n, r = divmod(S, seq_len)
    assert windows.shape == (3 * n, seq_len + 1)
    assert tail.shape == ((3, r + 1) if r else (0, 1))
    for window in [*windows, *tail]:  # consecutive offsets, inside one region
        np.testing.assert_array_equal(np.diff(window), 1)
    targets = np.concatenate([windows[:, 1:].ravel(), tail[:, 1:].ravel()])
    np.testing.assert_array_equal(np.sort(targets), np.sort(regions[:, 1:].ravel()))


# --- stores whose token values are their offsets --------------------------------------------------


def append(queue, add, lengths, base: int = 0) -> np.ndarray:
    """Adds one document per length; token value = base + stream offset. Returns the whole stream."""
    start = queue.stats().tokens_total
    for length in lengths:
        tokens = base + np.arange(start, start + length)
        unique = uuid.uuid4().hex
        assert add(queue, f"/in/{unique}", tokens, content_hash=unique * 2).stream_end
        start += length
    with queue.database.read() as connection:
        return read_range(connection, 0, start)


# --- read_windows ---------------------------------------------------------------------------------


@store_settings
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    seq_len=st.integers(1, 12),
    fraction=st.floats(0, 1),
    count=st.integers(0, 30),
    max_blocks=st.integers(1, 6),
)
def test_read_windows_skips_exactly_the_windows_touching_held_out_text(
    queue, add, lengths, seq_len, fraction, count, max_blocks
):
    # the store is shared by the examples: each appends, then reads from anywhere in the stream
    split = HoldoutSplit(block_tokens=8, every=3, offset=1, max_blocks=max_blocks)
    stream = append(queue, add, lengths, base=70_000)  # uint32 chunks
    mask = held_out_mask(split, len(stream))
    position = int(fraction * len(stream))
    everything, end = queue.read_windows(position, 10**9, seq_len)  # the holdout=None scan
    starts = position + np.arange(len(everything)) * seq_len
    free = [j for j, s in enumerate(starts) if not mask[s : s + seq_len + 1].any()]
    windows, following = queue.read_windows(position, count, seq_len, holdout=split)
    assert windows.dtype == np.int32 and windows.shape == (min(count, len(free)), seq_len + 1)
    np.testing.assert_array_equal(windows, everything[free[:count]])
    assert not mask[windows.ravel() - 70_000].any()  # no held-out token, as input or target
    if count == 0:
        assert following == position
    elif count <= len(free):
        assert following == position + (free[count - 1] + 1) * seq_len
    else:
        assert following == end  # every complete window examined


def test_walking_with_a_holdout_reads_each_free_window_once(queue, add):
    stream = append(queue, add, [13, 50, 7, 90, 31])
    mask = held_out_mask(TINY, len(stream))
    position, seen = 0, []
    while True:
        windows, following = queue.read_windows(position, 2, 5, holdout=TINY)
        assert following >= position
        if following == position:
            break
        seen.extend(windows[:, 0].tolist())
        position = following
    expected = [s for s in range(0, len(stream) - 5, 5) if not mask[s : s + 6].any()]
    assert seen == expected and len(stream) - position <= 5
    assert expected and len(expected) < (len(stream) - 1) // 5  # some taken, some skipped


def test_read_windows_with_a_holdout_never_reads_held_out_tokens(queue, add, monkeypatch):
    import storage.reads

    append(queue, add, [200])
    ranges = []
    real = storage.reads.read_range
    def spy(connection, start, stop):
        ranges.append((start, stop))
        return real(connection, start, stop)

    monkeypatch.setattr(storage.reads, "read_range", spy)
    queue.read_windows(0, 100, 4, holdout=TINY)
    mask = held_out_mask(TINY, 200)
    assert ranges and not any(mask[a:b].any() for a, b in ranges)


def test_a_split_beyond_the_stream_changes_nothing(queue, add):
    append(queue, add, [60, 45])
    far = HoldoutSplit(block_tokens=8, every=3, offset=50)
    assert far.blocks(105).size == 0
    for position, count, seq_len in [(0, 5, 4), (3, 100, 7), (104, 3, 1)]:
        plain, plain_next = queue.read_windows(position, count, seq_len)
        held, held_next = queue.read_windows(position, count, seq_len, holdout=far)
        np.testing.assert_array_equal(held, plain)
        assert held_next == plain_next


# --- sample_replay --------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 4, 9])
def test_replay_never_returns_held_out_text(queue, add, seq_len):
    stream = append(queue, add, [120, 80])
    mask = held_out_mask(TINY, len(stream))
    queue.commit_checkpoint(step=1, path="cp", stream_position=180, tokens_trained=180)
    windows = queue.sample_replay(300, seq_len, np.random.default_rng(3), holdout=TINY)
    assert windows.shape == (300, seq_len + 1) and windows.dtype == np.int32
    assert not mask[windows.ravel()].any()
    assert (np.diff(windows, axis=1) == 1).all() and windows.max() < 180
    # the draws: round one as without a holdout, then redraws of the missing ones
    rng, high, found = np.random.default_rng(3), 180 - seq_len, []
    while len(found) < 300:
        drawn = rng.integers(0, high, size=300 - len(found))
        found += [s for s in drawn.tolist() if not mask[s : s + seq_len + 1].any()]
    np.testing.assert_array_equal(windows[:, 0], found)


def test_replay_without_held_out_text_in_range_draws_as_before(queue, add):
    append(queue, add, [100])
    far = HoldoutSplit(block_tokens=8, every=3, offset=50)
    plain = queue.sample_replay(20, 6, np.random.default_rng(5), end=100)
    held = queue.sample_replay(20, 6, np.random.default_rng(5), end=100, holdout=far)
    np.testing.assert_array_equal(held, plain)


def test_replay_gives_up_after_bounded_rounds(queue, add):
    append(queue, add, [100])
    everything = HoldoutSplit(block_tokens=4, every=1, offset=0, max_blocks=1000)
    rng = np.random.default_rng(0)
    assert queue.sample_replay(8, 3, rng, end=100, holdout=everything).shape == (0, 4)
    mostly = HoldoutSplit(block_tokens=16, every=1, offset=1, max_blocks=1000)  # free: [0, 16)
    windows = queue.sample_replay(50, 12, np.random.default_rng(0), end=100, holdout=mostly)
    assert 0 < len(windows) <= 50 and (windows[:, 0] < 4).all()


# --- holdout_set ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seq_len", [1, 3, 8, 5, 20])
@pytest.mark.parametrize("base", [0, 70_000])
def test_holdout_set_scores_every_held_out_target_once(queue, add, seq_len, base):
    stream = append(queue, add, [30, 3, 41, 26], base=base)  # 100 tokens: blocks 1, 4, 7, 10
    blocks = TINY.complete_blocks(len(stream))
    assert blocks.tolist() == [1, 4, 7, 10]
    found = queue.holdout_set(TINY, seq_len)
    assert isinstance(found, HoldoutSet)
    assert (found.blocks, found.tokens) == (4, 32)
    n, r = divmod(8, seq_len)
    assert found.windows.dtype == found.tail.dtype == np.int32
    assert found.windows.shape == (4 * n, seq_len + 1)
    assert found.tail.shape == ((4, r + 1) if r else (0, 1))
    for window in [*found.windows, *found.tail]:  # the stream's own tokens, consecutive
        start = int(window[0]) - base
        np.testing.assert_array_equal(window, stream[start : start + len(window)])
    targets = np.concatenate([found.windows[:, 1:].ravel(), found.tail[:, 1:].ravel()]) - base
    expected = np.concatenate([np.arange(k * 8 + 1, k * 8 + 9) for k in blocks])
    np.testing.assert_array_equal(np.sort(targets), expected)  # each exactly once
    assert (np.diff(found.windows[:, 0]) > 0).all()  # stream order


def test_holdout_set_grows_by_whole_blocks(queue, add):
    empty = queue.holdout_set(TINY, 4)
    assert (empty.blocks, empty.tokens, empty.windows.shape, empty.tail.shape) == (0, 0, (0, 5), (0, 1))
    append(queue, add, [16])  # region of block 1 is [8, 17): one token short
    assert queue.holdout_set(TINY, 4).blocks == 0
    append(queue, add, [1])
    grown = queue.holdout_set(TINY, 4)
    assert grown.blocks == 1
    np.testing.assert_array_equal(grown.windows, [[8, 9, 10, 11, 12], [12, 13, 14, 15, 16]])


def test_training_and_evaluation_share_no_token(queue, add):
    append(queue, add, [77, 150])
    evaluated = queue.holdout_set(TINY, 5)
    held = set(evaluated.windows.ravel().tolist()) | set(evaluated.tail.ravel().tolist())
    trained, _ = queue.read_windows(0, 10**6, 5, holdout=TINY)
    replayed = queue.sample_replay(200, 5, np.random.default_rng(0), end=227, holdout=TINY)
    assert held and trained.size and len(replayed) == 200
    assert held.isdisjoint(trained.ravel().tolist()) and held.isdisjoint(replayed.ravel().tolist())


# --- the recorded split ---------------------------------------------------------------------------


def test_the_first_split_is_recorded_and_kept(make_config):
    first = HoldoutSplit(block_tokens=64, every=5, offset=2, max_blocks=7)
    with CorpusQueue(open_database(make_config())) as queue:
        assert queue.holdout(first) == first
        assert queue.holdout(HoldoutSplit()) == first  # another default changes nothing
        with queue.database.read() as connection:
            query = sa.select(meta.c.value).where(meta.c.key == "holdout")
            value = connection.execute(query).scalar()
        assert json.loads(value) == {"block_tokens": 64, "every": 5, "offset": 2, "max_blocks": 7,
                                     "source_blocks": 32, "extra_blocks": 256, "spread_blocks": 64}
    with CorpusQueue(open_database(make_config())) as queue:  # after a restart
        assert queue.holdout(HoldoutSplit(block_tokens=8)) == first


def test_an_invalid_default_is_refused_and_not_recorded(queue):
    with pytest.raises(ConfigError, match="every"):
        queue.holdout(HoldoutSplit(every=0))
    assert queue.holdout(HoldoutSplit()) == HoldoutSplit()


def test_a_malformed_recorded_split_is_reported(queue):
    with queue.database.write() as connection:
        connection.execute(meta.insert().values(key="holdout", value='{"every": 3}'))
    with pytest.raises(ConfigError, match="exactly the keys"):
        queue.holdout(HoldoutSplit())


# --- evaluations ----------------------------------------------------------------------------------


def evaluation(**overrides) -> dict:
    values = {"step": 100, "epoch": 0.5, "tokens_trained": 6400, "val_bits_per_byte": 2.25,
              "train_bits_per_byte": 2.0, "holdout_tokens": 512, "seconds": 1.5, "best": True}
    return values | overrides


def test_evaluations_round_trip(queue):
    assert queue.evaluations() == [] and queue.latest_evaluation() is None
    assert queue.best_evaluation() is None
    first = queue.record_evaluation(**evaluation())
    second = queue.record_evaluation(**evaluation(step=200, val_bits_per_byte=2.5, best=False,
                                                  train_bits_per_byte=None))
    third = queue.record_evaluation(**evaluation(
        step=np.int64(300), epoch=np.float64(1.25), tokens_trained=np.int64(19_200),
        val_bits_per_byte=np.float32(2.75), holdout_tokens=np.int64(1024), best=np.bool_(False)))
    assert first < second < third
    rows = queue.evaluations()
    assert [row.id for row in rows] == [first, second, third]
    record = rows[0]
    assert isinstance(record, EvaluationRecord)
    assert record == EvaluationRecord(id=first, created_at=record.created_at, **evaluation())
    assert record.created_at.tzinfo == UTC
    assert (rows[1].train_bits_per_byte, rows[1].best) == (None, False)
    last = rows[2]
    assert (last.step, last.epoch, last.val_bits_per_byte, last.best) == (300, 1.25, 2.75, False)
    assert type(rows[2].step) is int and type(rows[2].best) is bool
    assert [row.id for row in queue.evaluations(since=first)] == [second, third]
    assert [row.id for row in queue.evaluations(since=first, limit=1)] == [second]
    assert queue.evaluations(since=third) == [] and queue.evaluations(limit=0) == []
    assert queue.latest_evaluation() == rows[2]
    assert queue.best_evaluation() == rows[0]
    newest_best = queue.record_evaluation(**evaluation(step=400, val_bits_per_byte=2.0))
    assert queue.best_evaluation().id == queue.latest_evaluation().id == newest_best


def test_the_history_keeps_the_shape_of_the_model_measured(queue):
    """Revision 0010: each row may say which model it measured; where the shape changes, it grew."""
    born = queue.record_evaluation(**evaluation(step=100))
    small = {"d_model": 16, "n_head": 2, "n_layer": 1, "parameters": 4_000, "grown_at_step": None,
             "grown_from_layers": None}
    before = queue.record_evaluation(**evaluation(step=200, model=small))
    grown = small | {"n_layer": np.int64(3), "parameters": np.int64(12_000), "grown_at_step": np.int64(200),
                     "grown_from_layers": 1}
    after = queue.record_evaluation(**evaluation(step=300, best=False, model=grown))
    history = {r.id: r for r in queue.evaluations()}
    assert history[born].model is None
    assert history[before].model == small
    assert history[after].model == {"d_model": 16, "n_head": 2, "n_layer": 3, "parameters": 12_000,
                                    "grown_at_step": 200, "grown_from_layers": 1}
    assert type(history[after].model["parameters"]) is int
    assert queue.latest_evaluation().model == history[after].model
    assert queue.best_evaluation().model == small
    with pytest.raises(ValueError, match="n_layer"):
        queue.record_evaluation(**evaluation(step=400, model=small | {"n_layer": -1}))
    for bad in ({"parameters": 1.5}, {"d_model": "16"}):
        with pytest.raises(TypeError):
            queue.record_evaluation(**evaluation(step=400, model=small | bad))
    assert len(queue.evaluations()) == 3


@pytest.mark.parametrize(
    "overrides",
    [{"val_bits_per_byte": float("nan")}, {"val_bits_per_byte": float("inf")},
     {"train_bits_per_byte": -1.0}, {"step": -1}, {"seconds": -0.5}, {"best": 1},
     {"holdout_tokens": -5}],
)
def test_a_bad_evaluation_is_refused_and_not_written(queue, overrides):
    with pytest.raises(ValueError):
        queue.record_evaluation(**evaluation(**overrides))
    assert queue.evaluations() == []
    with pytest.raises(ValueError, match="limit"):
        queue.evaluations(limit=-1)


def test_spread_ranks_are_even_within_each_doubling_tier():
    split = HoldoutSplit(block_tokens=8, every=3, offset=2, max_blocks=8, spread_blocks=4)
    ranks = np.arange(0, 8 * 2**5)  # the base and five tiers
    held = ranks[split.on_spread(split.offset + split.every * ranks)]
    assert held.min() == 8  # nothing in the base: its blocks are held out anyway
    for j in range(5):
        first = 8 << j
        tier = held[(held >= first) & (held < 2 * first)]
        assert tier.tolist() == list(range(first, 2 * first, max(first // 4, 1)))  # four, evenly spaced
    assert not HoldoutSplit(spread_blocks=0).on_spread(np.arange(10**6, 10**6 + 100)).any()
    # more blocks a tier than it has ranks: every rank of it
    dense = HoldoutSplit(block_tokens=8, every=1, offset=0, max_blocks=2, spread_blocks=8)
    assert dense.on_spread(np.arange(2, 16)).all()


def test_block_weights_are_the_stretch_nearest_each_block():
    # an even lattice from its offset: every block the same, as the unweighted figure counts them
    np.testing.assert_allclose(block_weights(np.array([10, 30, 50, 70])), [20, 20, 20, 20])
    # a sparse block stands for the stretch it samples
    weights = block_weights(np.array([10, 30, 50, 130, 290]))
    np.testing.assert_allclose(weights, [20, 20, 50, 120, 160])
    assert block_weights(np.array([5])).tolist() == [1.0] and block_weights(np.array([], np.int64)).size == 0
