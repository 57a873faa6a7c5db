"""Tar and zip archives of documents: each member a document of its own, `ARCHIVE!member`, read
as a file of that name would be, within one budget for the whole archive; a rewritten archive
supersedes its members as a rewritten file does. Archives are built in tmp_path with tarfile and
zipfile; members are extracted in this process (extract_in_process) except where the extractor
process's answer is the point."""

from __future__ import annotations

import gzip
import io
import json
import os
import queue as queue_module
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from crawler.cli.main import main
from crawler.config import Config
from crawler.ingest.archives import MAX_ARCHIVE_DEPTH
from crawler.ingest.data import load_corpus
from crawler.ingest.extract import (
    EXTRACTOR_VERSION,
    ArchiveExtraction,
    Extraction,
    ExtractLimits,
    Skipped,
    detect_kind,
    extract_file,
    extract_in_process,
)
from crawler.ingest.pipeline import Ingestor
from crawler.ingest.tokenizer import ByteTokenizer
from storage import CorpusQueue, StorageConfig, open_database

MAN = b".TH LS 1\n.SH NAME\nls \\- list directory contents\n.SH DESCRIPTION\nList information about files.\n"
MEMBERS = {
    "notes.txt": b"plain words, kept byte for byte\n  indented\n",
    "./docs/readme.md": b"# Title\n\nSome *emphasis* and `code`.\n",
    "docs/page.html": b"<html><body><nav>menu</nav><main><p>Hello <b>there</b></p></main></body></html>",
    "man/ls.1.gz": gzip.compress(MAN),
}
STORED_NAMES = ["notes.txt", "docs/readme.md", "docs/page.html", "man/ls.1.gz"]  # "./" goes


def tar_bytes(members: dict[str, bytes], mode: str = "w", mtime: int = 1_000_000) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.GNU_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, (2020, 1, 2, 3, 4, 6))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


ARCHIVES = {  # name -> (bytes of MEMBERS as that archive, its kind)
    "docs.tar": (lambda m: tar_bytes(m), "tar"),
    "docs.tar.gz": (lambda m: tar_bytes(m, "w:gz"), "tar+gzip"),
    "docs.tgz": (lambda m: tar_bytes(m, "w:gz"), "tar+gzip"),
    "docs.tar.bz2": (lambda m: tar_bytes(m, "w:bz2"), "tar+bzip2"),
    "docs.tar.xz": (lambda m: tar_bytes(m, "w:xz"), "tar+xz"),
    "docs.zip": (zip_bytes, "zip"),
    "bundle": (lambda m: tar_bytes(m, "w:gz"), "tar+gzip"),  # no suffix: the content says what it is
}


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(archive: ArchiveExtraction) -> list[str]:
    return [member.name for member in archive.members]


def member(archive: ArchiveExtraction, name: str):
    return next(m for m in archive.members if m.name == name)


@pytest.fixture
def queue(tmp_path):
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}"))) as opened:
        yield opened


def stored_text(queue: CorpusQueue, path: str) -> str:
    """The text of a path's newest version, decoded from its tokens as `show` decodes it."""
    row = queue.document_versions(paths=[path])[-1]
    assert row.status == "queued", row
    return ByteTokenizer().decode(queue.read_tokens(row.stream_start, row.stream_end)).decode()


# ---------------------------------------------------------------------------------------------
# Each member is a file


@pytest.mark.parametrize("name", list(ARCHIVES))
def test_each_member_is_extracted_as_the_file_would_be(tmp_path, name):
    make, kind = ARCHIVES[name]
    path = write(tmp_path / name, make(MEMBERS))
    assert detect_kind(path, path.read_bytes()[:8192]) in (kind, "text+bzip2")  # bzip2: a first guess from the head
    archive = extract_in_process(path)
    assert isinstance(archive, ArchiveExtraction)
    assert (archive.kind, archive.size, archive.truncated) == (kind, path.stat().st_size, "")
    assert names(archive) == STORED_NAMES
    for stored, (raw_name, data) in zip(STORED_NAMES, MEMBERS.items()):
        single = extract_in_process(write(tmp_path / "single" / stored, data))
        got = member(archive, stored)
        assert got.extraction == Extraction(single.text, single.kind, single.size, got.mtime, single.content_hash)
        assert got.content_hash == single.content_hash and got.reason is None
    assert member(archive, "man/ls.1.gz").extraction.kind == "man+gzip"
    assert member(archive, "docs/page.html").extraction.text == "Hello there"


def test_the_extractor_process_answers_as_this_process_does(tmp_path):
    members = dict(MEMBERS) | {"ünïcode.txt": "Grüße, naïve café ✓\n".encode(), "blob.bin": b"\0\1\2" * 10}
    path = write(tmp_path / "docs.tar.gz", tar_bytes(members, "w:gz"))
    through_child = extract_file(path)  # an archive is parsed in an extractor process
    assert through_child == extract_in_process(path)
    assert member(through_child, "ünïcode.txt").extraction.text == "Grüße, naïve café ✓"
    assert member(through_child, "blob.bin").reason == "binary"


def test_members_keep_their_own_skips(tmp_path):
    members = {"a.txt": b"words", "blob.bin": b"\x89PNG\r\n\x1a\n" + bytes(100), "empty.txt": b"",
               "spaces.md": b"  \n\n", "big.txt": b"x" * 5000, "bad.json": b"{nope",
               "cut.txt.gz": gzip.compress(bytes(range(32, 127)) * 20)[:60]}
    path = write(tmp_path / "mixed.zip", zip_bytes(members))
    archive = extract_in_process(path, ExtractLimits(max_file_bytes=4000))
    verdicts = {m.name: (m.reason, m.failed) for m in archive.members}
    assert verdicts == {"a.txt": (None, False), "blob.bin": ("binary", False), "empty.txt": ("empty", False),
                        "spaces.md": ("empty", False), "big.txt": ("too_large", False), "bad.json": (None, True),
                        "cut.txt.gz": ("corrupt", False)}
    assert member(archive, "big.txt").content_hash is None  # over max_file_bytes: never read
    assert member(archive, "bad.json").detail.startswith("invalid JSON")


def test_a_name_given_twice_is_its_last_entry(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:  # a tar appended to: `tar rf`
        for name, data in (("a.txt", b"first"), ("b.txt", b"other"), ("a.txt", b"second")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    archive = extract_in_process(write(tmp_path / "twice.tar", buffer.getvalue()))
    assert [(m.name, m.extraction.text) for m in archive.members] == [("b.txt", "other"), ("a.txt", "second")]


# ---------------------------------------------------------------------------------------------
# What is never read: links, devices, names that leave the archive


def test_links_devices_and_names_leaving_the_archive_are_never_read(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        def add(name: str, data: bytes = b"", **fields) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            archive.addfile(info, io.BytesIO(data) if data else None)

        add("sub", type=tarfile.DIRTYPE)
        add("sub/a.txt", b"inside")
        add("../evil.txt", b"leaves the archive")
        add("/etc/passwd", b"root:x:0:0")
        add("sub/../../up.txt", b"leaves too")
        add("link", type=tarfile.SYMTYPE, linkname="/etc/shadow")
        add("hard", type=tarfile.LNKTYPE, linkname="sub/a.txt")
        add("fifo", type=tarfile.FIFOTYPE)
        add("tty", type=tarfile.CHRTYPE, devmajor=4, devminor=1)
        add("caf\udce9.txt", b"a name that is not UTF-8")
    archive = extract_in_process(write(tmp_path / "odd.tar", buffer.getvalue()))
    verdicts = {m.name: m.reason for m in archive.members}
    assert verdicts == {"sub/a.txt": None, "../evil.txt": "unsupported", "/etc/passwd": "unsupported",
                        "sub/../../up.txt": "unsupported", "link": "unsupported", "hard": "unsupported",
                        "fifo": "unsupported", "tty": "unsupported", "caf\\xe9.txt": None}
    for name in ("../evil.txt", "/etc/passwd", "sub/../../up.txt", "link", "hard"):
        assert member(archive, name).content_hash is None  # never read
    assert "links are not followed" in member(archive, "link").detail
    assert "'..'" in member(archive, "../evil.txt").detail and "absolute" in member(archive, "/etc/passwd").detail


def test_a_zip_with_links_and_names_leaving_it(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("dir/", b"")
        archive.writestr("dir/a.txt", b"inside")
        archive.writestr("../../evil.txt", b"leaves the archive")
        link = zipfile.ZipInfo("link")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, b"/etc/shadow")
    archive = extract_in_process(write(tmp_path / "odd.zip", buffer.getvalue()))
    assert {m.name: m.reason for m in archive.members} == {"dir/a.txt": None, "../../evil.txt": "unsupported",
                                                           "link": "unsupported"}


# ---------------------------------------------------------------------------------------------
# Bombs: one budget for the whole archive


def test_a_member_inflating_past_the_limit_refuses_the_archive(tmp_path):
    zeros = write(tmp_path / "zeros.zip", zip_bytes({"a.txt": b"fine", "zeros.txt": bytes(8 * 2**20)}))
    with pytest.raises(Skipped) as caught:
        extract_in_process(zeros)
    assert caught.value.reason == "decompression_bomb"
    # past max_uncompressed_bytes in all, though each member is small
    many = write(tmp_path / "many.zip", zip_bytes({f"{i}.txt": b"%d words " % i * 30 for i in range(10)}))
    with pytest.raises(Skipped, match="decompression_bomb") as caught:
        extract_in_process(many, ExtractLimits(max_uncompressed_bytes=1000))
    assert "max_uncompressed_bytes 1000" in caught.value.detail
    # the stream around a tar is inflated under the same limits
    packed = write(tmp_path / "docs.tar.gz", tar_bytes(MEMBERS, "w:gz"))
    with pytest.raises(Skipped, match="decompression_bomb"):
        extract_in_process(packed, ExtractLimits(max_uncompressed_bytes=5000))
    # a compressed member inflating past the ratio: the archive holds a bomb
    bomb = write(tmp_path / "bomb.tar", tar_bytes({"a.txt": b"fine", "big.txt.gz": gzip.compress(b"a" * 8 * 2**20)}))
    with pytest.raises(Skipped, match="decompression_bomb"):
        extract_in_process(bomb)


def test_too_many_members_refuse_the_archive_nested_ones_counted(tmp_path):
    limits = ExtractLimits(max_archive_members=5)
    for name, data in (("many.tar", tar_bytes({f"{i}.txt": b"x" for i in range(6)})),
                       ("many.zip", zip_bytes({f"{i}.txt": b"x" for i in range(6)})),
                       ("nested.tar", tar_bytes({"a.txt": b"x", "b.txt": b"y",
                                                 "inner.zip": zip_bytes({f"{i}.txt": b"z" for i in range(4)})}))):
        with pytest.raises(Skipped) as caught:
            extract_in_process(write(tmp_path / name, data), limits)
        assert caught.value.reason == "decompression_bomb" and "max_archive_members (5)" in caught.value.detail
    assert len(extract_in_process(write(tmp_path / "five.tar", tar_bytes({f"{i}.txt": b"x" for i in range(5)})),
                                  limits).members) == 5
    with pytest.raises(Exception, match=r"max_archive_members \(0\) must be >= 1"):
        ExtractLimits(max_archive_members=0).validate()


def test_the_time_budget_is_the_whole_archives(tmp_path):
    path = write(tmp_path / "docs.tar", tar_bytes({f"{i}.txt": b"words" for i in range(20)}))
    ticks = iter(range(10**6))  # a clock that moves one second per look
    with pytest.raises(Skipped, match="timeout"):
        extract_in_process(path, ExtractLimits(time_budget_seconds=5), clock=lambda: float(next(ticks)))


# ---------------------------------------------------------------------------------------------
# Nesting, damage, and zips that are documents


def test_nested_archives_are_read_two_deep(tmp_path):
    deepest = tar_bytes({"x.txt": b"three deep"}, "w:gz")
    inner = zip_bytes({"b.txt": b"two deep", "deep.tar.gz": deepest, "ls.1.gz": gzip.compress(MAN)})
    outer = write(tmp_path / "outer.tar", tar_bytes({"a.txt": b"one deep", "inner.zip": inner}))
    archive = extract_in_process(outer)
    assert MAX_ARCHIVE_DEPTH == 2
    assert names(archive) == ["a.txt", "inner.zip!b.txt", "inner.zip!deep.tar.gz", "inner.zip!ls.1.gz"]
    assert member(archive, "inner.zip!b.txt").extraction.text == "two deep"
    assert member(archive, "inner.zip!ls.1.gz").extraction.kind == "man+gzip"
    deep = member(archive, "inner.zip!deep.tar.gz")
    assert deep.reason == "unsupported" and "archives are read 2 deep" in deep.detail


def test_a_tar_cut_short_keeps_the_members_read_whole(tmp_path):
    whole = tar_bytes({"a.txt": b"first member " * 40, "b.txt": b"second member " * 40, "c.txt": b"third " * 40})
    at_a_header = write(tmp_path / "cut.tar", whole[:1536])  # a.txt's header and data, then nothing
    archive = extract_in_process(at_a_header)
    assert names(archive) == ["a.txt"] and "no end-of-archive marker" in archive.truncated
    mid_data = write(tmp_path / "cut2.tar", whole[:2200])  # b.txt's data is cut
    archive = extract_in_process(mid_data)
    assert names(archive) == ["a.txt"] and "unexpected end of data" in archive.truncated
    assert member(archive, "a.txt").extraction.text == ("first member " * 40).rstrip()


@pytest.mark.parametrize("name, data", [
    ("cut.zip", zip_bytes(MEMBERS)[:300]),  # its central directory is at the end: gone
    ("cut.tar.gz", tar_bytes(MEMBERS, "w:gz")[:400]),  # the stream around it ends early
    ("head.tar", tar_bytes(MEMBERS)[:300]),  # not even the first header
])
def test_an_archive_that_cannot_be_opened_is_corrupt(tmp_path, name, data):
    path = write(tmp_path / name, data)
    if name == "cut.zip":  # what is left still starts with a zip's signature
        assert detect_kind(path, data) == "zip"
    with pytest.raises(Skipped) as caught:
        extract_in_process(path)
    assert caught.value.reason == "corrupt"


def test_zip_documents_and_packages_stay_one_file(tmp_path):
    document = ('<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
                "<w:p><w:r><w:t>One letter</w:t></w:r></w:p></w:body></w:document>")
    ooxml = {"[Content_Types].xml": b"<Types/>", "word/document.xml": document.encode()}
    docx = write(tmp_path / "letter.docx", zip_bytes(ooxml))
    assert (extract_file(docx).kind, extract_file(docx).text) == ("docx", "One letter")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", "<container/>")
    epub = write(tmp_path / "book.zip", buffer.getvalue())  # named .zip: its first member says EPUB
    assert detect_kind(epub, epub.read_bytes()[:8192]) == "epub"
    unnamed = write(tmp_path / "report", zip_bytes(ooxml))  # OOXML by its first member, whatever its name
    assert detect_kind(unnamed, unnamed.read_bytes()[:8192]) == "binary"
    assert detect_kind(tmp_path / "sheet.xlsx", zip_bytes({"a.xml": b"<a/>"})) == "unsupported"
    assert detect_kind(tmp_path / "lib.jar", zip_bytes({"a.txt": b"x"})) == "binary"
    assert detect_kind(tmp_path / "lib.zip", zip_bytes({"META-INF/MANIFEST.MF": b"x"})) == "binary"
    assert detect_kind(tmp_path / "docs.zip", zip_bytes({"a.txt": b"x"})) == "zip"


# ---------------------------------------------------------------------------------------------
# The pipeline: one outcome per member, then the archive's own


def test_an_archive_ingests_each_member_as_its_own_document(tmp_path, queue):
    inbox = tmp_path / "inbox"
    path = write(inbox / "docs.tar.gz", tar_bytes(MEMBERS | {"blob.bin": b"\0\1\2"}, "w:gz"))
    outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(path, inbox)]))
    assert {(o.path, o.status, o.reason) for o in outcomes[:-1]} == (
        {(f"{path}!{name}", "ingested", None) for name in STORED_NAMES} | {(f"{path}!blob.bin", "skipped", "binary")})
    last = outcomes[-1]
    assert (last.path, last.status, last.reason) == (str(path), "skipped", "archive")
    assert last.detail == "a tar+gzip archive of 5 documents, each stored as ARCHIVE!member: 4 ingested, 1 skipped"
    for name, data in zip(STORED_NAMES, MEMBERS.values()):
        assert stored_text(queue, f"{path}!{name}") == extract_file(write(tmp_path / "one" / name, data)).text
    row = queue.document_versions(paths=[str(path)])[0]
    assert (row.status, row.reason, row.extractor_version) == ("skipped", "archive", EXTRACTOR_VERSION)

    # unchanged (path, size, mtime): one outcome, and nothing is read
    again = list(Ingestor(queue, ByteTokenizer()).ingest_files([(path, inbox)]))
    assert [(o.path, o.status) for o in again] == [(str(path), "unchanged")]
    assert Ingestor(queue, ByteTokenizer()).ingest_file(path).status == "unchanged"


def test_ingest_file_returns_the_archives_own_outcome(tmp_path, queue):
    path = write(tmp_path / "docs.zip", zip_bytes({"a.txt": b"alpha", "b.txt": b"beta"}))
    outcome = Ingestor(queue, ByteTokenizer()).ingest_file(path)
    assert (outcome.path, outcome.reason) == (str(path), "archive")
    assert stored_text(queue, f"{path}!b.txt") == "beta"  # every member done before it returns


def test_a_rewritten_archive_supersedes_its_members(tmp_path, queue):
    path = tmp_path / "docs.tar"
    first = {"same.txt": b"never changes " * 10, "edited.md": b"# draft one\n" * 10,
             "gone.txt": b"removed in the rewrite " * 10, "bin": b"\0\1"}
    write(path, tar_bytes(first))  # every member's mtime the same in both: only the bytes tell
    ingestor = Ingestor(queue, ByteTokenizer())
    list(ingestor.ingest_files([(path, tmp_path)]))
    gone_tokens = queue.document_versions(paths=[f"{path}!gone.txt"])[0].token_count
    edited_tokens = queue.document_versions(paths=[f"{path}!edited.md"])[0].token_count

    second = {"same.txt": first["same.txt"], "edited.md": b"# draft two\n" * 10, "bin": b"\0\1",
              "new.txt": b"a new member"}
    assert len(second["edited.md"]) == len(first["edited.md"])  # same size and mtime, other bytes
    write(path, tar_bytes(second))
    os.utime(path, (2_000_000, 2_000_000))
    outcomes = {o.path: o for o in ingestor.ingest_files([(path, tmp_path)])}
    assert {p: (o.status, o.reason) for p, o in outcomes.items()} == {
        f"{path}!same.txt": ("unchanged", None), f"{path}!bin": ("unchanged", None),
        f"{path}!edited.md": ("ingested", None), f"{path}!new.txt": ("ingested", None),
        f"{path}!gone.txt": ("skipped", "removed"), str(path): ("skipped", "archive")}
    assert outcomes[f"{path}!edited.md"].withdrawn == edited_tokens  # superseded, as a rewritten file
    assert outcomes[f"{path}!gone.txt"].withdrawn == gone_tokens
    assert outcomes[str(path)].detail.endswith("2 ingested, 2 unchanged; 1 no longer in it, withdrawn")
    assert queue.stats().tokens_withdrawn == gone_tokens + edited_tokens
    assert [r.version for r in queue.document_versions(paths=[f"{path}!same.txt"])] == [1]  # not stored again
    assert stored_text(queue, f"{path}!edited.md") == ("# draft two\n" * 10).rstrip()
    gone = queue.document_versions(paths=[f"{path}!gone.txt"])
    assert [(r.status, r.reason) for r in gone] == [("queued", None), ("skipped", "removed")]

    # a removed member that comes back is a new document again; a removal is not repeated
    write(path, tar_bytes(first))
    os.utime(path, (3_000_000, 3_000_000))
    outcomes = {o.path: o for o in ingestor.ingest_files([(path, tmp_path)])}
    assert outcomes[f"{path}!gone.txt"].status == "duplicate"  # its bytes are still in the stream
    assert outcomes[f"{path}!new.txt"].reason == "removed"
    assert outcomes[f"{path}!edited.md"].status == "duplicate"


def test_only_a_whole_read_removes_members(tmp_path, queue):
    path = tmp_path / "docs.tar"
    whole = tar_bytes({"a.txt": b"first member " * 40, "b.txt": b"second member " * 40})
    write(path, whole)
    ingestor = Ingestor(queue, ByteTokenizer())
    list(ingestor.ingest_files([(path, tmp_path)]))
    write(path, whole[:1536])  # rewritten, cut short after a.txt
    outcomes = list(ingestor.ingest_files([(path, tmp_path)]))
    assert [(o.path, o.status, o.reason) for o in outcomes] == [(f"{path}!a.txt", "unchanged", None),
                                                                (str(path), "skipped", "corrupt")]
    assert "read in part (tar: no end-of-archive marker" in outcomes[-1].detail
    assert queue.stats().tokens_withdrawn == 0  # b.txt may lie past the cut: its text stays
    write(path, b"no archive any more\n")  # nor does a rewrite into something else remove them
    assert [o.status for o in ingestor.ingest_files([(path, tmp_path)])] == ["ingested"]
    assert queue.stats().tokens_withdrawn == 0


def test_a_cut_tar_stores_what_was_read_whole(tmp_path, queue):
    path = write(tmp_path / "cut.tar", tar_bytes({"a.txt": b"first member " * 40, "b.txt": b"second " * 40})[:1536])
    outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(path, tmp_path)]))
    assert [(o.path, o.status, o.reason) for o in outcomes] == [(f"{path}!a.txt", "ingested", None),
                                                                (str(path), "skipped", "corrupt")]
    assert stored_text(queue, f"{path}!a.txt") == ("first member " * 40).rstrip()


def test_an_archive_without_files_and_a_bomb_are_the_archives_skips(tmp_path, queue):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("only/a/folder")
        info.type = tarfile.DIRTYPE
        archive.addfile(info)
    empty = write(tmp_path / "folders.tar", buffer.getvalue())
    bomb = write(tmp_path / "bomb.zip", zip_bytes({"zeros.txt": bytes(8 * 2**20)}))
    outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(empty, tmp_path), (bomb, tmp_path)]))
    assert [(o.path, o.status, o.reason) for o in outcomes] == [(str(empty), "skipped", "empty"),
                                                                (str(bomb), "skipped", "decompression_bomb")]


def test_an_archive_skipped_as_binary_by_an_older_extractor_is_read_now(tmp_path, queue):
    path = write(tmp_path / "docs.tar.gz", tar_bytes({"a.txt": b"alpha"}, "w:gz"))
    st = path.stat()
    queue.record_skip(source_path=str(path), reason="binary", detail="tar archive, inside a gzip stream",
                      size=st.st_size, mtime=st.st_mtime, extractor_version=3)
    outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files([(path, tmp_path)]))
    assert [(o.path, o.status) for o in outcomes] == [(f"{path}!a.txt", "ingested"), (str(path), "skipped")]


def test_the_offline_corpus_reads_an_archives_members_as_ingest_stores_them(tmp_path, queue):
    path = write(tmp_path / "docs.zip", zip_bytes(MEMBERS | {"blob.bin": b"\0\1"}))
    list(Ingestor(queue, ByteTokenizer()).ingest_files([(path, tmp_path)]))
    corpus = load_corpus([path])
    np.testing.assert_array_equal(corpus.tokens, queue.read_tokens(0, queue.stream_end()))
    assert corpus.files == [Path(f"{path}!{name}") for name in STORED_NAMES]
    assert [(str(s.path), s.reason) for s in corpus.skipped] == [(f"{path}!blob.bin", "binary")]


# ---------------------------------------------------------------------------------------------
# The daemon and the commands


def test_the_daemons_ingest_worker_logs_each_member_then_the_archive(tmp_path, queue):
    from crawler.service.ingest_worker import IngestWorker

    inbox = tmp_path / "inbox"
    path = write(inbox / "docs.zip", zip_bytes({"a.txt": b"alpha", "b.bin": b"\0\1"}))
    pending: queue_module.Queue = queue_module.Queue()
    pending.put((path, inbox))
    worker = IngestWorker(Config(state_dir=tmp_path / "state"), queue, ByteTokenizer(), pending, structlog.get_logger())
    worker.initialize()
    with capture_logs() as logs:
        worker.run_once(0.0)
    events = [(e["event"], e["path"], e.get("reason")) for e in logs if e["event"].startswith("file_")]
    assert sorted(events[:2]) == [("file_ingested", f"{path}!a.txt", None), ("file_skipped", f"{path}!b.bin", "binary")]
    assert events[2:] == [("file_skipped", str(path), "archive")]  # the file's terminal event, last
    assert worker.counts == {"ingested": 1, "duplicate": 0, "skipped": 2, "failed": 0, "unchanged": 0}
    assert worker.held == [] and worker._in_flight == []  # the archive is done, nothing handed back


def test_after_ingest_move_moves_the_archive_once_its_members_are_stored(tmp_path, queue):
    from dataclasses import replace

    from crawler.config import DaemonConfig
    from crawler.service.ingest_worker import IngestWorker

    inbox = tmp_path / "inbox"
    path = write(inbox / "docs.zip", zip_bytes({"a.txt": b"alpha", "b.txt": b"beta"}))
    pending: queue_module.Queue = queue_module.Queue()
    pending.put((path, inbox))
    config = Config(state_dir=tmp_path / "state", daemon=replace(DaemonConfig(), after_ingest="move"))
    worker = IngestWorker(config, queue, ByteTokenizer(), pending, structlog.get_logger())
    worker.initialize()
    with capture_logs() as logs:
        worker.run_once(0.0)
    assert [e for e in logs if e["event"] == "file_move_failed"] == []  # no member is moved on its own
    assert not path.exists()
    assert (tmp_path / "state" / "processed" / "inbox" / "docs.zip").read_bytes() == zip_bytes(
        {"a.txt": b"alpha", "b.txt": b"beta"})


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_show_a_member_and_forget_the_archive(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"
    inbox = tmp_path / "inbox"
    write(inbox / "docs.tar", tar_bytes({"a.txt": b"alpha words", "sub/b.md": b"# beta"}))
    write(inbox / "notes.txt", b"a file beside the archive")
    assert run(capsys, "ingest", inbox, "--state-dir", state)[0] == 0

    assert run(capsys, "show", "inbox/docs.tar!sub/b.md", "--state-dir", state) == (0, "# beta\n", "")
    status, out, _ = run(capsys, "show", "inbox/docs.tar", "--state-dir", state)
    assert status == 1 and "archive" in out

    status, out, _ = run(capsys, "forget", "inbox/docs.tar", "--json", "--state-dir", state)
    report = json.loads(out)
    assert status == 0 and report["paths"] == [f"{inbox}/docs.tar!a.txt", f"{inbox}/docs.tar!sub/b.md"]
    assert report["not_found"] == []
    status, out, _ = run(capsys, "show", "inbox/docs.tar!a.txt", "--state-dir", state)
    assert status == 1 and "forgotten" in out
    assert run(capsys, "show", "inbox/notes.txt", "--state-dir", state)[:2] == (0, "a file beside the archive\n")
    # the archive unchanged: not read again; its members stay forgotten
    status, out, _ = run(capsys, "ingest", inbox, "--json", "--state-dir", state)
    assert json.loads(out)["files"] == {"unchanged": 2}
