"""Growth of a trained model in depth: more blocks, the same function, the optimizer state kept.

What it is: pure functions from a model (its ModelConfig and flat buffers laid out by
layout.parameter_table) to the same model with `add` more blocks. `depth_plan` says where each
block of the grown stack comes from; `grow_depth` builds the grown parameters and optimizer
state; `grow_parameters` and `grow_state` do it for one buffer each (the trainer uses them for
the distributed averager's anchor and outer velocity too). What it is not: the live swap of a
running trainer's buffers, threads and plans (Trainer.grow), nor the decision when to grow or by
how much (the caller's). Relies on layout.py's tables: every tensor of layout.BLOCKS is
(L, ...) with block l at index l, and every other tensor keeps its shape whatever L is.

Exactness. A block adds two residual branches to the stream x:
    x = x + attproj(attention(qkv(norm1(x))))       attproj(y) = y @ attprojw.T + attprojb
    x = x + fcproj(act(fc(norm2(x))))               fcproj(h)  = h @ fcprojw.T + fcprojb
An added block has attprojw, attprojb, fcprojw and fcprojb zero, so each branch is y @ 0 + 0 =
0 exactly (for finite y) and x + 0 = x: the block is the identity on the stream, in float32 as
in exact arithmetic. Every other block and every tensor outside the stack is copied bit for bit,
so the grown model's logits are the old model's bits, not just close to them.

Initialisation of an added block ("copy", the default): its norms, qkvw, qkvb, fcw and fcb are a
copy of a trained block's, only its output projections zero. Like G_stack (Du et al. 2024,
"Stacking Your Transformers", which found duplicating trained blocks the best of the growth
operators it compared) the new block starts with features already trained, but unlike G_stack
(which copies the projections too and so changes the function) it adds nothing until training
moves its projections. Those get gradient at once (d attprojw = dx^T y, with y the copied
attention's output), so the first step moves them; the inner weights' gradient passes through
the projections (dy = dx @ attprojw), zero at the step of growth, and flows from the second
step on. "fresh" draws the inner weights as layout.init_parameters draws a new model's (N(0,
0.02), unit gains, zero biases), from a seed derived from the config's seed and the two depths,
with the same zero projections: the pure identity start, for comparison.

Placement ("interleave", the default): each added block sits directly above the trained block it
copies, and the added blocks are spread as evenly as whole numbers allow (doubling L gives 0, 0',
1, 1', ...; one block more goes on top of the last). Above its source, the copy reads a stream
that differs from its source's input by one block's contribution, close to what its weights
were trained on. "top" stacks the added blocks above the whole stack, copying the top `add`
blocks in order (all L of them when doubling, G_stack's stack of the model on itself; beyond L,
the stack 0..L-1 repeated, ending with the top block), so a copy of block 0 may read the top of
the stack, far from the embedding it was trained on. Either keeps the function exactly; they
differ only in how training goes on. One run each on Shakespeare (d_model 96, Muon, 2 blocks
grown to 4 halfway through 1,600 steps) put interleave/copy, top/copy and interleave/fresh
within the runs' noise of each other and of 4 blocks trained from the start, all well below 2
blocks kept: the default rests on the argument above, not on a measured difference.

Optimizer state ("the old parts keep theirs, the new parts start from zero"): m and v of every
copied tensor move with their block (old block l's state lands where old block l now is) and
every tensor outside the stack keeps its own; an added block's state is zero. Muon's momentum
lives in the matrices' slots of m (engine/muon.py), so it moves the same way. The step count is
kept, so AdamW's bias correction 1 - beta^t is about 1 for an added block whose moments start at
zero: its first updates are smaller than a fresh Adam's lr * sign(g) and then slightly larger,
(1 - beta1^k) / sqrt(1 - beta2^k) of it after k steps: with beta1 0.9 and beta2 0.95 (the
defaults) 0.45 at the first step, 0.9 by the sixth, at most 1.10 (the twentieth), 1 after. A
short warm-up of the new parts, left as it is; per-parameter step counts would cost a count per
element or per range of the update plan, and a checkpoint field. (A beta2 of 0.999 would peak at
6.6 instead: then it would need handling.) Muon's update is scale-free (the momentum is
normalised before Newton-Schulz), so zero momentum carries no such bias.

Determinism: every function here is a fixed function of its inputs (the "fresh" seed too), so
ranks that grow at the same step with the same arguments stay bit-identical where they were.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from .config import ConfigError, ModelConfig
from .errors import ShapeMismatch
from .layout import BLOCKS, Table, init_parameters, parameter_table

PLACEMENTS = ("interleave", "top")
INITS = ("copy", "fresh")
# An added block's residual-branch outputs: zero, so the block adds exactly 0 to the stream.
RESIDUAL_OUTPUTS = ("attprojw", "attprojb", "fcprojw", "fcprojb")


class DepthPlan(NamedTuple):
    """Where each block of the grown stack comes from."""

    origin: tuple[int, ...]  # (L',): the old block that block j is (kept) or copies (added)
    added: tuple[int, ...]  # the indices j of the added blocks, ascending

    @property
    def kept(self) -> tuple[int, ...]:
        """The new index of each old block, in old order."""
        added = set(self.added)
        return tuple(j for j in range(len(self.origin)) if j not in added)


class Grown(NamedTuple):
    """A grown model: its config, flat buffers in the grown layout, and the plan that made it."""

    config: ModelConfig
    params: np.ndarray
    m: np.ndarray
    v: np.ndarray
    plan: DepthPlan


def depth_plan(n_layer: int, add: int, placement: str = "interleave") -> DepthPlan:
    """The plan for adding `add` blocks to a stack of `n_layer` (the module docstring says how
    each placement orders them). Raises ConfigError for a placement outside PLACEMENTS or an
    `add` that is not a positive integer."""
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement ({placement!r}) must be one of {', '.join(PLACEMENTS)}")
    if isinstance(add, bool) or not isinstance(add, (int, np.integer)) or add < 1:
        raise ConfigError(f"the blocks to add ({add!r}) must be a positive integer")
    if isinstance(n_layer, bool) or not isinstance(n_layer, (int, np.integer)) or n_layer < 1:
        raise ConfigError(f"n_layer ({n_layer!r}) must be a positive integer")
    L, add = int(n_layer), int(add)
    origin: list[int] = []
    added: list[int] = []
    if placement == "interleave":
        for l in range(L):
            origin.append(l)
            # block l's share of `add`: floor(add * (l+1) / L) - floor(add * l / L), which sums to
            # `add` over the stack, differs by at most one between blocks and gives the top block one
            for _ in range(add * (l + 1) // L - add * l // L):
                added.append(len(origin))
                origin.append(l)
    else:
        origin = list(range(L))
        for i in range(add):
            added.append(len(origin))
            origin.append((L - add + i) % L)  # the top `add` blocks in order; the whole stack, repeated, beyond L
    return DepthPlan(tuple(origin), tuple(added))


def grown_config(config: ModelConfig, plan: DepthPlan) -> ModelConfig:
    """`config` with the plan's depth: nothing else in a ModelConfig depends on n_layer (the
    projections' 1/sqrt(2L) init scale is used only by init_parameters, at a model's birth)."""
    return dataclasses.replace(config, n_layer=len(plan.origin)).validate()


def _tables(config: ModelConfig, plan: DepthPlan) -> tuple[Table, Table, ModelConfig]:
    if len(plan.origin) - len(plan.added) != config.n_layer or any(not 0 <= o < config.n_layer for o in plan.origin):
        raise ConfigError(f"the plan {plan} does not grow a stack of {config.n_layer} blocks")
    new_config = grown_config(config, plan)
    old, new = parameter_table(config), parameter_table(new_config)
    for name, shape in old.entries:
        # a guard for a tensor added to layout.py later: outside BLOCKS, it must not depend on L
        if name not in BLOCKS and new.shapes[name] != shape:
            raise ShapeMismatch(f"{name} changes shape with depth ({shape} -> {new.shapes[name]}) "
                                "but is not in layout.BLOCKS")
    return old, new, new_config


def _check(buffer: np.ndarray, table: Table, name: str) -> None:
    if buffer.dtype != np.float32 or buffer.shape != (table.size,):
        raise ShapeMismatch(f"{name} must be flat float32 of {table.size} elements, "
                            f"got {buffer.dtype}{list(buffer.shape)}")


def grow_state(config: ModelConfig, plan: DepthPlan, state: np.ndarray, name: str = "state") -> np.ndarray:
    """A new buffer in the grown layout: every tensor of `state` (an optimizer moment, or any
    buffer shaped as the parameters) where its block now is, zero for the added blocks."""
    old, new, _ = _tables(config, plan)
    _check(state, old, name)
    out = new.allocate()
    src, dst = old.views(state), new.views(out)
    origin, added = list(plan.origin), list(plan.added)
    for tensor in old.shapes:
        s, d = getattr(src, tensor), getattr(dst, tensor)
        if tensor in BLOCKS:
            d[...] = s[origin]  # (L', ...): block j gets the state of the block it is or copies
            d[added] = 0.0  # then the added blocks start from none
        else:
            d[...] = s
    return out


def grow_parameters(config: ModelConfig, plan: DepthPlan, params: np.ndarray, init: str = "copy") -> np.ndarray:
    """A new parameter buffer in the grown layout computing the same function as `params`: the
    old blocks and every tensor outside the stack copied, each added block a copy of its origin
    ("copy") or freshly drawn ("fresh"), with its residual-branch outputs zero."""
    if init not in INITS:
        raise ConfigError(f"init ({init!r}) must be one of {', '.join(INITS)}")
    old, new, new_config = _tables(config, plan)
    _check(params, old, "params")
    out = new.allocate()
    src, dst = old.views(params), new.views(out)
    origin, added = list(plan.origin), list(plan.added)
    fresh = None
    if init == "fresh":
        # a model of the grown shape as init_parameters draws one, from a seed of its own (not the
        # config's: that stream drew the old model's weights); only its added blocks are used
        entropy = (config.seed, config.n_layer, new_config.n_layer)
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63
        fresh = new.views(init_parameters(dataclasses.replace(new_config, seed=seed), new))
    for tensor in old.shapes:
        s, d = getattr(src, tensor), getattr(dst, tensor)
        if tensor not in BLOCKS:
            d[...] = s
            continue
        d[...] = s[origin]  # (L', ...): kept blocks are themselves, added blocks copy their origin
        if fresh is not None:
            d[added] = getattr(fresh, tensor)[added]
        if tensor in RESIDUAL_OUTPUTS:
            d[added] = 0.0  # the added block adds exactly 0 to the residual stream
    return out


def grow_depth(config: ModelConfig, params: np.ndarray, m: np.ndarray, v: np.ndarray, add: int,
               placement: str = "interleave", init: str = "copy") -> Grown:
    """The model of `config` and `params` with `add` more blocks, computing the same logits to
    the bit, and its optimizer moments m and v mapped to the grown layout (the added blocks'
    zero). The inputs are not changed. Raises ConfigError for a bad add, placement or init, and
    ShapeMismatch for buffers that are not flat float32 of the config's parameter count."""
    plan = depth_plan(config.n_layer, add, placement)
    return Grown(grown_config(config, plan), grow_parameters(config, plan, params, init),
                 grow_state(config, plan, m, "m"), grow_state(config, plan, v, "v"), plan)
