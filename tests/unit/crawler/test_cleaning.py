"""The corpus rules on what is stored (crawler/ingest/cleaning.py): boilerplate lines across
documents stored a few times, a play's speaker lines kept, near duplicates skipped naming the
document kept, distinct documents kept; and each rule's setting. Generated data only."""

import hashlib

import numpy as np
import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from crawler.cli.corpus import ingest_paths
from crawler.config import Config
from crawler.ingest import cleaning
from crawler.ingest.cleaning import LINE_DOCUMENTS, DocumentLines, boilerplate, signature, without
from crawler.ingest.extract import extract_file
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.logging import get_logger
from storage import CorpusQueue, StorageConfig, open_database
from storage.models import documents

WORDS = ("river stone lantern orchard copper meadow harbor violet thistle ember willow granite falcon "
         "saffron glacier cedar marble quill tundra pebble crimson ferry basalt juniper sparrow cobalt "
         "maple dune ivory heron canyon lilac onyx prairie beacon").split()


def sentence(rng: np.random.Generator, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS, size=n)).capitalize() + "."


def open_queue(tmp_path, **settings) -> CorpusQueue:
    tmp_path.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{tmp_path / 'corpus.db'}"
    return CorpusQueue(open_database(StorageConfig(url=url, **settings).validate()))


def stored_texts(queue: CorpusQueue) -> dict[str, str]:
    """Path -> the text stored in the stream for it (queued documents only)."""
    query = sa.select(documents.c.source_path, documents.c.stream_start, documents.c.stream_end).where(
        documents.c.status == "queued")
    with queue.database.read() as connection:
        rows = connection.execute(query).all()
    return {path: ByteTokenizer().decode(queue.read_tokens(start, end)).decode() for path, start, end in rows}


def rows(queue: CorpusQueue) -> dict[str, tuple[str, str | None, str | None]]:
    query = sa.select(documents.c.source_path, documents.c.status, documents.c.reason, documents.c.detail)
    with queue.database.read() as connection:
        return {path: (status, reason, detail) for path, status, reason, detail in connection.execute(query)}


NAV = ["Navigation", "index", "modules |", "next |", "Python »", "3.11 Documentation »"]
FOOTER = ["© Copyright 2001-2026, Example Foundation.", "This page is licensed under the Example License.",
          "Created using Sphinx 5.3.0."]


def html_page(rng: np.random.Generator, title: str) -> str:
    body = "".join(f"<p>{sentence(rng)}</p>\n" for _ in range(6))
    nav = "".join(f"<li>{item}</li>\n" for item in NAV)
    footer = "".join(f"<div>{line}</div>\n" for line in FOOTER)
    return (f"<html><head><title>{title}</title></head><body>\n<ul>{nav}</ul>\n<h1>{title}</h1>\n{body}"
            f"<p>Prev Up Next</p>\n{footer}</body></html>\n")


# --- boilerplate lines ------------------------------------------------------------------------------


def test_navigation_and_footers_across_pages_are_stored_by_the_first_pages_only(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "site"
    root.mkdir()
    pages = LINE_DOCUMENTS + 8
    for i in range(pages):
        (root / f"page{i:02d}.html").write_text(html_page(rng, f"Topic number {i}"))
    with open_queue(tmp_path) as queue:
        outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(p, root) for p in sorted(root.iterdir())]))
        assert {o.status for o in outcomes} == {"ingested"}
        texts = stored_texts(queue)
    for i in range(pages):
        path = str(root / f"page{i:02d}.html")
        extracted = extract_file(path).text
        text = texts[path]
        assert f"Topic number {i}" in text
        for line in extracted.splitlines():  # every line of the body is stored
            if line.startswith(tuple(w.capitalize() for w in WORDS)):
                assert line in text
        has_nav = all(line in text.splitlines() for line in NAV + FOOTER)
        gone = not any(line in text.splitlines() for line in NAV + FOOTER + ["Prev Up Next"])
        # the first LINE_DOCUMENTS pages keep their boilerplate, the later ones store it no more
        assert (has_nav, gone) == ((True, False) if i < LINE_DOCUMENTS else (False, True)), i


def speaker_play(rng: np.random.Generator, title: str) -> str:
    persons = [f"KING of {title}.", f"{rng.choice(WORDS).upper()}, a lord of {title}.", "MESSENGER."]
    lines = [title.upper(), "", "by A. Playwright", "", "DRAMATIS PERSONAE", "", *persons, ""]
    speakers = ["ALL.", "MESSENGER.", "KING.", "FIRST LORD.", "SERVANT."]
    for scene in range(1, 4):
        lines += [f"ACT {'I' * scene}.", "", f"SCENE I. {title}, a room in the palace.", ""]
        for _ in range(30):
            lines += [str(rng.choice(speakers)), sentence(rng, 9), ""]
            if rng.random() < 0.2:
                lines += ["[Exit.]", ""]
        lines += ["[Exeunt.]", ""]
    return "\n".join(lines)


def test_plays_keep_every_speaker_line_and_stage_direction(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "plays"
    root.mkdir()
    for i in range(LINE_DOCUMENTS + 15):
        (root / f"play{i:02d}.txt").write_text(speaker_play(rng, f"The tragedy of number {i}"))
    with open_queue(tmp_path) as queue:
        outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(p, root) for p in sorted(root.iterdir())]))
        assert {o.status for o in outcomes} == {"ingested"}
        texts = stored_texts(queue)
    for path in sorted(root.iterdir()):  # not one line goes: no dialogue, speaker or stage direction
        assert texts[str(path)] == extract_file(path).text


def test_a_block_a_page_prints_twice_is_kept_once():
    toc = [f"Section heading {i}" for i in range(12)]
    text = "\n".join(["Contents", *toc, "", "First paragraph of the page.", *toc, "Last words."])
    doc = DocumentLines.of(text)
    kept = without(doc, boilerplate(doc, {}))
    assert kept.splitlines() == ["Contents", *toc, "", "First paragraph of the page.", "Last words."]


def test_code_lines_are_never_boilerplate():
    code = ["#include <stdio.h>", "int", "main(void)", "{", "    return 0;", "}", "};"]
    doc = DocumentLines.of("\n".join(["A program:", *code, "The end of it."]))
    common = {h: 10_000 for h in doc.candidates()}  # every candidate line in every document
    assert [doc.keys[i] for i in sorted(boilerplate(doc, common))] == ["A program:", "The end of it."]
    assert [doc.keys[i] for i in range(len(doc.keys)) if doc.hashes[i] is not None] == [
        "A program:", "int", "main(void)", "The end of it."]


# --- near duplicates ----------------------------------------------------------------------------------


def page_and_source(rng: np.random.Generator, name: str) -> tuple[str, str]:
    """A generated documentation page as HTML and as its reStructuredText source."""
    paragraphs = [sentence(rng, 25) for _ in range(8)]
    functions = [f"{name}_{w}" for w in rng.choice(WORDS, size=3, replace=False)]
    html = [f"<html><body><h1>{name} — a generated module¶</h1>"]
    rst = [f":mod:`{name}` --- a generated module", "=" * 40, "", f".. module:: {name}",
           f"   :synopsis: {sentence(rng, 5)}", ""]
    for i, paragraph in enumerate(paragraphs):
        function = functions[i % 3]
        html.append(f"<dl><dt>{name}.{function}(value)¶</dt><dd><p>Calls <code>{function}()</code> "
                    f"on the value. {paragraph}</p></dd></dl>")
        rst += [f".. function:: {function}(value)", "",
                f"   Calls :func:`{function}` on the ``value``. {paragraph}", ""]
    return "\n".join(html) + "</body></html>\n", "\n".join(rst) + "\n"


def test_a_page_and_its_source_are_stored_once_naming_the_kept_document(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "docs"
    (root / "_sources").mkdir(parents=True)
    html, rst = page_and_source(rng, "bisect")
    (root / "_sources" / "bisect.rst.txt").write_text(rst)
    (root / "bisect.html").write_text(html)
    other, _ = page_and_source(rng, "heapq")  # same template, other text: distinct
    (root / "heapq.html").write_text(other)
    assert signature(extract_file(root / "bisect.html").text).jaccard(signature(rst)) >= cleaning.NEAR_JACCARD
    config = Config(state_dir=tmp_path / "state", store=StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}"))
    for batch in (1, 256):  # in separate commits (the index), and in one (the batch's own)
        with open_queue(tmp_path / str(batch)) as queue:
            ingestor = Ingestor(queue, ByteTokenizer())
            outcomes = {}
            for path in (root / "_sources" / "bisect.rst.txt", root / "bisect.html", root / "heapq.html"):
                for outcome in ingestor.ingest_files([(path, root)], batch_files=batch):
                    outcomes[path.name] = outcome
            kept = outcomes["bisect.rst.txt"]
            assert (kept.status, outcomes["heapq.html"].status) == ("ingested", "ingested")
            skipped = outcomes["bisect.html"]
            assert (skipped.status, skipped.reason) == ("skipped", "near_duplicate")
            assert f"document {kept.document_id} ({root / '_sources' / 'bisect.rst.txt'})" in skipped.detail
            assert rows(queue)[str(root / "bisect.html")] == ("skipped", "near_duplicate", skipped.detail)
            again = list(ingestor.ingest_files([(root / "bisect.html", root)]))
            assert again[0].status == "unchanged"  # the skip is remembered
    # the folder through `crystalline ingest`'s loop, one batch (a folder's files before its
    # subfolders': the page is kept, its source skipped); the event names the kept document
    with open_queue(tmp_path / "cli") as queue, capture_logs() as logs:
        ingest_paths([root], queue, ByteTokenizer(), config, get_logger("ingest"))
        [kept] = [e for e in logs if e["event"] == "file_ingested" and e["path"] == str(root / "bisect.html")]
        [event] = [e for e in logs if e["event"] == "file_skipped"]
        assert (event["path"], event["reason"]) == (str(root / "_sources" / "bisect.rst.txt"), "near_duplicate")
        assert f"document {kept['doc_id']} ({root / 'bisect.html'})" in event["detail"]
        assert rows(queue)[event["path"]][:2] == ("skipped", "near_duplicate")


def test_the_same_bytes_under_another_name_stay_a_duplicate(tmp_path):
    rng = np.random.default_rng(6)
    html, _ = page_and_source(rng, "copied")
    other, _ = page_and_source(rng, "other")
    for name in ("a.html", "b.html"):
        (tmp_path / name).write_text(html)
    for name in ("c.html", "d.html"):
        (tmp_path / name).write_text(other)
    with open_queue(tmp_path / "store") as queue:
        ingestor = Ingestor(queue, ByteTokenizer())
        first = ingestor.ingest_file(tmp_path / "a.html")
        later = ingestor.ingest_file(tmp_path / "b.html")  # against the store
        in_batch = list(ingestor.ingest_files([(tmp_path / "c.html", None), (tmp_path / "d.html", None)]))
    assert (first.status, later.status) == ("ingested", "duplicate")
    assert [(o.status, o.reason) for o in in_batch] == [("ingested", None), ("duplicate", None)]


def test_line_counts_are_written_once_a_batch_and_by_a_batch_that_stored_nothing(tmp_path):
    """The counts of a batch's documents are written after it, in one write; a round whose every
    document was skipped (a near duplicate of a stored page) still writes its counts."""
    rng = np.random.default_rng(8)
    html, _ = page_and_source(rng, "kept")
    (tmp_path / "a.html").write_text(html)
    (tmp_path / "b.html").write_text(html.replace("</body>", "<p>A last line of its own here.</p></body>"))
    lines = DocumentLines.of(extract_file(tmp_path / "a.html").text).candidates()
    assert lines
    with open_queue(tmp_path / "store") as queue:
        ingestor = Ingestor(queue, ByteTokenizer())
        writes = []
        count = queue.add_line_counts
        queue.add_line_counts = lambda counted: (writes.append(len(counted)), count(counted))[1]
        assert ingestor.ingest_file(tmp_path / "a.html").status == "ingested"
        assert queue.line_documents(lines) == dict.fromkeys(lines, 1)
        skipped = ingestor.ingest_file(tmp_path / "b.html")
        assert (skipped.status, skipped.reason) == ("skipped", "near_duplicate")
        assert queue.line_documents(lines) == dict.fromkeys(lines, 2)
    assert writes == [1, 1]


def test_a_new_version_of_a_file_is_never_its_own_near_duplicate(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "notes.html"
    html, _ = page_and_source(rng, "notes")
    with open_queue(tmp_path) as queue:
        ingestor = Ingestor(queue, ByteTokenizer())
        path.write_text(html)
        assert ingestor.ingest_file(path).status == "ingested"
        path.write_text(html.replace("</body>", "<p>One more line at the end of the page.</p></body>"))
        assert ingestor.ingest_file(path).status == "ingested"


@pytest.mark.parametrize("setting", ["drop_boilerplate", "skip_near_duplicates"])
def test_each_rule_has_a_setting_that_turns_it_off(tmp_path, setting):
    rng = np.random.default_rng(5)
    root = tmp_path / "site"
    (root / "_sources").mkdir(parents=True)
    for i in range(LINE_DOCUMENTS + 2):
        (root / f"page{i:02d}.html").write_text(html_page(rng, f"Topic number {i}"))
    html, rst = page_and_source(rng, "bisect")
    (root / "_sources" / "bisect.rst.txt").write_text(rst)
    (root / "zz_bisect.html").write_text(html)
    with open_queue(tmp_path, **{setting: False}) as queue:
        files = [(p, root) for p in sorted(root.rglob("*.*"))]
        outcomes = {o.path: o for o in Ingestor(queue, ByteTokenizer()).ingest_files(files)}
        texts = stored_texts(queue)
    last = str(root / f"page{LINE_DOCUMENTS + 1:02d}.html")
    near = outcomes[str(root / "zz_bisect.html")]
    if setting == "drop_boilerplate":
        assert texts[last] == extract_file(last).text and near.reason == "near_duplicate"
    else:
        assert "Navigation" not in texts[last] and near.status == "ingested"


def test_the_signature_is_a_stable_stored_format():
    text = " ".join(f"word{i % 97} token{i % 13}" for i in range(400))
    sig = signature(text)
    assert sig.shingles == len(set(zip(*(cleaning.shingle_text(text)[k:] for k in range(3)))))
    assert len(sig.to_bytes()) == 4 * cleaning.PERMUTATIONS and len(set(sig.bands())) == cleaning.BANDS
    # the permutations come from a fixed seed: stored signatures stay comparable across versions
    assert hashlib.sha256(sig.to_bytes()).hexdigest()[:16] == STABLE_SIGNATURE
    assert signature("too short to judge") is None


def test_restructured_text_markup_is_unwrapped_for_comparison():
    assert cleaning.shingle_text(":func:`bisect.insort` uses ``key`` and :ref:`the notes <notes-ref>`.\n"
                                 ".. function:: insort(a, x)\n   :noindex:\n") == [
        "bisect", "insort", "uses", "key", "and", "the", "notes", "insort", "a", "x"]


STABLE_SIGNATURE = "7a1124cd373b4c0d"
