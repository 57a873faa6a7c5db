"""A file an older extractor skipped is read again, unchanged, once the extractor may read it.

The older extractor's verdicts are written straight into the store (record_skip with the file's
size and mtime), as the daemon before the upgrade would have left them; then the ingest path of
today meets the same, untouched file.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from crawler.cli.main import main
from crawler.ingest.extract import EXTRACTOR_VERSION
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.reading import REOFFERED_REASONS
from crawler.ingest.tokenizer import ByteTokenizer
from storage import CorpusQueue, StorageConfig, open_database
from storage.models import documents


@pytest.fixture
def queue(tmp_path):
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}"))) as opened:
        yield opened


def skipped_before(queue, path, reason: str, version: int | None) -> None:
    """The row an extractor of `version` (None: before versions were recorded) wrote for `path`."""
    st = path.stat()
    queue.record_skip(source_path=str(path), reason=reason, detail="as the old extractor said",
                      size=st.st_size, mtime=st.st_mtime, extractor_version=version)


def rows(queue, path) -> list[tuple]:
    query = (sa.select(documents.c.version, documents.c.status, documents.c.reason, documents.c.extractor_version)
             .where(documents.c.source_path == str(path)).order_by(documents.c.version))
    with queue.database.read() as connection:
        return [tuple(row) for row in connection.execute(query)]


def ingest(queue, path) -> str:
    return Ingestor(queue, ByteTokenizer()).ingest_file(path).status


@pytest.mark.parametrize("version", [None, EXTRACTOR_VERSION - 1])
def test_a_skip_by_an_older_extractor_is_read_again_and_stored(tmp_path, queue, version):
    page = tmp_path / "ls.1"
    page.write_text("ls lists directory contents\n")
    skipped_before(queue, page, "binary", version)
    assert ingest(queue, page) == "ingested"  # the file was not touched
    assert rows(queue, page) == [(1, "skipped", "binary", version), (2, "queued", None, EXTRACTOR_VERSION)]
    assert ingest(queue, page) == "unchanged"


def test_a_skip_by_the_current_extractor_is_not_read_again(tmp_path, queue):
    page = tmp_path / "ls.1"
    page.write_text("ls lists directory contents\n")
    skipped_before(queue, page, "binary", EXTRACTOR_VERSION)
    assert ingest(queue, page) == "unchanged"
    assert len(rows(queue, page)) == 1


@pytest.mark.parametrize("reason", ["empty", "too_large", "unreadable", "outside_root", "timeout", "forgotten"])
def test_a_skip_no_extractor_can_cure_is_not_read_again(tmp_path, queue, reason):
    assert reason not in REOFFERED_REASONS
    path = tmp_path / "a.txt"
    path.write_text("text\n")
    skipped_before(queue, path, reason, None)
    assert ingest(queue, path) == "unchanged"


def test_a_file_the_new_extractor_still_skips_is_recorded_once_more_then_left_alone(tmp_path, queue):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"\x00\x01\x02" * 50)
    skipped_before(queue, blob, "binary", None)
    with capture_logs() as logs:
        assert ingest(queue, blob) == "skipped"
        assert ingest(queue, blob) == "unchanged"
    assert rows(queue, blob) == [(1, "skipped", "binary", None), (2, "skipped", "binary", EXTRACTOR_VERSION)]
    assert logs == []  # the Ingestor logs nothing itself: its callers report outcomes


def test_crystalline_ingest_of_the_same_folder_stores_it(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    page = inbox / "ls.1"
    page.write_text("ls lists directory contents\n")
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}"))) as queue:
        skipped_before(queue, page, "unsupported", None)
    for expected in ({"ingested": 1}, {"unchanged": 1}):
        assert main(["ingest", str(inbox), "--json", "--state-dir", str(state)]) == 0
        assert json.loads(capsys.readouterr().out)["files"] == expected


def test_the_daemons_ingest_worker_reads_it_again_at_its_start_scan(tmp_path, queue):
    import queue as queue_module

    import structlog

    from crawler.config import Config
    from crawler.service.ingest_worker import IngestWorker

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    page = inbox / "ls.1"
    page.write_text("ls lists directory contents\n")
    skipped_before(queue, page, "binary", None)
    pending: queue_module.Queue = queue_module.Queue()
    pending.put((page, inbox))  # as the start scan hands over every file under a root
    worker = IngestWorker(Config(state_dir=tmp_path / "state"), queue, ByteTokenizer(), pending, structlog.get_logger())
    worker.initialize()
    with capture_logs() as logs:
        worker.run_once(0.0)
    assert [(e["event"], e["path"]) for e in logs if e["event"].startswith("file_")] == [("file_ingested", str(page))]
