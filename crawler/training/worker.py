"""The training loop: the one place where the corpus queue and the engine meet.

`crystalline run` (the daemon) and `crystalline train` both drive this worker; there is no other
training loop. Each `run_once(now)` builds one batch and takes one `Trainer.step`. The loop is
composed of one part a concern:

- `batches` (crawler/training/batches.py): what each step trains on. New text first, read in
  order through a shuffle buffer, with a share of replay from the text already trained; then
  further passes over everything trained. Never the held-out split, never withdrawn text.
- `evaluation` (crawler/training/evaluation.py): held-out bits per byte of a cooled copy of the
  model, the best model (STATE_DIR/checkpoints/best.safetensors) and the plateau rule. Plateaued
  (or `max_passes` reached), the loop checkpoints and, with `idle = "sleep"`, waits until new
  text arrives. The plateau rule waits while the loop still reads new text (`reading_new_text`):
  a desk dropped at once is read to its end before the loop may idle.
- `schedule` (crawler/training/schedule.py): when to evaluate and checkpoint.
- `figures` and the `train_step` line (crawler/training/figures.py): what the loop reports.
- `grower` (crawler/training/grower.py): after each evaluation, the growth policy
  (crawler/training/growth.py) may deepen the live model between two steps; a checkpoint follows.
- `open_trainer` (crawler/training/resume.py): the model and the stream position a start takes
  up from the checkpoint the store chose.
- `checkpoints` (crawler/training/checkpoints.py, the CheckpointStore): the files, their names
  and rows, and retention (only rolling files of this command beyond `keep_checkpoints` are
  deleted, with their rows).

Checkpoints are committed with the cursor (`commit_checkpoint`): the database's cursor moves
only together with a durable checkpoint, and the file carries the rest of the loop's state
(shuffle buffer, replay credit, plateau counters), so a resumed run takes the same batches as an
uninterrupted one. On start it resumes from the newest usable checkpoint, after the store has
made the database and the files agree. A checkpoint that cannot be written because the disk is
full or the state is read-only is reported to the WriteState (`writes`) and deferred, never
fatal: training goes on in memory, and the checkpoint is written once writing works again
(`writes.generation` grew) or the next one is due.

The operator's controls live here too: pause (STATE_DIR/paused: no steps, ingest goes on), a
checkpoint now (SIGUSR1), copies of the live weights for the page (`snapshot`), each served on
the training thread between two steps, and a growth by hand (`grow`, for `crystalline grow`).
Knows nothing of files being watched; the supervisor (crawler/service/) or the `train` command
owns the thread.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np

from engine import CheckpointError, NonFiniteLoss
from engine.checkpoint import read_extra
from storage import HoldoutSplit

from ..config import Config
from ..state.disk import MB
from ..state.writable import WriteState
from .batches import STREAM_CACHE_FILE, Batches, TrainedText
from .checkpoints import CheckpointStore, stream_digest
from .evaluation import Evaluation
from .figures import StepLog, TimeShare, TrainingFigures
from .grower import Grower
from .mixing import SourceMix
from .resume import open_trainer
from .schedule import Schedule
from .sources import SourceNames

PAUSED_POLL_SECONDS = 0.5  # how often a paused trainer looks for resume or a checkpoint request


class TrainingWorker:
    """initialize() / run_once(now) / shutdown(), driven by the supervisor's thread.

    `pinned` maps model fields set by command-line flags to the flag's name: a checkpoint with
    another value is a ConfigError naming the flag, rather than the checkpoint's value winning.
    `writes` is the daemon's shared WriteState (a fresh one by default): a checkpoint blocked by
    a full disk or a read-only state is reported there and deferred. `clock` (seconds) is the
    worker's only time source besides the `now` handed to run_once, and must be the same clock
    as that `now`: the checkpoint and evaluation intervals in seconds compare the two.
    `config` may be replaced between steps (SIGHUP): its [daemon] section is read at each step.
    `command` is recorded in each checkpoint (retention deletes only its own); None keeps the
    command of the checkpoint resumed from (`crystalline grow`, which rewrites one in place).
    `growth_policy` replaces the [growth] policy (crawler/training/grower.py; tests script one).
    `timer` (seconds, monotonic) times the parts of the loop for `TimeShare` only, apart from
    `clock`, so that the schedule never depends on it.
    """

    name = "trainer"

    def __init__(self, config: Config, queue, tokenizer, log, clock=time.monotonic,
                 pinned: dict[str, str] | None = None, command: str | None = "run", stopping=lambda: False,
                 writes: WriteState | None = None, team=None, growth_policy=None, timer=time.perf_counter):
        self.config = config
        self.stopping = stopping  # true once a stop was asked for: a cool-down gives way to it
        self.command = command  # recorded in each checkpoint: retention deletes only its own
        # crawler.training.team.Team under mpiexec (rank 0): each batch is every rank's rows
        self.team = team
        self.ranks = 1 if team is None else team.size
        self.queue = queue
        self.tokenizer = tokenizer
        self.log = log.bind(component="trainer")
        self.clock = clock
        self.writes = writes if writes is not None else WriteState(config.state_dir, self.log, clock)
        # operator controls, set from the supervisor's thread and read at the next step
        self.checkpoint_requested = threading.Event()  # SIGUSR1: a checkpoint now
        self.pause_requested = False  # STATE_DIR/paused exists: hold training, keep ingesting
        self._snapshots: list = []  # weights wanted between two steps: [(Event, [result])] (snapshot())
        self.pinned = dict(pinned or {})
        self.trainer = None
        self.figures = TrainingFigures()
        self.checkpoints = CheckpointStore(config.state_dir, queue, self.log)  # files, rows, names, retention
        self.steps = StepLog(clock)
        self.share = TimeShare(timer)  # where the loop's time went over the last ten minutes
        self.schedule = Schedule(clock)
        # the parts that need the store's split and the trainer: built by initialize()
        self.batches: Batches | None = None
        self.evaluation: Evaluation | None = None
        self.grower: Grower | None = None
        self.growth_policy = growth_policy
        # the last batch held new text: the first pass over what is stored is not done, and the
        # plateau rule waits (a flat held-out figure then says the model, not the data, is the limit)
        self.reading_new_text = False

    # --- lifecycle ----------------------------------------------------------------------------

    def initialize(self) -> None:
        # a split of an earlier release is extended here with the per-source blocks, its own kept
        split = self.queue.holdout(HoldoutSplit())
        held = self.queue.held_out_blocks(split)
        mask = self.queue.stream_mask(split).with_held(held.blocks, held.decided_end)
        vocab_size = self.tokenizer.vocab_size
        trained = TrainedText(self.queue, TrainedText.limit_of(self.config.daemon.replay_memory_mb, vocab_size),
                              vocab_size, cache=self.config.state_dir / STREAM_CACHE_FILE, log=self.log)
        checkpoint = self.checkpoints.reconcile(self.tokenizer.identity()).checkpoint
        start = open_trainer(self.config, checkpoint, self.queue, vocab_size, self.pinned, self.log, self.team)
        self.trainer, self.seq_len, extra = start.trainer, start.seq_len, start.extra
        if self.command is None:
            self.command = str(extra.get("command", "run"))
        self.figures = TrainingFigures(step=self.trainer.step_count, tokens_trained=start.tokens_trained,
                                       position=start.position,
                                       tokens_seen=int(extra.get("tokens_seen", start.tokens_trained)),
                                       last_checkpoint_step=None if checkpoint is None else checkpoint.step,
                                       last_checkpoint_time=self.clock() if checkpoint is not None else None,
                                       last_checkpoint_path=None if checkpoint is None else str(checkpoint.path))
        if self.team is not None:
            self.team.share(self.trainer)  # every rank starts from this checkpoint
        sources = SourceNames(self.config.watch.roots)
        # no block a model has read becomes held out: the resumed one's position, and the best
        # model's (evaluated again on every new block), which may lie beyond it after a crash
        self.batches = Batches(self.queue, split, mask, trained, self.seq_len, self.config.train.seed, self.log,
                               sources=sources, floor=max(start.position, self._best_position()), write=self._write,
                               mixing=SourceMix(self.queue, sources, self.config.daemon.replay_balance, self.log))
        self.evaluation = Evaluation(self.trainer, self.batches, self.figures, self.config.train, self.queue,
                                     self.tokenizer, self.checkpoints, self.log, self.clock, write=self._write,
                                     checkpoint_extra=self.checkpoint_extra, stopping=self.stopping, team=self.team)
        self.evaluation.restore(extra)
        self.batches.restore(extra, start.position)
        self.grower = Grower(self.trainer, self.evaluation, self.batches, self.figures, self.steps, self.queue,
                             self.config, self.log, self.clock, team=self.team, policy=self.growth_policy)
        self.grower.restore(extra)
        self._update_epoch()
        self.evaluation.restore_best()
        latest = self.queue.latest_evaluation()
        if latest is not None:
            self.figures.val_bits_per_byte = latest.val_bits_per_byte
            self.figures.train_bits_per_byte = latest.train_bits_per_byte
        self.schedule.start(self.clock(), self.trainer.step_count, evaluated=bool(extra.get("evaluated")))
        self.log.info("trainer_ready", threads=self.trainer.threads, params=int(self.trainer.params.size),
                      mb_per_thread=round(self.trainer.memory_per_thread_mb, 1), step=self.trainer.step_count,
                      model=start.model.to_dict(), plateaued=self.figures.plateaued, ranks=self.ranks,
                      best_val_bits_per_byte=self.figures.best_val_bits_per_byte,
                      growths=self.grower.count, growth=self.grower.describe())

    def _best_position(self) -> int:
        """The stream position best.safetensors was trained to (0: none, or not recorded)."""
        if not self.checkpoints.best_path.exists():
            return 0
        try:
            return int(read_extra(self.checkpoints.best_path).get("stream_position") or 0)
        except (CheckpointError, TypeError, ValueError):
            return 0  # an unreadable best is measured again, or replaced, before it is compared

    @property
    def unsaved_steps(self) -> int:
        """Steps taken since the last checkpoint."""
        return self.schedule.since_checkpoint

    def shutdown(self) -> None:
        """Checkpoint what was trained since the last checkpoint, then join the engine's threads.
        Always logs `trainer_stopped` with the checkpoint the loop stands on (written now or
        earlier), so a stop's outcome never depends on when the last scheduled checkpoint fell."""
        if self.trainer is None:
            return
        saved = False
        try:
            if self.schedule.since_checkpoint > 0:
                saved = self.checkpoint(reason="shutdown") is not None
        finally:
            f = self.figures
            self.log.info("trainer_stopped", step=self.trainer.step_count, checkpoint_step=f.last_checkpoint_step,
                          checkpoint_path=f.last_checkpoint_path, saved=saved,
                          unsaved_steps=self.schedule.since_checkpoint)
            if self.team is not None:
                from .team import params_digest

                self.log.info("replicas_released", step=self.trainer.step_count, ranks=self.ranks,
                              params_sha256=params_digest(self.trainer.params))
                self.team.release()  # the followers close their replicas too
            self.trainer.close()
            self.trainer = None
            if self.batches is not None:
                self.batches.trained.close()

    # --- one step -----------------------------------------------------------------------------

    def run_once(self, now: float) -> float:
        """One training step if a batch can be built; returns how long the caller may sleep."""
        self._serve_snapshots()
        daemon, f, schedule = self.config.daemon, self.figures, self.schedule
        B, T = self.config.train.batch_size * self.ranks, self.seq_len  # the batch of every rank
        step = self.trainer.step_count
        if schedule.deferred and schedule.since_checkpoint and self._checkpoint_due(now):
            self.checkpoint(reason="retry")  # a deferred checkpoint, idle or not
        if self.checkpoint_requested.is_set():
            self.checkpoint_requested.clear()
            self._checkpoint_on_request()
        if self.pause_requested != f.paused:
            self._set_paused(self.pause_requested)
        if f.paused:
            self._share_idle(True)
            return PAUSED_POLL_SECONDS
        self.batches.poll_withdrawals(now, step)
        if f.plateaued and self.evaluation.stays_plateaued(step, daemon.idle):
            return self._idle(True)  # nothing arrived since the plateau
        passes_done = bool(daemon.idle == "sleep" and daemon.max_passes and f.epoch >= daemon.max_passes)
        batch = self.batches.assemble(B, step, daemon.replay_fraction, new_text_required=passes_done)
        f.position = self.batches.position
        if batch.windows is None:  # no new text after the last pass, or not enough text for a batch
            if passes_done and batch.fresh == 0:
                self._plateau(reason="max_passes")
            return self._idle(True)
        windows = batch.windows  # (B, T + 1)
        self.reading_new_text = batch.fresh > 0
        self._idle(False)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        started = self.share.timer()
        try:
            stats = self.trainer.step(inputs, targets) if self.team is None else self.team.step(self.trainer, windows)
        except NonFiniteLoss as exc:
            self.log.error("train_step_failed", step=self.trainer.step_count, error=str(exc))
            return 0.0  # the batch that diverged is skipped (its windows count as taken)
        finally:
            self.share.add("train", started)
        f.tokens_trained += batch.fresh * T
        f.tokens_seen += stats.tokens
        f.step, f.loss = stats.step, stats.loss
        self._update_epoch()
        self.steps.record(stats, stats.loss * targets.size, self.tokenizer.token_bytes(targets))
        schedule.stepped()
        if stats.step % daemon.log_every == 0:
            f.time_share = self.share.shares()
            f.replay_share = round(self.batches.replay_share, 4)
            f.source_shares = self.batches.mixing.shares() if self.batches.mixing is not None else None
            self.steps.report(now, stats, f, self.log, new_windows=batch.fresh,
                              replay_windows=windows.shape[0] - batch.fresh)
        checkpoint_due, growths = self._checkpoint_due(now), self.grower.count
        # a checkpoint is evaluated unless the last evaluation still stands for it (evaluation_fresh)
        if (checkpoint_due and not schedule.evaluation_fresh(stats.step)) or schedule.evaluation_due(
                now, stats.step, daemon):
            self.evaluate(now)
        grown = self.grower.count > growths
        if (checkpoint_due or grown) and schedule.since_checkpoint:  # (a plateau found above checkpoints itself)
            self.checkpoint(reason="grown" if grown else "schedule")
        return 0.0

    def _update_epoch(self) -> None:
        """Passes over the trainable text stored so far: all tokens through the model over the
        stream's length less its held-out and withdrawn regions (so 0 to 1 during the first pass)."""
        self.figures.epoch = self.figures.tokens_seen / max(1, self.batches.trainable_tokens)

    def _share_idle(self, idle: bool) -> None:
        """Tell TimeShare the loop is idle (or paused), or has work again; report on entering."""
        self.share.idle(idle)
        if idle:
            self.figures.time_share = self.share.shares()

    def _idle(self, idle: bool) -> float:
        self._share_idle(idle)
        if idle and not self.figures.idle:
            self.log.info("trainer_idle", step=self.figures.step, position=self.figures.position,
                          plateaued=self.figures.plateaued)
        self.figures.idle = idle
        return 1.0 if idle else 0.0

    # --- evaluation and the plateau ------------------------------------------------------------

    def evaluate(self, now: float) -> float | None:
        """Measure held-out bits per byte, record it, keep the best model, let the growth policy
        deepen the model, else apply the plateau rule. Returns the figure, or None while the
        stream holds no complete held-out block. A growth is checkpointed by the caller (run_once,
        or the checkpoint this evaluation is part of)."""
        started = self.share.timer()
        try:
            return self._evaluate(now)
        finally:
            self.share.add("evaluate", started)

    def _evaluate(self, now: float) -> float | None:
        self.schedule.evaluated(now, self.trainer.step_count)
        value = self.evaluation.run(self.config.daemon, self.steps.train_bits_per_byte())
        if value is not None and self.grower.after_evaluation(now, value) is not None:
            return value  # grown: the plateau rule waits for the grown model's own evaluations
        if value is not None and self.evaluation.plateau_due(self.config.daemon):
            if self.reading_new_text:
                # text not yet read remains: training on it cannot over-fit, and every source it
                # holds has held-out blocks the model has not learned yet; plateau once it is read
                self._defer_plateau()
            else:
                self._plateau(reason="no_improvement")
        return value

    def grow(self, add: int, reason: str, trigger: str = "command") -> dict:
        """Deepen the live model by `add` blocks now, between two steps (Grower.grow: measured
        before and after, on every rank, `model_grown`); the caller checkpoints (`crystalline
        grow`). The live model measured at this step stands for this step's evaluation."""
        record = self.grower.grow(add, reason, trigger)
        self.schedule.evaluated(self.clock(), self.trainer.step_count)
        return record

    def _defer_plateau(self) -> None:
        """Log `plateau_deferred` once a streak of evaluations without improvement reaches the
        patience while new text is still read (again only after an improvement resets the count)."""
        stale, patience = self.evaluation.stale, self.config.daemon.plateau_patience
        if stale != patience:
            return
        f = self.figures
        self.log.info("plateau_deferred", reason="new_text", step=self.trainer.step_count, epoch=round(f.epoch, 3),
                      stream_position=f.position, stream_tokens=self.queue.stream_end(),
                      best_val_bits_per_byte=f.best_val_bits_per_byte, evaluations=stale)

    def _plateau(self, reason: str) -> None:
        self.evaluation.plateau(reason, self.config.daemon.idle)
        if self.schedule.since_checkpoint > 0:
            self.checkpoint(reason="plateau")

    # --- operator controls ---------------------------------------------------------------------

    def _checkpoint_on_request(self) -> None:
        """SIGUSR1: write a checkpoint now, or say which one already holds every step."""
        if self.schedule.since_checkpoint:
            self.checkpoint(reason="requested")
        else:
            self.log.info("checkpoint_requested", saved=False, step=self.trainer.step_count,
                          checkpoint_step=self.figures.last_checkpoint_step,
                          checkpoint_path=self.figures.last_checkpoint_path)

    def _set_paused(self, paused: bool) -> None:
        """Pause (after checkpointing the steps since the last checkpoint) or resume."""
        if paused and self.schedule.since_checkpoint:
            self.checkpoint(reason="paused")
        self.figures.paused = paused
        self.log.info("training_paused" if paused else "training_unpaused", step=self.trainer.step_count,
                      checkpoint_step=self.figures.last_checkpoint_step)

    def snapshot(self, timeout: float) -> tuple[np.ndarray, int, object] | None:
        """A copy of the live weights, its step and its engine.ModelConfig, taken together on the
        training thread between two steps (so never half updated, and of the shape the weights
        have, a growth or not); None when it is not served within `timeout` seconds."""
        done, result = threading.Event(), []
        self._snapshots.append((done, result))
        return result[0] if done.wait(timeout) and result else None

    def _serve_snapshots(self) -> None:
        while self._snapshots and self.trainer is not None:
            done, result = self._snapshots.pop(0)
            result.append((self.trainer.params.copy(), self.trainer.step_count, self.trainer.model_config))
            done.set()

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_extra(self) -> dict:
        """The loop's state that a checkpoint carries beside the weights (its `extra`), now."""
        f = self.figures
        return {
            "command": self.command, "tokenizer": self.tokenizer.identity(), "stream_position": f.position,
            "tokens_trained": f.tokens_trained, "tokens_seen": f.tokens_seen,
            **self.batches.state(),  # "fresh", "replay_credit"
            **self.evaluation.state(),  # "plateau", "last_cooldown_step"
            **self.grower.state(),  # "growth_history": the growth policy's evaluations
            "evaluated": self.schedule.evaluation_fresh(self.trainer.step_count),
            "val_bits_per_byte": f.val_bits_per_byte,
            "stream_digest": stream_digest(self.queue, f.position),
        }

    def checkpoint(self, reason: str) -> Path | None:
        """Evaluate (unless the last evaluation still stands: Schedule.evaluation_fresh), write the
        checkpoint file durably, then commit it with the
        cursor in one transaction, then delete this loop's rolling files beyond keep_checkpoints.

        A write blocked by a full disk or a read-only state (WriteState.report) defers it: no
        file is left behind (a file written but not committed is removed: the two go together),
        training goes on in memory, and run_once tries again once writing works or the next
        checkpoint is due. Returns the path, or None when deferred."""
        if not self.schedule.evaluation_fresh(self.trainer.step_count) and reason != "shutdown":
            self.evaluate(self.clock())
        started = self.share.timer()
        try:
            return self._commit_checkpoint(reason)
        finally:
            self.share.add("checkpoint", started)

    def _commit_checkpoint(self, reason: str) -> Path | None:
        t0 = self.clock()
        step, f = self.trainer.step_count, self.figures
        loss = None if f.loss is None or not math.isfinite(f.loss) else float(f.loss)
        try:
            path = self.checkpoints.commit(self.trainer, extra=self.checkpoint_extra(),
                                           stream_position=f.position, tokens_trained=f.tokens_trained, loss=loss)
        except Exception as exc:  # the store leaves no file of a checkpoint it could not commit
            if not self.writes.report("checkpoint", exc):
                raise
            self.schedule.defer(self.writes.generation, step, self.clock())
            self.log.warning("checkpoint_deferred", step=step, reason=reason,
                             unsaved_steps=self.schedule.since_checkpoint, blocked=self.writes.blocked,
                             error=f"{type(exc).__name__}: {exc}")
            return None
        self.schedule.checkpointed(self.clock())
        f.last_checkpoint_step, f.last_checkpoint_time = step, self.schedule.last_checkpoint_at
        f.last_checkpoint_path = str(path)
        daemon = self.config.daemon
        self._write("checkpoint", lambda: self.checkpoints.prune(daemon.keep_checkpoints, path, self.command,
                                                                 max_bytes=daemon.checkpoints_max_mb * MB))
        self.log.info("checkpoint_saved", step=step, path=str(path), reason=reason,
                      stream_position=f.position, tokens_trained=f.tokens_trained,
                      ms=round((self.clock() - t0) * 1e3, 1))
        return path

    def _checkpoint_due(self, now: float) -> bool:
        return self.schedule.checkpoint_due(now, self.trainer.step_count, self.config.daemon, self.writes)

    def _write(self, part: str, write):
        """Run `write()`; a write blocked by a full disk or a read-only state is reported and
        skipped (returns None), any other failure raises."""
        try:
            return write()
        except Exception as exc:
            if self.writes.report(part, exc):
                return None
            raise
