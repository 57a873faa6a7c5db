"""A PyTorch eager GPT-2 over the engine's flat parameter layout: the reference the engine is
checked against, and the baseline `crystalline bench --compare-torch` races.

Built from standard torch ops only (`layer_norm`, `rms_norm`, `linear`,
`scaled_dot_product_attention`, `gelu(approximate="tanh")`, `relu`, `tanh`, `cross_entropy`), so
it is the textbook model, not a port of the engine's kernels. Every architecture option of
ModelConfig is covered (rotary positions, RMSNorm, QK-norm, ReLU^2, soft-capped logits, the
untied head; zero-initialised projections are a matter of the initial values only). Each tensor of `engine.layout.parameter_table` becomes one torch leaf tensor
with the same name and shape; parameters are loaded from and gradients exported to one flat
numpy array in that layout, so tests compare tensor by tensor through the table.

Not part of the engine and not used by the daemon. Relies on PyTorch, imported lazily: without
it, everything here raises an ImportError that says how to install it.
"""

from __future__ import annotations

import math

import numpy as np

from engine import ModelConfig
from engine.layout import DECAYED, parameter_table
from engine.maths import NORM_EPS, ROPE_BASE
from engine.muon import MUON_TENSORS, NS_COEFFICIENTS
from engine.muon import NORM_EPS as NS_NORM_EPS
INSTALL_HINT = "PyTorch is needed for the reference model: pip install -e '.[bench]'"


def require_torch():
    """The torch module; raises ImportError with the install command when it is missing."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return torch


class TorchGPT:
    """GPT-2 in torch eager mode, one leaf tensor per entry of the engine's parameter table."""

    def __init__(self, config: ModelConfig, tensors: dict):
        self.config = config
        self.table = parameter_table(config)
        self.tensors = tensors  # name -> leaf tensor with requires_grad, in table order

    @classmethod
    def from_flat(cls, config: ModelConfig, params: np.ndarray, dtype=None) -> "TorchGPT":
        """Copy a flat float32 parameter buffer (engine layout) into fresh torch leaf tensors.

        dtype defaults to torch.float32; tests pass torch.float64 for a reference whose own
        rounding error is negligible next to the engine's.
        """
        torch = require_torch()
        dtype = dtype or torch.float32
        table = parameter_table(config)
        views = table.views(np.asarray(params, dtype=np.float32))
        tensors = {
            name: torch.tensor(getattr(views, name), dtype=dtype).requires_grad_(True)
            for name, _ in table.entries
        }
        return cls(config, tensors)

    # -----------------------------------------------------------------------------------------
    # forward

    def logits(self, inputs):
        """inputs is (B, T) token ids; returns the (B, T, V) logits."""
        torch = require_torch()
        F = torch.nn.functional
        p = self.tensors
        C, NH, L = self.config.d_model, self.config.n_head, self.config.n_layer
        hs = C // NH
        idx = torch.as_tensor(np.asarray(inputs), dtype=torch.long)
        B, T = idx.shape
        config = self.config

        def norm(x, weight, bias):
            if config.norm == "rmsnorm":
                return F.rms_norm(x, (x.shape[-1],), weight, NORM_EPS)
            return F.layer_norm(x, (C,), weight, bias, NORM_EPS)

        if config.rope:
            # half-split pairs (i, i + hs/2) turned by t * base^(-2i/hs), as in GPT-NeoX and Llama
            inv_freq = ROPE_BASE ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
            angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq).to(p["wte"].dtype)
            cos, sin = angles.cos(), angles.sin()  # (T, hs/2)

        def rotate(x):  # (B, NH, T, hs)
            x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

        x = p["wte"][idx]  # (B, T, C)
        if config.learned_positions:
            x = x + p["wpe"][:T]
        for l in range(L):
            h = norm(x, p["ln1w"][l], p["ln1b"][l])
            qkv = F.linear(h, p["qkvw"][l], p["qkvb"][l])  # (B, T, 3*C)
            q, k, v = (t.view(B, T, NH, hs).transpose(1, 2) for t in qkv.split(C, dim=2))
            if config.qk_norm:
                q, k = F.rms_norm(q, (hs,), eps=NORM_EPS), F.rms_norm(k, (hs,), eps=NORM_EPS)
            if config.rope:
                q, k = rotate(q), rotate(k)
            # (B, NH, T, hs): softmax(q k^T / sqrt(hs)) v over the causal prefix
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(hs))
            y = y.transpose(1, 2).reshape(B, T, C)  # heads side by side again
            x = x + F.linear(y, p["attprojw"][l], p["attprojb"][l])
            h = norm(x, p["ln2w"][l], p["ln2b"][l])
            h = F.linear(h, p["fcw"][l], p["fcb"][l])  # (B, T, H)
            h = F.relu(h).square() if config.activation == "relu2" else F.gelu(h, approximate="tanh")
            x = x + F.linear(h, p["fcprojw"][l], p["fcprojb"][l])
        x = norm(x, p["lnfw"], p["lnfb"])
        # (B, T, V): the head is tied to the token embedding unless tie_head is off
        logits = F.linear(x, p["wte"] if config.tie_head else p["lm_head"])
        if config.logit_softcap > 0:
            logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        return logits

    def new_cache(self) -> dict:
        """An empty key/value cache for `next_logits`: (L, NH, context_length, hs) keys and values."""
        torch = require_torch()
        c = self.config
        shape = (c.n_layer, c.n_head, c.context_length, c.d_model // c.n_head)
        dtype = self.tensors["wte"].dtype
        return {"k": torch.zeros(shape, dtype=dtype), "v": torch.zeros(shape, dtype=dtype), "length": 0}

    def next_logits(self, token: int, cache: dict):
        """The (V,) logits after one more token, batch 1, its keys and values appended to `cache`:
        the PyTorch twin of engine.sample.Generator (run it under torch.inference_mode())."""
        torch = require_torch()
        F = torch.nn.functional
        p, config = self.tensors, self.config
        C, NH = config.d_model, config.n_head
        hs = C // NH
        t = cache["length"]
        if t == config.context_length:
            raise ValueError("the cache is full: start a new one")

        def norm(x, weight, bias):
            if config.norm == "rmsnorm":
                return F.rms_norm(x, (C,), weight, NORM_EPS)
            return F.layer_norm(x, (C,), weight, bias, NORM_EPS)

        if config.rope:
            inv_freq = ROPE_BASE ** (-torch.arange(0, hs, 2, dtype=torch.float64) / hs)
            angles = (t * inv_freq).to(p["wte"].dtype)
            cos, sin = angles.cos(), angles.sin()  # (hs/2,)

        def rotate(x):  # (NH, hs)
            x1, x2 = x[..., : hs // 2], x[..., hs // 2 :]
            return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

        x = p["wte"][token]  # (C,)
        if config.learned_positions:
            x = x + p["wpe"][t]
        for l in range(config.n_layer):
            qkv = F.linear(norm(x, p["ln1w"][l], p["ln1b"][l]), p["qkvw"][l], p["qkvb"][l])  # (3*C,)
            q, k, v = (part.view(NH, hs) for part in qkv.split(C))
            if config.qk_norm:
                q, k = F.rms_norm(q, (hs,), eps=NORM_EPS), F.rms_norm(k, (hs,), eps=NORM_EPS)
            if config.rope:
                q, k = rotate(q), rotate(k)
            cache["k"][l, :, t] = k
            cache["v"][l, :, t] = v
            keys, values = cache["k"][l, :, : t + 1], cache["v"][l, :, : t + 1]  # (NH, t+1, hs)
            y = F.scaled_dot_product_attention(q[:, None], keys, values, scale=1.0 / math.sqrt(hs))  # (NH, 1, hs)
            x = x + F.linear(y.reshape(C), p["attprojw"][l], p["attprojb"][l])
            h = F.linear(norm(x, p["ln2w"][l], p["ln2b"][l]), p["fcw"][l], p["fcb"][l])  # (H,)
            h = F.relu(h).square() if config.activation == "relu2" else F.gelu(h, approximate="tanh")
            x = x + F.linear(h, p["fcprojw"][l], p["fcprojb"][l])
        cache["length"] = t + 1
        logits = F.linear(norm(x, p["lnfw"], p["lnfb"]), p["wte"] if config.tie_head else p["lm_head"])
        if config.logit_softcap > 0:
            logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        return logits

    def loss(self, inputs, targets):
        """Mean cross-entropy over all (B, T) positions, as a scalar tensor ready for backward()."""
        torch = require_torch()
        logits = self.logits(inputs)
        tgt = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))

    def nats(self, inputs, targets) -> float:
        """Summed cross-entropy in nats over all (B, T) positions, without gradients: the figure
        engine.Trainer.evaluate returns first, the numerator of bits per byte."""
        torch = require_torch()
        with torch.no_grad():
            logits = self.logits(inputs)
            tgt = torch.as_tensor(np.asarray(targets), dtype=torch.long)
            return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                                           reduction="sum"))

    def loss_and_grad(self, inputs, targets) -> tuple[float, np.ndarray]:
        """The loss and its gradient in the flat engine layout (engine.model.loss_and_grad's twin)."""
        self.zero_grad()
        loss = self.loss(inputs, targets)
        loss.backward()
        return float(loss.detach()), self.flat_grads()

    # -----------------------------------------------------------------------------------------
    # the flat layout and the optimizer

    def parameters(self) -> list:
        """The leaf tensors in table order (for clip_grad_norm_)."""
        return list(self.tensors.values())

    def parameter_groups(self, weight_decay: float) -> list[dict]:
        """torch.optim param groups: weight decay on the engine's DECAYED tensors only."""
        decayed = [t for name, t in self.tensors.items() if name in DECAYED]
        other = [t for name, t in self.tensors.items() if name not in DECAYED]
        return [
            {"params": decayed, "weight_decay": weight_decay},
            {"params": other, "weight_decay": 0.0},
        ]

    def zero_grad(self) -> None:
        for tensor in self.tensors.values():
            tensor.grad = None

    def flat_params(self) -> np.ndarray:
        """The parameters as one float32 array in the engine layout."""
        return self._flatten({name: t.detach() for name, t in self.tensors.items()})

    def flat_grads(self) -> np.ndarray:
        """The accumulated gradients as one float32 array in the engine layout (zeros where none)."""
        return self._flatten({name: t.grad for name, t in self.tensors.items()})

    def _flatten(self, tensors: dict) -> np.ndarray:
        out = self.table.allocate()
        for name, tensor in tensors.items():
            if tensor is not None:
                seg = self.table.offsets[name]
                out[seg.offset : seg.stop] = tensor.reshape(-1).cpu().numpy()
        return out


class TorchMuon:
    """The engine's `optimizer = "muon"` in PyTorch: Muon (engine/muon.py's formulas: momentum,
    Nesterov look-ahead, the quintic Newton-Schulz on u / ||u||_F, decoupled decay, the step scaled
    by sqrt(max(1, rows / cols))) for the matrices engine.muon.MUON_TENSORS names, each q, k and v
    block of qkvw on its own, all the same-shaped matrices of a tensor orthogonalised together as
    one batch (`orthogonalise`); torch.optim.AdamW for every other tensor. Clip the gradients first,
    as the engine does; `step(lr)` takes AdamW's rate and scales Muon's by the same schedule."""

    def __init__(self, model: TorchGPT, train) -> None:
        torch = require_torch()
        self.model, self.train = model, train
        self.blocks = {name: blocks for name, blocks in MUON_TENSORS if name in model.tensors}
        others = [name for name in model.tensors if name not in self.blocks]
        self.adamw = torch.optim.AdamW(
            [{"params": [model.tensors[n] for n in others if n in DECAYED], "weight_decay": train.weight_decay},
             {"params": [model.tensors[n] for n in others if n not in DECAYED], "weight_decay": 0.0}],
            lr=train.learning_rate, betas=(train.beta1, train.beta2), eps=train.eps)
        self.momentum = {name: torch.zeros_like(model.tensors[name]) for name in self.blocks}

    @staticmethod
    def orthogonalise(G, steps: int):
        """NewtonSchulz5 of a (rows, cols) matrix, or of each of a (batch, rows, cols) stack at
        once (one batched product a Newton-Schulz step and product, as modded-nanogpt's batched
        Muon runs the same-shaped matrices of all layers), as engine.muon.newton_schulz_reference:
        each matrix is scaled by its own Frobenius norm."""
        a, b, c = NS_COEFFICIENTS
        tall = G.shape[-2] > G.shape[-1]
        X = G.mT if tall else G
        X = X / (X.norm(dim=(-2, -1), keepdim=True) + NS_NORM_EPS)
        for _ in range(steps):
            A = X @ X.mT
            X = a * X + (b * A + c * A @ A) @ X
        return X.mT if tall else X

    def step(self, lr: float | None = None) -> None:
        torch = require_torch()
        tc = self.train
        lr = tc.learning_rate if lr is None else lr
        muon_lr, beta = tc.muon_lr * lr / tc.learning_rate, tc.muon_momentum
        with torch.no_grad():
            for name, blocks in self.blocks.items():
                weight, momentum = self.model.tensors[name], self.momentum[name]
                grad = weight.grad
                momentum.mul_(beta).add_(grad, alpha=1 - beta)
                u = (1 - beta) * grad + beta * momentum  # (L, rows, cols)
                L, rows, cols = u.shape[0], u.shape[1] // blocks, u.shape[2]
                # every layer's blocks (q, k and v of qkvw) are matrices of one shape: one stack
                update = self.orthogonalise(u.reshape(L * blocks, rows, cols), tc.ns_steps)
                update = update.reshape(L, blocks * rows, cols) * max(1.0, rows / cols) ** 0.5
                weight.mul_(1 - muon_lr * tc.muon_weight_decay).sub_(muon_lr * update)
            for group in self.adamw.param_groups:
                group["lr"] = lr
        self.adamw.step()


# ---------------------------------------------------------------------------------------------
# a training step as the engine takes it


def torch_optimizer(model: TorchGPT, train):
    """The engine's optimizer for `train` in PyTorch: TorchMuon for optimizer = "muon", else
    torch.optim.AdamW with weight decay on the engine's DECAYED tensors only."""
    if train.optimizer == "muon":
        return TorchMuon(model, train)
    torch = require_torch()
    return torch.optim.AdamW(model.parameter_groups(train.weight_decay), lr=train.learning_rate,
                             betas=(train.beta1, train.beta2), eps=train.eps)


def train_step(model: TorchGPT, optimizer, inputs, targets, grad_clip: float, lr: float | None = None) -> float:
    """One step: every gradient to None, the mean loss backward, the global norm clipped at
    `grad_clip`, the optimizer's step at `lr` (its own rate when None). Returns the loss."""
    torch = require_torch()
    model.zero_grad()
    loss = model.loss(inputs, targets)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if isinstance(optimizer, TorchMuon):
        optimizer.step(lr)
    else:
        for group in optimizer.param_groups if lr is not None else ():
            group["lr"] = lr
        optimizer.step()
    return float(loss.detach())
