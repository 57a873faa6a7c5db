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

    def validate(self) -> "HoldoutSplit":
        """Returns self; raises ConfigError naming the field and its allowed range."""
        for field in fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name in ("offset", "source_blocks", "extra_blocks") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"holdout {field.name} ({value!r}) must be an integer >= {low}")
        return self

    @property
    def per_source(self) -> bool:
        """Whether blocks beyond the base may be held out (per source)."""
        return self.source_blocks > 0 and self.extra_blocks > 0

    def to_json(self) -> str:
        """The fields as a JSON object with sorted keys: the form meta["holdout"] holds. A split
        without per-source fields (both 0) is written as the four keys of earlier releases."""
        values = asdict(self)
        if self.source_blocks == 0 and self.extra_blocks == 0:
            del values["source_blocks"], values["extra_blocks"]
        return json.dumps(values, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HoldoutSplit":
        """The split to_json wrote: its six fields, or the four of a release before per-source
        blocks (read with source_blocks = extra_blocks = 0: exactly the blocks it held out).
        ConfigError for anything else, or a field out of its range."""
        try:
            values = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"holdout split ({text!r}) is not JSON: {exc}") from None
        names = {field.name for field in fields(cls)}
        earlier = names - {"source_blocks", "extra_blocks"}
        if not isinstance(values, dict) or set(values) not in (names, earlier):
            raise ConfigError(
                f"holdout split ({text!r}) must be a JSON object with exactly the keys "
                f"{', '.join(sorted(names))} (or, as written before per-source blocks, {', '.join(sorted(earlier))})"
            )
        if set(values) == earlier:
            values = values | {"source_blocks": 0, "extra_blocks": 0}
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
                         extra: int) -> np.ndarray:
    """The per-source rule over lattice blocks beyond the base, taken in stream order: bool (n,).

    `sources[i]` names the source of the i-th block's first token, or is None for a block that
    may not be held out (a model has read it, or its text is withdrawn). Block i is held out
    iff its source has fewer than split.source_blocks held-out blocks so far and fewer than
    split.extra_blocks are held out beyond the base so far, counting the blocks before it that
    this call holds out. `counts` (held-out blocks per source, base ones included) and `extra`
    (held out beyond the base) are as recorded before the first block; `counts` is updated.
    """
    held = np.zeros(len(sources), bool)  # (n,)
    for i, source in enumerate(sources):
        if source is None or extra >= split.extra_blocks or counts.get(source, 0) >= split.source_blocks:
            continue
        held[i] = True
        counts[source] = counts.get(source, 0) + 1
        extra += 1
    return held


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
