"""Each source's share of the batches, whatever its size: what keeps a folder of plays learned
once a desk of manuals six times its size is dropped beside it.

A source is a top-level folder of the inbox (sources.py). Drawn uniformly over the stream, as
before, replay gives each source the share of the windows its size gives it, so the plays got
half a percent of each batch once the desk was read and the model forgot them (docs/
BENCHMARKS.md, issue 25's forgetting run). Here source k weighs w_k = tokens_k ** balance
(`[daemon] replay_balance`), tokens_k the tokens it has stored, normalised to sum to 1; balance 1
is the old uniform draw, 0 gives every source the same share, 0.5 (the default) lies between, as
multilingual models sample their languages.

- While new text is read: the sources with text not yet read (stored beyond the trained part
  of the stream) take their shares from the new text, so 1 - (their weights' sum) of each batch
  is replay (at least `replay_fraction`), drawn from the other sources by their weights (and
  from the sources being read only for the floor's excess). The plays beside the desk at 0.5:
  w = sqrt(4.1M) : sqrt(26.5M), so 28 % of each batch replays the plays while the desk is read
  (0.7 % before). One source alone, or a whole desk of folders dropped at once before anything
  else: `replay_fraction` as before, and the new text is read at full speed.
- Further passes and cool-downs: whole batches drawn by the weights of all sources.
- The overall held-out figure, which chooses the best model, weighs each source's figure by its
  weight too (`shares_of`; crawler/training/evaluation.py): the model is judged on the mix it is
  trained for, not on the sizes.

The ranges each source holds come from the store's documents (CorpusQueue.document_ranges), read
once at the start and then only the documents stored since; the draw itself is storage.ReplayMix,
which the in-memory copy, the token file and the store's sample_replay share. Where at most one
source has trained text, or balance is 1, the draw is the uniform one, window for window: a
single folder trains as it always did.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from storage import ReplayMix


class ReplayPlan(NamedTuple):
    """How a step draws from trained text."""

    share: float  # the part of a batch drawn from trained text while new text lasts
    mix: ReplayMix | None  # how those windows are drawn; None: uniformly over the trained text
    passes: ReplayMix | None  # how a batch of trained text alone is drawn (no new text, a cool-down)


class SourceMix:
    """The stream ranges of every source, and the plan each step draws by."""

    def __init__(self, queue, source_of, balance: float, log=None):
        self.queue, self.source_of, self.balance, self.log = queue, source_of, balance, log
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self._starts = np.empty(0, np.int64)  # (R,) each stored document's range, in stream order
        self._ends = np.empty(0, np.int64)
        self._source = np.empty(0, np.int64)  # (R,) its source's index in `names`
        self._known_end = 0  # documents starting before this offset have been read
        self._checked_end = 0  # the stream's length at the last look: no new document below it
        self._first = np.empty(0, np.int64)  # (K,) where each source's stored text begins
        self._tokens = np.empty(0, np.int64)  # (K,) the tokens it has stored
        self._weights = np.empty(0, np.float64)  # (K,) its weight
        self._plans: dict[bytes, tuple[ReplayMix, ReplayMix]] = {}  # by the sources being read
        self._logged = np.zeros(0)  # the weights the last replay_mix event gave

    def refresh(self, stream_end: int) -> None:
        """Read the ranges of the documents stored since the last call (none when the stream has not grown)."""
        if stream_end <= max(self._known_end, self._checked_end):
            return
        paths, starts, ends = self.queue.document_ranges(since=self._known_end)
        self._checked_end = stream_end
        if not paths:
            return
        before = len(self.names)
        source = np.empty(len(paths), np.int64)
        for i, path in enumerate(paths):
            name = self.source_of(path)
            if name not in self._index:
                self._index[name] = len(self.names)
                self.names.append(name)
            source[i] = self._index[name]
        self._starts = np.concatenate([self._starts, starts])
        self._ends = np.concatenate([self._ends, ends])
        self._source = np.concatenate([self._source, source])
        self._known_end = int(ends.max())
        K = len(self.names)
        self._first = np.full(K, np.iinfo(np.int64).max)
        np.minimum.at(self._first, self._source, self._starts)
        self._tokens = np.bincount(self._source, weights=self._ends - self._starts, minlength=K).astype(np.int64)
        w = np.where(self._tokens > 0, np.power(np.maximum(self._tokens, 1).astype(np.float64), self.balance), 0.0)
        self._weights = w / w.sum() if w.sum() > 0 else w
        self._plans.clear()
        logged = self._logged
        if self.log is not None and len(self.names) > 1 and (
                len(self.names) > before or (logged.size and np.abs(self._weights[: logged.size] - logged).max() > 0.05)):
            self._logged = self._weights.copy()
            self.log.info("replay_mix", balance=self.balance,
                          shares={n: round(float(w), 4) for n, w in zip(self.names, self._weights)})

    def weights(self) -> np.ndarray:
        """Each source's weight, tokens ** balance normalised: float64 (K,)."""
        return self._weights

    def shares(self) -> dict[str, float] | None:
        """Each source's weight by name, for health.json and `status`; None for fewer than two."""
        if self.balance >= 1.0 or len(self.names) < 2:
            return None
        return {n: round(float(w), 4) for n, w in zip(self.names, self._weights)}

    def shares_of(self, names) -> dict[str, float] | None:
        """The weights of these sources, normalised over them: what the overall held-out figure
        weighs each source's figure by, so the best model is judged on the mix it is trained for.
        None where that is the figure by bytes anyway or cannot be had: balance 1, fewer than two
        of them, or one not known here."""
        names = list(names)
        if self.balance >= 1.0 or len(names) < 2 or any(n not in self._index for n in names):
            return None
        w = np.array([self._weights[self._index[n]] for n in names])  # (n,)
        return dict(zip(names, (w / w.sum()).tolist())) if w.sum() > 0 else None

    def reading(self, trained_end: int, seq_len: int) -> np.ndarray:
        """Which sources are being read: bool (K,), those with more than 16 windows of text
        beyond `trained_end` (what a read leaves behind, a held-out block or a last part window,
        is not text to read)."""
        i = int(np.searchsorted(self._ends, trained_end, side="right"))  # ranges ending after it
        unread = np.maximum(self._ends[i:] - np.maximum(self._starts[i:], trained_end), 0)  # (R - i,)
        left = np.bincount(self._source[i:], weights=unread, minlength=len(self.names))  # (K,)
        return left > 16 * (seq_len + 1)

    def plan(self, trained_end: int, seq_len: int, replay_fraction: float) -> ReplayPlan:
        """The plan for a step with the stream before `trained_end` trained: the sources with
        text beyond it are being read."""
        if self.balance >= 1.0 or not self.names:
            return ReplayPlan(replay_fraction, None, None)
        w = self._weights
        reading = self.reading(trained_end, seq_len)  # (K,)
        share = max(replay_fraction, 1.0 - float(w[reading].sum())) if reading.any() else replay_fraction
        if int((self._first < trained_end - seq_len).sum()) <= 1:  # one source to draw from: the uniform draw is it
            return ReplayPlan(share, None, None)
        key = reading.tobytes()
        if key not in self._plans:
            passes = ReplayMix(self._starts, self._ends, self._source, w)
            if not reading.any():
                self._plans[key] = passes, passes
            else:
                excess = max(0.0, replay_fraction - (1.0 - float(w[reading].sum())))  # the floor's, if any
                mixed = np.where(reading, w * excess / max(float(w[reading].sum()), 1e-12), w)
                self._plans[key] = ReplayMix(self._starts, self._ends, self._source, mixed), passes
        mix, passes = self._plans[key]
        return ReplayPlan(share, mix, passes)
