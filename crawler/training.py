"""The training worker: the loop that joins the corpus queue and the engine.

Each `run_once` builds one batch (new windows from the trainer's stream position first, a
`replay_fraction` share drawn from data already trained), takes one `Trainer.step`, and on
schedule writes a checkpoint and then commits it with the cursor (`commit_checkpoint`): the
database's cursor moves only together with a durable checkpoint. On start it resumes from the
newest checkpoint the database names whose file loads; a corrupt newest one is reported and the
database rewound to the previous one, so the model is never credited with data it did not keep;
checkpoint files the database does not name (a crash between writing and committing) are
deleted. Knows nothing of files being watched; the supervisor (daemon.py) owns the thread.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine import CheckpointError, NonFiniteLoss
from engine.checkpoint import list_checkpoints, load_checkpoint

from .config import Config

CHECKPOINT_DIR = "checkpoints"


@dataclass
class TrainingFigures:
    """What the supervisor reports in `status` events and health.json."""

    step: int = 0
    tokens_trained: int = 0  # stream tokens consumed (replay not counted)
    position: int = 0
    loss: float | None = None
    tokens_per_s: float | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_time: float | None = None  # monotonic
    idle: bool = False


class TrainingWorker:
    """initialize() / run_once(now) / shutdown(), driven by the supervisor's thread."""

    name = "trainer"

    def __init__(self, config: Config, queue, tokenizer, log, clock=time.monotonic):
        self.config = config
        self.queue = queue
        self.tokenizer = tokenizer
        self.log = log.bind(component="trainer")
        self.clock = clock
        self.trainer = None
        self.figures = TrainingFigures()
        self.directory = Path(config.state_dir) / CHECKPOINT_DIR
        self._replay_credit = 0.0
        self._rng = np.random.default_rng(config.train.seed)
        self._since_checkpoint = 0
        self._window_tokens = 0
        self._window_start = clock()
        self._losses: list[float] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def initialize(self) -> None:
        from engine import Trainer

        identity = self.tokenizer.identity()
        model = replace(self.config.model, vocab_size=self.tokenizer.vocab_size).validate()
        train = self.config.train.validate(model)
        checkpoint = self._resume(model)
        if checkpoint is None:
            self.trainer = Trainer(model, train)
            cursor = self.queue.cursor()
            position, tokens = cursor.stream_position, cursor.tokens_trained
        else:
            self.trainer = Trainer.from_checkpoint(checkpoint, train)
            position = int(checkpoint.extra["stream_position"])
            tokens = int(checkpoint.extra["tokens_trained"])
            self.log.info("checkpoint_loaded", step=checkpoint.step, path=str(checkpoint.path),
                          stream_position=position, tokens_trained=tokens)
        self._identity = identity
        self.figures = TrainingFigures(step=self.trainer.step_count, tokens_trained=tokens, position=position,
                                       last_checkpoint_step=None if checkpoint is None else checkpoint.step,
                                       last_checkpoint_time=self.clock() if checkpoint is not None else None)
        self._last_checkpoint_at = self.clock()
        self.log.info("trainer_ready", threads=self.trainer.threads, params=int(self.trainer.params.size),
                      mb_per_thread=round(self.trainer.memory_per_thread_mb, 1), step=self.trainer.step_count)

    def _resume(self, model):
        """The checkpoint to resume from, after making the database and the files agree."""
        records = self.queue.checkpoints(limit=self.config.daemon.keep_checkpoints + 10)  # newest first
        named = {str(Path(r.path)) for r in records}
        latest = records[0] if records else None
        for path in list_checkpoints(self.directory):
            # a file the database does not name, newer than its latest checkpoint: a crash came
            # between writing it and committing it; its data is still queued, so it goes
            if str(path) not in named and (latest is None or _step_of(path) > latest.step):
                path.unlink(missing_ok=True)
                self.log.warning("checkpoint_orphan_removed", path=str(path))
        for i, record in enumerate(records):
            try:
                checkpoint = load_checkpoint(record.path, expect=model)
            except CheckpointError as exc:
                self.log.error("checkpoint_corrupt", path=record.path, step=record.step, error=exc.reason)
                continue
            if checkpoint.extra.get("tokenizer") != self.tokenizer.identity():
                raise CheckpointError(record.path, "trained with another tokenizer than the state directory's")
            if i > 0:
                self.queue.rewind_to(record.id)
                self.log.warning("checkpoint_rewound", step=record.step, path=record.path,
                                 skipped=[r.step for r in records[:i]])
            return checkpoint
        if records:
            # no file loads: start over, and stop crediting the model with any data
            raise CheckpointError(records[0].path, "no checkpoint the database names can be loaded")
        return None

    def shutdown(self) -> None:
        """Checkpoint what was trained since the last checkpoint, then join the engine's threads."""
        try:
            if self.trainer is not None and self._since_checkpoint > 0:
                self.checkpoint(reason="shutdown")
        finally:
            if self.trainer is not None:
                self.trainer.close()
                self.trainer = None

    # --- one step -----------------------------------------------------------------------------

    def run_once(self, now: float) -> float:
        """One training step if a batch can be built; returns how long the caller may sleep."""
        daemon, train = self.config.daemon, self.config.train
        B, T = train.batch_size, train.seq_len
        position = self.figures.position
        # replay needs data already trained; until then the whole batch is new data
        can_replay = position > T
        credit = self._replay_credit + daemon.replay_fraction * B
        want_replay = min(int(credit), B) if can_replay else 0
        fresh, next_position = self.queue.read_windows(position, B - want_replay, T)
        shortfall = B - fresh.shape[0]
        if fresh.shape[0] == 0 and daemon.idle == "sleep":
            return self._idle(True)
        replay = (self.queue.sample_replay(shortfall, T, self._rng, end=position) if shortfall
                  else np.empty((0, T + 1), np.int32))
        if replay.shape[0] < shortfall:  # not enough data yet to fill a batch: wait for files
            return self._idle(True)
        self._replay_credit = max(0.0, credit - replay.shape[0])
        windows = np.concatenate([fresh, replay]) if replay.shape[0] else fresh  # (B, T + 1)
        self._idle(False)
        try:
            stats = self.trainer.step(windows[:, :-1], windows[:, 1:])
        except NonFiniteLoss as exc:
            self.log.error("train_step_failed", step=self.trainer.step_count, error=str(exc))
            self.figures.position = next_position  # skip the batch that diverged
            return 0.0
        self.figures.position = next_position
        self.figures.tokens_trained += fresh.shape[0] * T
        self.figures.step = stats.step
        self.figures.loss = stats.loss
        self._since_checkpoint += 1
        self._window_tokens += stats.tokens
        self._losses.append(stats.loss)
        if stats.step % daemon.log_every == 0:
            elapsed = max(now - self._window_start, 1e-9) if now > self._window_start else stats.seconds
            self.figures.tokens_per_s = self._window_tokens / elapsed
            self.log.info("train_step", step=stats.step, loss=round(float(np.mean(self._losses)), 4),
                          crystalline_loss=round(stats.crystalline_loss, 4), lr=stats.lr,
                          grad_norm=round(stats.grad_norm, 4), tokens_per_s=round(self.figures.tokens_per_s, 1),
                          new_windows=int(fresh.shape[0]), replay_windows=int(replay.shape[0]),
                          dt_ms=round(stats.seconds * 1e3, 1))
            self._window_tokens, self._window_start, self._losses = 0, now, []
        if (self._since_checkpoint >= daemon.checkpoint_every_steps
                or now - self._last_checkpoint_at >= daemon.checkpoint_every_seconds):
            self.checkpoint(reason="schedule")
        return 0.0

    def _idle(self, idle: bool) -> float:
        if idle and not self.figures.idle:
            self.log.info("trainer_idle", step=self.figures.step, position=self.figures.position)
        self.figures.idle = idle
        return 1.0 if idle else 0.0

    def checkpoint(self, reason: str) -> Path:
        """Write the checkpoint file durably, then commit it with the cursor in one transaction."""
        t0 = self.clock()
        extra = {"tokenizer": self.tokenizer.identity(), "stream_position": self.figures.position,
                 "tokens_trained": self.figures.tokens_trained}
        path = self.trainer.save_checkpoint(self.directory, extra=extra,
                                            keep_last=self.config.daemon.keep_checkpoints)
        self.queue.commit_checkpoint(step=self.trainer.step_count, path=str(path),
                                     stream_position=self.figures.position,
                                     tokens_trained=self.figures.tokens_trained,
                                     loss=None if self.figures.loss is None or not math.isfinite(self.figures.loss)
                                     else float(self.figures.loss))
        self._since_checkpoint = 0
        self._last_checkpoint_at = self.clock()
        self.figures.last_checkpoint_step = self.trainer.step_count
        self.figures.last_checkpoint_time = self._last_checkpoint_at
        self.log.info("checkpoint_saved", step=self.trainer.step_count, path=str(path), reason=reason,
                      stream_position=self.figures.position, tokens_trained=self.figures.tokens_trained,
                      ms=round((self.clock() - t0) * 1e3, 1))
        return path


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return -1
