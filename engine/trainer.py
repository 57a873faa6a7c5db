"""The trainer: a model's parameters, optimizer state and a worker pool, stepped on token batches.

The optimizer is AdamW, or with `optimizer = "muon"` Muon for the blocks' matrices and AdamW for
the rest (engine/muon.py); either way its state is the two flat buffers m and v.

One training system for the daemon and the offline commands. Takes and returns token ids
(np.ndarray) and numbers; knows nothing of files beyond writing its checkpoint where told.
Threads: `Trainer` starts its worker pool once and ends it in `close()`; `step` and `evaluate`
block the calling thread until the workers are done and must not be called concurrently.
Across processes (engine/distributed.py): with a Communicator of several ranks, `step` sums the
gradient across ranks ("sync") or averages the parameters every few steps ("local").
Growth: `grow` deepens the live model between two steps (engine/grow.py for the maths); every
buffer, view, worker thread and plan the shape sizes is built by one method, `_build`, which
__init__ and grow both call, so a grown trainer is the trainer a checkpoint of its shape makes.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adamw import adamw_update
from .config import ConfigError, ModelConfig, TrainConfig
from .distributed import Averager, Communicator, DistributedConfig, all_finite
from .errors import NonFiniteLoss, ShapeMismatch
from .grow import grow_depth, grow_parameters, grow_state
from .kernels.crossentropy import crystalline_cost_table
from .layout import decay_mask, init_parameters, parameter_table
from .model import Workspace, backward, forward
from .muon import muon_matrices, muon_update, orthogonalisation_flops, scratch_size
from .parallel import WorkerPool, update_plan
from .schedule import learning_rate

_blas_limited = False


def _tokens_seen(train_state: dict) -> int:
    """A checkpoint's count of tokens through `step`: "tokens_seen", or as files written before
    the name was settled call it, "tokens_trained" (the same count, replay included)."""
    return int(train_state.get("tokens_seen", train_state.get("tokens_trained", 0)))


def limit_blas_threads() -> None:
    """Hold every BLAS library in the process to one thread. numba's np.dot calls SciPy's
    OpenBLAS, so it is loaded first: a limit set before a library loads does not apply to it."""
    global _blas_limited
    if _blas_limited:
        return
    import scipy.linalg.cython_blas  # noqa: F401 - loads SciPy's BLAS before limiting it
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _blas_limited = True


@dataclass(frozen=True)
class StepStats:
    """What one step did and where its time went.

    The phases are the step's critical path, each its slowest worker's: `forward_seconds` and
    `backward_seconds` are those of the worker whose forward and backward together took longest
    (the one every other worker waits for at the barrier), `reduce_seconds` the longest any worker
    spent summing gradient segments, `update_seconds` the longest clip and optimizer update. The
    slowest rather than the mean, because the step lasts as long as its slowest worker. The phases
    are separated by barriers, so forward + backward + reduce + update + comm <= seconds; the rest
    is the barriers' hand-offs, the waits between the reduction tree's levels, the gradient norm
    and the step's own Python around the worker pool. Timed by perf_counter between kernel calls.
    """

    step: int  # optimizer steps taken so far, this one included
    loss: float  # mean cross-entropy (nats per token) over the global batch, before the update
    crystalline_loss: float  # mean c(x_t, y_t), the seed's crystalline metric
    objective: float  # loss + crystalline_weight * mean expected crystalline cost
    lr: float
    grad_norm: float  # global norm before clipping
    tokens: int
    seconds: float
    update_seconds: float = 0.0  # the update phase (clip and optimizer), its slowest worker
    forward_seconds: float = 0.0  # forward passes and their loss sums, of the slowest computing worker
    backward_seconds: float = 0.0  # backward passes, of the same worker
    reduce_seconds: float = 0.0  # summing the workers' gradients along the tree, its slowest worker
    comm_seconds: float = 0.0  # sums across ranks (engine/distributed.py): gradients, or an average


class Trainer:
    """Data-parallel trainer over `train_config.threads` worker threads."""

    def __init__(self, model_config: ModelConfig, train_config: TrainConfig,
                 params: np.ndarray | None = None, m: np.ndarray | None = None,
                 v: np.ndarray | None = None, step: int = 0, tokens_seen: int = 0,
                 comm: Communicator | None = None, distributed: DistributedConfig | None = None):
        self.model_config = model_config.validate()
        self.train_config = train_config.validate(model_config)
        limit_blas_threads()
        self.table = parameter_table(model_config)
        params = init_parameters(model_config, self.table) if params is None else self._check(params, "params")
        m = self.table.allocate() if m is None else self._check(m, "adam_m")
        v = self.table.allocate() if v is None else self._check(v, "adam_v")
        self.step_count = step
        self.tokens_seen = tokens_seen  # every token through step(), on every rank
        self.growth: list[dict] = []  # one record per growth of the model (grow), oldest first
        self.threads = train_config.resolved_threads()
        B = train_config.batch_size
        self.rows = self._split_rows(B)
        widest = max(b - a for a, b in self.rows)
        self.micro_batch = min(train_config.micro_batch_size or widest, widest) or 1
        weight = train_config.crystalline_weight
        self.cost = crystalline_cost_table(model_config.vocab_size) if weight > 0 else np.zeros((1, 1), np.float32)
        self._sums = np.zeros((self.threads, 3), dtype=np.float64)  # loss, expected, crystal
        self._update_seconds = np.zeros(self.threads, dtype=np.float64)
        self._compute_seconds = np.zeros((self.threads, 2), dtype=np.float64)  # forward, backward
        self._build(params, m, v)
        # across processes: this rank's place, and how the ranks agree (engine/distributed.py)
        self.comm = comm if comm is not None else Communicator()
        self.distributed = (distributed or DistributedConfig()).validate()
        self.averager = (Averager(self.comm, self.distributed, self.params)
                         if self.comm.size > 1 and self.distributed.mode == "local" else None)
        self.comm_seconds = 0.0  # the last step's time in cross-rank sums

    def _build(self, params: np.ndarray, m: np.ndarray, v: np.ndarray) -> None:
        """Everything the model's shape sizes, for self.table: the buffers (taken as they are,
        flat float32 of the table's size), the views, the workers' buffers and threads, and the
        update plan. __init__ calls it once; grow calls it again for the grown shape."""
        tc, P = self.train_config, self.table.size
        self.params, self.m, self.v = params, m, v
        self.decay = decay_mask(self.table)
        self.workspaces = [Workspace(self.model_config, self.micro_batch, tc.seq_len, tc.recompute_activation)
                           for _ in range(self.threads)]
        self.G = np.zeros((self.threads, P), dtype=np.float32)  # row w: worker w's own gradient
        self.p_views = self.table.views(self.params)
        self.g_views = [self.table.views(self.G[w]) for w in range(self.threads)]
        self.pool = WorkerPool(self.threads, P)
        # the update phase: with Muon, whole matrices per worker (parallel.update_plan)
        muon = tc.optimizer == "muon"
        self.matrices = muon_matrices(self.table) if muon else np.zeros((0, 3), np.int64)
        costs = [orthogonalisation_flops(r, c, tc.ns_steps) for _, r, c in self.matrices]
        self.tasks = update_plan(self.threads, P, self.matrices, costs)
        self._owned = [self.matrices[task.matrices] for task in self.tasks]
        self._scratch = [np.zeros(scratch_size(owned), np.float32) for owned in self._owned]

    def _split_rows(self, B: int) -> list[tuple[int, int]]:
        """Each worker's (start, stop) rows of a B-row batch, as even as integers allow."""
        return [(B * w // self.threads, B * (w + 1) // self.threads) for w in range(self.threads)]

    def _check(self, array: np.ndarray, name: str) -> np.ndarray:
        if array.shape != (self.table.size,):
            raise ShapeMismatch(f"{name} has shape {array.shape}, the model needs ({self.table.size},)")
        return np.array(array, dtype=np.float32, copy=True)

    def state_copy(self) -> tuple:
        """A copy of everything `step` changes (parameters, optimizer state, counters, and in
        "local" mode the averager's anchor): restore_state(copy) undoes any steps taken since."""
        averager = self.averager
        outer = None if averager is None else (averager.anchor.copy(),
                                                None if averager.velocity is None else averager.velocity.copy())
        return (self.params.copy(), self.m.copy(), self.v.copy(), self.step_count, self.tokens_seen, outer)

    def restore_state(self, saved: tuple) -> None:
        """Put back a state_copy, in place. ShapeMismatch (and nothing changed) for a copy taken
        before a growth: it holds the old shape."""
        params, m, v, step_count, tokens_seen, outer = saved
        if params.shape != self.params.shape:
            raise ShapeMismatch(f"the state copy has {params.size} parameters, the model {self.params.size}: "
                                "it was taken before the model grew")
        self.step_count, self.tokens_seen = step_count, tokens_seen
        np.copyto(self.params, params)
        np.copyto(self.m, m)
        np.copyto(self.v, v)
        if outer is not None:
            np.copyto(self.averager.anchor, outer[0])
            if outer[1] is not None:
                np.copyto(self.averager.velocity, outer[1])

    @classmethod
    def from_checkpoint(cls, checkpoint, train_config: TrainConfig, **kw) -> "Trainer":
        """Resume parameters, optimizer state and counters from a loaded `Checkpoint`. When the
        checkpoint was trained with the other optimizer, the matrices' state starts afresh."""
        state = checkpoint.train_state or {}
        trainer = cls(checkpoint.model_config, train_config, checkpoint.params, checkpoint.m,
                      checkpoint.v, step=checkpoint.step, tokens_seen=_tokens_seen(state), **kw)
        growth = state.get("growth")
        trainer.growth = copy.deepcopy(growth) if isinstance(growth, list) else []
        saved = state.get("train_config") or {}
        if saved.get("optimizer", "adamw") != train_config.optimizer:
            # the matrices' slots of m hold the other optimizer's state (Muon's momentum, or
            # AdamW's first moment whose v Muon never kept): both restart from zero
            for offset, rows, cols in muon_matrices(trainer.table):
                trainer.m[offset : offset + rows * cols] = 0.0
                trainer.v[offset : offset + rows * cols] = 0.0
        return trainer

    # -----------------------------------------------------------------------------------------
    # growth

    def grow(self, add: int, reason: str = "", placement: str = "interleave", init: str = "copy") -> dict:
        """Add `add` blocks to the live model between two steps (engine/grow.py): the logits stay
        the same bits, the old parts keep their optimizer state and the added ones start from
        zero; training goes on from the same step. Returns the growth record (kind, step,
        tokens_seen, reason, old and new shape with their parameter counts, placement, init, and
        the plan's origin and added blocks), which is also appended to `growth` and so saved in
        every later checkpoint's train_state.

        Not concurrent with step or evaluate. Afterwards params, m, v, G, the table, the views, the
        workspaces, the worker threads and the update plan are new objects of the grown shape: an
        array taken from the trainer before (a cooled copy, a state_copy) keeps the old shape.
        step_count, tokens_seen, the thread count and the communicator are kept. Under MPI every
        rank must grow at the same step with the same arguments: the growth is a fixed function of
        them, so "sync" ranks stay bit-identical, and in "local" mode the averager's anchor and
        outer velocity grow the same way. Raises ConfigError for a bad add, placement, init or
        reason, before anything changes."""
        if not isinstance(reason, str):
            raise ConfigError(f"reason ({reason!r}) must be a string")
        old_config, old_size = self.model_config, self.table.size
        grown = grow_depth(old_config, self.params, self.m, self.v, add, placement, init)
        averager = self.averager
        if averager is not None:  # "local": the parameters after the last average grow as the live ones
            anchor = grow_parameters(old_config, grown.plan, averager.anchor, init)
            velocity = (None if averager.velocity is None
                        else grow_state(old_config, grown.plan, averager.velocity, "velocity"))
        self.pool.close()  # its threads, reduction segments and norm slots are sized for the old buffer
        self.model_config = grown.config
        self.table = parameter_table(grown.config)
        self._build(grown.params, grown.m, grown.v)
        if averager is not None:
            averager.anchor, averager.velocity = anchor, velocity

        def shape(config: ModelConfig, parameters: int) -> dict:
            return {"n_layer": config.n_layer, "d_model": config.d_model, "n_head": config.n_head,
                    "parameters": parameters}

        record = {"kind": "depth", "step": self.step_count, "tokens_seen": self.tokens_seen, "reason": reason,
                  "old": shape(old_config, old_size), "new": shape(grown.config, self.table.size),
                  "placement": placement, "init": init, "origin": list(grown.plan.origin),
                  "added": list(grown.plan.added)}
        self.growth.append(record)
        return copy.deepcopy(record)

    @property
    def memory_per_thread_mb(self) -> float:
        """Activation, activation-gradient and gradient buffers of one worker, in MB."""
        return (self.workspaces[0].nbytes + self.G[0].nbytes) / 1e6

    # -----------------------------------------------------------------------------------------

    def _batch(self, inputs, targets, T_max: int) -> tuple[np.ndarray, np.ndarray]:
        inputs = np.ascontiguousarray(inputs, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        if inputs.ndim != 2 or inputs.shape != targets.shape:
            raise ShapeMismatch(f"inputs {inputs.shape} and targets {targets.shape} must be equal (B, T)")
        if inputs.shape[1] > T_max:
            raise ShapeMismatch(f"sequence length {inputs.shape[1]} exceeds {T_max}")
        V = self.model_config.vocab_size
        for name, a in (("inputs", inputs), ("targets", targets)):
            if a.size and (a.min() < 0 or a.max() >= V):
                raise ShapeMismatch(f"{name} hold token ids outside [0, {V})")
        return inputs, targets

    def step(self, inputs: np.ndarray, targets: np.ndarray, lr: float | None = None) -> StepStats:
        """One optimizer step on a global batch (batch_size, seq_len), at the schedule's rate or
        at `lr` when given (a cool-down run sets its own). Raises NonFiniteLoss (and leaves the
        parameters unchanged) when the gradient norm is not finite."""
        tc = self.train_config
        inputs, targets = self._batch(inputs, targets, tc.seq_len)
        if inputs.shape != (tc.batch_size, tc.seq_len):
            raise ShapeMismatch(f"batch is {inputs.shape}, the trainer expects ({tc.batch_size}, {tc.seq_len})")
        t0 = time.perf_counter()
        lr = learning_rate(tc, self.step_count) if lr is None else float(lr)
        t = self.step_count + 1
        comm, sync = self.comm, self.comm.size > 1 and self.distributed.mode == "sync"
        ranks = comm.size if sync else 1
        dloss = 1.0 / (inputs.size * ranks)  # "sync": the mean over every rank's rows
        weight = tc.crystalline_weight
        cfg, p, cost = self.model_config, self.p_views, self.cost
        sums, phases = self._sums, self._compute_seconds
        sums[:] = 0.0
        phases[:] = 0.0

        def compute(w: int) -> None:
            ws, g = self.workspaces[w], self.g_views[w]
            start, stop = self.rows[w]
            for a in range(start, stop, self.micro_batch):
                x, y = inputs[a : min(stop, a + self.micro_batch)], targets[a : min(stop, a + self.micro_batch)]
                started = time.perf_counter()
                acts = forward(cfg, p, ws, x, y, cost, weight)
                sums[w, 0] += acts.losses.sum(dtype=np.float64)
                sums[w, 1] += acts.expected.sum(dtype=np.float64)
                sums[w, 2] += acts.crystal.sum(dtype=np.float64)
                forwarded = time.perf_counter()
                backward(cfg, p, g, ws, x, y, cost, weight, dloss)
                phases[w, 0] += forwarded - started
                phases[w, 1] += time.perf_counter() - forwarded

        clip = tc.grad_clip
        grads = self.G[0]
        muon_lr = tc.muon_lr * lr / tc.learning_rate  # the schedule's shape, at Muon's peak

        def update(w: int, norm: float) -> None:
            started = time.perf_counter()
            task, owned = self.tasks[w], self._owned[w]
            if not math.isfinite(norm):
                for a, b in task.ranges:
                    grads[a:b] = 0.0
                for offset, rows, cols in owned:
                    grads[offset : offset + rows * cols] = 0.0
                return
            scale = clip / (norm + 1e-6) if clip and norm > clip else 1.0
            for a, b in task.ranges:
                adamw_update(self.params, grads, self.m, self.v, self.decay, a, b, lr,
                             tc.beta1, tc.beta2, tc.eps, tc.weight_decay, t, scale)
            if len(owned):
                muon_update(self.params, grads, self.m, owned, self._scratch[w], muon_lr,
                            tc.muon_momentum, tc.muon_weight_decay, scale, tc.ns_steps)
            self._update_seconds[w] = time.perf_counter() - started

        self.comm_seconds = 0.0

        def across() -> None:  # worker 0, once the threads' gradients are summed into G[0]
            started = time.perf_counter()
            comm.sum_into(grads)
            self.comm_seconds = time.perf_counter() - started

        norm = self.pool.run(compute, self.G, update, across if sync else None)
        local = sums.sum(axis=0)
        totals = (comm.sum_scalars(local) if sync else local) / (inputs.size * ranks)
        finite = math.isfinite(norm) and math.isfinite(totals[0])
        if self.averager is not None and not all_finite(comm, norm if finite else math.nan):
            finite = False  # "local": a rank that diverged makes every rank skip, so counts stay aligned
        if not finite:
            raise NonFiniteLoss(f"step {t}: loss {totals[0]}, gradient norm {norm}; update skipped")
        self.step_count = t
        self.tokens_seen += inputs.size * ranks
        if self.averager is not None and t % self.distributed.sync_every == 0:
            started = time.perf_counter()
            self.averager.average(self.params)
            if self.distributed.average_state:
                self.averager.average_moments(self.m, self.v)
            self.comm_seconds += time.perf_counter() - started
        slowest = int(phases.sum(axis=1).argmax())  # the worker the compute barrier waited for
        return StepStats(step=t, loss=float(totals[0]), crystalline_loss=float(totals[2]),
                         objective=float(totals[0] + weight * totals[1]), lr=lr, grad_norm=norm,
                         tokens=int(inputs.size * ranks), seconds=time.perf_counter() - t0,
                         update_seconds=float(self._update_seconds.max()), comm_seconds=self.comm_seconds,
                         forward_seconds=float(phases[slowest, 0]), backward_seconds=float(phases[slowest, 1]),
                         reduce_seconds=float(self.pool.reduce_seconds.max()))

    def evaluate(self, inputs: np.ndarray, targets: np.ndarray,
                 weights: np.ndarray | None = None) -> tuple[float, int]:
        """Forward only: summed cross-entropy in nats over all positions, and their count. Any
        number of rows; the length must not exceed seq_len. With `weights` (B,), each row's sum
        counts that many times over (the count stays the positions')."""
        inputs, targets = self._batch(inputs, targets, self.train_config.seq_len)
        B = inputs.shape[0]
        if weights is not None:
            weights = np.asarray(weights, np.float64)  # (B,)
            if weights.shape != (B,):
                raise ValueError(f"weights {weights.shape} must be one per row ({B},)")
        rows = self._split_rows(B)
        cfg, p, cost = self.model_config, self.p_views, self.cost
        sums = self._sums
        sums[:] = 0.0

        def compute(w: int) -> None:
            start, stop = rows[w]
            for a in range(start, stop, self.micro_batch):
                b = min(stop, a + self.micro_batch)
                acts = forward(cfg, p, self.workspaces[w], inputs[a:b], targets[a:b], cost, 0.0)
                if weights is None:
                    sums[w, 0] += acts.losses.sum(dtype=np.float64)
                else:
                    sums[w, 0] += acts.losses.reshape(b - a, -1).sum(axis=1, dtype=np.float64) @ weights[a:b]

        self.pool.run(compute)
        return float(sums[:, 0].sum()), int(inputs.size)

    @contextmanager
    def parameters_of(self, params: np.ndarray) -> Iterator[None]:
        """Within the block, `evaluate` sees `params` (same layout; ShapeMismatch otherwise);
        the trainer's own parameters are restored on exit. Not for use during `step`."""
        other = self._check(params, "params")
        saved = self.params.copy()
        np.copyto(self.params, other)
        try:
            yield
        finally:
            np.copyto(self.params, saved)

    # -----------------------------------------------------------------------------------------

    def train_state(self) -> dict:
        """What a checkpoint's train_state holds: the counter of tokens through `step`, the recipe,
        and the model's growth history (`grow`'s records, oldest first; [] for a model never grown)."""
        return {"tokens_seen": self.tokens_seen, "train_config": self.train_config.to_dict(),
                "growth": copy.deepcopy(self.growth)}

    def save_checkpoint(self, directory, extra: dict | None = None, keep_last: int | None = 3,
                        name: str | None = None) -> Path:
        """Write a checkpoint of the current state atomically into `directory` (see
        checkpoint.save_checkpoint for `keep_last` and `name`)."""
        from .checkpoint import save_checkpoint

        return save_checkpoint(directory, step=self.step_count, model_config=self.model_config,
                               params=self.params, m=self.m, v=self.v, train_state=self.train_state(),
                               extra=extra, keep_last=keep_last, name=name)

    def close(self) -> None:
        """Join the worker threads; idempotent."""
        self.pool.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
