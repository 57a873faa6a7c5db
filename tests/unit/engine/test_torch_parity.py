"""The engine against PyTorch eager on the same weights and batch: the loss, every gradient
tensor, and three full Trainer steps (AdamW, global-norm clipping, 1 and 2 worker threads)
against torch.optim.AdamW with clip_grad_norm_.

The torch side runs in float64, so the differences measured are the engine's float32 error.
Criterion per named tensor of the parameter table: ||engine - torch|| <= rtol * ||torch||.
"""

import math

import numpy as np
import pytest

# `make test` installs torch; without it these skip, and a run with CRYSTALLINE_REQUIRE=torch
# (.ci/run) stops before the first test instead (tests/conftest.py)
torch = pytest.importorskip("torch", reason="needs PyTorch: `make test` installs it (pip install -e '.[dev,bench]')")

from crawler.bench.torch_reference import TorchGPT  # noqa: E402
from engine import ModelConfig, TrainConfig, Trainer  # noqa: E402
from engine.layout import init_parameters, parameter_table  # noqa: E402
from engine.model import loss_and_grad  # noqa: E402
from engine.reference import reference_forward  # noqa: E402

pytestmark = pytest.mark.torch

LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
# Updates are compared as (weights after - weights before) in float32: near the LayerNorm gains
# (about 1) float32's spacing is 1.2e-7, some 4e-5 of a 3e-3 step, so updates get a looser bound
# than gradients. (Measured: at most 3.4e-5, on the gains; 2e-6 elsewhere.)
UPDATE_RTOL = 2e-4

# Small, but with every dimension distinct, several heads and layers, and T < context_length,
# so a transposed view or a wrong head split cannot pass by symmetry.
CONFIG = ModelConfig(vocab_size=37, context_length=12, d_model=24, n_layer=2, n_head=3, seed=7).validate()
B, T = 3, 10


def random_params(config: ModelConfig) -> np.ndarray:
    """GPT-2 init plus noise on every tensor, so zero biases and unit gains hide nothing."""
    params = init_parameters(config)
    rng = np.random.default_rng(1)
    params += rng.standard_normal(params.size).astype(np.float32) * np.float32(0.05)
    return params


def random_batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, CONFIG.vocab_size, (B, T + 1), dtype=np.int32)
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


def relative_errors(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """||ours - reference|| / ||reference|| for each named tensor of the parameter table."""
    table = parameter_table(CONFIG)
    errors = {}
    for name, seg in table.offsets.items():
        a = ours[seg.offset : seg.stop].astype(np.float64)
        b = reference[seg.offset : seg.stop].astype(np.float64)
        errors[name] = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    return errors


def key_bias_indices(config: ModelConfig) -> np.ndarray:
    """Flat indices of the key slice of qkvb. Its gradient is exactly zero: adding q . b_k to
    every score of a query leaves the softmax unchanged. Both sides hold pure rounding noise
    there (float32 about 1e-10, float64 about 1e-19), which Adam's update divides by
    sqrt(v) + eps, so the two updates of these weights are not comparable."""
    C, seg = config.d_model, parameter_table(config).offsets["qkvb"]
    rows = seg.offset + 3 * C * np.arange(config.n_layer)[:, None]  # start of each layer's row
    return (rows + C + np.arange(C)).reshape(-1)  # (L*C,) the k slice: q, k, v are C wide each


def assert_close_per_tensor(ours, reference, rtol, what):
    errors = relative_errors(ours, reference)
    bad = {name: f"{err:.3g}" for name, err in errors.items() if not err <= rtol}
    assert not bad, f"{what}: relative error above {rtol} in {bad}"


# ---------------------------------------------------------------------------------------------
# the reference on its own


def test_zero_parameters_give_the_uniform_loss_ln_V():
    # all-zero weights: every LayerNorm outputs 0 * gain + bias = 0, so the logits are all 0.
    model = TorchGPT.from_flat(CONFIG, parameter_table(CONFIG).allocate())
    loss = model.loss(*random_batch(0)).item()
    assert loss == pytest.approx(math.log(CONFIG.vocab_size), rel=1e-6)


def test_reference_logits_match_the_engine_numpy_reference():
    params = random_params(CONFIG)
    inputs, _ = random_batch(0)
    ours = TorchGPT.from_flat(CONFIG, params, dtype=torch.float64).logits(inputs).detach().numpy()
    np.testing.assert_allclose(ours, reference_forward(CONFIG, params, inputs), rtol=1e-9, atol=1e-9)


def test_flat_round_trip_is_exact():
    params = random_params(CONFIG)
    assert np.array_equal(TorchGPT.from_flat(CONFIG, params).flat_params(), params)


# ---------------------------------------------------------------------------------------------
# the engine against the reference


def test_loss_and_every_gradient_tensor_match_torch():
    params = random_params(CONFIG)
    inputs, targets = random_batch(0)
    loss, grads = loss_and_grad(CONFIG, params.copy(), inputs, targets)
    ref_loss, ref_grads = TorchGPT.from_flat(CONFIG, params, dtype=torch.float64).loss_and_grad(inputs, targets)
    assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL)
    assert grads.shape == ref_grads.shape == params.shape
    assert_close_per_tensor(grads, ref_grads, GRAD_RTOL, "gradient")


def trainer_setup():
    """Params, three batches, their float64 torch twin, and a clip at half the first gradient's
    norm, so that clipping is certainly active on step 1."""
    params = random_params(CONFIG)
    batches = [random_batch(seed) for seed in range(3)]
    model = TorchGPT.from_flat(CONFIG, params, dtype=torch.float64)
    _, first_grads = model.loss_and_grad(*batches[0])
    return params, batches, model, 0.5 * float(np.linalg.norm(first_grads.astype(np.float64)))


@pytest.mark.parametrize("threads", [1, 2])
def test_trainer_steps_match_torch_adamw_with_clipping(threads):
    params, batches, model, clip = trainer_setup()
    train = TrainConfig(
        batch_size=B, seq_len=T, learning_rate=3e-3, warmup_steps=0, schedule="constant",
        weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=clip, threads=threads,
    ).validate(CONFIG)
    optimizer = torch.optim.AdamW(
        model.parameter_groups(train.weight_decay),
        lr=train.learning_rate, betas=(train.beta1, train.beta2), eps=train.eps,
    )
    key_bias = key_bias_indices(CONFIG)
    with Trainer(CONFIG, train, params=params.copy()) as trainer:
        before = ref_before = params.copy()
        for step, (inputs, targets) in enumerate(batches):
            stats = trainer.step(inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(inputs, targets)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip))
            optimizer.step()
            assert stats.lr == pytest.approx(train.learning_rate)
            assert stats.loss == pytest.approx(loss.item(), rel=LOSS_RTOL), f"step {step}"
            # the norm before clipping, as clip_grad_norm_ returns it
            assert stats.grad_norm == pytest.approx(norm, rel=GRAD_RTOL), f"step {step}"
            after, ref_after = np.array(trainer.params, dtype=np.float32), model.flat_params()
            # compare the step each side made, not the weights, which would hide the update's error
            update, ref_update = after - before, ref_after - ref_before
            assert np.abs(update[key_bias]).max() <= 2 * train.learning_rate
            update[key_bias] = ref_update[key_bias]
            assert_close_per_tensor(update, ref_update, UPDATE_RTOL, f"update at step {step}")
            before, ref_before = after, ref_after


@pytest.mark.parametrize("threads", [1, 2])
def test_trainer_steps_match_torch_muon_with_clipping(threads):
    """optimizer = "muon" against TorchMuon (crawler/bench/torch_reference.py) in float64: the
    matrices' Muon steps and every other tensor's AdamW steps, clipping active on step 1."""
    from crawler.bench.torch_reference import TorchMuon

    params, batches, model, clip = trainer_setup()
    train = TrainConfig(
        batch_size=B, seq_len=T, learning_rate=3e-3, warmup_steps=0, schedule="constant", weight_decay=0.1,
        grad_clip=clip, threads=threads, optimizer="muon", muon_lr=0.02, muon_weight_decay=0.01,
    ).validate(CONFIG)
    optimizer = TorchMuon(model, train)
    key_bias = key_bias_indices(CONFIG)
    with Trainer(CONFIG, train, params=params.copy()) as trainer:
        before = ref_before = params.copy()
        for step, (inputs, targets) in enumerate(batches):
            stats = trainer.step(inputs, targets)
            model.zero_grad()
            loss = model.loss(inputs, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            assert stats.loss == pytest.approx(loss.item(), rel=LOSS_RTOL), f"step {step}"
            after, ref_after = np.array(trainer.params, dtype=np.float32), model.flat_params()
            update, ref_update = after - before, ref_after - ref_before
            update[key_bias] = ref_update[key_bias]  # a zero gradient: Adam's step there is noise
            assert_close_per_tensor(update, ref_update, UPDATE_RTOL, f"update at step {step}")
            before, ref_before = after, ref_after


@pytest.mark.parametrize("shape", [(5, 6, 9), (3, 11, 7), (4, 8, 8)])
def test_batched_newton_schulz_equals_the_matrix_by_matrix_iteration(shape):
    """TorchMuon.orthogonalise of a stack of same-shaped matrices (one batched product a step)
    equals orthogonalising each on its own, and the engine's numpy reference, in float64; each
    matrix is scaled by its own norm, so one large matrix does not shrink the others."""
    from crawler.bench.torch_reference import TorchMuon
    from engine.muon import newton_schulz_reference

    rng = np.random.default_rng(7)
    G = rng.standard_normal(shape) * np.array([1e-3, 1.0, 50.0, 2.0, 0.3])[: shape[0], None, None]
    batched = TorchMuon.orthogonalise(torch.from_numpy(G), 5).numpy()
    for i in range(shape[0]):
        one = TorchMuon.orthogonalise(torch.from_numpy(G[i]), 5).numpy()
        np.testing.assert_allclose(batched[i], one, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(batched[i], newton_schulz_reference(G[i], 5), rtol=1e-9, atol=1e-12)
