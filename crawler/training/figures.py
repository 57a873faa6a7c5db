"""What the training loop reports: `TrainingFigures` (the numbers the supervisor puts in `status`
events, health.json and the page), `StepLog`, the `train_step` line every `log_every` steps
with the recent-window training bits per byte that an evaluation quotes beside its held-out one,
and `TimeShare`, where the loop's wall time went over the last ten minutes (steps, evaluations,
checkpoints, idle, and the loop's own work between them).

Not the decisions taken on these numbers (the plateau rule is crawler/training/evaluation.py's,
the schedule crawler/training/schedule.py's). Relies on engine.StepStats for a step's numbers and
on the clock the worker injects; reads no store.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.units import LN2

TRAIN_WINDOW = 50  # steps in the recent-window estimate of training bits per byte
SHARE_WINDOW_SECONDS = 600.0  # the stretch of wall time TimeShare reports on
SHARE_KINDS = ("train", "evaluate", "checkpoint", "idle")  # the rest of the time is the loop's own


@dataclass
class TrainingFigures:
    """What the supervisor reports in `status` events and health.json."""

    step: int = 0
    tokens_trained: int = 0  # new stream tokens consumed (replay and further passes not counted)
    tokens_seen: int = 0  # every token through the model, replay and passes included
    position: int = 0
    epoch: float = 0.0  # passes over the trainable text so far (tokens_seen / trainable tokens)
    loss: float | None = None
    tokens_per_s: float | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_time: float | None = None  # monotonic
    last_checkpoint_path: str | None = None  # the checkpoint the loop stands on
    idle: bool = False
    plateaued: bool = False
    paused: bool = False  # by the operator (`crystalline pause`): no steps, ingest goes on
    val_bits_per_byte: float | None = None
    train_bits_per_byte: float | None = None
    best_val_bits_per_byte: float | None = None
    best_step: int | None = None
    holdout_tokens: int = 0
    n_layer: int = 0  # the live model's depth, which a growth changes
    parameters: int = 0
    # each growth of the model so far, oldest first: {"step", "tokens_seen", "from", "to",
    # "parameters"} (the page marks them on its curve; the engine's records are in train_state)
    growths: list[dict] = field(default_factory=list)
    # TimeShare.shares(): the share of the last ten minutes' wall time each part of the loop took
    # ({"window_s", "train", "evaluate", "checkpoint", "idle", "other"}); None before the first step
    time_share: dict | None = None
    replay_share: float | None = None  # the part of the last batch drawn from trained text (mixing.py)
    source_shares: dict | None = None  # each source's weight in the batches, where there are several


class StepLog:
    """The steps since the last `train_step` line (tokens, losses, nats and bytes), and the last
    TRAIN_WINDOW steps' (nats, bytes) for the training bits per byte an evaluation reports."""

    def __init__(self, clock):
        self._tokens = 0
        self._nats, self._bytes = 0.0, 0  # since the last train_step event
        self._start = clock()
        self._losses: list[float] = []
        self._recent: deque[tuple[float, int]] = deque(maxlen=TRAIN_WINDOW)  # (nats, bytes) per step
        self._seconds: deque[float] = deque(maxlen=TRAIN_WINDOW)  # a step's time, at the present shape

    def record(self, stats, nats: float, n_bytes: int) -> None:
        """Count one step: its StepStats, and the nats and bytes of its targets."""
        self._recent.append((nats, n_bytes))
        self._seconds.append(stats.seconds)
        self._nats += nats
        self._bytes += n_bytes
        self._tokens += stats.tokens
        self._losses.append(stats.loss)

    def train_bits_per_byte(self) -> float | None:
        """Training bits per byte over the recent window; None before the first step."""
        recent_nats, recent_bytes = sum(n for n, _ in self._recent), sum(b for _, b in self._recent)
        return recent_nats / LN2 / recent_bytes if recent_bytes else None

    def step_seconds(self) -> float | None:
        """A training step's mean time over the recent window, at the present shape; None before
        the first step (or the first since the model grew)."""
        return sum(self._seconds) / len(self._seconds) if self._seconds else None

    def shape_changed(self) -> None:
        """The model grew: the recent step times are of the old shape."""
        self._seconds.clear()

    def report(self, now: float, stats, figures: TrainingFigures, log, new_windows: int,
               replay_windows: int) -> None:
        """Log `train_step` for the steps since the last one (setting figures.tokens_per_s), then
        start the next window at `now`."""
        elapsed = max(now - self._start, 1e-9) if now > self._start else stats.seconds
        figures.tokens_per_s = self._tokens / elapsed
        log.info("train_step", step=stats.step, loss=round(float(np.mean(self._losses)), 4),
                 crystalline_loss=round(stats.crystalline_loss, 4), lr=stats.lr,
                 grad_norm=round(stats.grad_norm, 4), tokens_per_s=round(figures.tokens_per_s, 1),
                 new_windows=new_windows, replay_windows=replay_windows,
                 bits_per_byte=round(self._nats / LN2 / max(self._bytes, 1), 4),
                 epoch=round(figures.epoch, 3), dt_ms=round(stats.seconds * 1e3, 1))
        self._tokens, self._start, self._losses = 0, now, []
        self._nats, self._bytes = 0.0, 0


class TimeShare:
    """Where the training loop's wall time went over the last `window` seconds: "train" (the
    engine's steps), "evaluate" (cool-down copies, held-out measures, the best model's file, the
    growth policy), "checkpoint" (writing and committing one), "idle" (nothing to train on, or
    paused), and "other", the rest: the loop's own work between steps (batches, replay draws,
    bookkeeping). A span is added when it ends; one that began before the window counts for its
    part inside it. Running sums make a report O(1) whatever the step rate.

    Its own `timer` (seconds, monotonic), not the worker's clock: the loop's schedule never
    depends on how often this looks at the time. Used from the training thread only; the
    supervisor reads the dict `shares()` returned, which the worker puts in TrainingFigures."""

    def __init__(self, timer=time.perf_counter, window: float = SHARE_WINDOW_SECONDS):
        self.timer, self.window = timer, window
        self.start = timer()
        self._spans: deque[tuple[float, float, str]] = deque()  # (start, end, kind), by end
        self._sums = dict.fromkeys(SHARE_KINDS, 0.0)  # seconds of the spans held
        self._idle_since: float | None = None

    def add(self, kind: str, start: float, end: float | None = None) -> None:
        """A span of `kind` from `start` to `end` (now) on the timer."""
        end = self.timer() if end is None else end
        if end > start:
            self._spans.append((start, end, kind))
            self._sums[kind] += end - start

    def idle(self, idle: bool) -> None:
        """The loop goes idle (True) or has work again (False): the time between is idle."""
        if idle and self._idle_since is None:
            self._idle_since = self.timer()
        elif not idle and self._idle_since is not None:
            self.add("idle", self._idle_since)
            self._idle_since = None

    def shares(self) -> dict:
        """{"window_s": the wall seconds reported on (the window, or less since the start),
        each kind's share of them, "other": the rest}, shares rounded to 0.001."""
        now = self.timer()
        begin = max(self.start, now - self.window)
        while self._spans and self._spans[0][1] <= begin:  # wholly before the window
            start, end, kind = self._spans.popleft()
            self._sums[kind] -= end - start
        seconds = dict(self._sums)
        if self._spans and self._spans[0][0] < begin:  # the oldest began before the window
            start, _, kind = self._spans[0]
            seconds[kind] -= begin - start
        if self._idle_since is not None:  # idle now: that counts too
            seconds["idle"] += now - max(self._idle_since, begin)
        wall = now - begin
        if wall <= 0:
            return {"window_s": 0.0, **dict.fromkeys(SHARE_KINDS, 0.0), "other": 0.0}
        shares = {kind: min(1.0, max(0.0, seconds[kind] / wall)) for kind in SHARE_KINDS}
        other = max(0.0, 1.0 - sum(shares.values()))
        return {"window_s": round(wall, 1), **{k: round(v, 3) for k, v in shares.items()}, "other": round(other, 3)}
