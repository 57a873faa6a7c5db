"""Text extraction: one file in, its text out, or a precise reason why not. Callers import here.

`extract_file` reads a file within `ExtractLimits` and returns an `Extraction`, or raises
`Skipped` with a reason from the fixed set SKIP_REASONS (a log field), or `ExtractionFailed`
when a parser rejects a file that looked valid. EXTRACTOR_VERSION names this extractor, for a
caller that records which one gave a verdict.

Skip reasons: empty (no bytes, or only whitespace text), binary (NUL bytes or a known binary
signature, also inside a compressed file), too_large (over max_file_bytes), unsupported (a
document type with no extractor, an encrypted PDF, a directory, FIFO, socket or device),
unreadable (an OS error on open or read), vanished (the path is gone), decompression_bomb (a
zip, or a single gzip, bzip2 or xz file, over its limits), timeout (the time budget ran out),
undecodable (no text encoding fits), corrupt (a compressed stream that is truncated or fails its
checks, or an archive that cannot be opened). too_large also covers a parser that needed more
than max_memory_bytes.

A tar or zip archive of documents (`crawler.ingest.archives`) is no document: `extract_file`
returns an `ArchiveExtraction`, its members each with the Extraction a file of that name and
content gets, or their own skip or failure, and the archive's own identity (size, mtime, hash).

This module decides where a file is parsed. PDF, DOCX, EPUB, every compressed file and every
archive (ISOLATED_KINDS), the kinds whose parsers untrusted bytes can hang or blow up, are parsed in an
extractor process (`crawler.ingest.sandbox`, which opens the path again) under a hard wall time
and address-space limit; every other kind, plain text first, is read, decoded and parsed here,
in this process. Either way the work is `crawler.ingest.inprocess`'s (reading, decoding, the
dispatch to the parsers). The pool of extractor processes starts with the first file that needs
one; `shutdown_pool()` ends it (atexit does too).

The modules below it, in the order they import each other: terms (limits, skip reasons,
errors), compressed, archives, kinds, the parsers (formats, troff_inline, troff, info), inprocess (one
file in this process), sandbox (inprocess in a child process), then this one; it re-exports what
callers need of terms and inprocess. It is not a file watcher and not a policy on paths:
O_NOFOLLOW, roots and symlinks are the caller's business, and it logs nothing.
Relies on the standard library and those modules.
"""

from __future__ import annotations

import atexit
import os
import threading

from .inprocess import (
    ARCHIVE_KINDS,
    ISOLATED_KINDS,
    KINDS,
    PROBE_BYTES,
    ArchiveExtraction,
    Extraction,
    Member,
    binary_mark,
    decode_text,
    detect_kind,
    extract_in_process,
    extract_unless_isolated,
)
from .sandbox import ExtractorPool
from .terms import (
    EXTRACTOR_VERSION,
    SKIP_REASONS,
    ExtractionFailed,
    ExtractLimits,
    Skipped,
)

__all__ = ["SKIP_REASONS", "EXTRACTOR_VERSION", "KINDS", "ARCHIVE_KINDS", "PROBE_BYTES", "ISOLATED_KINDS",
           "ExtractLimits", "Extraction", "ArchiveExtraction", "Member", "Skipped", "ExtractionFailed", "extract_file",
           "extract_in_process", "shutdown_pool", "detect_kind", "binary_mark", "decode_text"]


def extract_file(path: str | os.PathLike[str],
                 limits: ExtractLimits = ExtractLimits()) -> Extraction | ArchiveExtraction:
    """The text of the file at `path`, read once and whole (at most max_file_bytes); for an
    archive of documents, its members' (an ArchiveExtraction).

    Raises Skipped (reason in SKIP_REASONS) or ExtractionFailed; never an OSError. PDF, DOCX,
    EPUB, compressed files and archives are parsed in an extractor process: the call then
    blocks for at most the budget plus a grace (`crawler.ingest.sandbox.grace_seconds`), and the
    first such call also waits for the process to start (~0.1 s). Thread-safe.
    """
    extraction = extract_unless_isolated(path, limits)
    if extraction is None:
        fields = _pool().extract(path, limits)
        return ArchiveExtraction.from_fields(fields) if "members" in fields else Extraction(**fields)
    return extraction


# ---------------------------------------------------------------------------------------------
# The extractor processes

_pool_lock = threading.Lock()
_shared_pool: ExtractorPool | None = None


def _pool() -> ExtractorPool:
    global _shared_pool
    with _pool_lock:
        if _shared_pool is None:
            _shared_pool = ExtractorPool()
        return _shared_pool


def shutdown_pool() -> None:
    """End the extractor processes (idle ones now, busy ones after their file). Safe to call
    when none were started, and more than once; a later `extract_file` starts a new pool."""
    global _shared_pool
    with _pool_lock:
        pool, _shared_pool = _shared_pool, None
    if pool is not None:
        pool.close()


atexit.register(shutdown_pool)
