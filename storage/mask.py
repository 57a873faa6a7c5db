"""What training may read: the held-out split together with the withdrawn ranges of the stream.

A StreamMask answers "does this window meet text training must not read?" for the held-out
regions (holdout.py) and for every range in the `withdrawn` table (a rewritten file's untrained
tokens, a forgotten document's text), so the training reads, replay draws and the held-out set
skip both with one test. It is a snapshot: `generation` is the newest withdrawn row's id when
it was read, and a reader that sees a larger generation in the store (CorpusQueue.withdrawal_
generation) asks for a new mask. Pure arithmetic over numpy arrays; CorpusQueue.stream_mask
builds it from the database.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .holdout import HoldoutSplit, free_windows


def merge_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranges [starts[i], ends[i]) merged into disjoint, ascending ones: int64 (R,) each.

    Touching ranges merge too ([0, 5) and [5, 9) become [0, 9)); empty ranges are dropped."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)  # (N,) each
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)  # (N,) the furthest end so far
    new = np.empty(starts.size, bool)  # (N,) range i opens a merged range
    new[0] = True
    new[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new)  # (R,)
    last = np.append(first[1:], starts.size) - 1  # (R,) the last range in each merged one
    return starts[first], reach[last]


@dataclass(frozen=True, eq=False)  # identity equality: arrays do not compare to one bool
class StreamMask:
    """The held-out split and the withdrawn ranges, as of one read of the store."""

    split: HoldoutSplit | None
    starts: np.ndarray  # int64 (R,) withdrawn ranges [starts[i], ends[i]): disjoint, ascending
    ends: np.ndarray  # int64 (R,)
    generation: int = 0  # the newest withdrawn row's id when read; 0: none

    @classmethod
    def of(cls, split: HoldoutSplit | None, starts=(), ends=(), generation: int = 0) -> "StreamMask":
        """A mask over `split` and the ranges [starts[i], ends[i]), merged."""
        merged = merge_ranges(np.asarray(starts, np.int64), np.asarray(ends, np.int64))
        return cls(split, merged[0], merged[1], int(generation))

    @property
    def withdrawn_tokens(self) -> int:
        """Stream tokens inside a withdrawn range."""
        return int((self.ends - self.starts).sum())

    def withdrawn_overlaps(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether each window [s, s + length), s in `starts` (N,), meets a withdrawn range:
        bool (N,). Range [a, b) meets it iff a < s + length and b > s; the first range ending
        after s is found by binary search, since the ranges are disjoint and ascending."""
        starts = np.asarray(starts, dtype=np.int64)  # (N,)
        if self.starts.size == 0:
            return np.zeros(starts.shape, bool)
        i = np.searchsorted(self.ends, starts, side="right")  # (N,) first range with end > s
        inside = i < self.starts.size
        hit = np.zeros(starts.shape, bool)
        hit[inside] = self.starts[i[inside]] < starts[inside] + length
        return hit

    def overlaps(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether each window [s, s + length) meets a held-out region or a withdrawn range."""
        hit = self.withdrawn_overlaps(starts, length)
        if self.split is not None:
            hit |= self.split.overlaps(starts, length)
        return hit

    def training_windows(self, position: int, seq_len: int, available: int, count: int) -> tuple[np.ndarray, int]:
        """As HoldoutSplit.training_windows, skipping withdrawn text too."""
        return free_windows(self.overlaps, position, seq_len, available, count)
