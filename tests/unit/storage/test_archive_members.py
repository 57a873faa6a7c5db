"""The store's side of archives: the paths stored under an archive's name (newest_under) and the
members a rewritten archive no longer holds (record_removed), on both dialects."""

from __future__ import annotations

import numpy as np

from storage import CorpusQueue


def tokens_of(value: int, n: int) -> np.ndarray:
    return np.full(n, value, np.int32)


def test_newest_under_finds_the_paths_under_a_prefix_with_their_newest_row(queue: CorpusQueue, add):
    add(queue, "/in/a.tar!x.txt", tokens_of(1, 10))
    add(queue, "/in/a.tar!docs/y.md", tokens_of(2, 10))
    add(queue, "/in/a.tar!docs/y.md", tokens_of(3, 12), size=12)  # rewritten: version 2 is the newest
    queue.record_skip(source_path="/in/a.tar!bin", reason="binary", size=3, mtime=1.0, content_hash="0" * 64,
                      extractor_version=4)
    add(queue, "/in/a.tar", tokens_of(4, 10))  # the archive's own name is no member
    add(queue, "/in/a.tarx!z.txt", tokens_of(5, 10))  # another name that starts alike
    add(queue, "/in/A.TAR!z.txt", tokens_of(6, 10))  # another case (SQLite's LIKE ignores it)
    add(queue, "/in/a_tar!z.txt", tokens_of(7, 10))  # "_" is a LIKE wildcard, here a letter

    found = queue.newest_under("/in/a.tar!")
    assert sorted(found) == ["/in/a.tar!bin", "/in/a.tar!docs/y.md", "/in/a.tar!x.txt"]
    assert (found["/in/a.tar!docs/y.md"].version, found["/in/a.tar!docs/y.md"].size) == (2, 12)
    skipped = found["/in/a.tar!bin"]
    assert (skipped.status, skipped.reason, skipped.content_hash, skipped.extractor_version) == \
        ("skipped", "binary", "0" * 64, 4)
    assert queue.newest_under("/in/none.tar!") == {}


def test_newest_under_an_escaped_name(queue: CorpusQueue, add):
    archive = "/in/caf\udce9 50%.tar"  # bytes that are not UTF-8, and a "%", stored escaped
    add(queue, archive + "!a.txt", tokens_of(1, 10))
    add(queue, "/in/caf\udce9 50%.tarball!b.txt", tokens_of(2, 10))
    assert list(queue.newest_under(archive + "!")) == [archive + "!a.txt"]


def test_record_removed_withdraws_the_untrained_text_of_each_path_and_versions_it(queue: CorpusQueue, add):
    first = add(queue, "/in/a.tar!gone.txt", tokens_of(1, 100))
    add(queue, "/in/a.tar!kept.txt", tokens_of(2, 50))
    skipped = queue.record_skip(source_path="/in/a.tar!blob", reason="binary", size=3, mtime=1.0)
    queue.commit_checkpoint(step=1, path="checkpoints/x", stream_position=40, tokens_trained=40)

    withdrawn = queue.record_removed(["/in/a.tar!gone.txt", "/in/a.tar!blob"], reason="removed",
                                     detail="no longer in /in/a.tar", extractor_version=4)
    assert withdrawn == {"/in/a.tar!gone.txt": 60, "/in/a.tar!blob": 0}  # [40, 100): [0, 40) was trained
    mask = queue.stream_mask(None)
    assert (mask.starts.tolist(), mask.ends.tolist()) == ([40], [first.stream_end])
    assert queue.stats().tokens_withdrawn == 60
    newest = queue.newest_under("/in/a.tar!")
    assert (newest["/in/a.tar!gone.txt"].version, newest["/in/a.tar!gone.txt"].status,
            newest["/in/a.tar!gone.txt"].reason, newest["/in/a.tar!gone.txt"].content_hash) == \
        (2, "skipped", "removed", None)
    assert newest["/in/a.tar!blob"].version == 2 and newest["/in/a.tar!blob"].document_id != skipped
    assert newest["/in/a.tar!kept.txt"].version == 1
    # a second removal withdraws nothing more (already superseded), and none at all is no transaction
    assert queue.record_removed(["/in/a.tar!gone.txt"], reason="removed") == {"/in/a.tar!gone.txt": 0}
    assert queue.record_removed([], reason="removed") == {}
    rows = queue.document_versions(paths=["/in/a.tar!gone.txt"])
    assert [(r.version, r.status, r.reason, r.detail) for r in rows] == [
        (1, "queued", None, None), (2, "skipped", "removed", "no longer in /in/a.tar"), (3, "skipped", "removed", None)]
    assert rows[0].withdrawn == ((40, first.stream_end, "superseded"),)
