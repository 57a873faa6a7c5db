"""Held-out blocks per source (storage/holdout_blocks.py, revision 0009), on SQLite and PostgreSQL:
the choice against a slow reference, its caps, the one rule (no block a model has read becomes
held out), the reads that never return a held-out token, an earlier release's split extended
with its blocks kept, and the figures per source in the evaluation history.

Stores built here hold tokens whose value is their stream offset plus BASE, so every window
returned names the offsets it came from. A source is the folder a path lies in.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import replace

import numpy as np
import pytest
import sqlalchemy as sa

from storage import HoldoutSplit, StreamMask
from storage.holdout import choose_source_blocks
from storage.holdout_blocks import FRONTIER
from storage.models import holdout_blocks, meta

BASE = 1000
SPLIT = HoldoutSplit(block_tokens=8, every=3, offset=1, max_blocks=2, source_blocks=3, extra_blocks=5,
                     spread_blocks=0)
# ... with spread blocks too: ranks 2, 4, 8, 16, ... (one a doubling tier)
SPREAD = replace(SPLIT, spread_blocks=1)


def folder(path: str) -> str:
    return posixpath.basename(posixpath.dirname(path))


def fill(queue, add, layout: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Store documents of these lengths in order; returns (path, start, end) of each."""
    placed = []
    for path, n in layout:
        start = queue.stream_end()
        add(queue, path, np.arange(start, start + n) + BASE)
        placed.append((path, start, start + n))
    return placed


def reference(split: HoldoutSplit, placed, read_to: int, end: int, withdrawn=()) -> list[int]:
    """Every held-out block whose first token is stored, by walking the lattice one block at a time."""
    S = split.block_tokens

    def source(offset: int) -> str:
        return next(folder(path) for path, a, b in placed if a <= offset < b)

    held, counts, extra = [], {}, 0
    k = split.offset
    while k * S < end:
        rank = (k - split.offset) // split.every
        name = source(k * S)
        spread = False
        if split.spread and rank >= split.max_blocks:
            first = split.max_blocks  # the doubling tier [first, 2 * first) holding the rank
            while rank >= 2 * first:
                first *= 2
            spread = (rank - first) % max(first // split.spread_blocks, 1) == 0
        open_ = k * S > read_to and not any(a < k * S + S + 1 and b > k * S for a, b in withdrawn)
        if rank < split.max_blocks:
            held.append(k)
            counts[name] = counts.get(name, 0) + 1
        elif open_ and spread:  # held out whatever the caps, and not counted against extra_blocks
            held.append(k)
            counts[name] = counts.get(name, 0) + 1
        elif (open_ and split.per_source and counts.get(name, 0) < split.source_blocks
              and extra < split.extra_blocks):
            held.append(k)
            counts[name] = counts.get(name, 0) + 1
            extra += 1
        k += split.every
    return held


def recorded(queue) -> list[int]:
    with queue.database.read() as connection:
        return sorted(connection.execute(sa.select(holdout_blocks.c.block)).scalars().all())


def held_regions(split: HoldoutSplit, blocks) -> set[int]:
    """The stream offsets of every region of these blocks."""
    S = split.block_tokens
    return {p for k in blocks for p in range(k * S, k * S + S + 1)}


# --- the choice -----------------------------------------------------------------------------------


def test_the_rule_alone_counts_sources_and_stops_at_both_caps():
    split = HoldoutSplit(source_blocks=2, extra_blocks=3)
    counts = {"plays": 5}  # the base holds plays' blocks already
    held = choose_source_blocks(split, ["plays", "docs", None, "docs", "docs", "man", "man"], counts, 0)
    assert held.tolist() == [False, True, False, True, False, True, False]  # docs capped at 2, all at 3
    assert counts == {"plays": 5, "docs": 2, "man": 1}


def test_blocks_are_held_out_per_source_beyond_the_base(queue, add):
    queue.holdout(SPLIT)
    # the base (blocks 1 and 4: tokens up to 41) lies in plays; the rest comes after it
    placed = fill(queue, add, [("/in/plays/a.txt", 60), ("/in/plays/b.txt", 100), ("/in/docs/x.html", 150),
                               ("/in/man/ls.1", 40), ("/in/docs/y.html", 90)])
    held = queue.settle_holdout(SPLIT, 0, folder)
    end = queue.stream_end()
    assert recorded(queue) == reference(SPLIT, placed, 0, end)
    assert held.blocks.tolist() == [k for k in recorded(queue) if k > 4]  # beyond the base only
    # plays has its 2 base blocks and takes 1 more (3 per source), docs 3, man the last of the 5
    # beyond the base; the second docs file comes too late for either cap
    assert held.added == {"plays": 1, "docs": 3, "man": 1} and held.decided_end >= end
    names = {k: folder(next(p for p, a, b in placed if a <= k * 8 < b)) for k in recorded(queue)}
    assert sorted(names.values()).count("plays") == SPLIT.source_blocks
    assert len(held.blocks) == SPLIT.extra_blocks
    # nothing new, nothing changes; the same call again is a read
    assert queue.settle_holdout(SPLIT, 0, folder).added == {}


def test_text_after_the_base_gets_blocks_as_it_arrives_and_decisions_are_final(queue, add):
    queue.holdout(SPLIT)
    placed = fill(queue, add, [("/in/plays/a.txt", 70)])
    first = queue.settle_holdout(SPLIT, 0, folder)
    assert first.blocks.tolist() == [7]  # plays: base 1 and 4, then 7
    placed += fill(queue, add, [("/in/plays/b.txt", 30), ("/in/docs/x.html", 200)])
    # another grouping from now on counts the blocks held so far anew (3 for "everything": its
    # cap), and steers only what is not decided yet; nothing decided changes
    second = queue.settle_holdout(SPLIT, 0, lambda path: "everything")
    assert second.added == {} and second.blocks.tolist() == [7]
    placed += fill(queue, add, [("/in/man/ls.1", 100)])
    third = queue.settle_holdout(SPLIT, 0, folder)  # back to folders: man is a new source
    assert third.blocks[:1].tolist() == [7] and set(third.added) == {"man"}
    with queue.database.read() as connection:
        frontier = int(connection.execute(sa.select(meta.c.value).where(meta.c.key == FRONTIER)).scalar())
    assert frontier * SPLIT.block_tokens >= queue.stream_end()


def test_a_block_a_model_has_read_never_becomes_held_out(queue, add):
    queue.holdout(SPLIT)
    placed = fill(queue, add, [("/in/plays/a.txt", 120), ("/in/docs/x.html", 200)])
    end = queue.stream_end()
    # the trainer read up to 150 (in memory); the committed cursor stands at 90
    queue.commit_checkpoint(step=3, path="checkpoints/ckpt-000000003.safetensors", stream_position=90,
                            tokens_trained=90)
    held = queue.settle_holdout(SPLIT, 150, folder)
    assert all(k * 8 > 150 for k in held.blocks)
    assert recorded(queue) == reference(SPLIT, placed, 150, end)


def test_the_committed_cursor_is_a_floor_too(queue, add):
    queue.holdout(SPLIT)
    placed = fill(queue, add, [("/in/plays/a.txt", 300)])
    queue.commit_checkpoint(step=3, path="checkpoints/ckpt-000000003.safetensors", stream_position=200,
                            tokens_trained=200)
    held = queue.settle_holdout(SPLIT, 0, folder)  # a caller that read less than the cursor says
    assert held.blocks.size and all(k * 8 > 200 for k in held.blocks)
    assert recorded(queue) == reference(SPLIT, placed, 200, queue.stream_end())


def test_withdrawn_text_is_never_chosen(queue, add):
    queue.holdout(SPLIT)
    placed = fill(queue, add, [("/in/plays/a.txt", 50), ("/in/docs/x.html", 100), ("/in/docs/y.html", 100)])
    queue.forget(paths=["/in/docs/x.html"])
    held = queue.settle_holdout(SPLIT, 0, folder)
    assert recorded(queue) == reference(SPLIT, placed, 0, queue.stream_end(), withdrawn=[(50, 150)])
    assert held.blocks.size and not any(50 < k * 8 + 9 and k * 8 < 150 for k in held.blocks)


def test_spread_blocks_sample_the_whole_stream_past_the_caps(queue, add):
    queue.holdout(SPREAD)
    placed = fill(queue, add, [("/in/desk/a.html", 300), ("/in/desk/b.html", 500), ("/in/desk/c.html", 400)])
    held = queue.settle_holdout(SPREAD, 0, folder)
    assert recorded(queue) == reference(SPREAD, placed, 0, queue.stream_end())
    ranks = [(k - 1) // 3 for k in recorded(queue)]
    # the base (0, 1), the source's third block (2, also the first spread rank), then one rank a
    # doubling: the caps alone would have stopped at rank 2, 48 tokens in
    assert ranks == [0, 1, 2, 4, 8, 16, 32]
    assert held.added == {"desk": 5}
    # a spread rank a model has read is passed over for good (64: token 1544, read to 1600); the
    # next one, beyond the read, is held
    fill(queue, add, [("/in/desk/d.html", 1200)])
    assert queue.settle_holdout(SPREAD, 1600, folder).added == {}
    fill(queue, add, [("/in/desk/e.html", 1000)])
    assert queue.settle_holdout(SPREAD, 1600, folder).added == {"desk": 1}
    assert [(k - 1) // 3 for k in recorded(queue)] == [0, 1, 2, 4, 8, 16, 32, 128]


def test_a_split_is_extended_with_spread_blocks_past_what_it_decided(queue, add):
    queue.holdout(SPLIT)  # a state of the release before spread blocks
    fill(queue, add, [("/in/desk/a.html", 400)])
    before = queue.settle_holdout(SPLIT, 0, folder).blocks.tolist()
    split = queue.holdout(HoldoutSplit())
    assert split == SPREAD.__class__(**(json.loads(SPLIT.to_json()) | {"spread_blocks": HoldoutSplit().spread_blocks}))
    assert queue.holdout(HoldoutSplit(spread_blocks=3)) == split  # extended once
    fill(queue, add, [("/in/desk/b.html", 2000)])
    after = queue.settle_holdout(split, 0, folder).blocks.tolist()
    assert after[: len(before)] == before and len(after) > len(before)  # kept, and new ones past the caps
    assert queue.holdout_set(split, 4).weights is not None and queue.holdout_set(SPLIT, 4).weights is None


def test_a_split_without_blocks_beyond_its_base_decides_nothing(queue, add):
    earlier = HoldoutSplit(block_tokens=8, every=3, offset=1, max_blocks=2, source_blocks=0, extra_blocks=0,
                           spread_blocks=0)
    fill(queue, add, [("/in/plays/a.txt", 300)])
    held = queue.settle_holdout(earlier, 0, folder)
    assert held.blocks.size == 0 and held.decided_end is None and recorded(queue) == []


# --- the reads ------------------------------------------------------------------------------------


def test_no_held_out_token_is_ever_read_for_training(queue, add):
    queue.holdout(SPLIT)
    fill(queue, add, [("/in/plays/a.txt", 120), ("/in/docs/x.html", 250), ("/in/man/ls.1", 130)])
    held = queue.settle_holdout(SPLIT, 0, folder)
    end = queue.stream_end()
    assert held.blocks.size >= 3
    forbidden = held_regions(SPLIT, list(SPLIT.blocks(end)) + held.blocks.tolist())
    # a bare split, one read before the split had per-source blocks, a mask read before the choice
    # (no per-source blocks in it), and the full mask: each read looks the recorded blocks up in
    # its own snapshot
    earlier = replace(SPLIT, source_blocks=0, extra_blocks=0)
    for holdout in (SPLIT, earlier, queue.stream_mask(SPLIT), queue.stream_mask(SPLIT).with_held(held.blocks, None)):
        for seq_len in (3, 5, 8):
            windows, _ = queue.read_windows(0, 10_000, seq_len, holdout=holdout)
            assert windows.size and forbidden.isdisjoint((windows - BASE).ravel().tolist())
            replayed = queue.sample_replay(300, seq_len, np.random.default_rng(seq_len), end=end, holdout=holdout)
            assert len(replayed) == 300 and forbidden.isdisjoint((replayed - BASE).ravel().tolist())
    # the mask itself (what in-memory draws use) says the same
    mask = queue.stream_mask(SPLIT).with_held(held.blocks, held.decided_end)
    starts = np.arange(end - 8)
    hits = mask.overlaps(starts, 9)
    assert hits.tolist() == [not forbidden.isdisjoint(range(s, s + 9)) for s in starts.tolist()]


def test_a_training_read_stops_where_the_choice_stops(queue, add):
    queue.holdout(SPLIT)
    fill(queue, add, [("/in/plays/a.txt", 100)])
    held = queue.settle_holdout(SPLIT, 0, folder)
    fill(queue, add, [("/in/docs/x.html", 200)])  # not decided yet
    mask = queue.stream_mask(SPLIT).with_held(held.blocks, held.decided_end)
    _, position, starts = queue.read_windows(0, 10_000, 4, holdout=mask, return_starts=True)
    assert position <= held.decided_end and (starts + 5 <= held.decided_end).all()
    later = queue.settle_holdout(SPLIT, position, folder)  # decided before it is read
    assert later.decided_end >= queue.stream_end() and all(k * 8 > position for k in later.blocks[len(held.blocks):])


def test_the_held_out_set_holds_the_blocks_of_every_source_with_their_paths(queue, add):
    queue.holdout(SPLIT)
    placed = fill(queue, add, [("/in/plays/a.txt", 120), ("/in/docs/x.html", 250), ("/in/man/ls.1", 130)])
    queue.settle_holdout(SPLIT, 0, folder)
    end = queue.stream_end()
    found = queue.holdout_set(queue.stream_mask(SPLIT), 4)
    blocks = [k for k in recorded(queue) if k * 8 + 9 <= end]
    assert found.blocks == len(blocks) and found.tokens == 8 * len(blocks)
    assert list(found.paths) == [next(p for p, a, b in placed if a <= k * 8 < b) for k in blocks]
    assert {folder(p) for p in found.paths} == {"plays", "docs", "man"}
    # its windows are the regions, in stream order
    np.testing.assert_array_equal(found.windows[::2, 0] - BASE, [k * 8 for k in blocks])


# --- an earlier release's split ---------------------------------------------------------------------


def test_an_earlier_release_split_is_extended_once_and_keeps_its_blocks(queue, add):
    written = '{"block_tokens": 8, "every": 3, "max_blocks": 2, "offset": 1}'  # as its to_json wrote it
    with queue.database.write() as connection:
        connection.execute(meta.insert().values(key="holdout", value=written))
    placed = fill(queue, add, [("/in/plays/a.txt", 200), ("/in/docs/x.html", 200)])
    earlier = HoldoutSplit.from_json(written)
    assert not earlier.per_source and queue.holdout(earlier) == earlier  # another reader: no change
    before = queue.holdout_set(earlier, 4)
    queue.commit_checkpoint(step=9, path="checkpoints/ckpt-000000009.safetensors", stream_position=180,
                            tokens_trained=180)
    split = queue.holdout(HoldoutSplit(source_blocks=3, extra_blocks=5, spread_blocks=0))
    assert (split.block_tokens, split.every, split.offset, split.max_blocks) == (8, 3, 1, 2)
    assert (split.source_blocks, split.extra_blocks) == (3, 5)
    assert queue.holdout(HoldoutSplit(spread_blocks=0)) == split  # recorded: later defaults change nothing
    with queue.database.read() as connection:
        value = connection.execute(sa.select(meta.c.value).where(meta.c.key == "holdout")).scalar()
    assert json.loads(value) == json.loads(written) | {"source_blocks": 3, "extra_blocks": 5}
    held = queue.settle_holdout(split, 180, folder)
    assert recorded(queue) == reference(split, placed, 180, queue.stream_end())
    assert all(k * 8 > 180 for k in held.blocks)  # trained text stays training text
    after = queue.holdout_set(split, 4)
    np.testing.assert_array_equal(after.windows[: len(before.windows)], before.windows)  # the base, as before
    assert after.blocks > before.blocks


# --- the history ----------------------------------------------------------------------------------


def test_the_history_keeps_each_source_figure(queue):
    before = queue.record_evaluation(step=1, epoch=0.1, tokens_trained=10, val_bits_per_byte=3.0,
                                     train_bits_per_byte=None, holdout_tokens=64, seconds=0.1, best=True)
    after = queue.record_evaluation(step=2, epoch=0.2, tokens_trained=20, val_bits_per_byte=2.5,
                                    train_bits_per_byte=None, holdout_tokens=64, seconds=0.1, best=True,
                                    sources={"plays": (np.float64(2.25), np.int64(48)), "docs": (3.25, 16)})
    history = {r.id: r for r in queue.evaluations()}
    assert history[before].sources is None
    assert history[after].sources == {"plays": {"val_bits_per_byte": 2.25, "holdout_tokens": 48},
                                      "docs": {"val_bits_per_byte": 3.25, "holdout_tokens": 16}}
    assert queue.latest_evaluation().sources == history[after].sources
    with pytest.raises(ValueError, match="plays"):
        queue.record_evaluation(step=3, epoch=0.3, tokens_trained=30, val_bits_per_byte=2.0,
                                train_bits_per_byte=None, holdout_tokens=64, seconds=0.1, best=False,
                                sources={"plays": (float("nan"), 48)})
    assert len(queue.evaluations()) == 2


def test_a_stream_mask_keeps_its_blocks_when_built_again():
    mask = StreamMask.of(SPLIT, [3], [5], 7, held=[10, 7], decided_end=96)
    assert mask.held.tolist() == [7, 10] and mask.decided_end == 96
    # regions [56, 65) and [80, 89), the withdrawn range [3, 5) and the base's [8, 17), [32, 41)
    assert mask.overlaps(np.array([56, 55, 64, 65, 88, 89, 4, 16]), 1).tolist() == [
        True, False, True, False, True, False, True, True]
