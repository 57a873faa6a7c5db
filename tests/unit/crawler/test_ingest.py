"""The ingest pipeline against a real SQLite store: outcomes, dedup, versions, round trips, CLI."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crawler.cli import main
from crawler.extract import extract_file
from crawler.ingest import Ingestor, iter_files
from crawler.tokenizer import ByteTokenizer
from storage import CorpusQueue, StorageConfig, open_database


@pytest.fixture
def queue(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    q = CorpusQueue(database)
    yield q
    q.close()
    database.close()


def nonzero(counts: dict) -> dict:
    return {status: n for status, n in counts.items() if n}


def whole_stream(queue) -> np.ndarray:
    total = queue.stats().tokens_total
    windows, _ = queue.read_windows(0, 1, total - 1)
    return windows[0]


def test_a_folder_of_mixed_files(tmp_path, queue):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first document\n")
    (root / "sub" / "b.md").write_text("# second\n\nbody\n")
    (root / "copy.txt").write_text("first document\n")  # same bytes, another name
    (root / "empty.txt").write_text("")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (root / ".hidden").write_text("never read")
    (root / "draft.txt.part").write_text("still downloading")
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the root")
    os.symlink(outside, root / "link.txt")

    ingestor = Ingestor(queue, ByteTokenizer())
    outcomes = {Path(o.path).name: o for o in (ingestor.ingest_file(p, r) for p, r in iter_files([root]))}
    assert set(outcomes) == {"a.txt", "b.md", "copy.txt", "empty.txt", "blob.bin", "link.txt"}
    assert outcomes["a.txt"].status == "ingested" and outcomes["a.txt"].tokens == len("first document") + 1
    assert outcomes["b.md"].status == "ingested"
    assert outcomes["copy.txt"].status == "duplicate" and outcomes["copy.txt"].tokens == 0
    assert (outcomes["empty.txt"].status, outcomes["empty.txt"].reason) == ("skipped", "empty")
    assert (outcomes["blob.bin"].status, outcomes["blob.bin"].reason) == ("skipped", "binary")
    assert (outcomes["link.txt"].status, outcomes["link.txt"].reason) == ("skipped", "outside_root")

    stats = queue.stats()
    assert nonzero(stats.documents) == {"queued": 2, "duplicate": 1, "skipped": 3}
    eod = ByteTokenizer().eod_id
    # the stream is the two documents in arrival order, each opened by a separator
    expected = [eod, *b"first document", eod, *b"# second\n\nbody"]
    assert whole_stream(queue).tolist() == expected

    # a second pass reads nothing: every file version was seen
    again = [ingestor.ingest_file(p, r).status for p, r in iter_files([root])]
    assert set(again) == {"unchanged"}
    assert queue.stats().tokens_total == len(expected)


def test_a_modified_file_is_a_new_version(tmp_path, queue):
    path = tmp_path / "notes.txt"
    path.write_text("version one")
    ingestor = Ingestor(queue, ByteTokenizer())
    first = ingestor.ingest_file(path)
    path.write_text("version two, longer")
    os.utime(path, (1e9, 1e9))
    second = ingestor.ingest_file(path)
    assert first.status == second.status == "ingested"
    assert second.document_id != first.document_id
    assert nonzero(queue.stats().documents) == {"queued": 2}


def test_a_file_deleted_before_ingest_is_vanished(tmp_path, queue):
    path = tmp_path / "gone.txt"
    outcome = Ingestor(queue, ByteTokenizer()).ingest_file(path)
    assert (outcome.status, outcome.reason) == ("skipped", "vanished")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(min_size=1, max_size=300).filter(lambda s: s.strip()), min_size=1, max_size=4))
def test_text_tokens_chunks_tokens_text_round_trip(tmp_path_factory, texts):
    base = tmp_path_factory.mktemp("rt")
    database = open_database(StorageConfig(url=f"sqlite:///{base / 'c.db'}", chunk_tokens=7).validate())
    queue = CorpusQueue(database)
    try:
        tokenizer = ByteTokenizer()
        ingestor = Ingestor(queue, tokenizer)
        stored = []
        for i, text in enumerate(texts):
            path = base / f"{i}.txt"
            path.write_bytes(text.encode("utf-8"))
            outcome = ingestor.ingest_file(path)
            if outcome.status == "ingested":
                stored.append(extract_file(path).text)  # the text is what the extractor made of the file
        if not stored:  # every text was rejected (say, control characters only): nothing queued
            assert queue.stats().tokens_total == 0
            return
        stream = whole_stream(queue)
        documents = np.split(stream, np.flatnonzero(stream == tokenizer.eod_id))[1:]
        decoded = [tokenizer.decode_text(doc[1:]) for doc in documents]
        assert decoded == stored
    finally:
        queue.close()
        database.close()


def test_cli_ingest_and_status(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.txt").write_text(f"document number {i}\n" * 20)
    (root / "z.bin").write_bytes(bytes(range(256)) * 4)
    state = tmp_path / "state"
    assert main(["ingest", str(root), "--state-dir", str(state), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == {"ingested": 5, "skipped": 1}
    assert report["reasons"] == {"skipped:binary": 1}
    assert main(["status", "--json", "--state-dir", str(state)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["exists"] and nonzero(status["documents"]) == {"queued": 5, "skipped": 1}
    # each document: its text without the final newline (trailing whitespace is stripped), plus
    # the separator that opens it
    per_document = len("document number 0\n") * 20 - 1 + 1
    assert status["tokens_queued"] == status["tokens_total"] == 5 * per_document
    assert status["tokens_trained"] == 0 and status["last_checkpoint"] is None


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "missing"), "--state-dir", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "no such file or folder" in err and "Traceback" not in err
    assert main(["status", "--state-dir", str(tmp_path / "fresh")]) == 0
    assert "not created yet" in capsys.readouterr().out


def test_a_tokenizer_change_under_an_existing_corpus_is_refused(tmp_path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_text("some text to start the corpus with\n" * 50)
    state = tmp_path / "state"
    assert main(["ingest", str(root), "--state-dir", str(state)]) == 0
    # a BPE forced into the state directory after the byte-level corpus exists
    assert main(["tokenizer", "train", str(root), "--vocab-size", "300", "--state-dir", str(state), "--force"]) == 0
    (root / "b.txt").write_text("more text\n")
    capsys.readouterr()
    assert main(["ingest", str(root), "--state-dir", str(state)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tokenizer" in err and "Traceback" not in err
