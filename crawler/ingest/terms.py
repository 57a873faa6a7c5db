"""The extractor's terms: what one file may cost it, and the words it reports a refusal in.

`ExtractLimits` (the [extract] section of the configuration), `Skipped` with a reason from the
fixed set SKIP_REASONS, `ExtractionFailed`, and EXTRACTOR_VERSION, which names the extractor that
gave a verdict. Every module of the extractor (formats, compressed, archives, troff, info,
kinds, inprocess, sandbox, extract) speaks these; callers import them from `crawler.ingest.extract`.
It parses nothing and logs nothing. Relies on the standard library and `crawler.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import ConfigError

SKIP_REASONS = ("empty", "binary", "too_large", "unsupported", "unreadable", "vanished",
                "decompression_bomb", "timeout", "undecodable", "corrupt")

# The extractor that skipped or failed a file, recorded with the verdict, so that files an older
# extractor refused can be offered again to a newer one. Raised whenever a verdict may change.
# 1: the extractor before this constant. 2: a single gzip, bzip2 or xz file is its content (it was
# binary); man pages become their text (they were troff source); GNU info files with index
# markers are read (their NUL bytes made them binary); a truncated stream is `corrupt`.
# 3: an HTML page is its main content: navigation landmarks (<nav>, the navigation, search,
# banner and contentinfo roles, DocBook's navheader/navfooter) go, and so does everything outside
# a <main> or role=main (`crawler.ingest.html`). The text stored for HTML changes, and the
# version recorded with a document says which extractor made its text; pages stored before keep
# theirs (only skips are offered again).
# 4: tar and zip archives of documents are read, each member a document of its own named
# ARCHIVE!member (crawler.ingest.archives); they were binary (a .tar.gz "tar archive, inside a
# gzip stream", a .zip "zip archive").
# 5: PDFs are read by PDFium (pypdfium2) instead of pypdf: the same words in a page layout of its
# own, in a tenth of the time, so PDFs that ran out of time_budget_seconds may now be read.
EXTRACTOR_VERSION = 5

# The compression ratio limit holds past this many inflated bytes: below 1 MiB a high ratio is
# only a small repetitive part (a zip's XML, a short compressed page) and cannot hurt.
RATIO_FLOOR_BYTES = 2**20

MIN_MEMORY_BYTES = 128 * 2**20  # below this the extractor process could not even start a parser
CheckTime = Callable[[], None]  # raises Skipped("timeout") once the file's time budget is spent


class Skipped(Exception):
    """The file is deliberately not extracted. `reason` is one of SKIP_REASONS (a log field);
    `detail` says why in words, for people."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; allowed: {', '.join(SKIP_REASONS)}")
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


class ExtractionFailed(Exception):
    """A parser rejected a file that looked valid (bad JSON, a broken PDF or zip); `detail` says how."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class ExtractLimits:
    """What one file may cost the extractor; the [extract] section of the configuration."""

    # larger files are skipped as too_large (checked by fstat before reading, and while reading)
    max_file_bytes: int = 64 * 2**20
    # zipped formats: the sum of the member sizes read; a single gzip, bzip2 or xz file: what it
    # inflates to (a bomb inflates far past its file size); an archive: all it inflates, members
    # and nested archives included
    max_uncompressed_bytes: int = 256 * 2**20
    # zipped formats, per member and overall, and single compressed files, past RATIO_FLOOR_BYTES;
    # real DOCX/EPUB XML and text compress 3-30x, zeros ~1000x
    max_compression_ratio: float = 200.0
    max_zip_members: int = 10_000
    # archives of documents (tar, zip: crawler.ingest.archives): entries listed, directories and
    # the entries of nested archives included; past it the archive is a decompression_bomb. Its
    # members share max_uncompressed_bytes and max_compression_ratio as one file's parts do
    max_archive_members: int = 10_000
    # per file, for the slow parsers: checked between pages, members and inflated chunks, and
    # enforced for the kinds parsed in an extractor process (crawler.ingest.sandbox) by stopping
    # it shortly after
    time_budget_seconds: float = 30.0
    # PDF, DOCX, EPUB and compressed files: the address space (RLIMIT_AS) of the extractor process;
    # a parser that needs more is stopped and the file skipped as too_large. The process alone
    # takes ~40 MB.
    max_memory_bytes: int = 2 * 2**30

    def validate(self) -> "ExtractLimits":
        """Return self, or raise ConfigError naming the first bad limit."""
        for name in ("max_file_bytes", "max_uncompressed_bytes", "max_zip_members", "max_archive_members"):
            if getattr(self, name) < 1:
                raise ConfigError(f"[extract] {name} ({getattr(self, name)}) must be >= 1")
        if not self.max_compression_ratio >= 1.0:
            raise ConfigError(f"[extract] max_compression_ratio ({self.max_compression_ratio}) must be >= 1")
        if not self.time_budget_seconds > 0:
            raise ConfigError(f"[extract] time_budget_seconds ({self.time_budget_seconds}) must be > 0")
        if self.max_memory_bytes < MIN_MEMORY_BYTES:
            raise ConfigError(f"[extract] max_memory_bytes ({self.max_memory_bytes}) must be >= {MIN_MEMORY_BYTES} "
                              f"(128 MiB; the extractor process alone needs about 40 MB)")
        return self
