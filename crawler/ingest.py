"""Ingest: one file -> extracted text -> token ids -> one corpus-queue transaction.

Joins `crawler.extract`, a tokenizer and `storage.CorpusQueue`; used by `crystalline ingest`
and by the daemon. Every file ends as exactly one outcome: ingested, duplicate (the same bytes
are already queued under another name), unchanged (this path, size and mtime were seen
before: nothing is read), skipped (a reason from SKIP_REASONS) or failed (an error text). A bad
file never raises out of `ingest_file`; only a storage failure does, because that is the
caller's to handle (nothing of that transaction was committed). Every per-file fault (a
symlink loop, a name that is not UTF-8, a parser's bug) is that file's own outcome: the looks
and the extraction of one file run under one guard, and storage calls stay outside it, so a
storage error is never mistaken for a bad file. File names travel as Python holds them (lone
surrogates for bytes that are not UTF-8); storage stores them losslessly, and `display_path`
makes them printable for logs. Knows nothing of the engine.
"""

from __future__ import annotations

import errno
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
    leftovers: emacs writes `#notes.txt#` autosaves and `.#notes.txt` locks)."""
    return (name.startswith(".") or name.endswith(HIDDEN_SUFFIXES)
            or (len(name) > 1 and name.startswith("#") and name.endswith("#")))


def display_path(path: str | Path) -> str:
    """A path as logs show it: bytes that are not UTF-8 written \\xNN (as `ls -b` would), so a
    JSON line or a terminal can always print it."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
        looks = [_look(path, root) for path, root in group]
        seen = self.queue.seen_many([look.version for look in looks if look.version is not None])
        pending: list[_Pending] = []
        pending_bytes = 0
        for look in looks:
            prepared = self._prepare(look, seen)
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

    def _prepare(self, look: "_Look", seen: set) -> "IngestOutcome | _Pending":
        """Everything for one file short of the database write: an outcome, or its tokens."""
        t0 = time.perf_counter()
        try:
            verdict = self._examine(look, seen)
        except Exception as exc:  # noqa: BLE001 - one file's fault, whatever it is, is that file's outcome
            verdict = _Verdict("failed", "extraction_failed", f"{type(exc).__name__}: {exc}", remember=True)
        if isinstance(verdict, _Pending):
            return verdict
        if verdict.remember:  # outside the guard: a storage error is the caller's, not this file's
            size, mtime = look.version[1:] if look.version is not None else (None, None)
            self.queue.record_skip(source_path=look.source, reason=verdict.reason, detail=verdict.detail,
                                   status=verdict.status, size=size, mtime=mtime)
        return IngestOutcome(look.source, verdict.status, verdict.reason, verdict.detail,
                             ms=(time.perf_counter() - t0) * 1e3)

    def _examine(self, look: "_Look", seen: set) -> "_Verdict | _Pending":
        """The verdict on one file from its looks: no storage call, so any exception is its own."""
        t0 = time.perf_counter()
        if look.error is not None:
            return _Verdict("skipped", *look.error, remember=look.error[0] != "vanished")
        if look.version in seen:
            return _Verdict("unchanged")
        if look.skip is not None:
            return _Verdict("skipped", *look.skip, remember=True)
        try:
            extraction = extract_file(look.path, self.limits)
        except Skipped as skip:
            # nothing to remember about a file that is gone
            return _Verdict("skipped", skip.reason, skip.detail, remember=skip.reason != "vanished")
        except Exception as exc:  # noqa: BLE001 - a parser error or a pathological file: never fatal
            failure = exc.detail if isinstance(exc, ExtractionFailed) and getattr(exc, "detail", None) else None
            return _Verdict("failed", "extraction_failed", failure or f"{type(exc).__name__}: {exc}", remember=True)
        body = self.tokenizer.encode_text(extraction.text)
        tokens = np.empty(body.size + 1, dtype=body.dtype)
        tokens[0] = self.tokenizer.eod_id  # a separator opens every document in the stream
        tokens[1:] = body
        return _Pending(look.source, extraction, tokens, time.perf_counter() - t0)

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
class _Look:
    """What lstat (and, for a symlink, the target) says of one file, before anything is read."""

    path: Path
    source: str
    version: tuple[str, int, float] | None = None  # (path, size, mtime) to check against the store
    error: tuple[str, str] | None = None  # (reason, detail): it could not be looked at
    skip: tuple[str, str] | None = None  # (reason, detail): it is not something to read


def _look(path: Path, root: Path | None) -> _Look:
    """Look at one file without opening it; never raises."""
    source = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return _Look(path, source, error=("vanished", "the file disappeared before it was read"))
    except OSError as exc:
        return _Look(path, source, error=("unreadable", _os_error(exc)))
    version = (source, st.st_size, st.st_mtime)
    try:
        if stat.S_ISLNK(st.st_mode):
            resolved = path.resolve()  # RuntimeError on a symlink loop (OSError from Python 3.13)
            if root is not None and not within(resolved, [root.resolve()]):
                return _Look(path, source, version,
                             skip=(OUTSIDE_ROOT, f"symlink to {resolved}, outside {root}"))
            try:
                target = os.stat(path)
            except FileNotFoundError:
                return _Look(path, source, error=("vanished", "a dangling symlink"))
            version = (source, target.st_size, target.st_mtime)  # the target's version decides
            st = target
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            return _Look(path, source, version, skip=("unreadable", "a symlink loop: the link never reaches a file"))
        return _Look(path, source, version, skip=("unreadable", _os_error(exc)))
    if not stat.S_ISREG(st.st_mode):  # never opened: reading a FIFO blocks, a device never ends
        what = ("folder" if stat.S_ISDIR(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode)
                else "socket" if stat.S_ISSOCK(st.st_mode) else "device or other special file")
        return _Look(path, source, version, skip=("unsupported", f"a {what}, not a regular file"))
    return _Look(path, source, version)


def _os_error(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class _Verdict:
    status: str
    reason: str | None = None
    detail: str | None = None
    remember: bool = False  # recorded in the store, so the same version is not reported again


@dataclass(frozen=True)
class _Pending:
    source: str
    extraction: object  # crawler.extract.Extraction
    tokens: np.ndarray
    seconds: float
