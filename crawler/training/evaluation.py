"""How good the model is, and whether it is still getting better: `Evaluation` measures held-out
bits per byte, cools a copy of the model down before measuring it, keeps the best model so far,
and applies the plateau rule.

Each evaluation measures held-out bits per byte, overall and per source (the blocks grouped by the
source of the document each starts in: crawler/training/sources.py), records both in the store's
history with the shape of the model measured (`measured_model`: where it changes from one row to
the next, the model grew, and the row says at which step) and logs `eval_finished`. The model
measured is a cool-down copy (`cooldown_fraction`): the live model trained on further, with the
rate decayed to 0, then put back exactly, so live training goes on undisturbed. The best model so
far is kept as STATE_DIR/checkpoints/best.safetensors, apart from the rolling checkpoints. When
`plateau_patience` evaluations in a row fail to beat the best by `plateau_margin` (`plateau_due`),
the loop plateaus (`plateau`): with `idle = "sleep"` it waits until new text arrives
(`stays_plateaued`). When the held-out set grows (new text) or changes (a withdrawal, or blocks
held out for a new source), the best model is measured again on the new set, so the plateau rule
always compares like with like. The best is judged on the overall figure over the whole held-out
set as it stands (the split's base, the blocks per source and those spread over the stream, each
weighted by the stretch of stream it stands for, so the figure is one over all the text stored
and not over its first 2.6M tokens; where there are several sources, each source's figure
weighted by its weight in the batches, mixing.py), never on one source's: a model that learns a new source at
the cost of an old one is better only if the whole set says so, and the figures per source show
the trade.

Not when to evaluate (crawler/training/schedule.py), nor the rolling checkpoints (the worker
commits them; this writes only best.safetensors). Relies on the engine's Trainer (`evaluate`,
`parameters_of`, `state_copy`/`restore_state`), on crawler.training.batches for the mask, the
trained text a cool-down draws from and the grouping of paths into sources, on the
CheckpointStore for best.safetensors, on the store's `holdout_set` and evaluation history, and
on the worker for the loop's checkpoint state (`checkpoint_extra`) and for `write`, which skips a
write blocked by a full disk.
"""

from __future__ import annotations

import numpy as np

from engine import CheckpointError, NonFiniteLoss
from engine.units import LN2

from .batches import Batches
from .figures import TrainingFigures


class Evaluation:
    """The held-out measure, the cool-down copy, the best model and the plateau rule of one loop.

    `write(part, fn)` runs a store or file write and returns None when a full disk or a read-only
    state blocks it; `checkpoint_extra()` is the loop's state a checkpoint carries; `stopping()`
    is true once a stop was asked for (a cool-down gives way to it); `team` is the ranks under
    MPI (a cool-down steps them all with the whole batch) or None."""

    def __init__(self, trainer, batches: Batches, figures: TrainingFigures, train_config, queue, tokenizer,
                 checkpoints, log, clock, write, checkpoint_extra, stopping, team=None):
        self.trainer, self.batches, self.figures, self.train_config = trainer, batches, figures, train_config
        self.queue, self.tokenizer, self.checkpoints, self.log, self.clock = queue, tokenizer, checkpoints, log, clock
        self.write, self.checkpoint_extra, self.stopping, self.team = write, checkpoint_extra, stopping, team
        self.ranks = 1 if team is None else team.size
        self.stale = 0  # evaluations since the last one that beat the best by the margin
        self._plateau_end = 0  # the stream's length when training plateaued
        self._last_cooldown_step = 0  # the live step the last cool-down started from
        self._cooldown_cut = False  # the last cool-down gave way to a stop
        self._best_holdout = 0  # the held-out size the best figure was measured on
        self._best_key = ""  # ... and the held-out blocks it was measured on (HoldoutSet.key)
        self._no_holdout_logged = False

    # --- one evaluation ----------------------------------------------------------------------------

    def measure(self, holdout, by_source: dict | None = None) -> float:
        """Bits per byte of the trainer's current parameters on a HoldoutSet. With `by_source`, it
        is filled with each source's {name: (bits per byte, held-out tokens)}: the windows are
        scored source by source (batches of one source's rows), which sums to the same figure.
        Where the set has weights (a split with spread blocks), each block's nats and bytes count
        as often as its weight says: the figure is one over the whole stream. Where the batches
        give each source a weight (mixing.py, `shares_of`), the figure is the sources' figures
        weighted by it; otherwise the sum over every source, by bytes."""
        B = self.train_config.batch_size
        n = holdout.windows.shape[0] // max(holdout.blocks, 1)  # windows per block (block i: rows i*n ..)
        S = holdout.tokens // max(holdout.blocks, 1)  # targets per block
        weights = holdout.weights  # (blocks,) or None
        nats, n_bytes = 0.0, 0
        figures: dict[str, float] = {}
        for name, blocks in self._groups(holdout).items():
            windows = (blocks[:, None] * n + np.arange(n)).ravel()  # (b*n,) this source's rows of windows
            tails = blocks if holdout.tail.shape[0] else blocks[:0]  # (b,) its rows of tail, if any
            source_nats, source_bytes = 0.0, 0
            for group, rows, owner in ((holdout.windows, windows, windows // max(n, 1)), (holdout.tail, tails, tails)):
                for a in range(0, rows.size, B):
                    batch = group[rows[a : a + B]]  # (<= B, T + 1)
                    if batch.shape[1] < 2:
                        continue
                    if weights is None:
                        loss, _ = self.trainer.evaluate(batch[:, :-1], batch[:, 1:])
                        source_bytes += self.tokenizer.token_bytes(batch[:, 1:])
                    else:
                        w = weights[owner[a : a + B]]  # (<= B,) each row's block's weight
                        loss, _ = self.trainer.evaluate(batch[:, :-1], batch[:, 1:], w)
                        source_bytes += float(np.dot([self.tokenizer.token_bytes(row) for row in batch[:, 1:]], w))
                    source_nats += loss
            nats, n_bytes = nats + source_nats, n_bytes + source_bytes
            figures[name] = source_nats / LN2 / max(source_bytes, 1)
            if by_source is not None:
                by_source[name] = (figures[name], int(blocks.size) * S)
        mixing = getattr(self.batches, "mixing", None)
        shares = mixing.shares_of(figures) if mixing is not None else None
        if shares is not None:
            return float(sum(shares[name] * bits for name, bits in figures.items()))
        return nats / LN2 / max(n_bytes, 1)

    def _groups(self, holdout) -> dict[str, np.ndarray]:
        """The held-out blocks (their indices in the set, ascending) of each source, by name."""
        source_of = self.batches.sources
        names = ([source_of(path) for path in holdout.paths] if holdout.paths and source_of is not None
                 else ["all"] * holdout.blocks)
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name, []).append(i)
        return {name: np.asarray(blocks, np.int64) for name, blocks in sorted(groups.items())}

    def run(self, daemon, train_bits_per_byte: float | None) -> float | None:
        """Measure held-out bits per byte, record it and keep the best model (the plateau rule's
        count goes with it). Returns the figure, or None while the stream holds no complete
        held-out block or a stop cut the cool-down short. `train_bits_per_byte` is the recent
        training figure reported beside it."""
        t0 = self.clock()
        step, seq_len = self.trainer.step_count, self.batches.seq_len
        holdout = self.queue.holdout_set(self.batches.mask, seq_len)
        if holdout.blocks == 0:
            if not self._no_holdout_logged:
                self.log.info("eval_skipped", reason="no_holdout", step=step, stream_tokens=self.figures.position)
                self._no_holdout_logged = True
            return None
        f = self.figures
        if f.best_val_bits_per_byte is not None and (
                self._best_holdout != holdout.tokens or (self._best_key and self._best_key != holdout.key)):
            self._remeasure_best(holdout)  # grown by new text, or changed by a withdrawal
        f.holdout_tokens = holdout.tokens
        # the model handed out is measured: the cooled copy when there is one (the live weights
        # are then not measured at all, which would cost as much again), else the live model
        cooled, cooldown_steps, live = self._cool_down(daemon.cooldown_fraction), 0, None
        if cooled is None and self._cooldown_cut:
            # a stop cut the cool-down short: measuring the live weights instead would cost the
            # stop seconds and could put a copy that was never cooled in best.safetensors (it may
            # beat the last cooled copy on the held-out text, yet not what the finished cool-down
            # would have handed out); the next start evaluates again
            self.log.info("eval_skipped", reason="stopping", step=step, stream_tokens=self.figures.position)
            return None
        sources: dict[str, tuple[float, int]] = {}  # filled by the measure of the model handed out
        if cooled is not None:
            cooldown_steps = cooled[3]
            model = measured_model(cooled[4], cooled[0].size, self.trainer.growth)
            with self.trainer.parameters_of(cooled[0]):
                value = self.measure(holdout, sources)
        else:
            model = measured_model(self.trainer.model_config, self.trainer.params.size, self.trainer.growth)
            live = value = self.measure(holdout, sources)
        best = f.best_val_bits_per_byte
        improved = best is None or value < best - daemon.plateau_margin
        self.stale = 0 if improved else self.stale + 1
        is_best = best is None or value < best
        f.val_bits_per_byte = value
        f.train_bits_per_byte = train_bits_per_byte
        if is_best:
            f.best_val_bits_per_byte, f.best_step, self._best_holdout = value, step, holdout.tokens
            self._best_key = holdout.key
        seconds = self.clock() - t0
        self.write("evaluation", lambda: self.queue.record_evaluation(
            step=step, epoch=f.epoch, tokens_trained=f.tokens_trained, val_bits_per_byte=value,
            train_bits_per_byte=f.train_bits_per_byte, holdout_tokens=holdout.tokens, seconds=seconds, best=is_best,
            sources=sources or None, model=model))
        self.log.info("eval_finished", step=step, epoch=round(f.epoch, 3),
                      tokens_trained=f.tokens_trained, val_bits_per_byte=round(value, 4),
                      live_val_bits_per_byte=None if live is None else round(live, 4), cooldown_steps=cooldown_steps,
                      train_bits_per_byte=None if f.train_bits_per_byte is None else round(f.train_bits_per_byte, 4),
                      best_val_bits_per_byte=round(f.best_val_bits_per_byte, 4), improved=improved,
                      stale=self.stale, holdout_tokens=holdout.tokens, seconds=round(seconds, 3),
                      sources={name: {"val_bits_per_byte": round(bits, 4), "holdout_tokens": tokens}
                               for name, (bits, tokens) in sources.items()})
        if is_best:
            self.write("checkpoint", lambda: self._save_best(value, holdout, cooled))
        return value

    def _cool_down(self, fraction: float):
        """A copy of the live model trained `fraction` times the steps since the last cool-down
        more, on windows drawn from the trained text, with the rate decayed linearly to 0
        (warmup-stable-decay: a decayed copy scores far better than the weights at a held rate).
        Returns (params, adam_m, adam_v, steps, model_config), or None when off or there is nothing
        to cool.
        The live model is restored exactly, so its training goes on undisturbed."""
        from engine.schedule import learning_rate

        t, batches = self.trainer, self.batches
        self._cooldown_cut = False
        steps = int(round(fraction * (t.step_count - self._last_cooldown_step)))
        if steps < 1 or batches.trained_end <= batches.seq_len:
            return None
        B, T = self.train_config.batch_size * self.ranks, batches.seq_len  # the batch of every rank
        passes = batches.plan(0.0).passes  # each source its share, as further passes draw
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
                rng = np.random.default_rng([self.train_config.seed, 2, start, i])
                windows = batches.trained.sample(B, T, rng, end=batches.trained_end, holdout=batches.mask,
                                                 mix=passes)
                if windows.shape[0] < B:
                    break
                rate = lr * (1.0 - i / steps)
                if self.team is None:
                    t.step(windows[:, :-1], windows[:, 1:], lr=rate)
                else:
                    self.team.step(t, windows, lr=rate)
                done += 1
            # with its model config: a copy is never written under another shape (a growth after it)
            cooled = (t.params.copy(), t.m.copy(), t.v.copy(), done, t.model_config) if done else None
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

    # --- the best model ----------------------------------------------------------------------------

    def restore_best(self) -> None:
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

    def _remeasure_best(self, holdout) -> None:
        """The held-out set changed: measure the best model again on it, so the plateau rule and
        the choice of best compare like with like."""
        f = self.figures
        before = f.best_val_bits_per_byte
        try:
            best = self.checkpoints.load_best()
            if best is None:
                raise CheckpointError(self.checkpoints.best_path, "missing")
            if best.model_config.n_layer != self.trainer.model_config.n_layer:
                # the model grew since (crawler/training/growth.py): this trainer cannot run the
                # best's shape, and the grown model computed the old one's function when it grew,
                # so its figure, measured next, is the best from here on
                value = None
            else:
                with self.trainer.parameters_of(best.params):
                    value = self.measure(holdout)
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
        self.write("checkpoint", lambda: self.checkpoints.write_best(
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
        model_config = t.model_config if cooled is None else cooled[4]  # the copy's own shape
        path = self.checkpoints.write_best(step=t.step_count, model_config=model_config, params=params, m=m, v=v,
                                           train_state=t.train_state(), extra=extra)
        self.log.info("best_checkpoint_saved", step=t.step_count, path=str(path),
                      val_bits_per_byte=round(value, 4), holdout_tokens=holdout_tokens)

    # --- the plateau rule --------------------------------------------------------------------------

    def plateau_due(self, daemon) -> bool:
        """`plateau_patience` evaluations in a row without beating the best by the margin, while
        not plateaued already, with `idle = "sleep"`."""
        return self.stale >= daemon.plateau_patience and not self.figures.plateaued and daemon.idle == "sleep"

    def plateau(self, reason: str, idle: str) -> None:
        """Mark the loop plateaued at the stream's present length and log `training_plateaued`."""
        f = self.figures
        f.plateaued = True
        self._plateau_end = self.queue.stream_end()  # text beyond this wakes the loop
        self.log.info("training_plateaued", reason=reason, step=self.trainer.step_count, epoch=round(f.epoch, 3),
                      best_val_bits_per_byte=f.best_val_bits_per_byte, best_step=f.best_step,
                      evaluations=self.stale, idle=idle)

    def stays_plateaued(self, step: int, idle: str) -> bool:
        """True while no text arrived since the plateau (with `idle = "sleep"`); else the loop
        wakes: the plateau and the count of evaluations without improvement are cleared."""
        end = self.queue.stream_end()
        if end <= self._plateau_end and idle == "sleep":
            return True
        self.figures.plateaued, self.stale = False, 0
        self.log.info("training_resumed", reason="new_text", step=step, stream_tokens_before=self._plateau_end,
                      stream_tokens=end)
        return False

    # --- a checkpoint's part -----------------------------------------------------------------------

    def state(self) -> dict:
        """The plateau counters and the last cool-down's step, for a checkpoint's `extra`."""
        return {"plateau": {"stale": self.stale, "plateaued": self.figures.plateaued, "stream_end": self._plateau_end},
                "last_cooldown_step": self._last_cooldown_step}

    def restore(self, extra: dict) -> None:
        """Take up a checkpoint's `state()` (its `extra`)."""
        plateau = extra.get("plateau", {})
        self.stale = int(plateau.get("stale", 0))
        self.figures.plateaued = bool(plateau.get("plateaued", False))
        self._plateau_end = int(plateau.get("stream_end", 0))
        self._last_cooldown_step = int(extra.get("last_cooldown_step", 0))


def measured_model(config, parameters: int, growth: list[dict]) -> dict:
    """The model an evaluation measured, for the history: its shape, its parameter count, and the
    growth that gave it this shape (the step it grew at and the depth it grew from, from the newest
    of the trainer's growth records, engine.Trainer.grow, that ends at this depth; both None for a
    model born with it). Every row carries it, so the history alone says where each shape began:
    `crystalline plot` and the page mark the growths from it."""
    grown = next((r for r in reversed(growth) if (r.get("new") or {}).get("n_layer") == config.n_layer), None)
    return {"d_model": config.d_model, "n_head": config.n_head, "n_layer": config.n_layer,
            "parameters": int(parameters), "grown_at_step": None if grown is None else grown.get("step"),
            "grown_from_layers": None if grown is None else (grown.get("old") or {}).get("n_layer")}
