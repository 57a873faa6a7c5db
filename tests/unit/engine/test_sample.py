"""The KV-cache generator and the samplers, checked against the numpy reference forward pass.

Tolerance: the generator computes in float32 and the reference in float64, so logits are compared
with rtol 1e-4 and atol 1e-5. Statistical checks use fixed seeds and bounds several standard
deviations wide, so they are deterministic and not flaky.
"""

import math

import numpy as np
import pytest

from engine.config import ModelConfig
from engine.errors import ShapeMismatch
from engine.layout import init_parameters, parameter_table
from engine.reference import reference_forward, reference_loss
from engine.sample import Generator, KVCache, sample, sample_next

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def config():
    return ModelConfig(
        vocab_size=11, context_length=8, d_model=16, n_layer=2, n_head=4, mlp_ratio=4, seed=7
    ).validate()


@pytest.fixture(scope="module")
def params(config):
    # GPT-2 init plus noise: nonzero biases and LayerNorm shifts, logits far from uniform
    rng = np.random.default_rng(0)
    base = init_parameters(config)
    return (base + rng.normal(0.0, 0.3, base.size)).astype(np.float32)


def expected_windows(tokens, context_length):
    """The ids the generator holds after each token: slides to the last maxT//2 when full."""
    window, windows = [], []
    for token in tokens:
        if len(window) == context_length:
            window = window[len(window) - context_length // 2 :]
        window = window + [token]
        windows.append(window)
    return windows


def reference_last(config, params, window):
    return reference_forward(config, params, np.array([window]))[0, -1]


# ---------------------------------------------------------------------------------------------
# the cached forward pass


def test_kv_cache_matches_reference_at_every_position(config, params):
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, config.context_length)
    generator = Generator(config, params)
    for t, token in enumerate(tokens):
        logits = generator.feed([int(token)])
        assert logits.shape == (config.vocab_size,) and logits.dtype == np.float32
        expected = reference_forward(config, params, tokens[None, : t + 1])[0, t]
        np.testing.assert_allclose(logits, expected, rtol=RTOL, atol=ATOL)
    assert generator.cache.length == config.context_length


def test_feeding_a_block_equals_feeding_one_at_a_time(config, params):
    tokens = [3, 1, 4, 1, 5, 9]
    block = Generator(config, params).feed(np.array(tokens))
    single = Generator(config, params)
    for token in tokens:
        last = single.feed([token])
    np.testing.assert_allclose(block, last, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(block, reference_last(config, params, tokens), rtol=RTOL, atol=ATOL)


def test_slide_past_context_matches_reference_on_kept_window(config, params):
    maxT = config.context_length
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, 3 * maxT + 3).tolist()
    generator = Generator(config, params)
    for token, window in zip(tokens, expected_windows(tokens, maxT)):
        logits = generator.feed([token])
        assert generator.window == window
        assert generator.cache.length == len(window) <= maxT
        expected = reference_last(config, params, window)
        np.testing.assert_allclose(logits, expected, rtol=RTOL, atol=ATOL)
    # the first slide keeps maxT // 2 tokens and appends the new one
    assert len(expected_windows(tokens, maxT)[maxT]) == maxT // 2 + 1


def test_long_block_slides_like_single_feeds(config, params):
    tokens = np.random.default_rng(3).integers(0, config.vocab_size, 2 * config.context_length + 1)
    logits = Generator(config, params).feed(tokens)
    window = expected_windows(tokens.tolist(), config.context_length)[-1]
    np.testing.assert_allclose(logits, reference_last(config, params, window), rtol=RTOL, atol=ATOL)


def test_reset_forgets_everything(config, params):
    generator = Generator(config, params)
    first = generator.feed([1, 2, 3])
    generator.feed([4, 5])
    generator.reset()
    assert generator.cache.length == 0 and generator.window == []
    np.testing.assert_array_equal(generator.feed([1, 2, 3]), first)


def test_generator_snapshots_parameters(config, params):
    mutable = params.copy()
    generator = Generator(config, mutable)
    before = generator.feed([1])
    mutable[:] = 0.0
    generator.reset()
    np.testing.assert_array_equal(generator.feed([1]), before)


def test_kv_cache_shapes(config):
    cache = KVCache(config)
    shape = (config.n_layer, config.n_head, config.context_length, config.head_size)
    assert cache.keys.shape == cache.values.shape == shape
    assert cache.keys.dtype == np.float32 and cache.length == 0


# ---------------------------------------------------------------------------------------------
# sampling


def test_greedy_equals_reference_argmax_step_by_step(config, params):
    prompt = [2, 7, 1]
    new = sample(config, params, prompt, 2 * config.context_length, temperature=0.0)
    assert len(new) == 2 * config.context_length  # crosses the context length, so it slides
    sequence = prompt + new
    windows = expected_windows(sequence, config.context_length)
    for i, token in enumerate(new):
        window = windows[len(prompt) + i - 1]  # the window that produced this token
        assert token == int(np.argmax(reference_last(config, params, window)))


def test_top_k_one_equals_greedy(config, params):
    greedy = sample(config, params, [5], 20, temperature=0.0)
    assert sample(config, params, [5], 20, temperature=1.5, top_k=1, seed=3) == greedy
    assert sample(config, params, [5], 20, temperature=1.0, top_p=1e-6, seed=4) == greedy


def test_same_seed_same_samples(config, params):
    first = sample(config, params, [1, 2], 30, temperature=1.0, seed=11)
    assert sample(config, params, [1, 2], 30, temperature=1.0, seed=11) == first
    assert sample(config, params, [1, 2], 30, temperature=1.0, seed=12) != first
    assert all(0 <= t < config.vocab_size for t in first)


def test_stop_token_ends_generation_and_is_not_returned(config, params):
    free = sample(config, params, [1], 40, seed=5)
    stop = free[10]
    stopped = sample(config, params, [1], 40, seed=5, stop_token=stop)
    assert stopped == free[: free.index(stop)]
    assert sample(config, params, [1], 0) == []


def draw(logits, n, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    drawn = [sample_next(logits, rng, **kwargs) for _ in range(n)]
    counts = np.bincount(drawn, minlength=len(logits))
    return counts / n


def test_top_p_keeps_smallest_set_reaching_p():
    probs = np.array([0.1, 0.5, 0.15, 0.25])  # sorted: 0.5, 0.25, 0.15, 0.1
    logits = np.log(probs)
    n = 4000
    # p = 0.4: the top token alone reaches it
    assert np.array_equal(draw(logits, n, top_p=0.4), [0, 1, 0, 0])
    # p = 0.7: {0.5, 0.25} (mass 0.75) is the smallest set >= 0.7; renormalised to 2/3, 1/3
    freq = draw(logits, n, top_p=0.7)
    assert freq[0] == 0 and freq[2] == 0
    assert abs(freq[1] - 2 / 3) < 0.03 and abs(freq[3] - 1 / 3) < 0.03
    # p = 0.8 adds the 0.15 token, still never the 0.1 one
    freq = draw(logits, n, top_p=0.8)
    assert freq[0] == 0 and freq[2] > 0
    np.testing.assert_allclose(freq[[1, 3, 2]], np.array([0.5, 0.25, 0.15]) / 0.9, atol=0.03)


def test_top_k_restricts_to_k_largest():
    logits = np.array([0.0, 3.0, 1.0, 2.0, -1.0])
    freq = draw(logits, 3000, top_k=2)
    assert set(np.flatnonzero(freq)) == {1, 3}
    assert abs(freq[1] - 1 / (1 + math.exp(-1))) < 0.03


def test_temperature_sharpens_and_flattens():
    logits = np.array([1.0, 0.0, 0.0, 0.0])
    n, observed = 6000, {}
    for temperature in (0.5, 1.0, 2.0):
        expected = math.exp(1 / temperature) / (math.exp(1 / temperature) + 3)
        observed[temperature] = draw(logits, n, seed=1, temperature=temperature)[0]
        # 4 standard deviations of a binomial frequency
        assert abs(observed[temperature] - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    assert observed[0.5] > observed[1.0] > observed[2.0]
    assert sample_next(logits, np.random.default_rng(0), temperature=0.0) == 0


# ---------------------------------------------------------------------------------------------
# validation


def test_out_of_range_ids_are_rejected(config, params):
    generator = Generator(config, params)
    with pytest.raises(ValueError, match=r"token id 11 .*\[0, 11\)"):
        generator.feed([1, 11])
    assert generator.cache.length == 0  # nothing was fed
    with pytest.raises(ValueError, match=r"token id -1"):
        generator.feed(np.array([-1]))
    with pytest.raises(ValueError, match="non-empty"):
        generator.feed([])
    with pytest.raises(ValueError, match="integers"):
        generator.feed([1.5])
    with pytest.raises(ValueError, match=r"token id 99"):
        sample(config, params, [99], 3)
    with pytest.raises(ValueError, match=r"token id 12"):
        sample(config, params, [1], 3, stop_token=12)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(config, params, [1], -1)
    with pytest.raises(ShapeMismatch):
        Generator(config, params[:-1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_bad_sampling_settings_are_rejected(config, params, kwargs, name):
    with pytest.raises(ValueError, match=name):
        sample_next(np.zeros(4), np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=name):
        sample(config, params, [1], 3, **kwargs)


# ---------------------------------------------------------------------------------------------
# the reference itself


def test_reference_loss_of_zero_params_is_log_vocab(config):
    zeros = np.zeros(parameter_table(config).size, dtype=np.float32)
    rng = np.random.default_rng(4)
    inputs = rng.integers(0, config.vocab_size, (2, 5))
    targets = rng.integers(0, config.vocab_size, (2, 5))
    # all-zero LayerNorm gains and shifts give zero features, so every logit is 0: uniform
    np.testing.assert_array_equal(reference_forward(config, zeros, inputs), 0.0)
    loss = reference_loss(config, zeros, inputs, targets)
    assert loss == pytest.approx(math.log(config.vocab_size), rel=1e-12)


def test_reference_loss_equals_log_softmax_by_hand(config, params):
    rng = np.random.default_rng(5)
    inputs = rng.integers(0, config.vocab_size, (3, config.context_length))
    targets = rng.integers(0, config.vocab_size, (3, config.context_length))
    logits = reference_forward(config, params, inputs)
    by_hand = np.mean(
        [
            math.log(sum(math.exp(z) for z in logits[b, t])) - logits[b, t, targets[b, t]]
            for b in range(3)
            for t in range(config.context_length)
        ]
    )
    assert reference_loss(config, params, inputs, targets) == pytest.approx(by_hand, rel=1e-10)


def test_reference_is_causal_and_batch_independent(config, params):
    rng = np.random.default_rng(6)
    a = rng.integers(0, config.vocab_size, config.context_length)
    b = a.copy()
    b[5:] = (b[5:] + 1) % config.vocab_size  # change only the future of position 4
    logits = reference_forward(config, params, np.stack([a, b]))
    np.testing.assert_allclose(logits[0, :5], logits[1, :5], rtol=1e-12, atol=1e-12)
    assert not np.allclose(logits[0, 5:], logits[1, 5:])
    with pytest.raises(ValueError, match="context_length"):
        reference_forward(config, params, np.zeros((1, config.context_length + 1), dtype=np.int64))
