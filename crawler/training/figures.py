"""What the training loop reports: `TrainingFigures` (the numbers the supervisor puts in `status`
events, health.json and the page) and `StepLog`, the `train_step` line every `log_every` steps
with the recent-window training bits per byte that an evaluation quotes beside its held-out one.

Not the decisions taken on these numbers (the plateau rule is crawler/training/evaluation.py's,
the schedule crawler/training/schedule.py's). Relies on engine.StepStats for a step's numbers and
on the clock the worker injects; reads no store.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from engine.units import LN2

TRAIN_WINDOW = 50  # steps in the recent-window estimate of training bits per byte


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
