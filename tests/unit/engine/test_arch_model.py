"""The architecture options through the whole model: the layout, the loss and every gradient
tensor against the numpy reference model, the KV-cache generator against the full forward, the
threaded trainer, checkpoints and the `[model]` settings.

Tolerances as in test_trainer.py: the loss at rel 1e-5 against the float64 reference; gradients
at rel 2e-3 / abs 2e-6 against central differences (eps 1e-5) of the float64 reference; logits
of the float32 generator at rtol 1e-4 / atol 1e-5 against the reference.
"""

import dataclasses
import json

import numpy as np
import pytest
import safetensors.numpy

from engine import ModelConfig, TrainConfig, Trainer, init_parameters, parameter_table
from engine.checkpoint import CheckpointIncompatible, _digest, load_checkpoint, save_checkpoint
from engine.config import ConfigError
from engine.layout import decay_mask
from engine.model import loss_and_grad
from engine.reference import reference_forward, reference_loss
from engine.sample import Generator

# T = 7 inside a context of 9: neither a power of two, and shorter than the context.
BASE = ModelConfig(vocab_size=13, context_length=9, d_model=12, n_layer=2, n_head=3, seed=5)
OPTIONS = {
    "rope": dict(positions="rope"),
    "both": dict(positions="both"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"),
    "zero_init_proj": dict(zero_init_proj=True),
    "softcap": dict(logit_softcap=3.0),  # low, so the cap bends the logits of these weights
    "untied": dict(tie_head=False),
}
ALL_ON = dict(positions="rope", norm="rmsnorm", qk_norm=True, activation="relu2", zero_init_proj=True,
              logit_softcap=3.0, tie_head=False)
CONFIGS = {
    **{name: dataclasses.replace(BASE, **options).validate() for name, options in OPTIONS.items()},
    "all_on": dataclasses.replace(BASE, **ALL_ON).validate(),
    "all_on_both_one_head": dataclasses.replace(BASE, **{**ALL_ON, "positions": "both"}, n_head=1).validate(),
}
B, T = 2, 7


def perturbed_params(config, scale=0.3, seed=0):
    """Init plus noise on every tensor, so zero projections and unit gains hide nothing."""
    params = init_parameters(config)
    params += np.random.default_rng(seed).standard_normal(params.size).astype(np.float32) * np.float32(scale)
    return params


def batch(config, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    return x, rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# config and layout


def test_defaults_are_gpt2():
    config = ModelConfig()
    assert (config.positions, config.norm, config.qk_norm, config.activation) == ("learned", "layernorm", False, "gelu")
    assert (config.zero_init_proj, config.logit_softcap, config.tie_head) == (False, 0.0, True)
    names = [name for name, _ in parameter_table(BASE).entries]
    assert names[-1] == "lm_head" and parameter_table(BASE).shapes["lm_head"] == (0, BASE.d_model)
    # the GPT-2 layout: no tensor of the options takes a single element
    assert parameter_table(BASE).size == parameter_table(dataclasses.replace(BASE, n_layer=2)).size
    C, V, L, maxT, H = 12, 13, 2, 9, 48
    gpt2 = V * C + maxT * C + L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + H * C + H + C * H + C) + 2 * C
    assert parameter_table(BASE).size == gpt2


def test_options_change_the_layout_as_documented():
    C, V, L = BASE.d_model, BASE.vocab_size, BASE.n_layer
    base = parameter_table(BASE)
    rope = parameter_table(CONFIGS["rope"])
    assert rope.shapes["wpe"] == (0, C) and rope.size == base.size - BASE.context_length * C
    assert parameter_table(CONFIGS["both"]).size == base.size
    rms = parameter_table(CONFIGS["rmsnorm"])
    assert rms.shapes["ln1b"] == rms.shapes["ln2b"] == (L, 0) and rms.shapes["lnfb"] == (0,)
    assert rms.size == base.size - (2 * L + 1) * C
    untied = parameter_table(CONFIGS["untied"])
    assert untied.shapes["lm_head"] == (V, C) and untied.size == base.size + V * C
    mask = decay_mask(untied)
    seg = untied.offsets["lm_head"]
    assert mask[seg.offset : seg.stop].all()  # the head is a matrix: weight decay applies
    for name in ("qk_norm", "relu2", "zero_init_proj", "softcap"):
        assert parameter_table(CONFIGS[name]).entries == base.entries


def test_zero_init_projections_are_zero_and_nothing_else_moves():
    base = parameter_table(BASE)
    default, zeroed = init_parameters(BASE), init_parameters(CONFIGS["zero_init_proj"])
    for name, seg in base.offsets.items():
        a, b = default[seg.offset : seg.stop], zeroed[seg.offset : seg.stop]
        if name in ("attprojw", "fcprojw"):
            assert not b.any() and a.any()
        else:
            assert np.array_equal(a, b), name


@pytest.mark.parametrize("options, message", [
    (dict(positions="alibi"), "positions ('alibi') must be one of learned, rope, both"),
    (dict(norm="batchnorm"), "norm ('batchnorm') must be one of layernorm, rmsnorm"),
    (dict(activation="swiglu"), "activation ('swiglu') must be one of gelu, relu2"),
    (dict(logit_softcap=-1.0), "logit_softcap (-1.0) must be 0 (off) or a positive number"),
    (dict(logit_softcap=float("nan")), "logit_softcap (nan)"),
    (dict(qk_norm="yes"), "qk_norm ('yes') must be true or false"),
    (dict(tie_head=1), "tie_head (1) must be true or false"),
    (dict(positions="rope", d_model=15, n_head=3), "head size d_model / n_head (5) must be even"),
])
def test_bad_options_are_named(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dataclasses.replace(BASE, **options).validate()


# ---------------------------------------------------------------------------------------------
# the model against the numpy reference


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_and_every_gradient_tensor_match_the_reference(name):
    config = CONFIGS[name]
    params = perturbed_params(config)
    x, y = batch(config)
    loss, grads = loss_and_grad(config, params, x, y)
    p64 = params.astype(np.float64)
    assert loss == pytest.approx(reference_loss(config, p64, x, y), rel=1e-5)
    table = parameter_table(config)
    rng = np.random.default_rng(1)
    for tensor, seg in table.offsets.items():
        for i in rng.choice(seg.size, size=min(5, seg.size), replace=False) + seg.offset:
            e = 1e-5
            up, down = p64.copy(), p64.copy()
            up[i] += e
            down[i] -= e
            fd = (reference_loss(config, up, x, y) - reference_loss(config, down, x, y)) / (2 * e)
            assert grads[i] == pytest.approx(fd, rel=2e-3, abs=2e-6), (tensor, i)


@pytest.mark.parametrize("name", ["all_on", "all_on_both_one_head"])
def test_every_parameter_receives_gradient_with_all_options_on(name):
    config = CONFIGS[name]
    _, grads = loss_and_grad(config, perturbed_params(config), *batch(config))
    views = parameter_table(config).views(grads)
    for tensor, view in zip(views._fields, views):
        if tensor == "wpe":
            view = view[:T]
        if view.size:
            assert np.abs(view).sum() > 0, f"{tensor} got no gradient"


def test_softcap_bounds_the_logits():
    config = CONFIGS["softcap"]
    logits = reference_forward(config, perturbed_params(config, scale=2.0), batch(config)[0])
    assert np.abs(logits).max() < 3.0
    uncapped = reference_forward(BASE, perturbed_params(config, scale=2.0), batch(config)[0])
    assert np.abs(uncapped).max() > 3.0  # the cap is what bounds them


def test_rope_only_model_sees_order_through_attention():
    """In one layer without a position table, the last position attends to the earlier ones as
    a set; the rotation alone makes swapping two earlier tokens change its logits."""
    config = dataclasses.replace(CONFIGS["rope"], n_layer=1)
    params = perturbed_params(config)
    a = np.array([[1, 2, 3, 4]])
    b = np.array([[2, 1, 3, 4]])
    assert not np.allclose(reference_forward(config, params, a)[0, -1], reference_forward(config, params, b)[0, -1])
    no_rope = dataclasses.replace(config, positions="learned")
    params = perturbed_params(no_rope)
    table = parameter_table(no_rope)
    seg = table.offsets["wpe"]
    params[seg.offset : seg.stop] = 0.0  # a learned table of zeros: no order at all
    np.testing.assert_allclose(reference_forward(no_rope, params, a)[0, -1],
                               reference_forward(no_rope, params, b)[0, -1], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# generation


@pytest.mark.parametrize("name", CONFIGS)
def test_generation_matches_the_full_forward_at_every_position(name):
    config = CONFIGS[name]
    params = perturbed_params(config)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, config.context_length + 3)
    generator = Generator(config, params)
    window = []
    for token in tokens.tolist():
        if len(window) == config.context_length:  # the generator slides to the last maxT // 2
            window = window[len(window) - config.context_length // 2 :]
        window.append(token)
        logits = generator.feed([token])
        expected = reference_forward(config, params, np.array([window]))[0, -1]
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# the trainer, checkpoints and the daemon's settings


def test_threaded_steps_with_all_options_agree_with_one_thread():
    config = CONFIGS["all_on"]
    train = TrainConfig(batch_size=4, seq_len=T, warmup_steps=0, schedule="constant", learning_rate=1e-2)
    x = np.random.default_rng(3).integers(0, config.vocab_size, (4, T + 1)).astype(np.int32)
    results = []
    for threads in (1, 2):
        with Trainer(config, dataclasses.replace(train, threads=threads)) as trainer:
            losses = [trainer.step(x[:, :-1], x[:, 1:]).loss for _ in range(3)]
            results.append((losses, trainer.params.copy()))
    assert losses[-1] < losses[0]  # it learns
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    # the thread count changes the order of the gradient sums; Adam divides each gradient by its own
    # running scale, so a parameter whose gradient is near zero may move by a few ulps of the rate
    # more or less: compare the whole vector, not each element
    one, two = results[0][1], results[1][1]
    assert np.linalg.norm(one - two) <= 1e-5 * np.linalg.norm(one)
    assert np.max(np.abs(one - two)) <= 1e-3 * train.learning_rate


def test_checkpoint_records_the_architecture(tmp_path):
    config = CONFIGS["all_on"]
    params = perturbed_params(config)
    zeros = np.zeros_like(params)
    path = save_checkpoint(tmp_path, step=3, model_config=config, params=params, m=zeros, v=zeros)
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_config == config
    with Trainer.from_checkpoint(checkpoint, TrainConfig(batch_size=2, seq_len=T, threads=1)) as trainer:
        assert trainer.model_config == config
    # a config that differs in architecture alone cannot take this checkpoint
    with pytest.raises(CheckpointIncompatible, match="norm: checkpoint=rmsnorm expected=layernorm"):
        load_checkpoint(path, expect=dataclasses.replace(config, norm="layernorm"))


def test_a_checkpoint_from_before_the_options_loads_as_gpt2(tmp_path):
    params = perturbed_params(BASE)
    zeros = np.zeros_like(params)
    path = save_checkpoint(tmp_path, step=1, model_config=BASE, params=params, m=zeros, v=zeros)
    # rewrite its model_config as an older program wrote it: the size fields and the seed only
    data = path.read_bytes()
    metadata = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = safetensors.numpy.load(data)
    old = {k: v for k, v in BASE.to_dict().items() if k in BASE.SIZE_FIELDS + ("seed",)}
    metadata["model_config"] = json.dumps(old, sort_keys=True)
    metadata["sha256"] = _digest([tensors[n] for n in ("params", "adam_m", "adam_v")], metadata)
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))

    checkpoint = load_checkpoint(path, expect=BASE)
    assert checkpoint.model_config == BASE
    x, y = batch(BASE)
    loss, _ = loss_and_grad(checkpoint.model_config, checkpoint.params, x, y)
    assert loss == pytest.approx(reference_loss(BASE, params.astype(np.float64), x, y), rel=1e-5)


def test_model_settings_pass_through_the_daemon_config(tmp_path):
    from crawler.config import load_config

    toml = tmp_path / "config.toml"
    toml.write_text('[model]\npositions = "both"\nnorm = "rmsnorm"\nqk_norm = true\nactivation = "relu2"\n'
                    'zero_init_proj = true\nlogit_softcap = 15\n')
    model = load_config(toml, env={"CRYSTALLINE_MODEL_TIE_HEAD": "false"}, state_dir=tmp_path).model
    assert (model.positions, model.norm, model.qk_norm, model.activation) == ("both", "rmsnorm", True, "relu2")
    assert (model.zero_init_proj, model.logit_softcap, model.tie_head) == (True, 15.0, False)
    toml.write_text('[model]\nnorm = "batchnorm"\n')
    from crawler import ConfigError as SettingError

    with pytest.raises(SettingError, match=r"\[model\] norm \('batchnorm'\) must be one of layernorm, rmsnorm"):
        load_config(toml, env={}, state_dir=tmp_path)
