"""The training loop: the one place where the corpus queue and the engine meet.

`crystalline run` (the daemon) and `crystalline train` both drive this worker; there is no other
training loop. Each `run_once(now)` builds one batch and takes one `Trainer.step`:

- New text first. The stream is read in order from the trainer's position into a shuffle
  buffer of up to FRESH_BUFFER windows, which is served in a permuted order (a batch of
  consecutive windows from one place of one file learns less); `replay_fraction` of each batch
  is drawn from text already trained, to limit forgetting.
- Then further passes: with no new text, whole batches are drawn uniformly from everything
  trained so far, while the held-out measure keeps improving.
- Never the held-out split: `storage.HoldoutSplit` reserves a fixed share of fixed-size blocks
  of the stream (recorded in the store on first use, so it never changes); every read here
  passes it, so no held-out token reaches a batch.
- Never withdrawn text (a rewritten file's untrained tokens, a forgotten document): every read
  passes a `storage.StreamMask` of the split and the withdrawn ranges. The loop looks for new
  withdrawals every WITHDRAWAL_POLL_SECONDS and at each refill; a new one drops the windows of
  the shuffle buffer it touches and blanks the in-memory copy of the trained text there.

On a schedule (every `eval_every_steps` steps or `eval_every_seconds`, and at every checkpoint)
the worker measures held-out bits per byte, records it in the store's history and logs
`eval_finished`. The best model so far is kept as STATE_DIR/checkpoints/best.safetensors, apart
from the rolling checkpoints. When `plateau_patience` evaluations in a row fail to beat the best
by `plateau_margin` (or `max_passes` is reached), it logs `training_plateaued`, checkpoints, and
with `idle = "sleep"` waits until new text arrives. When the held-out set grows (new text), the
best model is measured again on the new set, so the plateau rule always compares like with like.

Checkpoints are committed with the cursor (`commit_checkpoint`): the database's cursor moves
only together with a durable checkpoint, and the file carries the rest of the loop's state
(shuffle buffer, replay credit, plateau counters), so a resumed run takes the same batches as an
uninterrupted one. On start it resumes from the newest usable checkpoint, after making the
database and the files agree. The worker's CheckpointStore (`checkpoints`,
crawler/training/checkpoints.py) owns that, the files, their names and rows, and retention (only
rolling files of this command beyond `keep_checkpoints` are deleted, with their rows). A
checkpoint that cannot be written because the disk is full or the state is read-only is reported
to the WriteState (`writes`) and deferred, never fatal: training goes on in memory, and the
checkpoint is written once writing works again (`writes.generation` grew) or the next one is
due. Knows nothing of files being watched; the supervisor (daemon.py) or the `train` command
owns the thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from engine import CheckpointError, ConfigError, NonFiniteLoss
from engine.units import LN2
from storage import HoldoutSplit, StreamMask, draw_window_starts

from ..config import Config
from ..state.disk import MB
from ..state.writable import WriteState
from .checkpoints import RESET_HINT, CheckpointStore, stream_digest

FRESH_BUFFER = 512  # windows of new text shuffled together (64k tokens at T=128)
WITHDRAWAL_POLL_SECONDS = 1.0  # how often the loop asks the store for new withdrawals
TRAIN_WINDOW = 50  # steps in the recent-window estimate of training bits per byte


class TrainedText:
    """The trained part of the stream in memory, up to `limit` tokens, for the windows drawn by
    replay, further passes and cool-downs: drawing a batch from the store costs a query a window,
    more than a small model's whole step. Draws exactly what CorpusQueue.sample_replay draws
    (the same draw_window_starts), and hands over to it beyond `limit`. Grows by appending, with
    its capacity doubled, as the trained region grows; the stream never changes behind it."""

    def __init__(self, queue, limit: int, vocab_size: int):
        self.queue, self.limit = queue, limit
        self._tokens = np.empty(1 << 16, np.uint16 if vocab_size <= 1 << 16 else np.int32)
        self.size = 0  # tokens [0, size) of the stream are held

    def sample(self, count: int, seq_len: int, rng: np.random.Generator, end: int, holdout) -> np.ndarray:
        """`count` windows (int32 (n, seq_len + 1)) drawn uniformly from stream tokens [0, end)."""
        if end > self.limit:
            return self.queue.sample_replay(count, seq_len, rng, end=end, holdout=holdout)
        high = end - seq_len  # window starts lie in [0, high)
        if count == 0 or high <= 0:
            return np.empty((0, seq_len + 1), np.int32)
        if end > self.size:
            if end > self._tokens.size:
                grown = np.empty(max(end, 2 * self._tokens.size), self._tokens.dtype)
                grown[: self.size] = self._tokens[: self.size]
                self._tokens = grown
            # forgotten text reads as 0: the mask keeps every draw away from it
            self._tokens[self.size : end] = self.queue.read_tokens(self.size, end, missing=0)
            self.size = end
        starts = draw_window_starts(rng, high, count, seq_len, holdout)  # (n,)
        return self._tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)  # (n, T + 1)

    def blank(self, mask: StreamMask) -> None:
        """Zero the held tokens inside withdrawn ranges: no copy of forgotten text stays in memory."""
        for start, end in zip(mask.starts.tolist(), mask.ends.tolist()):
            if start < self.size:
                self._tokens[start : min(end, self.size)] = 0


PAUSED_POLL_SECONDS = 0.5  # how often a paused trainer looks for resume or a checkpoint request


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


class TrainingWorker:
    """initialize() / run_once(now) / shutdown(), driven by the supervisor's thread.

    `pinned` maps model fields set by command-line flags to the flag's name: a checkpoint with
    another value is a ConfigError naming the flag, rather than the checkpoint's value winning.
    `writes` is the daemon's shared WriteState (a fresh one by default): a checkpoint blocked by
    a full disk or a read-only state is reported there and deferred. `clock` (seconds) is the
    worker's only time source besides the `now` handed to run_once, and must be the same clock
    as that `now`: the checkpoint and evaluation intervals in seconds compare the two.
    """

    name = "trainer"

    def __init__(self, config: Config, queue, tokenizer, log, clock=time.monotonic,
                 pinned: dict[str, str] | None = None, command: str = "run", stopping=lambda: False,
                 writes: WriteState | None = None, team=None):
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
        self._deferred: tuple[int, int, float] | None = None  # a blocked checkpoint: (generation, step, time)
        # operator controls, set from the supervisor's thread and read at the next step
        self.checkpoint_requested = threading.Event()  # SIGUSR1: a checkpoint now
        self.pause_requested = False  # STATE_DIR/paused exists: hold training, keep ingesting
        self._snapshots: list = []  # weights wanted between two steps: [(Event, [result])] (snapshot())
        self.pinned = dict(pinned or {})
        self.trainer = None
        self.figures = TrainingFigures()
        self.checkpoints = CheckpointStore(config.state_dir, queue, self.log)  # files, rows, names, retention
        self.split: HoldoutSplit | None = None
        self.mask: StreamMask | None = None  # the split and the withdrawn ranges: what no read may touch
        self._mask_checked_at = -math.inf  # the `now` of the last look for withdrawals
        # the shuffle buffer of new text: windows read from stream offset _buffer_start up to
        # figures.position, served in _order; _taken of them already trained
        self._buffer = np.empty((0, 1), np.int32)
        self._starts = np.empty(0, np.int64)  # each buffered window's stream offset
        self._order = np.empty(0, np.int64)
        self._buffer_start = 0
        self._taken = 0
        self._replay_credit = 0.0
        self._since_checkpoint = 0
        self._window_tokens = 0
        self._window_nats, self._window_bytes = 0.0, 0  # since the last train_step event
        self._window_start = clock()
        self._losses: list[float] = []
        self._recent: deque[tuple[float, int]] = deque(maxlen=TRAIN_WINDOW)  # (nats, bytes) per step
        self._stale = 0  # evaluations since the last one that beat the best by the margin
        self._plateau_end = 0  # the stream's length when training plateaued
        self._stream_end = 0  # the stream's length, read at each refill of the shuffle buffer
        self._last_cooldown_step = 0  # the live step the last cool-down started from
        self._cooldown_cut = False  # the last cool-down gave way to a stop
        self._best_holdout = 0  # the held-out size the best figure was measured on
        self._best_key = ""  # ... and the held-out blocks it was measured on (HoldoutSet.key)
        self._last_eval_step = -1
        self._last_eval_at = clock()
        self._no_holdout_logged = False

    # --- lifecycle ----------------------------------------------------------------------------

    def initialize(self) -> None:
        from engine import Trainer

        self.split = self.queue.holdout(HoldoutSplit())
        self.mask = self.queue.stream_mask(self.split)
        limit = self.config.daemon.replay_memory_mb * 1_000_000 // (2 if self.tokenizer.vocab_size <= 1 << 16 else 4)
        self.trained = TrainedText(self.queue, limit, self.tokenizer.vocab_size)
        model = replace(self.config.model, vocab_size=self.tokenizer.vocab_size).validate()
        checkpoint = self._resume(model)
        if checkpoint is not None:
            model = self._resumed_model(model, checkpoint)
        train = replace(self.config.train, seq_len=min(self.config.train.seq_len, model.context_length))
        train = train.validate(model)
        self.seq_len = train.seq_len
        cursor = self.queue.cursor()
        extra = {} if checkpoint is None else checkpoint.extra
        across = {} if self.team is None else {"comm": self.team.comm, "distributed": self.team.config}
        if checkpoint is None or "stream_position" not in extra:  # fresh, or adopted weights
            self.trainer = (Trainer(model, train, **across) if checkpoint is None
                            else Trainer.from_checkpoint(checkpoint, train, **across))
            position, tokens = cursor.stream_position, cursor.tokens_trained
        else:
            self.trainer = Trainer.from_checkpoint(checkpoint, train, **across)
            position, tokens = int(extra["stream_position"]), int(extra["tokens_trained"])
            self.log.info("checkpoint_loaded", step=checkpoint.step, path=str(checkpoint.path),
                          stream_position=position, tokens_trained=tokens)
        self.figures = TrainingFigures(step=self.trainer.step_count, tokens_trained=tokens, position=position,
                                       tokens_seen=int(extra.get("tokens_seen", tokens)),
                                       last_checkpoint_step=None if checkpoint is None else checkpoint.step,
                                       last_checkpoint_time=self.clock() if checkpoint is not None else None,
                                       last_checkpoint_path=None if checkpoint is None else str(checkpoint.path))
        if self.team is not None:
            self.team.share(self.trainer)  # every rank starts from this checkpoint
        self._restore_loop_state(extra, position)
        self._restore_best()
        latest = self.queue.latest_evaluation()
        if latest is not None:
            self.figures.val_bits_per_byte = latest.val_bits_per_byte
            self.figures.train_bits_per_byte = latest.train_bits_per_byte
        self._last_checkpoint_at = self._last_eval_at = self.clock()
        self._last_eval_step = self.trainer.step_count if extra.get("evaluated") else -1
        self.log.info("trainer_ready", threads=self.trainer.threads, params=int(self.trainer.params.size),
                      mb_per_thread=round(self.trainer.memory_per_thread_mb, 1), step=self.trainer.step_count,
                      model=model.to_dict(), plateaued=self.figures.plateaued, ranks=self.ranks,
                      best_val_bits_per_byte=self.figures.best_val_bits_per_byte)

    def _resumed_model(self, configured, checkpoint):
        """The checkpoint's model wins over the configuration; a pinned (flag) field must agree."""
        trained = checkpoint.model_config
        fields = [f for f in configured.SHAPE_FIELDS + ("seed",) if getattr(configured, f) != getattr(trained, f)]
        for field in fields:
            if field in self.pinned:
                raise ConfigError(
                    f"{self.pinned[field]} {getattr(configured, field)} conflicts with the checkpoint "
                    f"{checkpoint.path} ({field}={getattr(trained, field)}); drop the flag, use another "
                    f"--state-dir, or {RESET_HINT}")
        if fields:
            settings = ", ".join(f"model.{f} = {getattr(configured, f)}" for f in fields)
            kept = ", ".join(f"{f} = {getattr(trained, f)}" for f in fields)
            self.log.warning("model_config_ignored", path=str(checkpoint.path),
                             configured={f: getattr(configured, f) for f in fields},
                             checkpoint={f: getattr(trained, f) for f in fields},
                             message=f"{settings} (a setting, or this version's default) is not used: the "
                                     f"checkpoints were trained with {kept}, which "
                                     "the model keeps; set it back, or start a model of the new shape with "
                                     "`crystalline reset --keep-corpus` (or a new state directory)")
        if trained.vocab_size != self.tokenizer.vocab_size:
            raise CheckpointError(checkpoint.path, f"vocab_size {trained.vocab_size} does not match the state "
                                  f"directory's tokenizer ({self.tokenizer.vocab_size}): restore the tokenizer "
                                  f"it was trained with, or {RESET_HINT}")
        return trained

    def _resume(self, model):
        """The checkpoint to resume from, after making the database and the files agree."""
        return self.checkpoints.reconcile(self.tokenizer.identity()).checkpoint

    def _restore_loop_state(self, extra: dict, position: int) -> None:
        self._replay_credit = float(extra.get("replay_credit", 0.0))
        plateau = extra.get("plateau", {})
        self._stale = int(plateau.get("stale", 0))
        self.figures.plateaued = bool(plateau.get("plateaued", False))
        self._plateau_end = int(plateau.get("stream_end", 0))
        self._last_cooldown_step = int(extra.get("last_cooldown_step", 0))
        self._buffer_start = position
        self._stream_end = self.queue.stream_end()
        fresh = extra.get("fresh")
        if fresh and "pending" in fresh:  # the windows not yet served, in serving order
            starts = np.asarray(fresh["pending"], np.int64)  # (n,)
            starts = starts[~self.mask.overlaps(starts, self.seq_len + 1)]  # withdrawn since: dropped
            self._buffer, self._starts = self.queue.read_windows_at(starts, self.seq_len), starts
            self._order, self._taken = np.arange(starts.size), 0
            self._buffer_start = int(fresh["start"])
        elif fresh and int(fresh["windows"]) > int(fresh["taken"]):  # an earlier version's checkpoint
            start, count = int(fresh["start"]), int(fresh["windows"])
            windows, end, starts = self.queue.read_windows(start, count, self.seq_len, holdout=self.split,
                                                           return_starts=True)
            if end == position and windows.shape[0] == count:
                self._fill(windows, start, starts, taken=int(fresh["taken"]))
                self._withdraw_buffered()
        self._update_epoch()

    def _restore_best(self) -> None:
        """The best model's figure, from best.safetensors (absent or unreadable: none yet)."""
        try:
            best = self.checkpoints.load_best()
            if best is None:
                return
            value = float(best.extra["val_bits_per_byte"])
            self._best_holdout = int(best.extra["holdout_tokens"])
            self._best_key = str(best.extra.get("holdout_key", ""))
        except (CheckpointError, KeyError, TypeError, ValueError) as exc:
            self.log.warning("best_checkpoint_unreadable", path=str(self.checkpoints.best_path), error=str(exc))
            return
        self.figures.best_val_bits_per_byte, self.figures.best_step = value, best.step
        self.figures.holdout_tokens = self._best_holdout

    def snapshot(self, timeout: float) -> tuple[np.ndarray, int] | None:
        """A copy of the live weights and its step, taken on the training thread between two
        steps (so never half updated); None when it is not served within `timeout` seconds."""
        done, result = threading.Event(), []
        self._snapshots.append((done, result))
        return result[0] if done.wait(timeout) and result else None

    def _serve_snapshots(self) -> None:
        while self._snapshots and self.trainer is not None:
            done, result = self._snapshots.pop(0)
            result.append((self.trainer.params.copy(), self.trainer.step_count))
            done.set()

    @property
    def unsaved_steps(self) -> int:
        """Steps taken since the last checkpoint."""
        return self._since_checkpoint

    def shutdown(self) -> None:
        """Checkpoint what was trained since the last checkpoint, then join the engine's threads.
        Always logs `trainer_stopped` with the checkpoint the loop stands on (written now or
        earlier), so a stop's outcome never depends on when the last scheduled checkpoint fell."""
        if self.trainer is None:
            return
        saved = False
        try:
            if self._since_checkpoint > 0:
                saved = self.checkpoint(reason="shutdown") is not None
        finally:
            f = self.figures
            self.log.info("trainer_stopped", step=self.trainer.step_count, checkpoint_step=f.last_checkpoint_step,
                          checkpoint_path=f.last_checkpoint_path, saved=saved, unsaved_steps=self._since_checkpoint)
            if self.team is not None:
                from .team import params_digest

                self.log.info("replicas_released", step=self.trainer.step_count, ranks=self.ranks,
                              params_sha256=params_digest(self.trainer.params))
                self.team.release()  # the followers close their replicas too
            self.trainer.close()
            self.trainer = None

    # --- one step -----------------------------------------------------------------------------

    def run_once(self, now: float) -> float:
        """One training step if a batch can be built; returns how long the caller may sleep."""
        self._serve_snapshots()
        daemon = self.config.daemon
        B, T = self.config.train.batch_size * self.ranks, self.seq_len  # the batch of every rank
        step = self.trainer.step_count
        rng = np.random.default_rng([self.config.train.seed, 1, step])  # replay draws of this step
        if self._deferred is not None and self._since_checkpoint and self._checkpoint_due(now):
            self.checkpoint(reason="retry")  # a deferred checkpoint, idle or not
        if self.checkpoint_requested.is_set():
            self.checkpoint_requested.clear()
            self._checkpoint_on_request()
        if self.pause_requested != self.figures.paused:
            self._set_paused(self.pause_requested)
        if self.figures.paused:
            return PAUSED_POLL_SECONDS
        if now - self._mask_checked_at >= WITHDRAWAL_POLL_SECONDS:
            self._mask_checked_at = now
            self._follow_withdrawals()
        trained_end = self._buffer_start  # text before this offset has been trained on
        can_replay = trained_end > T
        credit = self._replay_credit + daemon.replay_fraction * B
        want_replay = min(int(credit), B) if can_replay else 0
        if self.figures.plateaued:
            end = self.queue.stream_end()
            if end <= self._plateau_end and daemon.idle == "sleep":
                return self._idle(True)  # nothing arrived since the plateau
            self.figures.plateaued, self._stale = False, 0
            self.log.info("training_resumed", reason="new_text", step=step, stream_tokens_before=self._plateau_end,
                          stream_tokens=end)
        fresh = self._take_fresh(B - want_replay)
        if (fresh.shape[0] == 0 and daemon.idle == "sleep" and daemon.max_passes
                and self.figures.epoch >= daemon.max_passes):
            self._plateau(now, reason="max_passes")
            return self._idle(True)
        shortfall = B - fresh.shape[0]
        trained_end = self._buffer_start  # a refill above moved it: everything before is trained
        replay = (self.trained.sample(shortfall, T, rng, end=trained_end, holdout=self.mask) if shortfall
                  else np.empty((0, T + 1), np.int32))
        if replay.shape[0] < shortfall:  # not enough data yet to fill a batch: wait for files
            self._untake(fresh.shape[0])
            return self._idle(True)
        if fresh.shape[0] and can_replay:  # the credit is the replay share owed, once replay can be had
            self._replay_credit = max(0.0, credit - replay.shape[0])
        windows = np.concatenate([fresh, replay]) if replay.shape[0] else fresh  # (B, T + 1)
        self._idle(False)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        try:
            stats = self.trainer.step(inputs, targets) if self.team is None else self.team.step(self.trainer, windows)
        except NonFiniteLoss as exc:
            self.log.error("train_step_failed", step=self.trainer.step_count, error=str(exc))
            return 0.0  # the batch that diverged is skipped (its windows count as taken)
        f = self.figures
        f.tokens_trained += fresh.shape[0] * T
        f.tokens_seen += stats.tokens
        f.step, f.loss = stats.step, stats.loss
        self._update_epoch()
        self._recent.append((stats.loss * targets.size, self.tokenizer.token_bytes(targets)))
        self._window_nats += self._recent[-1][0]
        self._window_bytes += self._recent[-1][1]
        self._since_checkpoint += 1
        self._window_tokens += stats.tokens
        self._losses.append(stats.loss)
        if stats.step % daemon.log_every == 0:
            elapsed = max(now - self._window_start, 1e-9) if now > self._window_start else stats.seconds
            f.tokens_per_s = self._window_tokens / elapsed
            self.log.info("train_step", step=stats.step, loss=round(float(np.mean(self._losses)), 4),
                          crystalline_loss=round(stats.crystalline_loss, 4), lr=stats.lr,
                          grad_norm=round(stats.grad_norm, 4), tokens_per_s=round(f.tokens_per_s, 1),
                          new_windows=int(fresh.shape[0]), replay_windows=int(replay.shape[0]),
                          bits_per_byte=round(self._window_nats / LN2 / max(self._window_bytes, 1), 4),
                          epoch=round(f.epoch, 3), dt_ms=round(stats.seconds * 1e3, 1))
            self._window_tokens, self._window_start, self._losses = 0, now, []
            self._window_nats, self._window_bytes = 0.0, 0
        checkpoint_due = self._checkpoint_due(now)
        if (checkpoint_due or stats.step - max(self._last_eval_step, 0) >= daemon.eval_every_steps
                or now - self._last_eval_at >= daemon.eval_every_seconds):
            self.evaluate(now)
        if checkpoint_due and self._since_checkpoint:  # (a plateau found above checkpoints itself)
            self.checkpoint(reason="schedule")
        return 0.0

    # --- new text: the shuffle buffer ----------------------------------------------------------

    def _fill(self, windows: np.ndarray, start: int, starts: np.ndarray, taken: int = 0) -> None:
        self._buffer, self._buffer_start, self._taken, self._starts = windows, start, taken, starts
        rng = np.random.default_rng([self.config.train.seed, 0, start])
        self._order = rng.permutation(windows.shape[0])

    def _take_fresh(self, count: int) -> np.ndarray:
        """Up to `count` windows of new text, refilling the shuffle buffer from the stream."""
        T = self.seq_len
        taken: list[np.ndarray] = []
        have = 0
        while have < count:
            if self._taken >= self._order.size:
                position = self.figures.position
                self._stream_end = self.queue.stream_end()
                if self._stream_end - position <= T:  # no complete window of new text: no read
                    self._buffer_start = position  # the buffer is used up: all before is trained
                    break
                self._follow_withdrawals()
                windows, end, starts = self.queue.read_windows(position, FRESH_BUFFER, T, holdout=self.mask,
                                                               return_starts=True)
                if windows.shape[0] == 0:
                    self.figures.position = self._buffer_start = end  # past any held-out or withdrawn stretch
                    break
                self._fill(windows, position, starts)
                self.figures.position = end
            n = min(count - have, self._order.size - self._taken)
            taken.append(self._buffer[self._order[self._taken : self._taken + n]])
            self._taken += n
            have += n
        return np.concatenate(taken) if taken else np.empty((0, T + 1), np.int32)

    def _follow_withdrawals(self) -> None:
        """Take up withdrawals made since the mask was read (a rewrite's ingest, `forget`)."""
        generation = self.queue.withdrawal_generation()
        if generation == self.mask.generation:
            return
        before = self.mask.withdrawn_tokens
        self.mask = self.queue.stream_mask(self.split)
        dropped = self._withdraw_buffered()
        self.trained.blank(self.mask)
        self.log.info("withdrawal_applied", generation=generation, withdrawn_tokens=self.mask.withdrawn_tokens,
                      new_tokens=self.mask.withdrawn_tokens - before, buffered_windows_dropped=dropped,
                      step=self.trainer.step_count if self.trainer is not None else 0)

    def _withdraw_buffered(self) -> int:
        """Drop the buffered windows not yet served that meet withdrawn text; returns how many.
        The windows left keep their serving order."""
        pending = self._order[self._taken :]  # (n,) buffer rows still to serve, in order
        if pending.size == 0:
            return 0
        gone = self.mask.overlaps(self._starts[pending], self.seq_len + 1)  # (n,)
        if not gone.any():
            return 0
        self._order = np.concatenate([self._order[: self._taken], pending[~gone]])
        return int(gone.sum())

    def _untake(self, count: int) -> None:
        """Give back the last `count` windows taken from the current buffer (a batch not built)."""
        self._taken = max(0, self._taken - count)

    def _update_epoch(self) -> None:
        """Passes over the trainable text stored so far: all tokens through the model over the
        stream's length less its held-out regions (so 0 to 1 during the first pass)."""
        split, end = self.split, self._stream_end
        held = 0 if split is None else len(split.blocks(end)) * (split.block_tokens + 1)
        withdrawn = 0 if self.mask is None else self.mask.withdrawn_tokens
        self.figures.epoch = self.figures.tokens_seen / max(1, end - held - withdrawn)

    # --- evaluation and the plateau rule -------------------------------------------------------

    def _measure(self, holdout) -> float:
        """Bits per byte of the trainer's current parameters on a HoldoutSet."""
        B = self.config.train.batch_size
        nats, n_bytes = 0.0, 0
        for group in (holdout.windows, holdout.tail):
            for a in range(0, group.shape[0], B):
                rows = group[a : a + B]
                if rows.shape[1] < 2:
                    continue
                loss, _ = self.trainer.evaluate(rows[:, :-1], rows[:, 1:])
                nats += loss
                n_bytes += self.tokenizer.token_bytes(rows[:, 1:])
        return nats / LN2 / max(n_bytes, 1)

    def evaluate(self, now: float) -> float | None:
        """Measure held-out bits per byte, record it, keep the best model, apply the plateau rule.
        Returns the figure, or None while the stream holds no complete held-out block."""
        self._last_eval_at, self._last_eval_step = now, self.trainer.step_count
        t0 = self.clock()
        holdout = self.queue.holdout_set(self.mask, self.seq_len)
        if holdout.blocks == 0:
            if not self._no_holdout_logged:
                self.log.info("eval_skipped", reason="no_holdout", step=self.trainer.step_count,
                              stream_tokens=self.figures.position)
                self._no_holdout_logged = True
            return None
        f, daemon = self.figures, self.config.daemon
        if f.best_val_bits_per_byte is not None and (
                self._best_holdout != holdout.tokens or (self._best_key and self._best_key != holdout.key)):
            self._remeasure_best(holdout)  # grown by new text, or changed by a withdrawal
        f.holdout_tokens = holdout.tokens
        # the model handed out is measured: the cooled copy when there is one (the live weights
        # are then not measured at all, which would cost as much again), else the live model
        cooled, cooldown_steps, live = self._cool_down(), 0, None
        if cooled is None and self._cooldown_cut:
            # a stop cut the cool-down short: measuring the live weights instead would cost the
            # stop seconds and could put a copy that was never cooled in best.safetensors (it may
            # beat the last cooled copy on the held-out text, yet not what the finished cool-down
            # would have handed out); the next start evaluates again
            self.log.info("eval_skipped", reason="stopping", step=self.trainer.step_count,
                          stream_tokens=self.figures.position)
            return None
        if cooled is not None:
            cooldown_steps = cooled[3]
            with self.trainer.parameters_of(cooled[0]):
                value = self._measure(holdout)
        else:
            live = value = self._measure(holdout)
        best = f.best_val_bits_per_byte
        improved = best is None or value < best - daemon.plateau_margin
        self._stale = 0 if improved else self._stale + 1
        is_best = best is None or value < best
        recent_nats, recent_bytes = sum(n for n, _ in self._recent), sum(b for _, b in self._recent)
        f.val_bits_per_byte = value
        f.train_bits_per_byte = recent_nats / LN2 / recent_bytes if recent_bytes else None
        if is_best:
            f.best_val_bits_per_byte, f.best_step, self._best_holdout = value, self.trainer.step_count, holdout.tokens
            self._best_key = holdout.key
        seconds = self.clock() - t0
        self._write("evaluation", lambda: self.queue.record_evaluation(
            step=self.trainer.step_count, epoch=f.epoch, tokens_trained=f.tokens_trained, val_bits_per_byte=value,
            train_bits_per_byte=f.train_bits_per_byte, holdout_tokens=holdout.tokens, seconds=seconds, best=is_best))
        self.log.info("eval_finished", step=self.trainer.step_count, epoch=round(f.epoch, 3),
                      tokens_trained=f.tokens_trained, val_bits_per_byte=round(value, 4),
                      live_val_bits_per_byte=None if live is None else round(live, 4), cooldown_steps=cooldown_steps,
                      train_bits_per_byte=None if f.train_bits_per_byte is None else round(f.train_bits_per_byte, 4),
                      best_val_bits_per_byte=round(f.best_val_bits_per_byte, 4), improved=improved,
                      stale=self._stale, holdout_tokens=holdout.tokens, seconds=round(seconds, 3))
        if is_best:
            self._write("checkpoint", lambda: self._save_best(value, holdout, cooled))
        if self._stale >= daemon.plateau_patience and not f.plateaued and daemon.idle == "sleep":
            self._plateau(now, reason="no_improvement")
        return value

    def _cool_down(self):
        """A copy of the live model trained `cooldown_fraction` times the steps since the last
        cool-down more, on windows drawn from the trained text, with the rate decayed linearly
        to 0 (warmup-stable-decay: a decayed copy scores far better than the weights at a held
        rate). Returns (params, adam_m, adam_v, steps), or None when off or there is nothing to
        cool. The live model is restored exactly, so its training goes on undisturbed."""
        from engine.schedule import learning_rate

        t, daemon = self.trainer, self.config.daemon
        self._cooldown_cut = False
        steps = int(round(daemon.cooldown_fraction * (t.step_count - self._last_cooldown_step)))
        if steps < 1 or self._buffer_start <= self.seq_len:
            return None
        B, T = self.config.train.batch_size * self.ranks, self.seq_len  # the batch of every rank
        saved = t.state_copy()
        start = t.step_count
        lr = learning_rate(t.train_config, start)
        done = 0
        if self.team is not None:
            self.team.hold()  # the other ranks keep their state too, and cool their replicas in step
        try:
            for i in range(steps):
                if self.stopping():  # a half-cooled copy is not worth keeping: stop promptly
                    done, self._cooldown_cut = 0, True
                    break
                rng = np.random.default_rng([self.config.train.seed, 2, start, i])
                windows = self.trained.sample(B, T, rng, end=self._buffer_start, holdout=self.mask)
                if windows.shape[0] < B:
                    break
                rate = lr * (1.0 - i / steps)
                if self.team is None:
                    t.step(windows[:, :-1], windows[:, 1:], lr=rate)
                else:
                    self.team.step(t, windows, lr=rate)
                done += 1
            cooled = (t.params.copy(), t.m.copy(), t.v.copy(), done) if done else None
        except NonFiniteLoss as exc:
            self.log.error("cooldown_failed", step=start, error=str(exc))
            cooled = None
        finally:
            t.restore_state(saved)
            if self.team is not None:
                self.team.unhold()
        if cooled is not None:
            self._last_cooldown_step = start
        return cooled

    def _remeasure_best(self, holdout) -> None:
        """The held-out set changed: measure the best model again on it, so the plateau rule and
        the choice of best compare like with like."""
        f = self.figures
        before = f.best_val_bits_per_byte
        try:
            best = self.checkpoints.load_best()
            if best is None:
                raise CheckpointError(self.checkpoints.best_path, "missing")
            with self.trainer.parameters_of(best.params):
                value = self._measure(holdout)
        except (CheckpointError, ValueError) as exc:
            self.log.warning("best_checkpoint_unreadable", path=str(self.checkpoints.best_path), error=str(exc))
            f.best_val_bits_per_byte = f.best_step = None
            value = None
        self.log.info("holdout_changed", holdout_tokens_before=self._best_holdout, holdout_tokens=holdout.tokens,
                      best_val_bits_per_byte_before=before,
                      best_val_bits_per_byte=None if value is None else round(value, 4))
        f.best_val_bits_per_byte, self._best_holdout, self._best_key = value, holdout.tokens, holdout.key
        if value is None:
            f.best_step = None
            return
        # the same weights, with their figure on the new set (so a restart compares like with like)
        self._write("checkpoint", lambda: self.checkpoints.write_best(
            step=best.step, model_config=best.model_config, params=best.params, m=best.m, v=best.v,
            train_state=best.train_state,
            extra=best.extra | {"val_bits_per_byte": value, "holdout_tokens": holdout.tokens,
                                "holdout_key": holdout.key}))

    def _save_best(self, value: float, holdout, cooled=None) -> None:
        """Write best.safetensors (atomically), with its held-out figure: the cooled copy when
        there is one, else the live model."""
        holdout_tokens = holdout.tokens
        extra = self.checkpoint_extra() | {"val_bits_per_byte": value, "holdout_tokens": holdout_tokens,
                                 "holdout_key": holdout.key,
                                 "cooldown_steps": 0 if cooled is None else cooled[3]}
        t = self.trainer
        params, m, v = (t.params, t.m, t.v) if cooled is None else cooled[:3]
        path = self.checkpoints.write_best(step=t.step_count, model_config=t.model_config, params=params, m=m, v=v,
                                           train_state=t.train_state(), extra=extra)
        self.log.info("best_checkpoint_saved", step=self.trainer.step_count, path=str(path),
                      val_bits_per_byte=round(value, 4), holdout_tokens=holdout_tokens)

    def _plateau(self, now: float, reason: str) -> None:
        f = self.figures
        f.plateaued = True
        self._plateau_end = self.queue.stream_end()  # text beyond this wakes the loop
        self.log.info("training_plateaued", reason=reason, step=self.trainer.step_count, epoch=round(f.epoch, 3),
                      best_val_bits_per_byte=f.best_val_bits_per_byte, best_step=f.best_step,
                      evaluations=self._stale, idle=self.config.daemon.idle)
        if self._since_checkpoint > 0:
            self.checkpoint(reason="plateau")

    def _checkpoint_on_request(self) -> None:
        """SIGUSR1: write a checkpoint now, or say which one already holds every step."""
        if self._since_checkpoint:
            self.checkpoint(reason="requested")
        else:
            self.log.info("checkpoint_requested", saved=False, step=self.trainer.step_count,
                          checkpoint_step=self.figures.last_checkpoint_step,
                          checkpoint_path=self.figures.last_checkpoint_path)

    def _set_paused(self, paused: bool) -> None:
        """Pause (after checkpointing the steps since the last checkpoint) or resume."""
        if paused and self._since_checkpoint:
            self.checkpoint(reason="paused")
        self.figures.paused = paused
        self.log.info("training_paused" if paused else "training_unpaused", step=self.trainer.step_count,
                      checkpoint_step=self.figures.last_checkpoint_step)

    def _idle(self, idle: bool) -> float:
        if idle and not self.figures.idle:
            self.log.info("trainer_idle", step=self.figures.step, position=self.figures.position,
                          plateaued=self.figures.plateaued)
        self.figures.idle = idle
        return 1.0 if idle else 0.0

    # --- checkpoints ---------------------------------------------------------------------------

    def checkpoint_extra(self) -> dict:
        """The loop's state that a checkpoint carries beside the weights (its `extra`), now."""
        f = self.figures
        return {
            "command": self.command, "tokenizer": self.tokenizer.identity(), "stream_position": f.position,
            "tokens_trained": f.tokens_trained, "tokens_seen": f.tokens_seen,
            "fresh": {"start": self._buffer_start, "windows": int(self._order.size), "taken": self._taken,
                      "pending": self._starts[self._order[self._taken :]].tolist()},
            "replay_credit": self._replay_credit,
            "plateau": {"stale": self._stale, "plateaued": f.plateaued, "stream_end": self._plateau_end},
            "evaluated": self._last_eval_step == self.trainer.step_count,
            "last_cooldown_step": self._last_cooldown_step,
            "val_bits_per_byte": f.val_bits_per_byte,
            "stream_digest": stream_digest(self.queue, f.position),
        }

    def checkpoint(self, reason: str) -> Path | None:
        """Evaluate (unless just done), write the checkpoint file durably, then commit it with the
        cursor in one transaction, then delete this loop's rolling files beyond keep_checkpoints.

        A write blocked by a full disk or a read-only state (WriteState.report) defers it: no
        file is left behind (a file written but not committed is removed: the two go together),
        training goes on in memory, and run_once tries again once writing works or the next
        checkpoint is due. Returns the path, or None when deferred."""
        if self._last_eval_step != self.trainer.step_count and reason != "shutdown":
            self.evaluate(self.clock())
        t0 = self.clock()
        step, f = self.trainer.step_count, self.figures
        loss = None if f.loss is None or not math.isfinite(f.loss) else float(f.loss)
        try:
            path = self.checkpoints.commit(self.trainer, extra=self.checkpoint_extra(),
                                           stream_position=f.position, tokens_trained=f.tokens_trained, loss=loss)
        except Exception as exc:  # the store leaves no file of a checkpoint it could not commit
            if not self.writes.report("checkpoint", exc):
                raise
            self._deferred = (self.writes.generation, step, self.clock())
            self.log.warning("checkpoint_deferred", step=step, reason=reason, unsaved_steps=self._since_checkpoint,
                             blocked=self.writes.blocked, error=f"{type(exc).__name__}: {exc}")
            return None
        self._since_checkpoint, self._deferred = 0, None
        self._last_checkpoint_at = self.clock()
        f.last_checkpoint_step, f.last_checkpoint_time, f.last_checkpoint_path = step, self._last_checkpoint_at, str(path)
        daemon = self.config.daemon
        self._write("checkpoint", lambda: self.checkpoints.prune(daemon.keep_checkpoints, path, self.command,
                                                                 max_bytes=daemon.checkpoints_max_mb * MB))
        self.log.info("checkpoint_saved", step=step, path=str(path), reason=reason,
                      stream_position=f.position, tokens_trained=f.tokens_trained,
                      ms=round((self.clock() - t0) * 1e3, 1))
        return path

    def _checkpoint_due(self, now: float) -> bool:
        """Every checkpoint_every_steps steps or checkpoint_every_seconds; after a deferred one,
        as soon as writing works again (writes.generation grew) or a full interval later."""
        daemon = self.config.daemon
        if self._deferred is None:
            return (self._since_checkpoint >= daemon.checkpoint_every_steps
                    or now - self._last_checkpoint_at >= daemon.checkpoint_every_seconds)
        self.writes.recheck(now)  # rate-limited by the WriteState; the supervisor may beat us to it
        generation, step, at = self._deferred
        return (self.writes.generation > generation or self.trainer.step_count - step >= daemon.checkpoint_every_steps
                or now - at >= daemon.checkpoint_every_seconds)

    def _write(self, part: str, write):
        """Run `write()`; a write blocked by a full disk or a read-only state is reported and
        skipped (returns None), any other failure raises."""
        try:
            return write()
        except Exception as exc:
            if self.writes.report(part, exc):
                return None
            raise
