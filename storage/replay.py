"""Replay drawn source by source: where each source's text lies in the stream, and a draw of
window starts that gives each source its share of the windows whatever its size.

A uniform draw over the trained stream (holdout.draw_window_starts) gives a source the share of
the windows its size gives it: 4M tokens of plays beside 26M of manuals get 13 % of the replay,
and so about half a percent of each batch, which is what made a model forget them. A
`ReplayMix` draws each window in two steps instead: a source by `weights`, then a start
uniformly over that source's ranges of the stream (the documents it stored, as
CorpusQueue.document_ranges returns them). The caller says what the weights are (the crawler's
policy: crawler/training/batches.py); a window may run past its document into the next, as a
uniform draw's may.

The in-memory copy of the trained text, the token file and the store's sample_replay all draw
with `draw_starts`, so one seed draws the same windows on all three. Pure arithmetic over numpy
arrays, like holdout.py and mask.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .holdout import REPLAY_ROUNDS, WindowMask, draw_window_starts


@dataclass(frozen=True)
class ReplayMix:
    """Window starts drawn source by source.

    Source k (0 <= k < K) holds the stream ranges [starts[i], ends[i]) with source[i] == k, and
    is drawn with probability weights[k] among the sources that have a window start in the draw's
    range; within it, every start is equally likely."""

    starts: np.ndarray  # int64 (R,) ranges of the stream
    ends: np.ndarray  # int64 (R,)
    source: np.ndarray  # int64 (R,) each range's source
    weights: np.ndarray  # float64 (K,) >= 0: each source's share of the windows

    def __post_init__(self):
        starts, ends = np.asarray(self.starts, np.int64), np.asarray(self.ends, np.int64)
        source, weights = np.asarray(self.source, np.int64), np.asarray(self.weights, np.float64)
        if not (starts.shape == ends.shape == source.shape) or starts.ndim != 1 or weights.ndim != 1:
            raise ValueError("starts, ends and source must be 1-d arrays of one length, weights 1-d")
        if source.size and (source.min() < 0 or source.max() >= weights.size):
            raise ValueError(f"a range's source lies outside the {weights.size} weights")
        if (weights < 0).any() or not np.isfinite(weights).all():
            raise ValueError("weights must be finite and >= 0")
        order = np.lexsort((starts, source))  # grouped by source, in stream order within one
        for name, value in (("starts", starts[order]), ("ends", ends[order]), ("source", source[order]),
                            ("weights", weights)):
            object.__setattr__(self, name, value)

    def shares(self, high: int) -> np.ndarray:
        """Each source's probability in a draw of starts below `high`: float64 (K,), summing to 1
        (all 0 when no source has a start below it)."""
        totals = self._totals(high)[1]
        w = np.where(totals > 0, self.weights, 0.0)  # (K,)
        return w / w.sum() if w.sum() > 0 else w

    def draw(self, rng: np.random.Generator, high: int, count: int, seq_len: int,
             holdout: WindowMask | None) -> np.ndarray:
        """Up to `count` starts in [0, high): int64 (n,), in the order drawn. Starts whose window of
        seq_len + 1 tokens meets `holdout` are dropped and drawn again, in up to REPLAY_ROUNDS
        rounds, as draw_window_starts does; n < count only when they are still missing."""
        lengths, totals = self._totals(high)
        w = np.where(totals > 0, self.weights, 0.0)  # (K,)
        if count <= 0 or w.sum() <= 0:
            return np.empty(0, np.int64)
        p = w / w.sum()
        cum = np.cumsum(lengths)  # (R,) starts up to and including range i, in the grouped order
        base = np.concatenate([[0], np.cumsum(totals)[:-1]])  # (K,) starts of the sources before k

        def once(n: int) -> np.ndarray:
            k = rng.choice(p.size, size=n, p=p)  # (n,) each window's source
            g = base[k] + rng.integers(0, np.maximum(totals[k], 1))  # (n,) index over all starts
            i = np.searchsorted(cum, g, side="right")  # (n,) the range holding it
            return self.starts[i] + g - (cum[i] - lengths[i])

        positions = once(count)
        if holdout is not None:
            positions = positions[~holdout.overlaps(positions, seq_len + 1)]
            for _ in range(REPLAY_ROUNDS - 1):
                if len(positions) == count:
                    break
                more = once(count - len(positions))
                positions = np.concatenate([positions, more[~holdout.overlaps(more, seq_len + 1)]])
        return positions.astype(np.int64)

    def _totals(self, high: int) -> tuple[np.ndarray, np.ndarray]:
        """Starts below `high` in each range (R,) and in each source (K,)."""
        lengths = np.maximum(np.minimum(self.ends, high) - self.starts, 0)  # (R,)
        totals = np.bincount(self.source, weights=lengths, minlength=self.weights.size).astype(np.int64)
        return lengths, totals


def draw_starts(rng: np.random.Generator, high: int, count: int, seq_len: int, holdout: WindowMask | None,
                mix: ReplayMix | None = None) -> np.ndarray:
    """Window starts in [0, high): uniformly (draw_window_starts) without `mix`, source by source
    with it. The one draw of every reader of trained text."""
    if mix is None:
        return draw_window_starts(rng, high, count, seq_len, holdout)
    return mix.draw(rng, high, count, seq_len, holdout)
