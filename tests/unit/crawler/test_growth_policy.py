"""The growth policy (crawler/training/growth.py) on scripted evaluation sequences and an injected
clock: it grows when the model is the limit, idles when the data is, never grows a depth the user
set, and respects the machine's limits; and the [growth] settings as the loader reads them."""

from dataclasses import replace

import pytest

from crawler import ConfigError
from crawler.config import GrowthConfig, default_config_text, load_config
from crawler.training.growth import (
    GrowthPolicy,
    Point,
    log_log_slope,
    points_restored,
    points_state,
    recent,
)

ON = GrowthConfig(enabled=True)  # the defaults, turned on
EVERY = 120.0  # seconds between evaluations (the daemon's default)


def curve(bits, *, tokens_per_eval=1_000_000, stored=20_000_000, n_layer=4, parameters=1_000_000,
          block=200_000, step_seconds=0.1, memory_mb=100.0, stale=None, depth_since=0.0, depth_tokens=0,
          first=1) -> list[Point]:
    """One Point an evaluation, EVERY seconds apart, with held-out `bits` in order; tokens seen grow
    by `tokens_per_eval` each, and passes are tokens seen over `stored`."""
    points = []
    best, since_best = None, 0
    for i, value in enumerate(bits, start=first):
        if best is None or value < best:
            best, since_best = value, 0
        else:
            since_best += 1
        tokens = i * tokens_per_eval
        points.append(Point(time=i * EVERY, step=i * 100, tokens_seen=tokens, val_bits_per_byte=value,
                            passes=tokens / stored, stored_tokens=stored, n_layer=n_layer, parameters=parameters,
                            block_parameters=block, step_seconds=step_seconds, memory_mb=memory_mb,
                            stale=since_best if stale is None else stale, depth_since=depth_since,
                            depth_tokens=depth_tokens))
    return points


def flattening(n=20, floor=2.0):
    """A curve that falls fast and then flattens: 2 + 0.5 exp(-i / 3), i = 1..n (still improving,
    a little, at every evaluation, so the plateau rule's count never fires)."""
    import math

    return [floor + 0.5 * math.exp(-i / 3) for i in range(1, n + 1)]


def power_law(n=20, alpha=0.1):
    """A curve still learning: 3 i^-alpha (a log-log slope of alpha)."""
    return [3.0 * i ** -alpha for i in range(1, n + 1)]


def test_it_grows_when_the_model_is_the_limit():
    """The curve flattens after one pass over the stored text: the model, not the data, is the
    limit, so it doubles the depth (4 -> 8), and says why."""
    history = curve(flattening())  # 20 evaluations: 20M tokens seen of 20M stored, one pass
    policy = GrowthPolicy(ON, memory_limit_mb=1000.0)
    now = history[-1].time
    decision = policy.decide(history, now)
    assert decision is not None
    assert (decision.add, decision.n_layer) == (4, 8)
    assert decision.slope is not None and 0 < decision.slope < ON.flat_slope
    assert decision.evaluations == 11  # the last doubling: 10M..20M tokens seen
    assert decision.tokens_per_parameter == pytest.approx(20e6 / 1.8e6)
    assert decision.step_seconds == pytest.approx(0.18) and decision.memory_mb == pytest.approx(200.0)
    assert "flat" in decision.reason and "1.00 passes" in decision.reason
    assert policy.assess(history, now).why_not == ""


def test_it_idles_when_the_data_is_the_limit():
    """The same flat curve after ten passes over a small store: the data is the limit; no growth,
    the plateau rule idles the loop as without growth."""
    history = curve(flattening(), stored=2_000_000)  # 20M tokens seen of 2M stored: 10 passes
    found = GrowthPolicy(ON, memory_limit_mb=1000.0).assess(history, history[-1].time)
    assert found.decision is None and found.flat and found.why_not == "data_limit"
    # a store too small for the grown model, within few passes: too little text a parameter
    history = curve(flattening(), stored=8_000_000, tokens_per_eval=200_000)  # 4M of 8M: half a pass
    found = GrowthPolicy(ON, memory_limit_mb=1000.0).assess(history, history[-1].time)
    assert found.decision is None and found.why_not == "too_little_text"  # 8M / 1.8M = 4.4 < 5


def test_it_never_grows_a_depth_the_user_set_nor_when_turned_off():
    history = curve(flattening())
    now = history[-1].time
    assert GrowthPolicy(ON, depth_set_in="flag --layers", memory_limit_mb=1000.0).assess(history, now).why_not == \
        "depth_set"
    assert GrowthPolicy(GrowthConfig(), memory_limit_mb=1000.0).assess(history, now).why_not == "disabled"
    assert GrowthPolicy(GrowthConfig()).describe().startswith("off")
    assert "set by hand" in GrowthPolicy(ON, depth_set_in="flag --layers").describe()
    assert GrowthPolicy(ON).describe() == "on, up to 12 layers"


def test_a_curve_still_falling_is_left_to_train():
    history = curve(power_law(alpha=0.1))
    found = GrowthPolicy(ON, memory_limit_mb=1000.0).assess(history, history[-1].time)
    assert found.decision is None and found.why_not == "improving" and not found.flat
    assert found.slope == pytest.approx(0.1, rel=1e-6)


def test_a_flat_but_noisy_curve_grows_by_the_plateau_count():
    """No new best in `window` evaluations reads as flat even where noise tilts the fitted slope."""
    bits = power_law(16, alpha=0.3)  # still falling steeply up to evaluation 16 ...
    bits += [bits[-1] + d for d in (0.002, 0.005, 0.001, 0.003)]  # ... then four that set no new best
    history = curve(bits)
    assert history[-1].stale == 4
    found = GrowthPolicy(ON, memory_limit_mb=1000.0).assess(history, history[-1].time)
    assert found.slope > ON.flat_slope  # the fit over the doubling still sees the fall before
    assert found.decision is not None and "no new best in 4 evaluations" in found.decision.reason


def test_the_injected_clock_holds_a_young_depth_back():
    """A depth trains min_seconds on the loop's clock (not the wall clock) before it may grow;
    the same history grows once the clock has moved on."""
    history = curve(flattening(), depth_since=2000.0)  # the depth began at t = 2000 s on this clock
    policy = GrowthPolicy(replace(ON, min_seconds=600.0), memory_limit_mb=1000.0)
    assert policy.assess(history, now=2599.0).why_not == "too_young"
    assert policy.decide(history, now=2600.0) is not None


def test_after_a_growth_the_new_depth_waits_for_a_doubling_of_tokens():
    """Grown at 12M tokens seen: its evaluations count from there, and only once tokens seen have
    doubled since (24M) does the flat curve decide again."""
    flat = [1.9 + 0.01 * 0.8 ** i for i in range(14)]  # a new best each time, by ever less
    grown = curve(flat, first=13, n_layer=8, parameters=1_800_000, depth_since=0.0,
                  depth_tokens=12_000_000)  # 13M..26M tokens seen
    policy = GrowthPolicy(ON, memory_limit_mb=1000.0)
    before_doubling = [p for p in grown if p.tokens_seen < 24_000_000]
    assert policy.assess(before_doubling, before_doubling[-1].time).why_not == "too_young"
    decision = policy.decide(grown, grown[-1].time)
    assert decision is not None and (decision.add, decision.n_layer) == (4, 12)  # the ceiling
    older = curve(flattening(12), n_layer=4)  # the evaluations of the depth before do not count
    assert policy.decide(older + grown, grown[-1].time) == decision


@pytest.mark.parametrize("change, why", [
    ({"n_layer": 12}, "max_layers"),
    ({"step_seconds": 0.6}, "too_slow"),  # 0.6 s x 1.8 > 1 s
    ({"memory_mb": 600.0}, "too_big"),  # 600 MB x 2 > 1000 MB
])
def test_never_past_what_the_machine_runs(change, why):
    history = [replace(p, **change) for p in curve(flattening())]
    found = GrowthPolicy(ON, memory_limit_mb=1000.0).assess(history, history[-1].time)
    assert found.decision is None and found.flat and found.why_not == why


def test_too_few_evaluations_and_the_depth_after_a_growth():
    history = curve(flattening(3))
    assert GrowthPolicy(ON).assess(history, 1e9).why_not == "too_few_evaluations"
    assert GrowthPolicy(ON).assess([], 1e9).why_not == "too_few_evaluations"
    policy = GrowthPolicy(replace(ON, max_layers=12, factor=1.5), memory_limit_mb=1000.0)
    for layers, grown in ((4, 6), (2, 3), (11, 12), (1, 2)):
        history = [replace(p, n_layer=layers) for p in curve(flattening())]
        assert policy.decide(history, history[-1].time).n_layer == grown


def test_the_slope_is_the_log_log_fit_and_the_history_keeps_the_last_doubling():
    points = curve(power_law(30, alpha=0.25))
    assert log_log_slope(points) == pytest.approx(0.25)
    assert log_log_slope(points[:1]) is None
    kept = recent(points)
    assert kept[0].tokens_seen == 15_000_000 and kept[-1] == points[-1]  # 2 x 15M >= 30M
    assert len(recent(points, limit=4)) == 4


def test_a_checkpoint_carries_the_history_as_ages_on_any_clock():
    points = curve(flattening(5), depth_since=50.0)
    saved = points_state(points, now=1000.0)
    assert saved[-1]["time"] == 1000.0 - points[-1].time and saved[0]["depth_since"] == 950.0
    restored = points_restored(saved, now=10.0)  # another process: its clock starts elsewhere
    assert [p.time for p in restored] == [10.0 - (1000.0 - p.time) for p in points]
    assert restored[0].depth_since == 10.0 - 950.0
    assert [replace(p, time=0.0, depth_since=0.0) for p in restored] == \
        [replace(p, time=0.0, depth_since=0.0) for p in points]
    assert points_restored(None, 0.0) == [] and points_restored([{"bad": 1}], 0.0) == []


# ---------------------------------------------------------------------------------------------
# the settings


def test_growth_is_off_by_default_and_one_setting_turns_it_on(tmp_path):
    assert load_config(env={}).growth == GrowthConfig() and not GrowthConfig().enabled
    assert load_config(env={"CRYSTALLINE_GROWTH_ENABLED": "true"}).growth.enabled
    toml = tmp_path / "c.toml"
    toml.write_text("[growth]\nenabled = true\nmax_layers = 8\n")
    config = load_config(toml, env={})
    assert config.growth.enabled and config.growth.max_layers == 8
    with pytest.raises(ConfigError, match=r"\[growth\] factor \(1.0\) must be in \(1, 16\]"):
        load_config(env={"CRYSTALLINE_GROWTH_FACTOR": "1"})
    with pytest.raises(ConfigError, match="min_passes"):
        load_config(env={"CRYSTALLINE_GROWTH_MIN_PASSES": "5", "CRYSTALLINE_GROWTH_MAX_PASSES": "4"})


def test_a_depth_set_by_hand_is_known_by_where_it_was_set(tmp_path):
    assert load_config(env={}).depth_set_in == ""
    assert load_config(env={"CRYSTALLINE_MODEL_N_LAYER": "6"}).depth_set_in == "environment CRYSTALLINE_MODEL_N_LAYER"
    assert load_config(env={}, overrides={"model": {"n_layer": 2}}).depth_set_in == "flag --n-layer"
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nn_layer = 4\n")  # the default's value, but set by hand: kept
    assert load_config(toml, env={}).depth_set_in.endswith("c.toml [model] n_layer")
    toml.write_text("[model]\nd_model = 64\nn_head = 4\n")  # the width alone leaves the depth to growth
    assert load_config(toml, env={}).depth_set_in == ""
    # `crystalline init`'s file shows n_layer commented out, so it sets no depth
    toml.write_text(default_config_text())
    assert "\n# n_layer = 4 " in toml.read_text() and load_config(toml, env={}).depth_set_in == ""
