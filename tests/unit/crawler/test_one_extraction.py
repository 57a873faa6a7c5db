"""One extraction for every command: `eval` and `tokenizer train` read a file as `ingest` and the
daemon do (crawler/ingest/reading.py), so an HTML page is scored as its text, and a file the
daemon skips is skipped, with the same reason."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crawler.cli.main import main
from crawler.ingest.data import load_corpus
from crawler.ingest.extract import extract_file
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from storage import CorpusQueue, StorageConfig, open_database

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4", "--threads", "1"]
WORDS = ["crystal", "lattice", "grows", "slowly", "in", "the", "cold", "dark", "cave", "and"]


def page(seed: int) -> str:
    """An HTML page whose markup is most of its bytes."""
    rng = np.random.default_rng(seed)
    paragraphs = "".join(f'<p class="body"><span>{" ".join(rng.choice(WORDS, size=12))}</span></p>\n'
                         for _ in range(8))
    return (f"<!DOCTYPE html><html><head><title>notes</title><style>p {{margin: 0}}</style>"
            f"<script>var x = 1;</script></head><body>\n{paragraphs}</body></html>\n")


def run(capsys, *argv) -> tuple[int, str, list[dict]]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.fixture
def files(tmp_path):
    """An HTML page and its extracted text, side by side, and a binary file."""
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "page.html").write_text(page(0))
    text = extract_file(folder / "page.html").text
    (folder / "page.txt").write_text(text)
    (folder / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))  # an image
    return folder


def test_the_offline_corpus_holds_the_tokens_ingest_stores(tmp_path, files):
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}"))) as queue:
        outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(files / "page.html", files)]))
        assert [o.status for o in outcomes] == ["ingested"]
        stored = queue.read_tokens(0, queue.stream_end())
    corpus = load_corpus([files / "page.html"])
    np.testing.assert_array_equal(corpus.tokens, stored)
    assert b"<" not in ByteTokenizer().decode(corpus.tokens)


def test_eval_of_a_page_is_eval_of_its_text_and_a_binary_file_is_skipped(tmp_path, capsys, files):
    state = tmp_path / "state"
    training = tmp_path / "training"
    training.mkdir()
    (training / "a.txt").write_text(" ".join(np.random.default_rng(1).choice(WORDS, size=400)))
    assert run(capsys, "train", training, *TINY, "--steps", "2", "--state-dir", state)[0] == 0

    status, out, logged = run(capsys, "eval", files / "page.html", files / "blob.bin", "--json", "--threads", "1",
                              "--state-dir", state)
    assert status == 0
    html = json.loads(out)
    skipped = [(e["path"], e["reason"]) for e in logged if e["event"] == "file_skipped"]
    assert skipped == [(str(files / "blob.bin"), "binary")]
    status, out, logged = run(capsys, "eval", files / "page.txt", "--json", "--threads", "1", "--state-dir", state)
    assert status == 0 and not [e for e in logged if e["event"] == "file_skipped"]
    text = json.loads(out)
    assert html["files"] == text["files"] == 1
    assert html["bytes"] == text["bytes"] == len((files / "page.txt").read_bytes())
    assert html["bits_per_byte"] == pytest.approx(text["bits_per_byte"], rel=1e-9)
    assert math.isfinite(html["bits_per_byte"])

    status, out, logged = run(capsys, "eval", files / "blob.bin", "--state-dir", state)
    assert (status, out) == (1, "")
    assert [e["reason"] for e in logged if e["event"] == "file_skipped"] == ["binary"]


def test_tokenizer_train_reads_a_page_as_its_text(tmp_path, capsys, files):
    status, _, logged = run(capsys, "tokenizer", "train", files / "page.html", "--vocab-size", "280",
                              "--state-dir", tmp_path / "state")
    assert status == 0
    trained = next(e for e in logged if e["event"] == "tokenizer_trained")
    assert trained["files"] == 1 and trained["bytes"] == len((files / "page.txt").read_bytes())
