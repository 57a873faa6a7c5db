"""When the training loop evaluates and checkpoints: `Schedule` counts the steps since the last
checkpoint and remembers when the last checkpoint and the last evaluation were taken.

A checkpoint is due every `checkpoint_every_steps` steps or `checkpoint_every_seconds`; an
evaluation every `eval_every_steps` steps or `eval_every_seconds`, and at every checkpoint unless
the last one is recent enough to stand for it (`evaluation_fresh`). A
checkpoint blocked by a full disk or a read-only state is deferred (`defer`), never fatal: it is
due again as soon as writing works (the WriteState's `generation` grew) or a full interval later.

Not what an evaluation or a checkpoint does (crawler/training/evaluation.py, the worker's
`checkpoint`). Relies on the `now` handed in and the clock it was built with, which must be the
same clock, and on crawler.state.writable.WriteState to say when writing works again. The
settings are handed in at each call (the daemon's [daemon] section, which SIGHUP may replace).
"""

from __future__ import annotations

from ..config import DaemonConfig
from ..state.writable import WriteState


class Schedule:
    """The loop's counters between checkpoints and evaluations, from `start` on."""

    def __init__(self, clock):
        self.since_checkpoint = 0  # steps taken since the last checkpoint
        self.last_checkpoint_at = 0.0  # the clock's time of the last checkpoint (or of the start)
        self.last_eval_step = -1
        self.last_eval_at = clock()
        self.last_eval_gap = 0  # steps between the last two evaluations (0: fewer than two yet)
        self._deferred: tuple[int, int, float] | None = None  # a blocked checkpoint: (generation, step, time)

    def start(self, now: float, step: int, evaluated: bool) -> None:
        """The loop starts at `step` (`evaluated`: its checkpoint was taken right after an evaluation)."""
        self.last_checkpoint_at = self.last_eval_at = now
        self.last_eval_step = step if evaluated else -1

    @property
    def deferred(self) -> bool:
        """A checkpoint was blocked and is not written yet."""
        return self._deferred is not None

    def stepped(self) -> None:
        self.since_checkpoint += 1

    def evaluated(self, now: float, step: int) -> None:
        if 0 <= self.last_eval_step < step:
            self.last_eval_gap = step - self.last_eval_step
        self.last_eval_at, self.last_eval_step = now, step

    def evaluation_fresh(self, step: int) -> bool:
        """Whether the last evaluation stands for the model at `step`: taken at it, or fewer steps
        ago than half the gap between the last two. A checkpoint due just after a timed
        evaluation (one step after it, when both intervals fall together) is not evaluated again:
        its cool-down, a share of the steps since the last one, would be a few steps long, and the
        figure of a barely cooled copy (0.3 bits per byte above the cooled ones on the desk) would
        enter the history and count against the plateau rule and the growth policy."""
        if step == self.last_eval_step:
            return True
        return 0 <= self.last_eval_step and 0 < self.last_eval_gap and step - self.last_eval_step < self.last_eval_gap / 2

    def checkpointed(self, now: float) -> None:
        self.since_checkpoint, self._deferred = 0, None
        self.last_checkpoint_at = now

    def defer(self, generation: int, step: int, now: float) -> None:
        """A checkpoint at `step` was blocked while the WriteState stood at `generation`."""
        self._deferred = (generation, step, now)

    def checkpoint_due(self, now: float, step: int, daemon: DaemonConfig, writes: WriteState) -> bool:
        """Every checkpoint_every_steps steps or checkpoint_every_seconds; after a deferred one,
        as soon as writing works again (writes.generation grew) or a full interval later."""
        if self._deferred is None:
            return (self.since_checkpoint >= daemon.checkpoint_every_steps
                    or now - self.last_checkpoint_at >= daemon.checkpoint_every_seconds)
        writes.recheck(now)  # rate-limited by the WriteState; the supervisor may beat us to it
        generation, deferred_step, at = self._deferred
        return (writes.generation > generation or step - deferred_step >= daemon.checkpoint_every_steps
                or now - at >= daemon.checkpoint_every_seconds)

    def evaluation_due(self, now: float, step: int, daemon: DaemonConfig) -> bool:
        """Every eval_every_steps steps or eval_every_seconds (a due checkpoint asks on its own)."""
        return (step - max(self.last_eval_step, 0) >= daemon.eval_every_steps
                or now - self.last_eval_at >= daemon.eval_every_seconds)
