"""What training may read: the held-out split together with the withdrawn ranges of the stream.

A StreamMask answers "does this window meet text training must not read?" for the held-out
regions (holdout.py: the base's, and the per-source blocks the store recorded, `held`) and for
every range in the `withdrawn` table (a rewritten file's untrained tokens, a forgotten
document's text), so the training reads, replay draws and the held-out set skip all of them
with one test. It is a snapshot: `generation` is the newest withdrawn row's id when it was
read, and a reader that sees a larger generation in the store (CorpusQueue.withdrawal_
generation) asks for a new mask; `decided_end` is where the per-source choice had been made
when `held` was read, and a training read stops there (reads.py), since a block beyond it may
still be chosen. Pure arithmetic over numpy arrays; CorpusQueue.stream_mask builds it from the
database, and `with_held` adds CorpusQueue.held_out_blocks to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .holdout import HoldoutSplit, free_windows, region_overlaps


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
    # the per-source blocks beyond the split's base, as recorded: int64 (H,), ascending
    held: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    # training reads stop before this stream offset: beyond it the per-source choice is not made
    # yet. None: no such limit (a split without per-source blocks, or a mask for other readers)
    decided_end: int | None = None

    @classmethod
    def of(cls, split: HoldoutSplit | None, starts=(), ends=(), generation: int = 0, held=(),
           decided_end: int | None = None) -> "StreamMask":
        """A mask over `split` and the ranges [starts[i], ends[i]), merged, and the per-source
        blocks `held`."""
        merged = merge_ranges(np.asarray(starts, np.int64), np.asarray(ends, np.int64))
        return cls(split, merged[0], merged[1], int(generation), np.unique(np.asarray(held, np.int64)), decided_end)

    def with_held(self, held, decided_end: int | None) -> "StreamMask":
        """This mask with the per-source blocks `held` (ascending) and the limit `decided_end`."""
        return replace(self, held=np.unique(np.asarray(held, np.int64)), decided_end=decided_end)

    def held_overlaps(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether each window [s, s + length) meets the region of a per-source block: bool (N,)."""
        if self.split is None or self.held.size == 0:
            return np.zeros(np.shape(starts), bool)
        return region_overlaps(self.held, self.split.block_tokens, starts, length)

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
        """Whether each window [s, s + length) meets a held-out region (of the base or a per-source
        block) or a withdrawn range."""
        hit = self.withdrawn_overlaps(starts, length)
        if self.split is not None:
            hit |= self.split.overlaps(starts, length) | self.held_overlaps(starts, length)
        return hit

    def training_windows(self, position: int, seq_len: int, available: int, count: int) -> tuple[np.ndarray, int]:
        """As HoldoutSplit.training_windows, skipping withdrawn text too."""
        return free_windows(self.overlaps, position, seq_len, available, count)
