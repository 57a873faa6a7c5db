"""Ingest: one file -> extracted text -> token ids -> one corpus-queue transaction.

Joins `crawler.ingest.reading` (the per-file extraction `eval` and `tokenizer train` share), a
tokenizer and `storage.CorpusQueue`; used by `crystalline ingest` and by the daemon. Every file
ends as exactly one outcome: ingested, duplicate (the same bytes are already queued under
another name), unchanged (this path, size and mtime were seen before: nothing is read; unless an
older extractor skipped it for a reason a newer one may cure, reading.REOFFERED_REASONS),
skipped (a reason from SKIP_REASONS; near_duplicate from the corpus rules of cleaning.py, which
also drop a whole document's boilerplate lines before its tokens are made) or failed (an error text).
A changed text file that only grew since its stored version (its old bytes unchanged) stores
only its new text, as a version that continues the earlier one (read again when another writer
stored a newer version meanwhile, so each byte is stored once); any other change is a whole new
version (docs/STORAGE.md, "What a changed file means").

An archive of documents (a tar or zip: crawler.ingest.archives) is a file whose documents are
its members: reading it yields one outcome per member, under the path `ARCHIVE!member`, each as
a file's (ingested, duplicate, unchanged, or skipped and failed with the member's own reason),
then the archive's own outcome, last: `skipped` with reason ARCHIVE ("archive": its text is its
members'; `detail` counts their outcomes), `empty` (no member is a file), or `corrupt` (a tar cut
short or damaged: the members read whole before the damage are stored all the same, and the
detail says where it stopped). That last outcome is the file's terminal one (the daemon's
ingest worker and `crystalline ingest` take the archive as done with it), and its row, recorded
after every member's, makes an unchanged archive (path, size, mtime) `unchanged` without being
read. A changed archive is read whole again and its members are compared one by one with their
paths' newest rows by content hash: the same bytes are unchanged (a forgotten member stays
forgotten), changed bytes a new version that supersedes the earlier one as a rewritten file's
does, and a member stored before and no longer in the archive is removed: its untrained tokens
withdrawn and a row recorded (`skipped`, reason REMOVED, "removed"), one outcome each. Members
are withdrawn only by a read of the whole archive: an archive that is deleted, cannot be read
(corrupt, a bomb), is read in part or is no longer an archive leaves its members' text alone,
as a deleted file's text is left alone. A bad
file never raises out of `ingest_file`; only a storage failure does (a storage.StoreUnavailable,
whose `transient` says whether the same files may be tried again later), because that is the
caller's to handle (nothing of that transaction was committed). Every per-file fault (a
symlink loop, a name that is not UTF-8, a parser's bug) is that file's own outcome: the looks
and the extraction of one file run under one guard, and storage calls stay outside it, so a
storage error is never mistaken for a bad file. File names travel as Python holds them (lone
surrogates for bytes that are not UTF-8); storage stores them losslessly, and `display_path`
makes them printable for logs. Knows nothing of the engine.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from storage import NewDocument, PathVersion, StoredVersion

from ..state.walk import walk_files
from .archives import MEMBER_SEPARATOR, member_path
from .cleaning import NEAR_DUPLICATE, Cleaner
from .extract import (
    EXTRACTOR_VERSION,
    PROBE_BYTES,
    ArchiveExtraction,
    Extraction,
    ExtractLimits,
    Member,
    detect_kind,
)
from .reading import (
    EXTRACTION_FAILED,
    REOFFERED_REASONS,
    SkippedFile,
    document_tokens,
    is_ignored_name,
    read_file,
)

# Skip reasons decided here, beside the extractor's own.
OUTSIDE_ROOT = "outside_root"
ARCHIVE = "archive"  # an archive's own row and outcome: its text is its members', ARCHIVE!member
REMOVED = "removed"  # a member stored before and no longer in its rewritten archive
FORGOTTEN = "forgotten"  # the reason `crystalline forget` gives a row (storage's)
# kinds whose text is their decoded bytes, so text appended to the file is text appended to the
# document; every other kind (a parser's output, a zip, a PDF) changes as a whole: a rewrite
GROWTH_KINDS = frozenset(("text", "markdown"))
# A file that only grew is read again when another writer (the daemon beside `crystalline ingest`)
# stored a newer version of it between this reader's look and its commit. Each round lost is
# such a version, stored by the other writer; this many in a row is not a race but a fault.
REREAD_ROUNDS = 8
CONCURRENT_WRITER = "concurrent_writer"  # the reason of a file failed after REREAD_ROUNDS


@dataclass(frozen=True)
class IngestOutcome:
    path: str
    status: str  # ingested | duplicate | unchanged | skipped | failed
    reason: str | None = None  # skip reason code, or the error text of a failure
    detail: str | None = None
    document_id: int | None = None
    bytes: int = 0  # the bytes this version added: for a file that only grew, the new bytes
    tokens: int = 0
    ms: float = 0.0
    offset: int | None = None  # a file that only grew: where its new bytes start (the earlier size)
    withdrawn: int = 0  # a rewrite: tokens of the earlier version withdrawn before training reached them


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


def iter_files(paths: Iterable[str | Path],
               on_unreadable: Callable[[Path, OSError], None] | None = None) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every candidate file under the given files and folders: recursive,
    sorted (a folder's files before its subfolders), hidden and temporary names skipped,
    symlinked folders neither descended into nor offered. A folder that cannot be listed is
    passed over and told to on_unreadable(folder, error), so its files are not lost silently."""

    def on_folder(folder: Path, error: OSError | None) -> None:
        if error is not None and on_unreadable is not None:
            on_unreadable(folder, error)

    for given in paths:
        root = Path(given)
        if root.is_dir():
            for entry in walk_files(root, skip=is_ignored_name, ordered=True, linked_folders=False,
                                    on_folder=on_folder):
                yield Path(entry.path), root
        else:
            yield root, root.parent


class Ingestor:
    """Ingests files into a queue with one tokenizer. Not thread-safe: one per thread."""

    def __init__(self, queue, tokenizer, limits: ExtractLimits | None = None):
        self.queue = queue
        self.tokenizer = tokenizer
        self.tokenizer_identity = tokenizer.identity_string()
        self.limits = limits or ExtractLimits()
        self._stale: set[str] = set()  # this round's files another writer stored a newer version of
        self.cleaner = Cleaner.for_queue(queue)  # the corpus rules ([store] drop_boilerplate, skip_near_duplicates)
        queue.set_tokenizer(self.tokenizer_identity)

    def ingest_file(self, path: str | Path, root: str | Path | None = None) -> IngestOutcome:
        """Ingest one file; `root` (when given) is the folder it must resolve into. Its own
        outcome: an archive's members' come before it, from `ingest_files`."""
        *_, last = self.ingest_files([(path, root)])
        return last

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
        """The group's outcomes. A growth the store refused as stale (another writer stored a newer
        version of the file after this one looked: add_documents, record_skip) has no outcome in
        that round and is looked at again in the next, against the newest version, so its new
        bytes are stored once: here it ends unchanged, or as a growth of the newer version."""
        for _ in range(REREAD_ROUNDS):
            self._stale = set()
            yield from self._ingest_round(group, batch_bytes)
            if self.cleaner is not None:  # the line counts of documents no commit took (all skipped)
                self.cleaner.flush()
            group = [(path, root) for path, root in group if str(path) in self._stale]
            if not group:
                return
        for path, _ in group:
            yield IngestOutcome(str(path), "failed", CONCURRENT_WRITER,
                                f"another writer stored a newer version of it each of {REREAD_ROUNDS} times it "
                                "was read; it is read again when it next changes")

    def _ingest_round(self, group: list[tuple[Path, Path | None]], batch_bytes: int) -> Iterator[IngestOutcome]:
        looks = [_look(path, root) for path, root in group]
        # unchanged: a row for this version, unless an older extractor skipped it for a reason it may cure
        seen = self.queue.seen_many([look.version for look in looks if look.version is not None],
                                    extractor_version=EXTRACTOR_VERSION, reoffered=REOFFERED_REASONS)
        changed = [look.source for look in looks if look.version is not None and look.version not in seen]
        bases = self.queue.latest_versions(changed) if changed else {}
        yield from self._in_batches((self._prepare(look, seen, bases) for look in looks), batch_bytes)

    def _in_batches(self, prepared: Iterable["IngestOutcome | _Pending | _ArchiveRead | None"],
                    batch_bytes: int) -> Iterator[IngestOutcome]:
        """Outcomes as they come, and the tokens of what is pending committed `batch_bytes` of
        text at a time; an archive commits what is pending first, then its members', then its
        own row, in order. None is a stale file, looked at again next round. `prepared` is
        consumed lazily, so each file is read only once what came before it is yielded."""
        pending: list[_Pending] = []
        pending_bytes = 0
        for item in prepared:
            if item is None:
                continue
            if isinstance(item, IngestOutcome):
                yield item
                continue
            if isinstance(item, _ArchiveRead):
                if pending:
                    yield from self._commit(pending)
                    pending, pending_bytes = [], 0
                yield from self._ingest_archive(item, batch_bytes)
                continue
            pending.append(item)
            pending_bytes += item.extraction.size
            if pending_bytes >= batch_bytes:
                yield from self._commit(pending)
                pending, pending_bytes = [], 0
        if pending:
            yield from self._commit(pending)

    def _prepare(self, look: "_Look", seen: set, bases: dict) -> "IngestOutcome | _Pending | _ArchiveRead | None":
        """Everything for one file short of the database write: an outcome, or its tokens (None:
        its whitespace growth was stale, so it is looked at again), or an archive's members."""
        t0 = time.perf_counter()
        try:
            verdict = self._examine(look, seen, bases.get(look.source))
        except Exception as exc:  # noqa: BLE001 - one file's fault, whatever it is, is that file's outcome
            verdict = _Verdict("failed", "extraction_failed", f"{type(exc).__name__}: {exc}", remember=True)
        if isinstance(verdict, _ArchiveRead):
            return verdict
        if isinstance(verdict, _Pending) and verdict.tokens is None:  # a whole document the corpus rules judge
            verdict = self._clean(verdict, first_version=look.source not in bases)
        if isinstance(verdict, _Pending):
            return verdict
        if verdict.remember:  # outside the guard: a storage error is the caller's, not this file's
            size, mtime = look.version[1:] if look.version is not None else (None, None)
            grown = verdict.growth
            if grown is not None:  # grew by whitespace only: the next growth is measured from here
                recorded = self.queue.record_skip(source_path=look.source, reason=verdict.reason,
                                                  detail=verdict.detail, kind=grown.kind, size=grown.size,
                                                  mtime=grown.mtime, content_hash=grown.content_hash,
                                                  byte_offset=grown.offset, continues=grown.continues,
                                                  extractor_version=EXTRACTOR_VERSION)
                if recorded is None:
                    self._stale.add(look.source)
                    return None
            else:
                self.queue.record_skip(source_path=look.source, reason=verdict.reason, detail=verdict.detail,
                                       status=verdict.status, size=size, mtime=mtime,
                                       extractor_version=EXTRACTOR_VERSION)
        return IngestOutcome(look.source, verdict.status, verdict.reason, verdict.detail,
                             ms=(time.perf_counter() - t0) * 1e3)

    def _examine(self, look: "_Look", seen: set, base: StoredVersion | None) -> "_Verdict | _Pending | _ArchiveRead":
        """The verdict on one file from its looks: no storage call, so any exception is its own."""
        t0 = time.perf_counter()
        if look.error is not None:
            return _Verdict("skipped", *look.error, remember=look.error[0] != "vanished")
        if look.version in seen:
            return _Verdict("unchanged")
        if look.skip is not None:
            return _Verdict("skipped", *look.skip, remember=True)
        if base is not None and base.kind in GROWTH_KINDS and look.version[1] > base.size:
            grown = _read_growth(look.path, base, self.limits)
            if grown is not None and not grown.text:
                return _Verdict("skipped", "empty", f"grew by {grown.size - grown.offset} bytes of whitespace only",
                                remember=True, growth=grown)
            if grown is not None:
                extraction = Extraction(grown.text, grown.kind, grown.size, grown.mtime, grown.content_hash)
                return _Pending(look.source, extraction, self._tokens(grown.text), time.perf_counter() - t0,
                                offset=grown.offset, continues=grown.continues)
        extraction = read_file(look.path, self.limits)  # as `eval` and `tokenizer train` read it
        if isinstance(extraction, SkippedFile):  # nothing to remember about a file that is gone
            return _Verdict(extraction.status, extraction.reason, extraction.detail,
                            remember=extraction.reason != "vanished")
        if isinstance(extraction, ArchiveExtraction):
            return _ArchiveRead(look.source, extraction, time.perf_counter() - t0)
        tokens = None if self.cleaner is not None else self._tokens(extraction.text)  # the rules' text, in _clean
        return _Pending(look.source, extraction, tokens, time.perf_counter() - t0)

    def _tokens(self, text: str) -> np.ndarray:
        return document_tokens(self.tokenizer, text)

    def _clean(self, pending: "_Pending", first_version: bool) -> "_Pending | _Verdict":
        """The corpus rules (cleaning.py) on a whole document, outside the file's guard because
        they ask the store: its tokens, of the text less its boilerplate lines, or a skip."""
        t0 = time.perf_counter()
        cleaned = self.cleaner.clean(pending.source, pending.extraction.text, first_version=first_version,
                                     content_hash=pending.extraction.content_hash)
        if cleaned.skip is not None:
            return _Verdict("skipped", *cleaned.skip, remember=True)
        try:
            tokens = None if cleaned.near_of else self._tokens(cleaned.text or pending.extraction.text)
        except Exception as exc:  # noqa: BLE001 - the tokenizer's fault on this file's text is the file's
            return _Verdict("failed", "extraction_failed", f"{type(exc).__name__}: {exc}", remember=True)
        return replace(pending, tokens=tokens, seconds=pending.seconds + time.perf_counter() - t0, cleaned=cleaned)

    def _commit(self, pending: list["_Pending"]) -> Iterator[IngestOutcome]:
        t0 = time.perf_counter()
        held = [p for p in pending if p.cleaned is not None and p.cleaned.near_of is not None]  # near one of these
        pending = [p for p in pending if p.cleaned is None or p.cleaned.near_of is None]
        items = [NewDocument(p.source, p.extraction.content_hash, p.extraction.size, p.extraction.mtime,
                             p.extraction.kind, p.tokens, p.offset, p.continues) for p in pending]
        results = self.queue.add_documents(items, tokenizer=self.tokenizer_identity,
                                           extractor_version=EXTRACTOR_VERSION)
        share = (time.perf_counter() - t0) / max(len(pending), 1)  # the commit's cost, split evenly
        for p, result in zip(pending, results):
            if result.status == "stale":  # nothing written: looked at again next round
                self._stale.add(p.source)
                continue
            duplicate = result.status == "duplicate"
            yield IngestOutcome(p.source, "duplicate" if duplicate else "ingested", None,
                                f"same content as document {result.duplicate_of}" if duplicate else None,
                                document_id=result.document_id, bytes=p.extraction.size - (p.offset or 0),
                                tokens=0 if duplicate else int(p.tokens.size),
                                ms=(p.seconds + share) * 1e3, offset=p.offset, withdrawn=result.withdrawn_tokens)
        if self.cleaner is None:
            return
        # the corpus rules: the stored documents' signatures, then the near duplicates held back
        details = self.cleaner.committed([(p.cleaned, r) for p, r in zip(pending, results)], [p.cleaned for p in held])
        for p, detail in zip(held, details):
            if detail is None:  # the document it is near was stale: both are looked at again next round
                self._stale.add(p.source)
                continue
            self.queue.record_skip(source_path=p.source, reason=NEAR_DUPLICATE, detail=detail, size=p.extraction.size,
                                   mtime=p.extraction.mtime, content_hash=p.extraction.content_hash,
                                   extractor_version=EXTRACTOR_VERSION)
            yield IngestOutcome(p.source, "skipped", NEAR_DUPLICATE, detail, ms=p.seconds * 1e3)

    # --- archives ---------------------------------------------------------------------------------

    def _ingest_archive(self, read: _ArchiveRead, batch_bytes: int) -> Iterator[IngestOutcome]:
        """An archive's members' outcomes, then its removed members', then its own (the module
        docstring says what each means). Its own row is written last, so an archive interrupted
        half way is read again, and its members already stored are unchanged then."""
        t0 = time.perf_counter()
        archive, source = read.archive, read.source
        stored = self.queue.newest_under(source + MEMBER_SEPARATOR)
        members = [(member_path(source, member.name), member) for member in archive.members]
        changed = [path for path, member in members if not _member_unchanged(member, stored.get(path))]
        bases = self.queue.latest_versions(changed) if changed else {}
        counts: Counter = Counter()
        for outcome in self._member_outcomes(members, set(changed), bases, batch_bytes):
            counts[outcome.status] += 1
            yield outcome
        paths = {path for path, _ in members}
        stale = paths & self._stale
        if stale:  # a member lost a race (the corpus rules): the whole archive is read again next round
            self._stale -= stale
            self._stale.add(source)
            return
        gone: list[str] = []
        if not archive.truncated:  # only a whole read says what is no longer in it
            gone = [path for path, row in stored.items()
                    if path not in paths and row.reason not in (REMOVED, FORGOTTEN)]
        if gone:
            detail = f"no longer in {display_path(source)}, which was rewritten"
            withdrawn = self.queue.record_removed(gone, reason=REMOVED, detail=detail,
                                                  extractor_version=EXTRACTOR_VERSION)
            for path in gone:
                yield IngestOutcome(path, "skipped", REMOVED,
                                    f"{detail}; {withdrawn[path]} tokens not yet trained withdrawn",
                                    withdrawn=withdrawn[path])
        reason, detail = _archive_verdict(archive, counts, len(gone))
        self.queue.record_skip(source_path=source, reason=reason, detail=detail, kind=archive.kind, size=archive.size,
                               mtime=archive.mtime, content_hash=archive.content_hash,
                               extractor_version=EXTRACTOR_VERSION)
        yield IngestOutcome(source, "skipped", reason, detail, ms=(read.seconds + time.perf_counter() - t0) * 1e3)

    def _member_outcomes(self, members: list[tuple[str, Member]], changed: set[str], bases: dict,
                         batch_bytes: int) -> Iterator[IngestOutcome]:
        """Each member's outcome, as a file's: unchanged, recorded as skipped or failed, or its
        tokens committed `batch_bytes` of text at a time (`_commit`, the corpus rules too)."""
        yield from self._in_batches(
            (self._prepare_member(path, member, first_version=path not in bases) if path in changed
             else IngestOutcome(path, "unchanged") for path, member in members), batch_bytes)

    def _prepare_member(self, path: str, member: Member, first_version: bool) -> IngestOutcome | _Pending:
        """One member short of the commit of its tokens: its skip or failure recorded (with its
        content hash, which a rewrite of the archive is compared with), or its tokens."""
        t0 = time.perf_counter()
        verdict: _Verdict | _Pending
        if member.extraction is not None:
            try:
                tokens = None if self.cleaner is not None else self._tokens(member.extraction.text)
                verdict = _Pending(path, member.extraction, tokens, 0.0)
            except Exception as exc:  # noqa: BLE001 - the tokenizer's fault on this member's text is the member's
                verdict = _Verdict("failed", EXTRACTION_FAILED, f"{type(exc).__name__}: {exc}")
            if isinstance(verdict, _Pending) and verdict.tokens is None:
                verdict = self._clean(verdict, first_version=first_version)
        elif member.failed:
            verdict = _Verdict("failed", EXTRACTION_FAILED, member.detail)
        else:
            verdict = _Verdict("skipped", member.reason, member.detail)
        if isinstance(verdict, _Pending):
            return replace(verdict, seconds=verdict.seconds + time.perf_counter() - t0)
        self.queue.record_skip(source_path=path, reason=verdict.reason, detail=verdict.detail, status=verdict.status,
                               size=member.size, mtime=member.mtime, content_hash=member.content_hash,
                               extractor_version=EXTRACTOR_VERSION)
        return IngestOutcome(path, verdict.status, verdict.reason, verdict.detail, ms=(time.perf_counter() - t0) * 1e3)


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
class _ArchiveRead:
    """An archive of documents read whole: its members, for `_ingest_archive`."""

    source: str
    archive: ArchiveExtraction
    seconds: float  # reading and extracting it, members and all


def _member_unchanged(member: Member, row: PathVersion | None) -> bool:
    """Whether a member of an archive read again is what its path's newest row judged: the same
    bytes (its content hash; for a member not read, its size and mtime), not removed since, and
    not a skip an older extractor gave for a reason this one may cure (REOFFERED_REASONS).
    Members are compared by content, not by size and mtime as files are: archives are often
    written with every member's mtime fixed (reproducible builds), which would hide a change."""
    if row is None or row.reason == REMOVED:
        return False
    if (row.status == "skipped" and row.reason in REOFFERED_REASONS
            and (row.extractor_version or 0) < EXTRACTOR_VERSION):
        return False
    if member.content_hash is not None:
        return row.content_hash == member.content_hash
    return row.content_hash is None and (row.size, row.mtime) == (member.size, member.mtime)


def _archive_verdict(archive: ArchiveExtraction, counts: Counter, removed: int) -> tuple[str, str]:
    """(reason, detail) of an archive's own row and outcome: ARCHIVE, or empty (no member is a
    file), or corrupt (read in part); the detail counts its members' outcomes."""
    tally = ", ".join(f"{counts[status]} {status}" for status in ("ingested", "duplicate", "unchanged", "skipped",
                                                                   "failed") if counts[status])
    if removed:
        tally += f"{'; ' if tally else ''}{removed} no longer in it, withdrawn"
    documents = f"{len(archive.members)} document{'s' if len(archive.members) != 1 else ''}"
    if archive.truncated:
        return "corrupt", (f"a {archive.kind} archive read in part ({archive.truncated}); the {documents} read "
                           f"whole before that are kept as ARCHIVE!member" + (f": {tally}" if tally else ""))
    if not archive.members:
        return "empty", f"a {archive.kind} archive without files" + (f" ({tally})" if tally else "")
    return ARCHIVE, f"a {archive.kind} archive of {documents}, each stored as ARCHIVE!member: {tally}"


@dataclass(frozen=True)
class _Verdict:
    status: str
    reason: str | None = None
    detail: str | None = None
    remember: bool = False  # recorded in the store, so the same version is not reported again
    growth: "_Growth | None" = None  # a file that grew by whitespace only


@dataclass(frozen=True)
class _Pending:
    source: str
    extraction: object  # crawler.ingest.extract.Extraction
    tokens: np.ndarray
    seconds: float
    offset: int | None = None  # a file that only grew: the earlier version's size
    continues: int | None = None  # ... and that version's id
    cleaned: object = None  # cleaning.Cleaned: the corpus rules' verdict on a whole document


# --- files that only grew ---------------------------------------------------------------------

_WIDE_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True)
class _Growth:
    text: str  # the new text: from where the earlier version's text ended, normalised as extract does
    kind: str
    size: int  # the whole file's
    mtime: float
    content_hash: str  # sha256 of the whole file's bytes, as for any version
    offset: int  # the earlier version's size: the first new byte
    continues: int  # the earlier version's id


def _read_growth(path: Path, base: StoredVersion, limits: ExtractLimits) -> _Growth | None:
    """The text appended to `path` since `base`, or None when the file did not only grow (a
    rewrite, or something extract_file must judge: then it reads the file as a whole).

    Only grew: the file is still a GROWTH_KINDS kind, its first base.size bytes hash to
    base.content_hash (the hash always covers a version's bytes [0, size)), the byte at the old
    end starts a UTF-8 character (it does not when the earlier version was read mid-character),
    and the new bytes are strict UTF-8 without NUL in a file without a UTF-16/32 byte order
    mark. The new text starts where the earlier version's text ended: its trailing whitespace,
    which extract strips and so never stored, opens the new part, so the texts of a file's
    versions joined are its text. Reads the file once, bounded by max_file_bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not base.size < st.st_size <= limits.max_file_bytes:
            return None
        parts, total = [], 0
        while total <= limits.max_file_bytes:
            want = st.st_size + 1 - total if total < st.st_size else 1 << 20  # one read, unless it grows
            part = os.read(fd, min(want, limits.max_file_bytes + 1 - total))
            if not part:
                break
            parts.append(part)
            total += len(part)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(parts)
    old = base.size
    if not old < len(data) <= limits.max_file_bytes or data.startswith(_WIDE_BOMS):
        return None
    if detect_kind(path, data[:PROBE_BYTES]) != base.kind or 0x80 <= data[old] < 0xC0:
        return None
    view = memoryview(data)
    digest = hashlib.sha256(view[:old])
    if digest.hexdigest() != base.content_hash:
        return None
    digest.update(view[old:])
    try:
        text = str(view[old - _trailing_space(view[:old]):], "utf-8")
    except UnicodeDecodeError:
        return None
    if "\0" in text:
        return None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return _Growth(text.rstrip(), base.kind, len(data), st.st_mtime, digest.hexdigest(), old, base.document_id)


def _trailing_space(data: memoryview) -> int:
    """How many ASCII whitespace bytes end `data` (what extract strips from a text's end)."""
    tail = bytes(data[-4096:])
    count = len(tail) - len(tail.rstrip())
    return count if count < len(tail) else len(data) - len(bytes(data).rstrip())
