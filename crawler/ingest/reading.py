"""One file read as every command reads it: the extractor's text and its tokens, or why not.

`read_file` is the per-file step that the Ingestor (pipeline.py: `ingest`, `train`, the daemon)
and the offline reader (data.py: `eval`, `tokenizer train`) share: `extract_file` (the kinds,
the decoding, the normalisation) with its refusals turned into a value, `SkippedFile` (a reason
from SKIP_REASONS, or EXTRACTION_FAILED with status "failed"). So `eval` scores the very text
the daemon trains on and leaves out what the daemon leaves out, for the same reason. An archive
of documents reads as an ArchiveExtraction; `documents_of` turns any read into the documents it
gives, each under its name (a member's is `ARCHIVE!member`), as both readers name them.
`document_tokens` is one document's tokens as the stream and the offline corpus both lay them
out: EOD, then the text's. `is_ignored_name` says which names in a folder are never read (hidden
and temporary ones), for the daemon's watcher, `ingest` and the offline reader alike. REOFFERED_REASONS names the skips a newer extractor may cure: a file
an older extractor skipped for one of them is read again (pipeline.py, storage seen_many).

Not the looks before a read (symlinks, roots, file versions: pipeline.py), nor the rules on
the stored corpus as a whole. Logs nothing. Relies on extract.py and a tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .archives import member_path
from .extract import (
    EXTRACTOR_VERSION,
    ArchiveExtraction,
    Extraction,
    ExtractionFailed,
    ExtractLimits,
    Skipped,
    extract_file,
)

__all__ = ["EXTRACTION_FAILED", "EXTRACTOR_VERSION", "REOFFERED_REASONS", "SkippedFile", "document_tokens",
           "documents_of", "is_ignored_name", "read_file"]

EXTRACTION_FAILED = "extraction_failed"  # the reason of a file a parser rejected (status "failed")

# The skips a later extractor may turn into text, so a file an older one skipped for one of them
# is read again once EXTRACTOR_VERSION is raised: a kind it did not know (unsupported, or binary
# for a compressed or info file), an encoding it could not find (undecodable), a stream it could
# not follow (corrupt). Not the ones a new extractor cannot change: empty, too_large,
# decompression_bomb and timeout follow the file and the limits, unreadable and outside_root its
# permissions and place, and "forgotten" is a person's decision.
REOFFERED_REASONS = frozenset(("binary", "unsupported", "undecodable", "corrupt"))


HIDDEN_SUFFIXES = ("~", ".part", ".tmp", ".swp", ".crdownload")


def is_ignored_name(name: str) -> bool:
    """Hidden and temporary names that are never read inside a folder (dotfiles, editor and
    download leftovers: emacs writes `#notes.txt#` autosaves and `.#notes.txt` locks)."""
    return (name.startswith(".") or name.endswith(HIDDEN_SUFFIXES)
            or (len(name) > 1 and name.startswith("#") and name.endswith("#")))


@dataclass(frozen=True)
class SkippedFile:
    """A file left out: `reason` a skip reason with status "skipped", or EXTRACTION_FAILED with
    status "failed"; `detail` says why in words."""

    path: Path
    reason: str
    detail: str = ""
    status: str = "skipped"

    @property
    def message(self) -> str:
        """The path and why, for a person: "PATH: DETAIL"."""
        return f"{self.path}: {self.detail or self.reason}"


def read_file(path: str | os.PathLike[str],
              limits: ExtractLimits | None = None) -> Extraction | ArchiveExtraction | SkippedFile:
    """The extracted text of the file at `path` (crawler.ingest.extract.extract_file, within
    `limits`, the defaults if None): an Extraction, an ArchiveExtraction for an archive of
    documents, or a SkippedFile saying why there is none. Never raises for the file's sake: a
    parser's error, or a bug it meets, is that file's EXTRACTION_FAILED."""
    try:
        return extract_file(path, limits or ExtractLimits())
    except Skipped as skip:
        return SkippedFile(Path(path), skip.reason, skip.detail)
    except Exception as exc:  # noqa: BLE001 - a parser error or a pathological file: never fatal
        failure = exc.detail if isinstance(exc, ExtractionFailed) and getattr(exc, "detail", None) else None
        return SkippedFile(Path(path), EXTRACTION_FAILED, failure or f"{type(exc).__name__}: {exc}", "failed")


def documents_of(path: str | os.PathLike[str],
                 read: Extraction | ArchiveExtraction | SkippedFile) -> list[tuple[Path, Extraction | SkippedFile]]:
    """The documents one `read_file` gives, each with its name: a file's own (its text, or why
    none), or every member of an archive (`ARCHIVE!member`, in archive order) with its text or
    why none; an archive read only in part (a tar cut short) adds itself last, skipped as
    `corrupt` with why (the members read whole are kept, as the daemon keeps them)."""
    if not isinstance(read, ArchiveExtraction):
        return [(Path(path), read)]
    found: list[tuple[Path, Extraction | SkippedFile]] = []
    for member in read.members:
        name = Path(member_path(os.fspath(path), member.name))
        if member.extraction is not None:
            found.append((name, member.extraction))
        elif member.failed:
            found.append((name, SkippedFile(name, EXTRACTION_FAILED, member.detail, "failed")))
        else:
            found.append((name, SkippedFile(name, member.reason or "unreadable", member.detail)))
    if read.truncated:
        found.append((Path(path), SkippedFile(Path(path), "corrupt", f"read in part: {read.truncated}")))
    return found


def document_tokens(tokenizer, text: str) -> np.ndarray:
    """One document's tokens: EOD, then the text's (the tokenizer's dtype, (1 + n,)). A separator
    opens every document, and every growth of one, in the stream and in an offline corpus.
    Raises TokenizerError for text the tokenizer cannot encode (a lone surrogate)."""
    body = tokenizer.encode_text(text)
    tokens = np.empty(body.size + 1, dtype=body.dtype)  # (1 + n,)
    tokens[0] = tokenizer.eod_id
    tokens[1:] = body
    return tokens
