"""Concurrent writers, each with its own Database (its own connections), as two daemons would be."""

import threading

import numpy as np
import sqlalchemy as sa

from storage import CorpusQueue, open_database
from storage.models import chunks, documents

DOCUMENTS_PER_WRITER = 15


def test_concurrent_adds_get_disjoint_contiguous_offsets(make_config, add):
    queues = [CorpusQueue(open_database(make_config())) for _ in range(2)]
    start = threading.Barrier(len(queues))
    added: dict[int, list] = {0: [], 1: []}
    errors = []

    def writer(index: int) -> None:
        try:
            start.wait(timeout=10)
            rng = np.random.default_rng(index)
            for i in range(DOCUMENTS_PER_WRITER):
                tokens = rng.integers(0, 1000, size=int(rng.integers(1, 30)))
                tokens[0] = 1000 + 100 * index + i  # unique content: never a duplicate
                own = add(queues[index], f"/in/{index}/{i}.txt", tokens)
                shared = add(queues[index], "/in/shared.txt", tokens + 5000)  # versions race
                added[index] += [(own, tokens), (shared, tokens + 5000)]
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,), name=f"writer-{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors

    results = sorted(added[0] + added[1], key=lambda pair: pair[0].stream_start)
    offset = 0
    for result, tokens in results:  # the documents tile the stream, in some interleaving
        assert result.status == "queued"
        assert (result.stream_start, result.stream_end) == (offset, offset + len(tokens))
        offset = result.stream_end
    queue = queues[0]
    assert queue.stats().tokens_total == offset
    stream = np.concatenate([tokens for _, tokens in results])
    windows, _ = queue.read_windows(0, 1, offset - 1)
    np.testing.assert_array_equal(windows[0], stream)

    with queue.database.read() as connection:
        starts = connection.execute(
            sa.select(chunks.c.stream_start, chunks.c.token_count).order_by(chunks.c.stream_start)
        ).all()
        versions = connection.execute(
            sa.select(documents.c.version).where(documents.c.source_path == "/in/shared.txt")
        ).scalars()
        assert sorted(versions) == list(range(1, 2 * DOCUMENTS_PER_WRITER + 1))
    assert [s for s, _ in starts] == list(np.cumsum([0] + [n for _, n in starts])[:-1])
    for opened in queues:
        opened.close()
