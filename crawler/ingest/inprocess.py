"""Extraction in this process: one file in, its text out, or a precise reason why not.

`extract_in_process` opens a path once, reads it within `ExtractLimits`, decides its kind
(`crawler.ingest.kinds`: by extension, then by sniffing the first bytes), decodes it and hands
it to the kind's parser (`crawler.ingest.formats`, `crawler.ingest.troff` for man pages,
`crawler.ingest.info` for GNU info). A single gzip, bzip2 or xz file is inflated first
(`crawler.ingest.compressed`, within the bomb limits), and what it inflates to is typed again
and parsed as its own kind. It returns an `Extraction`, or raises `Skipped` (a reason from
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
library, charset-normalizer and the modules named above (and through formats pypdf).
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

from .compressed import inflate
from .formats import (
    csv_text,
    docx_text,
    epub_text,
    html_text,
    json_text,
    jsonl_text,
    pdf_text,
    tsv_text,
)
from .info import info_text
from .kinds import (
    KINDS,
    PROBE_BYTES,
    binary_mark,
    classify,
    detect_inflated,
    detect_kind,
    utf16_without_bom,
)
from .terms import ExtractLimits, Skipped
from .troff import troff_text

__all__ = ["KINDS", "PROBE_BYTES", "ISOLATED_KINDS", "Extraction", "extract_in_process", "extract_unless_isolated",
           "detect_kind", "binary_mark", "decode_text"]

_READ_CHUNK = 2**20  # reads after the first, when a file grows or reports no size (procfs)

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
        codec = utf16_without_bom(data[:PROBE_BYTES])
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
    kind: str  # one of KINDS: for a compressed file, its content's and the compression (man+gzip)
    size: int  # bytes read
    mtime: float  # from fstat of the open file
    content_hash: str  # sha256 hex of exactly the bytes read


_TEXT_PARSERS: dict[str, Callable[[str], str]] = {
    "html": html_text, "json": json_text, "jsonl": jsonl_text, "csv": csv_text, "tsv": tsv_text,
    "man": troff_text, "info": info_text,
}
_BYTES_PARSERS = {"pdf": pdf_text, "docx": docx_text, "epub": epub_text}
# parsed in an extractor process (crawler.ingest.sandbox): the documents whose parsers untrusted
# bytes can hang or blow up, and every compressed file, which inflates up to
# max_uncompressed_bytes (four times max_file_bytes) and may be a bomb
ISOLATED_KINDS = frozenset(_BYTES_PARSERS) | frozenset(kind for kind in KINDS if "+" in kind)


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
        kind, why = classify(path, head)
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
    if "+" in kind:  # a compressed file: its content decides the kind, not the head's guess
        return _finish(data, st, *_parse_inflated(path, data, kind, limits, check_time))
    return _finish(data, st, kind, _parse(data, kind, limits, check_time))


def _parse(data: bytes, kind: str, limits: ExtractLimits, check_time: Callable[[], None]) -> str:
    if kind in _BYTES_PARSERS:
        return _BYTES_PARSERS[kind](data, limits, check_time)
    text = decode_text(data)
    return _TEXT_PARSERS[kind](text) if kind in _TEXT_PARSERS else text


def _parse_inflated(path: str | os.PathLike[str], data: bytes, kind: str, limits: ExtractLimits,
                    check_time: Callable[[], None]) -> tuple[str, str]:
    """(kind, text) of a compressed file: what it inflates to (within the bomb limits), typed
    by its inner name and that content, through the inner kind's parser."""
    codec = kind.rpartition("+")[2]
    content = inflate(data, codec, limits, check_time)
    if not content:
        raise Skipped("empty", f"a {codec} stream of 0 bytes")
    inner, why = detect_inflated(path, codec, content)
    if inner in ("binary", "unsupported"):
        raise Skipped(inner, why)
    return f"{inner}+{codec}", _parse(content, inner, limits, check_time)


def _finish(data: bytes, st: os.stat_result, kind: str, text: str) -> Extraction:
    if "\r" in text:  # a one-character search is ~20x faster than looking for "\r\n"
        text = text.replace("\r\n", "\n")
    text = text.rstrip()  # no copy when there is nothing to strip
    if not text:
        raise Skipped("empty", f"no text in {len(data)} bytes")
    return Extraction(text=text, kind=kind, size=len(data), mtime=st.st_mtime,
                      content_hash=hashlib.sha256(data).hexdigest())
