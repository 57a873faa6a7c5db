"""Extraction in this process: one file in, its text out, or a precise reason why not.

`extract_in_process` opens a path once, reads it within `ExtractLimits`, decides its kind
(`crawler.ingest.kinds`: by extension, then by sniffing the first bytes), decodes it and hands
it to the kind's parser (`crawler.ingest.formats`, `crawler.ingest.troff` for man pages,
`crawler.ingest.info` for GNU info). A single gzip, bzip2 or xz file is inflated first
(`crawler.ingest.compressed`, within the bomb limits), and what it inflates to is typed again
and parsed as its own kind. It returns an `Extraction`, or raises `Skipped` (a reason from
SKIP_REASONS) or `ExtractionFailed`. An archive of documents (a tar or zip, compressed or not:
`crawler.ingest.archives`) is an `ArchiveExtraction` instead: each member extracted from its
bytes exactly as a file of that name and content would be (the same kinds, decoding, parsers
and compressed-file handling, through the same `_extract`), a member's own skip or failure kept
with it, an archive among the members read in turn up to MAX_ARCHIVE_DEPTH, and the limits and
the time budget one budget for the whole. The time budget is only cooperative here and a parser's
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
library, charset-normalizer and the modules named above (and through formats pypdfium2).
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from charset_normalizer import from_bytes

from .archives import (
    ARCHIVE_FORMATS,
    MAX_ARCHIVE_DEPTH,
    ArchiveBudget,
    Members,
    RawMember,
    member_path,
)
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
    ARCHIVE_KINDS,
    KINDS,
    PROBE_BYTES,
    binary_mark,
    classify,
    detect_inflated,
    detect_kind,
    utf16_without_bom,
)
from .terms import CheckTime, ExtractionFailed, ExtractLimits, Skipped
from .troff import troff_text

__all__ = ["KINDS", "ARCHIVE_KINDS", "PROBE_BYTES", "ISOLATED_KINDS", "Extraction", "Member", "ArchiveExtraction",
           "extract_in_process", "extract_unless_isolated", "detect_kind", "binary_mark", "decode_text"]

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
# What an extraction gives

@dataclass(frozen=True)
class Extraction:
    """The text of one file, with what identifies the bytes it came from."""

    text: str
    kind: str  # one of KINDS: for a compressed file, its content's and the compression (man+gzip)
    size: int  # bytes read
    mtime: float  # from fstat of the open file (an archive member: from its header)
    content_hash: str  # sha256 hex of exactly the bytes read


@dataclass(frozen=True)
class Member:
    """One member of an archive: its text, or why there is none. A member of a nested archive is
    named by both names, `inner.tar!doc.txt` (crawler.ingest.archives.MEMBER_SEPARATOR)."""

    name: str  # inside the archive, normalised ("docs/a.txt")
    size: int  # its bytes (declared, when they were not read)
    mtime: float  # from its header
    content_hash: str | None  # sha256 hex of its bytes; None when they were not read
    extraction: Extraction | None = None  # its text; None for a skip or a failure
    reason: str | None = None  # a skip: a reason from SKIP_REASONS
    detail: str = ""  # why, in words (a failure's error)
    failed: bool = False  # a parser rejected it (or failed on it): `detail` says how


@dataclass(frozen=True)
class ArchiveExtraction:
    """An archive of documents: its own identity (as an Extraction's) and its members in archive
    order, each name once (the last entry of a name wins, as tar extracts it)."""

    kind: str  # one of ARCHIVE_KINDS: tar, zip, tar+gzip, ...
    size: int
    mtime: float
    content_hash: str  # sha256 hex of the archive file's bytes
    members: tuple[Member, ...]
    # why reading stopped before the end (a tar cut short or damaged, here or in a nested
    # archive); the members listed were read whole. "" for an archive read to its end
    truncated: str = ""

    def to_fields(self) -> dict:
        """Plain values (JSON's), for the extractor process's answer: `from_fields` inverts it."""
        return dataclasses.asdict(self)  # the members and their extractions as dicts too

    @classmethod
    def from_fields(cls, fields: dict) -> ArchiveExtraction:
        members = []
        for member in fields["members"]:
            extraction = member.get("extraction")
            members.append(Member(**{**member, "extraction": None if extraction is None else Extraction(**extraction)}))
        return cls(**{**fields, "members": tuple(members)})


# ---------------------------------------------------------------------------------------------
# Reading and dispatch

_TEXT_PARSERS: dict[str, Callable[[str], str]] = {
    "html": html_text, "json": json_text, "jsonl": jsonl_text, "csv": csv_text, "tsv": tsv_text,
    "man": troff_text, "info": info_text,
}
_BYTES_PARSERS = {"pdf": pdf_text, "docx": docx_text, "epub": epub_text}
# parsed in an extractor process (crawler.ingest.sandbox): the documents whose parsers untrusted
# bytes can hang or blow up, every compressed file, which inflates up to max_uncompressed_bytes
# (four times max_file_bytes) and may be a bomb, and every archive, which holds both
ISOLATED_KINDS = (frozenset(_BYTES_PARSERS) | frozenset(kind for kind in KINDS if "+" in kind)
                  | frozenset(ARCHIVE_KINDS))


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


def _kind_of(name: str | os.PathLike[str], head: bytes) -> str:
    """The kind of a file (or an archive member) whose first bytes are `head`, or the skip that
    rules it out: Skipped("empty"), Skipped("binary"), Skipped("unsupported")."""
    if not head:
        raise Skipped("empty", "0 bytes")
    kind, why = classify(name, head)
    if kind == "binary":
        raise Skipped("binary", why)
    if kind == "unsupported":
        raise Skipped("unsupported", why)
    return kind


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
        kind = _kind_of(path, os.pread(fd, PROBE_BYTES, 0))
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
    return _finish(data, st.st_mtime, kind, _parse(data, kind, limits, check_time=lambda: None))


def extract_in_process(path: str | os.PathLike[str], limits: ExtractLimits = ExtractLimits(),
                       clock: Callable[[], float] = time.monotonic) -> Extraction | ArchiveExtraction:
    """`crawler.ingest.extract.extract_file` with every kind parsed in this process: what an
    extractor process runs.

    The time budget is only cooperative here: checked with `clock` between pages and members,
    so one pathological page can overrun it, and a parser's memory is this process's. An
    archive (its kind, or what a compressed file turns out to inflate to) is an
    ArchiveExtraction, read within one time budget and the limits of `crawler.ingest.archives`.
    """
    deadline = clock() + limits.time_budget_seconds

    def check_time() -> None:
        if clock() > deadline:
            raise Skipped("timeout", f"over the {limits.time_budget_seconds:g} s time budget")

    data, st, kind = _read(path, limits)
    return _extract(os.fspath(path), data, st.st_mtime, kind, limits, check_time)


def _extract(name: str, data: bytes, mtime: float, kind: str, limits: ExtractLimits, check_time: CheckTime,
             budget: ArchiveBudget | None = None, depth: int = 0) -> Extraction | ArchiveExtraction:
    """The text of one file's bytes of the kind `_kind_of` gave: a file read whole, or a member of
    an archive (`budget` then the archive's, `depth` its level, 1 for the outer archive's members).
    A compressed file's content decides its kind, not the head's guess; an archive, of any
    kind, becomes an ArchiveExtraction."""
    codec = kind.rpartition("+")[2] if "+" in kind else None
    content = data
    if codec is not None:
        inner_limits = limits if budget is None else dataclasses.replace(
            limits, max_uncompressed_bytes=max(1, min(limits.max_uncompressed_bytes, budget.left)))
        content = inflate(data, codec, inner_limits, check_time)
        if budget is not None:  # everything inflated inside an archive counts against its limits
            budget.charge(len(content), f"{name!r}, a {codec} stream")
        if not content:
            raise Skipped("empty", f"a {codec} stream of 0 bytes")
        inner, why = detect_inflated(name, codec, content)
        if inner in ("binary", "unsupported"):
            raise Skipped(inner, why)
        kind = f"{inner}+{codec}"
    fmt = kind.partition("+")[0]
    if fmt in ARCHIVE_FORMATS:
        return _read_archive(name, data, content, kind, mtime, limits, check_time, budget, depth)
    return _finish(data, mtime, kind, _parse(content, fmt, limits, check_time))


def _parse(data: bytes, kind: str, limits: ExtractLimits, check_time: Callable[[], None]) -> str:
    if kind in _BYTES_PARSERS:
        return _BYTES_PARSERS[kind](data, limits, check_time)
    text = decode_text(data)
    return _TEXT_PARSERS[kind](text) if kind in _TEXT_PARSERS else text


def _finish(data: bytes, mtime: float, kind: str, text: str) -> Extraction:
    if "\r" in text:  # a one-character search is ~20x faster than looking for "\r\n"
        text = text.replace("\r\n", "\n")
    text = text.rstrip()  # no copy when there is nothing to strip
    if not text:
        raise Skipped("empty", f"no text in {len(data)} bytes")
    return Extraction(text=text, kind=kind, size=len(data), mtime=mtime,
                      content_hash=hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------------------------
# Archives: each member extracted as a file would be, within the archive's one budget

# the skips of a member that are the whole archive's: its limits and its time are one budget
_ARCHIVE_WIDE = ("decompression_bomb", "timeout")


def _read_archive(name: str, data: bytes, content: bytes, kind: str, mtime: float, limits: ExtractLimits,
                  check_time: CheckTime, budget: ArchiveBudget | None, depth: int) -> ArchiveExtraction:
    """The members of an archive (`content`: its bytes once inflated), each through `_extract`.
    At MAX_ARCHIVE_DEPTH an archive is a member skip, unsupported. Raises Skipped for the archive
    as a whole: corrupt (it cannot be opened), decompression_bomb and timeout (anywhere in it)."""
    if budget is None:  # the outer archive: its limits start here
        budget = ArchiveBudget(limits, len(data))
        if content is not data:
            budget.charge(len(content), f"{name!r}, a {kind.rpartition('+')[2]} stream")
    elif depth >= MAX_ARCHIVE_DEPTH:
        raise Skipped("unsupported", f"a {kind} archive inside {depth} archives: archives are read "
                      f"{MAX_ARCHIVE_DEPTH} deep (MAX_ARCHIVE_DEPTH)")
    listing = Members(content, kind.partition("+")[0], budget, limits, check_time)
    members: dict[str, Member] = {}
    truncated: list[str] = []
    for raw in listing:
        found = _member(raw, limits, check_time, budget, depth + 1, truncated)
        for member in found:
            members.pop(member.name, None)  # the last entry of a name wins, in its own place
            members[member.name] = member
    if listing.truncated:
        truncated.insert(0, listing.truncated)
    return ArchiveExtraction(kind, len(data), mtime, hashlib.sha256(data).hexdigest(), tuple(members.values()),
                             "; ".join(truncated))


def _member(raw: RawMember, limits: ExtractLimits, check_time: CheckTime, budget: ArchiveBudget, depth: int,
            truncated: list[str]) -> list[Member]:
    """The member (or, for a nested archive, its members named `raw.name!...`) of one entry;
    a nested archive's truncation goes into `truncated`. Never raises for the member's sake:
    only the archive-wide skips (_ARCHIVE_WIDE) and MemoryError pass."""
    if raw.skip is not None or raw.data is None:
        reason, detail = raw.skip or ("unreadable", "not read")
        return [Member(raw.name, raw.size, raw.mtime, None, reason=reason, detail=detail)]
    digest = hashlib.sha256(raw.data).hexdigest()
    try:
        result = _extract(raw.name, raw.data, raw.mtime, _kind_of(raw.name, raw.data[:PROBE_BYTES]), limits,
                          check_time, budget, depth)
    except Skipped as skip:
        if skip.reason in _ARCHIVE_WIDE:
            raise
        return [Member(raw.name, raw.size, raw.mtime, digest, reason=skip.reason, detail=skip.detail)]
    except ExtractionFailed as exc:
        return [Member(raw.name, raw.size, raw.mtime, digest, detail=exc.detail, failed=True)]
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a parser's fault on one member is that member's, as a file's
        return [Member(raw.name, raw.size, raw.mtime, digest, detail=f"{type(exc).__name__}: {exc}", failed=True)]
    if isinstance(result, Extraction):
        return [Member(raw.name, raw.size, raw.mtime, digest, extraction=result)]
    if result.truncated:  # a nested archive: its members under its name
        truncated.append(f"{raw.name}: {result.truncated}")
    return [dataclasses.replace(member, name=member_path(raw.name, member.name)) for member in result.members]
