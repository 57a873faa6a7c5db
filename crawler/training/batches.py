"""What each training step trains on: `Batches` assembles a step's windows from new text and the
text already trained, and `TrainedText` holds the trained part of the stream: in memory up to
`replay_memory_mb`, beyond it in a token file in the state directory (STATE_DIR/stream.tokens,
storage.StreamCache), so drawing a window costs the same at any size.

- New text first. The stream is read in order from the trainer's position into a shuffle
  buffer of up to FRESH_BUFFER windows, which is served in a permuted order (a batch of
  consecutive windows from one place of one file learns less); a share of each batch is drawn
  from text already trained, to limit forgetting: `replay_fraction`, or more while a drop is
  read beside sources read before, each source at its weight (`mixing`, mixing.py).
- Then further passes: with no new text, whole batches are drawn from everything trained so
  far, each source at its weight (uniformly where there is one source).
- Never the held-out split: `storage.HoldoutSplit` reserves a fixed share of fixed-size blocks
  of the stream (recorded in the store on first use, so it never changes); every read here
  passes it, so no held-out token reaches a batch. Beyond the split's base, blocks are held out
  per source (storage/holdout_blocks.py): before it reads text it has not read, `_settle` has
  the store decide the blocks of every stored token, with the sources of `sources`
  (crawler/training/sources.py), never one at or before what a model has read (`floor`, the
  position); the mask carries the blocks and where the choice stops, and no read goes past it.
- Never withdrawn text (a rewritten file's untrained tokens, a forgotten document): every read
  passes a `storage.StreamMask` of the split and the withdrawn ranges. `poll_withdrawals` looks
  for new withdrawals every WITHDRAWAL_POLL_SECONDS, and each refill looks too; a new one drops
  the windows of the shuffle buffer it touches and blanks the in-memory copy of the trained text.

Every draw is seeded from the train seed and a position (the buffer's order from its stream
offset, a step's replay from the step: streams 0 and 1; the cool-down's are stream 2), and the
buffer's unserved windows and the replay credit go into each checkpoint (`state`, `restore`), so
a resumed run takes the same batches as an uninterrupted one.

Not when to evaluate or checkpoint, nor the held-out measure (crawler/training/evaluation.py
reads `mask`, `trained` and `trained_end` from here). Relies on storage's CorpusQueue for the
stream, its windows and its withdrawals, on storage.StreamCache for the token file, and on
storage.draw_starts for the one draw (uniform, or source by source with a storage.ReplayMix)
that the store's own sample_replay makes too.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from storage import HoldoutSplit, ReplayMix, StreamCache, StreamMask, draw_starts

from .mixing import ReplayPlan, SourceMix

FRESH_BUFFER = 512  # windows of new text shuffled together (64k tokens at T=128)
WITHDRAWAL_POLL_SECONDS = 1.0  # how often the loop asks the store for new withdrawals
STREAM_CACHE_FILE = "stream.tokens"  # in the state directory: the trained text beyond replay_memory_mb


class TrainedText:
    """The trained part of the stream, for the windows drawn by replay, further passes and
    cool-downs: in memory up to `limit` tokens; beyond it, in the token file `cache`
    (storage.StreamCache: one pread a window, so memory stays flat however long the stream).
    Drawing from the store costs a query a window, more than a small model's whole step: it is
    the fallback where no file can be kept (no `cache` given, or the file failed:
    `stream_cache_failed`). Draws exactly what CorpusQueue.sample_replay draws (the same
    storage.draw_starts), on all three. Grows by appending as the trained region grows; the
    stream never changes behind it but by withdrawals, which `blank` takes up."""

    def __init__(self, queue, limit: int, vocab_size: int, cache: Path | None = None, log=None):
        self.queue, self.limit, self.vocab_size, self.cache_path, self.log = queue, limit, vocab_size, cache, log
        self._tokens = np.empty(1 << 16, np.uint16 if vocab_size <= 1 << 16 else np.int32)
        self.size = 0  # tokens [0, size) of the stream are held in memory
        self.file: StreamCache | None = None  # beyond `limit`: the token file, once opened
        self._file_failed = False

    @staticmethod
    def limit_of(memory_mb: int, vocab_size: int) -> int:
        """The tokens `memory_mb` megabytes hold at the width a vocabulary of `vocab_size` needs."""
        return memory_mb * 1_000_000 // (2 if vocab_size <= 1 << 16 else 4)

    def sample(self, count: int, seq_len: int, rng: np.random.Generator, end: int, holdout,
               mix: ReplayMix | None = None) -> np.ndarray:
        """`count` windows (int32 (n, seq_len + 1)) drawn from stream tokens [0, end): uniformly,
        or source by source with `mix`."""
        if end > self.limit or self.file is not None:
            return self._sample_beyond(count, seq_len, rng, end, holdout, mix)
        high = end - seq_len  # window starts lie in [0, high)
        if count == 0 or high <= 0:
            return np.empty((0, seq_len + 1), np.int32)
        if end > self.size:
            if end > self._tokens.size:
                grown = np.empty(max(end, min(2 * self._tokens.size, self.limit)), self._tokens.dtype)
                grown[: self.size] = self._tokens[: self.size]
                self._tokens = grown
            # forgotten text reads as 0: the mask keeps every draw away from it
            self._tokens[self.size : end] = self.queue.read_tokens(self.size, end, missing=0)
            self.size = end
        starts = draw_starts(rng, high, count, seq_len, holdout, mix)  # (n,)
        return self._tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)  # (n, T + 1)

    def _sample_beyond(self, count: int, seq_len: int, rng: np.random.Generator, end: int, holdout,
                       mix: ReplayMix | None) -> np.ndarray:
        """sample() from the token file, or from the store where there is none."""
        high = end - seq_len
        file = self._open_file() if count and high > 0 else None
        if file is not None and end > file.size:
            try:
                file.extend(end)
            except OSError as exc:
                file = self._file_gone(exc)
        if file is None:
            return self.queue.sample_replay(count, seq_len, rng, end=end, holdout=holdout, mix=mix)
        starts = draw_starts(rng, high, count, seq_len, holdout, mix)  # (n,)
        try:
            return file.windows(starts, seq_len)
        except OSError as exc:
            self._file_gone(exc)
            return self.queue.read_windows_at(starts, seq_len)  # the windows drawn, from the store

    def _open_file(self) -> StreamCache | None:
        if self.file is None and self.cache_path is not None and not self._file_failed:
            t0 = time.perf_counter()
            try:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                self.file = StreamCache.open(self.cache_path, self.queue, self.vocab_size)
            except OSError as exc:
                return self._file_gone(exc)
            self._tokens, self.size = np.empty(0, self._tokens.dtype), 0  # the file holds them now
            if self.log is not None:
                self.log.info("stream_cache_opened", path=str(self.cache_path), tokens=self.file.size,
                              ms=round((time.perf_counter() - t0) * 1e3, 1))
        return self.file

    def _file_gone(self, exc: OSError) -> None:
        """The file failed (a full disk, a read-only state): draw from the store until the next start."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        self.file, self._file_failed = None, True
        if self.log is not None:
            self.log.warning("stream_cache_failed", path=str(self.cache_path), error=f"{type(exc).__name__}: {exc}")

    def blank(self, mask: StreamMask) -> None:
        """Zero the held tokens inside withdrawn ranges: no copy of forgotten text stays in memory
        or in the token file."""
        for start, end in zip(mask.starts.tolist(), mask.ends.tolist()):
            if start < self.size:
                self._tokens[start : min(end, self.size)] = 0
        if self.file is not None:
            try:
                self.file.blank(mask.starts, mask.ends)
            except OSError as exc:
                self._file_gone(exc)

    def close(self) -> None:
        """Close the token file (its record then counts every token written). Idempotent."""
        if self.file is not None:
            file, self.file = self.file, None
            file.close()


class Batch(NamedTuple):
    """One step's windows, new text first, or None (with the new windows taken, given back)."""

    windows: np.ndarray | None  # (B, T + 1) int32; None: no batch could be built
    fresh: int  # rows of new text


# --------------------------------------------------------------------------------------------------


class Batches:
    """The shuffle buffer of new text, the replay credit and the mask, from one stream position.

    The buffer holds windows read from stream offset `trained_end` up to `position`, served in
    `_order`; `_taken` of them are already trained. Everything before `trained_end` has been
    trained on: replay, further passes and cool-downs draw from there."""

    def __init__(self, queue, split: HoldoutSplit, mask: StreamMask, trained: TrainedText, seq_len: int,
                 seed: int, log, sources=None, floor: int = 0, write=None, mixing: SourceMix | None = None):
        self.queue, self.trained, self.seq_len, self.seed, self.log = queue, trained, seq_len, seed, log
        self.mixing = mixing  # each source's share of replay (mixing.py); None: uniform over the stream
        self.split = split
        # the split, its per-source blocks and where their choice stops, and the withdrawn ranges:
        # what no read may touch
        self.mask = mask
        self.sources = sources  # path -> source name: what the per-source blocks are counted by
        # no block at or before this offset may become held out: the furthest a model that may
        # still be evaluated has read (the best checkpoint's position, if beyond the resumed one)
        self.floor = floor
        self._write = write if write is not None else (lambda part, fn: fn())  # None: a blocked write
        self.position = 0  # the stream offset the next refill reads from
        self._mask_checked_at = -np.inf  # the `now` of the last look for withdrawals
        self._buffer = np.empty((0, 1), np.int32)
        self._starts = np.empty(0, np.int64)  # each buffered window's stream offset
        self._order = np.empty(0, np.int64)
        self._buffer_start = 0
        self._taken = 0
        self._replay_credit = 0.0
        self.replay_share = 0.0  # the share of trained text the last batch was planned with
        self._stream_end = 0  # the stream's length, read at each refill of the shuffle buffer

    @property
    def trained_end(self) -> int:
        """The stream offset before which all text has been trained on."""
        return self._buffer_start

    @property
    def trainable_tokens(self) -> int:
        """The stream's length at the last refill less its held-out and withdrawn tokens."""
        split, end = self.split, self._stream_end
        blocks = len(split.blocks(end)) + int((self.mask.held * split.block_tokens < end).sum())
        return end - blocks * (split.block_tokens + 1) - self.mask.withdrawn_tokens

    # --- a step's batch --------------------------------------------------------------------------

    def assemble(self, B: int, step: int, replay_fraction: float, new_text_required: bool) -> Batch:
        """B windows for `step`: new text, with `replay_fraction` of them (as credit builds up)
        drawn from the trained text, or all of them drawn from it when no new text is left. With
        `new_text_required` (the passes are done) and no new text, no batch is built. A batch
        the trained text cannot complete is not built either, and its new windows are given
        back to the buffer."""
        T = self.seq_len
        rng = np.random.default_rng([self.seed, 1, step])  # replay draws of this step
        can_replay = self._buffer_start > T
        plan = self.plan(replay_fraction)
        self.replay_share = plan.share
        credit = self._replay_credit + plan.share * B
        want_replay = min(int(credit), B) if can_replay else 0
        fresh = self._take_fresh(B - want_replay, step)
        if fresh.shape[0] == 0 and new_text_required:
            return Batch(None, 0)
        shortfall = B - fresh.shape[0]
        # a refill above moved _buffer_start: everything before it is trained
        mix = plan.mix if fresh.shape[0] else plan.passes
        replay = (self.trained.sample(shortfall, T, rng, end=self._buffer_start, holdout=self.mask, mix=mix)
                  if shortfall else np.empty((0, T + 1), np.int32))
        if replay.shape[0] < shortfall:  # not enough data yet to fill a batch: wait for files
            self._taken = max(0, self._taken - fresh.shape[0])
            return Batch(None, int(fresh.shape[0]))
        if fresh.shape[0] and can_replay:  # the credit is the replay share owed, once replay can be had
            self._replay_credit = max(0.0, credit - replay.shape[0])
        windows = np.concatenate([fresh, replay]) if replay.shape[0] else fresh  # (B, T + 1)
        return Batch(windows, int(fresh.shape[0]))

    def plan(self, replay_fraction: float) -> ReplayPlan:
        """How this step draws trained text: each source's share (mixing.py), or uniformly."""
        if self.mixing is None:
            return ReplayPlan(replay_fraction, None, None)
        return self.mixing.plan(self._buffer_start, self.seq_len, replay_fraction)

    def _fill(self, windows: np.ndarray, start: int, starts: np.ndarray, taken: int = 0) -> None:
        self._buffer, self._buffer_start, self._taken, self._starts = windows, start, taken, starts
        rng = np.random.default_rng([self.seed, 0, start])
        self._order = rng.permutation(windows.shape[0])

    def _take_fresh(self, count: int, step: int) -> np.ndarray:
        """Up to `count` windows of new text, refilling the shuffle buffer from the stream."""
        T = self.seq_len
        taken: list[np.ndarray] = []
        have = 0
        while have < count:
            if self._taken >= self._order.size:
                position = self.position
                self._stream_end = self.queue.stream_end()
                if self.mixing is not None:
                    self.mixing.refresh(self._stream_end)
                if self._stream_end - position <= T:  # no complete window of new text: no read
                    self._buffer_start = position  # the buffer is used up: all before is trained
                    break
                self._follow_withdrawals(step)
                self._settle(step)
                windows, end, starts = self.queue.read_windows(position, FRESH_BUFFER, T, holdout=self.mask,
                                                               return_starts=True)
                if windows.shape[0] == 0:
                    self.position = self._buffer_start = end  # past any held-out or withdrawn stretch
                    break
                self._fill(windows, position, starts)
                self.position = end
            n = min(count - have, self._order.size - self._taken)
            taken.append(self._buffer[self._order[self._taken : self._taken + n]])
            self._taken += n
            have += n
        return np.concatenate(taken) if taken else np.empty((0, T + 1), np.int32)

    # --- withdrawals -------------------------------------------------------------------------------

    def poll_withdrawals(self, now: float, step: int) -> None:
        """Take up new withdrawals, at most every WITHDRAWAL_POLL_SECONDS of `now`."""
        if now - self._mask_checked_at >= WITHDRAWAL_POLL_SECONDS:
            self._mask_checked_at = now
            self._follow_withdrawals(step)

    def _follow_withdrawals(self, step: int) -> None:
        """Take up withdrawals made since the mask was read (a rewrite's ingest, `forget`)."""
        generation = self.queue.withdrawal_generation()
        if generation == self.mask.generation:
            return
        before = self.mask.withdrawn_tokens
        self.mask = self.queue.stream_mask(self.split).with_held(self.mask.held, self.mask.decided_end)
        dropped = self._withdraw_buffered()
        self.trained.blank(self.mask)
        self.log.info("withdrawal_applied", generation=generation, withdrawn_tokens=self.mask.withdrawn_tokens,
                      new_tokens=self.mask.withdrawn_tokens - before, buffered_windows_dropped=dropped, step=step)

    # --- the held-out blocks per source --------------------------------------------------------------

    def _settle(self, step: int) -> None:
        """Have the store decide the held-out blocks of the text stored since the last time, before
        any of it is read: the blocks the mask holds and where reads stop move on together. A
        write blocked by a full disk or a read-only state leaves both: new text waits."""
        decided = self.mask.decided_end
        if decided is None or self._stream_end <= decided:
            return
        read_to = max(self.floor, self.position)
        held = self._write("holdout", lambda: self.queue.settle_holdout(self.split, read_to, self.sources))
        if held is None:
            return
        self.mask = self.mask.with_held(held.blocks, held.decided_end)
        if held.added:
            self.log.info("holdout_extended", step=step, added=held.added, blocks=int(held.blocks.size),
                          decided_tokens=held.decided_end, read_to=read_to)

    def _withdraw_buffered(self) -> int:
        """Drop the buffered windows not yet served that meet withdrawn text; returns how many.
        The windows left keep their serving order."""
        pending = self._order[self._taken :]  # (n,) buffer rows still to serve, in order
        if pending.size == 0:
            return 0
        gone = self.mask.overlaps(self._starts[pending], self.seq_len + 1)  # (n,)
        if not gone.any():
            return 0
        self._order = np.concatenate([self._order[: self._taken], pending[~gone]])
        return int(gone.sum())

    # --- a checkpoint's part -----------------------------------------------------------------------

    def state(self) -> dict:
        """The buffer's unserved windows (by stream offset, in serving order) and the replay credit."""
        return {"fresh": {"start": self._buffer_start, "windows": int(self._order.size), "taken": self._taken,
                          "pending": self._starts[self._order[self._taken :]].tolist()},
                "replay_credit": self._replay_credit}

    def restore(self, extra: dict, position: int) -> None:
        """Take up a checkpoint's `state()` (its `extra`), the stream read up to `position`."""
        self._replay_credit = float(extra.get("replay_credit", 0.0))
        self.position = self._buffer_start = position
        self._stream_end = self.queue.stream_end()
        if self.mixing is not None:
            self.mixing.refresh(self._stream_end)
        fresh = extra.get("fresh")
        if fresh and "pending" in fresh:  # the windows not yet served, in serving order
            starts = np.asarray(fresh["pending"], np.int64)  # (n,)
            starts = starts[~self.mask.overlaps(starts, self.seq_len + 1)]  # withdrawn since: dropped
            self._buffer, self._starts = self.queue.read_windows_at(starts, self.seq_len), starts
            self._order, self._taken = np.arange(starts.size), 0
            self._buffer_start = int(fresh["start"])
        elif fresh and int(fresh["windows"]) > int(fresh["taken"]):  # an earlier version's checkpoint
            start, count = int(fresh["start"]), int(fresh["windows"])
            windows, end, starts = self.queue.read_windows(start, count, self.seq_len, holdout=self.split,
                                                           return_starts=True)
            if end == position and windows.shape[0] == count:
                self._fill(windows, start, starts, taken=int(fresh["taken"]))
                self._withdraw_buffered()
