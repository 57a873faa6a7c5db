"""Ingest: one file -> extracted text -> token ids -> one corpus-queue transaction.

Joins `crawler.extract`, a tokenizer and `storage.CorpusQueue`; used by `crystalline ingest`
and by the daemon. Every file ends as exactly one outcome: ingested, duplicate (the same bytes
are already queued under another name), unchanged (this path, size and mtime were seen
before: nothing is read), skipped (a reason from SKIP_REASONS) or failed (an error text). A bad
file never raises out of `ingest_file`; only a storage failure does, because that is the
caller's to handle (nothing of that transaction was committed). Knows nothing of the engine.
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

from storage import NewDocument

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
        return next(self.ingest_files([(path, root)]))

    def ingest_files(self, files: Iterable[tuple[str | Path, str | Path | None]],
                     batch_files: int = 256, batch_bytes: int = 1 << 20) -> Iterator[IngestOutcome]:
        """Ingest (path, root) pairs, yielding one outcome per file. Files are looked up in the
        queue `batch_files` at a time, and their tokens committed together, one transaction per
        `batch_bytes` of text: many small files cost a few statements, not a few each. A
        document's outcome is yielded once its transaction has committed."""
        group: list[tuple[Path, Path | None]] = []
        for path, root in files:
            group.append((Path(os.path.abspath(path)), None if root is None else Path(root)))
            if len(group) == batch_files:
                yield from self._ingest_group(group, batch_bytes)
                group = []
        if group:
            yield from self._ingest_group(group, batch_bytes)

    def _ingest_group(self, group: list[tuple[Path, Path | None]], batch_bytes: int) -> Iterator[IngestOutcome]:
        stats: dict[Path, os.stat_result | OSError] = {}
        for path, _ in group:
            try:
                stats[path] = os.lstat(path)
            except OSError as exc:
                stats[path] = exc
        versions = [(str(p), st.st_size, st.st_mtime) for p, st in stats.items() if not isinstance(st, OSError)]
        seen = self.queue.seen_many(versions)
        pending: list[_Pending] = []
        pending_bytes = 0
        for path, root in group:
            prepared = self._prepare(path, root, stats[path], seen)
            if isinstance(prepared, IngestOutcome):
                yield prepared
                continue
            pending.append(prepared)
            pending_bytes += prepared.extraction.size
            if pending_bytes >= batch_bytes:
                yield from self._commit(pending)
                pending, pending_bytes = [], 0
        if pending:
            yield from self._commit(pending)

    def _prepare(self, path: Path, root: Path | None, st, seen: set) -> "IngestOutcome | _Pending":
        """Everything for one file short of the database write: an outcome, or its tokens."""
        t0 = time.perf_counter()
        source = str(path)

        def done(status, reason=None, detail=None) -> IngestOutcome:
            return IngestOutcome(source, status, reason, detail, ms=(time.perf_counter() - t0) * 1e3)

        def remember(reason, detail, status="skipped", st=None) -> IngestOutcome:
            size, mtime = (st.st_size, st.st_mtime) if st is not None else (None, None)
            self.queue.record_skip(source_path=source, reason=reason, detail=detail, status=status,
                                   size=size, mtime=mtime)
            return done(status, reason, detail)

        if isinstance(st, FileNotFoundError):
            return done("skipped", "vanished", "the file disappeared before it was read")
        if isinstance(st, OSError):
            return remember("unreadable", str(st))
        if stat.S_ISLNK(st.st_mode):
            if root is not None and not within(path.resolve(), [root.resolve()]):
                if (source, st.st_size, st.st_mtime) in seen:
                    return done("unchanged")
                return remember(OUTSIDE_ROOT, f"symlink to {path.resolve()}, outside {root}", st=st)
            try:
                st = os.stat(path)
            except OSError:
                return done("skipped", "vanished", "a dangling symlink")
            if self.queue.seen(source, st.st_size, st.st_mtime):
                return done("unchanged")
        elif (source, st.st_size, st.st_mtime) in seen:
            return done("unchanged")
        try:
            extraction = extract_file(path, self.limits)
        except Skipped as skip:
            if skip.reason == "vanished":  # nothing to remember about a file that is gone
                return done("skipped", skip.reason, skip.detail)
            return remember(skip.reason, skip.detail, st=st)
        except Exception as exc:  # noqa: BLE001 - a parser error or a pathological file: never fatal
            failure = exc.detail if isinstance(exc, ExtractionFailed) and getattr(exc, "detail", None) else None
            return remember("extraction_failed", failure or f"{type(exc).__name__}: {exc}", status="failed", st=st)
        body = self.tokenizer.encode_text(extraction.text)
        tokens = np.empty(body.size + 1, dtype=body.dtype)
        tokens[0] = self.tokenizer.eod_id  # a separator opens every document in the stream
        tokens[1:] = body
        return _Pending(source, extraction, tokens, time.perf_counter() - t0)

    def _commit(self, pending: list["_Pending"]) -> Iterator[IngestOutcome]:
        t0 = time.perf_counter()
        items = [NewDocument(p.source, p.extraction.content_hash, p.extraction.size, p.extraction.mtime,
                             p.extraction.kind, p.tokens) for p in pending]
        results = self.queue.add_documents(items, tokenizer=self.tokenizer_identity)
        share = (time.perf_counter() - t0) / len(pending)  # the commit's cost, split evenly
        for p, result in zip(pending, results):
            duplicate = result.status == "duplicate"
            yield IngestOutcome(p.source, "duplicate" if duplicate else "ingested", None,
                                f"same content as document {result.duplicate_of}" if duplicate else None,
                                document_id=result.document_id, bytes=p.extraction.size,
                                tokens=0 if duplicate else int(p.tokens.size),
                                ms=(p.seconds + share) * 1e3)


@dataclass(frozen=True)
class _Pending:
    source: str
    extraction: object  # crawler.extract.Extraction
    tokens: np.ndarray
    seconds: float
