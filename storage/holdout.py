"""The held-out split of the token stream: which stream offsets training never sees.

The stream is cut into blocks of S = `block_tokens` tokens, block k covering [k*S, (k+1)*S).
Block k is held out iff k >= offset, (k - offset) % every == 0 and (k - offset) // every <
max_blocks. Its held-out REGION is the S + 1 tokens [k*S, k*S + S + 1): the S targets
k*S + 1 .. k*S + S, predicted from inputs that start at k*S. No training window may contain any
token of a region, as input or as target, so an evaluation over the regions scores text the
model has never read.

Invariant: the rule depends only on stream offsets, and the stream is append-only, so a block
once held out stays held out, and a block not held out never becomes held out as text arrives;
the evaluation set only grows (until the max_blocks cap), by whole blocks.

Pure arithmetic over numpy arrays: knows nothing of the database (queue.py reads the tokens)
nor of the engine. Every function here is exact for any window length and any start >= 0.
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
    # at most this many held-out blocks (131,072 tokens), so evaluation stays fast on a huge corpus
    max_blocks: int = 256

    def validate(self) -> "HoldoutSplit":
        """Returns self; raises ConfigError naming the field and its allowed range."""
        for field in fields(self):
            value = getattr(self, field.name)
            low = 0 if field.name == "offset" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"holdout {field.name} ({value!r}) must be an integer >= {low}")
        return self

    def to_json(self) -> str:
        """The four fields as a JSON object with sorted keys: the form meta["holdout"] holds."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "HoldoutSplit":
        """The split to_json wrote; ConfigError for anything but exactly its four valid fields."""
        try:
            values = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"holdout split ({text!r}) is not JSON: {exc}") from None
        names = {field.name for field in fields(cls)}
        if not isinstance(values, dict) or set(values) != names:
            raise ConfigError(
                f"holdout split ({text!r}) must be a JSON object with exactly the keys "
                f"{', '.join(sorted(names))}"
            )
        return cls(**values).validate()

    # --- which blocks -----------------------------------------------------------------------------

    def _first_blocks(self, last: int) -> np.ndarray:
        """Held-out k <= last, ascending, int64."""
        if last < self.offset:
            return np.empty(0, np.int64)
        n = min(self.max_blocks, (last - self.offset) // self.every + 1)
        return self.offset + self.every * np.arange(n, dtype=np.int64)  # (n,)

    def blocks(self, end: int) -> np.ndarray:
        """Held-out block indices k whose region starts before `end` (k*S < end): int64, ascending.

        Those that can touch a stream of `end` tokens. blocks(a) is a prefix of blocks(b), a <= b.
        """
        return self._first_blocks((end - 1) // self.block_tokens)

    def complete_blocks(self, end: int) -> np.ndarray:
        """Held-out blocks whose whole region lies in a stream of `end` tokens: the evaluation set.

        k with k*S + S + 1 <= end, int64, ascending; a prefix of complete_blocks(b), end <= b.
        """
        return self._first_blocks((end - self.block_tokens - 1) // self.block_tokens)

    # --- which windows ----------------------------------------------------------------------------

    def overlaps(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Whether each window [s, s + length), s in `starts` (N,), meets a region: bool (N,).

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
