"""Extraction: every kind on small real files written here, and every skip reason from a real file."""

import hashlib
import json
import os
import random
import signal
import zipfile

import pytest
from pypdf import PdfReader, PdfWriter

from crawler import ConfigError
from crawler.ingest import extract
from crawler.ingest.extract import (
    KINDS,
    SKIP_REASONS,
    ExtractionFailed,
    ExtractLimits,
    Skipped,
    binary_mark,
    decode_text,
    detect_kind,
    extract_file,
    extract_in_process,
    shutdown_pool,
)

# ---------------------------------------------------------------------------------------------
# Sample documents, written by hand


def write_pdf(path, pages):
    """A minimal valid PDF: catalog, page tree, Helvetica, one content stream per page, and an
    xref table with the true byte offset of every object."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
                       f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
DOCUMENT_XML = f"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document {W}><w:body>
<w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr><w:r><w:t>First</w:t></w:r>
<w:r><w:tab/><w:t xml:space="preserve">para </w:t></w:r><w:r><w:t>graph &amp; more</w:t></w:r></w:p>
<w:p><w:r><w:t>Line one</w:t><w:br/><w:t>Line two</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>cell</w:t></w:r></w:p></w:tc></w:tr></w:tbl>
<w:sectPr/></w:body></w:document>"""


def write_docx(path, document_xml=DOCUMENT_XML, extra=()):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns='
                         '"http://schemas.openxmlformats.org/package/2006/content-types"/>')
        archive.writestr("word/document.xml", document_xml)
        for name, data in extra:
            archive.writestr(name, data)
    return path


CONTAINER_XML = """<?xml version="1.0"?>
<container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">
<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/></rootfiles>
</container>"""
OPF_XML = """<?xml version="1.0" encoding="UTF-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
<metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>Sample</dc:title></metadata>
<manifest>
<item id="one" href="text/chapter%201.xhtml" media-type="application/xhtml+xml"/>
<item id="two" href="text/chapter2.xhtml" media-type="application/xhtml+xml"/>
<item id="css" href="style.css" media-type="text/css"/>
</manifest>
<spine><itemref idref="two"/><itemref idref="css"/><itemref idref="one"/></spine>
</package>"""


def chapter(title, body):
    return (f'<?xml version="1.0" encoding="UTF-8"?><!DOCTYPE html><html xmlns="http://www.w3.org/1999/xhtml">'
            f"<head><title>{title}</title><style>p {{ color: red }}</style></head>"
            f"<body><h1>{title}</h1><p>{body}</p><script>alert(1)</script></body></html>")


def write_epub(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        archive.writestr("META-INF/container.xml", CONTAINER_XML, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("OEBPS/content.opf", OPF_XML, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("OEBPS/text/chapter 1.xhtml", chapter("Chapter One", "It was a dark &amp; stormy night."))
        archive.writestr("OEBPS/text/chapter2.xhtml", chapter("Prologue", "Before it all began."))
        archive.writestr("OEBPS/style.css", "p { margin: 0 }")
    return path


def skip_reason(path, **kwargs):
    with pytest.raises(Skipped) as caught:
        extract_file(path, **kwargs)
    assert caught.value.reason in SKIP_REASONS
    return caught.value.reason, caught.value.detail


# ---------------------------------------------------------------------------------------------
# Plain text: exact, fast path, encodings


def test_plain_text_is_kept_exactly_and_hashed(tmp_path):
    text = "  indented line\ttab  \n\nunicode: αβγ — “quotes” ✓\nx\ry stays\n\n\n"
    path = tmp_path / "notes.txt"
    path.write_bytes(text.encode("utf-8"))
    result = extract_file(path)
    assert result.text == text.rstrip()  # only the whitespace at the very end goes
    assert result.kind == "text"
    assert result.size == len(text.encode("utf-8"))
    assert result.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.mtime == os.stat(path).st_mtime


def test_crlf_becomes_lf_and_the_utf8_bom_goes(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\nsecond\r\n\r\nthird\r\n")
    result = extract_file(path)
    assert result.text == "first\nsecond\n\nthird"
    assert result.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()  # hash of raw bytes


def test_source_code_and_unknown_extensions_are_text(tmp_path):
    code = "def f(x):\n    return x  # comment\n"
    (tmp_path / "module.py").write_text(code)
    (tmp_path / "README").write_text(code)
    assert extract_file(tmp_path / "module.py").text == code.rstrip()
    assert extract_file(tmp_path / "README").kind == "text"


def test_latin1_text_decodes(tmp_path):
    text = ("Grüße aus Köln! Die Straße ist schön, und der Bäcker verkauft frische Brötchen.\n"
            "Voilà pourquoi l'été dernier, à Genève, nous avons mangé une crème brûlée.\n")
    path = tmp_path / "latin1.txt"
    path.write_bytes(text.encode("latin-1"))
    assert extract_file(path).text == text.rstrip()


def test_cp1252_punctuation_decodes(tmp_path):
    text = "El niño está aquí. ¿Dónde está la estación? Mañana será otro día, señor.\n"
    path = tmp_path / "spanish.txt"
    path.write_bytes(text.encode("cp1252"))
    assert extract_file(path).text == text.rstrip()


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_decode(tmp_path, codec):
    text = "UTF-16 text with ümlauts and a snowman ☃\nsecond line\n"
    path = tmp_path / f"{codec}.txt"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = b"\xfe\xff" + data  # with its BOM; utf-16-le is tested without one
    path.write_bytes(data)
    result = extract_file(path)
    assert result.text == text.rstrip()
    assert result.content_hash == hashlib.sha256(data).hexdigest()


def test_decode_text_drops_the_bom_and_the_trailing_whitespace_only():
    assert decode_text(b"\xef\xbb\xbf  abc\r\ndef \t\r\n \n") == "  abc\r\ndef"  # CRLF is extract_file's
    assert decode_text("  \u00e9t\u00e9 \u3000\n".encode("utf-16")) == "  \u00e9t\u00e9"
    assert decode_text(b"\xef\xbb\xbf \n") == ""
    assert decode_text(b"x" * 5000 + b" " * 5000) == "x" * 5000  # whitespace longer than the tail probed
    assert decode_text(b" " * 5000) == ""


# ---------------------------------------------------------------------------------------------
# Structured text kinds


def test_markdown_is_kept_as_written(tmp_path):
    text = "# Title\n\nSome *emphasis* and a [link](https://example.org).\n\n- item\n"
    path = tmp_path / "doc.md"
    path.write_text(text)
    result = extract_file(path)
    assert (result.kind, result.text) == ("markdown", text.rstrip())


def test_html_keeps_visible_text_only(tmp_path):
    html = """<!DOCTYPE html><html><head><title>Hidden title</title>
    <style>body { color: red }</style><script>var hidden = "<p>no</p>";</script></head>
    <body><h1>Main   heading</h1><p>First &amp; <b>bold</b>
    paragraph&eacute; &#x41;</p><noscript>enable<br>js<p>x</p></noscript><template><p>tpl</p><br></template>
    <ul><li>one</li><li>two</li></ul><p>line<br>break</p>
    <table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>
    <pre>  keep
    spacing</pre><script>alert("x")</script></body></html>"""
    path = tmp_path / "page.html"
    path.write_text(html)
    result = extract_file(path)
    assert result.kind == "html"
    assert result.text == ("Main heading\n\nFirst & bold paragraphé A\n\none\ntwo\n\nline\nbreak\n\n"
                           "a\tb\n1\t2\n\n  keep\n    spacing")
    for hidden in ("Hidden title", "color", "var hidden", "enable js", "tpl", "alert"):
        assert hidden not in result.text


def test_html_without_closing_head_still_shows_the_body(tmp_path):
    path = tmp_path / "sloppy.htm"
    path.write_text("<html><head><title>t</title><p>Visible text")
    assert extract_file(path).text == "Visible text"


def test_html_is_sniffed_without_an_extension(tmp_path):
    path = tmp_path / "saved_page"
    path.write_text("<!doctype html><p>Sniffed</p>")
    assert (extract_file(path).kind, extract_file(path).text) == ("html", "Sniffed")


def test_json_string_values_in_document_order(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"title": "First", "n": 3, "tags": ["a", {"deep": "b"}], "ok": true, "end": "Last"}')
    result = extract_file(path)
    assert (result.kind, result.text) == ("json", "First\na\nb\nLast")


def test_invalid_json_fails(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"title": "unterminated')
    with pytest.raises(ExtractionFailed, match="invalid JSON"):
        extract_file(path)


def test_jsonl_skips_bad_lines_but_not_all(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"text": "one"}\nnot json\n\n{"text": "two", "id": 2}\n')
    assert extract_file(path).text == "one\ntwo"
    bad = tmp_path / "bad.ndjson"
    bad.write_text("nope\nstill nope\n")
    with pytest.raises(ExtractionFailed, match="none of the 2 lines"):
        extract_file(bad)


def test_csv_with_quotes_and_a_sniffed_semicolon_dialect(tmp_path):
    comma = tmp_path / "table.csv"
    comma.write_text('name,quote\r\nAda,"Hello, world"\r\nBob,"two\nlines"\r\n')
    assert extract_file(comma).text == "name\tquote\nAda\tHello, world\nBob\ttwo\nlines"
    semicolon = tmp_path / "european.csv"
    semicolon.write_text("name;price\nApfel;1,20\nBirne;0,90\n")
    assert extract_file(semicolon).text == "name\tprice\nApfel\t1,20\nBirne\t0,90"


def test_tsv(tmp_path):
    path = tmp_path / "table.tsv"
    path.write_text("a\tb\nc\td\n")
    result = extract_file(path)
    assert (result.kind, result.text) == ("tsv", "a\tb\nc\td")


# ---------------------------------------------------------------------------------------------
# PDF, DOCX, EPUB


def test_handwritten_pdf_is_valid_and_extracts(tmp_path):
    path = write_pdf(tmp_path / "hello.pdf", ["Hello PDF world"])
    assert len(PdfReader(path, strict=True).pages) == 1  # the xref offsets are right
    result = extract_file(path)
    assert result.kind == "pdf"
    assert result.text == "Hello PDF world"
    assert result.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pdf_pages_are_joined_by_blank_lines(tmp_path):
    path = write_pdf(tmp_path / "two.pdf", ["Page one", "Page two"])
    assert extract_file(path).text == "Page one\n\nPage two"


def test_pdf_sniffed_without_extension(tmp_path):
    path = write_pdf(tmp_path / "scan", ["Hello PDF world"])
    assert extract_file(path).kind == "pdf"


def encrypt(source, target, user_password):
    writer = PdfWriter(clone_from=str(source))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")
    with open(target, "wb") as handle:
        writer.write(handle)
    return target


def test_encrypted_pdf(tmp_path):
    plain = write_pdf(tmp_path / "plain.pdf", ["Hello PDF world"])
    locked = encrypt(plain, tmp_path / "locked.pdf", "secret")
    assert skip_reason(locked) == ("unsupported", "encrypted pdf")
    open_to_all = encrypt(plain, tmp_path / "owner_only.pdf", "")  # the empty password opens it
    assert extract_file(open_to_all).text == "Hello PDF world"


def test_broken_pdf_fails(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n")
    with pytest.raises(ExtractionFailed, match="pdf"):
        extract_file(path)


def test_docx_runs_tabs_breaks_and_paragraphs(tmp_path):
    result = extract_file(write_docx(tmp_path / "letter.docx"))
    assert result.kind == "docx"
    assert result.text == "First\tpara graph & more\nLine one\nLine two\ncell"


def test_docx_with_a_dtd_is_refused(tmp_path):
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
              f'<w:document {W}><w:body><w:p><w:r><w:t>&lol2;</w:t></w:r></w:p></w:body></w:document>')
    with pytest.raises(ExtractionFailed, match="DTD"):
        extract_file(write_docx(tmp_path / "laughs.docx", laughs))


def test_docx_without_document_xml_fails(tmp_path):
    path = tmp_path / "hollow.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(ExtractionFailed, match="word/document.xml"):
        extract_file(path)


def test_epub_chapters_in_spine_order(tmp_path):
    result = extract_file(write_epub(tmp_path / "book.epub"))
    assert result.kind == "epub"
    assert result.text == "Prologue\n\nBefore it all began.\n\nChapter One\n\nIt was a dark & stormy night."


def test_epub_sniffed_by_its_mimetype_member(tmp_path):
    path = write_epub(tmp_path / "book.zip")
    assert detect_kind(path, path.read_bytes()[:8192]) == "epub"


# ---------------------------------------------------------------------------------------------
# Skip reasons, each from a real file


def test_empty_and_whitespace_only(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"  \r\n\t\n  \n")
    (tmp_path / "blank.json").write_text('{"a": "   ", "b": 1}')
    assert skip_reason(tmp_path / "empty.txt") == ("empty", "0 bytes")
    assert skip_reason(tmp_path / "blank.txt")[0] == "empty"
    assert skip_reason(tmp_path / "blank.json")[0] == "empty"


def test_random_bytes_with_nul_are_binary(tmp_path):
    data = bytearray(random.Random(1).randbytes(4096))
    data[100] = 0
    path = tmp_path / "blob.txt"  # the content overrides a text extension
    path.write_bytes(bytes(data))
    assert skip_reason(path) == ("binary", "NUL bytes in the first 8192 bytes")


@pytest.mark.parametrize("name, head, what", [
    ("image.png", b"\x89PNG\r\n\x1a\n", "png image"),
    ("photo", b"\xff\xd8\xff\xe0JFIF", "jpeg image"),
    ("notes.txt", b"\x89PNG\r\n\x1a\n", "png image"),
    ("db", b"SQLite format 3\x00", "sqlite database"),
    ("clip.mp4", b"\x00\x00\x00\x18ftypmp42", "mp4/quicktime media"),
    ("tool", b"\x7fELF\x02\x01\x01", "ELF executable"),
])
def test_binary_signatures(tmp_path, name, head, what):
    path = tmp_path / name
    path.write_bytes(head + b"abcdefgh" * 64)
    assert skip_reason(path) == ("binary", what)


def test_the_binary_probe_names_what_it_sees():
    assert binary_mark(b"plain text\n") is None
    assert binary_mark(b"\x7fELF\x02\x01\x01") == "ELF executable"
    assert binary_mark(b"%PDF-1.7\n") == "pdf"  # a container: detect_kind reads it all the same
    assert binary_mark(b"ab\0cd") == "NUL bytes in the first 8192 bytes"
    wide = "text".encode("utf-16")
    assert binary_mark(wide) is not None and detect_kind("a.txt", wide) == "text"  # decoding looks past it


def test_a_plain_zip_is_an_archive_and_a_package_is_binary(tmp_path):
    path = tmp_path / "archive.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "hello")
    assert [(m.name, m.extraction.text) for m in extract_file(path).members] == [("a.txt", "hello")]
    package = tmp_path / "library.jar"  # a zip whose members mean nothing one by one stays one file
    package.write_bytes(path.read_bytes())
    assert skip_reason(package) == ("binary", "zip archive")


def test_too_large_by_size_and_while_reading(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("x" * 1000)
    reason, detail = skip_reason(path, limits=ExtractLimits(max_file_bytes=999))
    assert reason == "too_large" and "1000 bytes" in detail
    assert extract_file(path, ExtractLimits(max_file_bytes=1000)).size == 1000


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux procfs")
def test_too_large_found_while_reading_a_file_that_reports_size_zero():
    assert os.stat("/proc/self/status").st_size == 0  # procfs reports 0 and has content
    reason, detail = skip_reason("/proc/self/status", limits=ExtractLimits(max_file_bytes=64))
    assert reason == "too_large" and "while read" in detail


def test_unsupported_document_types(tmp_path):
    xlsx = tmp_path / "sheet.xlsx"
    with zipfile.ZipFile(xlsx, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    assert skip_reason(xlsx) == ("unsupported", "no extractor for .xlsx")
    ole = tmp_path / "old_word_file"
    ole.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512)
    assert skip_reason(ole)[0] == "unsupported"


def test_directory_is_unsupported(tmp_path):
    """A directory opens fine with os.open on Linux, so it is reported as not a regular file."""
    assert skip_reason(tmp_path) == ("unsupported", "not a regular file (directory)")


def test_unreadable_permission_denied(as_nobody):
    """A file of mode 000 is skipped as unreadable, not raised. Read by a user whom permissions
    stop (root reads it anyway: tests/conftest.py's `as_nobody`), beside a readable control."""
    readable, secret = as_nobody.folder / "open.txt", as_nobody.folder / "secret.txt"
    readable.write_text("open to all\n")
    secret.write_text("hidden\n")
    readable.chmod(0o644)
    secret.chmod(0)
    out = as_nobody.run("""
        for path in sys.argv[1:]:
            try:
                print(json.dumps(["read", extract_file(path).text]))
            except Skipped as skipped:
                print(json.dumps([skipped.reason, skipped.detail]))
        """, readable, secret, prepare="""
        from crawler.ingest.extract import Skipped, extract_file
        extract_file(sys.argv[1])  # loads what a first read imports
        """)
    assert [json.loads(line) for line in out.splitlines()] == [
        ["read", "open to all"], ["unreadable", "open: Permission denied"]]


def test_unreadable_symlink_loop_and_file_used_as_folder(tmp_path):
    """Real OS errors that even root gets: ELOOP and ENOTDIR."""
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    assert skip_reason(loop)[0] == "unreadable"
    (tmp_path / "plain.txt").write_text("x")
    assert skip_reason(tmp_path / "plain.txt" / "child.txt")[0] == "unreadable"


def test_vanished(tmp_path):
    path = tmp_path / "gone.txt"
    path.write_text("soon gone")
    path.unlink()
    assert skip_reason(path)[0] == "vanished"


def test_fifo_is_unsupported_without_blocking(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)

    def hung(signum, frame):
        raise AssertionError("extract_file blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        assert skip_reason(path) == ("unsupported", "not a regular file (fifo)")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


ZEROS = b"\x00" * (50 * 2**20)  # deflates about 1000x


def test_zip_bomb_by_overall_ratio(tmp_path):
    path = write_docx(tmp_path / "bomb.docx", ZEROS)
    assert path.stat().st_size < 2**20
    reason, detail = skip_reason(path)
    assert reason == "decompression_bomb" and "declared in a" in detail


def test_zip_bomb_by_member_ratio(tmp_path):
    """Incompressible padding keeps the overall ratio low (about 25x); the member itself is ~1000x."""
    padding = [("word/media/noise.bin", random.Random(3).randbytes(2 * 2**20))]
    path = write_docx(tmp_path / "padded_bomb.docx", ZEROS, extra=padding)
    reason, detail = skip_reason(path)
    assert reason == "decompression_bomb" and "'word/document.xml' inflates" in detail


def test_zip_bomb_by_size_and_member_count(tmp_path):
    path = write_docx(tmp_path / "letter.docx")
    reason, detail = skip_reason(path, limits=ExtractLimits(max_uncompressed_bytes=100))
    assert reason == "decompression_bomb" and "max_uncompressed_bytes" in detail
    many = write_docx(tmp_path / "many.docx", extra=[(f"media/{i}.txt", "x") for i in range(20)])
    reason, detail = skip_reason(many, limits=ExtractLimits(max_zip_members=10))
    assert reason == "decompression_bomb" and "22 zip members" in detail


def test_timeout_between_pdf_pages(tmp_path):
    # the cooperative check, as an extractor process runs it; the hard limit: test_sandbox.py
    path = write_pdf(tmp_path / "slow.pdf", ["Page one", "Page two", "Page three"])
    ticks = iter([0.0])  # the start; every later reading is far past the 30 s budget

    def clock():
        return next(ticks, 1000.0)

    with pytest.raises(Skipped, match="timeout"):
        extract_in_process(path, clock=clock)
    assert extract_in_process(path, clock=lambda: 0.0).text.count("Page") == 3


def test_undecodable(tmp_path):
    rng = random.Random(2)
    high = tmp_path / "mojibake.txt"
    high.write_bytes(bytes(rng.randrange(0x80, 0xFF) for _ in range(4000)))  # no encoding fits
    assert skip_reason(high)[0] == "undecodable"
    controls = tmp_path / "controls.log"  # valid UTF-8, but control characters through and through
    controls.write_bytes(bytes(rng.choice(b"\x01\x02\x03\x05\x06\x0e\x10\x1b\x1f") for _ in range(4000)))
    assert skip_reason(controls) == ("undecodable", "mostly control or replacement characters once decoded")


# ---------------------------------------------------------------------------------------------
# Where each kind is parsed: documents in an extractor process, text here


def test_documents_go_through_an_extractor_process_and_come_back_the_same(tmp_path):
    files = [write_pdf(tmp_path / "a.pdf", ["Page one", "Page two"]), write_docx(tmp_path / "b.docx"),
             write_epub(tmp_path / "c.epub")]
    shutdown_pool()
    for path in files:
        assert extract_file(path) == extract_in_process(path)
    assert extract._shared_pool is not None and extract._shared_pool.started == 1
    shutdown_pool()
    assert extract._shared_pool is None
    shutdown_pool()  # twice is fine
    assert extract_file(files[0]).kind == "pdf"  # a later call starts a new pool


def test_text_kinds_never_start_an_extractor_process(tmp_path):
    shutdown_pool()
    for name, body in (("a.txt", "plain"), ("b.html", "<p>hi</p>"), ("c.json", '["x"]'), ("d.csv", "a,b")):
        (tmp_path / name).write_text(body)
        extract_file(tmp_path / name)
    with pytest.raises(Skipped):
        extract_file(tmp_path / "missing.pdf")
    assert extract._shared_pool is None


def test_a_document_whose_name_is_not_utf8_goes_through_the_process(tmp_path):
    name = os.fsdecode(b"r\xe9sum\xe9.pdf")  # Latin-1 bytes: a surrogate-escaped str
    path = write_pdf(tmp_path / name, ["Resume page"])
    assert extract_file(path).text == extract_in_process(path).text == "Resume page"


# ---------------------------------------------------------------------------------------------
# The vocabulary


def test_skip_reasons_are_a_fixed_set():
    assert set(SKIP_REASONS) == {"empty", "binary", "too_large", "unsupported", "unreadable", "vanished",
                                 "decompression_bomb", "timeout", "undecodable", "corrupt"}
    with pytest.raises(ValueError, match="unknown skip reason"):
        Skipped("because")
    assert str(Skipped("empty", "0 bytes")) == "empty: 0 bytes"


def test_limits_validate():
    limits = ExtractLimits()
    assert limits.validate() is limits
    with pytest.raises(ConfigError, match="max_file_bytes"):
        ExtractLimits(max_file_bytes=0).validate()
    with pytest.raises(ConfigError, match="max_compression_ratio"):
        ExtractLimits(max_compression_ratio=0.5).validate()
    with pytest.raises(ConfigError, match="time_budget_seconds"):
        ExtractLimits(time_budget_seconds=0).validate()
    with pytest.raises(ConfigError, match=r"max_memory_bytes \(1048576\) must be >= 134217728"):
        ExtractLimits(max_memory_bytes=2**20).validate()


@pytest.mark.parametrize("name, head, kind", [
    ("a.py", b"print(1)\n", "text"), ("a.MD", b"# x", "markdown"), ("a.xhtml", b"<html/>", "html"),
    ("a.ndjson", b"{}", "jsonl"), ("a.pdf", b"%PDF-1.7", "pdf"), ("a.pdf", b"just text", "text"),
    ("a.docx", b"PK\x03\x04", "docx"), ("a.docx", b"\x00\x01", "binary"), ("a.rtf", b"{\\rtf1", "unsupported"),
    ("a.txt", "ü".encode("utf-16"), "text"), ("noext", b"plain", "text"),
])
def test_detect_kind(name, head, kind):
    assert detect_kind(name, head) == kind
    assert kind in KINDS or kind in ("binary", "unsupported")
