"""CorpusQueue: documents in, token windows out, and the training cursor with its checkpoints.

The corpus is one token stream, the concatenation of every queued or trained document's tokens
in arrival order (the caller puts a separator at each document's start; storage does not care).
Training reads the stream in order from the cursor, and samples replay windows from the part
already trained. Reads touch only the chunks that overlap the requested range (stream.py), so
memory follows the request, never the corpus.

Held-out text: with a HoldoutSplit (holdout.py, recorded once in meta["holdout"]), the training
reads skip every window that touches a held-out region, and holdout_set returns the regions cut
into evaluation windows; evaluation results go to the `evaluations` table.

Withdrawn text: a rewritten file's earlier version loses the tokens training has not reached
(add_documents records them as "superseded"), and `forget` removes a document's text (its chunks
are deleted, its range recorded as "forgotten"). stream_mask(split) returns the held-out split
and every withdrawn range as one StreamMask (mask.py): passed where a HoldoutSplit is accepted,
the training reads, replay draws and the held-out set skip withdrawn text too.

Concurrency: every write that allocates stream offsets or document versions first locks the
`meta["stream_end"]` row (stream.lock_stream), so concurrent writers, in threads or processes,
get disjoint, contiguous offsets and the committed stream never has a gap. Each public method is
one transaction through db.Database; this module knows nothing of the engine or the crawler.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import operator
import re
from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from .db import Database
from .errors import TokenizerMismatch
from .holdout import HoldoutSplit, draw_window_starts, evaluation_windows
from .mask import StreamMask
from .models import (
    ESCAPED_PREFIX,
    IN_STREAM,
    STATUSES,
    checkpoints,
    chunks,
    documents,
    evaluations,
    meta,
    training_cursor,
    withdrawn,
)
from .records import (
    AddResult,
    CheckpointRecord,
    Cursor,
    EvaluationRecord,
    ForgetResult,
    HoldoutSet,
    NewDocument,
    QueueStats,
    StoredVersion,
)
from .stream import (
    advance_stream,
    check_tokens,
    chunk_batches,
    lock_stream,
    read_range,
    stream_end,
)

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class CorpusQueue:
    """The corpus store's interface; each method is one transaction unless it says otherwise."""

    def __init__(self, database: Database):
        self.database = database
        self.chunk_tokens = database.config.chunk_tokens

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
            return _get_meta(connection, "tokenizer")

    # --- the held-out split -----------------------------------------------------------------------

    def holdout(self, default: HoldoutSplit) -> HoldoutSplit:
        """The corpus's held-out split: the one recorded, else `default`, recorded now. Atomic.

        The first call records `default` in meta["holdout"] under the stream lock (as
        set_tokenizer does), so concurrent first calls agree; later calls, after restarts and
        config changes alike, return the recorded split unchanged, whatever `default` says. Raises
        ConfigError for an invalid `default` (nothing is written) or a malformed recorded split.
        Only the first call writes (and may block up to busy_timeout_ms for another writer).
        """
        default.validate()
        with self.database.read() as connection:
            recorded = _get_meta(connection, "holdout")
        if recorded is not None:
            return HoldoutSplit.from_json(recorded)
        with self.database.write() as connection:
            lock_stream(connection)
            recorded = _get_meta(connection, "holdout")
            if recorded is not None:
                return HoldoutSplit.from_json(recorded)
            connection.execute(meta.insert().values(key="holdout", value=default.to_json()))
            return default

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

    def add_documents(self, items: Sequence[NewDocument], *, tokenizer: str) -> list[AddResult]:
        """Stores several file versions in arrival order; returns one AddResult each.

        Atomic and durable: one transaction, committed at synchronous=FULL on SQLite, holds every
        document row, all chunks and the advanced stream end; once this returns, the caller may
        delete or move the source files. Content already in the stream, or earlier in `items`,
        becomes a 'duplicate' row pointing at the first copy. A whole new version of a path that
        has versions (a rewrite; not a growth, which `continues` one) supersedes them: their
        tokens at or after the committed cursor are withdrawn (AddResult.withdrawn_tokens), in
        the same transaction; the text it duplicates, if any, stays. One lock and a few statements for
        the whole batch, which is what makes many small files cheap. May block up to
        busy_timeout_ms for another writer. Raises ValueError for empty or out-of-range tokens
        or a malformed hash (nothing is written), and TokenizerMismatch when `tokenizer` is not
        the corpus tokenizer (the first one is recorded).
        """
        items = [replace_tokens(item, check_tokens(item.tokens)) for item in items]
        for item in items:
            if not isinstance(item.content_hash, str) or not SHA256_HEX.fullmatch(item.content_hash):
                raise ValueError(f"content_hash ({item.content_hash!r}) must be 64 lowercase hex digits")
        if not items:
            return []
        with self.database.write(durable=True) as connection:
            position = lock_stream(connection)
            _check_tokenizer(connection, tokenizer)
            versions = _max_versions(connection, {item.source_path for item in items})
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
                       "byte_offset": item.byte_offset, "continues": item.continues}
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
                cursor = _cursor(connection).stream_position
                for i in rewrites:
                    keep = {ids[i], plans[i][0].get("duplicate_of")}  # the new text itself stays
                    withdrawn_tokens[i] = _supersede(connection, items[i].source_path, ids[i], keep, cursor)
        results = []
        for i, (row, _) in enumerate(plans):
            if row["status"] == "queued":
                results.append(AddResult(ids[i], "queued", None, row["version"], row["token_count"],
                                         counts.get(i, 0), row["stream_start"], row["stream_end"],
                                         withdrawn_tokens.get(i, 0)))
            else:
                results.append(AddResult(ids[i], "duplicate", row["duplicate_of"], row["version"], 0, 0, None, None,
                                         withdrawn_tokens.get(i, 0)))
        return results

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
    ) -> int:
        """Records a file version that put nothing in the stream; returns its row id. Atomic.

        `status` is "skipped" (not for training: `reason` is a code such as "binary") or "failed"
        (reading it went wrong: `detail` holds the error). Raises ValueError for another status.
        A row with a content_hash (a file that grew by whitespace only) is a version later
        growth is measured from (latest_versions).
        """
        if status not in ("skipped", "failed"):
            raise ValueError(f"status ({status!r}) must be 'skipped' or 'failed'")
        with self.database.write() as connection:
            lock_stream(connection)  # versions per path are allocated under the same lock
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
                "version": _next_version(connection, source_path),
                "byte_offset": byte_offset,
                "continues": continues,
            }
            return _insert(connection, documents, row)

    def seen_many(self, versions: Sequence[tuple[str, int, float]]) -> set[tuple[str, int, float]]:
        """Which of these (path, size, mtime) file versions already have a row of any status.
        One snapshot, a few IN queries: the cheap way to reconcile a large folder."""
        wanted = set(versions)
        found: set[tuple[str, int, float]] = set()
        with self.database.read() as connection:
            for group in _in_groups({path for path, _, _ in wanted}):
                query = sa.select(documents.c.source_path, documents.c.size, documents.c.mtime).where(
                    documents.c.source_path.in_(group))
                found |= {tuple(row) for row in connection.execute(query)} & wanted
        return found

    def latest_versions(self, paths: Sequence[str]) -> dict[str, StoredVersion]:
        """For each path with one, its latest version whose bytes are all accounted for (stored,
        a duplicate, or a growth by whitespace only; not a skip). One snapshot, a few IN
        queries. What a changed file is compared with (docs/STORAGE.md, "What a changed file
        means")."""
        found: dict[str, StoredVersion] = {}
        columns = (documents.c.source_path, documents.c.version, documents.c.id, documents.c.size,
                   documents.c.mtime, documents.c.content_hash, documents.c.kind, documents.c.status)
        with self.database.read() as connection:
            for group in _in_groups(set(paths)):
                latest = (sa.select(documents.c.source_path, sa.func.max(documents.c.version).label("version"))
                          .where(documents.c.source_path.in_(group), documents.c.content_hash.is_not(None),
                                 documents.c.size.is_not(None),
                                 sa.or_(documents.c.status.in_((*IN_STREAM, "duplicate")),
                                        documents.c.byte_offset.is_not(None)))
                          .group_by(documents.c.source_path).subquery())
                query = sa.select(*columns).join(latest, sa.and_(
                    documents.c.source_path == latest.c.source_path, documents.c.version == latest.c.version))
                for path, _, *fields in connection.execute(query):
                    found[path] = StoredVersion(int(fields[0]), int(fields[1]), fields[2], *fields[3:])
        return found

    def seen(self, source_path: str, size: int, mtime: float) -> bool:
        """Whether this exact file version (path, size, mtime) already has a row of any status."""
        query = sa.select(documents.c.id).where(
            documents.c.source_path == source_path,
            documents.c.size == size,
            documents.c.mtime == mtime,
        )
        with self.database.read() as connection:
            return connection.execute(query.limit(1)).first() is not None

    # --- windows out ------------------------------------------------------------------------------

    def read_tokens(self, start: int, stop: int, missing: int | None = None) -> np.ndarray:
        """Stream tokens [start, stop) as int32 (stop - start,), in one snapshot. Raises ValueError
        for a range that is empty-negative or beyond the stream's end. A forgotten token raises
        StorageError, or with `missing` (say -1) is that value instead."""
        with self.database.read() as connection:
            end = stream_end(connection)
            if not 0 <= start <= stop <= end:
                raise ValueError(f"range [{start}, {stop}) must lie within the stream [0, {end})")
            if start == stop:
                return np.empty(0, np.int32)
            return read_range(connection, start, stop, missing)

    def stream_end(self) -> int:
        """The stream's length in tokens, as last committed: one small read."""
        with self.database.read() as connection:
            return stream_end(connection)

    def cursor(self) -> Cursor:
        """Where training stands, as of the latest committed checkpoint."""
        with self.database.read() as connection:
            return _cursor(connection)

    def read_windows(
        self, position: int, count: int, seq_len: int, holdout: HoldoutSplit | StreamMask | None = None,
        return_starts: bool = False,
    ) -> tuple[np.ndarray, int] | tuple[np.ndarray, int, np.ndarray]:
        """Up to `count` windows of seq_len + 1 consecutive stream tokens, from `position` on.

        Window j covers [position + j*seq_len, position + j*seq_len + seq_len + 1), so consecutive
        windows share one token (the last target of one is the first input of the next). Only
        complete windows: n = 0 while the stream is too short. Returns (int32 (n, seq_len + 1),
        position + n*seq_len). One snapshot; reads only the chunks overlapping the range.

        With `holdout`, windows touching a held-out region are skipped (never read): it examines
        windows in order until `count` are taken or no complete window is left, and returns
        (the windows taken, position + examined*seq_len), skipped windows counted as examined.
        Tokens are read one run of adjacent taken windows at a time. With a StreamMask, windows
        touching withdrawn text are skipped the same way. With `return_starts`, a third value:
        each window's stream offset, int64 (n,).
        """
        if position < 0 or count < 0 or seq_len < 1:
            raise ValueError(
                f"position ({position}) and count ({count}) must be >= 0, seq_len ({seq_len}) >= 1"
            )
        if holdout is None:
            with self.database.read() as connection:
                n = max(0, min(count, (stream_end(connection) - position - 1) // seq_len))
                flat = read_range(connection, position, position + n * seq_len + 1) if n else None  # (n*T + 1,)
            index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (n, T + 1)
            windows = flat[index] if n else np.empty((0, seq_len + 1), np.int32)
            result = windows, position + n * seq_len
            return (*result, position + np.arange(n, dtype=np.int64) * seq_len) if return_starts else result
        with self.database.read() as connection:
            available = max(0, (stream_end(connection) - position - 1) // seq_len)
            taken, examined = holdout.training_windows(position, seq_len, available, count)
            out = np.empty((len(taken), seq_len + 1), np.int32)  # (n, T + 1)
            breaks = np.flatnonzero(np.diff(taken) != 1) + 1  # where a run of adjacent j ends
            row = 0
            for run in np.split(taken, breaks) if len(taken) else []:
                start = position + int(run[0]) * seq_len
                flat = read_range(connection, start, start + len(run) * seq_len + 1)  # (m*T + 1,)
                index = np.arange(len(run))[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
                out[row : row + len(run)] = flat[index]  # (m, T + 1)
                row += len(run)
        result = out, position + examined * seq_len
        return (*result, position + taken.astype(np.int64) * seq_len) if return_starts else result

    def read_windows_at(self, starts: np.ndarray, seq_len: int) -> np.ndarray:
        """The windows of seq_len + 1 tokens at these stream offsets, in their order: int32
        (n, seq_len + 1). One snapshot; runs of adjacent windows (seq_len apart) are read at once.
        Raises StorageError for a window on forgotten text (check with a StreamMask first)."""
        starts = np.asarray(starts, np.int64).reshape(-1)  # (n,)
        out = np.empty((starts.size, seq_len + 1), np.int32)  # (n, T + 1)
        if starts.size == 0:
            return out
        order = np.argsort(starts, kind="stable")
        ordered = starts[order]
        breaks = np.flatnonzero(np.diff(ordered) != seq_len) + 1  # where a run of adjacent windows ends
        row = 0
        with self.database.read() as connection:
            for run in np.split(ordered, breaks):
                first = int(run[0])
                flat = read_range(connection, first, first + len(run) * seq_len + 1)  # (m*T + 1,)
                index = np.arange(len(run))[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
                out[order[row : row + len(run)]] = flat[index]  # (m, T + 1)
                row += len(run)
        return out

    def sample_replay(
        self,
        count: int,
        seq_len: int,
        rng: np.random.Generator,
        end: int | None = None,
        holdout: HoldoutSplit | StreamMask | None = None,
    ) -> np.ndarray:
        """`count` windows of the trained stream: int32 (count, seq_len + 1), for replay.

        Window i starts at rng.integers(0, end - seq_len, size=count)[i], drawn uniformly, so
        every window ends at or before `end`: the committed cursor by default, or the trainer's
        own position, which runs ahead of the cursor between checkpoints. While fewer than
        seq_len + 1 tokens lie before `end` it returns an empty (0, seq_len + 1) array and draws
        nothing from `rng`. One small query per window, all in one snapshot.

        With `holdout`, windows touching a held-out region are dropped and the missing ones
        redrawn the same way, in up to REPLAY_ROUNDS rounds (the first round draws what the call
        without `holdout` draws); if windows are still missing it returns fewer than `count`.
        """
        if count < 0 or seq_len < 1:
            raise ValueError(f"count ({count}) must be >= 0 and seq_len ({seq_len}) >= 1")
        with self.database.read() as connection:
            limit = _cursor(connection).stream_position if end is None else min(end, stream_end(connection))
            high = limit - seq_len  # window starts lie in [0, high)
            if count == 0 or high <= 0:
                return np.empty((0, seq_len + 1), np.int32)
            positions = draw_window_starts(rng, high, count, seq_len, holdout)  # (n,)
            out = np.empty((len(positions), seq_len + 1), np.int32)  # (count, T + 1)
            for i, start in enumerate(positions.tolist()):
                out[i] = read_range(connection, start, start + seq_len + 1)
        return out

    def holdout_set(self, holdout: HoldoutSplit | StreamMask, seq_len: int) -> HoldoutSet:
        """The evaluation windows of every complete held-out block, in stream order.

        Blocks are holdout.complete_blocks(stream end), less (with a StreamMask) those whose
        region meets withdrawn text; each region [k*S, k*S + S + 1) is cut as
        holdout.evaluation_windows says (n = S // seq_len windows of seq_len + 1 tokens, plus a
        tail window of r + 1 tokens when r = S % seq_len > 0), so every target of every region is
        scored exactly once. One snapshot, one read per block (at most max_blocks of them).
        HoldoutSet.key names the blocks: a withdrawal can change the set without changing its size.
        """
        if seq_len < 1:
            raise ValueError(f"seq_len ({seq_len}) must be >= 1")
        mask = holdout if isinstance(holdout, StreamMask) else None
        split = holdout.split if mask is not None else holdout
        S = split.validate().block_tokens
        with self.database.read() as connection:
            ks = split.complete_blocks(stream_end(connection))  # (B,)
            if mask is not None:
                ks = ks[~mask.withdrawn_overlaps(ks * S, S + 1)]
            regions = np.empty((len(ks), S + 1), np.int32)  # (B, S + 1)
            for i, k in enumerate(ks.tolist()):
                regions[i] = read_range(connection, k * S, k * S + S + 1)
        windows, tail = evaluation_windows(regions, seq_len)
        key = hashlib.sha256(np.ascontiguousarray(ks, "<i8").tobytes()).hexdigest()[:16]
        return HoldoutSet(blocks=len(ks), tokens=len(ks) * S, windows=windows, tail=tail, key=f"{len(ks)}-{key}")

    # --- withdrawn text ---------------------------------------------------------------------------

    def withdrawal_generation(self) -> int:
        """The newest withdrawn row's id (0 before the first): one small read, for a reader to
        tell whether its StreamMask is stale."""
        with self.database.read() as connection:
            return int(connection.execute(sa.select(sa.func.max(withdrawn.c.id))).scalar() or 0)

    def stream_mask(self, split: HoldoutSplit | None) -> StreamMask:
        """`split` and every withdrawn range as one StreamMask, from one snapshot."""
        query = sa.select(withdrawn.c.id, withdrawn.c.stream_start, withdrawn.c.stream_end)
        with self.database.read() as connection:
            rows = np.array(connection.execute(query).all(), np.int64).reshape(-1, 3)  # (R, 3)
        generation = int(rows[:, 0].max()) if len(rows) else 0
        return StreamMask.of(split, rows[:, 1], rows[:, 2], generation)

    def forget(self, *, paths: Sequence[str] = (), document_ids: Sequence[int] = (),
               prefixes: Sequence[str] = (), dry_run: bool = False) -> ForgetResult:
        """Removes documents' text from the store and from all future training, replay and
        held-out evaluation. Atomic and durable; with `dry_run`, says what it would remove and
        changes nothing.

        Names documents by source path (every version of it), by id, or by path prefix (a
        folder: end it with "/"). A named duplicate stands for the text it duplicates, so that
        text goes (with every other path that shares it: ForgetResult.sharing). Each document
        whose text is in the stream has its chunks deleted (on SQLite with secure_delete, and
        the write-ahead log truncated afterwards, so the bytes leave the files too; PostgreSQL
        frees them at its next VACUUM), its range recorded as withdrawn ("forgotten"), and
        becomes `skipped` with reason "forgotten" (its row stays: the file is not ingested again
        unless it changes). Offsets do not move; the cursor and the checkpoints stay valid.
        """
        wanted_ids = {int(i) for i in document_ids}
        columns = (documents.c.id, documents.c.source_path, documents.c.status, documents.c.duplicate_of,
                   documents.c.stream_start, documents.c.stream_end)
        with self.database.write(durable=True) as connection:
            lock_stream(connection)
            named: dict[int, sa.Row] = {}
            found: set[str] = set()  # the paths and prefixes that named something
            for group in _in_groups(set(paths)):
                for row in connection.execute(sa.select(*columns).where(documents.c.source_path.in_(group))):
                    named[row.id] = row
                    found.add(row.source_path)
            for prefix in prefixes:
                forms = {prefix, ESCAPED_PREFIX + prefix.replace("%", "%25")}  # plain and escaped names
                condition = sa.or_(*(documents.c.source_path.startswith(form, autoescape=True) for form in forms))
                for row in connection.execute(sa.select(*columns).where(condition)):
                    if row.source_path.startswith(prefix):
                        named[row.id] = row
                        found.add(prefix)
            for group in _in_groups(wanted_ids):
                for row in connection.execute(sa.select(*columns).where(documents.c.id.in_(group))):
                    named[row.id] = row
            not_found = [p for p in (*paths, *prefixes) if p not in found]
            not_found += [str(i) for i in sorted(wanted_ids - set(named))]
            # the documents whose text is in the stream: the named ones, and the originals of named duplicates
            targets = {i for i, row in named.items() if row.status in IN_STREAM}
            originals = {row.duplicate_of for row in named.values() if row.status == "duplicate" and row.duplicate_of}
            for group in _in_groups(originals - targets):
                query = sa.select(documents.c.id).where(documents.c.id.in_(group), documents.c.status.in_(IN_STREAM))
                targets |= {int(i) for i in connection.execute(query).scalars()}
            already = sorted(i for i in wanted_ids & set(named)
                             if i not in targets and named[i].duplicate_of not in targets)
            rows = []
            for group in _in_groups(targets):
                rows += connection.execute(sa.select(*columns).where(documents.c.id.in_(group))).all()
            sharing: set[str] = set()
            for group in _in_groups(targets):
                query = sa.select(documents.c.source_path).where(documents.c.duplicate_of.in_(group))
                sharing |= set(connection.execute(query).scalars())
            forgotten_paths = sorted({row.source_path for row in rows})
            sharing -= set(forgotten_paths)
            tokens = sum(int(row.stream_end) - int(row.stream_start) for row in rows)
            result = ForgetResult(sorted(targets), forgotten_paths, tokens, sorted(sharing), already, not_found)
            if dry_run or not targets:
                return result
            if self.database.dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA secure_delete = ON")
            for group in _in_groups(targets):
                connection.execute(chunks.delete().where(chunks.c.document_id.in_(group)))
                connection.execute(documents.update().where(documents.c.id.in_(group)).values(
                    status="skipped", reason="forgotten", detail="text removed by `crystalline forget`"))
            connection.execute(withdrawn.insert(), [
                {"document_id": row.id, "stream_start": row.stream_start, "stream_end": row.stream_end,
                 "reason": "forgotten"} for row in rows])
            if self.database.dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA secure_delete = OFF")
        self.database.truncate_log()
        return result

    # --- checkpoints ------------------------------------------------------------------------------

    def commit_checkpoint(
        self,
        *,
        step: int,
        path: str,
        stream_position: int,
        tokens_trained: int,
        loss: float | None = None,
    ) -> None:
        """Records a checkpoint and moves the cursor to it. Atomic: all of it or none of it.

        One transaction inserts the checkpoints row, moves the cursor, and marks 'trained' every
        queued document that ends at or before `stream_position`. Contract: the caller writes the
        checkpoint file durably first. If the process dies before this commits, the database still
        names the previous checkpoint: the caller finds the newer file, which no row names, and
        records it with restore_checkpoint. Raises ValueError, changing nothing,
        when stream_position would move the cursor back or past the stream's end.
        """
        if step < 0 or tokens_trained < 0:
            raise ValueError(f"step ({step}) and tokens_trained ({tokens_trained}) must be >= 0")
        with self.database.write() as connection:
            current = _cursor(connection, for_update=True)
            end = stream_end(connection)
            if not current.stream_position <= stream_position <= end:
                raise ValueError(
                    f"stream_position ({stream_position}) must be in [{current.stream_position}, "
                    f"{end}]: the cursor never moves back or past the stream's end"
                )
            position = {"stream_position": stream_position, "tokens_trained": tokens_trained}
            connection.execute(
                checkpoints.insert().values(step=step, path=path, loss=loss, **position)
            )
            connection.execute(
                training_cursor.update()
                .where(training_cursor.c.id == 1)
                .values(step=step, **position)
            )
            _mark_trained(connection, stream_position)

    def rewind_to(self, checkpoint_id: int) -> CheckpointRecord:
        """Makes an older checkpoint the latest: for when the newest checkpoint file is corrupt.

        Atomic: one transaction deletes every checkpoint row after `checkpoint_id`, moves the
        cursor back to that checkpoint's position, counters and step, and returns to 'queued'
        every document the removed checkpoints had marked trained, so the model is never credited
        with data it did not keep. Raises ValueError for an unknown id.
        """
        with self.database.write() as connection:
            _cursor(connection, for_update=True)
            row = connection.execute(sa.select(checkpoints).where(checkpoints.c.id == checkpoint_id)).first()
            if row is None:
                raise ValueError(f"no checkpoint with id {checkpoint_id}")
            record = CheckpointRecord(**row._mapping)
            connection.execute(checkpoints.delete().where(checkpoints.c.id > checkpoint_id))
            connection.execute(
                training_cursor.update().where(training_cursor.c.id == 1).values(
                    stream_position=record.stream_position, tokens_trained=record.tokens_trained,
                    step=record.step))
            connection.execute(
                documents.update()
                .where(documents.c.status == "trained", documents.c.stream_end > record.stream_position)
                .values(status="queued"))
        return record

    def restore_checkpoint(
        self,
        *,
        step: int,
        path: str,
        stream_position: int,
        tokens_trained: int,
        loss: float | None = None,
    ) -> CheckpointRecord:
        """Makes a checkpoint file the database does not name its latest: for when the two disagree
        (commits lost with a deleted WAL, a crash between file and commit, a restored backup).

        Atomic: one transaction deletes the rows of checkpoints at `step` or later, inserts this
        one's row, sets the cursor to its position, counters and step (forward or back), marks
        'trained' the queued documents that end at or before `stream_position` and returns to
        'queued' the trained ones that end after it. Raises ValueError, changing nothing, for a
        position beyond the stream's end (the file trained on text this database does not hold)
        or a negative count.
        """
        if step < 0 or tokens_trained < 0 or stream_position < 0:
            raise ValueError(f"step ({step}), tokens_trained ({tokens_trained}) and stream_position "
                             f"({stream_position}) must be >= 0")
        with self.database.write() as connection:
            _cursor(connection, for_update=True)
            end = stream_end(connection)
            if stream_position > end:
                raise ValueError(f"stream_position ({stream_position}) lies beyond the stream's end ({end})")
            connection.execute(checkpoints.delete().where(checkpoints.c.step >= step))
            position = {"stream_position": stream_position, "tokens_trained": tokens_trained}
            new_id = _insert(connection, checkpoints, {"step": step, "path": path, "loss": loss, **position})
            _set_cursor(connection, step=step, **position)
            row = connection.execute(sa.select(checkpoints).where(checkpoints.c.id == new_id)).one()
        return CheckpointRecord(**row._mapping)

    def drop_checkpoint_rows(self, checkpoint_ids: Sequence[int]) -> int:
        """Deletes the rows of checkpoints whose files are gone (retention deleted them): a row
        naming no file can neither be resumed from nor vouch for a file.

        Atomic. Never the newest row, on which the cursor stands: an id of it raises ValueError,
        changing nothing. Ids no row has are passed over. Returns the number of rows deleted."""
        wanted = {int(i) for i in checkpoint_ids}
        if not wanted:
            return 0
        deleted = 0
        with self.database.write() as connection:
            _cursor(connection, for_update=True)  # beside commit_checkpoint, never between its steps
            newest = connection.execute(sa.select(sa.func.max(checkpoints.c.id))).scalar()
            if newest in wanted:
                raise ValueError(f"checkpoint row {newest} is the newest: the cursor stands on it")
            for group in _in_groups(wanted):
                deleted += connection.execute(checkpoints.delete().where(checkpoints.c.id.in_(group))).rowcount or 0
        return int(deleted)

    def reset_training(self) -> int:
        """Forgets the model's training, keeps the corpus: every checkpoint row and evaluation is
        deleted, the cursor goes back to the stream's start (step 0) and every trained document is
        queued again; the held-out split and the tokenizer stay. Atomic. Returns the number of
        checkpoint rows deleted."""
        with self.database.write() as connection:
            _cursor(connection, for_update=True)
            deleted = connection.execute(checkpoints.delete()).rowcount
            connection.execute(evaluations.delete())
            _set_cursor(connection, step=0, stream_position=0, tokens_trained=0)
        return int(deleted or 0)

    def latest_checkpoint(self) -> CheckpointRecord | None:
        """The most recently committed checkpoint, or None before the first."""
        found = self.checkpoints(limit=1)
        return found[0] if found else None

    def checkpoints(self, limit: int = 10) -> list[CheckpointRecord]:
        """Up to `limit` committed checkpoints, newest first."""
        query = sa.select(checkpoints).order_by(checkpoints.c.id.desc()).limit(limit)
        with self.database.read() as connection:
            return [CheckpointRecord(**row._mapping) for row in connection.execute(query)]

    # --- evaluations ------------------------------------------------------------------------------

    def record_evaluation(
        self,
        *,
        step: int,
        epoch: float,
        tokens_trained: int,
        val_bits_per_byte: float,
        train_bits_per_byte: float | None,
        holdout_tokens: int,
        seconds: float,
        best: bool,
    ) -> int:
        """Appends one evaluation to the history; returns its id (ids ascend in order). Atomic.

        Raises ValueError, writing nothing, for a negative count, a non-finite or negative
        number, or a non-bool `best` (TypeError for a count that is not an integer). numpy
        scalars are accepted and stored as Python numbers.
        """
        row = {
            "step": _count("step", step),
            "epoch": _number("epoch", epoch),
            "tokens_trained": _count("tokens_trained", tokens_trained),
            "val_bits_per_byte": _number("val_bits_per_byte", val_bits_per_byte),
            "train_bits_per_byte": None if train_bits_per_byte is None
            else _number("train_bits_per_byte", train_bits_per_byte),
            "holdout_tokens": _count("holdout_tokens", holdout_tokens),
            "seconds": _number("seconds", seconds),
        }
        if not isinstance(best, (bool, np.bool_)):
            raise ValueError(f"best ({best!r}) must be a bool")
        with self.database.write() as connection:
            return _insert(connection, evaluations, row | {"best": bool(best)})

    def evaluations(self, since: int = 0, limit: int = 1000) -> list[EvaluationRecord]:
        """Up to `limit` evaluations with id > `since`, oldest first (pass the last id seen)."""
        if limit < 0:
            raise ValueError(f"limit ({limit}) must be >= 0")
        query = sa.select(evaluations).where(evaluations.c.id > since).order_by(evaluations.c.id)
        with self.database.read() as connection:
            rows = connection.execute(query.limit(limit))
            return [EvaluationRecord(**row._mapping) for row in rows]

    def latest_evaluation(self) -> EvaluationRecord | None:
        """The most recent evaluation, or None before the first."""
        return self._last_evaluation(sa.true())

    def best_evaluation(self) -> EvaluationRecord | None:
        """The most recent evaluation recorded with best=True, or None if there is none."""
        return self._last_evaluation(evaluations.c.best)

    def _last_evaluation(self, condition) -> EvaluationRecord | None:
        query = sa.select(evaluations).where(condition).order_by(evaluations.c.id.desc()).limit(1)
        with self.database.read() as connection:
            row = connection.execute(query).first()
        return None if row is None else EvaluationRecord(**row._mapping)

    # --- the whole --------------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        """Counts by status, stream totals and the last checkpoint, read from one snapshot."""
        counts = dict.fromkeys(STATUSES, 0)
        query = sa.select(documents.c.status, sa.func.count()).group_by(documents.c.status)
        latest = sa.select(checkpoints).order_by(checkpoints.c.id.desc()).limit(1)
        ranges = sa.select(withdrawn.c.stream_start, withdrawn.c.stream_end)
        with self.database.read() as connection:
            counts.update({status: int(n) for status, n in connection.execute(query)})
            end = stream_end(connection)
            cursor = _cursor(connection)
            last = connection.execute(latest).first()
            pulled = np.array(connection.execute(ranges).all(), np.int64).reshape(-1, 2)  # (R, 2)
        mask = StreamMask.of(None, pulled[:, 0], pulled[:, 1])
        ahead = np.maximum(mask.ends - np.maximum(mask.starts, cursor.stream_position), 0).sum()
        return QueueStats(
            documents=counts,
            tokens_total=end,
            tokens_queued=end - cursor.stream_position - int(ahead),
            tokens_withdrawn=mask.withdrawn_tokens,
            tokens_trained=cursor.tokens_trained,
            database_bytes=self.database.size_bytes(),
            last_checkpoint=None if last is None else CheckpointRecord(**last._mapping),
        )

    def close(self) -> None:
        """Closes the database this queue was given. Idempotent."""
        self.database.close()

    def __enter__(self) -> "CorpusQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- helpers, each inside the caller's transaction -----------------------------------------------


def _insert(connection: sa.Connection, table: sa.Table, row: dict) -> int:
    return connection.execute(table.insert().values(**row)).inserted_primary_key[0]


def _count(name: str, value) -> int:
    value = operator.index(value)  # TypeError for a float or a str
    if value < 0:
        raise ValueError(f"{name} ({value}) must be >= 0")
    return value


def _number(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} ({value}) must be a finite number >= 0")
    return value


def _get_meta(connection: sa.Connection, key: str) -> str | None:
    return connection.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()


def _check_tokenizer(connection: sa.Connection, identity: str) -> None:
    if not isinstance(identity, str) or not identity:
        raise ValueError(f"tokenizer identity ({identity!r}) must be a non-empty string")
    recorded = _get_meta(connection, "tokenizer")
    if recorded is None:
        connection.execute(meta.insert().values(key="tokenizer", value=identity))
    elif recorded != identity:
        raise TokenizerMismatch(recorded, identity)


def replace_tokens(item: NewDocument, tokens: np.ndarray) -> NewDocument:
    return dataclasses.replace(item, tokens=tokens)


def _in_groups(values, size: int = 500):
    values = sorted(values)
    for i in range(0, len(values), size):
        yield values[i : i + size]


def _max_versions(connection: sa.Connection, paths: set[str]) -> dict[str, int]:
    """The highest version of each path that has rows, in a few IN queries."""
    found: dict[str, int] = {}
    for group in _in_groups(paths):
        query = (sa.select(documents.c.source_path, sa.func.max(documents.c.version))
                 .where(documents.c.source_path.in_(group)).group_by(documents.c.source_path))
        found |= {path: int(version) for path, version in connection.execute(query)}
    return found


def _stream_documents(connection: sa.Connection, hashes: set[str]) -> dict[str, int]:
    """For each hash already in the stream, the id of its first document."""
    found: dict[str, int] = {}
    for group in _in_groups(hashes):
        query = (sa.select(documents.c.content_hash, sa.func.min(documents.c.id))
                 .where(documents.c.content_hash.in_(group), documents.c.status.in_(IN_STREAM))
                 .group_by(documents.c.content_hash))
        found |= {digest: int(first) for digest, first in connection.execute(query)}
    return found


def _insert_many(connection: sa.Connection, rows: list[dict]) -> list[int]:
    """Insert rows (possibly with different keys) and return their ids in order."""
    return [_insert(connection, documents, row) for row in rows]


def _next_version(connection: sa.Connection, source_path: str) -> int:
    query = sa.select(sa.func.max(documents.c.version)).where(
        documents.c.source_path == source_path
    )
    return int(connection.execute(query).scalar() or 0) + 1


def _cursor(connection: sa.Connection, for_update: bool = False) -> Cursor:
    query = sa.select(
        training_cursor.c.stream_position, training_cursor.c.tokens_trained, training_cursor.c.step
    ).where(training_cursor.c.id == 1)
    if for_update:
        query = query.with_for_update()
    return Cursor(*connection.execute(query).one())


def _set_cursor(connection: sa.Connection, *, step: int, stream_position: int, tokens_trained: int) -> None:
    """The cursor at exactly this position, forward or back; documents' statuses follow it."""
    connection.execute(training_cursor.update().where(training_cursor.c.id == 1).values(
        step=step, stream_position=stream_position, tokens_trained=tokens_trained))
    connection.execute(documents.update()
                       .where(documents.c.status == "trained", documents.c.stream_end > stream_position)
                       .values(status="queued"))
    _mark_trained(connection, stream_position)


def _supersede(connection: sa.Connection, source_path: str, new_id: int, keep: set, cursor: int) -> int:
    """Withdraws the tokens at or after `cursor` of the path's earlier versions in the stream
    (not those in `keep`, nor one already superseded); returns how many tokens that was."""
    already = sa.select(withdrawn.c.id).where(withdrawn.c.document_id == documents.c.id,
                                              withdrawn.c.reason == "superseded").exists()
    query = sa.select(documents.c.id, documents.c.stream_start, documents.c.stream_end).where(
        documents.c.source_path == source_path, documents.c.status.in_(IN_STREAM),
        documents.c.id != new_id, documents.c.stream_end > cursor, ~already)
    total = 0
    for document_id, start, end in connection.execute(query).all():
        if document_id in keep:
            continue
        start = max(int(start), cursor)
        connection.execute(withdrawn.insert().values(document_id=document_id, stream_start=start,
                                                     stream_end=int(end), reason="superseded"))
        total += int(end) - start
    return total


def _mark_trained(connection: sa.Connection, stream_position: int) -> None:
    connection.execute(
        documents.update()
        .where(documents.c.status == "queued", documents.c.stream_end <= stream_position)
        .values(status="trained")
    )
