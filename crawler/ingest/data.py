"""Offline data: files on disk -> one token array -> reproducible batches of windows.

This module serves the `eval` and `tokenizer train` commands, which read the files named on the
command line. It is not the daemon's ingest path (that one watches a folder and goes through
storage), but it reads each file exactly as that path does: reading.py's `read_file`, the
Ingestor's own per-file extraction (kinds, decoding, normalisation), so `eval` scores the text
the daemon trains on, and a file the daemon skips is skipped here with the same reason. An
archive of documents gives its members, each a document named `ARCHIVE!member`, as the daemon
stores them (reading.documents_of). Inside a folder the same names are passed over (hidden and
temporary ones). The rules on the stored
corpus as a whole are not applied: an offline corpus is the files' text, so figures on one set
of files stay comparable.

Corpus layout: every document is preceded by the EOD separator, so the array reads
``EOD doc1 EOD doc2 ... EOD docN``, each document's tokens exactly those the daemon stores for
it (reading.document_tokens). The model thus always sees EOD before a document starts
(generation prompts begin with EOD for the same reason), and the targets of the array, every
token after the first, are exactly the tokens of the extracted texts plus the separators between
documents (with the byte tokenizer, one token per byte of the UTF-8 text).

Sampling is stateless: the batch of step s is drawn from ``np.random.default_rng([seed, s])``,
so any step's batch can be rebuilt from (seed, step) alone; that is what makes a resumed run
see exactly the batches an uninterrupted run would have seen.
Relies on numpy, the tokenizer and reading.py; knows nothing of the engine or storage.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..state.walk import walk_files
from .extract import ExtractLimits
from .reading import (
    EXTRACTION_FAILED,
    SkippedFile,
    document_tokens,
    documents_of,
    is_ignored_name,
    read_file,
)
from .tokenizer import ByteTokenizer, Tokenizer, TokenizerError

__all__ = ["Corpus", "CorpusTooShort", "DataError", "SkippedFile", "WindowSampler", "eval_windows", "find_files",
           "load_corpus", "read_texts"]


class DataError(Exception):
    """The training data cannot be used; the message names the path or the numbers involved."""


class CorpusTooShort(DataError):
    """The corpus has fewer tokens than one training window needs."""


@dataclass
class Corpus:
    """The token array of the files read, in order, with what was read and what was skipped."""

    tokens: np.ndarray  # (N,) the tokenizer's dtype, "EOD doc1 EOD doc2 ..."
    files: list[Path] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    n_bytes: int = 0  # bytes of the extracted texts (UTF-8): the denominator of bits per byte


# ---------------------------------------------------------------------------------------------
# reading files


def find_files(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[SkippedFile]]:
    """The files named by `paths`, in command-line order, each directory walked recursively in
    sorted path order; hidden and temporary names inside directories are passed over, as the
    daemon passes them over (reading.is_ignored_name), and symlinked folders are not entered.

    A file named twice is read once. Raises DataError for a path that does not exist; an
    unreadable directory below a named one is reported as skipped instead.
    """
    files: list[Path] = []
    skipped: list[SkippedFile] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(path)

    for raw in paths:
        root = Path(raw)
        if root.is_dir():

            def unlisted(folder: Path, error: OSError | None) -> None:
                if error is not None:
                    skipped.append(SkippedFile(folder, "unreadable", str(error.strerror or error)))

            found = walk_files(root, skip=is_ignored_name, linked_folders=False, on_folder=unlisted)
            for path in sorted(Path(entry.path) for entry in found):
                add(path)
        elif root.exists():
            add(root)
        else:
            raise DataError(f"{root}: no such file or directory")
    return files, skipped


def read_texts(path: Path, limits: ExtractLimits | None = None) -> list[tuple[Path, str | SkippedFile]]:
    """The documents of a file as the daemon stores them (reading.read_file): (name, text), or
    (name, a SkippedFile saying why there is none); one for a file, one per member of an archive
    (`ARCHIVE!member`: reading.documents_of)."""
    found = documents_of(path, read_file(path, limits))
    return [(name, read if isinstance(read, SkippedFile) else read.text) for name, read in found]


def load_corpus(paths: Sequence[str | os.PathLike], tokenizer: Tokenizer | None = None,
                limits: ExtractLimits | None = None,
                on_skip: Callable[[SkippedFile], None] | None = None) -> Corpus:
    """Read and tokenize every file under `paths` into one "EOD doc1 EOD doc2 ..." array.

    Each file is read as the daemon reads it (read_texts: an archive's members are documents of
    their own); a file (or member) it would skip or fail is listed in `Corpus.skipped`, with its
    reason, and told to `on_skip` as it is met (so the caller can report it even when no file
    gives text). Raises DataError for a missing path,
    or when no file gives text (the message counts the skips by reason).
    """
    tokenizer = tokenizer or ByteTokenizer()
    skipped: list[SkippedFile] = []

    def leave_out(item: SkippedFile) -> None:
        skipped.append(item)
        if on_skip is not None:
            on_skip(item)

    found, unlisted = find_files(paths)
    for item in unlisted:
        leave_out(item)
    documents: list[np.ndarray] = []
    used: list[Path] = []
    n_bytes = 0
    for path in found:
        for name, text in read_texts(path, limits):
            if isinstance(text, SkippedFile):
                leave_out(text)
                continue
            try:
                tokens = document_tokens(tokenizer, text)  # (1 + n,) EOD first
            except TokenizerError as exc:  # as the Ingestor's guard records it
                leave_out(SkippedFile(name, EXTRACTION_FAILED, f"TokenizerError: {exc}", "failed"))
                continue
            documents.append(tokens)
            used.append(name)
            n_bytes += tokenizer.token_bytes(tokens)
    if not documents:
        named = ", ".join(str(p) for p in paths) or "(no paths)"
        reasons = Counter(item.reason for item in skipped)
        left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        raise DataError(f"no readable text files in {named}" + (f" (left out: {left_out})" if left_out else ""))
    return Corpus(tokens=np.concatenate(documents), files=used, skipped=skipped, n_bytes=n_bytes)


# ---------------------------------------------------------------------------------------------
# batches


class WindowSampler:
    """Random training windows: batch(step) is a pure function of (tokens, seed, step)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be at least 1")
        if seed < 0:
            raise ValueError(f"seed ({seed}) must be 0 or more")
        tokens = np.asarray(tokens).reshape(-1)
        if tokens.size < seq_len + 1:
            raise CorpusTooShort(
                f"corpus has {tokens.size} tokens; a training window of seq_len {seq_len} "
                f"needs at least {seq_len + 1} (add text or lower --context)"
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self._offsets = np.arange(seq_len + 1)  # (T+1,)

    @property
    def n_windows(self) -> int:
        """How many distinct window start positions there are."""
        return self.tokens.size - self.seq_len

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The (inputs, targets) of `step`: int32 (B, T) each, targets = inputs shifted by one.

        Window starts are uniform over every position that leaves room for T + 1 tokens, drawn
        from np.random.default_rng([seed, step]); the same step always gives the same batch.
        """
        if step < 0:
            raise ValueError(f"step ({step}) must be 0 or more")
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, self.n_windows, size=self.batch_size)  # (B,)
        windows = self.tokens[starts[:, None] + self._offsets].astype(np.int32)  # (B, T+1)
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])


def eval_windows(
    tokens: np.ndarray, seq_len: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping (inputs, targets) int32 batches in which every target, tokens[1:], occurs
    exactly once.

    Window k reads inputs tokens[k*T : k*T + T] and targets one further on. Full windows come in
    batches of `batch_size` rows (the last such batch may have fewer rows). When N - 1 is not a
    multiple of T, the r = (N - 1) % T targets left over come last as one (1, r) batch: a shorter
    window starting at position 0, which a causal model evaluates exactly like a longer one
    truncated. Raises CorpusTooShort for fewer than two tokens.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be at least 1")
    tokens = np.asarray(tokens).reshape(-1)
    if tokens.size < 2:
        raise CorpusTooShort(f"corpus has {tokens.size} tokens; evaluation needs at least 2")
    n_targets = tokens.size - 1
    n_full, tail = divmod(n_targets, seq_len)
    offsets = np.arange(seq_len + 1)  # (T+1,)
    for first in range(0, n_full, batch_size):
        starts = np.arange(first, min(first + batch_size, n_full)) * seq_len  # (b,)
        windows = tokens[starts[:, None] + offsets].astype(np.int32)  # (b, T+1)
        yield np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])
    if tail:
        window = tokens[n_full * seq_len :].astype(np.int32)[None, :]  # (1, r+1)
        yield np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
