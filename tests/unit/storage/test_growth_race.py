"""Two writers that see one file grow from the same version at once (the daemon beside
`crystalline ingest`): each byte of the file is stored once, on SQLite and on PostgreSQL.

A file is modelled as bytes, one token per byte; a version's content hash covers its bytes
[0, size), as the ingest pipeline's does. A growth continues the version it was read against; the
store keeps it only if that version is still the path's newest (add_documents, record_skip),
and the writer it refused reads the file again, as the pipeline does.
"""

import dataclasses
import hashlib
import threading

import numpy as np

from storage import CorpusQueue, NewDocument, open_database

TOKENIZER = '{"kind": "byte", "version": 1}'
PATH = "/in/grow.txt"
FILE = bytes(range(32, 127)) * 4  # 380 bytes of the file as it will be; each writer sees a prefix
WAIT = 30  # a failure guard for the barrier and joins, never reached when the test passes


def whole(size: int) -> NewDocument:
    data = FILE[:size]
    return NewDocument(PATH, hashlib.sha256(data).hexdigest(), size, float(size), "text",
                       np.frombuffer(data, np.uint8).astype(np.int64))


def growth(base, size: int) -> NewDocument:
    """The bytes from base.size to size, continuing the stored version `base` (a StoredVersion)."""
    data = FILE[:size]
    return NewDocument(PATH, hashlib.sha256(data).hexdigest(), size, float(size), "text",
                       np.frombuffer(data[base.size:], np.uint8).astype(np.int64),
                       byte_offset=base.size, continues=base.document_id)


def stored_bytes(queue: CorpusQueue) -> bytes:
    """The whole stream, as bytes: every stored version's tokens in stream order."""
    end = queue.stream_end()
    return queue.read_tokens(0, end).astype(np.uint8).tobytes()


def test_two_writers_growing_one_version_at_once_store_each_byte_once(make_config):
    queues = [CorpusQueue(open_database(make_config())) for _ in range(2)]
    try:
        queues[0].add_documents([whole(100)], tokenizer=TOKENIZER)
        sizes = (200, 300)  # writer 0 read the file at 200 bytes, writer 1 a moment later at 300
        both_read = threading.Barrier(2)
        results, errors = {}, []

        def writer(index: int) -> None:
            try:
                queue = queues[index]
                base = queue.latest_versions([PATH])[PATH]
                both_read.wait(timeout=WAIT)  # both hold the same base: the race is on
                [result] = queue.add_documents([growth(base, sizes[index])], tokenizer=TOKENIZER)
                results[index] = result
                if result.status == "stale":  # read again, as the pipeline does: the file is 300 bytes now
                    newest = queue.latest_versions([PATH])[PATH]
                    if newest.size < 300:
                        [results[index]] = queue.add_documents([growth(newest, 300)], tokenizer=TOKENIZER)
            except BaseException as exc:  # handed to the test thread below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,), name=f"writer-{i}") for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT)
        assert not errors, errors
        stored = stored_bytes(queues[0])
        assert len(stored) == 300, f"{len(stored) - 300} bytes stored twice"
        assert stored == FILE[:300]
        assert queues[0].latest_versions([PATH])[PATH].size == 300
        assert queues[0].stats().documents["queued"] in (2, 3)  # 300 won: 2; 200 won, then 200..300: 3
    finally:
        for queue in queues:
            queue.close()


def test_a_growth_of_a_superseded_version_is_stale_and_writes_nothing(queue):
    [first] = queue.add_documents([whole(100)], tokenizer=TOKENIZER)
    base = queue.latest_versions([PATH])[PATH]
    [other] = queue.add_documents([growth(base, 300)], tokenizer=TOKENIZER)  # another writer, first
    before = queue.stats()
    [late] = queue.add_documents([growth(base, 200)], tokenizer=TOKENIZER)
    assert (late.status, late.document_id, late.token_count) == ("stale", None, 0)
    after = queue.stats()
    assert (after.documents, after.tokens_total) == (before.documents, before.tokens_total)
    assert stored_bytes(queue) == FILE[:300]
    # read against the newest, the same file's next growth is stored
    [grown] = queue.add_documents([growth(queue.latest_versions([PATH])[PATH], 380)], tokenizer=TOKENIZER)
    assert grown.status == "queued" and (first.version, other.version, grown.version) == (1, 2, 3)
    assert stored_bytes(queue) == FILE


def test_in_one_batch_only_the_first_version_of_a_path_may_continue_its_base(queue):
    queue.add_documents([whole(100)], tokenizer=TOKENIZER)
    base = queue.latest_versions([PATH])[PATH]
    other = dataclasses.replace(whole(50), source_path="/in/other.txt", content_hash="0" * 64)
    results = queue.add_documents([growth(base, 200), other, growth(base, 300)], tokenizer=TOKENIZER)
    assert [r.status for r in results] == ["queued", "queued", "stale"]  # the rest of the batch is stored
    assert stored_bytes(queue) == FILE[:200] + FILE[:50]


def test_a_whitespace_growth_of_a_superseded_version_is_not_recorded(queue):
    """A growth by whitespace only is a skip row later growth is measured from: recorded against
    a superseded version, it would make the next growth store the newer version's bytes again."""
    queue.add_documents([whole(100)], tokenizer=TOKENIZER)
    base = queue.latest_versions([PATH])[PATH]
    [newer] = queue.add_documents([growth(base, 300)], tokenizer=TOKENIZER)
    late = queue.record_skip(source_path=PATH, reason="empty", kind="text", size=105, mtime=105.0,
                             content_hash=hashlib.sha256(FILE[:105]).hexdigest(), byte_offset=100,
                             continues=base.document_id)
    assert late is None
    assert queue.latest_versions([PATH])[PATH].document_id == newer.document_id
    assert sum(queue.stats().documents.values()) == 2
    current = queue.record_skip(source_path=PATH, reason="empty", kind="text", size=305, mtime=305.0,
                                content_hash=hashlib.sha256(FILE[:305]).hexdigest(), byte_offset=300,
                                continues=newer.document_id)
    assert isinstance(current, int) and queue.latest_versions([PATH])[PATH].document_id == current
