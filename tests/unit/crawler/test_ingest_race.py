"""`crystalline ingest` and the daemon reading one growing file at once: two Ingestors, each
with its own CorpusQueue on one database (SQLite, and PostgreSQL when the server is there).

The interleaving is made, not hoped for: writer A has read the file and is about to commit its
growth when writer B reads the file (grown further meanwhile) and commits first. The store
refuses A's growth as stale; A reads the file again and stores only what B did not.
"""

from pathlib import Path

import pytest
import sqlalchemy as sa

from crawler.ingest.extract import extract_file
from crawler.ingest.pipeline import CONCURRENT_WRITER, REREAD_ROUNDS, Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from storage import AddResult, CorpusQueue, StorageConfig, open_database
from storage.models import documents


@pytest.fixture
def two_queues(database_url):
    """Two writers' queues: two connection pools on one database, as two processes would have."""
    queues = [CorpusQueue(open_database(StorageConfig(url=database_url).validate())) for _ in range(2)]
    yield queues
    for queue in queues:
        queue.close()


class Overtaken:
    """A queue whose first write (add_documents, or record_skip for a growth by whitespace only)
    lets the other writer go first: it calls `overtake()`, which grows the file and ingests it
    with the other writer, and only then writes its own. `results` holds what each write returned."""

    def __init__(self, queue, overtake):
        self.queue, self.overtake = queue, overtake
        self.results: list = []

    def __getattr__(self, name):
        return getattr(self.queue, name)

    def add_documents(self, items, **kwargs):
        self._first()
        self.results.append(self.queue.add_documents(items, **kwargs))
        return self.results[-1]

    def record_skip(self, **kwargs):
        self._first()
        self.results.append(self.queue.record_skip(**kwargs))
        return self.results[-1]

    def _first(self) -> None:
        if self.overtake is not None:
            overtake, self.overtake = self.overtake, None
            overtake()


def append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def stored_text(queue, path: Path) -> str:
    """The texts of every stored version of `path`, joined in version order."""
    with queue.database.read() as connection:
        query = (sa.select(documents.c.stream_start, documents.c.stream_end)
                 .where(documents.c.source_path == str(path), documents.c.status == "queued")
                 .order_by(documents.c.version))
        ranges = connection.execute(query).all()
    return "".join(ByteTokenizer().decode_text(queue.read_tokens(start, end)) for start, end in ranges)


@pytest.mark.parametrize("grows_again", [False, True], ids=["nothing_new", "grew_again"])
def test_a_growth_another_writer_overtook_is_read_again_and_each_byte_stored_once(tmp_path, two_queues, grows_again):
    path = tmp_path / "app.log"
    path.write_text("the first line\n")
    tokenizer = ByteTokenizer()
    daemon = Ingestor(two_queues[1], tokenizer)
    assert daemon.ingest_file(path).status == "ingested"
    append(path, "a line both writers see\n")

    def overtake() -> None:  # between A's read and A's commit: the file grows, B reads and commits
        append(path, "a line only the daemon sees at first\n")
        assert daemon.ingest_file(path).status == "ingested"
        if grows_again:
            append(path, "a line written after both\n")

    overtaken = Overtaken(two_queues[0], overtake)
    outcome = Ingestor(overtaken, tokenizer).ingest_file(path)

    assert [r.status for r in overtaken.results[0]] == ["stale"]  # A's first growth wrote nothing
    if grows_again:  # read again: only the bytes after B's version are A's
        assert (outcome.status, outcome.offset) == ("ingested", len("the first line\na line both writers see\n"
                                                                     "a line only the daemon sees at first\n"))
    else:  # read again: B stored this very version
        assert outcome.status == "unchanged"
    assert stored_text(two_queues[0], path) == extract_file(path).text  # each byte once


def test_a_whitespace_growth_another_writer_overtook_is_read_again(tmp_path, two_queues):
    """A growth by whitespace only is remembered as a version later growth is measured from;
    recorded against the superseded version, the next growth would store B's text again."""
    path = tmp_path / "app.log"
    path.write_text("the first line\n")
    tokenizer = ByteTokenizer()
    daemon = Ingestor(two_queues[1], tokenizer)
    assert daemon.ingest_file(path).status == "ingested"
    append(path, "   \n")  # what A reads: whitespace only

    def overtake() -> None:
        append(path, "text the daemon stores first\n")
        assert daemon.ingest_file(path).status == "ingested"

    overtaken = Overtaken(two_queues[0], overtake)
    writer = Ingestor(overtaken, tokenizer)
    assert writer.ingest_file(path).status == "unchanged"  # read again: B's version is this file
    assert overtaken.results == [None]  # the whitespace growth of the superseded version: not recorded
    append(path, "and a last line\n")
    assert writer.ingest_file(path).status == "ingested"
    assert stored_text(two_queues[0], path) == extract_file(path).text  # each byte once


def test_a_file_the_store_calls_stale_round_after_round_fails_instead_of_looping(tmp_path, two_queues):
    path = tmp_path / "app.log"
    path.write_text("the first line\n")
    tokenizer = ByteTokenizer()
    assert Ingestor(two_queues[0], tokenizer).ingest_file(path).status == "ingested"
    append(path, "more\n")

    class AlwaysStale:
        def __init__(self, queue):
            self.queue, self.calls = queue, 0

        def __getattr__(self, name):
            return getattr(self.queue, name)

        def add_documents(self, items, **kwargs):
            self.calls += 1
            return [AddResult(None, "stale", None, 0, 0, 0, None, None) for _ in items]

    queue = AlwaysStale(two_queues[0])
    outcome = Ingestor(queue, tokenizer).ingest_file(path)
    assert (outcome.status, outcome.reason, queue.calls) == ("failed", CONCURRENT_WRITER, REREAD_ROUNDS)
