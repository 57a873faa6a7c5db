"""When the training loop deepens its model: `GrowthPolicy.decide(history, now)`, a pure rule over
the evaluations taken so far ([growth], crawler/config/sections.py, holds its settings).

The intent (issue 25): grow when the model, not the data, is the limit, which shows as a
held-out curve that flattens while the stored text has had few passes; idle as without growth
when the data is the limit (many passes and no gain: the plateau rule of
crawler/training/evaluation.py then idles the loop); never grow past what the machine runs.

The rule, checked at each evaluation (a `Point`) in this order; the first that fails is the
reason there is no growth (`Assessment.why_not`):
  1. `disabled`: [growth] enabled is false; `depth_set`: [model] n_layer was set by hand (a
     file, the environment, --layers), which keeps that depth.
  2. `too_young`: the present depth has trained less than min_seconds on the loop's clock, or
     through less than a doubling of tokens seen (it began at more than half the latest count).
  3. `too_few_evaluations` / `improving`: flat means the evaluations of the last doubling of
     tokens seen at the present depth, at least `window` of them, fit a log-log slope of held-out
     bits per byte against tokens seen (least squares) shallower than flat_slope:
     -d ln(bpb) / d ln(tokens) < flat_slope; or the last `window` evaluations set no new best
     (`stale`), which a flat but noisy curve reaches first.
  4. Flat, yet a limit holds (logged by the worker as `growth_declined`, once a depth and reason):
     `max_layers` (the ceiling reached); `data_limit` (more passes over the stored text than
     max_passes: the data is the limit) or `few_passes` (fewer than min_passes); `too_little_text`
     (the stored text holds fewer than min_tokens_per_parameter tokens a parameter of the grown
     model); `too_slow` (the step time, scaled from the present one by the ratio of parameters,
     over max_step_seconds); `too_big` (the trainer's memory, scaled by the larger of the ratios of
     parameters and of blocks, over the memory limit).
Otherwise grow to min(max_layers, max(L + 1, round(L * factor))) blocks (`grown_depth`; the depths
a model can pass through on the way to max_layers are `reachable_depths`, which `status` uses to
forecast the checkpoints' disk use).

Why a doubling. A learning curve is near a power law in tokens seen, a straight line on log-log
axes, so a window spanning a fixed ratio of tokens weighs the curve alike at every age, where a
fixed count of evaluations spans ever less of it as training goes on (and its noise would read as
flat). It also paces growth: each depth trains on at least as many tokens as all before it.

Not the growth itself (engine/grow.py) nor its measurement, log and checkpoint (the worker's
`grow`), nor when evaluations happen (schedule.py). Pure: every figure arrives in a Point and
`now` is the caller's clock; only `machine_memory_mb` (the default memory limit) reads the machine.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..config import GrowthConfig

HISTORY_LIMIT = 256  # evaluations the loop keeps for the policy (and its checkpoints carry)


@dataclass(frozen=True)
class Point:
    """One evaluation, with what the policy weighs beside it."""

    time: float  # the loop's clock at the evaluation, seconds
    step: int
    tokens_seen: int  # every token through the model, replay and further passes included
    val_bits_per_byte: float  # held-out, of the model handed out (the cooled copy)
    passes: float  # tokens seen over the trainable text stored (the loop's epoch)
    stored_tokens: int  # trainable text stored: held-out and withdrawn text not counted
    n_layer: int
    parameters: int
    block_parameters: int  # the parameters one more block adds
    step_seconds: float  # a training step's recent mean
    memory_mb: float  # the trainer's buffers, the cool-down copy included
    stale: int  # evaluations in a row that set no new best (the plateau rule's count)
    depth_since: float  # the loop's clock when the present depth began (a growth, or the start)
    depth_tokens: int  # tokens seen when the present depth began (0 for the first)


@dataclass(frozen=True)
class Decision:
    """Grow by `add` blocks to `n_layer`; the figures that decided it."""

    add: int
    n_layer: int
    reason: str  # one line, recorded with the growth
    slope: float | None  # -d ln(bpb) / d ln(tokens) over the window; None when too few points
    evaluations: int  # in the window
    passes: float
    tokens_per_parameter: float  # stored tokens over the grown model's parameters
    step_seconds: float  # the grown model's, estimated
    memory_mb: float  # the grown trainer's, estimated


class Assessment(NamedTuple):
    """What the policy found: a Decision, or why not (a code of the module docstring's)."""

    decision: Decision | None
    why_not: str  # "" with a decision
    flat: bool
    slope: float | None


def machine_memory_mb() -> float:
    """The machine's physical memory in MB (1e6 bytes); inf where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e6
    except (AttributeError, OSError, ValueError):
        return math.inf


def grown_depth(n_layer: int, config: GrowthConfig) -> int:
    """The depth one growth takes a model of `n_layer` blocks to: `factor` times as deep, at least
    one block more, at most max_layers."""
    return min(config.max_layers, max(n_layer + 1, round(n_layer * config.factor)))


def reachable_depths(n_layer: int, config: GrowthConfig, depth_set_in: str = "") -> list[int]:
    """The depths a model of `n_layer` blocks passes through as the rule grows it, `n_layer` first
    and the deepest last: [n_layer] alone when growth is off, when the depth was set by hand
    (`depth_set_in`), or when the model has max_layers blocks or more already (a `crystalline grow`
    may have gone past it). An upper bound: the data, the step time or the memory may stop growth
    earlier (the rule's step 4)."""
    depths = [n_layer]
    if not config.enabled or depth_set_in:
        return depths
    while depths[-1] < config.max_layers:
        depths.append(grown_depth(depths[-1], config))
    return depths


def log_log_slope(points: Sequence[Point]) -> float | None:
    """-d ln(bpb) / d ln(tokens seen) by least squares over `points` (positive while the curve
    falls); None for fewer than two distinct token counts."""
    xs = [math.log(p.tokens_seen) for p in points if p.tokens_seen > 0 and p.val_bits_per_byte > 0]
    ys = [math.log(p.val_bits_per_byte) for p in points if p.tokens_seen > 0 and p.val_bits_per_byte > 0]
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var <= 0:
        return None
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


class GrowthPolicy:
    """The rule of the module docstring for one configuration. `depth_set_in` says where [model]
    n_layer was set by hand ("" when it was not); `memory_limit_mb` is the grown trainer's budget
    (`from_config` resolves [growth] max_memory_mb = 0 to half the machine's memory)."""

    def __init__(self, config: GrowthConfig, depth_set_in: str = "", memory_limit_mb: float = math.inf):
        self.config = config
        self.depth_set_in = depth_set_in
        self.memory_limit_mb = memory_limit_mb

    @classmethod
    def from_config(cls, config: GrowthConfig, depth_set_in: str = "") -> GrowthPolicy:
        limit = config.max_memory_mb or machine_memory_mb() / 2
        return cls(config, depth_set_in, float(limit))

    def describe(self) -> str:
        """One line for `trainer_ready`: off, the depth kept, or the ceiling."""
        if not self.config.enabled:
            return "off ([growth] enabled = false)"
        if self.depth_set_in:
            return f"off: the depth was set by hand ({self.depth_set_in})"
        return f"on, up to {self.config.max_layers} layers"

    def decide(self, history: Sequence[Point], now: float) -> Decision | None:
        """The growth to make after the latest evaluation of `history` (oldest first), or None."""
        return self.assess(history, now).decision

    def assess(self, history: Sequence[Point], now: float) -> Assessment:
        """`decide` with its reasons: the decision, or why not; whether the curve is flat."""
        c = self.config
        if not c.enabled:
            return Assessment(None, "disabled", False, None)
        if self.depth_set_in:
            return Assessment(None, "depth_set", False, None)
        if not history:
            return Assessment(None, "too_few_evaluations", False, None)
        last = history[-1]
        if now - last.depth_since < c.min_seconds or last.tokens_seen < 2 * last.depth_tokens:
            return Assessment(None, "too_young", False, None)
        # the evaluations of the last doubling of tokens seen, at the present depth
        window = [p for p in history if p.n_layer == last.n_layer and p.tokens_seen >= last.depth_tokens
                  and 2 * p.tokens_seen >= last.tokens_seen]
        if len(window) < c.window:
            return Assessment(None, "too_few_evaluations", False, None)
        slope = log_log_slope(window)
        flat_slope = slope is not None and slope < c.flat_slope
        if not (flat_slope or last.stale >= c.window):
            return Assessment(None, "improving", False, slope)

        def blocked(why: str) -> Assessment:
            return Assessment(None, why, True, slope)

        L = last.n_layer
        if L >= c.max_layers:
            return blocked("max_layers")
        if last.passes > c.max_passes:
            return blocked("data_limit")
        if last.passes < c.min_passes:
            return blocked("few_passes")
        n_layer = grown_depth(L, c)
        add = n_layer - L
        parameters = last.parameters + add * last.block_parameters
        tokens_per_parameter = last.stored_tokens / parameters
        if tokens_per_parameter < c.min_tokens_per_parameter:
            return blocked("too_little_text")
        ratio = parameters / last.parameters
        step_seconds = last.step_seconds * ratio
        if step_seconds > c.max_step_seconds:
            return blocked("too_slow")
        memory_mb = last.memory_mb * max(ratio, n_layer / L)
        if memory_mb > self.memory_limit_mb:
            return blocked("too_big")
        shown = (f"a slope of {slope:.4f} < {c.flat_slope:g}" if flat_slope
                 else f"no new best in {last.stale} evaluations")
        reason = (f"held-out flat ({shown} over {len(window)} evaluations) after {last.passes:.2f} passes over "
                  f"the stored text, {tokens_per_parameter:.1f} stored tokens a parameter of the grown model")
        return Assessment(Decision(add, n_layer, reason, slope, len(window), last.passes, tokens_per_parameter,
                                   step_seconds, memory_mb), "", True, slope)


def recent(history: list[Point], limit: int = HISTORY_LIMIT) -> list[Point]:
    """The points the policy can still use: the last doubling of tokens seen (an older one is never
    in a window), at most `limit` of them, oldest first."""
    if not history:
        return []
    last = history[-1].tokens_seen
    return [p for p in history if 2 * p.tokens_seen >= last][-limit:]


def points_state(history: Sequence[Point], now: float) -> list[dict]:
    """The points as a checkpoint's `extra` carries them: the clock's times as ages at `now`, since
    another process's clock means nothing (downtime is not counted)."""
    return [{**p.__dict__, "time": now - p.time, "depth_since": now - p.depth_since} for p in history]


def points_restored(saved: object, now: float) -> list[Point]:
    """`points_state`'s list, its ages turned back into times on this clock; [] for what is not one
    (an earlier version's checkpoint)."""
    if not isinstance(saved, list):
        return []
    try:
        return [Point(**{**item, "time": now - float(item["time"]), "depth_since": now - float(item["depth_since"])})
                for item in saved]
    except (TypeError, KeyError, ValueError):
        return []
