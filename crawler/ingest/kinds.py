"""What a file is, from its name and its first bytes: the kinds the extractor knows.

`detect_kind(path, head)` answers one of KINDS, or "binary", or "unsupported" (a document type
with no extractor). By extension first; the content's signature overrides an extension it
contradicts (a .txt full of NULs is binary). `binary_mark` is the one binary probe. Content
sniffing also finds man pages (troff source that opens with requests such as `.TH`) and GNU info
files (whose index markers hold NUL bytes that are no binary mark).

A single gzip, bzip2 or xz file has the kind of its content, typed by its inner name (`ls.1.gz`
is `ls.1`) and by the head of what it inflates to, with the compression after a plus sign, as
MIME's structured suffixes read (`man+gzip`, `text+xz`). The head of a file inflates to only
part of its content (a bzip2 block to nothing), so this kind is a first guess that the
extractor checks against the whole content (`detect_inflated`).

An archive of documents (a tar, a zip that is no document format: `crawler.ingest.archives`)
has an archive kind, ARCHIVE_KINDS: `tar`, `zip`, or either inside a compressed stream
(`tar+gzip`); its members are documents of their own, each typed here as a file is.

It reads no file, decodes nothing and logs nothing. Relies on the standard library,
`crawler.ingest.compressed` and `crawler.ingest.archives`.
"""

from __future__ import annotations

import codecs
import os
import re

from .archives import ARCHIVE_FORMATS, archive_format
from .compressed import COMPRESSIONS, codec_of, inflate_head, inner_name

__all__ = ["PROBE_BYTES", "DOCUMENT_KINDS", "KINDS", "ARCHIVE_KINDS", "detect_kind", "detect_inflated", "binary_mark",
           "utf16_without_bom"]

PROBE_BYTES = 8192  # sniffing looks at this much of the head (a NUL in it means binary: git's rule)

# ---------------------------------------------------------------------------------------------
# Kinds

DOCUMENT_KINDS = ("text", "markdown", "html", "json", "jsonl", "csv", "tsv", "pdf", "docx", "epub", "man", "info")
KINDS = DOCUMENT_KINDS + tuple(f"{kind}+{codec}" for codec in COMPRESSIONS for kind in DOCUMENT_KINDS)
# archives of documents: not documents themselves (each member is one), so not in KINDS
ARCHIVE_KINDS = ARCHIVE_FORMATS + tuple(f"{fmt}+{codec}" for codec in COMPRESSIONS for fmt in ARCHIVE_FORMATS)

_TEXT_SUFFIXES = (".txt .text .py .pyi .c .h .cc .cpp .hpp .js .mjs .ts .tsx .jsx .rs .go .java "
                  ".kt .rb .php .pl .lua .swift .scala .cs .sql .r .jl .hs .ml .rst .tex .bib .log "
                  ".ini .cfg .conf .toml .yaml .yml .sh .bash .zsh .xml .svg .css .diff .patch")
KIND_BY_SUFFIX: dict[str, str] = {
    **{suffix: "text" for suffix in _TEXT_SUFFIXES.split()},
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
    ".pdf": "pdf", ".docx": "docx", ".epub": "epub",
}
# document types people drop in a folder that have no extractor (yet)
UNSUPPORTED_SUFFIXES = frozenset((".xlsx .xlsm .xls .pptx .ppt .odt .ods .odp .odg .doc .docm .dotx "
                                  ".rtf .pages .numbers .key .mobi .azw .azw3 .djvu .xps .oxps").split())
# man pages by name: sections 1-9 with an optional suffix (ls.1, printf.3p, Carp.3pm), or .man
_MAN_NAME = re.compile(r"\.(?:[1-9][a-z]*|man)$", re.IGNORECASE)
_INFO_NAME = re.compile(r"\.info(?:-[0-9]+)?$", re.IGNORECASE)  # foo.info, and foo.info-2 of a split one

# (signature at offset 0, what it is); anything here that is not a container kind is binary
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "pdf"), (b"PK\x03\x04", "zip archive"), (b"PK\x05\x06", "zip archive"),
    (b"\x89PNG\r\n\x1a\n", "png image"), (b"\xff\xd8\xff", "jpeg image"), (b"GIF87a", "gif image"),
    (b"GIF89a", "gif image"), (b"II*\x00", "tiff image"), (b"MM\x00*", "tiff image"),
    (b"\x1f\x8b", "gzip archive"), (b"\xfd7zXZ\x00", "xz archive"), (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"(\xb5/\xfd", "zstd archive"), (b"Rar!\x1a\x07", "rar archive"), (b"\x7fELF", "ELF executable"),
    (b"\xca\xfe\xba\xbe", "Mach-O or Java class"), (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "Mach-O executable"), (b"SQLite format 3\x00", "sqlite database"),
    (b"OggS\x00", "ogg media"), (b"fLaC", "flac audio"), (b"\x1aE\xdf\xa3", "matroska media"),
    (b"\x93NUMPY", "numpy array"), (b"PAR1", "parquet file"), (b"wOFF", "woff font"), (b"wOF2", "woff font"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "document"),  # OLE2: .doc .xls .ppt
    (b"{\\rtf", "document"),
)
_RIFF_TYPES = (b"WAVE", b"AVI ", b"WEBP")
_TEXT_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)
_CONTAINER_SIGNATURES = {"pdf": ("pdf",), "docx": ("zip archive",), "epub": ("zip archive", "epub")}
_EPUB_MIMETYPE = b"mimetypeapplication/epub+zip"  # the stored first member the EPUB spec requires


def _signature(head: bytes) -> str | None:
    for magic, name in _SIGNATURES:
        if head.startswith(magic):
            return name
    if codec_of(head) == "bzip2":
        return "bzip2 archive"
    if head[257:262] == b"ustar":  # POSIX tar: the magic of the first member's header
        return "tar archive"
    if head[4:8] == b"ftyp":
        return "mp4/quicktime media"
    if head.startswith(b"ID3") and head[3:4] in (b"\x02", b"\x03", b"\x04"):
        return "mp3 audio"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "mpeg audio"
    if head.startswith(b"RIFF") and head[8:12] in _RIFF_TYPES:
        return "riff media"
    if head.startswith(b"MZ") and len(head) >= 64:  # DOS header; e_lfanew points at "PE\0\0"
        offset = int.from_bytes(head[60:64], "little")
        if head[offset:offset + 4] == b"PE\x00\x00":
            return "PE executable"
    return None


def binary_mark(head: bytes) -> str | None:
    """What marks a file whose first PROBE_BYTES bytes are `head` as binary, in words, or None:
    a known signature ("png image", "zip archive", "gzip archive", "pdf", ...: container and
    compressed kinds too, which `detect_kind` may still read) or NUL bytes (git's rule). The one
    binary probe: the offline reader (crawler.ingest.data) skips what it marks; `detect_kind`
    asks it unless the head is UTF-16 or UTF-32 text, whose NUL bytes only a reader that decodes
    it may look past, or a GNU info file, whose index markers hold NUL bytes."""
    # a text byte order mark is no signature (UTF-16's reads as an MPEG audio frame's)
    sniffed = None if head.startswith(_TEXT_BOMS) else _signature(head)
    if sniffed is None and b"\x00" in head:
        return f"NUL bytes in the first {PROBE_BYTES} bytes"
    return sniffed


def utf16_without_bom(head: bytes) -> str | None:
    """'utf-16-le'/'be' when the head looks like mostly-ASCII UTF-16 that lacks a BOM: every
    other byte zero and the rest not (a pattern binary files do not keep up for 8 KiB)."""
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) >= 0.5 * len(odd) and not even.count(0):
        return "utf-16-le"
    if even.count(0) >= 0.5 * len(even) and not odd.count(0):
        return "utf-16-be"
    return None


# ---------------------------------------------------------------------------------------------
# Man pages and GNU info files, by content

_TROFF_TITLE = re.compile(rb"^[.'][ \t]*TH[ \t]", re.MULTILINE)


def _is_troff(head: bytes, named_as_man: bool) -> bool:
    """A man page: the first line that is neither blank nor a `\\"` comment is a request or a
    comment (`.TH`, `.so`, `.\\"`), and either the name says man page or a `.TH` title line is
    in the head."""
    for line in head.split(b"\n", 64)[:64]:
        line = line.strip()
        if line and not line.startswith(b'\\"'):
            return line[:1] in (b".", b"'") and (named_as_man or _TROFF_TITLE.search(head) is not None)
    return False


def _is_info(head: bytes, named_as_info: bool) -> bool:
    """A GNU info file: its NUL bytes are only those of `^@^H[index^@^H]` markers, and it opens
    with makeinfo's "This is ..., produced by makeinfo ..." or, named .info, has a node separator
    and header."""
    if head.count(b"\x00") != head.count(b"\x00\x08"):
        return False
    if head.startswith(b"This is ") and re.search(rb"produced by (?:makeinfo|texi2any)", head[:300]):
        return True
    return named_as_info and b"\x1f\nFile: " in head


# ---------------------------------------------------------------------------------------------
# Detection

def classify(path: str | os.PathLike[str], head: bytes, outer: bool = True) -> tuple[str, str]:
    """(kind, why): a kind in KINDS or ARCHIVE_KINDS, or "binary" / "unsupported" with the reason
    in words. Only the outer file may be compressed: a stream inside a stream is binary."""
    name = os.fspath(path)
    if outer and (codec := codec_of(head)) is not None:
        kind, why = detect_inflated(name, codec, inflate_head(head, codec, PROBE_BYTES))
        return (kind if kind in ("binary", "unsupported") else f"{kind}+{codec}"), why
    suffix = os.path.splitext(name)[1].lower()
    if suffix in UNSUPPORTED_SUFFIXES:
        return "unsupported", f"no extractor for {suffix}"
    if _is_info(head, _INFO_NAME.search(name) is not None):
        return "info", "GNU info"
    if head.startswith(_TEXT_BOMS) or utf16_without_bom(head):
        sniffed = None  # UTF-16/32 text: its NUL bytes are no binary mark
    else:
        sniffed = binary_mark(head)
    if sniffed == "zip archive" and head[30:58] == _EPUB_MIMETYPE:
        sniffed = "epub"
    kind = KIND_BY_SUFFIX.get(suffix)
    if kind in _CONTAINER_SIGNATURES:
        if sniffed in _CONTAINER_SIGNATURES[kind]:
            return kind, suffix
    elif kind is not None and sniffed is None:
        return kind, suffix
    # the extension is unknown, or the content contradicts it: the content decides
    if sniffed in ("pdf", "epub"):
        return sniffed, "signature"
    if sniffed == "document":
        return "unsupported", f"no extractor for this document type ({suffix or 'no extension'})"
    if sniffed in ("tar archive", "zip archive") and (fmt := archive_format(name, head)) is not None:
        return fmt, "archive"
    if sniffed is not None:
        return "binary", sniffed
    if kind is None and _is_troff(head, _MAN_NAME.search(name) is not None):
        return "man", "troff requests"
    start = head.removeprefix(codecs.BOM_UTF8).lstrip()[:14].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "html", "signature"
    return "text", "decodes as text"


def detect_kind(path: str | os.PathLike[str], head: bytes) -> str:
    """The kind of a file from its name and first bytes: one of KINDS, or "binary", or
    "unsupported" (a document type with no extractor). By extension first; the content's
    signature overrides an extension it contradicts (a .txt full of NULs is binary). For a
    compressed file, a first guess from the head of its content (see `detect_inflated`)."""
    return classify(path, head)[0]


def detect_inflated(path: str | os.PathLike[str], codec: str, content: bytes) -> tuple[str, str]:
    """(kind, why) of what the compressed file at `path` inflates to (`content`, or its first
    PROBE_BYTES), typed by the inner name and that content: a kind of DOCUMENT_KINDS, an archive
    format (ARCHIVE_FORMATS: a .tar.gz), or "binary" / "unsupported" with a reason that names
    the stream."""
    kind, why = classify(inner_name(path, codec), content[:PROBE_BYTES], outer=False)
    if kind in ("binary", "unsupported"):
        return kind, f"{why}, inside a {codec} stream"
    return kind, why
