"""CorpusQueue: documents in (versions, duplicates, chunks, skips), checkpoints, stats."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sqlalchemy as sa

import storage.db
import storage.documents
import storage.training_state
from storage import CorpusQueue, Cursor, NewDocument, StoredVersion, TokenizerMismatch, open_database
from storage.models import chunks, documents


TOKENIZER = '{"kind": "byte", "version": 1}'  # what the `add` fixture passes
CHUNK_TOKENS = 7  # the `queue` fixture's chunk size


def rows(queue, table, *order):
    with queue.database.read() as connection:
        query = sa.select(table).order_by(*(order or [table.c.id]))
        return [row._asdict() for row in connection.execute(query)]


# --- the tokenizer --------------------------------------------------------------------------------


def test_fixture_constants_agree(queue, add):
    assert (add.tokenizer, add.chunk_tokens, queue.chunk_tokens) == (TOKENIZER, 7, CHUNK_TOKENS)


def test_tokenizer_is_recorded_once_and_fixed(queue):
    assert queue.tokenizer() is None
    queue.set_tokenizer(TOKENIZER)
    queue.set_tokenizer(TOKENIZER)  # the same identity again is fine
    assert queue.tokenizer() == TOKENIZER
    with pytest.raises(TokenizerMismatch, match="fixed for the life of a model") as raised:
        queue.set_tokenizer('{"kind": "bpe"}')
    assert TOKENIZER in str(raised.value) and '{"kind": "bpe"}' in str(raised.value)


def test_first_document_records_the_tokenizer(queue, add):
    add(queue, "/in/a.txt", [1, 2, 3])
    assert queue.tokenizer() == TOKENIZER


def test_document_with_another_tokenizer_changes_nothing(queue, add):
    add(queue, "/in/a.txt", [1, 2, 3])
    with pytest.raises(TokenizerMismatch):
        add(queue, "/in/b.txt", [4, 5], tokenizer='{"kind": "bpe"}')
    assert queue.stats().tokens_total == 3
    assert [row["source_path"] for row in rows(queue, documents)] == ["/in/a.txt"]


# --- documents in -------------------------------------------------------------------------------


def test_versions_and_duplicates(queue, add):
    first = add(queue, "/in/a.txt", [1, 2, 3])
    assert (first.status, first.version, first.stream_end) == ("queued", 1, 3)
    copy = add(queue, "/in/b.txt", [1, 2, 3])  # same content elsewhere: a duplicate, no tokens
    assert (copy.status, copy.duplicate_of, copy.version) == ("duplicate", first.document_id, 1)
    assert (copy.token_count, copy.chunks, copy.stream_start, copy.stream_end) == (0, 0, None, None)
    edited = add(queue, "/in/a.txt", [4, 5])  # the file changed: a new version in the stream
    assert (edited.status, edited.version, edited.stream_start) == ("queued", 2, 3)
    assert (edited.stream_end, edited.token_count, edited.chunks) == (5, 2, 1)
    reverted = add(queue, "/in/a.txt", [1, 2, 3])  # back to the first content: a duplicate again
    assert (reverted.status, reverted.duplicate_of, reverted.version) == ("duplicate", 1, 3)
    skipped = queue.record_skip(source_path="/in/a.txt", reason="binary")
    assert rows(queue, documents)[-1]["id"] == skipped
    assert [(r["source_path"], r["version"], r["status"]) for r in rows(queue, documents)] == [
        ("/in/a.txt", 1, "queued"),
        ("/in/b.txt", 1, "duplicate"),
        ("/in/a.txt", 2, "queued"),
        ("/in/a.txt", 3, "duplicate"),
        ("/in/a.txt", 4, "skipped"),
    ]
    assert queue.stats().tokens_total == 5


def test_a_grown_version_records_its_offset_and_what_it_continues(queue, add):
    # the file's whole bytes are hashed; only the appended part's tokens go into the stream
    first = add(queue, "/in/log.txt", [1, 2, 3], content_hash="a" * 64, size=30)
    assert queue.latest_versions(["/in/log.txt", "/in/none"]) == {"/in/log.txt": StoredVersion(
        first.document_id, 30, 1_700_000_000.25, "a" * 64, "text", "queued")}
    grown = NewDocument("/in/log.txt", "b" * 64, 50, 2.0, "text", np.array([4, 5]),
                        byte_offset=30, continues=first.document_id)
    (result,) = queue.add_documents([grown], tokenizer=TOKENIZER)
    assert (result.status, result.version, result.stream_start, result.stream_end) == ("queued", 2, 3, 5)
    row = rows(queue, documents)[-1]
    assert (row["byte_offset"], row["continues"], row["size"]) == (30, first.document_id, 50)
    assert rows(queue, documents)[0]["byte_offset"] is None  # a whole file
    # a growth by whitespace only is a version growth is measured from; other skips are not
    blank = queue.record_skip(source_path="/in/log.txt", reason="empty", kind="text", size=52, mtime=3.0,
                              content_hash="c" * 64, byte_offset=50, continues=result.document_id)
    queue.record_skip(source_path="/in/log.txt", reason="too_large", size=10**9, mtime=4.0, content_hash="d" * 64)
    queue.record_skip(source_path="/in/log.txt", reason="unreadable")
    latest = queue.latest_versions(["/in/log.txt"])["/in/log.txt"]
    assert (latest.document_id, latest.size, latest.content_hash, latest.status) == (blank, 52, "c" * 64, "skipped")
    copy = add(queue, "/in/copy.txt", [9], content_hash="b" * 64)  # the grown file's bytes are in the stream
    assert (copy.status, copy.duplicate_of) == ("duplicate", result.document_id)
    assert queue.latest_versions(["/in/copy.txt"])["/in/copy.txt"].status == "duplicate"


def test_a_skipped_or_failed_row_is_not_an_original(queue, add):
    tokens = [7, 8, 9]
    digest = add.content_hash(tokens)
    queue.record_skip(source_path="/in/x", reason="too_large", content_hash=digest)
    assert add(queue, "/in/y", tokens).status == "queued"


def test_a_trained_document_is_an_original(queue, add):
    first = add(queue, "/in/a.txt", [1, 2, 3])
    queue.commit_checkpoint(step=1, path="cp1", stream_position=3, tokens_trained=3)
    assert add(queue, "/in/b.txt", [1, 2, 3]).duplicate_of == first.document_id


def test_chunks_split_at_chunk_tokens_and_tile_the_stream(queue, add):
    add(queue, "/in/a.txt", [5] * 3)
    tokens = np.arange(3 * CHUNK_TOKENS + 2)
    result = add(queue, "/in/b.txt", tokens)
    assert (result.chunks, result.token_count, result.stream_start) == (4, len(tokens), 3)
    stored = rows(queue, chunks, chunks.c.stream_start)[1:]
    assert {row["document_id"] for row in stored} == {result.document_id}
    layout = [(row["seq"], row["stream_start"], row["token_count"]) for row in stored]
    assert layout == [(0, 3, 7), (1, 10, 7), (2, 17, 7), (3, 24, 2)]
    for row, piece in zip(stored, np.split(tokens, [7, 14, 21])):
        assert row["dtype"] == "uint8"  # every id here is below 256
        assert row["tokens"] == piece.astype("u1").tobytes()  # raw bytes


def test_each_chunk_takes_the_narrowest_dtype(queue, add):
    # ids below 256 fit uint8 (byte-level text between separators); up to 65535 uint16; one id
    # above that makes its chunk (only) uint32
    tokens = np.array([65535] * CHUNK_TOKENS + [65536] + [1] * (CHUNK_TOKENS - 1) + [2**31 - 1]
                      + [255] * CHUNK_TOKENS)
    add(queue, "/in/wide.txt", tokens)
    stored = rows(queue, chunks, chunks.c.stream_start)
    assert [row["dtype"] for row in stored] == ["uint16", "uint32", "uint32", "uint8"]
    assert stored[1]["tokens"] == tokens[7:14].astype("<u4").tobytes()
    assert stored[3]["tokens"] == tokens[3 * CHUNK_TOKENS :].astype("u1").tobytes()
    windows, _ = queue.read_windows(0, 1, len(tokens) - 1)
    np.testing.assert_array_equal(windows[0], tokens)


def test_add_document_is_all_or_nothing(queue, add, monkeypatch):
    def fail(connection, end):
        raise RuntimeError("killed after the document and its chunks were written")

    monkeypatch.setattr(storage.documents, "advance_stream", fail)
    with pytest.raises(RuntimeError, match="killed"):
        add(queue, "/in/a.txt", np.arange(30))
    assert rows(queue, documents) == [] and rows(queue, chunks) == []
    assert queue.tokenizer() is None and queue.stats().tokens_total == 0


def test_add_document_commits_at_full_on_sqlite(tmp_path, add, monkeypatch):
    config = storage.StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}")
    queue = CorpusQueue(open_database(config))
    levels = []
    original = storage.db._set_synchronous
    def spy(connection, level):
        levels.append(level)
        original(connection, level)

    monkeypatch.setattr(storage.db, "_set_synchronous", spy)
    add(queue, "/in/a.txt", [1, 2, 3])  # the caller may delete the file once this returns
    queue.record_skip(source_path="/in/b", reason="binary")  # no file depends on it: NORMAL
    queue.close()
    assert levels == ["FULL", "NORMAL"]  # raised for add_document's commit, then restored


@pytest.mark.parametrize(
    "tokens, message",
    [
        (np.array([], np.int64), "non-empty 1-D"),
        (np.zeros((2, 2), np.int64), "non-empty 1-D"),
        (np.array([1.0, 2.0]), "integers"),
        (np.array([-1, 2]), r"token ids must be in \[0, 2147483647\]"),
        (np.array([2**31]), r"token ids must be in \[0, 2147483647\]"),
    ],
)
def test_bad_tokens_are_refused(queue, add, tokens, message):
    with pytest.raises(ValueError, match=message):
        add(queue, "/in/a.txt", tokens, content_hash="0" * 64)
    assert rows(queue, documents) == []


def test_a_malformed_hash_is_refused(queue, add):
    with pytest.raises(ValueError, match="64 lowercase hex"):
        add(queue, "/in/a.txt", [1], content_hash="ABC")


def test_record_skip_and_seen(queue, add):
    add(queue, "/in/a.txt", [1, 2], size=2, mtime=10.5)
    assert queue.seen("/in/a.txt", 2, 10.5)
    assert not queue.seen("/in/a.txt", 2, 11.0)  # touched: a new version to look at
    assert not queue.seen("/in/a.txt", 3, 10.5)
    failed = queue.record_skip(
        source_path="/in/b.pdf",
        reason="extraction_failed",
        detail="ValueError: bad xref",
        status="failed",
        kind="pdf",
        size=100,
        mtime=3.0,
    )
    row = rows(queue, documents)[-1]
    assert (row["id"], row["status"], row["kind"], row["version"]) == (failed, "failed", "pdf", 1)
    assert (row["reason"], row["detail"]) == ("extraction_failed", "ValueError: bad xref")
    assert queue.seen("/in/b.pdf", 100, 3.0)
    queue.record_skip(source_path="/in/c", reason="unreadable")  # no size: never "seen"
    assert not queue.seen("/in/c", 0, 0.0)
    with pytest.raises(ValueError, match="'skipped' or 'failed'"):
        queue.record_skip(source_path="/in/d", reason="x", status="queued")


# --- checkpoints ----------------------------------------------------------------------------------


def test_commit_checkpoint_moves_the_cursor_and_marks_trained(queue, add):
    a = add(queue, "/in/a.txt", np.arange(10))
    b = add(queue, "/in/b.txt", np.arange(10, 20))
    assert queue.latest_checkpoint() is None
    queue.commit_checkpoint(step=5, path="ckpt-5", stream_position=10, tokens_trained=12, loss=2.5)
    assert queue.cursor() == Cursor(stream_position=10, tokens_trained=12, step=5)
    statuses = {row["id"]: row["status"] for row in rows(queue, documents)}
    assert statuses == {a.document_id: "trained", b.document_id: "queued"}
    queue.commit_checkpoint(step=9, path="ckpt-9", stream_position=15, tokens_trained=20)
    assert rows(queue, documents)[1]["status"] == "queued"  # half-way through b
    latest = queue.latest_checkpoint()
    assert (latest.step, latest.path, latest.stream_position) == (9, "ckpt-9", 15)
    assert (latest.tokens_trained, latest.loss) == (20, None)
    assert latest.created_at.tzinfo is not None
    assert [c.step for c in queue.checkpoints(limit=10)] == [9, 5]
    assert [c.step for c in queue.checkpoints(limit=1)] == [9]


@pytest.mark.parametrize("position", [3, 21])
def test_commit_checkpoint_refuses_a_bad_position_and_changes_nothing(queue, add, position):
    add(queue, "/in/a.txt", np.arange(20))
    queue.commit_checkpoint(step=1, path="cp1", stream_position=5, tokens_trained=5)
    with pytest.raises(ValueError, match=r"must be in \[5, 20\]"):
        queue.commit_checkpoint(step=2, path="cp2", stream_position=position, tokens_trained=21)
    assert queue.cursor() == Cursor(5, 5, 1)
    assert [c.path for c in queue.checkpoints()] == ["cp1"]


def test_commit_checkpoint_is_all_or_nothing(queue, add, monkeypatch):
    add(queue, "/in/a.txt", np.arange(20))

    def fail(connection, stream_position):
        raise RuntimeError("disk full, say, after the checkpoint row and the cursor were written")

    monkeypatch.setattr(storage.training_state, "_mark_trained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        queue.commit_checkpoint(step=1, path="cp1", stream_position=20, tokens_trained=20)
    assert queue.checkpoints() == []
    assert queue.cursor() == Cursor(0, 0, 0)
    assert rows(queue, documents)[0]["status"] == "queued"


CRASHING_TRAINER = """
import sys, os
import numpy as np
from storage import CorpusQueue, StorageConfig, open_database
url, directory = sys.argv[1], sys.argv[2]
queue = CorpusQueue(open_database(StorageConfig(url=url, chunk_tokens=7)))
for i in range(3):
    queue.add_document(source_path=f"/in/{i}", content_hash=f"{i:064x}", size=10, mtime=1.0,
                       kind="text", tokens=np.arange(10) + 100 * i, tokenizer="byte")
def write_checkpoint(name):
    with open(os.path.join(directory, name), "wb") as f:
        f.write(b"weights")
        f.flush()
        os.fsync(f.fileno())
write_checkpoint("cp1")
queue.commit_checkpoint(step=100, path="cp1", stream_position=10, tokens_trained=10)
write_checkpoint("cp2")
os._exit(9)  # killed after writing cp2, before committing it
"""


def test_a_crash_before_the_checkpoint_commit_resumes_from_the_previous(database_url, tmp_path):
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    trainer = textwrap.dedent(CRASHING_TRAINER)
    command = [sys.executable, "-c", trainer, database_url, str(directory)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    with CorpusQueue(open_database(storage.StorageConfig(url=database_url))) as queue:
        latest = queue.latest_checkpoint()
        assert (latest.path, latest.step, latest.stream_position) == ("cp1", 100, 10)
        assert queue.cursor() == Cursor(stream_position=10, tokens_trained=10, step=100)
        assert [row["status"] for row in rows(queue, documents)] == ["trained", "queued", "queued"]
        committed = {record.path for record in queue.checkpoints(limit=100)}
    orphans = sorted(p.name for p in directory.iterdir() if p.name not in committed)
    assert orphans == ["cp2"]  # the caller deletes it and resumes from cp1


# --- stats ----------------------------------------------------------------------------------------


def test_stats(queue, add):
    empty = queue.stats()
    assert empty.documents == {"queued": 0, "trained": 0, "duplicate": 0, "skipped": 0, "failed": 0}
    assert (empty.tokens_total, empty.tokens_queued, empty.tokens_trained) == (0, 0, 0)
    assert empty.last_checkpoint is None
    add(queue, "/in/a.txt", np.arange(10))
    add(queue, "/in/b.txt", np.arange(10))
    add(queue, "/in/c.txt", np.arange(30, 45))
    queue.record_skip(source_path="/in/d.bin", reason="binary")
    queue.record_skip(source_path="/in/e.pdf", reason="extraction_failed", status="failed")
    queue.commit_checkpoint(step=3, path="cp3", stream_position=12, tokens_trained=40)
    stats = queue.stats()
    assert stats.documents == {"queued": 1, "trained": 1, "duplicate": 1, "skipped": 1, "failed": 1}
    assert (stats.tokens_total, stats.tokens_queued, stats.tokens_trained) == (25, 13, 40)
    assert stats.last_checkpoint.path == "cp3"
    assert stats.database_bytes == queue.database.size_bytes() > 0


def test_close_is_idempotent(make_config):
    queue = CorpusQueue(open_database(make_config()))
    queue.close()
    queue.close()


def test_add_documents_in_one_batch(queue, add):
    from storage import NewDocument

    first = add(queue, "/old.txt", [5, 6, 7])
    docs = [
        NewDocument("/a.txt", add.content_hash([1, 2]), 2, 1.0, "text", np.array([1, 2])),
        NewDocument("/b.txt", add.content_hash([5, 6, 7]), 3, 1.0, "text", np.array([5, 6, 7])),  # in the stream
        NewDocument("/c.txt", add.content_hash([1, 2]), 2, 1.0, "text", np.array([1, 2])),  # earlier in the batch
        NewDocument("/a.txt", add.content_hash([3]), 1, 2.0, "text", np.array([3])),  # a second version
    ]
    results = queue.add_documents(docs, tokenizer=add.tokenizer)
    assert [r.status for r in results] == ["queued", "duplicate", "duplicate", "queued"]
    assert results[1].duplicate_of == first.document_id
    assert results[2].duplicate_of == results[0].document_id
    assert [r.version for r in results] == [1, 1, 1, 2]
    assert (results[0].stream_start, results[3].stream_start, results[3].stream_end) == (3, 5, 6)
    windows, _ = queue.read_windows(0, 1, 5)
    assert windows[0].tolist() == [5, 6, 7, 1, 2, 3], "arrival order, duplicates left out"
    assert queue.seen_many([("/a.txt", 2, 1.0), ("/a.txt", 1, 2.0), ("/a.txt", 9, 9.0), ("/zzz", 1, 1.0)]) == {
        ("/a.txt", 2, 1.0), ("/a.txt", 1, 2.0)}


def test_add_documents_with_one_bad_item_writes_nothing(queue, add):
    from storage import NewDocument

    good = NewDocument("/g.txt", add.content_hash([1]), 1, 1.0, "text", np.array([1]))
    bad = NewDocument("/b.txt", "not-a-hash", 1, 1.0, "text", np.array([2]))
    with pytest.raises(ValueError, match="content_hash"):
        queue.add_documents([good, bad], tokenizer=add.tokenizer)
    assert queue.stats().tokens_total == 0 and not queue.seen("/g.txt", 1, 1.0)


def test_rewind_to_an_older_checkpoint(queue, add):
    first = add(queue, "/a.txt", [1] * 10)
    second = add(queue, "/b.txt", [2] * 10)
    queue.commit_checkpoint(step=5, path="/ck/5", stream_position=first.stream_end, tokens_trained=10)
    queue.commit_checkpoint(step=9, path="/ck/9", stream_position=second.stream_end, tokens_trained=20)
    assert queue.stats().documents["trained"] == 2
    older = queue.checkpoints(limit=2)[-1]
    assert older.step == 5
    record = queue.rewind_to(older.id)
    assert (record.step, queue.latest_checkpoint().step) == (5, 5)
    assert queue.cursor() == Cursor(first.stream_end, 10, 5)
    assert (queue.stats().documents["trained"], queue.stats().documents["queued"]) == (1, 1)
    with pytest.raises(ValueError, match="no checkpoint"):
        queue.rewind_to(10_000)


def test_replay_up_to_the_trainers_own_position(queue, add):
    add(queue, "/a.txt", list(range(100)))
    rng = np.random.default_rng(0)
    assert queue.sample_replay(4, 8, rng).shape == (0, 9), "nothing committed as trained yet"
    windows = queue.sample_replay(50, 8, np.random.default_rng(1), end=40)
    assert windows.shape == (50, 9) and windows.max() < 40
    assert all((w == np.arange(w[0], w[0] + 9)).all() for w in windows)
