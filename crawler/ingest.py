"""Ingest: one file -> extracted text -> token ids -> one corpus-queue transaction.

Joins `crawler.extract`, a tokenizer and `storage.CorpusQueue`; used by `crystalline ingest`
and by the daemon. Every file ends as exactly one outcome: ingested, duplicate (the same bytes
are already queued under another name), unchanged (this path, size and mtime were seen
before: nothing is read), skipped (a reason from SKIP_REASONS) or failed (an error text). A bad
file never raises out of `ingest_file`; only a storage failure does, because that is the
caller's to handle (nothing was committed). Knows nothing of the engine.
"""

from __future__ import annotations

import os
import stat
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .extract import ExtractionFailed, ExtractLimits, Skipped, extract_file

# Skip reasons decided here, beside the extractor's own.
OUTSIDE_ROOT = "outside_root"
HIDDEN_SUFFIXES = ("~", ".part", ".tmp", ".swp", ".crdownload")


@dataclass(frozen=True)
class IngestOutcome:
    path: str
    status: str  # ingested | duplicate | unchanged | skipped | failed
    reason: str | None = None  # skip reason code, or the error text of a failure
    detail: str | None = None
    document_id: int | None = None
    bytes: int = 0
    tokens: int = 0
    ms: float = 0.0


@dataclass
class IngestSummary:
    counts: Counter = field(default_factory=Counter)  # status -> files
    reasons: Counter = field(default_factory=Counter)  # (status, reason) -> files
    bytes: int = 0
    tokens: int = 0

    def add(self, outcome: IngestOutcome) -> None:
        self.counts[outcome.status] += 1
        if outcome.reason:
            self.reasons[(outcome.status, outcome.reason)] += 1
        self.bytes += outcome.bytes
        self.tokens += outcome.tokens

    def to_dict(self) -> dict:
        return {"files": dict(self.counts), "bytes": self.bytes, "tokens": self.tokens,
                "reasons": {f"{s}:{r}": n for (s, r), n in sorted(self.reasons.items())}}


def is_ignored_name(name: str) -> bool:
    """Hidden and temporary names that are never ingested (dotfiles, editor and download
    leftovers)."""
    return name.startswith(".") or name.endswith(HIDDEN_SUFFIXES)


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether the fully resolved path lies inside one of the (resolved) roots."""
    return any(path == root or root in path.parents for root in roots)


def iter_files(paths: Iterable[str | Path]) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every candidate file under the given files and folders: recursive,
    sorted, hidden and temporary names skipped, symlinked folders not descended into."""
    for given in paths:
        root = Path(given)
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = sorted(d for d in dirnames if not is_ignored_name(d))
                for name in sorted(filenames):
                    if not is_ignored_name(name):
                        yield Path(dirpath) / name, root
        else:
            yield root, root.parent


class Ingestor:
    """Ingests files into a queue with one tokenizer. Not thread-safe: one per thread."""

    def __init__(self, queue, tokenizer, limits: ExtractLimits | None = None):
        self.queue = queue
        self.tokenizer = tokenizer
        self.tokenizer_identity = tokenizer.identity_string()
        self.limits = limits or ExtractLimits()
        queue.set_tokenizer(self.tokenizer_identity)

    def ingest_file(self, path: str | Path, root: str | Path | None = None) -> IngestOutcome:
        """Ingest one file; `root` (when given) is the folder it must resolve into."""
        t0 = time.perf_counter()
        path = Path(os.path.abspath(path))
        source = str(path)

        def done(status, reason=None, detail=None, **kw) -> IngestOutcome:
            return IngestOutcome(source, status, reason, detail, ms=(time.perf_counter() - t0) * 1e3, **kw)

        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return done("skipped", "vanished", "the file disappeared before it was read")
        except OSError as exc:
            self.queue.record_skip(source_path=source, reason="unreadable", detail=str(exc))
            return done("skipped", "unreadable", str(exc))
        if root is not None and stat.S_ISLNK(st.st_mode):
            target = path.resolve()
            if not within(target, [Path(root).resolve()]):
                if self.queue.seen(source, st.st_size, st.st_mtime):
                    return done("unchanged")
                detail = f"symlink to {target}, outside {root}"
                self.queue.record_skip(source_path=source, reason=OUTSIDE_ROOT, detail=detail,
                                       size=st.st_size, mtime=st.st_mtime)
                return done("skipped", OUTSIDE_ROOT, detail)
        if stat.S_ISLNK(st.st_mode):
            try:
                st = os.stat(path)
            except OSError:
                return done("skipped", "vanished", "a dangling symlink")
        if stat.S_ISREG(st.st_mode) and self.queue.seen(source, st.st_size, st.st_mtime):
            return done("unchanged")
        try:
            extraction = extract_file(path, self.limits)
        except Skipped as skip:
            if skip.reason != "vanished":  # nothing to remember about a file that is gone
                self.queue.record_skip(source_path=source, reason=skip.reason, detail=skip.detail,
                                       size=st.st_size, mtime=st.st_mtime)
            return done("skipped", skip.reason, skip.detail)
        except Exception as exc:  # noqa: BLE001 - a parser error or a pathological file: never fatal
            failure = exc.detail if isinstance(exc, ExtractionFailed) and getattr(exc, "detail", None) else None
            detail = failure or f"{type(exc).__name__}: {exc}"
            self.queue.record_skip(source_path=source, reason="extraction_failed", detail=detail,
                                   status="failed", size=st.st_size, mtime=st.st_mtime)
            return done("failed", "extraction_failed", detail)

        body = self.tokenizer.encode_text(extraction.text)
        tokens = np.empty(body.size + 1, dtype=body.dtype)
        tokens[0] = self.tokenizer.eod_id  # a separator opens every document in the stream
        tokens[1:] = body
        result = self.queue.add_document(source_path=source, content_hash=extraction.content_hash,
                                         size=extraction.size, mtime=extraction.mtime,
                                         kind=extraction.kind, tokens=tokens,
                                         tokenizer=self.tokenizer_identity)
        status = "duplicate" if result.status == "duplicate" else "ingested"
        detail = f"same content as document {result.duplicate_of}" if status == "duplicate" else None
        return done(status, None, detail, document_id=result.document_id, bytes=extraction.size,
                    tokens=int(tokens.size) if status == "ingested" else 0)
