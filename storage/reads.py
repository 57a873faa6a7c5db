"""Token windows out of the stream: training reads in order, replay draws, the held-out set.

The stream is every queued or trained document's tokens in arrival order. Training reads it in
order from a position (read_windows), replay samples windows from the part before the cursor
(sample_replay), and evaluation reads the held-out regions (holdout_set). With a HoldoutSplit
(holdout.py, recorded once in meta["holdout"] by `holdout`), the training reads and the replay
draws skip every window that touches a held-out region, the base's and every per-source block
recorded (holdout_blocks.py), which each read looks up in its own snapshot whatever mask it is
handed; with a StreamMask (mask.py) they, and the held-out set, skip withdrawn text too, and a
training read stops at the mask's `decided_end`. Reads touch only the chunks that overlap the
requested range (stream.py), so memory follows the request, never the corpus. sample_replay
costs a query a window: a reader that draws many windows from a long stream keeps a copy of it
(cache.py, which names the stream with document_identity) and draws the same windows there.

Read only, but for `holdout`'s first call (and its one extension of an earlier release's split):
nothing here stores documents (documents.py), withdraws text (withdrawal.py), decides held-out
blocks (holdout_blocks.py) or moves the cursor (training_state.py). A mixin of CorpusQueue
(queue.py): relies on its `database`, and on stream.py, holdout.py, holdout_blocks.py, mask.py
and rows.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import sqlalchemy as sa

from .db import Database
from .holdout import HoldoutSplit, block_weights, evaluation_windows
from .holdout_blocks import block_paths, recorded_blocks
from .mask import StreamMask
from .models import documents, meta
from .records import HoldoutSet
from .replay import ReplayMix, draw_starts
from .rows import meta_value
from .stream import lock_stream, read_range, stream_end
from .training_state import read_cursor


class StreamReads:
    """CorpusQueue's reads of the stream; each method reads one snapshot unless it says otherwise."""

    database: Database

    # --- the held-out split -----------------------------------------------------------------------

    def holdout(self, default: HoldoutSplit) -> HoldoutSplit:
        """The corpus's held-out split: the one recorded, else `default`, recorded now. Atomic.

        The first call records `default` in meta["holdout"] under the stream lock (as
        set_tokenizer does), so concurrent first calls agree; later calls, after restarts and
        config changes alike, return the recorded split unchanged, whatever `default` says, with
        one exception: a split recorded without per-source or without spread blocks (by a
        release before them) while `default` has them is extended once with `default`'s
        source_blocks and extra_blocks, or spread_blocks. Its other fields, and so its base
        blocks, stay as recorded; which blocks beyond the base become held out is
        holdout_blocks.py's to decide, never one a model has read. Raises ConfigError for an
        invalid `default` (nothing is written) or a malformed recorded split. Only a call that records writes (and may block up to
        busy_timeout_ms for another writer).
        """
        default.validate()
        with self.database.read() as connection:
            recorded = meta_value(connection, "holdout")
        if recorded is not None and not _extends(HoldoutSplit.from_json(recorded), default):
            return HoldoutSplit.from_json(recorded)
        with self.database.write() as connection:
            lock_stream(connection)
            recorded = meta_value(connection, "holdout")
            if recorded is None:
                connection.execute(meta.insert().values(key="holdout", value=default.to_json()))
                return default
            split = HoldoutSplit.from_json(recorded)
            if _extends(split, default):
                split = _extended(split, default)
                connection.execute(meta.update().where(meta.c.key == "holdout").values(value=split.to_json()))
            return split

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

    def document_identity(self, offset: int) -> str | None:
        """Names the document holding stream offset `offset` apart from any other document of any
        store: "ID:STORED_AT:HASH" (its id, when it was stored, its content hash); None where no
        document holds it. The one at offset 0 names the stream itself: another corpus (a reset,
        another database) has another, so a copy of the stream kept outside the store (cache.py)
        can tell it is not this one's. One read, which scans the documents table."""
        query = sa.select(documents.c.id, documents.c.created_at, documents.c.content_hash).where(
            documents.c.stream_start <= offset, documents.c.stream_end > offset).limit(1)
        with self.database.read() as connection:
            row = connection.execute(query).first()
        return None if row is None else f"{row.id}:{row.created_at.isoformat()}:{row.content_hash}"

    def read_windows(
        self, position: int, count: int, seq_len: int, holdout: HoldoutSplit | StreamMask | None = None,
        return_starts: bool = False,
    ) -> tuple[np.ndarray, int] | tuple[np.ndarray, int, np.ndarray]:
        """Up to `count` windows of seq_len + 1 consecutive stream tokens, from `position` on.

        Window j covers [position + j*seq_len, position + j*seq_len + seq_len + 1), so consecutive
        windows share one token (the last target of one is the first input of the next). Only
        complete windows: n = 0 while the stream is too short. Returns (int32 (n, seq_len + 1),
        position + n*seq_len). One snapshot; reads only the chunks overlapping the range.

        With `holdout`, windows touching a held-out region (the base's, or a per-source block
        recorded by the time of this snapshot) are skipped (never read): it examines windows in
        order until `count` are taken or no complete window is left, and returns (the windows
        taken, position + examined*seq_len), skipped windows counted as examined. Tokens are read
        one run of adjacent taken windows at a time. With a StreamMask, windows touching
        withdrawn text are skipped the same way, and no window reaches past its `decided_end`
        (text whose blocks are not decided yet counts as not stored). With `return_starts`, a
        third value: each window's stream offset, int64 (n,).
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
            mask = _with_held(connection, holdout)
            available = max(0, (_readable_end(connection, mask) - position - 1) // seq_len)
            taken, examined = mask.training_windows(position, seq_len, available, count)
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
        mix: ReplayMix | None = None,
    ) -> np.ndarray:
        """`count` windows of the trained stream: int32 (count, seq_len + 1), for replay.

        Window i starts at rng.integers(0, end - seq_len, size=count)[i], drawn uniformly, so
        every window ends at or before `end`: the committed cursor by default, or the trainer's
        own position, which runs ahead of the cursor between checkpoints. While fewer than
        seq_len + 1 tokens lie before `end` it returns an empty (0, seq_len + 1) array and draws
        nothing from `rng`. One small query per window, all in one snapshot.

        With `holdout`, windows touching a held-out region (the base's, or a recorded per-source
        block) are dropped and the missing ones redrawn the same way, in up to REPLAY_ROUNDS
        rounds (the first round draws what the call without `holdout` draws); if windows are
        still missing it returns fewer than `count`.

        With `mix`, starts are drawn source by source instead (replay.ReplayMix), as the
        in-memory copy and the token file draw them with the same generator.
        """
        if count < 0 or seq_len < 1:
            raise ValueError(f"count ({count}) must be >= 0 and seq_len ({seq_len}) >= 1")
        with self.database.read() as connection:
            limit = read_cursor(connection).stream_position if end is None else min(end, stream_end(connection))
            high = limit - seq_len  # window starts lie in [0, high)
            if count == 0 or high <= 0:
                return np.empty((0, seq_len + 1), np.int32)
            positions = draw_starts(rng, high, count, seq_len, _with_held(connection, holdout), mix)  # (n,)
            out = np.empty((len(positions), seq_len + 1), np.int32)  # (count, T + 1)
            for i, start in enumerate(positions.tolist()):
                out[i] = read_range(connection, start, start + seq_len + 1)
        return out

    def document_ranges(self, since: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
        """The stored documents whose text starts at or after stream offset `since`, in stream
        order: (source paths, starts int64 (n,), ends int64 (n,)), for the ranges a ReplayMix
        draws from. A document keeps its range when its text is withdrawn (the mask skips it).
        One query."""
        query = (sa.select(documents.c.source_path, documents.c.stream_start, documents.c.stream_end)
                 .where(documents.c.stream_start.is_not(None), documents.c.stream_start >= since,
                        documents.c.stream_end > documents.c.stream_start)
                 .order_by(documents.c.stream_start))
        with self.database.read() as connection:
            rows = connection.execute(query).all()
        return ([r[0] for r in rows], np.array([r[1] for r in rows], np.int64),
                np.array([r[2] for r in rows], np.int64))

    def holdout_set(self, holdout: HoldoutSplit | StreamMask, seq_len: int) -> HoldoutSet:
        """The evaluation windows of every complete held-out block, in stream order.

        Blocks are holdout.complete_blocks(stream end) and the complete per-source blocks
        recorded, less (with a StreamMask) those whose region meets withdrawn text; each region
        [k*S, k*S + S + 1) is cut as holdout.evaluation_windows says (n = S // seq_len windows of
        seq_len + 1 tokens, plus a tail window of r + 1 tokens when r = S % seq_len > 0), so every
        target of every region is scored exactly once; HoldoutSet.paths names each block's
        document, for figures per source, and with a split that has spread blocks,
        HoldoutSet.weights says how much of the stream each stands for (holdout.block_weights).
        One snapshot, one read per block (max_blocks + extra_blocks of them at most, and
        spread_blocks more for each doubling of the stream). HoldoutSet.key names the blocks: a withdrawal can
        change the set without changing its size.
        """
        if seq_len < 1:
            raise ValueError(f"seq_len ({seq_len}) must be >= 1")
        mask = holdout if isinstance(holdout, StreamMask) else None
        split = holdout.split if mask is not None else holdout
        S = split.validate().block_tokens
        with self.database.read() as connection:
            end = stream_end(connection)
            held = recorded_blocks(connection, split)  # (H,) per-source blocks beyond the base
            ks = np.union1d(split.complete_blocks(end), held[held * S + S + 1 <= end])  # (B,) ascending
            if mask is not None:
                ks = ks[~mask.withdrawn_overlaps(ks * S, S + 1)]
            regions = np.empty((len(ks), S + 1), np.int32)  # (B, S + 1)
            for i, k in enumerate(ks.tolist()):
                regions[i] = read_range(connection, k * S, k * S + S + 1)
            paths = block_paths(connection, ks, S)
        windows, tail = evaluation_windows(regions, seq_len)
        key = hashlib.sha256(np.ascontiguousarray(ks, "<i8").tobytes()).hexdigest()[:16]
        return HoldoutSet(blocks=len(ks), tokens=len(ks) * S, windows=windows, tail=tail, key=f"{len(ks)}-{key}",
                          paths=tuple(paths), weights=block_weights(ks) if split.spread else None)


def _extends(recorded: HoldoutSplit, default: HoldoutSplit) -> bool:
    """Whether `holdout` extends the recorded split with `default`'s per-source or spread blocks:
    a split of a release before them, and a default that has them."""
    return _extended(recorded, default) != recorded


def _extended(recorded: HoldoutSplit, default: HoldoutSplit) -> HoldoutSplit:
    """The recorded split with the blocks beyond the base that `default` has and it has not."""
    split = recorded
    if split.source_blocks == split.extra_blocks == 0 and default.per_source:
        split = replace(split, source_blocks=default.source_blocks, extra_blocks=default.extra_blocks)
    if not split.spread and default.spread:
        split = replace(split, spread_blocks=default.spread_blocks)
    return split


def _with_held(connection: sa.Connection, holdout: HoldoutSplit | StreamMask | None):
    """`holdout` with every per-source block recorded as of this snapshot (a mask handed in may be
    older than the store, or built without them): a StreamMask when there are any."""
    if holdout is None:
        return None
    split = holdout.split if isinstance(holdout, StreamMask) else holdout
    if split is None:
        return holdout
    held = recorded_blocks(connection, split)  # (H,)
    if isinstance(holdout, StreamMask):
        return holdout if held.size == 0 else holdout.with_held(np.union1d(holdout.held, held), holdout.decided_end)
    return holdout if held.size == 0 else StreamMask.of(holdout, held=held)


def _readable_end(connection: sa.Connection, holdout: HoldoutSplit | StreamMask) -> int:
    """Where a training read must stop: the stream's end, or a mask's decided_end before it."""
    end = stream_end(connection)
    decided = holdout.decided_end if isinstance(holdout, StreamMask) else None
    return end if decided is None else min(end, decided)
