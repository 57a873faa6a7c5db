"""Documents in: file versions stored as tokens in the stream, or recorded as skipped.

The corpus is one token stream, the concatenation of every queued or trained document's tokens
in arrival order (the caller puts a separator at each document's start; storage does not care).
add_documents appends each new text to it in chunks (stream.py); content already in the stream
becomes a 'duplicate' row pointing at the first copy; a rewritten file's earlier versions give
up the tokens training has not reached (withdrawal.supersede); record_skip keeps a row for a
version that put nothing in the stream; record_removed ends paths whose file is gone from where it
was read (a member no longer in its rewritten archive) as a rewrite to nothing would. The corpus
tokenizer is recorded with the first document.

Concurrency: every write that allocates stream offsets or document versions first locks the
`meta["stream_end"]` row (stream.lock_stream), so concurrent writers, in threads or processes,
get disjoint, contiguous offsets and the committed stream never has a gap. The same lock makes
growth safe between writers that read one file at once (`crystalline ingest` beside the daemon):
a version that `continues` another is stored only if that one is still its path's newest
(versions.stale_continuations), checked after the lock is taken, so a file's new bytes are
stored by one writer and the other is told to read the file again.

Not the lookups of versions (versions.py), the reads (reads.py), nor forgetting (withdrawal.py).
A mixin of CorpusQueue (queue.py): relies on its `database` and `chunk_tokens`, and on
models.py, stream.py, versions.py, withdrawal.py, training_state.read_cursor and rows.py.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from .db import Database
from .errors import TokenizerMismatch
from .models import IN_STREAM, chunks, documents, meta
from .records import AddResult, NewDocument
from .rows import in_groups, insert_row, meta_value
from .stream import advance_stream, check_tokens, chunk_batches, lock_stream
from .training_state import read_cursor
from .versions import max_versions, newest_versions, next_version, stale_continuations
from .withdrawal import supersede

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class DocumentStore:
    """CorpusQueue's writes of documents; each method is one transaction."""

    database: Database
    chunk_tokens: int  # tokens per chunk row (StorageConfig.chunk_tokens)

    # --- the tokenizer ----------------------------------------------------------------------------

    def set_tokenizer(self, identity: str) -> None:
        """Records the corpus tokenizer on first call. Atomic.

        Raises TokenizerMismatch, naming both, when a different identity is already recorded.
        """
        with self.database.write() as connection:
            lock_stream(connection)
            _check_tokenizer(connection, identity)

    def tokenizer(self) -> str | None:
        """The recorded tokenizer identity, or None before set_tokenizer or the first document."""
        with self.database.read() as connection:
            return meta_value(connection, "tokenizer")

    # --- documents in -----------------------------------------------------------------------------

    def add_document(
        self,
        *,
        source_path: str,
        content_hash: str,
        size: int,
        mtime: float,
        kind: str,
        tokens: np.ndarray,
        tokenizer: str,
    ) -> AddResult:
        """Stores a file version's tokens, or a 'duplicate' row if its content is in the stream.

        The one-document case of add_documents, with the same contract.
        """
        item = NewDocument(source_path, content_hash, size, mtime, kind, tokens)
        return self.add_documents([item], tokenizer=tokenizer)[0]

    def add_documents(self, items: Sequence[NewDocument], *, tokenizer: str,
                      extractor_version: int | None = None) -> list[AddResult]:
        """Stores several file versions in arrival order; returns one AddResult each.

        Atomic and durable: one transaction, committed at synchronous=FULL on SQLite, holds every
        document row, all chunks and the advanced stream end; once this returns, the caller may
        delete or move the source files. Content already in the stream, or earlier in `items`,
        becomes a 'duplicate' row pointing at the first copy. A whole new version of a path that
        has versions (a rewrite; not a growth, which `continues` one) supersedes them: their
        tokens at or after the committed cursor are withdrawn (AddResult.withdrawn_tokens), in
        the same transaction; the text it duplicates, if any, stays. A version that `continues`
        another is stored only if that one is still the path's newest version whose bytes are
        accounted for (latest_versions' rule), checked under the stream lock, where no other
        writer can store one meanwhile, and provided no earlier item in `items` is a version of
        the same path; otherwise nothing of it is written and its AddResult says "stale" (its
        bytes may be stored already, by whoever stored the newer version: the caller reads the
        file again and compares it with the newest). One lock and a few statements for
        the whole batch, which is what makes many small files cheap. May block up to
        busy_timeout_ms for another writer. Raises ValueError for empty or out-of-range tokens
        or a malformed hash (nothing is written), and TokenizerMismatch when `tokenizer` is not
        the corpus tokenizer (the first one is recorded). Every row records `extractor_version`
        (the extractor that read the files; a number storage only keeps).
        """
        items = [replace_tokens(item, check_tokens(item.tokens)) for item in items]
        for item in items:
            if not isinstance(item.content_hash, str) or not SHA256_HEX.fullmatch(item.content_hash):
                raise ValueError(f"content_hash ({item.content_hash!r}) must be 64 lowercase hex digits")
        if not items:
            return []
        given = len(items)
        with self.database.write(durable=True) as connection:
            position = lock_stream(connection)
            _check_tokenizer(connection, tokenizer)
            # under the lock: no writer stores a version between this check and the inserts below
            stale = stale_continuations(connection, items)
            items = [item for i, item in enumerate(items) if i not in stale]
            versions = max_versions(connection, {item.source_path for item in items})
            rewrites = [i for i, item in enumerate(items)
                        if item.continues is None and (item.source_path in versions
                                                       or any(o.source_path == item.source_path for o in items[:i]))]
            originals = _stream_documents(connection, {item.content_hash for item in items})
            # pass 1: decide each item's fate; new content goes into the stream in order
            plans = []  # (row, index of the first copy in this batch or None)
            first_in_batch: dict[str, int] = {}
            for i, item in enumerate(items):
                versions[item.source_path] = version = versions.get(item.source_path, 0) + 1
                row = {"source_path": item.source_path, "content_hash": item.content_hash,
                       "size": item.size, "mtime": item.mtime, "kind": item.kind,
                       "version": version, "tokenizer": tokenizer,
                       "byte_offset": item.byte_offset, "continues": item.continues,
                       "extractor_version": extractor_version}
                if item.content_hash in originals:
                    row |= {"status": "duplicate", "duplicate_of": originals[item.content_hash], "token_count": 0}
                    plans.append((row, None))
                elif item.content_hash in first_in_batch:
                    row |= {"status": "duplicate", "token_count": 0}
                    plans.append((row, first_in_batch[item.content_hash]))
                else:
                    first_in_batch[item.content_hash] = i
                    end = position + len(item.tokens)
                    row |= {"status": "queued", "token_count": len(item.tokens),
                            "stream_start": position, "stream_end": end}
                    plans.append((row, None))
                    position = end
            # pass 2: queued rows first (their ids are what duplicates in the batch point at)
            queued = [i for i, (row, _) in enumerate(plans) if row["status"] == "queued"]
            ids: dict[int, int] = dict(zip(queued, _insert_many(connection, [plans[i][0] for i in queued])))
            for i, (row, first) in enumerate(plans):
                if first is not None:
                    row["duplicate_of"] = ids[first]
            rest = [i for i in range(len(plans)) if i not in ids]
            ids |= dict(zip(rest, _insert_many(connection, [plans[i][0] for i in rest])))
            # pass 3: the chunks of every queued document, a bounded executemany at a time
            counts: dict[int, int] = {}
            pending: list[dict] = []
            for i in queued:
                row = plans[i][0]
                for rows in chunk_batches(ids[i], row["stream_start"], items[i].tokens, self.chunk_tokens):
                    pending += rows
                    counts[i] = counts.get(i, 0) + len(rows)
                    if len(pending) >= 64:
                        connection.execute(chunks.insert(), pending)  # Core executemany
                        pending = []
            if pending:
                connection.execute(chunks.insert(), pending)
            if queued:
                advance_stream(connection, position)
            # pass 4: a rewritten file's earlier versions lose the tokens training has not reached
            withdrawn_tokens = {}
            if rewrites:
                cursor = read_cursor(connection).stream_position
                for i in rewrites:
                    keep = {ids[i], plans[i][0].get("duplicate_of")}  # the new text itself stays
                    withdrawn_tokens[i] = supersede(connection, items[i].source_path, ids[i], keep, cursor)
        results = []
        for i, (row, _) in enumerate(plans):
            if row["status"] == "queued":
                results.append(AddResult(ids[i], "queued", None, row["version"], row["token_count"],
                                         counts.get(i, 0), row["stream_start"], row["stream_end"],
                                         withdrawn_tokens.get(i, 0)))
            else:
                results.append(AddResult(ids[i], "duplicate", row["duplicate_of"], row["version"], 0, 0, None, None,
                                         withdrawn_tokens.get(i, 0)))
        stored = iter(results)
        return [AddResult(None, "stale", None, 0, 0, 0, None, None) if i in stale else next(stored)
                for i in range(given)]

    def record_skip(
        self,
        *,
        source_path: str,
        reason: str,
        detail: str | None = None,
        status: str = "skipped",
        kind: str | None = None,
        size: int | None = None,
        mtime: float | None = None,
        content_hash: str | None = None,
        byte_offset: int | None = None,
        continues: int | None = None,
        extractor_version: int | None = None,
    ) -> int | None:
        """Records a file version that put nothing in the stream; returns its row id. Atomic.

        `status` is "skipped" (not for training: `reason` is a code such as "binary") or "failed"
        (reading it went wrong: `detail` holds the error). Raises ValueError for another status.
        A row with a content_hash and a byte_offset (a file that grew by whitespace only) is a
        version later growth is measured from (latest_versions); a content_hash alone only says
        which bytes were judged (an archive member's). One that `continues` a version no longer
        the path's newest is stale, as in add_documents: nothing is written and None returned
        (a row measured from an older version would make the next growth store bytes again).
        `extractor_version` names the extractor that gave the verdict (None: not an extractor's,
        or not known), so that seen_many can offer the file to a newer one.
        """
        if status not in ("skipped", "failed"):
            raise ValueError(f"status ({status!r}) must be 'skipped' or 'failed'")
        with self.database.write() as connection:
            lock_stream(connection)  # versions per path are allocated under the same lock
            if continues is not None and newest_versions(connection, {source_path}).get(source_path) != continues:
                return None
            row = {
                "source_path": source_path,
                "content_hash": content_hash,
                "size": size,
                "mtime": mtime,
                "kind": kind,
                "status": status,
                "reason": reason,
                "detail": detail,
                "token_count": 0,
                "version": next_version(connection, source_path),
                "byte_offset": byte_offset,
                "continues": continues,
                "extractor_version": extractor_version,
            }
            return insert_row(connection, documents, row)


    def record_removed(self, paths: Sequence[str], *, reason: str, detail: str | None = None,
                       extractor_version: int | None = None) -> dict[str, int]:
        """Records that each path's file is gone from where it was read (a member no longer in
        its rewritten archive), as a rewrite of it to nothing: a new version of each path,
        `skipped` with `reason` and `detail`, and the tokens of its earlier versions that
        training has not reached (from the committed cursor on) withdrawn as "superseded", as
        add_documents withdraws a rewritten file's. Returns the tokens withdrawn, per path.
        Atomic and durable: one transaction; may block up to busy_timeout_ms for another writer.
        """
        paths = list(dict.fromkeys(paths))
        if not paths:
            return {}
        withdrawn_tokens: dict[str, int] = {}
        with self.database.write(durable=True) as connection:
            lock_stream(connection)  # versions per path, and withdrawals, under the one lock
            versions = max_versions(connection, set(paths))
            cursor = read_cursor(connection).stream_position
            for path in paths:
                row_id = insert_row(connection, documents, {
                    "source_path": path, "status": "skipped", "reason": reason, "detail": detail,
                    "token_count": 0, "version": versions.get(path, 0) + 1, "extractor_version": extractor_version})
                withdrawn_tokens[path] = supersede(connection, path, row_id, set(), cursor)
        return withdrawn_tokens


# --- inside the caller's transaction -------------------------------------------------------------


def _check_tokenizer(connection: sa.Connection, identity: str) -> None:
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"tokenizer identity ({identity!r}) must be a non-empty string")
    recorded = meta_value(connection, "tokenizer")
    if recorded is None:
        connection.execute(meta.insert().values(key="tokenizer", value=identity))
    elif recorded != identity:
        raise TokenizerMismatch(recorded, identity)


def replace_tokens(item: NewDocument, tokens: np.ndarray) -> NewDocument:
    return dataclasses.replace(item, tokens=tokens)


def _stream_documents(connection: sa.Connection, hashes: set[str]) -> dict[str, int]:
    """For each hash already in the stream, the id of its first document."""
    found: dict[str, int] = {}
    for group in in_groups(hashes):
        query = (sa.select(documents.c.content_hash, sa.func.min(documents.c.id))
                 .where(documents.c.content_hash.in_(group), documents.c.status.in_(IN_STREAM))
                 .group_by(documents.c.content_hash))
        found |= {digest: int(first) for digest, first in connection.execute(query)}
    return found


def _insert_many(connection: sa.Connection, rows: list[dict]) -> list[int]:
    """Insert rows (possibly with different keys) and return their ids in order."""
    return [insert_row(connection, documents, row) for row in rows]
