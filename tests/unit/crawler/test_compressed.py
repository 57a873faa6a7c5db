"""Single compressed files: a gzip, bzip2 or xz file is its content, typed by its inner name and
that content, read within the limits zipped formats obey; and GNU info files, plain or compressed."""

import bz2
import gzip
import io
import lzma
import os
import random
import tarfile
import zipfile

import pytest

from crawler.ingest import extract
from crawler.ingest.compressed import codec_of, inflate, inner_name
from crawler.ingest.extract import (
    EXTRACTOR_VERSION,
    ISOLATED_KINDS,
    KINDS,
    SKIP_REASONS,
    ExtractLimits,
    Skipped,
    detect_kind,
    extract_file,
    extract_in_process,
    shutdown_pool,
)

COMPRESS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}
SUFFIX = {"gzip": ".gz", "bzip2": ".bz2", "xz": ".xz"}

RST = """Release notes
=============

The *first* paragraph, with ``code`` and a link_.

.. code-block:: python

   print("kept as written")

.. _link: https://example.org/
"""
MARKDOWN = "# Title\n\nSome *emphasis* and `code`.\n\n```sh\nls -l\n```\n"
TEX = "\\documentclass{article}\n\\begin{document}\n\\section{Intro}\nHello, \\emph{world}.\n\\end{document}\n"


def skip_of(path, limits=ExtractLimits()):
    with pytest.raises(Skipped) as caught:
        extract_file(path, limits)
    assert caught.value.reason in SKIP_REASONS
    return caught.value.reason, caught.value.detail


# ---------------------------------------------------------------------------------------------
# Round trips: the kind of the inner name, the text of the content


@pytest.mark.parametrize("name, body, codec, kind", [
    ("notes.rst", RST, "gzip", "text+gzip"),
    ("readme.md", MARKDOWN, "bzip2", "markdown+bzip2"),
    ("x.txt", "plain text, kept byte for byte\n  indented\n", "xz", "text+xz"),
    ("paper.tex", TEX, "bzip2", "text+bzip2"),
    ("page.html", "<html><body><p>Hello <b>there</b></p></body></html>", "gzip", "html+gzip"),
])
def test_a_compressed_file_is_its_content(tmp_path, name, body, codec, kind):
    path = tmp_path / (name + SUFFIX[codec])
    path.write_bytes(COMPRESS[codec](body.encode()))
    result = extract_file(path)
    expected = "Hello there" if kind.startswith("html") else body.rstrip()
    assert (result.kind, result.text) == (kind, expected)
    assert result.size == path.stat().st_size  # the file's own bytes identify the version
    assert detect_kind(path, path.read_bytes()[:8192]) == kind and kind in KINDS


def test_the_content_types_a_file_whose_inner_name_says_nothing(tmp_path):
    html = tmp_path / "download.gz"
    html.write_bytes(gzip.compress(b"<!DOCTYPE html><html><body><h1>Sniffed</h1></body></html>"))
    man = tmp_path / "page.gz"
    man.write_bytes(gzip.compress(b".TH PAGE 7\n.SH NAME\npage \\- a page\n"))
    unnamed = tmp_path / "blob"  # no suffix at all: the gzip signature says what it is
    unnamed.write_bytes(gzip.compress(b"just words\n"))
    assert (extract_file(html).kind, extract_file(html).text) == ("html+gzip", "Sniffed")
    assert (extract_file(man).kind, extract_file(man).text) == ("man+gzip", "PAGE(7)\n\nNAME\npage - a page")
    assert (extract_file(unnamed).kind, extract_file(unnamed).text) == ("text+gzip", "just words")


def test_concatenated_members_are_one_content_and_trailing_junk_is_ignored(tmp_path):
    path = tmp_path / "log.txt.gz"
    path.write_bytes(gzip.compress(b"first part\n") + gzip.compress(b"second part\n") + b"\0\0\0\0")
    assert extract_file(path).text == "first part\nsecond part"
    two = tmp_path / "log.txt.xz"
    two.write_bytes(lzma.compress(b"one\n") + lzma.compress(b"two\n"))
    assert extract_file(two).text == "one\ntwo"


def test_compressed_files_are_read_in_an_extractor_process(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(b"inside\n"))
    shutdown_pool()
    assert "text+gzip" in ISOLATED_KINDS
    assert extract_file(path) == extract_in_process(path)
    assert extract._shared_pool is not None and extract._shared_pool.started == 1
    shutdown_pool()


def test_a_compressed_document_is_parsed_as_its_kind(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", '<w:document xmlns:w="http://schemas.openxmlformats.org/'
                         'wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>Compressed page</w:t></w:r>'
                         '</w:p></w:body></w:document>')
    path = tmp_path / "letter.docx.xz"
    path.write_bytes(lzma.compress(buffer.getvalue()))
    assert (extract_file(path).kind, extract_file(path).text) == ("docx+xz", "Compressed page")


# ---------------------------------------------------------------------------------------------
# Skips: bombs, truncation, binary content, nothing inside


def test_a_bomb_by_ratio_is_refused(tmp_path):
    path = tmp_path / "zeros.txt.gz"
    path.write_bytes(gzip.compress(b"a" * (8 * 2**20)))  # 8 MiB in about 8 KB: ~1000x
    reason, detail = skip_of(path)
    assert reason == "decompression_bomb" and "max_compression_ratio (200)" in detail


def test_a_bomb_by_size_is_refused(tmp_path):
    rng = random.Random(7)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(6)) for _ in range(300)]
    text = b" ".join(rng.choice(words) for _ in range(60_000))  # ~420 KB of text, ~4x smaller
    path = tmp_path / "words.txt.bz2"
    path.write_bytes(bz2.compress(text))
    assert len(text) / path.stat().st_size < 200  # no ratio bomb: the size limit decides
    reason, detail = skip_of(path, ExtractLimits(max_uncompressed_bytes=100_000))
    assert (reason, detail) == ("decompression_bomb",
                                "bzip2 stream inflates past max_uncompressed_bytes (100000)")
    assert extract_file(path, ExtractLimits(max_uncompressed_bytes=1_000_000)).text == text.decode()


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz"])
def test_a_truncated_stream_is_corrupt(tmp_path, codec):
    rng = random.Random(3)
    text = "".join(rng.choice("abcdefgh \n") for _ in range(50_000)).encode()
    whole = COMPRESS[codec](text)
    path = tmp_path / ("cut.txt" + SUFFIX[codec])
    path.write_bytes(whole[: len(whole) // 2])
    reason, detail = skip_of(path)
    assert reason == "corrupt" and detail.startswith(codec)
    assert "corrupt" in SKIP_REASONS


def test_a_damaged_stream_is_corrupt(tmp_path):
    data = bytearray(gzip.compress(b"some text that will not survive\n" * 50))
    data[-8] ^= 0xFF  # the CRC-32 in the trailer
    path = tmp_path / "bad.txt.gz"
    path.write_bytes(bytes(data))
    assert skip_of(path)[0] == "corrupt"


def test_binary_content_is_binary(tmp_path):
    junk = tmp_path / "junk.gz"
    junk.write_bytes(gzip.compress(bytes(random.Random(1).randrange(256) for _ in range(5000)) + b"\0"))
    assert skip_of(junk) == ("binary", "NUL bytes in the first 8192 bytes, inside a gzip stream")
    twice = tmp_path / "twice.txt.gz"  # a stream inside a stream is no document
    twice.write_bytes(gzip.compress(gzip.compress(b"hello")))
    assert skip_of(twice) == ("binary", "gzip archive, inside a gzip stream")
    buffer = io.BytesIO()  # a tar inside one is an archive of documents (tests/unit/crawler/test_archives.py)
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        member = tarfile.TarInfo("a.txt")
        member.size = 5
        archive.addfile(member, io.BytesIO(b"hello"))
    tarball = tmp_path / "bundle.tar.gz"
    tarball.write_bytes(buffer.getvalue())
    assert [(m.name, m.extraction.text) for m in extract_file(tarball).members] == [("a.txt", "hello")]
    image = tmp_path / "icon.png.xz"  # the inner name says png; the content agrees
    image.write_bytes(lzma.compress(b"\x89PNG\r\n\x1a\n" + b"\0" * 100))
    assert skip_of(image) == ("binary", "png image, inside a xz stream")


def test_an_empty_stream_is_empty(tmp_path):
    path = tmp_path / "nothing.txt.gz"
    path.write_bytes(gzip.compress(b""))
    assert skip_of(path) == ("empty", "a gzip stream of 0 bytes")
    spaces = tmp_path / "spaces.txt.xz"
    spaces.write_bytes(lzma.compress(b"  \n\n "))
    assert skip_of(spaces)[0] == "empty"


# ---------------------------------------------------------------------------------------------
# The pieces


def test_codecs_names_and_limits_of_the_module():
    assert codec_of(gzip.compress(b"x")) == "gzip" and codec_of(lzma.compress(b"x")) == "xz"
    assert codec_of(bz2.compress(b"x")) == "bzip2" and codec_of(b"BZh is how this text starts") is None
    assert inner_name("/in/ls.1.gz", "gzip") == "/in/ls.1" and inner_name("a.TXT.XZ", "xz") == "a.TXT"
    assert inner_name("ls.1", "gzip") == "ls.1" and inner_name("a.bz2", "gzip") == "a.bz2"
    limits = ExtractLimits(max_uncompressed_bytes=10)
    assert inflate(gzip.compress(b"0123456789"), "gzip", limits) == b"0123456789"
    with pytest.raises(Skipped, match="decompression_bomb"):
        inflate(gzip.compress(b"0123456789A"), "gzip", limits)


def test_inflating_checks_the_clock_between_chunks():
    calls = []

    def check_time():
        calls.append(1)
        if len(calls) == 2:
            raise Skipped("timeout", "over the budget")

    data = lzma.compress(os.urandom(3 * 2**20))  # incompressible: three 1 MiB chunks
    with pytest.raises(Skipped, match="timeout"):
        inflate(data, "xz", ExtractLimits(), check_time)
    assert len(calls) == 2


def test_the_extractor_has_a_version_that_names_this_one():
    assert isinstance(EXTRACTOR_VERSION, int) and EXTRACTOR_VERSION >= 2


# ---------------------------------------------------------------------------------------------
# GNU info files

INFO = ("This is demo.info, produced by makeinfo version 7.0 from demo.texi.\n\n"
        "\x1f\nFile: demo.info,  Node: Top,  Next: Index,  Up: (dir)\n\n"
        "Demo\n****\n\nA manual, with a menu:\n\n* Menu:\n\n* Index::\n\n"
        "\x1f\nFile: demo.info,  Node: Index,  Prev: Top,  Up: Top\n\n"
        "Index\n*****\n\n\x00\x08[index\x00\x08]\n* Menu:\n\n* demo:  Top.   (line 6)\n\n"
        "\x1f\nTag Table:\nNode: Top\x7f68\nNode: Index\x7f190\n\x1f\nEnd Tag Table\n"
        "\n\x1f\nLocal Variables:\ncoding: utf-8\nEnd:\n")
INFO_TEXT = ("This is demo.info, produced by makeinfo version 7.0 from demo.texi.\n\n"
             "File: demo.info,  Node: Top,  Next: Index,  Up: (dir)\n\n"
             "Demo\n****\n\nA manual, with a menu:\n\n* Menu:\n\n* Index::\n\n"
             "File: demo.info,  Node: Index,  Prev: Top,  Up: Top\n\n"
             "Index\n*****\n\n\n* Menu:\n\n* demo:  Top.   (line 6)").replace("\n\n\n", "\n\n")


def test_an_info_file_is_text_without_its_markers_and_tables(tmp_path):
    plain = tmp_path / "demo.info"
    plain.write_bytes(INFO.encode())
    assert (extract_file(plain).kind, extract_file(plain).text) == ("info", INFO_TEXT)
    packed = tmp_path / "demo.info-2.gz"  # a part of a split manual, compressed
    packed.write_bytes(gzip.compress(INFO.encode()))
    assert (extract_file(packed).kind, extract_file(packed).text) == ("info+gzip", INFO_TEXT)

    # what only looks like it stays text
    report = tmp_path / "report.txt"
    report.write_text("This is our report, produced by the team.\n\n\n\nEnd.\n")
    assert (extract_file(report).kind, extract_file(report).text) == ("text", report.read_text().rstrip())
    module = tmp_path / "module.info"  # not makeinfo's: a settings file that shares the suffix
    module.write_text("name = Example\ncore = 7.x\n")
    assert (extract_file(module).kind, extract_file(module).text) == ("text", "name = Example\ncore = 7.x")
