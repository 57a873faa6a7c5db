"""Withdrawn text: a rewrite supersedes its earlier version's untrained tokens, `forget` removes a
document's text, and every training read, replay draw and the held-out set skip both."""

from __future__ import annotations

import numpy as np
import pytest

from storage import CorpusQueue, HoldoutSplit, StorageError, StreamMask, open_database
from storage.mask import merge_ranges

T = 8


def tokens_of(value: int, n: int) -> np.ndarray:
    """n tokens that all equal `value` (1..255): each document's text is recognisable in a window."""
    return np.full(n, value, np.int32)


def windows_everywhere(queue: CorpusQueue, mask, position: int = 0) -> np.ndarray:
    windows, _ = queue.read_windows(position, 10_000, T, holdout=mask)
    return windows


# --- the mask's arithmetic ---------------------------------------------------------------------


def test_merged_ranges_cover_exactly_the_union():
    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.integers(0, 200, 12)
        ends = starts + rng.integers(0, 30, 12)
        merged = merge_ranges(starts, ends)
        covered = np.zeros(260, bool)
        for a, b in zip(starts, ends):
            covered[a:b] = True
        again = np.zeros(260, bool)
        for a, b in zip(*merged):
            again[a:b] = True
        np.testing.assert_array_equal(covered, again)
        assert np.all(merged[0][1:] > merged[1][:-1])  # disjoint, ascending, not touching


def test_mask_overlaps_agrees_with_brute_force():
    rng = np.random.default_rng(1)
    split = HoldoutSplit(block_tokens=16, every=3, offset=1, max_blocks=4)
    starts = rng.integers(0, 300, 6)
    ends = starts + rng.integers(1, 20, 6)
    mask = StreamMask.of(split, starts, ends, generation=6)
    withdrawn = np.zeros(400, bool)
    for a, b in zip(starts, ends):
        withdrawn[a:b] = True
    held = np.zeros(400, bool)
    for k in split.blocks(400):
        held[k * 16 : k * 16 + 17] = True
    windows = np.arange(0, 360)
    for length in (1, 5, 9):
        want_w = np.array([withdrawn[s : s + length].any() for s in windows])
        want = want_w | np.array([held[s : s + length].any() for s in windows])
        np.testing.assert_array_equal(mask.withdrawn_overlaps(windows, length), want_w)
        np.testing.assert_array_equal(mask.overlaps(windows, length), want)


# --- a rewrite supersedes ----------------------------------------------------------------------


def test_a_rewrite_withdraws_only_what_training_has_not_reached(queue, add):
    first = add(queue, "/in/a.txt", tokens_of(1, 100))
    add(queue, "/in/b.txt", tokens_of(2, 50))
    queue.commit_checkpoint(step=1, path="checkpoints/x", stream_position=40, tokens_trained=40)
    rewrite = add(queue, "/in/a.txt", tokens_of(3, 60), size=60)
    assert rewrite.status == "queued" and rewrite.version == 2
    assert rewrite.withdrawn_tokens == 60  # [40, 100) of the first version; [0, 40) was trained
    mask = queue.stream_mask(None)
    assert mask.generation == queue.withdrawal_generation() > 0
    assert (mask.starts.tolist(), mask.ends.tolist()) == ([40], [first.stream_end])
    windows = windows_everywhere(queue, mask, position=40)
    assert windows.size and not (windows == 1).any()  # no untrained token of the old version
    assert (windows == 3).any() and (windows == 2).any()  # the new version and the other file stay
    # replay still reaches the part that was trained, and never the withdrawn part
    replay = queue.sample_replay(200, T, np.random.default_rng(0), end=150, holdout=mask)
    assert len(replay) == 200
    assert (replay == 1).any()  # the trained [0, 40) is still replayed
    stats = queue.stats()
    assert stats.tokens_withdrawn == 60
    assert stats.tokens_queued == stats.tokens_total - 40 - 60


def test_a_rewrite_to_text_already_stored_keeps_it(queue, add):
    first = add(queue, "/in/a.txt", tokens_of(1, 30))
    add(queue, "/in/a.txt", tokens_of(4, 30))  # rewritten: the first text is withdrawn
    back = add(queue, "/in/a.txt", tokens_of(4, 30), mtime=5.0)  # touched: the same bytes again
    assert back.status == "duplicate" and back.withdrawn_tokens == 0
    mask = queue.stream_mask(None)
    assert mask.starts.tolist() == [0] and mask.ends.tolist() == [first.stream_end]
    assert (windows_everywhere(queue, mask) == 4).any()


def test_a_file_that_only_grew_supersedes_nothing(queue, add):
    from storage import NewDocument

    first = add(queue, "/in/log.txt", tokens_of(1, 30))
    item = NewDocument("/in/log.txt", add.content_hash(tokens_of(2, 50)), 50, 2.0, "text", tokens_of(2, 20),
                       byte_offset=30, continues=first.document_id)
    (grown,) = queue.add_documents([item], tokenizer=add.tokenizer)
    assert grown.status == "queued" and grown.withdrawn_tokens == 0 and queue.withdrawal_generation() == 0


def test_two_versions_in_one_batch_the_later_supersedes_the_earlier(queue, add):
    from storage import NewDocument

    items = [NewDocument("/in/a.txt", add.content_hash(tokens_of(v, 20)), 20, float(v), "text", tokens_of(v, 20))
             for v in (1, 2)]
    first, second = queue.add_documents(items, tokenizer=add.tokenizer)
    assert second.withdrawn_tokens == 20
    mask = queue.stream_mask(None)
    assert (mask.starts.tolist(), mask.ends.tolist()) == ([first.stream_start], [first.stream_end])


# --- forget ------------------------------------------------------------------------------------


def test_forget_removes_the_text_from_every_read(queue, add):
    split = HoldoutSplit(block_tokens=16, every=2, offset=0, max_blocks=8)
    a = add(queue, "/in/a.txt", tokens_of(1, 40))
    b = add(queue, "/in/b.txt", tokens_of(2, 40))
    add(queue, "/in/c.txt", tokens_of(3, 40))
    before = queue.holdout_set(queue.stream_mask(split), T)
    result = queue.forget(paths=["/in/b.txt"])
    assert result.documents == [b.document_id] and result.tokens == 40 and result.not_found == []
    with pytest.raises(StorageError):
        queue.read_tokens(b.stream_start, b.stream_end)  # the chunks are gone
    tokens = queue.read_tokens(0, 120, missing=-1)
    assert (tokens[b.stream_start : b.stream_end] == -1).all() and (tokens[: a.stream_end] == 1).all()
    mask = queue.stream_mask(split)
    assert not (windows_everywhere(queue, mask) == 2).any()
    replay = queue.sample_replay(300, T, np.random.default_rng(3), end=120, holdout=mask)
    assert len(replay) > 200 and not (replay == 2).any() and not (replay < 0).any()
    after = queue.holdout_set(mask, T)
    assert after.blocks < before.blocks and after.key != before.key
    assert not (after.windows == 2).any() and not (after.tail == 2).any()
    row = queue.stats().documents
    assert row["skipped"] == 1 and row["queued"] == 2


def test_forget_a_duplicate_forgets_the_text_and_names_who_shared_it(queue, add):
    original = add(queue, "/in/a.txt", tokens_of(7, 30))
    copy = add(queue, "/in/copy.txt", tokens_of(7, 30))
    assert copy.status == "duplicate"
    preview = queue.forget(paths=["/in/copy.txt"], dry_run=True)
    assert preview.documents == [original.document_id] and preview.sharing == ["/in/copy.txt"]
    assert queue.withdrawal_generation() == 0 and queue.read_tokens(0, 30).size == 30  # nothing changed
    done = queue.forget(paths=["/in/copy.txt"])
    assert done.documents == [original.document_id] and done.paths == ["/in/a.txt"]
    again = queue.forget(document_ids=[original.document_id, 999])
    assert again.documents == [] and again.already == [original.document_id] and again.not_found == ["999"]


def test_forget_a_folder_by_prefix_only_under_it(queue, add):
    add(queue, "/in/notes/x.txt", tokens_of(1, 20))
    add(queue, "/in/notes/deep/y.txt", tokens_of(2, 20))
    add(queue, "/in/notesbook.txt", tokens_of(3, 20))
    result = queue.forget(prefixes=["/in/notes/"])
    assert result.paths == ["/in/notes/deep/y.txt", "/in/notes/x.txt"]
    assert queue.forget(prefixes=["/elsewhere/"]).not_found == ["/elsewhere/"]


def test_forgotten_bytes_leave_the_sqlite_files(tmp_path, add):
    from storage import StorageConfig

    path = tmp_path / "corpus.db"
    secret = np.frombuffer(b"SECRET-PASSPHRASE-31415 " * 40, np.uint8).astype(np.int32)
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{path}"))) as queue:
        add(queue, "/in/public.txt", np.frombuffer(b"public words " * 40, np.uint8).astype(np.int32))
        add(queue, "/in/secret.txt", secret)
        files = [path, path.with_name("corpus.db-wal")]
        assert any(b"SECRET-PASSPHRASE" in f.read_bytes() for f in files if f.exists())
        queue.forget(paths=["/in/secret.txt"])
        assert not any(b"SECRET-PASSPHRASE" in f.read_bytes() for f in files if f.exists())
        assert b"public words" in b"".join(f.read_bytes() for f in files if f.exists())
