"""Extraction in this process: one file in, its text out, or a precise reason why not.

`extract_in_process` opens a path once, reads it within `ExtractLimits`, decides its kind (by
extension, then by sniffing the first bytes), decodes it and hands it to the kind's parser in
`crawler.ingest.formats`. It returns an `Extraction`, or raises `Skipped` (a reason from
SKIP_REASONS) or `ExtractionFailed`. The time budget is only cooperative here and a parser's
memory is this process's, so this is what an extractor process (`crawler.ingest.sandbox`) runs
for the kinds in ISOLATED_KINDS, and what `crawler.ingest.extract` runs directly, through
`extract_unless_isolated`, for every other kind.

Plain text is kept byte for byte: the text of a text, source-code or markdown file is exactly
its decoded contents, apart from a removed byte order mark, CRLF turned into LF, and the
whitespace at the very end stripped. That is the same normalisation every kind gets.
Plain UTF-8 is the fast path: one read, one hash, one decode, with no loop per line.

It is not the front callers import (`crawler.ingest.extract`, which chooses between this process
and an extractor process and re-exports the names here), it starts no process, and it logs
nothing; O_NOFOLLOW, roots and symlinks are the caller's business. Relies on the standard
library, charset-normalizer and `crawler.ingest.formats` (and through it pypdf).
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from charset_normalizer import from_bytes

from .formats import (
    ExtractLimits,
    Skipped,
    csv_text,
    docx_text,
    epub_text,
    html_text,
    json_text,
    jsonl_text,
    pdf_text,
    tsv_text,
)

__all__ = ["KINDS", "PROBE_BYTES", "ISOLATED_KINDS", "Extraction", "extract_in_process", "extract_unless_isolated",
           "detect_kind", "binary_mark", "decode_text"]

PROBE_BYTES = 8192  # sniffing looks at this much of the head (a NUL in it means binary: git's rule)
_READ_CHUNK = 2**20  # reads after the first, when a file grows or reports no size (procfs)

# ---------------------------------------------------------------------------------------------
# Kinds

KINDS = ("text", "markdown", "html", "json", "jsonl", "csv", "tsv", "pdf", "docx", "epub")

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
    a known signature ("png image", "zip archive", "pdf", ...: container kinds too, which
    `detect_kind` may still read) or NUL bytes (git's rule). The one binary probe: the offline
    reader (crawler.ingest.data) skips what it marks; `detect_kind` asks it unless the head is
    UTF-16 or UTF-32 text, whose NUL bytes only a reader that decodes it may look past."""
    # a text byte order mark is no signature (UTF-16's reads as an MPEG audio frame's)
    sniffed = None if head.startswith(_TEXT_BOMS) else _signature(head)
    if sniffed is None and b"\x00" in head:
        return f"NUL bytes in the first {PROBE_BYTES} bytes"
    return sniffed


def _utf16_without_bom(head: bytes) -> str | None:
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


def _detect(path: str | os.PathLike[str], head: bytes) -> tuple[str, str]:
    """(kind, why): a kind in KINDS, or "binary" / "unsupported" with the reason in words."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix in UNSUPPORTED_SUFFIXES:
        return "unsupported", f"no extractor for {suffix}"
    if head.startswith(_TEXT_BOMS) or _utf16_without_bom(head):
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
    if sniffed is not None:
        return "binary", sniffed
    start = head.removeprefix(codecs.BOM_UTF8).lstrip()[:14].lower()
    if start.startswith((b"<!doctype html", b"<html")):
        return "html", "signature"
    return "text", "decodes as text"


def detect_kind(path: str | os.PathLike[str], head: bytes) -> str:
    """The kind of a file from its name and first bytes: one of KINDS, or "binary", or
    "unsupported" (a document type with no extractor). By extension first; the content's
    signature overrides an extension it contradicts (a .txt full of NULs is binary)."""
    return _detect(path, head)[0]


# ---------------------------------------------------------------------------------------------
# Decoding

# C0 controls other than tab/newline/VT/FF/CR, DEL, C1 controls, and U+FFFD
_GARBLED = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
_GARBLED_SAMPLE = 65536  # characters examined
_MAX_GARBLED = 0.1  # text with more than this share of garbled characters is not text


def _best_guess(data: bytes) -> str | None:
    matches = list(from_bytes(data))
    if not matches:
        return None
    # charset-normalizer breaks exact ties arbitrarily (cp1250 over cp1252 for Western text);
    # prefer cp1252, the most common legacy encoding, when it is as good as the best
    best = min(matches, key=lambda match: (match.percent_chaos, -match.percent_coherence,
                                           "cp1252" not in match.could_be_from_charset))
    return str(best).rstrip()


def _trailing_space(data: bytes) -> int:
    """How many ASCII whitespace bytes end `data`, without copying all of it."""
    tail = data[-4096:]
    count = len(tail) - len(tail.rstrip())
    return count if count < len(tail) else len(data) - len(data.rstrip())


def decode_text(data: bytes) -> str:
    """The text of `data` without its BOM and trailing whitespace: a BOM's encoding, else
    strict UTF-8, else UTF-16 without a BOM, else charset-normalizer's best guess. Raises
    Skipped("undecodable") when nothing fits or the result is mostly control or replacement
    characters."""
    text: str | None = None
    try:
        if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            text = data.decode("utf-32").rstrip()
        elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16").rstrip()
        else:
            # the fast path: trailing whitespace and the BOM are cut from a zero-copy view, so the
            # text is built once (a UTF-8 continuation byte is never ASCII whitespace)
            start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
            text = str(memoryview(data)[start:len(data) - _trailing_space(data)], "utf-8").rstrip()
    except UnicodeDecodeError:
        codec = _utf16_without_bom(data[:PROBE_BYTES])
        if codec is not None:
            try:
                text = data.decode(codec).rstrip()
            except UnicodeDecodeError:
                pass
        if text is None:
            text = _best_guess(data)
    if text is None:
        raise Skipped("undecodable", "no text encoding fits the bytes")
    sample = text[:_GARBLED_SAMPLE]
    if len(_GARBLED.findall(sample)) > _MAX_GARBLED * len(sample):
        raise Skipped("undecodable", "mostly control or replacement characters once decoded")
    return text


# ---------------------------------------------------------------------------------------------
# Reading and dispatch

@dataclass(frozen=True)
class Extraction:
    """The text of one file, with what identifies the bytes it came from."""

    text: str
    kind: str  # one of KINDS
    size: int  # bytes read
    mtime: float  # from fstat of the open file
    content_hash: str  # sha256 hex of exactly the bytes read


_TEXT_PARSERS: dict[str, Callable[[str], str]] = {
    "html": html_text, "json": json_text, "jsonl": jsonl_text, "csv": csv_text, "tsv": tsv_text,
}
_BYTES_PARSERS = {"pdf": pdf_text, "docx": docx_text, "epub": epub_text}
ISOLATED_KINDS = frozenset(_BYTES_PARSERS)  # parsed in an extractor process (crawler.ingest.sandbox)


def _read_bounded(fd: int, size_hint: int, limit: int) -> bytes:
    """Up to limit + 1 bytes from fd: one read for a file whose size is known and unchanged."""
    chunks: list[bytes] = []
    total = 0
    want = min(size_hint, limit) + 1 if size_hint > 0 else _READ_CHUNK
    while total <= limit:
        chunk = os.read(fd, min(want, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = _READ_CHUNK
    return b"".join(chunks)  # a single chunk is returned as is, without a copy


def _read(path: str | os.PathLike[str], limits: ExtractLimits,
          isolated: bool = True) -> tuple[bytes | None, os.stat_result, str]:
    """(bytes, fstat, kind) of a regular file, or Skipped before reading more than the head
    when the size, the type of file or the kind rules it out. With isolated=False, a kind in
    ISOLATED_KINDS is not read: the bytes are None, for an extractor process to read."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not hang; regular files ignore it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise Skipped("vanished", "the file disappeared before it was opened") from None
    except OSError as exc:
        raise Skipped("unreadable", f"open: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "directory" if stat.S_ISDIR(st.st_mode) else "fifo" if stat.S_ISFIFO(st.st_mode) \
                else "socket" if stat.S_ISSOCK(st.st_mode) else "device or other special file"
            raise Skipped("unsupported", f"not a regular file ({what})")
        if st.st_size > limits.max_file_bytes:
            raise Skipped("too_large", f"{st.st_size} bytes, over max_file_bytes ({limits.max_file_bytes})")
        head = os.pread(fd, PROBE_BYTES, 0)
        if not head:
            raise Skipped("empty", "0 bytes")
        kind, why = _detect(path, head)
        if kind == "binary":
            raise Skipped("binary", why)
        if kind == "unsupported":
            raise Skipped("unsupported", why)
        if not isolated and kind in ISOLATED_KINDS:
            return None, st, kind
        data = _read_bounded(fd, st.st_size, limits.max_file_bytes)
    except FileNotFoundError:
        raise Skipped("vanished", "the file disappeared while it was read") from None
    except OSError as exc:
        raise Skipped("unreadable", f"read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limits.max_file_bytes:
        raise Skipped("too_large", f"grew past max_file_bytes ({limits.max_file_bytes}) while read")
    return data, st, kind


def extract_unless_isolated(path: str | os.PathLike[str], limits: ExtractLimits) -> Extraction | None:
    """`extract_in_process` for a file whose kind is not in ISOLATED_KINDS; for one whose kind is,
    None, with no more than its head read (an extractor process opens it again). Raises as
    `extract_in_process` does, for any kind: a skip by size, type of file or kind comes first."""
    data, st, kind = _read(path, limits, isolated=False)
    if data is None:
        return None
    return _finish(data, st, kind, _parse(data, kind, limits, check_time=lambda: None))


def extract_in_process(path: str | os.PathLike[str], limits: ExtractLimits = ExtractLimits(),
                       clock: Callable[[], float] = time.monotonic) -> Extraction:
    """`crawler.ingest.extract.extract_file` with every kind parsed in this process: what an
    extractor process runs.

    The time budget is only cooperative here: checked with `clock` between pages and members,
    so one pathological page can overrun it, and a parser's memory is this process's.
    """
    deadline = clock() + limits.time_budget_seconds

    def check_time() -> None:
        if clock() > deadline:
            raise Skipped("timeout", f"over the {limits.time_budget_seconds:g} s time budget")

    data, st, kind = _read(path, limits)
    return _finish(data, st, kind, _parse(data, kind, limits, check_time))


def _parse(data: bytes, kind: str, limits: ExtractLimits, check_time: Callable[[], None]) -> str:
    if kind in _BYTES_PARSERS:
        return _BYTES_PARSERS[kind](data, limits, check_time)
    text = decode_text(data)
    return _TEXT_PARSERS[kind](text) if kind in _TEXT_PARSERS else text


def _finish(data: bytes, st: os.stat_result, kind: str, text: str) -> Extraction:
    if "\r" in text:  # a one-character search is ~20x faster than looking for "\r\n"
        text = text.replace("\r\n", "\n")
    text = text.rstrip()  # no copy when there is nothing to strip
    if not text:
        raise Skipped("empty", f"no text in {len(data)} bytes")
    return Extraction(text=text, kind=kind, size=len(data), mtime=st.st_mtime,
                      content_hash=hashlib.sha256(data).hexdigest())
