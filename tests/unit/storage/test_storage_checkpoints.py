"""The checkpoint rows beside the files: making a file the database does not name its latest
(restore_checkpoint), dropping the rows of files retention deleted (drop_checkpoint_rows), and
forgetting the training while keeping the corpus (reset_training)."""

import numpy as np
import pytest

from storage import Cursor


def test_restore_checkpoint_moves_the_cursor_forward_to_a_file_no_row_names(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    second = add(queue, "/b.txt", [2] * 10)
    queue.commit_checkpoint(step=5, path="checkpoints/ckpt-000000005.safetensors",
                            stream_position=first.stream_end, tokens_trained=10)
    record = queue.restore_checkpoint(step=9, path="checkpoints/ckpt-000000009.safetensors",
                                      stream_position=second.stream_end, tokens_trained=20)
    assert (record.step, record.path, record.stream_position) == (9, "checkpoints/ckpt-000000009.safetensors",
                                                                   second.stream_end)
    assert queue.latest_checkpoint() == record
    assert [r.step for r in queue.checkpoints()] == [9, 5]
    assert queue.cursor() == Cursor(second.stream_end, 20, 9)
    assert queue.stats().documents["trained"] == 2


def test_restore_checkpoint_moves_the_cursor_back_and_drops_the_later_rows(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    second = add(queue, "/b.txt", [2] * 10)
    queue.commit_checkpoint(step=5, path="checkpoints/ckpt-000000005.safetensors",
                            stream_position=first.stream_end, tokens_trained=10)
    queue.commit_checkpoint(step=9, path="checkpoints/ckpt-000000009.safetensors",
                            stream_position=second.stream_end, tokens_trained=20)
    queue.restore_checkpoint(step=7, path="checkpoints/ckpt-000000007.safetensors", stream_position=first.stream_end,
                             tokens_trained=14)
    assert [r.step for r in queue.checkpoints()] == [7, 5]
    assert queue.cursor() == Cursor(first.stream_end, 14, 7)
    assert (queue.stats().documents["trained"], queue.stats().documents["queued"]) == (1, 1)


def test_restore_checkpoint_refuses_a_position_beyond_the_stream_and_changes_nothing(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    queue.commit_checkpoint(step=5, path="checkpoints/ckpt-000000005.safetensors",
                            stream_position=first.stream_end, tokens_trained=10)
    with pytest.raises(ValueError, match="beyond the stream"):
        queue.restore_checkpoint(step=9, path="checkpoints/ckpt-000000009.safetensors",
                                 stream_position=first.stream_end + 1, tokens_trained=20)
    assert [r.step for r in queue.checkpoints()] == [5]
    assert queue.cursor() == Cursor(first.stream_end, 10, 5)


def test_reset_training_keeps_the_corpus_and_forgets_the_rest(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    add(queue, "/b.txt", [2] * 10)
    queue.commit_checkpoint(step=5, path="checkpoints/ckpt-000000005.safetensors",
                            stream_position=first.stream_end, tokens_trained=10)
    queue.record_evaluation(step=5, epoch=0.5, tokens_trained=10, val_bits_per_byte=2.0, train_bits_per_byte=None,
                            holdout_tokens=0, seconds=0.1, best=True)
    assert queue.reset_training() == 1
    assert queue.checkpoints() == [] and queue.evaluations() == []
    assert queue.cursor() == Cursor(0, 0, 0)
    stats = queue.stats()
    assert (stats.documents["queued"], stats.documents["trained"], stats.tokens_total) == (2, 0, 20)
    np.testing.assert_array_equal(queue.read_tokens(0, 20)[-10:], [2] * 10)


def test_drop_checkpoint_rows_deletes_the_rows_named_and_leaves_the_cursor(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    for step in (5, 10, 15):
        queue.commit_checkpoint(step=step, path=f"checkpoints/ckpt-{step:09d}.safetensors",
                                stream_position=first.stream_end, tokens_trained=10)
    ids = {r.step: r.id for r in queue.checkpoints()}
    assert queue.drop_checkpoint_rows([ids[5], ids[10], 10_000]) == 2  # an unknown id is passed over
    assert [r.step for r in queue.checkpoints()] == [15]
    assert queue.cursor() == Cursor(first.stream_end, 10, 15)
    assert queue.drop_checkpoint_rows([]) == 0


def test_drop_checkpoint_rows_never_deletes_the_newest_and_changes_nothing_when_asked(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    for step in (5, 10):
        queue.commit_checkpoint(step=step, path=f"checkpoints/ckpt-{step:09d}.safetensors",
                                stream_position=first.stream_end, tokens_trained=10)
    ids = [r.id for r in queue.checkpoints()]  # newest first
    with pytest.raises(ValueError, match="newest"):
        queue.drop_checkpoint_rows(ids)
    assert [r.step for r in queue.checkpoints()] == [10, 5]
