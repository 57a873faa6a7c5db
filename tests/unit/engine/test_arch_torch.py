"""The architecture options against PyTorch eager (crawler/bench/torch_reference.py) on the same
weights and batch: the float64 torch logits equal the engine's numpy reference, and the engine's
loss and every gradient tensor match torch's, for each option alone and for all of them at once.

Criteria as in test_torch_parity.py: loss at rel 1e-5; per named tensor
||engine - torch|| <= 1e-4 * ||torch||.
"""

import dataclasses

import numpy as np
import pytest

# `make test` installs torch; without it these skip, and a run with CRYSTALLINE_REQUIRE=torch
# (.ci/run) stops before the first test instead (tests/conftest.py)
torch = pytest.importorskip("torch", reason="needs PyTorch: `make test` installs it (pip install -e '.[dev,bench]')")

from crawler.bench.torch_reference import TorchGPT  # noqa: E402
from crawler.config import Config  # noqa: E402
from engine import ModelConfig  # noqa: E402
from engine.layout import init_parameters, parameter_table  # noqa: E402
from engine.model import loss_and_grad  # noqa: E402
from engine.reference import reference_forward  # noqa: E402

pytestmark = pytest.mark.torch

LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-4
BASE = ModelConfig(vocab_size=37, context_length=12, d_model=24, n_layer=2, n_head=3, seed=7)
B, T = 3, 11
OPTIONS = {
    "rope": dict(positions="rope"),
    "both": dict(positions="both"),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(activation="relu2"),
    "softcap": dict(logit_softcap=2.0),
    "untied": dict(tie_head=False),
    "all_on": dict(positions="rope", norm="rmsnorm", qk_norm=True, activation="relu2", zero_init_proj=True,
                   logit_softcap=2.0, tie_head=False),
    "all_on_one_head": dict(positions="both", norm="rmsnorm", qk_norm=True, activation="relu2",
                            logit_softcap=2.0, tie_head=False, n_head=1),
}
# the architecture `crystalline run` and `train` use by default, whatever it is today
_DEFAULT_MODEL = Config().model
OPTIONS["product_default"] = {f: getattr(_DEFAULT_MODEL, f) for f in ModelConfig.ARCHITECTURE_FIELDS}


def setup(name):
    config = dataclasses.replace(BASE, **OPTIONS[name]).validate()
    params = init_parameters(config)
    params += np.random.default_rng(1).standard_normal(params.size).astype(np.float32) * np.float32(0.3)
    tokens = np.random.default_rng(2).integers(0, config.vocab_size, (B, T + 1), dtype=np.int32)
    return config, params, np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


@pytest.mark.parametrize("name", OPTIONS)
def test_torch_logits_equal_the_numpy_reference(name):
    config, params, inputs, _ = setup(name)
    ours = TorchGPT.from_flat(config, params, dtype=torch.float64).logits(inputs).detach().numpy()
    np.testing.assert_allclose(ours, reference_forward(config, params, inputs), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", OPTIONS)
def test_loss_and_every_gradient_tensor_match_torch(name):
    config, params, inputs, targets = setup(name)
    loss, grads = loss_and_grad(config, params.copy(), inputs, targets)
    ref_loss, ref_grads = TorchGPT.from_flat(config, params, dtype=torch.float64).loss_and_grad(inputs, targets)
    assert loss == pytest.approx(ref_loss, rel=LOSS_RTOL)
    bad = {}
    for tensor, seg in parameter_table(config).offsets.items():
        a = grads[seg.offset : seg.stop].astype(np.float64)
        b = ref_grads[seg.offset : seg.stop].astype(np.float64)
        if b.size and not np.linalg.norm(a - b) <= GRAD_RTOL * np.linalg.norm(b):
            bad[tensor] = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert not bad, f"relative error above {GRAD_RTOL}: {bad}"
