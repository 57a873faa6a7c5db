"""The training loop's growth: `Grower` hands the growth policy each evaluation with the figures
it weighs, and grows the live model when the policy decides, or when `crystalline grow` asks.

A growth, between two steps (`grow`): held-out bits per byte of the live weights just before,
then `Trainer.grow` on every rank (the team's GROW under MPI, so "sync" ranks stay
bit-identical), then the same measure just after, which equals the one before (engine/grow.py:
the grown model computes the old one's logits to the bit); then `model_grown` with both figures,
the old and new shape and parameter counts, the step and the reason. The loop's parts learn of it
here: the plateau count starts again (the grown model gets its own patience), the step times and
the figures the page and `status` show take the new shape. The growth record itself lives in the
engine's train_state, which every later checkpoint carries; the worker writes one right after.
The evaluation history learns of it from the next evaluation on, whose row holds the new shape
and the step it grew at (evaluation.py, `measured_model`); no row of its own, since the figures
measured here are the live weights', not the cooled copy's the history's curve is made of.

Between growths it keeps the policy's history (`Point`s, the last doubling of tokens seen), which
a checkpoint's `extra` carries as ages (`state` / `restore`), so a restart judges the curve as an
uninterrupted run would. The policy is built from the configuration at each evaluation ([growth]
and where [model] n_layer was set; SIGHUP may change them), unless one is handed in (tests script
one). Flat but held back by a limit, the policy's reason is logged once a depth (`growth_declined`).

Not the rule (crawler/training/growth.py), nor the maths (engine/grow.py), nor the checkpoint
(the worker's). Relies on the worker's Trainer, Evaluation (`measure`, the plateau count
`stale`), Batches (the held-out mask, the trainable text), TrainingFigures and StepLog, the store's
held-out set, the team under MPI, and the worker's clock.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .growth import Assessment, Decision, GrowthPolicy, Point, points_restored, points_state, recent

STATE_KEY = "growth_history"  # in a checkpoint's extra


class Grower:
    """One loop's growth. `policy` (anything with `decide(history, now)`, and optionally `assess`)
    replaces the configured GrowthPolicy; `config` is read at each evaluation."""

    def __init__(self, trainer, evaluation, batches, figures, steps, queue, config, log, clock, team=None,
                 policy=None):
        self.trainer, self.evaluation, self.batches, self.figures = trainer, evaluation, batches, figures
        self.steps, self.queue, self.config, self.log, self.clock = steps, queue, config, log, clock
        self.team, self.policy = team, policy
        self.points: list[Point] = []
        self.depth_since = clock()  # when the present depth began, on the loop's clock
        growth = trainer.growth
        self.depth_tokens = int(growth[-1].get("tokens_seen", 0)) if growth else 0
        self._declined: set[str] = set()  # the reasons logged at the present depth
        self.show_shape()

    @property
    def count(self) -> int:
        """Growths of the model so far (the engine's records)."""
        return len(self.trainer.growth)

    def current_policy(self):
        return self.policy or GrowthPolicy.from_config(self.config.growth, self.config.depth_set_in)

    def describe(self) -> str:
        """The policy in one line, for `trainer_ready`."""
        describe = getattr(self.current_policy(), "describe", None)
        return describe() if describe else "scripted"

    def show_shape(self) -> None:
        """The figures' shape and growths, from the trainer (at the start, and after a growth)."""
        t, f = self.trainer, self.figures
        f.n_layer, f.parameters = t.model_config.n_layer, int(t.params.size)
        f.growths = [{"step": r.get("step"), "tokens_seen": r.get("tokens_seen"),
                      "from": (r.get("old") or {}).get("n_layer"), "to": (r.get("new") or {}).get("n_layer"),
                      "parameters": (r.get("new") or {}).get("parameters")} for r in t.growth]

    # --- after an evaluation --------------------------------------------------------------------

    def after_evaluation(self, now: float, value: float) -> dict | None:
        """Record the evaluation (`value`, held-out bits per byte of the model handed out) and grow
        when the policy decides; returns the growth record, or None."""
        if self.policy is None and not self.config.growth.enabled:
            return None  # off: no history kept, none carried in checkpoints
        policy = self.current_policy()
        self.points = recent(self.points + [self._point(now, value)])
        assess = getattr(policy, "assess", None)
        found = assess(self.points, now) if assess else Assessment(policy.decide(self.points, now), "", False, None)
        if found.decision is None:
            if found.flat and found.why_not not in self._declined:
                self._declined.add(found.why_not)
                last = self.points[-1]
                self.log.info("growth_declined", reason=found.why_not, step=last.step, n_layer=last.n_layer,
                              slope=None if found.slope is None else round(found.slope, 5),
                              passes=round(last.passes, 3), stored_tokens=last.stored_tokens,
                              parameters=last.parameters)
            return None
        return self.grow(found.decision.add, found.decision.reason, trigger="policy", decision=found.decision)

    def _point(self, now: float, value: float) -> Point:
        from engine import count_parameters

        t, f = self.trainer, self.figures
        config = t.model_config
        block = count_parameters(dataclasses.replace(config, n_layer=config.n_layer + 1)) - count_parameters(config)
        # a worker's activations and gradient, the weights with both moments, and the cool-down's
        # copy of the three: what the trainer holds at its largest
        memory_mb = t.threads * t.memory_per_thread_mb + 6 * t.params.nbytes / 1e6
        return Point(time=now, step=t.step_count, tokens_seen=f.tokens_seen, val_bits_per_byte=float(value),
                     passes=float(f.epoch), stored_tokens=int(self.batches.trainable_tokens),
                     n_layer=config.n_layer, parameters=int(t.params.size), block_parameters=block,
                     step_seconds=self.steps.step_seconds() or 0.0, memory_mb=memory_mb,
                     stale=int(self.evaluation.stale), depth_since=self.depth_since, depth_tokens=self.depth_tokens)

    # --- the growth -----------------------------------------------------------------------------

    def grow(self, add: int, reason: str, trigger: str, decision: Decision | None = None) -> dict:
        """Grow the live model by `add` blocks between two steps, measured just before and just
        after, on every rank; log `model_grown`; returns the engine's growth record. Raises
        engine.ConfigError for a bad `add`, before anything changes."""
        t, f = self.trainer, self.figures
        t0 = self.clock()
        holdout = self.queue.holdout_set(self.batches.mask, self.batches.seq_len)

        def measure() -> float | None:
            return self.evaluation.measure(holdout) if holdout.blocks else None

        before = measure()
        if self.team is None:
            record = t.grow(add, reason)
        else:
            record = self.team.grow(t, add, reason)
        after = measure()
        self.evaluation.stale = 0  # the grown model's own patience, for the plateau rule
        self.steps.shape_changed()
        self.depth_since, self.depth_tokens = self.clock(), f.tokens_seen
        self._declined.clear()
        self.show_shape()
        figures: dict[str, Any] = {}
        if decision is not None:
            figures = {"slope": None if decision.slope is None else round(decision.slope, 5),
                       "evaluations": decision.evaluations, "passes": round(decision.passes, 3),
                       "tokens_per_parameter": round(decision.tokens_per_parameter, 2),
                       "step_seconds_estimate": round(decision.step_seconds, 4),
                       "memory_mb_estimate": round(decision.memory_mb, 1)}
        self.log.info("model_grown", step=record["step"], reason=reason, trigger=trigger, old=record["old"],
                      new=record["new"], parameters_before=record["old"]["parameters"],
                      parameters_after=record["new"]["parameters"], val_bits_per_byte_before=before,
                      val_bits_per_byte_after=after, exact=before == after, val_bits_per_byte=f.val_bits_per_byte,
                      tokens_seen=f.tokens_seen, epoch=round(f.epoch, 3), placement=record["placement"],
                      init=record["init"], added=record["added"], ranks=1 if self.team is None else self.team.size,
                      seconds=round(self.clock() - t0, 3), **figures)
        return record

    # --- a checkpoint's part --------------------------------------------------------------------

    def state(self) -> dict:
        """The policy's history and the present depth's start, for a checkpoint's `extra` (as ages
        on the loop's clock); {} while growth is off and nothing was kept."""
        if not self.points and self.policy is None and not self.config.growth.enabled:
            return {}
        now = self.clock()
        return {STATE_KEY: {"points": points_state(self.points, now), "depth_seconds": now - self.depth_since,
                            "depth_tokens": self.depth_tokens}}

    def restore(self, extra: dict) -> None:
        """Take up `state()` from a checkpoint's `extra` (nothing there: a fresh history)."""
        saved = extra.get(STATE_KEY)
        if not isinstance(saved, dict):
            return
        now = self.clock()
        self.points = points_restored(saved.get("points"), now)
        try:
            self.depth_since = now - float(saved.get("depth_seconds", 0.0))
            self.depth_tokens = int(saved.get("depth_tokens", self.depth_tokens))
        except (TypeError, ValueError):
            pass
