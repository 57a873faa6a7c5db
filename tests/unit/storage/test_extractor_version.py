"""The extractor's version on document rows (revision 0007), and seen_many's rule for a skip an
older extractor gave: such a file version is not seen, so the ingest side reads it again."""

from datetime import UTC, datetime

import numpy as np
import sqlalchemy as sa

from storage import CorpusQueue, NewDocument, open_database
from storage.db import Database, create_engine, current_revision, upgrade_schema
from storage.models import documents

CURABLE = frozenset(("binary", "unsupported"))


def extractor_versions(queue: CorpusQueue) -> dict[str, int | None]:
    query = sa.select(documents.c.source_path, documents.c.extractor_version)
    with queue.database.read() as connection:
        return dict(connection.execute(query).all())


def test_rows_record_the_extractor_that_gave_the_verdict(queue, add):
    add(queue, "/in/a.txt", np.arange(20) % 50)  # (the fixture passes no version: NULL)
    tokens = np.arange(30) % 40
    item = NewDocument("/in/b.txt", add.content_hash(tokens), 30, 1.0, "text", tokens)
    [stored] = queue.add_documents([item], tokenizer=add.tokenizer, extractor_version=3)
    queue.record_skip(source_path="/in/c.bin", reason="binary", size=4, mtime=1.0, extractor_version=3)
    queue.record_skip(source_path="/in/d.bin", reason="binary", size=4, mtime=1.0)
    assert stored.status == "queued"
    assert extractor_versions(queue) == {"/in/a.txt": None, "/in/b.txt": 3, "/in/c.bin": 3, "/in/d.bin": None}


def test_a_skip_by_an_older_extractor_for_a_curable_reason_is_not_seen(queue):
    rows = {  # path: (reason, status, extractor_version)
        "/in/old.gz": ("binary", "skipped", 1),
        "/in/unknown.gz": ("unsupported", "skipped", None),  # before versions were recorded
        "/in/current.gz": ("binary", "skipped", 2),
        "/in/newer.gz": ("binary", "skipped", 5),  # a newer crystalline shares the corpus
        "/in/empty.txt": ("empty", "skipped", 1),  # no extractor makes text of nothing
        "/in/broken.pdf": ("extraction_failed", "failed", 1),
    }
    for path, (reason, status, version) in rows.items():
        queue.record_skip(source_path=path, reason=reason, status=status, size=4, mtime=1.0,
                          extractor_version=version)
    versions = [(path, 4, 1.0) for path in rows]
    assert queue.seen_many(versions) == set(versions)  # without a version: any row is seen
    seen = queue.seen_many(versions, extractor_version=2, reoffered=CURABLE)
    assert {path for path, _, _ in seen} == {"/in/current.gz", "/in/newer.gz", "/in/empty.txt", "/in/broken.pdf"}
    # its next row, whatever the verdict, is the current extractor's: seen
    queue.record_skip(source_path="/in/old.gz", reason="binary", size=4, mtime=1.0, extractor_version=2)
    assert ("/in/old.gz", 4, 1.0) in queue.seen_many(versions, extractor_version=2, reoffered=CURABLE)


def test_a_store_at_0006_upgrades_and_its_old_skips_are_offered_again(make_config):
    config = make_config()
    now = datetime.now(UTC)
    with Database(create_engine(config), config) as database:
        upgrade_schema(database, "0006")
        assert "extractor_version" not in {c["name"] for c in sa.inspect(database.engine).get_columns("documents")}
        with database.write() as connection:
            connection.execute(documents.insert().values(  # a skip as the extractor before 0007 wrote it
                source_path="/in/ls.1.gz", size=4, mtime=1.0, status="skipped", reason="binary",
                version=1, token_count=0, created_at=now, updated_at=now))
    with CorpusQueue(open_database(config)) as queue:
        assert current_revision(queue.database) == "0010"
        assert extractor_versions(queue) == {"/in/ls.1.gz": None}
        old = ("/in/ls.1.gz", 4, 1.0)
        assert queue.seen_many([old]) == {old}
        assert queue.seen_many([old], extractor_version=2, reoffered=CURABLE) == set()
        queue.record_skip(source_path="/in/ls.1.gz", reason="binary", size=4, mtime=1.0, extractor_version=2)
        assert queue.seen_many([old], extractor_version=2, reoffered=CURABLE) == {old}
        assert [row.version for row in queue.document_versions(paths=["/in/ls.1.gz"])] == [1, 2]
