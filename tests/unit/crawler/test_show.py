"""`crystalline show`: the stored text of a file or a document, exactly as the model reads it."""

from __future__ import annotations

import json
import os

import pytest

from crawler.cli.main import main
from crawler.ingest.extract import extract_file

PAGE = ("<html><head><title>t</title><style>p {color: red}</style></head><body>"
        "<h1>Crystals</h1><p>They grow <b>slowly</b> &amp; quietly.</p></body></html>\n")


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def show_json(capsys, state, *argv) -> tuple[int, dict]:
    status, out, _ = run(capsys, "show", *argv, "--json", "--state-dir", state)
    return status, json.loads(out)


@pytest.fixture
def inbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


def test_a_page_shows_its_extracted_text_by_path_by_id_and_by_its_processed_copy(tmp_path, inbox, capsys):
    state = tmp_path / "state"
    (inbox / "page.html").write_text(PAGE)
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0
    text = extract_file(inbox / "page.html").text
    assert "<" not in text and "Crystals" in text

    status, out, err = run(capsys, "show", "inbox/page.html", "--state-dir", state)
    assert (status, out, err) == (0, text + "\n", "")
    status, report = show_json(capsys, state, "inbox/page.html")
    assert status == 0
    assert report | {"doc_id": 0} == {"doc_id": 0, "path": str(inbox / "page.html"), "version": 1, "status": "queued",
                                      "reason": None, "detail": None, "duplicate_of": None,
                                      "parts": [report["doc_id"]], "tokens": len(text.encode()) + 1,
                                      "bytes": len(text.encode()), "text": text, "withdrawn": []}
    assert show_json(capsys, state, str(report["doc_id"]))[1] == report
    moved = state / "processed" / "inbox" / "page.html"  # where after_ingest = "move" puts it
    assert show_json(capsys, state, moved)[1] == report


def test_versions_the_newest_by_default_and_a_rewrite_withdraws_the_old_text(tmp_path, inbox, capsys):
    state = tmp_path / "state"
    notes = inbox / "notes.md"
    notes.write_text("# first draft\n")
    assert run(capsys, "ingest", notes, "--state-dir", state)[0] == 0
    notes.write_text("# second draft, rewritten\n")
    os.utime(notes, (1, 1))
    assert run(capsys, "ingest", notes, "--state-dir", state)[0] == 0

    assert run(capsys, "show", notes, "--state-dir", state)[1] == "# second draft, rewritten\n"
    status, out, err = run(capsys, "show", notes, "--version", "1", "--state-dir", state)
    assert (status, out) == (0, "# first draft\n")
    assert "withdrawn from training" in err  # training had not reached it: the rewrite withdrew it
    _, report = show_json(capsys, state, notes, "--version", "1")
    assert report["withdrawn"] == [{"document": report["doc_id"], "reason": "superseded", "tokens": 14}]
    status, out, err = run(capsys, "show", notes, "--version", "3", "--state-dir", state)
    assert status == 1 and "no version 3; its versions are 1, 2" in err


def test_a_file_that_only_grew_shows_its_whole_text(tmp_path, inbox, capsys):
    state = tmp_path / "state"
    log = inbox / "app.log.txt"
    log.write_text("started\n")
    assert run(capsys, "ingest", log, "--state-dir", state)[0] == 0
    with log.open("a") as f:
        f.write("stopped\n")
    assert run(capsys, "ingest", log, "--state-dir", state)[0] == 0
    _, report = show_json(capsys, state, log)
    assert (report["version"], report["text"], len(report["parts"])) == (2, "started\nstopped", 2)
    assert report["tokens"] == len("started") + 1 + len("\nstopped") + 1  # each version opens with a separator
    assert show_json(capsys, state, log, "--version", "1")[1]["text"] == "started"


def test_versions_without_text_say_why_in_one_line(tmp_path, inbox, capsys):
    state = tmp_path / "state"
    (inbox / "a.txt").write_text("the same words\n")
    (inbox / "b.txt").write_text("the same words\n")  # stored as a duplicate of a.txt
    (inbox / "blob.bin").write_bytes(b"\x00\x01\x02" * 40)
    (inbox / "gone.txt").write_text("soon forgotten\n")
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0
    assert run(capsys, "forget", "inbox/gone.txt", "--state-dir", state)[0] == 0

    status, out, _ = run(capsys, "show", "inbox/blob.bin", "--state-dir", state)
    assert status == 1 and len(out.splitlines()) == 1 and "skipped (binary" in out
    _, first = show_json(capsys, state, "inbox/a.txt")
    status, out, _ = run(capsys, "show", "inbox/b.txt", "--state-dir", state)
    assert status == 1 and len(out.splitlines()) == 1
    assert f"a duplicate: the same content as document {first['doc_id']} ({inbox / 'a.txt'}, version 1)" in out
    status, report = show_json(capsys, state, "inbox/b.txt")
    assert (status, report["status"], report["duplicate_of"], report["text"]) == (1, "duplicate", first["doc_id"], None)
    status, out, _ = run(capsys, "show", "inbox/gone.txt", "--state-dir", state)
    assert status == 1 and "forgotten" in out and len(out.splitlines()) == 1

    (inbox / "a.txt").write_bytes(b"\x00binary now")  # the newest version is a skip; an older one holds text
    assert run(capsys, "ingest", inbox / "a.txt", "--state-dir", state)[0] == 0
    status, out, _ = run(capsys, "show", "inbox/a.txt", "--state-dir", state)
    assert status == 1 and "version 2" in out and "(version 1 holds text: --version 1)" in out


def test_names_that_hold_nothing_are_one_line_errors(tmp_path, inbox, capsys):
    state = tmp_path / "state"
    (inbox / "a.txt").write_text("words\n")
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0
    for argv, fragment in ((["inbox/none.txt"], "no document of that name or id"),
                           (["999"], "no document of that name or id"),
                           (["inbox"], "a folder; show takes one file or a document id"),
                           (["1", "--version", "1"], "a document id already names one")):
        status, out, err = run(capsys, "show", *argv, "--state-dir", state)
        assert (status, out) == (1, "") and err.startswith("crystalline: error: ") and fragment in err
        assert len(err.splitlines()) == 1


def test_a_bpe_corpus_is_decoded_with_its_tokenizer(tmp_path, inbox, capsys):
    state = tmp_path / "state"
    words = "crystal lattice grows slowly in the cold dark cave. " * 40
    (inbox / "a.txt").write_text(words)
    assert run(capsys, "tokenizer", "train", inbox, "--vocab-size", "300", "--state-dir", state)[0] == 0
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0
    status, report = show_json(capsys, state, "inbox/a.txt")
    assert status == 0 and report["text"] == words.rstrip() and report["bytes"] == len(words.rstrip())
    assert report["tokens"] < report["bytes"] / 2  # BPE ids, several bytes each
