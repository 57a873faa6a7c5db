"""The corpus rules' statistics: how many documents hold each line, and the near-duplicate index.

Two concerns of the ingest side's corpus rules (crawler/ingest/cleaning.py says what they
decide), kept per corpus so that every daemon writing one store, for weeks, judges against the
same counts:

- `corpus_lines` (models.py): per 64-bit line hash, the documents that hold the line, and a hash
  of the path that counted it last. count_lines adds one document's lines with one
  `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` per group of lines, in ascending hash order:
  each count is atomic (two writers never lose one), and every writer locks rows in the same
  order, so two PostgreSQL transactions never deadlock on them (SQLite's BEGIN IMMEDIATE
  serialises writers anyway). A line counted last by the same path (a new version of that file)
  is not counted again. The ingest side reads counts with line_counts and adds a whole batch's
  documents with add_line_counts (one write transaction, the same sorted lock order), since one
  write per document cost more than the rest of a small document's ingest. A document whose
  bytes are already in the stream (an exact duplicate, which add_documents records as such)
  counts nothing: the check runs in the same transaction.
- `document_signatures` and `signature_bands`: a stored document's MinHash signature and its
  locality-sensitive band keys, written after the document is stored; near_duplicate_candidates
  reads the documents that share a band with a new one, among those whose text is still in the
  stream and not withdrawn, other than the same path's.

The hashes, signatures and band keys are the caller's: this module stores and counts them and
knows nothing of text. A mixin of CorpusQueue (queue.py): relies on its `database`, models.py
and rows.py. Forgetting a document leaves its counts and signature (numbers, not text); its
signature is no longer matched, since its status is no longer in the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .db import Database
from .models import IN_STREAM, corpus_lines, document_signatures, documents, signature_bands, withdrawn
from .rows import in_groups

GROUP = 500  # rows per statement: 1,500 bound parameters, well under every dialect's limit


@dataclass(frozen=True)
class NearCandidate:
    """A stored document that shares a band with a new one: its id, path and signature."""

    document_id: int
    source_path: str
    shingles: int
    signature: bytes


class CorpusRules:
    """CorpusQueue's line statistics and near-duplicate index; each method is one transaction."""

    database: Database

    def count_lines(self, path_key: int, line_hashes: Iterable[int],
                    content_hash: str | None = None) -> dict[int, int] | None:
        """Counts one document's distinct lines; returns, per line hash, how many documents
        held it before this one. Atomic: one write transaction, each line's count one upsert
        (see the module docstring), so concurrent writers each count once and see counts that
        include every document counted before them. `path_key` names the document's file: a
        line it counted last is not counted again. When `content_hash` names bytes already in
        the stream (an exact duplicate, which add_documents records as such), nothing is counted
        and None is returned. May block up to busy_timeout_ms."""
        hashes, path_key = sorted({int(h) for h in line_hashes}), int(path_key)
        with self.database.write() as connection:
            if content_hash is not None and _in_stream(connection, content_hash):
                return None
            if not hashes:
                return {}
            rows = [{"line_hash": h, "documents": 1, "last_path": path_key} for h in hashes]
            # one compiled statement, sent as multi-row VALUES in batches (SQLAlchemy's insertmanyvalues)
            counted = connection.execute(_upsert(self.database.dialect), rows)
            return {int(h): int(n) - 1 for h, n in counted}

    def line_counts(self, line_hashes: Iterable[int],
                    content_hash: str | None = None) -> dict[int, tuple[int, int]] | None:
        """Per line hash, (documents that hold it, the path key that counted it last) as stored
        now; a line never counted is left out. None, and nothing read, when `content_hash`
        names bytes already in the stream (an exact duplicate counts nothing). One read: the
        caller counts its documents later, a batch at a time, with add_line_counts."""
        hashes = sorted({int(h) for h in line_hashes})
        found: dict[int, tuple[int, int]] = {}
        with self.database.read() as connection:
            if content_hash is not None and _in_stream(connection, content_hash):
                return None
            for group in in_groups(hashes):
                query = sa.select(corpus_lines.c.line_hash, corpus_lines.c.documents, corpus_lines.c.last_path).where(
                    corpus_lines.c.line_hash.in_(group))
                found |= {int(h): (int(n), int(last)) for h, n, last in connection.execute(query)}
        return found

    def add_line_counts(self, counted: Sequence[tuple[int, Iterable[int]]]) -> None:
        """Counts a batch of documents' distinct lines, given as (path key, line hashes) in the
        order they were judged, in one write transaction: the counts end as count_lines called
        once per document in that order would leave them (a line a path counted last is not
        counted again by it). One upsert for every line of the batch, in ascending hash order
        (the lock order of count_lines), and one update of the last path for lines that more
        than one of the batch's documents hold. May block up to busy_timeout_ms."""
        lines: dict[int, list[int]] = {}  # hash -> the path keys that count it, in order
        for path_key, hashes in counted:
            for h in {int(h) for h in hashes}:
                paths = lines.setdefault(h, [])
                if not paths or paths[-1] != int(path_key):
                    paths.append(int(path_key))
        if not lines:
            return
        order = sorted(lines)
        with self.database.write() as connection:
            # the first path is compared with the stored last path; every later one counts (each
            # differs from the one before it); a new line starts at the number of paths
            connection.execute(_upsert_many(self.database.dialect),
                               [{"line_hash": h, "documents": len(lines[h]), "last_path": lines[h][0]} for h in order])
            later = [{"key": h, "last": lines[h][-1]} for h in order if len(lines[h]) > 1]
            if later:
                connection.execute(sa.update(corpus_lines).where(corpus_lines.c.line_hash == sa.bindparam("key"))
                                   .values(last_path=sa.bindparam("last")), later)

    def content_in_stream(self, content_hash: str) -> bool:
        """Whether a document with these bytes (sha256 hex) has its text in the stream, queued or
        trained: a new file with them is an exact duplicate, which add_documents records. One read."""
        with self.database.read() as connection:
            return _in_stream(connection, content_hash)

    def line_documents(self, line_hashes: Iterable[int]) -> dict[int, int]:
        """How many documents hold each line (0 for a line never counted). One read."""
        hashes = {int(h) for h in line_hashes}
        found = {h: 0 for h in hashes}
        with self.database.read() as connection:
            for group in in_groups(hashes):
                query = sa.select(corpus_lines.c.line_hash, corpus_lines.c.documents).where(
                    corpus_lines.c.line_hash.in_(group))
                found |= {int(h): int(n) for h, n in connection.execute(query)}
        return found

    def near_duplicate_candidates(self, source_path: str, band_keys: Iterable[int]) -> list[NearCandidate]:
        """The stored documents sharing at least one band key with a new version of
        `source_path`, oldest first: those whose text is in the stream (queued or trained, no
        range of it withdrawn), other than the same path's. One read."""
        keys = {int(key) for key in band_keys}
        found: dict[int, NearCandidate] = {}
        unwithdrawn = ~sa.exists().where(withdrawn.c.document_id == documents.c.id)
        with self.database.read() as connection:
            for group in in_groups(keys):
                ids = sa.select(signature_bands.c.document_id).where(signature_bands.c.band_key.in_(group))
                query = (sa.select(documents.c.id, documents.c.source_path, document_signatures.c.shingles,
                                   document_signatures.c.signature)
                         .join(document_signatures, document_signatures.c.document_id == documents.c.id)
                         .where(documents.c.id.in_(ids), documents.c.status.in_(IN_STREAM),
                                documents.c.source_path != source_path, unwithdrawn))
                for row in connection.execute(query):
                    found[int(row.id)] = NearCandidate(int(row.id), row.source_path, int(row.shingles),
                                                       bytes(row.signature))
        return [found[i] for i in sorted(found)]

    def record_signatures(self, rows: Sequence[tuple[int, int, bytes, Sequence[int]]]) -> None:
        """Stores (document id, shingle count, signature, band keys) for documents just stored,
        in one write transaction. A document that already has one keeps it. May block up to
        busy_timeout_ms."""
        if not rows:
            return
        with self.database.write() as connection:
            ids = [int(row[0]) for row in rows]
            have: set[int] = set()
            for group in in_groups(ids):
                query = sa.select(document_signatures.c.document_id).where(document_signatures.c.document_id.in_(group))
                have |= set(connection.execute(query).scalars())
            new = list({int(row[0]): row for row in rows if int(row[0]) not in have}.values())
            if not new:
                return
            connection.execute(document_signatures.insert(),
                               [{"document_id": int(i), "shingles": int(n), "signature": bytes(s)} for i, n, s, _ in new])
            bands = [{"band_key": int(key), "document_id": int(i)} for i, _, _, keys in new for key in sorted(set(keys))]
            for start in range(0, len(bands), GROUP):
                connection.execute(signature_bands.insert(), bands[start:start + GROUP])


# --- inside the caller's transaction -------------------------------------------------------------


def _in_stream(connection: sa.Connection, content_hash: str) -> bool:
    query = sa.select(documents.c.id).where(documents.c.content_hash == content_hash,
                                            documents.c.status.in_(IN_STREAM)).limit(1)
    return connection.execute(query).first() is not None


@functools.cache
def _upsert(dialect: str) -> sa.Insert:
    """INSERT one line's row, or add this document to its count (unless the same path counted it
    last), RETURNING the count: built once per dialect."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(corpus_lines)
    same_path = corpus_lines.c.last_path == insert.excluded.last_path
    return insert.on_conflict_do_update(
        index_elements=[corpus_lines.c.line_hash],
        set_={"documents": corpus_lines.c.documents + sa.case((same_path, 0), else_=1),
              "last_path": insert.excluded.last_path},
    ).returning(corpus_lines.c.line_hash, corpus_lines.c.documents)


@functools.cache
def _upsert_many(dialect: str) -> sa.Insert:
    """add_line_counts' upsert: a new line's row as given (documents: the batch's paths that
    hold it, last_path: the first of them); an existing one gains those paths, less one when
    the first is the path that counted it last."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(corpus_lines)
    same_path = corpus_lines.c.last_path == insert.excluded.last_path
    return insert.on_conflict_do_update(
        index_elements=[corpus_lines.c.line_hash],
        set_={"documents": corpus_lines.c.documents + insert.excluded.documents - sa.case((same_path, 1), else_=0),
              "last_path": insert.excluded.last_path},
    )
