"""The held-out split of the token stream: which stream offsets training never sees.

The stream is cut into blocks of S = `block_tokens` tokens, block k covering [k*S, (k+1)*S).
The LATTICE is the blocks k >= offset with (k - offset) % every == 0; lattice block k has rank
(k - offset) // every. Two rules hold lattice blocks out:

- the base: every lattice block of rank < max_blocks, whatever its text (the first max_blocks
  * every blocks of the stream, about 2.6M tokens by default). Pure arithmetic: `overlaps`,
  `blocks` and `complete_blocks` here.
- per source, beyond the base (source_blocks > 0): a lattice block of rank >= max_blocks is held
  out while the source its first token belongs to has fewer than `source_blocks` held-out
  blocks (base ones counted) and fewer than `extra_blocks` are held out beyond the base, all
  sources together (`choose_source_blocks`). Which blocks that makes depends on the documents,
  so the store decides it once per block, in stream order, and records it (holdout_blocks.py);
  only a block no model has read may be chosen, so a figure on it is one on unseen text.
- spread over the whole stream (spread_blocks > 0): beyond the base, the lattice is cut into
  tiers that double, tier j holding ranks [max_blocks * 2**j, max_blocks * 2**(j+1)), and
  `spread_blocks` evenly spaced ranks of each tier are held out (`on_spread`), so the held-out
  set samples all the text, however much arrives, while it grows only with the logarithm of
  the stream. A rank's membership is arithmetic, but a block is held out by it only where no
  model has read it, so the store records this choice too, with the per-source one. Each block
  then stands for the stretch of stream nearest to it (`block_weights`): the overall figure is
  one over the whole stream, not over its first 2.6M tokens where the base sits.

Block k's held-out REGION is the S + 1 tokens [k*S, k*S + S + 1): the S targets k*S + 1 ..
k*S + S, predicted from inputs that start at k*S. No training window may contain any token of a
region, as input or as target, so an evaluation over the regions scores text the model has
never read.

Invariant: a block once held out stays held out, and a block once decided against is never held
out later: the base depends only on stream offsets, the per-source choice is recorded when made,
and the stream is append-only. The evaluation set only grows (until the caps), by whole blocks.

Pure arithmetic over numpy arrays: knows nothing of the database (reads.py reads the tokens,
holdout_blocks.py records the per-source choice) nor of the engine. Every function here is exact
for any window length and any start >= 0.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Protocol

import numpy as np

from .config import ConfigError


class WindowMask(Protocol):
    """What says which windows meet text training must not read: a HoldoutSplit, or a
    StreamMask (mask.py, which builds on this module and so is not imported here)."""

    def overlaps(self, starts: np.ndarray, length: int) -> np.ndarray: ...


@dataclass(frozen=True)
class HoldoutSplit:
    # S: the stream is cut into blocks [k*S, (k+1)*S)
    block_tokens: int = 512
    # one block in `every` is held out (5 %)
    every: int = 20
    # index of the first held-out block: a one-file corpus of ~5.6k tokens already has one
    offset: int = 10
    # the base: the first this many lattice blocks (131,072 tokens), whatever their source
    max_blocks: int = 256
    # beyond the base, a source's lattice blocks are held out until it has this many (16,384
    # tokens: a figure per source); 0, with extra_blocks 0: no blocks beyond the base, the split
    # of releases before per-source blocks
    source_blocks: int = 32
    # ... and until this many are held out beyond the base, all sources together, so evaluation
    # stays bounded however many sources arrive: at most max_blocks + extra_blocks blocks in all
    # (262,144 tokens, twice the base)
    extra_blocks: int = 256
    # ... and this many lattice blocks of each doubling of the stream beyond the base (64: none
    # within the base's first 2.6M tokens, 192 by 21M, 512 by 671M); 0: none, the split of
    # releases before spread blocks
    spread_blocks: int = 64

    def validate(self) -> "HoldoutSplit":
        """Returns self; raises ConfigError naming the field and its allowed range."""
        for field in fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name in ("offset", "source_blocks", "extra_blocks", "spread_blocks") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"holdout {field.name} ({value!r}) must be an integer >= {low}")
        return self

    @property
    def per_source(self) -> bool:
        """Whether blocks beyond the base may be held out (per source)."""
        return self.source_blocks > 0 and self.extra_blocks > 0

    @property
    def spread(self) -> bool:
        """Whether blocks spread over the whole stream are held out beyond the base."""
        return self.spread_blocks > 0

    @property
    def beyond_base(self) -> bool:
        """Whether the store decides blocks beyond the base (per source or spread)."""
        return self.per_source or self.spread

    def to_json(self) -> str:
        """The fields as a JSON object with sorted keys: the form meta["holdout"] holds. Fields
        that are 0 and that an earlier release did not have are left out: a split without spread
        blocks is written as the six keys of the release before them, one without per-source
        blocks either as the four keys of the releases before those."""
        values = asdict(self)
        if self.spread_blocks == 0:
            del values["spread_blocks"]
            if self.source_blocks == 0 and self.extra_blocks == 0:
                del values["source_blocks"], values["extra_blocks"]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HoldoutSplit":
        """The split to_json wrote: its seven fields, the six of a release before spread blocks
        (read with spread_blocks = 0), or the four of a release before per-source blocks (read
        with source_blocks = extra_blocks = spread_blocks = 0): exactly the blocks it held out.
        ConfigError for anything else, or a field out of its range."""
        try:
            values = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"holdout split ({text!r}) is not JSON: {exc}") from None
        names = {field.name for field in fields(cls)}
        before_spread = names - {"spread_blocks"}
        earlier = before_spread - {"source_blocks", "extra_blocks"}
        if not isinstance(values, dict) or set(values) not in (names, before_spread, earlier):
            raise ConfigError(
                f"holdout split ({text!r}) must be a JSON object with exactly the keys "
                f"{', '.join(sorted(names))} (or, as written by earlier releases, {', '.join(sorted(before_spread))}, "
                f"or {', '.join(sorted(earlier))})"
            )
        values = {"source_blocks": 0, "extra_blocks": 0, "spread_blocks": 0} | values
        return cls(**values).validate()

    # --- the lattice and the per-source rule --------------------------------------------------------

    def lattice(self, first: int, last: int) -> np.ndarray:
        """Lattice blocks k in [first, last], base and beyond alike: int64, ascending."""
        first = max(first, self.offset)
        if last < first:
            return np.empty(0, np.int64)
        i0 = (first - self.offset + self.every - 1) // self.every  # rank of the first >= first
        i1 = (last - self.offset) // self.every
        return self.offset + self.every * np.arange(i0, i1 + 1, dtype=np.int64)  # (n,)

    def in_base(self, blocks: np.ndarray) -> np.ndarray:
        """Whether each lattice block is one of the base's (rank < max_blocks): bool (n,)."""
        return (np.asarray(blocks, np.int64) - self.offset) // self.every < self.max_blocks

    def on_spread(self, blocks: np.ndarray) -> np.ndarray:
        """Whether each lattice block beyond the base has a spread rank: bool (n,). Tier j holds
        ranks [t, 2t), t = max_blocks * 2**j; its ranks t + i * step are spread ones, step =
        max(1, t // spread_blocks). False everywhere for a split without spread blocks."""
        rank = (np.asarray(blocks, np.int64) - self.offset) // self.every  # (n,)
        if not self.spread:
            return np.zeros(rank.shape, bool)
        beyond = rank >= self.max_blocks
        tier = np.zeros(rank.shape, np.int64)  # (n,) j, where t = max_blocks << j <= rank < 2t
        scaled = np.where(beyond, rank // self.max_blocks, 1)  # (n,) in [2**j, 2**(j+1))
        while (moved := scaled > 1).any():
            tier += moved
            scaled >>= 1
        first = self.max_blocks << tier  # (n,) t
        step = np.maximum(first // self.spread_blocks, 1)  # (n,)
        return beyond & ((rank - first) % step == 0)

    # --- which blocks of the base -------------------------------------------------------------------

    def _first_blocks(self, last: int) -> np.ndarray:
        """Base blocks k <= last, ascending, int64."""
        if last < self.offset:
            return np.empty(0, np.int64)
        n = min(self.max_blocks, (last - self.offset) // self.every + 1)
        return self.offset + self.every * np.arange(n, dtype=np.int64)  # (n,)

    def blocks(self, end: int) -> np.ndarray:
        """Base block indices k whose region starts before `end` (k*S < end): int64, ascending.

        Those that can touch a stream of `end` tokens. blocks(a) is a prefix of blocks(b), a <= b.
        The per-source blocks beyond the base are the store's (StreamMask.held).
        """
        return self._first_blocks((end - 1) // self.block_tokens)

    def complete_blocks(self, end: int) -> np.ndarray:
        """Base blocks whose whole region lies in a stream of `end` tokens: the base's part of
        the evaluation set.

        k with k*S + S + 1 <= end, int64, ascending; a prefix of complete_blocks(b), end <= b.
        """
        return self._first_blocks((end - self.block_tokens - 1) // self.block_tokens)

    # --- which windows ----------------------------------------------------------------------------

    def overlaps(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether each window [s, s + length), s in `starts` (N,), meets a base block's region:
        bool (N,). (A StreamMask adds the per-source blocks.)

        Exact for any length >= 1 and any s >= 0. Region k meets [s, e) iff k*S < e and
        k*S + S + 1 > s, i.e. k in [lo, hi] with lo = floor((s - S - 1) / S) + 1 and
        hi = floor((e - 1) / S); the first held-out k >= lo is found arithmetically.
        Raises ValueError for length < 1 or a negative start.
        """
        starts = np.asarray(starts, dtype=np.int64)  # (N,)
        if length < 1:
            raise ValueError(f"window length ({length}) must be >= 1")
        if starts.size and starts.min() < 0:
            raise ValueError(f"window starts must be >= 0, got {int(starts.min())}")
        S, E, O = self.block_tokens, self.every, self.offset
        lo = np.maximum((starts - S - 1) // S + 1, O)  # (N,) first block that could meet it
        hi = (starts + length - 1) // S  # (N,) last block that could meet it
        i = (lo - O + E - 1) // E  # (N,) rank of the first held-out block >= lo
        return (i < self.max_blocks) & (O + i * E <= hi)

    def training_windows(
        self, position: int, seq_len: int, available: int, count: int
    ) -> tuple[np.ndarray, int]:
        """Which windows at position + j*seq_len (seq_len + 1 tokens, j < available) to train on:
        free_windows with this split's overlaps."""
        return free_windows(self.overlaps, position, seq_len, available, count)


def choose_source_blocks(split: HoldoutSplit, sources: list[str | None], counts: dict[str, int],
                         extra: int, spread: np.ndarray | None = None) -> np.ndarray:
    """The rule for lattice blocks beyond the base, taken in stream order: bool (n,).

    `sources[i]` names the source of the i-th block's first token, or is None for a block that
    may not be held out (a model has read it, or its text is withdrawn). Block i is held out
    iff it may be and either `spread[i]` (a spread rank: split.on_spread) or its source has
    fewer than split.source_blocks held-out blocks so far and fewer than split.extra_blocks are
    held out by this per-source rule beyond the base so far, counting the blocks before it that
    this call holds out. `counts` (held-out blocks per source, base and spread ones included)
    and `extra` (held out by the per-source rule beyond the base) are as recorded before the
    first block; `counts` is updated.
    """
    held = np.zeros(len(sources), bool)  # (n,)
    spread = np.zeros(len(sources), bool) if spread is None else np.asarray(spread, bool)  # (n,)
    for i, source in enumerate(sources):
        if source is None:
            continue
        if not spread[i]:
            if not split.per_source or extra >= split.extra_blocks or counts.get(source, 0) >= split.source_blocks:
                continue
            extra += 1
        held[i] = True
        counts[source] = counts.get(source, 0) + 1
    return held


def block_weights(blocks: np.ndarray) -> np.ndarray:
    """How much of the stream each held-out block stands for, in blocks: float64 (B,).

    Block i stands for the stretch nearer to it than to any other: half the gap to each
    neighbour, the first from the stream's start, the last as far past it as half the gap
    before it (so the weights depend only on the blocks, not on where the stream ends). On an
    even lattice every block weighs the same; a spread block of a sparse tier weighs as much as
    the stretch it samples. Ones for fewer than two blocks."""
    blocks = np.asarray(blocks, np.float64)  # (B,) ascending
    if blocks.size < 2:
        return np.ones(blocks.size)
    gaps = np.diff(blocks)  # (B - 1,)
    left = np.concatenate([[2 * blocks[0]], gaps]) / 2  # (B,) to the midpoint before (the start, first)
    right = np.concatenate([gaps, [gaps[-1]]]) / 2  # (B,) to the midpoint after
    return np.maximum(left + right, 1.0)


def region_overlaps(blocks: np.ndarray, block_tokens: int, starts: np.ndarray, length: int) -> np.ndarray:
    """Whether each window [s, s + length), s in `starts` (N,), meets the region [k*S, k*S + S + 1)
    of a block k in `blocks` (ascending): bool (N,). The first region ending after s is found by
    binary search (starts and ends of the regions both ascend), then compared with s + length."""
    starts = np.asarray(starts, np.int64)  # (N,)
    blocks = np.asarray(blocks, np.int64)  # (H,)
    if blocks.size == 0:
        return np.zeros(starts.shape, bool)
    first = blocks * block_tokens  # (H,) each region's first token
    i = np.searchsorted(first + block_tokens + 1, starts, side="right")  # (N,) first region ending after s
    inside = i < blocks.size
    hit = np.zeros(starts.shape, bool)
    hit[inside] = first[i[inside]] < starts[inside] + length
    return hit


def free_windows(overlaps, position: int, seq_len: int, available: int, count: int) -> tuple[np.ndarray, int]:
    """Which windows at position + j*seq_len (seq_len + 1 tokens, j < available) to train on,
    given `overlaps(starts, length)` (bool (N,): the window meets text training must not read).

    Returns (j of the first `count` windows that meet none, int64 ascending; windows examined).
    Examined is one past the last j taken when `count` were found, else `available`: every
    window it passes over is one that meets such text, and stays so. Scans in doubling batches,
    so a long excluded stretch costs a few vectorised rounds.
    """
    if count <= 0 or available <= 0:
        return np.empty(0, np.int64), 0
    taken: list[np.ndarray] = []
    found, examined, batch = 0, 0, max(count, 64)
    while found < count and examined < available:
        j = np.arange(examined, min(available, examined + batch), dtype=np.int64)  # (batch,)
        free = j[~overlaps(position + j * seq_len, seq_len + 1)]
        free = free[: count - found]
        taken.append(free)
        found += len(free)
        examined = int(free[-1]) + 1 if found == count else int(j[-1]) + 1
        batch *= 2
    return np.concatenate(taken), examined


REPLAY_ROUNDS = 32  # draw_window_starts redraws windows that touch held-out text at most this often


def draw_window_starts(rng: np.random.Generator, high: int, count: int, seq_len: int,
                       holdout: WindowMask | None) -> np.ndarray:
    """Up to `count` window starts drawn uniformly from [0, high): int64 (n,), in the order drawn.

    The first round is rng.integers(0, high, size=count); with `holdout`, starts whose window of
    seq_len + 1 tokens touches a held-out region (with a StreamMask: or withdrawn text) are
    dropped and the missing ones redrawn the same way, in up to REPLAY_ROUNDS rounds in all;
    n < count only when they are still missing.
    Callers: CorpusQueue.sample_replay, and any in-memory copy of the stream that must draw
    exactly what the store would.
    """
    positions = rng.integers(0, high, size=count)  # (count,)
    if holdout is not None:
        positions = positions[~holdout.overlaps(positions, seq_len + 1)]
        for _ in range(REPLAY_ROUNDS - 1):
            if len(positions) == count:
                break
            more = rng.integers(0, high, size=count - len(positions))  # (missing,)
            positions = np.concatenate([positions, more[~holdout.overlaps(more, seq_len + 1)]])
    return positions


def evaluation_windows(regions: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts regions (B, S + 1) into training-shaped windows: (windows, tail).

    Each region gives n = S // seq_len windows of seq_len + 1 tokens at j*seq_len (consecutive
    windows share one token), windows (B*n, seq_len + 1) in region order; when r = S % seq_len > 0
    one tail window of the last r + 1 tokens [n*seq_len, S + 1), tail (B, r + 1); when r == 0,
    tail is (0, 1). Every target of every region is in exactly one window.
    """
    B, width = regions.shape  # width = S + 1
    S = width - 1
    n, r = divmod(S, seq_len)
    index = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (n, T + 1)
    windows = regions[:, index].reshape(B * n, seq_len + 1)  # (B*n, T + 1)
    tail = regions[:, n * seq_len :] if r else np.empty((0, 1), regions.dtype)  # (B, r + 1)
    return windows, tail
