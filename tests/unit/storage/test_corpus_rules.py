"""The corpus rules' statistics (storage/corpus_rules.py, revision 0008), on SQLite and PostgreSQL:
line counts that concurrent writers never lose, the near-duplicate index, and the upgrade."""

import threading
from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa

from storage import CorpusQueue, open_database
from storage.db import Database, create_engine, current_revision, upgrade_schema
from storage.models import corpus_lines, documents

WRITERS = 3
DOCUMENTS_PER_WRITER = 12


def test_lines_are_counted_per_document_and_a_new_version_of_a_file_is_not_counted_again(queue):
    assert queue.count_lines(101, [1, 2, 3]) == {1: 0, 2: 0, 3: 0}
    assert queue.count_lines(102, [3, 2, 2, -(2**63)]) == {2: 1, 3: 1, -(2**63): 0}
    assert queue.count_lines(102, [2, 4]) == {2: 1, 4: 0}  # the same file again: 2 is not counted twice
    assert queue.count_lines(103, [2]) == {2: 2}
    assert queue.count_lines(104, []) == {}
    assert queue.line_documents([1, 2, 3, 4, 5, 2**63 - 1]) == {1: 1, 2: 3, 3: 2, 4: 1, 5: 0, 2**63 - 1: 0}


def counts_table(queue) -> dict[int, tuple[int, int]]:
    with queue.database.read() as connection:
        rows = connection.execute(sa.select(corpus_lines.c.line_hash, corpus_lines.c.documents, corpus_lines.c.last_path))
        return {int(h): (int(n), int(last)) for h, n, last in rows}


def test_a_batch_of_counts_ends_as_counting_each_document_in_turn_would(queue):
    """add_line_counts over random batches (a file's new version in a later batch, lines shared
    within and across batches) leaves every line's count and last path as count_lines called
    per document in the same order; line_counts reads them back."""
    rng = np.random.default_rng(7)
    documents_ = [(int(rng.integers(1, 12)), [int(h) for h in rng.integers(-20, 20, size=rng.integers(0, 9))])
                  for _ in range(80)]
    for path_key, hashes in documents_:
        queue.count_lines(path_key, hashes)
    one_by_one = counts_table(queue)
    with queue.database.write() as connection:
        connection.execute(corpus_lines.delete())
    start = 0
    while start < len(documents_):
        size = int(rng.integers(1, 9))
        batch, paths = [], set()
        for path_key, hashes in documents_[start:start + size]:
            if path_key in paths:  # one version of a file a batch, as the ingest makes them
                break
            paths.add(path_key)
            batch.append((path_key, hashes))
        queue.add_line_counts(batch)
        start += len(batch)
    assert counts_table(queue) == one_by_one
    assert queue.line_counts([3, 99, -20]) == {h: one_by_one[h] for h in (3, -20) if h in one_by_one}
    queue.add_line_counts([])  # nothing to count: no write


def test_bytes_already_in_the_stream_are_not_counted(queue, add):
    stored = add(queue, "/in/a.txt", np.arange(30) % 40)
    digest = add.content_hash(np.arange(30) % 40)
    assert queue.content_in_stream(digest) and not queue.content_in_stream("0" * 64)
    assert queue.count_lines(201, [7, 8], content_hash=digest) is None  # an exact duplicate: nothing counted
    assert queue.line_counts([7, 8], content_hash=digest) is None  # the read the ingest side makes, likewise
    assert queue.count_lines(202, [7], content_hash="0" * 64) == {7: 0}
    assert queue.line_documents([7, 8]) == {7: 1, 8: 0}
    queue.forget(document_ids=[stored.document_id])  # its text gone: the same bytes are new again
    assert queue.count_lines(203, [7], content_hash=digest) == {7: 1}


def test_concurrent_writers_never_lose_a_count(make_config):
    """Every writer counts the same shared lines for each of its documents, in its own order:
    each line ends counted once per document, and the counts the writers were handed for a line
    are 0, 1, ..., n - 1, each once (no two documents saw the same count)."""
    queues = [CorpusQueue(open_database(make_config())) for _ in range(WRITERS)]
    shared = [int(h) for h in np.random.default_rng(0).integers(-(2**63), 2**63 - 1, size=700, dtype=np.int64)]
    start = threading.Barrier(WRITERS)
    seen: dict[int, list[int]] = {h: [] for h in shared}
    lock = threading.Lock()
    errors = []

    def writer(index: int) -> None:
        try:
            rng = np.random.default_rng(index + 1)
            start.wait(timeout=10)
            for i in range(DOCUMENTS_PER_WRITER):
                lines = list(rng.permutation(shared)) + [index * 1000 + i]  # and one line of its own
                counted = queues[index].count_lines(index * 100 + i, lines)
                with lock:
                    for h in shared:
                        seen[h].append(counted[h])
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,), name=f"counter-{i}") for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not errors, errors
        total = WRITERS * DOCUMENTS_PER_WRITER
        assert all(sorted(counts) == list(range(total)) for counts in seen.values())
        assert set(queues[0].line_documents(shared).values()) == {total}
    finally:
        for queue in queues:
            queue.close()


def signature_bytes(value: int) -> bytes:
    return np.full(128, value, dtype="<u4").tobytes()


def test_near_duplicate_candidates_are_stored_documents_sharing_a_band(queue, add):
    first = add(queue, "/in/a.html", np.arange(40) % 50)
    second = add(queue, "/in/b.html", np.arange(41) % 50)
    third = add(queue, "/in/c.html", np.arange(42) % 50)
    queue.record_signatures([(first.document_id, 60, signature_bytes(1), [10, 11]),
                             (second.document_id, 70, signature_bytes(2), [11, 12]),
                             (third.document_id, 80, signature_bytes(3), [13])])
    queue.record_signatures([(first.document_id, 99, signature_bytes(9), [99])])  # kept as first recorded
    found = queue.near_duplicate_candidates("/in/new.html", [11, 13, 50])
    assert [(c.document_id, c.source_path, c.shingles) for c in found] == [
        (first.document_id, "/in/a.html", 60), (second.document_id, "/in/b.html", 70),
        (third.document_id, "/in/c.html", 80)]
    assert found[0].signature == signature_bytes(1)
    assert queue.near_duplicate_candidates("/in/new.html", [99, 50]) == []
    # never the same path's own earlier version, nor a document whose text is gone
    assert [c.document_id for c in queue.near_duplicate_candidates("/in/a.html", [10, 11])] == [second.document_id]
    queue.forget(paths=["/in/b.html"])
    assert [c.document_id for c in queue.near_duplicate_candidates("/in/new.html", [11, 12])] == [first.document_id]


def test_a_store_at_0007_upgrades_with_its_rows_and_counts_from_then_on(make_config):
    config = make_config()
    now = datetime.now(UTC)
    with Database(create_engine(config), config) as database:
        upgrade_schema(database, "0007")
        assert "corpus_lines" not in sa.inspect(database.engine).get_table_names()
        with database.write() as connection:
            connection.execute(documents.insert().values(
                source_path="/in/old.txt", size=4, mtime=1.0, status="skipped", reason="empty",
                version=1, token_count=0, created_at=now, updated_at=now, extractor_version=1))
    with CorpusQueue(open_database(config)) as queue:
        assert current_revision(queue.database) == "0010"
        tables = set(sa.inspect(queue.database.engine).get_table_names())
        assert {"corpus_lines", "document_signatures", "signature_bands"} <= tables
        with queue.database.read() as connection:
            assert connection.execute(sa.select(documents.c.source_path)).scalars().all() == ["/in/old.txt"]
            assert connection.execute(sa.select(sa.func.count()).select_from(corpus_lines)).scalar() == 0
        assert queue.count_lines(7, [5, 6]) == {5: 0, 6: 0}
        assert queue.near_duplicate_candidates("/in/x", [1]) == []
