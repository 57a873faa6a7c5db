"""The corpus rules on what is stored: boilerplate lines dropped, near-duplicate documents skipped.

Runs in the Ingestor (pipeline.py) on a whole document's extracted text, after extraction and
before its tokens are made; a file that only grew, and `crystalline eval`, never meet it. The
thresholds below were measured on the desk corpus and the plays (docs/STORAGE.md, "Boilerplate
and near-duplicates"; bench/desk_cleaning.py).

Boilerplate. A line's key is its text with runs of whitespace made one space. A line may be
boilerplate only if it is a *candidate*: not indented, with a letter, and without a character
of program text (`; { } < > = #`), so code and data, which repeat by structure (`};` in 5,930
desk files, `#include <stdio.h>` in 479 man pages), are never touched. For each document the
store counts, atomically, the documents that hold each candidate line (storage/corpus_rules.py;
a new version of the same file does not count again) and says how many held it before. A line
is *common* once LINE_DOCUMENTS earlier documents hold it. A common line is dropped when it
sits in a block of at least BLOCK_LINES consecutive common lines (blank lines between them do
not break a block), or when only common lines lie between it and the document's first or last
line and the document holds it once (a header or a footer: Django's "Django 3.2.25
documentation" and "Home | Table of contents | Index | Modules"; not a play's closing
"[Exeunt.]", which the play holds many times). Within one
document, a block of REPEAT_LINES consecutive candidate lines, all different, that already
appeared earlier in it is dropped (a page's navigation and table of contents printed twice).
So the first LINE_DOCUMENTS documents keep a boilerplate block and later ones store it no more:
stored a few times, not in every page. A play's speaker lines ("ALL.", "MESSENGER.") and stage
directions ("[Exit.]") recur across plays, but alone between lines of dialogue, or many times
in one play: none is dropped.

Near duplicates. The text kept is normalised (reStructuredText roles and directives unwrapped,
":func:`len`" is "len"; then lower-cased words, so markup and punctuation do not count), cut
into SHINGLE_WORDS-word shingles and summarised by a MinHash of PERMUTATIONS values, whose
BANDS bands of BAND_ROWS rows are the keys of a locality-sensitive index in the store. A
document with MIN_SHINGLES shingles and MIN_WORDS distinct words or more, the first version of
its path, is a near duplicate of a stored one when their estimated Jaccard similarity is at
least NEAR_JACCARD: it is recorded as skipped, reason "near_duplicate", naming the document
kept (its id and path); the first of the two to arrive is kept. Two near duplicates in one
ingest batch are judged in order, the later one once the earlier has its id. Two daemons that
store a near-duplicate pair at the same moment may both keep theirs (the index is read before,
and written after, each batch's commit).

Relies on numpy and the store's CorpusRules methods (through the queue); logs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NEAR_DUPLICATE = "near_duplicate"  # the skip reason of a near duplicate

# --- the thresholds (measured: docs/STORAGE.md) ------------------------------------------------

# a line is common once this many earlier documents hold it (at 5 and 10 man pages lose their
# section skeletons, 12.6 and 6.4 % of their bytes; at 20, template sentences: 2.1 %)
LINE_DOCUMENTS = 20
# consecutive common lines that make a block (2 takes "[Exeunt.]" and "ACT V." from the plays)
BLOCK_LINES = 4
# different candidate lines a document repeats as a block (the plays repeat 8 at most)
REPEAT_LINES = 10
SHINGLE_WORDS = 3
MIN_SHINGLES = 50  # shorter texts are never judged near duplicates
# nor texts of fewer distinct words: their shingles come from at most MIN_WORDS^3, so two such
# texts share most of theirs by chance (no desk text with 50 shingles has fewer than 20)
MIN_WORDS = 20
# estimated Jaccard similarity of the shingle sets: 426 of the 476 pairs of a Python page and its
# .rst.txt source reach 0.7; of 494,039 pairs of distinct Python pages, none reaches 0.5
NEAR_JACCARD = 0.7
FLUSH_DOCUMENTS = 512  # documents whose line counts wait for one write, at most
# The MinHash is part of the stored format: changing these or SEED makes old signatures meaningless.
PERMUTATIONS = 128
BAND_ROWS = 4
BANDS = PERMUTATIONS // BAND_ROWS  # 32: a pair at Jaccard 0.7 shares a band with p = 0.9998, 0.5: 0.87
SEED = 0x63727973  # what the permutations' coefficients are hashed from

CODE = re.compile(r"[;{}<>=#]")
LETTER = re.compile(r"[^\W\d_]")
WORD = re.compile(r"\w+")
# reStructuredText: :role:`text`, :role:`title <target>`, :role:`~a.b`; a directive's `.. name::`;
# a directive's option line (`   :synopsis: ...`)
ROLE = re.compile(r":[\w.+-]+(?::[\w.+-]+)*:`[~!]?([^`<]*?)\s*(?:<[^`>]*>)?`")
DIRECTIVE = re.compile(r"^(\s*)\.\. [\w:.+-]+::", re.MULTILINE)
OPTION = re.compile(r"^\s*:[\w -]+:(?: .*)?$", re.MULTILINE)


def line_key(line: str) -> str:
    """What two lines share when they are the same line: the text, whitespace runs made one space."""
    return " ".join(line.split())


def key_hash(key: str) -> int:
    """A stable signed 64-bit hash of a line key (or a path): the stored line statistics' key."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def is_candidate(line: str) -> bool:
    """Whether a (non-blank) line may be boilerplate: not indented, a letter, no program text."""
    return line[:1] not in (" ", "\t") and LETTER.search(line) is not None and CODE.search(line) is None


# --- boilerplate lines ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentLines:
    """A text cut into lines: every line, and for the non-blank ones their index, key and hash
    (None for a line that is not a candidate)."""

    lines: list[str]
    rows: list[int]  # indices into `lines` of the non-blank lines, in order
    keys: list[str]
    hashes: list[int | None]

    @classmethod
    def of(cls, text: str) -> "DocumentLines":
        lines = text.split("\n")
        rows = [i for i, line in enumerate(lines) if line.strip()]
        keys = [line_key(lines[i]) for i in rows]
        hashes = [key_hash(key) if is_candidate(lines[i]) else None for i, key in zip(rows, keys)]
        return cls(lines, rows, keys, hashes)

    def candidates(self) -> list[int]:
        """The distinct candidate hashes, sorted (the order every writer locks them in)."""
        return sorted({h for h in self.hashes if h is not None})


def boilerplate(doc: DocumentLines, before: dict[int, int], *, line_documents: int = LINE_DOCUMENTS,
                block_lines: int = BLOCK_LINES, edges: bool = True, repeat_lines: int = REPEAT_LINES) -> set[int]:
    """The positions (in doc.rows) of the lines to drop, given how many earlier documents hold
    each candidate line (`before`, by hash; a missing hash: none)."""
    n = len(doc.rows)
    common = [h is not None and before.get(h, 0) >= line_documents for h in doc.hashes]
    drop: set[int] = set()
    start = 0
    while start < n:  # 1. blocks of common lines
        if not common[start]:
            start += 1
            continue
        end = start
        while end < n and common[end]:
            end += 1
        if end - start >= block_lines:
            drop.update(range(start, end))
        start = end
    if edges:  # 2. in the common lines that open or close the document (a header, a footer), those it holds once
        head = next((i for i in range(n) if not common[i]), n)
        tail = next((i for i in range(n - 1, -1, -1) if not common[i]), -1) + 1
        counts = Counter(doc.keys)
        drop.update(i for i in (*range(head), *range(tail, n)) if counts[doc.keys[i]] == 1)
    if repeat_lines > 0:  # 3. a block of different candidate lines this document already printed
        first: dict[tuple[str, ...], int] = {}
        for i in range(n - repeat_lines + 1):
            window = doc.keys[i:i + repeat_lines]
            if any(h is None for h in doc.hashes[i:i + repeat_lines]) or len(set(window)) < repeat_lines:
                continue  # code, or one line repeated: not a block printed twice
            seen = first.setdefault(tuple(window), i)
            if seen + repeat_lines <= i:
                drop.update(range(i, i + repeat_lines))
    return drop


def without(doc: DocumentLines, drop: set[int]) -> str:
    """The text without the dropped lines; a blank line that would follow another blank line
    because a line between them went is left out too, and the ends are trimmed."""
    dropped = {doc.rows[i] for i in drop}
    out: list[str] = []
    gap = False  # a line was dropped since the last non-blank line kept
    for i, line in enumerate(doc.lines):
        if i in dropped:
            gap = True
            continue
        blank = not line.strip()
        if blank and gap and (not out or not out[-1].strip()):
            continue
        out.append(line)
        if not blank:
            gap = False
    return "\n".join(out).strip("\n")


# --- near duplicates ------------------------------------------------------------------------------


def shingle_text(text: str) -> list[str]:
    """The words near-duplicate detection compares: reStructuredText roles and directives
    unwrapped, option lines dropped, then lower-cased runs of word characters (so markup,
    punctuation and a pilcrow do not count)."""
    text = ROLE.sub(r"\1", text)
    text = DIRECTIVE.sub(r"\1", text)
    text = OPTION.sub("", text)
    return WORD.findall(text.lower())


@functools.lru_cache(maxsize=1 << 16)  # words recur across documents
def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _permutations() -> tuple[np.ndarray, np.ndarray]:
    """The multiply-add hashes x -> (a x + b) mod 2^64, a odd, from blake2b of SEED (not a random
    generator, whose stream a numpy release may change): the same on every machine, forever."""
    def word(name: str, i: int) -> int:
        return int.from_bytes(hashlib.blake2b(f"{SEED}:{name}:{i}".encode(), digest_size=8).digest(), "little")

    a = np.array([word("a", i) | 1 for i in range(PERMUTATIONS)], dtype=np.uint64)
    b = np.array([word("b", i) for i in range(PERMUTATIONS)], dtype=np.uint64)
    return a, b


_A, _B = _permutations()
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


@dataclass(frozen=True, eq=False)
class Signature:
    """A text's MinHash: PERMUTATIONS uint32 minima over its distinct shingles, and their count."""

    values: np.ndarray  # (PERMUTATIONS,) uint32
    shingles: int

    def to_bytes(self) -> bytes:
        return self.values.astype("<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, shingles: int) -> "Signature":
        return cls(np.frombuffer(data, dtype="<u4").astype(np.uint32), int(shingles))

    def bands(self) -> list[int]:
        """The index keys: one signed 64-bit hash per band of BAND_ROWS values, band number included."""
        rows = self.values.astype("<u4").reshape(BANDS, BAND_ROWS)
        return [key_hash(f"{band}:{rows[band].tobytes().hex()}") for band in range(BANDS)]

    def jaccard(self, other: "Signature") -> float:
        """The estimated Jaccard similarity of the two shingle sets: the share of equal minima."""
        return float(np.count_nonzero(self.values == other.values)) / PERMUTATIONS

    def jaccards(self, others: np.ndarray) -> np.ndarray:
        """jaccard against each row of `others` (n, PERMUTATIONS), as one array (n,)."""
        return np.count_nonzero(others == self.values[None, :], axis=1) / PERMUTATIONS

    def containment(self, other: "Signature") -> float:
        """The estimated share of this text's shingles that are also the other's (from the
        Jaccard estimate J and the two counts: |A and B| = J (|A| + |B|) / (1 + J))."""
        j = self.jaccard(other)
        return min(1.0, j * (self.shingles + other.shingles) / (1 + j) / max(self.shingles, 1))


def signature(text: str, shingle_words: int = SHINGLE_WORDS) -> Signature | None:
    """The MinHash of a text's word shingles; None below MIN_SHINGLES distinct shingles or
    MIN_WORDS distinct words."""
    words = shingle_text(text)
    distinct = set(words)
    if len(words) < shingle_words or len(distinct) < MIN_WORDS:
        return None
    table = {w: _word_hash(w) for w in distinct}
    ids = np.array([table[w] for w in words], dtype=np.uint64)  # (W,)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the hash means it to
        shingles = ids[shingle_words - 1:].copy()  # (W - k + 1,)
        for offset in range(1, shingle_words):
            shingles = shingles * _MIX[offset % 2] + ids[shingle_words - 1 - offset:len(ids) - offset]
        shingles = np.unique(shingles)  # (S,)
        if shingles.size < MIN_SHINGLES:
            return None
        minima = np.full(PERMUTATIONS, np.iinfo(np.uint64).max, dtype=np.uint64)
        for start in range(0, shingles.size, 4096):  # (4096, PERMUTATIONS) at a time
            block = shingles[start:start + 4096, None] * _A[None, :] + _B[None, :]
            np.minimum(minima, block.min(axis=0), out=minima)
    return Signature((minima >> np.uint64(32)).astype(np.uint32), int(shingles.size))


# --- the rules against one store --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Cleaned:
    """The rules' verdict on one document: the text to store (None: unchanged), or a skip."""

    text: str | None = None
    skip: tuple[str, str] | None = None  # (reason, detail): store nothing
    dropped_lines: int = 0
    dropped_bytes: int = 0
    signature: Signature | None = None  # recorded once the document is stored
    near_of: "Cleaned | None" = None  # a near duplicate of this batch's document, not stored yet
    source: str = ""
    content_hash: str = ""


class Cleaner:
    """The corpus rules for one Ingestor (not thread-safe: one per Ingestor), over its queue.

    `clean` judges a document before its tokens are made; `committed` is told what its batch
    became, records the stored documents' signatures and names the documents the near
    duplicates it held back are near."""

    def __init__(self, queue, *, boilerplate_lines: bool = True, near_duplicates: bool = True):
        self.queue = queue
        self.boilerplate_lines, self.near_duplicates = boilerplate_lines, near_duplicates
        self._held: list[Cleaned] = []  # this batch's documents with a signature, not committed yet
        # this batch's line counts, not written yet: (path key, its candidate hashes) in order,
        # and per hash (documents, last path key) as they stand with the batch's counted
        self._counted: list[tuple[int, list[int]]] = []
        self._counts: dict[int, tuple[int, int]] = {}

    @classmethod
    def for_queue(cls, queue) -> "Cleaner | None":
        """The rules the queue's [store] settings turn on, or None when both are off."""
        config = getattr(getattr(queue, "database", None), "config", None)
        lines, near = getattr(config, "drop_boilerplate", False), getattr(config, "skip_near_duplicates", False)
        return cls(queue, boilerplate_lines=lines, near_duplicates=near) if lines or near else None

    def clean(self, source: str, text: str, *, content_hash: str = "", first_version: bool = True) -> Cleaned:
        """The verdict on a whole document's text. Counts its candidate lines (the store's
        counts read, this one added to the batch's, written by flush()), then, for the first version of a
        path, looks its signature up among the stored documents and this batch's. Bytes already
        in the stream (`content_hash`: an exact duplicate, which the store records as one) pass
        untouched and uncounted."""
        exact = Cleaned(source=source, content_hash=content_hash)
        kept, dropped, dropped_bytes = text, 0, 0
        if self.boilerplate_lines:
            doc = DocumentLines.of(text)
            before = self._count(key_hash(source), doc.candidates(), content_hash)
            if before is None:
                return exact
            drop = boilerplate(doc, before)
            if drop:
                kept, dropped = without(doc, drop), len(drop)
                dropped_bytes = sum(len(doc.lines[doc.rows[i]].encode("utf-8", "surrogatepass")) + 1 for i in drop)
                if not kept.strip():
                    return Cleaned(skip=("empty", f"all {dropped} of its lines are boilerplate"), source=source)
        elif content_hash and self.queue.content_in_stream(content_hash):
            return exact
        sig = signature(kept) if self.near_duplicates else None
        result = Cleaned(kept if dropped else None, None, dropped, dropped_bytes, sig, source=source,
                         content_hash=content_hash)
        if sig is None:
            return result
        if first_version:  # a new version of a stored file is a rewrite: it replaces, never skips
            candidates = self.queue.near_duplicate_candidates(source, sig.bands())
            if candidates:  # all of them in one comparison: a desk's pages share bands by the hundred
                stored = np.frombuffer(b"".join(c.signature for c in candidates), dtype="<u4")
                similar = sig.jaccards(stored.reshape(len(candidates), PERMUTATIONS))
                first = int(np.argmax(similar >= NEAR_JACCARD))  # the oldest such document
                if similar[first] >= NEAR_JACCARD:
                    candidate = candidates[first]
                    return Cleaned(skip=(NEAR_DUPLICATE, near_detail(candidate.document_id, candidate.source_path,
                                                                     float(similar[first]))), source=source)
            if self._held:  # this batch's, likewise (the same bytes twice: the store makes it a duplicate)
                similar = sig.jaccards(np.stack([held.signature.values for held in self._held]))
                for index in np.flatnonzero(similar >= NEAR_JACCARD):
                    held = self._held[index]
                    same_bytes = bool(content_hash) and held.content_hash == content_hash
                    if held.source != source and not same_bytes:
                        return dataclasses.replace(result, near_of=held)
        self._held.append(result)
        return result

    def _count(self, path_key: int, hashes: list[int], content_hash: str) -> dict[int, int] | None:
        """How many documents held each line before this one (the store's counts read now,
        with this batch's documents added), and this one counted into the batch; None for bytes
        already in the stream. The batch's counts are written by flush(): one write per batch,
        not per document. Between two writers a count may lag by the other's unwritten batch."""
        if len(self._counted) >= FLUSH_DOCUMENTS:
            self.flush()
        unknown = [h for h in hashes if h not in self._counts]
        stored = self.queue.line_counts(unknown, content_hash or None)
        if stored is None:
            return None
        before: dict[int, int] = {}
        for h in hashes:
            documents, last = self._counts.get(h) or stored.get(h) or (0, None)
            before[h] = documents - 1 if last == path_key else documents
            self._counts[h] = (documents if last == path_key else documents + 1, path_key)
        self._counted.append((path_key, hashes))
        return before

    def flush(self) -> None:
        """Write the line counts of the documents judged since the last flush (one write
        transaction). committed() flushes; so does a caller that ends a round without a commit.
        May block up to busy_timeout_ms."""
        counted, self._counted, self._counts = self._counted, [], {}
        if counted:
            self.queue.add_line_counts(counted)

    def committed(self, stored: Sequence[tuple[Cleaned | None, object]],
                  held_back: Sequence[Cleaned]) -> list[str | None]:
        """After a batch's commit: `stored` pairs each document given to the store with its
        AddResult. Records the signatures of the documents stored as new text (one write
        transaction), forgets the batch, and returns for each held-back near duplicate the skip
        detail naming the document kept, or None when that document was stale (its file is read
        again next round, and so is the near duplicate)."""
        kept: dict[int, tuple[int, str]] = {}
        rows = []
        for cleaned, result in stored:
            if cleaned is None or cleaned.signature is None:
                continue
            if result.status == "queued":
                rows.append((result.document_id, cleaned.signature.shingles, cleaned.signature.to_bytes(),
                             cleaned.signature.bands()))
            document = result.document_id if result.status == "queued" else result.duplicate_of
            if document is not None:
                kept[id(cleaned)] = (document, cleaned.source)
        self._held = []
        self.flush()
        if rows:
            self.queue.record_signatures(rows)
        details: list[str | None] = []
        for cleaned in held_back:
            target = kept.get(id(cleaned.near_of))
            details.append(None if target is None else
                           near_detail(*target, cleaned.signature.jaccard(cleaned.near_of.signature)))
        return details


def near_detail(document_id: int, source_path: str, jaccard: float) -> str:
    """The skip's detail: the document kept, by id and path, and how alike the two are."""
    return f"near duplicate of document {document_id} ({source_path}): estimated shingle Jaccard {jaccard:.2f}"
