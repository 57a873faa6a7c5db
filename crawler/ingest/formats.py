"""Format parsers for the extractor: the bytes or decoded text of one file in, readable text out.

This module is the back half of `crawler.ingest.inprocess`, which dispatches to it by kind. It
turns HTML, JSON, JSON Lines, CSV/TSV, PDF, DOCX and EPUB into text, and reports in the terms of
`crawler.ingest.terms` (`Skipped`, `ExtractionFailed`, the `ExtractLimits` it obeys). HTML is
`crawler.ingest.html`'s (`html_text`, which EPUB chapters go through too, is importable from
here), man pages `crawler.ingest.troff`'s, GNU info files `crawler.ingest.info`'s, and single
compressed files `crawler.ingest.compressed`'s. This module does not open files, detect kinds or decode
plain text, and it logs nothing.

Zipped formats (DOCX, EPUB) go through `GuardedZip`, which enforces the member count, the
declared and the actually inflated sizes, and the compression ratios before and while reading.
XML is parsed with expat with any DTD refused, so entity expansion and external entities cannot
happen (the defusedxml rule). Time is cooperative here: parsers call `check_time()` between PDF
pages and EPUB chapters; nothing in this module interrupts a single slow page. The hard limits
(wall time, memory) come from running these parsers in `crawler.ingest.sandbox`'s extractor processes.
Relies on the standard library, pypdfium2, `crawler.ingest.html` and `crawler.ingest.terms`.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import zipfile
import zlib
from urllib.parse import unquote
from xml.etree.ElementTree import Element, TreeBuilder
from xml.parsers import expat

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw

from .html import html_text
from .terms import (
    RATIO_FLOOR_BYTES,
    CheckTime,
    ExtractionFailed,
    ExtractLimits,
    Skipped,
)

# --------------------------------------------------------------------------------------------
# JSON, JSON Lines, CSV/TSV

def _strings(value: object) -> list[str]:
    """Every string value (not key) in document order; iterative, so depth cannot overflow."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            stack.extend(reversed(item.values()))
        elif isinstance(item, list):
            stack.extend(reversed(item))
    return found


def json_text(text: str) -> str:
    """The string values of a JSON document, in order, one per line. Raises ExtractionFailed."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, deep nesting
        raise ExtractionFailed(f"invalid JSON: {exc}") from None
    return "\n".join(_strings(value))


def jsonl_text(text: str) -> str:
    """The string values of every valid line of a JSON Lines file; invalid lines are passed
    over, but a file with no valid line raises ExtractionFailed."""
    found: list[str] = []
    good = bad = 0
    for line in text.split("\n"):  # not splitlines(): U+2028 may stand unescaped in a JSON string
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        good += 1
        found.extend(_strings(value))
    if bad and not good:
        raise ExtractionFailed(f"none of the {bad} lines is valid JSON")
    return "\n".join(found)


def csv_text(text: str, dialect: type[csv.Dialect] | None = None) -> str:
    """Rows on lines, cells joined by tabs. Without a dialect it is sniffed from the start of
    the file, falling back to Excel's comma dialect. Raises ExtractionFailed on a malformed row."""
    if dialect is None:
        try:
            dialect = csv.Sniffer().sniff(text[:32768], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
    try:
        return "\n".join("\t".join(row) for row in csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as exc:
        raise ExtractionFailed(f"malformed CSV: {exc}") from None


def tsv_text(text: str) -> str:
    """`csv_text` with the tab-separated dialect."""
    return csv_text(text, csv.excel_tab)


# --------------------------------------------------------------------------------------------
# PDF

def pdf_text(data: bytes, limits: ExtractLimits, check_time: CheckTime) -> str:
    """Page texts joined by blank lines, as PDFium lays each page out (pypdfium2: 11x less CPU
    than pypdf on the desk's LaTeX manuals, the same words; docs/BENCHMARKS.md). A PDF that
    needs a password (the empty one opens the rest) is Skipped("unsupported"); one PDFium cannot
    read fails. Memory is the extractor process's limit: PDFium has no inflate limit of its own."""
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == pdfium_raw.FPDF_ERR_PASSWORD:
            raise Skipped("unsupported", "encrypted pdf") from None
        raise ExtractionFailed(f"pdf: {exc}") from None
    pages: list[str] = []
    try:
        for number in range(len(document)):
            if number:
                check_time()
            page = document[number]
            textpage = page.get_textpage()
            pages.append(_page_text(textpage.get_text_range()))
            textpage.close()
            page.close()
    except (Skipped, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed page can raise in the binding
        raise ExtractionFailed(f"pdf: {type(exc).__name__}: {exc}") from None
    finally:
        document.close()
    return "\n\n".join(pages)


def _page_text(text: str) -> str:
    """PDFium's page text as a reader sees it: its CRLF line ends as LF, and its mark of a word
    hyphenated at a line end (U+FFFE, where the hyphen was) as the hyphen."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufffe", "-")


# --------------------------------------------------------------------------------------------
# Zip containers and XML



class GuardedZip:
    """A zip archive in memory whose members are read within ExtractLimits, else
    Skipped("decompression_bomb"). Sizes read accumulate across `read` calls."""

    def __init__(self, data: bytes, limits: ExtractLimits):
        self.limits = limits
        try:
            self.archive = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, zlib.error, ValueError, EOFError) as exc:
            raise ExtractionFailed(f"bad zip: {exc}") from None
        members = self.archive.infolist()
        if len(members) > limits.max_zip_members:
            raise Skipped("decompression_bomb",
                          f"{len(members)} zip members, over max_zip_members ({limits.max_zip_members})")
        declared = sum(member.file_size for member in members)
        if declared > RATIO_FLOOR_BYTES and declared > limits.max_compression_ratio * len(data):
            raise Skipped("decompression_bomb", f"{declared} bytes declared in a {len(data)}-byte zip, "
                          f"over max_compression_ratio ({limits.max_compression_ratio:g})")
        self.read_total = 0

    def has(self, name: str) -> bool:
        return name in self.archive.NameToInfo

    def read(self, name: str) -> bytes:
        """The inflated member; a missing one is ExtractionFailed."""
        try:
            member = self.archive.getinfo(name)
        except KeyError:
            raise ExtractionFailed(f"zip has no member {name!r}") from None
        if member.flag_bits & 0x1:
            raise Skipped("unsupported", f"encrypted zip member {name!r}")
        allowance = self.limits.max_uncompressed_bytes - self.read_total
        if member.file_size > allowance:
            raise Skipped("decompression_bomb", f"{name!r} declares {member.file_size} bytes, over the "
                          f"{allowance} left of max_uncompressed_bytes")
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_FLOOR_BYTES and ratio > self.limits.max_compression_ratio:
            raise Skipped("decompression_bomb", f"{name!r} inflates {ratio:.0f}x, over "
                          f"max_compression_ratio ({self.limits.max_compression_ratio:g})")
        try:
            with self.archive.open(member) as stream:
                blob = stream.read(allowance + 1)  # bounded even if the header lies
        except NotImplementedError as exc:  # compression methods zipfile lacks (deflate64, ...)
            raise Skipped("unsupported", f"{name!r}: {exc}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
            raise ExtractionFailed(f"zip member {name!r}: {exc}") from None
        if len(blob) > allowance:
            raise Skipped("decompression_bomb", f"{name!r} inflates past max_uncompressed_bytes")
        self.read_total += len(blob)
        return blob


def _refuse_dtd(*args: object) -> None:
    raise ExtractionFailed("XML with a document type declaration (DTD) is refused")


def _clark(name: str) -> str:
    return "{" + name if "}" in name else name  # expat's "uri}local" -> ElementTree's "{uri}local"


def parse_xml(data: bytes) -> Element:
    """An ElementTree element built by expat with every DTD refused, so no entity is ever
    declared, expanded or fetched. Raises ExtractionFailed on malformed XML."""
    builder = TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    parser.ExternalEntityRefHandler = _refuse_dtd
    parser.buffer_text = True
    parser.StartElementHandler = lambda tag, attrs: builder.start(
        _clark(tag), {_clark(key): value for key, value in attrs.items()})
    parser.EndElementHandler = lambda tag: builder.end(_clark(tag))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise ExtractionFailed(f"malformed XML: {exc}") from None
    return builder.close()


# --------------------------------------------------------------------------------------------
# DOCX and EPUB

_WORD = ("{http://schemas.openxmlformats.org/wordprocessingml/2006/main}",
         "{http://purl.oclc.org/ooxml/wordprocessingml/main}")  # transitional and strict OOXML
_W_TEXT = {ns + "t" for ns in _WORD}
_W_TAB = {ns + "tab" for ns in _WORD}
_W_BREAK = {ns + name for ns in _WORD for name in ("br", "cr")}
_W_PARAGRAPH = {ns + "p" for ns in _WORD}
_W_PROPERTIES = {ns + name for ns in _WORD for name in ("pPr", "rPr")}  # tab stops live in pPr
_PARAGRAPH_END = Element("paragraph-end")


def docx_text(data: bytes, limits: ExtractLimits, check_time: CheckTime) -> str:
    """The body of word/document.xml: the text of w:t runs, w:tab as a tab, w:br as a newline,
    one line per paragraph."""
    root = parse_xml(GuardedZip(data, limits).read("word/document.xml"))
    out: list[str] = []
    stack = [root]
    while stack:  # a depth-first walk without recursion; paragraph ends are pushed as markers
        element = stack.pop()
        tag = element.tag
        if element is _PARAGRAPH_END:
            out.append("\n")
            continue
        if tag in _W_PROPERTIES:
            continue
        if tag in _W_TEXT:
            out.append(element.text or "")
        elif tag in _W_TAB:
            out.append("\t")
        elif tag in _W_BREAK:
            out.append("\n")
        elif tag in _W_PARAGRAPH:
            stack.append(_PARAGRAPH_END)
        stack.extend(reversed(element))
    return "".join(out)


_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_OPF = "{http://www.idpf.org/2007/opf}"
_CHAPTER_TYPES = ("application/xhtml+xml", "text/html")


def _decode_markup(blob: bytes) -> str:
    # EPUB content documents are UTF-8 or UTF-16 by the specification
    if blob.startswith((b"\xff\xfe", b"\xfe\xff")):
        return blob.decode("utf-16", errors="replace")
    return blob.decode("utf-8-sig", errors="replace")


def epub_text(data: bytes, limits: ExtractLimits, check_time: CheckTime) -> str:
    """Chapters in spine order (container.xml -> OPF -> spine -> manifest), each through
    `html_text`, joined by blank lines. Spine items missing from the zip are passed over."""
    archive = GuardedZip(data, limits)
    rootfile = parse_xml(archive.read("META-INF/container.xml")).find(f".//{_CONTAINER}rootfile")
    if rootfile is None or not rootfile.get("full-path"):
        raise ExtractionFailed("epub container.xml names no rootfile")
    opf_path = rootfile.get("full-path", "")
    package = parse_xml(archive.read(opf_path))
    manifest = {item.get("id"): item for item in package.iter(f"{_OPF}item")}
    chapters: list[str] = []
    for number, itemref in enumerate(package.iter(f"{_OPF}itemref")):
        if number:
            check_time()
        item = manifest.get(itemref.get("idref"))
        if item is None or item.get("media-type") not in _CHAPTER_TYPES:
            continue
        href = unquote(item.get("href", "").split("#", 1)[0])
        name = posixpath.normpath(posixpath.join(posixpath.dirname(opf_path), href))
        if archive.has(name):
            chapters.append(html_text(_decode_markup(archive.read(name))))
    return "\n\n".join(chapter for chapter in chapters if chapter)
